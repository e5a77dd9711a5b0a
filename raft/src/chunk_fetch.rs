//! Fetching audio chunks from peers by hash: for a snapshot install (the chunks it names that
//! this node lacks) and for a repair (`chorus verify`: chunks missing or found damaged here).
//!
//! Up to [`IN_FLIGHT`] chunks are asked for at once, each from the peers in the order given
//! (the leader first) until one has it; each is checked against its hash before it is stored
//! (`ChunkStore::put_received`), and all of them are synced before the fetch returns. Memory is
//! bounded by `IN_FLIGHT` chunks.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use storage::{ChunkHash, ChunkStore};

use crate::protocol::{ChunkBytes, PeerRequest, PeerResponse};
use crate::transport::Transport;

/// Chunks asked for at once.
const IN_FLIGHT: usize = 8;

/// How long one peer gets to answer for one chunk.
const CHUNK_TIMEOUT: Duration = Duration::from_secs(10);

/// What a fetch did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub chunks: usize,
    pub bytes: u64,
    /// Chunks no peer could give (each with the last reason).
    pub failed: Vec<(ChunkHash, String)>,
    /// Set if what was fetched could not be made durable (then none of it counts).
    pub sync_failed: Option<String>,
}

impl Fetched {
    /// Every chunk wanted is here and durable.
    pub fn complete(&self) -> bool {
        self.failed.is_empty() && self.sync_failed.is_none()
    }
}

/// Fetches `wanted` into `store` from `peers` (in order of preference), then syncs the store.
pub(crate) async fn fetch(
    transport: &Transport,
    peers: &[u64],
    store: &Arc<ChunkStore>,
    wanted: Vec<ChunkHash>,
) -> Fetched {
    let started = std::time::Instant::now();
    let mut results = futures_util::stream::iter(wanted)
        .map(|hash| async move { (hash, fetch_one(transport, peers, store, hash).await) })
        .buffer_unordered(IN_FLIGHT);
    let mut fetched = Fetched::default();
    while let Some((hash, result)) = results.next().await {
        match result {
            Ok(bytes) => {
                fetched.chunks += 1;
                fetched.bytes += bytes;
            }
            Err(why) => fetched.failed.push((hash, why)),
        }
    }
    let sync = store.clone();
    let synced = on_blocking_pool(move || sync.sync_pending()).await;
    if let Err(e) = synced {
        tracing::error!(error = %e, "syncing fetched audio chunks failed");
        fetched.sync_failed = Some(e);
    }
    if fetched.chunks > 0 {
        let secs = started.elapsed().as_secs_f64().max(1e-6);
        tracing::info!(
            chunks = fetched.chunks,
            mib = fetched.bytes >> 20,
            mib_per_s = (fetched.bytes as f64 / secs / 1048576.0).round(),
            failed = fetched.failed.len(),
            "fetched audio chunks from peers"
        );
    }
    fetched
}

/// One chunk from the first peer that has it; its size, or why none gave it.
async fn fetch_one(
    transport: &Transport,
    peers: &[u64],
    store: &Arc<ChunkStore>,
    hash: ChunkHash,
) -> Result<u64, String> {
    let mut why = "no peer to ask".to_string();
    for &peer in peers {
        let answer = transport
            .call(peer, &PeerRequest::GetChunk(hash), CHUNK_TIMEOUT)
            .await;
        let bytes = match answer {
            Ok(PeerResponse::Chunk(Ok(ChunkBytes(bytes)))) => bytes,
            Ok(PeerResponse::Chunk(Err(e))) => {
                why = format!("node {peer}: {e}");
                continue;
            }
            Ok(other) => {
                why = format!("node {peer} answered {other:?}");
                continue;
            }
            Err(e) => {
                why = format!("node {peer}: {e}");
                continue;
            }
        };
        let size = bytes.len() as u64;
        let store = store.clone();
        let stored = on_blocking_pool(move || store.put_received(&hash, &bytes)).await;
        match stored {
            Ok(()) => return Ok(size),
            Err(e) => why = format!("from node {peer}: {e}"),
        }
    }
    Err(why)
}

/// Runs blocking chunk-store work on tokio's blocking pool; its error, or the task's, as text
/// for a peer's answer or a fetch report.
pub(crate) async fn on_blocking_pool<T, E>(
    work: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, String>
where
    T: Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}
