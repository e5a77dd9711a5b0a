//! The fair queue on a real 3-process cluster with the seed's anonymous votes turned off: one
//! vote per user however often and wherever it is sent, retracting a vote, a cap on tracks per
//! user, vote-to-skip that skips exactly once under concurrent votes, `Prefer: return=minimal`
//! and paging — and the votes still exact after the leader is killed and restarted.

mod common;

use common::{Body, NodeApi, Resp, TestCluster, User, fresh_key, register};
use reqwest::Method;
use serde_json::{Value, json};

const RULES: &str = "[queue]\nallow_anonymous_clear = true\nanonymous_votes = false\nmax_tracks_per_user = 2\nskip_votes = 2\n";

async fn send(
    api: &NodeApi,
    method: Method,
    path: &str,
    body: Body,
    headers: &[(&str, String)],
) -> Resp {
    api.send_with(method, path, body, headers)
        .await
        .unwrap_or_else(|e| panic!("{path}: {e:#}"))
}

fn track(id: u64) -> Body {
    Body::Json(json!({"id": id, "title": format!("song {id}"), "artist": "band", "duration": 100}))
}

/// `user`'s headers with an idempotency key, so a retry after a 503 is applied once.
fn as_user(user: &User, key: &str) -> Vec<(&'static str, String)> {
    let mut headers = user.auth();
    headers.push(("Idempotency-Key", key.to_string()));
    headers
}

async fn votes_of(api: &NodeApi, id: u64) -> i64 {
    let view = api.read_ok(&format!("/metadata/{id}")).await;
    view["votes"]
        .as_i64()
        .unwrap_or_else(|| panic!("no votes in {view}"))
}

/// Sends until the answer is not a 503 (an election); the idempotency key makes that safe.
async fn until_answered(
    api: &NodeApi,
    method: Method,
    path: &str,
    body: Value,
    headers: &[(&str, String)],
) -> Resp {
    let deadline = std::time::Instant::now() + common::RETRY_TIMEOUT;
    loop {
        let resp = api
            .send_with(method.clone(), path, Body::Json(body.clone()), headers)
            .await;
        match resp {
            Ok(r) if r.status != 503 => return r,
            _ if std::time::Instant::now() < deadline => tokio::time::sleep(common::POLL).await,
            other => panic!("{path} never answered: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_vote_per_user_a_cap_per_user_and_skip_once() {
    let mut c = TestCluster::start_with(3, RULES).await;
    let leader = c.leader_id().await;
    let followers = c.followers(leader);
    let (a, b) = (c.api(followers[0]), c.api(followers[1]));
    let alice = register(&a, "alice").await;
    let bob = register(&b, "bob").await;
    let carol = register(&c.api(leader), "carol").await;

    // Anonymous: no vote, no add (the cap needs to know who adds).
    send(&a, Method::POST, "/add_track", track(1), &alice.auth())
        .await
        .expect_status(200);
    send(&a, Method::POST, "/vote?id=1&up=true", Body::None, &[])
        .await
        .expect_error_code(401, "unauthorized");
    send(&b, Method::POST, "/add_track", track(9), &[])
        .await
        .expect_error_code(401, "unauthorized");

    // The cap: two tracks each.
    let added = send(&b, Method::POST, "/add_track", track(2), &alice.auth()).await;
    let queue = added.expect_status(200)["queue"].clone();
    assert_eq!(
        queue[1]["added_by"].as_u64().map(|id| id.to_string()),
        Some(alice.id.clone()),
        "{queue}"
    );
    let third = send(&a, Method::POST, "/add_track", track(3), &alice.auth()).await;
    third.expect_error_code(409, "queue_limit");
    assert!(
        third.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("2 tracks")),
        "{}",
        third.describe()
    );
    send(&a, Method::POST, "/add_track", track(3), &bob.auth())
        .await
        .expect_status(200);

    // Alice votes track 2 up twenty times at once, through every node: it counts once.
    let mut votes = Vec::new();
    for i in 0..20u64 {
        let api = c.api(c.ids()[(i % 3) as usize]);
        let auth = alice.auth();
        votes.push(tokio::spawn(async move {
            send(&api, Method::POST, "/vote?id=2&up=true", Body::None, &auth).await
        }));
    }
    for vote in votes {
        vote.await.expect("vote task").expect_status(200);
    }
    assert_eq!(votes_of(&b, 2).await, 1);
    let by_bob = send(&b, Method::POST, "/vote?id=2", Body::None, &bob.auth()).await;
    assert_eq!(by_bob.expect_status(200)["votes"], 2);
    let order: Vec<u64> = by_bob.body["queue"]
        .as_array()
        .expect("queue")
        .iter()
        .filter_map(|t| t["id"].as_u64())
        .collect();
    assert_eq!(order, [2, 1, 3]);
    let down = send(
        &a,
        Method::POST,
        "/vote?id=2&up=false",
        Body::None,
        &alice.auth(),
    )
    .await;
    assert_eq!(
        down.expect_status(200)["votes"],
        0,
        "alice's vote turned: +1 -> -1"
    );

    // Retracting: DELETE /vote, twice is the same as once; needs a login.
    let minimal = {
        let mut h = bob.auth();
        h.push(("Prefer", "return=minimal".into()));
        h
    };
    let back = send(&a, Method::DELETE, "/vote?id=2", Body::None, &minimal).await;
    assert_eq!(back.expect_status(200), &json!({"id": 2, "votes": -1}));
    assert_eq!(back.header("preference-applied"), "return=minimal");
    let again = send(&b, Method::DELETE, "/vote?id=2", Body::None, &bob.auth()).await;
    assert_eq!(again.expect_status(200)["votes"], -1);
    send(&a, Method::DELETE, "/vote?id=2", Body::None, &[])
        .await
        .expect_error(401);
    send(&a, Method::DELETE, "/vote?id=77", Body::None, &bob.auth())
        .await
        .expect_error_code(404, "not_found");

    // return=minimal on an add and a vote; paging.
    let add = send(&b, Method::POST, "/add_track", track(4), &minimal).await;
    assert_eq!(
        add.expect_status(200),
        &json!({"message": "Track added", "id": 4, "votes": 0})
    );
    let vote = send(&b, Method::POST, "/vote?id=4&up=true", Body::None, &minimal).await;
    assert_eq!(vote.expect_status(200), &json!({"id": 4, "votes": 1}));
    let page = send(&a, Method::GET, "/queue?offset=1&limit=2", Body::None, &[]).await;
    let ids: Vec<u64> = page
        .expect_status(200)
        .as_array()
        .expect("page")
        .iter()
        .filter_map(|t| t["id"].as_u64())
        .collect();
    assert_eq!(ids, [1, 3], "queue is 4, 1, 3, 2");
    assert_eq!(page.header("x-total-count"), "4");
    send(&a, Method::GET, "/queue?limit=many", Body::None, &[])
        .await
        .expect_error(400);

    // Skip: nothing plays yet; then two distinct users skip, at the same moment as a third.
    send(&a, Method::POST, "/skip", Body::None, &alice.auth())
        .await
        .expect_error_code(409, "nothing_playing");
    send(&a, Method::POST, "/skip", Body::None, &[])
        .await
        .expect_error(401);
    send(&a, Method::POST, "/play_next", Body::None, &[])
        .await
        .expect_status(200);
    let first = send(&a, Method::POST, "/skip", Body::None, &alice.auth()).await;
    assert_eq!(first.expect_status(200)["skipped"], false);
    let same = send(&b, Method::POST, "/skip", Body::None, &alice.auth()).await;
    assert_eq!(
        same.expect_status(200)["votes"],
        1,
        "alice's second skip vote is the same vote"
    );
    let (leader_api, bob_auth, carol_auth) = (c.api(leader), bob.auth(), carol.auth());
    let (bob_skip, carol_skip) = tokio::join!(
        send(&b, Method::POST, "/skip", Body::None, &bob_auth),
        send(&leader_api, Method::POST, "/skip", Body::None, &carol_auth),
    );
    let skipped = [
        bob_skip.expect_status(200)["skipped"].clone(),
        carol_skip.expect_status(200)["skipped"].clone(),
    ];
    assert_eq!(
        skipped.iter().filter(|s| **s == json!(true)).count(),
        1,
        "{skipped:?}"
    );
    let history = a.read_ok("/history").await;
    assert_eq!(
        history.as_array().map(Vec::len),
        Some(2),
        "one play, one skip: {history}"
    );

    // Votes survive the leader's death: a retried vote (same key) still counts once, and the
    // restarted node knows who voted.
    let voted_before = votes_of(&a, 3).await;
    c.kill9(leader);
    let key = fresh_key("vote");
    for api in [&a, &b] {
        let r = until_answered(
            api,
            Method::POST,
            "/vote?id=3&up=true",
            Value::Null,
            &as_user(&carol, &key),
        )
        .await;
        r.expect_status(200);
    }
    let fresh = until_answered(
        &a,
        Method::POST,
        "/vote?id=3&up=true",
        Value::Null,
        &as_user(&carol, &fresh_key("vote")),
    )
    .await;
    assert_eq!(
        fresh.expect_status(200)["votes"].as_i64(),
        Some(voted_before + 1)
    );
    c.restart(leader);
    c.wait_ready(leader).await;
    let restarted = c.api(leader);
    let stale = common::eventually(
        "the restarted node catches up",
        common::CONVERGE_TIMEOUT,
        async || {
            let r = restarted.get("/metadata/3?consistency=stale").await.ok()?;
            (r.body["votes"].as_i64() == Some(voted_before + 1)).then_some(())
        },
    );
    stale.await;
    let again = send(
        &restarted,
        Method::POST,
        "/vote?id=3&up=true",
        Body::None,
        &carol.auth(),
    )
    .await;
    assert_eq!(
        again.expect_status(200)["votes"].as_i64(),
        Some(voted_before + 1),
        "carol's vote is remembered"
    );
}
