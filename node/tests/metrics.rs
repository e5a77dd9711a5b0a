//! `GET /metrics` read by a real Prometheus text parser: the series an operator scrapes exist on
//! every node, and the counters move with the traffic that should move them.

mod common;

use common::music::{download, fixture, upload};
use common::{Body, TestCluster, register};
use prometheus_parse::{Sample, Scrape, Value};
use serde_json::json;

/// Scrapes node `id` and parses the answer.
async fn scrape(c: &TestCluster, id: u64) -> Scrape {
    let r = c.api(id).get("/metrics").await.expect("GET /metrics");
    assert_eq!(r.status, 200, "{}", r.describe());
    assert!(
        r.header("content-type").starts_with("text/plain"),
        "{}",
        r.describe()
    );
    let lines = r.text.lines().map(|l| Ok(l.to_string()));
    Scrape::parse(lines).expect("the scrape parses as Prometheus text")
}

/// The samples of `name` whose labels include every `(label, value)` of `labels`.
fn samples<'a>(scrape: &'a Scrape, name: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .collect()
}

/// The one sample's value of a counter or gauge (0 when the series does not exist yet).
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    match samples(scrape, name, labels).as_slice() {
        [] => 0.0,
        [one] => match &one.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            other => panic!("{name} is not a counter or gauge: {other:?}"),
        },
        many => panic!("{name} {labels:?} matches {} series", many.len()),
    }
}

/// The observation count of a histogram series.
fn histogram_count(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> u64 {
    samples(scrape, name, labels)
        .iter()
        .map(|s| match &s.value {
            Value::Histogram(buckets) => buckets.last().map_or(0, |b| b.count as u64),
            other => panic!("{name} is not a histogram: {other:?}"),
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_parse_and_move_with_traffic() {
    let c = TestCluster::start(3).await;
    let leader = c.leader_id().await;
    let follower = c.followers(leader)[0];

    for id in 1..=3 {
        let s = scrape(&c, id).await;
        assert_eq!(value(&s, "chorus_raft_voters", &[]), 3.0);
        assert_eq!(value(&s, "chorus_raft_leader_id", &[]), leader as f64);
        assert_eq!(
            value(&s, "chorus_raft_is_leader", &[]),
            f64::from(id == leader)
        );
        assert!(value(&s, "chorus_raft_term", &[]) >= 1.0);
        assert!(value(&s, "process_resident_memory_bytes", &[]) > 1e6);
        assert!(value(&s, "process_open_fds", &[]) > 0.0);
        assert!(value(&s, "chorus_raft_applied_index", &[]) >= 1.0);
    }

    let add = [
        ("method", "POST"),
        ("route", "/add_track"),
        ("status", "200"),
    ];
    let route = [("method", "POST"), ("route", "/add_track")];
    let before_leader = scrape(&c, leader).await;
    let before = scrape(&c, follower).await;
    for id in 1..=5u64 {
        let body = json!({"id": id, "title": "T", "artist": "A", "duration": 60});
        c.api(follower)
            .write_ok("/add_track", Body::Json(body))
            .await;
    }
    let after = scrape(&c, follower).await;
    let after_leader = scrape(&c, leader).await;
    assert_eq!(
        value(&after, "chorus_http_requests_total", &add)
            - value(&before, "chorus_http_requests_total", &add),
        5.0,
        "five adds answered 200 on the follower"
    );
    assert_eq!(
        histogram_count(&after, "chorus_http_request_duration_seconds", &route)
            - histogram_count(&before, "chorus_http_request_duration_seconds", &route),
        5
    );
    let grew = |name: &str| value(&after_leader, name, &[]) > value(&before_leader, name, &[]);
    assert!(
        grew("chorus_raft_proposals_total"),
        "the leader proposed the writes"
    );
    assert!(grew("chorus_log_fsyncs_total"), "the leader synced its log");
    assert!(
        histogram_count(&after_leader, "chorus_log_fsync_duration_seconds", &[])
            > histogram_count(&before_leader, "chorus_log_fsync_duration_seconds", &[])
    );
    assert!(histogram_count(&after_leader, "chorus_raft_proposal_writes", &[]) >= 1);

    // Audio in and out.
    let user = register(&c.api(follower), "listener").await;
    let mp3 = fixture("tagged-3s.mp3");
    let track = upload(&c.api(follower), &user, Some("Counted"), &mp3).await;
    let file = download(&c.api(follower), &track, &user).await;
    assert_eq!(file.status, 200, "{}", file.describe());
    let audio = scrape(&c, follower).await;
    assert!(
        value(&audio, "chorus_audio_uploaded_bytes_total", &[])
            - value(&after, "chorus_audio_uploaded_bytes_total", &[])
            >= mp3.len() as f64
    );
    assert_eq!(
        value(&audio, "chorus_audio_streamed_bytes_total", &[])
            - value(&after, "chorus_audio_streamed_bytes_total", &[]),
        mp3.len() as f64
    );
    // An unknown path is one series, not one per path.
    c.api(follower).get("/no/such/path/1").await.expect("GET");
    c.api(follower).get("/no/such/path/2").await.expect("GET");
    let s = scrape(&c, follower).await;
    assert_eq!(
        value(
            &s,
            "chorus_http_requests_total",
            &[("route", "unmatched"), ("status", "404")]
        ),
        2.0
    );
}

/// Audio chunks a node sent in Raft messages, `how` (`ByHash` or `Inline`), over every node.
async fn audio_sent(c: &TestCluster, how: &str) -> f64 {
    let mut sum = 0.0;
    for id in c.running() {
        let s = scrape(c, id).await;
        sum += value(&s, "chorus_raft_audio_chunks_sent_total", &[("how", how)]);
    }
    sum
}

/// An upload's chunks are pushed to the other nodes over HTTP ahead of their writes, so the
/// Raft messages carrying the writes (the follower's forward to the leader, the leader's
/// AppendEntries to both followers) leave the bytes out: a megabyte on a slow link never sits
/// in front of the heartbeats. A node that missed the pushes (it was down) gets the bytes in
/// the log instead, and streams the track byte-identical. Strangers cannot push.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploaded_audio_travels_ahead_of_its_writes_and_the_writes_without_it() {
    let mut c = TestCluster::start(3).await;
    let leader = c.leader_id().await;
    let [receiver, other] = [c.followers(leader)[0], c.followers(leader)[1]];
    let user = register(&c.api(receiver), "pusher").await;

    let mp3 = common::music::long_mp3(100);
    let chunks = mp3.len().div_ceil(1024 * 1024) as f64;
    assert!(chunks >= 2.0, "{} bytes", mp3.len());
    let track = upload(&c.api(receiver), &user, Some("Pushed"), &mp3).await;
    // Each chunk: forwarded once by the receiver, appended to two followers by the leader.
    assert_eq!(audio_sent(&c, "ByHash").await, 3.0 * chunks);
    assert_eq!(audio_sent(&c, "Inline").await, 0.0);
    for id in c.ids() {
        let file = download(&c.api(id), &track, &user).await;
        assert!(file.bytes == mp3, "node {id} streams what was uploaded");
    }

    eprintln!("=== node {other} misses the pushes of a second upload");
    c.stop(other).await;
    let second = common::music::long_mp3(60);
    let track2 = upload(&c.api(receiver), &user, Some("Missed"), &second).await;
    c.restart(other);
    c.wait_ready(other).await;
    let file = download(&c.api(other), &track2, &user).await;
    assert!(
        file.bytes == second,
        "the node that missed the pushes streams the track"
    );
    assert!(
        audio_sent(&c, "Inline").await >= 1.0,
        "the node that missed the pushes got the bytes in the log"
    );

    eprintln!("=== a push needs the cluster's proof");
    let api = c.api(leader);
    let push = |path: String, proof: &str| {
        let body = Body::Raw {
            content_type: Some("application/octet-stream".into()),
            bytes: b"not audio from a node".to_vec(),
        };
        let headers = [("x-chorus-push-proof", proof.to_string())];
        let api = &api;
        async move {
            let r = api.send_with(reqwest::Method::PUT, &path, body, &headers);
            r.await.expect("PUT")
        }
    };
    let chunk = format!("/cluster/chunks/{}", "ab".repeat(32));
    for proof in ["", "00", &"11".repeat(32)] {
        push(chunk.clone(), proof)
            .await
            .expect_error_code(403, "forbidden");
    }
    push("/cluster/chunks/nothex".into(), "")
        .await
        .expect_error_code(400, "bad_request");
}
