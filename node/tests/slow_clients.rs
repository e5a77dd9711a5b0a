//! Clients that hold a connection without sending a request: half a request head, or nothing at
//! all. A node closes them after `[http] header_read_timeout_secs`, and keeps serving the others.

mod common;

use std::time::{Duration, Instant};

use common::TestCluster;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TIMEOUT_SECS: u64 = 2;

/// Reads until the node closes the connection; returns what it sent and how long it took, or
/// panics after `deadline`.
async fn until_closed(stream: &mut TcpStream, deadline: Duration) -> (String, Duration) {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return (
                    String::from_utf8_lossy(&got).into_owned(),
                    started.elapsed(),
                );
            }
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "the connection was still open after {deadline:?}; got {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn half_sent_and_idle_connections_are_closed() {
    let c = TestCluster::start_with(
        1,
        &format!("[http]\nheader_read_timeout_secs = {TIMEOUT_SECS}\nslow_body_timeout_secs = {TIMEOUT_SECS}\n"),
    )
    .await;
    let addr = c.url(1).trim_start_matches("http://").to_string();
    let deadline = Duration::from_secs(10 * TIMEOUT_SECS);

    // Half a request head, then silence.
    let mut half = TcpStream::connect(&addr).await.expect("connect");
    half.write_all(b"GET /health HTTP/1.1\r\nHost: chorus\r\nX-Slow: ")
        .await
        .expect("write");
    // Nothing at all.
    let mut idle = TcpStream::connect(&addr).await.expect("connect");
    // A keep-alive client that asked once and then went quiet.
    let mut quiet = TcpStream::connect(&addr).await.expect("connect");
    quiet
        .write_all(b"GET /health HTTP/1.1\r\nHost: chorus\r\n\r\n")
        .await
        .expect("write");

    let (said, took) = until_closed(&mut half, deadline).await;
    assert!(
        took >= Duration::from_secs(TIMEOUT_SECS) - Duration::from_millis(200),
        "closed after {took:?}"
    );
    assert!(!said.contains("200 OK"), "{said}");
    until_closed(&mut idle, deadline).await;
    let (said, _) = until_closed(&mut quiet, deadline).await;
    assert!(
        said.starts_with("HTTP/1.1 200"),
        "the first request was answered: {said}"
    );

    // A body that trickles in at 20 bytes a second is cut off, not waited for.
    let mut trickle = TcpStream::connect(&addr).await.expect("connect");
    trickle
        .write_all(b"POST /add_track HTTP/1.1\r\nHost: chorus\r\nContent-Type: application/json\r\nContent-Length: 2000\r\n\r\n")
        .await
        .expect("write");
    let started = Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_millis(500));
    let answer = loop {
        ticks.tick().await;
        // The pace is the behaviour under test: 10 bytes every half second.
        if trickle.write_all(b"          ").await.is_err() {
            break until_closed(&mut trickle, deadline).await.0;
        }
        let mut buf = [0u8; 512];
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(1), trickle.read(&mut buf)).await
        {
            let mut said = String::from_utf8_lossy(&buf[..n]).into_owned();
            said.push_str(&until_closed(&mut trickle, deadline).await.0);
            break said;
        }
        assert!(
            started.elapsed() < deadline,
            "a 20 B/s body was still being read after {deadline:?}"
        );
    };
    eprintln!(
        "    a 20 B/s body, after {:?}: {}",
        started.elapsed(),
        answer.lines().next().unwrap_or("(closed)")
    );
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 4"),
        "a slow body gets a 4xx or a closed connection: {answer}"
    );

    // Everyone else is served as before.
    let health = c.api(1).get("/health").await.expect("health");
    health.expect_status(200);
}
