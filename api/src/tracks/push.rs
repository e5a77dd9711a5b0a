//! Pushing an upload's chunks to the other nodes ahead of their writes (`raft::by_hash`): over
//! HTTP, so that a megabyte of audio crawling over a slow link never sits in front of the Raft
//! connection's heartbeats; the write itself then travels without the bytes. The push only
//! saves sending the bytes: a node it missed is sent the write with them.

use std::sync::LazyLock;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use raft::Replica;
use raft::by_hash::PushRefused;
use storage::ChunkHash;

use crate::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::extract::PathParam;

/// The header carrying the push's proof (`Replica::chunk_push_proof`).
pub(crate) const PROOF_HEADER: &str = "x-chorus-push-proof";

/// How long one push may take. Generous: at 200 ms round trips a megabyte on a cold
/// connection takes ~1.4 s, and a node the push missed gets the bytes inside a Raft message,
/// the very thing the push is there to avoid.
const PUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// One client for every push: its connections to the peers stay open, so their TCP windows
/// stay open too.
static CLIENT: LazyLock<Option<reqwest::Client>> = LazyLock::new(|| {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(1))
        .timeout(PUSH_TIMEOUT)
        .tcp_nodelay(true)
        .build()
        .inspect_err(|e| tracing::error!(error = %e, "cannot build the chunk push client"))
        .ok()
});

/// Pushes `bytes` (named `hash`) to every other member this node can reach, all at once, and
/// waits until each has answered or timed out; returns how many took it.
pub(super) async fn push_chunk(r: &Replica, hash: ChunkHash, bytes: Bytes) -> usize {
    let Some(client) = CLIENT.as_ref() else {
        return 0;
    };
    let proof = r.chunk_push_proof(&hash);
    let pushes = r.push_targets().into_iter().map(|(id, addr)| {
        let request = client
            .put(format!("http://{addr}/cluster/chunks/{}", hash.to_hex()))
            .header(PROOF_HEADER, &proof)
            .body(bytes.clone())
            .send();
        async move {
            match request.await.and_then(|resp| resp.error_for_status()) {
                Ok(_) => true,
                Err(e) => {
                    tracing::debug!(node = id, %hash, error = %e, "pushing an audio chunk failed; the write will carry it");
                    false
                }
            }
        }
    });
    let took = futures_util::future::join_all(pushes).await;
    took.into_iter().filter(|ok| *ok).count()
}

/// A chunk pushed by another node ahead of the write that names it.
#[utoipa::path(put, path = "/cluster/chunks/{hash}", tag = "cluster",
    params(("hash" = String, Path, description = "The chunk's SHA-256, 64 hex digits")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The chunk's bytes (at most 1 MiB)"),
    responses((status = 204, description = "Kept"), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn receive_pushed_chunk(
    State(app): State<AppState>,
    PathParam(hash): PathParam<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let hash = ChunkHash::from_hex(&hash)
        .ok_or_else(|| ApiError::bad_request("a chunk is named by its SHA-256: 64 hex digits"))?;
    let proof = headers
        .get(PROOF_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    match app
        .replica
        .accept_pushed_chunk(hash, proof, body.to_vec())
        .await
    {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(e @ PushRefused::Forbidden) => Err(ApiError::forbidden(format!(
            "{e}; only the cluster's nodes push chunks"
        ))),
        Err(e @ (PushRefused::Size(_) | PushRefused::Mismatch(_))) => {
            Err(ApiError::bad_request(e.to_string()))
        }
        Err(e @ PushRefused::Store(_)) => Err(crate::internal(e.to_string())),
    }
}
