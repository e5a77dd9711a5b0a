//! Chunk files nothing names: removed once a snapshot past their release is current, and swept
//! at open.

use std::collections::HashSet;
use std::io;
use std::sync::PoisonError;

use super::Inner;
use super::snapshots::chunks_named_by_snapshot;

impl Inner {
    /// Removes the files of chunks released at or before `upto` that nothing names again.
    pub(super) fn remove_released(&self, upto: u64) -> io::Result<()> {
        let guard = self.write_lock();
        let mut released = self.released.lock().unwrap_or_else(PoisonError::into_inner);
        let mut removed = 0usize;
        let mut kept = Vec::new();
        for (at, hash) in released.drain(..) {
            if at > upto {
                kept.push((at, hash));
            } else if !guard.state.tracks.names_chunk(&hash) {
                self.chunks.remove(&hash)?;
                removed += 1;
            }
        }
        *released = kept;
        if removed > 0 {
            tracing::debug!(
                chunks = removed,
                "removed audio chunks nothing names any more"
            );
        }
        Ok(())
    }

    /// Removes chunk files that neither the state nor the current snapshot names. Blocking;
    /// for `open`, before anything applies.
    pub(super) fn sweep_unnamed_chunks(&self) -> io::Result<()> {
        let snapshot_names = match self.current_path().exists() {
            true => chunks_named_by_snapshot(&self.current_path())?,
            false => HashSet::new(),
        };
        let guard = self.write_lock();
        let state = &guard.state;
        let removed = self
            .chunks
            .sweep(|h| state.tracks.names_chunk(h) || snapshot_names.contains(h))?;
        if removed > 0 {
            tracing::info!(
                chunks = removed,
                "removed audio chunks nothing names (written before a crash)"
            );
        }
        // Named by the snapshot only: released as of now, removed by the next build.
        let at = guard.last_applied.map_or(0, |l| l.index);
        let mut released = self.released.lock().unwrap_or_else(PoisonError::into_inner);
        released.extend(
            snapshot_names
                .into_iter()
                .filter(|h| !state.tracks.names_chunk(h))
                .map(|h| (at, h)),
        );
        let missing = self.chunks.lacking(state.tracks.chunks()).len();
        if missing > 0 {
            tracing::error!(
                missing,
                "the state names audio chunks this node lacks (deleted or lost files); run `chorus verify` to fetch them from peers"
            );
        }
        Ok(())
    }
}
