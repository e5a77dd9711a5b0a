//! Overload on a real node: past `[http] max_in_flight` requests being handled, a request is
//! answered 503 `overloaded` with `Retry-After` at once (probes still answer); past
//! `max_connections` open connections, a new one is answered 503 and closed. When the load goes,
//! the node serves normally again.

mod common;

use std::time::Duration;

use common::{CONVERGE_TIMEOUT, TestCluster, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MAX_IN_FLIGHT: usize = 4;
const MAX_CONNECTIONS: usize = 12;

/// A request whose body never comes: its handler waits for it, holding a slot.
async fn hold_a_slot(addr: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"POST /add_track HTTP/1.1\r\nHost: chorus\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        .await
        .expect("write");
    s
}

/// Everything the node sends on `stream` until it closes it (at most `deadline`).
async fn read_to_close(stream: &mut TcpStream, deadline: Duration) -> String {
    let mut got = Vec::new();
    let read = tokio::time::timeout(deadline, stream.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the node kept the connection open: {got:?}");
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_sheds_requests_and_connections_past_its_limits_and_recovers() {
    let c = TestCluster::start_with(
        1,
        &format!("[http]\nmax_in_flight = {MAX_IN_FLIGHT}\nmax_connections = {MAX_CONNECTIONS}\n"),
    )
    .await;
    let api = c.api(1);
    let addr = c.url(1).trim_start_matches("http://").to_string();

    // Requests whose bodies never finish keep their handlers (and slots) busy.
    let mut busy = Vec::new();
    for _ in 0..MAX_IN_FLIGHT {
        busy.push(hold_a_slot(&addr).await);
    }
    let shed = eventually(
        "a request over the limit is shed",
        CONVERGE_TIMEOUT,
        async || {
            // A poll can take a slot just as a busy request arrives, which is then refused
            // itself: a busy request that got any answer is sent again.
            for held in busy.iter_mut() {
                let mut buf = [0u8; 1024];
                match held.try_read(&mut buf) {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    _ => *held = hold_a_slot(&addr).await,
                }
            }
            let r = api.get("/queue").await.ok()?;
            (r.status == 503).then_some(r)
        },
    )
    .await;
    shed.expect_error_code(503, "overloaded");
    assert_eq!(
        shed.retry_after.as_deref(),
        Some("1"),
        "{}",
        shed.describe()
    );
    let health = api.get("/health").await.expect("GET /health");
    assert_eq!(health.status, 200, "probes are always admitted");
    drop(busy);
    eventually("the node serves again", CONVERGE_TIMEOUT, async || {
        (api.get("/queue").await.ok()?.status == 200).then_some(())
    })
    .await;

    // Idle connections up to the cap (the harness's own pooled ones count too), then one more.
    let mut idle = Vec::new();
    for _ in 0..MAX_CONNECTIONS {
        idle.push(TcpStream::connect(&addr).await.expect("connect"));
    }
    let mut over = TcpStream::connect(&addr).await.expect("connect");
    let answer = read_to_close(&mut over, Duration::from_secs(10)).await;
    assert!(
        answer.starts_with("HTTP/1.1 503") && answer.contains("\"overloaded\""),
        "{answer}"
    );
    drop(idle);
    eventually(
        "the node takes connections again",
        CONVERGE_TIMEOUT,
        async || (api.get("/queue").await.ok()?.status == 200).then_some(()),
    )
    .await;

    let metrics = api.get("/metrics").await.expect("GET /metrics").text;
    for limit in ["in_flight", "connections"] {
        let counted = metrics.lines().any(|l| {
            l.starts_with(&format!("chorus_http_shed_total{{limit=\"{limit}\"}}"))
                && !l.ends_with(" 0")
        });
        assert!(
            counted,
            "chorus_http_shed_total{{limit=\"{limit}\"}} is counted"
        );
    }
}
