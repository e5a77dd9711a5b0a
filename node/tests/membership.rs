//! Membership changes on a real 3-process cluster, through `chorus client member` as an operator
//! runs them: a node that cannot vote is never made a voter, a new node catches up (audio
//! included) before it votes, a dead node is replaced, and the leader itself is removed. A
//! removed node refuses requests and says why.

mod common;

use std::process::{Command, Output};

use common::music::{download, fixture, upload};
use common::{Body, CONVERGE_TIMEOUT, Resp, TestCluster, eventually, register, track_ids};
use reqwest::Method;
use serde_json::{Value, json};

/// Runs `chorus client --node <node's URL> --config <the cluster's file> member <args>`; the
/// admin token comes from the file.
fn member(c: &TestCluster, node: u64, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chorus"))
        .arg("client")
        .args(["--node", &c.url(node)])
        .arg("--config")
        .arg(c.config_path())
        .arg("member")
        .args(args)
        .env_remove("CHORUS_ADMIN_TOKEN")
        .output()
        .expect("run chorus")
}

fn member_ok(c: &TestCluster, node: u64, args: &[&str]) -> String {
    let out = member(c, node, args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "chorus client member {args:?} failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `(id, voter)` of every member, as node `id` sees them.
async fn members(c: &TestCluster, id: u64) -> Vec<(u64, bool)> {
    let view = c.cluster_view(id).await;
    members_of(&view)
}

fn members_of(view: &Value) -> Vec<(u64, bool)> {
    view["members"]
        .as_array()
        .expect("members is an array")
        .iter()
        .map(|m| {
            (
                m["id"].as_u64().expect("member id"),
                m["voter"].as_bool().expect("voter flag"),
            )
        })
        .collect()
}

/// Waits until node `id` sees exactly `voters` as the voters and no learners.
async fn wait_voters(c: &TestCluster, id: u64, voters: &[u64]) {
    let want: Vec<(u64, bool)> = voters.iter().map(|&v| (v, true)).collect();
    eventually(
        &format!("node {id} to see exactly the voters {voters:?}"),
        CONVERGE_TIMEOUT,
        async || (members(c, id).await == want).then_some(()),
    )
    .await;
}

/// A track for the seed's queue (`POST /add_track`).
fn queued(id: u64) -> Body {
    Body::Json(
        json!({"id": id, "title": format!("Title {id}"), "artist": "Artist", "duration": 100}),
    )
}

/// The message of an error answer with `status`.
fn refusal(r: &Resp, status: u16) -> String {
    r.expect_error(status);
    r.body["message"].as_str().unwrap_or_default().to_string()
}

/// Two loopback addresses nothing listens on.
fn dead_addrs() -> (String, String) {
    let addrs = common::free_addrs(2);
    (addrs[0].to_string(), addrs[1].to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn adds_that_could_cost_the_quorum_are_refused() {
    let c = TestCluster::start(3).await;
    let api = c.api(1);
    let (_, raft2) = c.addrs(2);
    let (http9, raft9) = dead_addrs();
    let admin = [("X-Admin-Token", "test-admin".to_string())];
    let add = async |body: Value, headers: &[(&str, String)]| {
        api.send_with(Method::POST, "/cluster/members", Body::Json(body), headers)
            .await
            .expect("POST /cluster/members")
    };

    let no_token = add(
        json!({"id": 9, "http_addr": http9, "raft_addr": raft9}),
        &[],
    )
    .await;
    no_token.expect_error_code(401, "unauthorized");
    let zero = add(
        json!({"id": 0, "http_addr": http9, "raft_addr": raft9}),
        &admin,
    )
    .await;
    assert!(refusal(&zero, 400).contains("0 is not a valid id"));
    let taken_addr = add(
        json!({"id": 9, "http_addr": http9, "raft_addr": raft2.to_string()}),
        &admin,
    )
    .await;
    let message = refusal(&taken_addr, 400);
    assert!(
        message.contains(&format!("{raft2} is already used by node 2")),
        "{message}"
    );
    let taken_id = add(
        json!({"id": 2, "http_addr": http9, "raft_addr": raft9}),
        &admin,
    )
    .await;
    assert!(refusal(&taken_id, 400).contains("already a member"));

    // Nothing listens at node 9's addresses: it never catches up, so it never votes, and the
    // learner is taken out again. (Before, the first two checks passed and node 9 was a voter.)
    let out = member(
        &c,
        2,
        &["add", "9", "--http-addr", &http9, "--raft-addr", &raft9],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "adding a dead node must fail");
    assert!(
        stderr.contains("node 9")
            && stderr.contains("was not added")
            && stderr.contains("did not answer"),
        "the failure says why: {stderr}"
    );
    for id in 1..=3 {
        wait_voters(&c, id, &[1, 2, 3]).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_node_is_replaced_by_one_that_catches_up_with_the_audio_and_votes() {
    let mut c = TestCluster::start(3).await;
    let user = register(&c.api(1), "replacer").await;
    let mp3 = fixture("tagged-3s.mp3");
    let track = upload(&c.api(1), &user, Some("Before the move"), &mp3).await;
    c.api(2).write_ok("/add_track", queued(1)).await;

    c.kill9(3);
    let removed = member_ok(&c, 1, &["remove", "3"]);
    assert!(removed.contains("node 3 removed"), "{removed}");
    wait_voters(&c, 1, &[1, 2]).await;

    // A new machine: listed in the configuration, started, then added (its addresses from the
    // configuration file).
    let new = c.spawn_new_node();
    let not_yet = c.api(new).get("/ready").await.ok();
    assert!(
        not_yet.is_none_or(|r| r.status == 503),
        "a node that is not a member yet is not ready"
    );
    let added = member_ok(&c, 2, &["add", &new.to_string()]);
    assert!(
        added.contains(&format!("node {new} is a voting member")),
        "{added}"
    );
    c.wait_ready(new).await;
    wait_voters(&c, new, &[1, 2, new]).await;
    let list = member_ok(&c, new, &["list"]);
    assert_eq!(list.matches("voter").count(), 3, "{list}");

    // It holds the audio written before it joined.
    let file = download(&c.api(new), &track, &user).await;
    assert_eq!(file.status, 200, "{}", file.describe());
    assert!(
        file.bytes == mp3,
        "node {new} serves the track's bytes unchanged"
    );

    // And it votes: with one of the two old nodes dead too, the new node makes the majority.
    c.kill9(1);
    c.api(new).write_ok("/add_track", queued(2)).await;
    let queue = c.api(2).read_ok("/queue").await;
    assert_eq!(track_ids(&queue), [1, 2]);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_leader_can_be_removed_and_then_says_it_is_no_member() {
    let c = TestCluster::start(3).await;
    let leader = c.leader_id().await;
    let follower = c.followers(leader)[0];
    let removed = member_ok(&c, follower, &["remove", &leader.to_string()]);
    assert!(
        removed.contains(&format!("node {leader} removed")),
        "{removed}"
    );
    let rest: Vec<u64> = (1..=3).filter(|&id| id != leader).collect();
    wait_voters(&c, follower, &rest).await;

    // It steps down once that is committed; the two left elect a leader and take writes.
    eventually(
        "a leader among the nodes left",
        CONVERGE_TIMEOUT,
        async || {
            let view = c.cluster_view(follower).await;
            view["leader_id"].as_u64().filter(|l| rest.contains(l))
        },
    )
    .await;
    c.api(follower).write_ok("/add_track", queued(3)).await;

    // The old leader is still running, and says why it no longer serves.
    let old = c.api(leader);
    eventually(
        "the removed node to refuse writes",
        CONVERGE_TIMEOUT,
        async || {
            let r = old
                .send(Method::POST, "/add_track", queued(4), None)
                .await
                .ok()?;
            (r.status == 503 && r.body["error"] == "not_a_member").then_some(r)
        },
    )
    .await;
    let ready = old.get("/ready").await.expect("GET /ready");
    assert_eq!(ready.status, 503, "a removed node is not ready");
    let write = old
        .send(Method::POST, "/add_track", queued(4), None)
        .await
        .expect("POST /add");
    let message = refusal(&write, 503);
    assert!(
        message.contains(&format!("node {leader} was removed from the cluster")),
        "{message}"
    );
}
