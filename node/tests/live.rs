//! `GET /events` against a real 3-node cluster: every node streams the same changes under the
//! same ids, and a client that resumes with the last id it saw — on the same node or on another
//! after its node died — gets every later change exactly once.

mod common;

use std::time::Duration;

use common::sse::{EventStream, SseEvent, change_types, describe};
use common::{Body, TestCluster, eventually};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

fn queued(id: u64) -> Body {
    Body::Json(json!({"id": id, "title": format!("t{id}"), "artist": "a", "duration": 60}))
}

fn changes_of(events: &[SseEvent]) -> Vec<(u64, Vec<String>)> {
    events
        .iter()
        .filter(|e| e.kind == "change")
        .map(|e| (e.id, change_types(e)))
        .collect()
}

async fn applied_index(cluster: &TestCluster, id: u64) -> u64 {
    cluster.cluster_view(id).await["applied_index"]
        .as_u64()
        .unwrap_or(0)
}

/// Reads `stream` until it has seen `n` changes; their ids must only increase (a change sent
/// twice would repeat an id).
async fn changes(stream: &mut EventStream, n: usize) -> Vec<SseEvent> {
    let seen = stream
        .until(WAIT, |seen| {
            seen.iter().map(|e| change_types(e).len()).sum::<usize>() >= n
        })
        .await;
    assert!(
        seen.windows(2).all(|w| w[0].id < w[1].id),
        "ids increase: {}",
        describe(&seen)
    );
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_streams_the_same_changes_and_a_client_resumes_on_another_node() {
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.leader_id().await;
    let followers = cluster.followers(leader);
    let (watched, other) = (followers[0], followers[1]);
    let lead = cluster.api(leader);

    let mut stream = EventStream::open(&cluster.url(watched), None)
        .await
        .expect("open /events");
    let first = stream.next(WAIT).await.expect("a first event");
    assert_eq!(
        first.kind, "state",
        "a new client starts from the whole state"
    );
    assert_eq!(first.data["queue"], json!([]));

    lead.write_ok("/add_track", queued(1)).await;
    cluster.api(other).write_ok("/add_track", queued(2)).await;
    cluster
        .api(watched)
        .write_ok("/vote?id=2&up=true", Body::None)
        .await;
    lead.write_ok("/vote?id=1&up=false", Body::None).await;
    let seen = changes(&mut stream, 4).await;
    let applied = changes_of(&seen);
    let kinds: Vec<String> = applied.iter().flat_map(|(_, t)| t.clone()).collect();
    assert_eq!(
        kinds,
        ["queued", "queued", "voted", "voted"],
        "{}",
        describe(&seen)
    );
    let voted = &seen
        .iter()
        .find(|e| change_types(e) == ["voted"])
        .expect("a vote")
        .data;
    assert_eq!(voted["changes"][0]["track"]["id"], 2);
    assert_eq!(voted["changes"][0]["track"]["votes"], 1);
    assert!(voted["changes"][0]["track"]["added_seq"].is_u64());

    // Resume on another node after the second change: exactly the changes after it, with the
    // same ids and contents.
    let resume_after = applied[1].0;
    let mut elsewhere = EventStream::open(&cluster.url(other), Some(resume_after))
        .await
        .expect("resume on another node");
    let replayed = changes(&mut elsewhere, 2).await;
    let expected: Vec<&SseEvent> = seen.iter().filter(|e| e.id > resume_after).collect();
    assert_eq!(
        replayed
            .iter()
            .map(|e| (&e.id, &e.data))
            .collect::<Vec<_>>(),
        expected
            .iter()
            .map(|e| (&e.id, &e.data))
            .collect::<Vec<_>>(),
        "resumed: {}",
        describe(&replayed)
    );

    // The node of the first stream dies; its client resumes elsewhere with the last id it saw
    // and gets the next change once.
    let last_seen = seen.last().expect("events").id;
    cluster.kill9(watched);
    assert!(
        stream.next(WAIT).await.is_none(),
        "the dead node's stream ends"
    );
    lead.write_ok("/play_next", Body::None).await;
    let mut resumed = EventStream::open(&cluster.url(other), Some(last_seen))
        .await
        .expect("resume after the node died");
    let after = changes(&mut resumed, 1).await;
    let played_at = after[0].id;
    assert!(played_at > last_seen);
    assert_eq!(
        changes_of(&after),
        [(played_at, vec!["played".to_string()])]
    );
    assert_eq!(after[0].data["changes"][0]["played"]["id"], 2);

    // A node has no backlog from before it started: once it has caught up and been stopped
    // cleanly (all it applied is in its tree), a restart begins with nothing to replay, and an
    // old id gets the whole state once (never a gap), then the changes after it.
    cluster.restart(watched);
    cluster.wait_ready(watched).await;
    let target = applied_index(&cluster, leader).await;
    let caught_up = async || (applied_index(&cluster, watched).await >= target).then_some(());
    eventually("the restarted node catches up", WAIT, caught_up).await;
    // An open stream does not hold up a graceful stop (the harness fails a node that has not
    // exited 30 s after SIGTERM); it ends, and its client resumes elsewhere.
    let mut open = EventStream::open(&cluster.url(watched), None)
        .await
        .expect("open /events");
    assert_eq!(open.next(WAIT).await.expect("a state").kind, "state");
    cluster.stop(watched).await;
    assert!(
        open.next(WAIT).await.is_none(),
        "the stream ended with the node"
    );
    cluster.restart(watched);
    cluster.wait_ready(watched).await;
    let mut restarted = EventStream::open(&cluster.url(watched), Some(1))
        .await
        .expect("resume on the restarted node");
    let state = restarted.next(WAIT).await.expect("an event");
    assert_eq!(state.kind, "state", "{state:?}");
    assert!(state.id >= played_at);
    let queue: Vec<u64> = state.data["queue"]
        .as_array()
        .expect("queue")
        .iter()
        .filter_map(|t| t["id"].as_u64())
        .collect();
    assert_eq!(queue, [1]);
    assert_eq!(state.data["now_playing"]["id"], 2);
    lead.write_ok("/vote?id=1&up=true", Body::None).await;
    let next = changes(&mut restarted, 1).await;
    assert_eq!(change_types(&next[0]), ["voted"]);
    assert!(next[0].id > state.id);

    // A malformed id is a clear 400.
    let bad = cluster
        .api(leader)
        .send_with(
            reqwest::Method::GET,
            "/events",
            Body::None,
            &[("Last-Event-ID", "yesterday".to_string())],
        )
        .await
        .expect("request");
    bad.expect_error(400);
    assert!(bad.text.contains("yesterday"), "{}", bad.text);
}
