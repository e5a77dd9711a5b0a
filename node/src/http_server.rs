//! The HTTP accept loop: axum's router served by hyper's HTTP/1 connection with a header-read
//! timeout, which `axum::serve` does not set (it gives hyper no timer). Without it a client
//! that sends half a request head, or opens a connection and sends nothing, holds it for ever.
//! The timer runs whenever the connection waits for a request head — when it opens and between
//! requests — never while an answer (an audio stream, an event stream) is being sent.
//!
//! With `[[nodes]] tls_cert`/`tls_key` every connection is TLS (rustls); its handshake must end
//! within the header-read timeout too.
//!
//! At most `max_connections` connections are open at once (bounded by the open-file limit):
//! one more is answered 503 and closed at once, so a flood of clients costs the node a few
//! bytes each instead of its file descriptors and memory.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

/// What one node's HTTP port takes.
pub struct Limits {
    /// For a request head (and a TLS handshake).
    pub header_read_timeout: Duration,
    /// Open connections; a connection past it is answered 503 and closed.
    pub max_connections: usize,
}

/// File descriptors kept for everything but HTTP connections: the database, the log, chunk
/// files, the peers, the gRPC port.
const RESERVED_FDS: u64 = 512;

/// `configured`, lowered to what the process's open-file limit leaves for connections, so that
/// the cap, not `accept` failing with EMFILE, is what a flood of connections meets.
pub fn connection_cap(configured: usize) -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    let known = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    if !known || limit.rlim_cur == libc::RLIM_INFINITY {
        return configured;
    }
    let room = usize::try_from(limit.rlim_cur.saturating_sub(RESERVED_FDS).max(16)).unwrap_or(16);
    if room < configured {
        tracing::warn!(
            configured,
            used = room,
            open_files = limit.rlim_cur,
            "[http] max_connections is above what the open-file limit allows; raise `ulimit -n` (LimitNOFILE=) to allow more"
        );
    }
    configured.min(room)
}

/// The answer on a connection over the cap: the same JSON error shape as the API's.
const OVERLOADED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: 128\r\n\r\n{\"error\":\"overloaded\",\"message\":\"this node has as many connections open as it takes; retry after a moment, or use another node\"}";

/// Serves `app` on `listener` until `shutdown` resolves, then lets the requests in flight finish.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let header_read_timeout = limits.header_read_timeout;
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let graceful = GracefulShutdown::new();
    let open = Arc::new(Semaphore::new(limits.max_connections));
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "cannot accept an HTTP connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(slot) = open.clone().try_acquire_owned() else {
            refuse(stream, tls.is_some());
            continue;
        };
        // TCP_NODELAY: without it the last, short segment of a streamed response waited for the
        // client's delayed ACK (~40 ms on Linux); one-client `/play` of a 10 MiB track had p99
        // 48 ms.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on a connection");
        }
        let service = TowerToHyperService::new(app.clone());
        let Some(tls) = &tls else {
            let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "HTTP connection ended with an error");
                }
                drop(slot);
            });
            continue;
        };
        // The handshake runs in the connection's task; the graceful shutdown watches it after.
        let (tls, http, watcher) = (tls.clone(), http.clone(), graceful.watcher());
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(header_read_timeout, tls.accept(stream)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return tracing::debug!(error = %e, "TLS handshake failed"),
                Err(_) => return tracing::debug!("TLS handshake timed out"),
            };
            let connection = watcher.watch(http.serve_connection(TokioIo::new(stream), service));
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "HTTPS connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Turns away a connection over the cap: a plain one gets a 503 (within a second, or it is just
/// closed), a TLS one is closed (no handshake is spent on it).
fn refuse(stream: tokio::net::TcpStream, tls: bool) {
    api::metrics::shed("connections");
    if tls {
        return;
    }
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let mut stream = stream;
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            stream.write_all(OVERLOADED).await?;
            stream.shutdown().await
        })
        .await;
    });
}

#[cfg(test)]
mod tests {
    use super::OVERLOADED;

    /// The canned 503's Content-Length is its body's length, and the body is the API's JSON
    /// error shape.
    #[test]
    fn the_connection_refusal_is_a_well_formed_response() {
        let text = std::str::from_utf8(OVERLOADED).expect("ASCII");
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .and_then(|v| v.parse().ok())
            .expect("a Content-Length");
        assert_eq!(length, body.len());
        let json: serde_json::Value = serde_json::from_str(body).expect("JSON");
        assert_eq!(json["error"], "overloaded");
    }
}
