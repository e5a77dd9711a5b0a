//! Strangers on the Raft port. Before a peer has authenticated (the cluster secret), a node
//! accepts only frames the handshake needs (64 KiB) and waits at most 10 s for it to finish, so
//! whoever can reach the port cannot make it buffer large frames or hold connections open.

mod common;

use std::time::{Duration, Instant};

use common::TestCluster;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the node closes the connection and returns how long that took, or panics after
/// `deadline`.
async fn until_closed(stream: &mut TcpStream, deadline: Duration) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            // The node's own handshake bytes, if any: keep reading.
            Ok(Ok(_)) => {}
            Err(_) => panic!("the connection was still open after {deadline:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unauthenticated_peers_cannot_send_large_frames_or_stay_idle() {
    let c = TestCluster::start(3).await;
    let (_, raft_addr) = c.addrs(1);

    // A frame header claiming 60 MiB, then the start of its body: refused at the header.
    let mut big = TcpStream::connect(raft_addr).await.expect("connect");
    big.write_all(&(60u64 << 20).to_be_bytes())
        .await
        .expect("header");
    // The node may already have closed: a failed write is the expected outcome too.
    let _ = big.write_all(&vec![0u8; 100 * 1024]).await;
    let took = until_closed(&mut big, Duration::from_secs(5)).await;
    eprintln!("    a 60 MiB frame before authenticating: closed after {took:?}");

    // A connection that never says anything: closed after the handshake deadline.
    let mut idle = TcpStream::connect(raft_addr).await.expect("connect");
    let took = until_closed(&mut idle, Duration::from_secs(30)).await;
    eprintln!("    an idle unauthenticated connection: closed after {took:?}");
    assert!(took >= Duration::from_secs(5), "closed too soon: {took:?}");

    // The peers, which authenticate, replicate as before: a write through a follower commits.
    let follower = c.ids().into_iter().find(|&id| id != 1).unwrap_or(2);
    let user = common::register(&c.api(follower), "raft-port-user").await;
    assert!(!user.token.is_empty());
}
