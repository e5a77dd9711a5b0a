//! Read access to the applied state and the audio, for the API and the raft crate.

use std::io;
use std::sync::{Arc, PoisonError};

use tokio::sync::broadcast;

use super::Inner;
use crate::applied_waiters::ApplyWaitError;
use crate::change_feed::FeedItem;
use crate::chunks::{ChunkError, ChunkHash, ChunkStore};
use crate::state::State;
use crate::types::LogId;

/// Read access to the applied state and the audio, for the API's reads.
#[derive(Debug, Clone)]
pub struct StateReader {
    pub(super) inner: Arc<Inner>,
}

impl StateReader {
    /// Runs `f` on a consistent view of the state (between two applied batches).
    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        let guard = self
            .inner
            .applied
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        f(&guard.state)
    }

    /// Runs `f` on a consistent view of the state and the index of the last entry that view
    /// includes (0 before any).
    pub fn read_indexed<R>(&self, f: impl FnOnce(&State, u64) -> R) -> R {
        let guard = self
            .inner
            .applied
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        f(&guard.state, guard.last_applied.map_or(0, |l| l.index))
    }

    /// Hears what every entry applied from now on changes, in log order (see
    /// [`crate::change_feed`]).
    pub fn subscribe_changes(&self) -> broadcast::Receiver<FeedItem> {
        self.inner.feed.subscribe()
    }

    /// One audio chunk, checked against its hash. Blocking.
    pub fn chunk(&self, hash: &ChunkHash) -> Result<bytes::Bytes, ChunkError> {
        self.inner.chunks.read(hash)
    }

    /// The node's chunk store (verify, repair, serving chunks to peers).
    pub fn chunk_store(&self) -> &Arc<ChunkStore> {
        &self.inner.chunks
    }

    /// Chunks the state names that this node has no file for (a file deleted or found damaged
    /// by a check; they are fetched again from peers). Blocking: checks each file exists.
    pub fn missing_chunks(&self) -> Vec<ChunkHash> {
        let named: Vec<ChunkHash> = self.read(|s| s.tracks.chunks().copied().collect());
        self.inner.chunks.lacking(&named)
    }

    /// Waits until the state of every applied entry is in the sled tree (the `sm-writer` has
    /// caught up, with the chunk files it names synced): for shutdown. Blocking.
    pub fn finish_writes(&self) -> io::Result<()> {
        self.inner.sm_writer.drain()
    }

    pub fn last_applied(&self) -> Option<LogId> {
        self.inner
            .applied
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .last_applied
    }

    /// Waits until log index `index` is applied here, `deadline` passes, or the waiters are
    /// closed because the Raft core stopped.
    pub async fn wait_applied(
        &self,
        index: u64,
        deadline: tokio::time::Instant,
    ) -> Result<(), ApplyWaitError> {
        let Some(applied) = self.inner.waiters.wait(index)? else {
            return Ok(());
        };
        match tokio::time::timeout_at(deadline, applied).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(ApplyWaitError::Closed),
            Err(_) => Err(ApplyWaitError::TimedOut),
        }
    }

    /// Fails every wait for an entry not applied yet: for when the Raft core has stopped and
    /// nothing more will be applied, so that waiting requests answer at once.
    pub fn close_waiters(&self) {
        self.inner.waiters.close();
    }
}
