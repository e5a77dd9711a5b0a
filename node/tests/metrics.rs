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
