//! Building and installing snapshots: the `sm` tree streamed to and from `current.snap`, which
//! names chunks and never carries them.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io;
use std::path::Path;
use std::sync::PoisonError;
use std::sync::atomic::Ordering;

use super::{INSTALLING, Inner, M_APPLIED, M_MEMBERSHIP, M_PREFIX, encode_io, sled_io};
use crate::change_feed::FeedItem;
use crate::chunks::{ChunkHash, sync_dir};
use crate::snapshot::{SnapshotReader, SnapshotWriter};
use crate::state::State;
use crate::state::tracks::chunks_named_by;
use crate::types::SnapshotMeta;

/// The distinct chunks the snapshot in `file` names. Blocking.
pub fn chunks_named_by_snapshot(file: &Path) -> io::Result<HashSet<ChunkHash>> {
    chunks_named_in(File::open(file)?)
}

/// The distinct chunks the snapshot read from `input` names. Blocking.
pub fn chunks_named_in(input: impl io::Read) -> io::Result<HashSet<ChunkHash>> {
    let mut reader = SnapshotReader::new(input)?;
    let mut named = HashSet::new();
    while let Some(record) = reader.next_record()? {
        let chunks = chunks_named_by(&record.key, &record.value)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        named.extend(chunks);
    }
    Ok(named)
}

impl Inner {
    /// Streams the tree into a new `current.snap`, then removes the chunks released at or
    /// before its index. Blocking.
    pub(super) fn build_blocking(&self) -> io::Result<SnapshotMeta> {
        let tmp = self.next_file("building");
        let (meta, ()) = self.write_tree(&tmp, |_| ())?;
        // Every chunk the file names was synced before the batch that named it was written;
        // this covers a caller that never let the writer run.
        self.chunks.sync_pending()?;
        fs::rename(&tmp, self.current_path())?;
        sync_dir(&self.dir)?;
        self.remove_released(meta.last_log_id.map_or(0, |l| l.index))?;
        Ok(meta)
    }

    /// Streams the tree as of `last_applied` into a new snapshot file at `path` (synced), and
    /// returns its metadata with what `view` saw of the state at that same position. Blocking.
    pub(super) fn write_tree<V>(
        &self,
        path: &Path,
        view: impl FnOnce(&State) -> V,
    ) -> io::Result<(SnapshotMeta, V)> {
        let (meta, seen, tree_held) = {
            let guard = self.applied.read().unwrap_or_else(PoisonError::into_inner);
            // The tree as of `last_applied` (no batch is in flight while the lock is held), kept
            // there until the file is written: applies go on meanwhile, their batches wait. The
            // drain synced the chunk files those batches name.
            let tree_held = self.sm_writer.hold()?;
            let id_part = guard.last_applied.map_or("none".to_string(), |l| {
                format!("{}-{}", l.leader_id, l.index)
            });
            let meta = SnapshotMeta {
                last_log_id: guard.last_applied,
                last_membership: guard.membership.clone(),
                snapshot_id: format!(
                    "{id_part}-{}",
                    self.file_seq.fetch_add(1, Ordering::Relaxed)
                ),
            };
            (meta, view(&guard.state), tree_held)
        };
        let mut writer = SnapshotWriter::new(File::create(path)?, &meta)?;
        for item in self.sm.iter() {
            let (key, value) = item.map_err(sled_io)?;
            if !key.starts_with(M_PREFIX) {
                writer.record(&key, &value)?;
            }
        }
        drop(tree_held);
        writer.finish()?.sync_all()?;
        Ok((meta, seen))
    }

    /// Replaces the whole state with the snapshot in `current.snap`. Blocking.
    pub(super) fn install_blocking(
        &self,
        expected: Option<&SnapshotMeta>,
    ) -> io::Result<SnapshotMeta> {
        let path = self.current_path();
        let mut reader = SnapshotReader::new(File::open(&path)?)?;
        let meta = reader.meta.clone();
        if let Some(expected) = expected
            && expected.last_log_id != meta.last_log_id
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "snapshot file is at {:?}, expected {:?}",
                    meta.last_log_id, expected.last_log_id
                ),
            ));
        }
        let mut guard = self.write_lock();
        // Nothing queued may land in the tree after it is cleared.
        self.sm_writer.drain()?;
        // Durable before anything is cleared: a crash from here on is repaired at the next open
        // by installing `current.snap` again.
        self.control.insert(INSTALLING, &[1u8]).map_err(sled_io)?;
        self.db.sync_small_values()?;
        self.sm.clear().map_err(sled_io)?;
        let mut batch = sled::Batch::default();
        let mut pending = 0usize;
        while let Some(record) = reader.next_record()? {
            batch.insert(record.key, record.value);
            pending += 1;
            if pending == 10_000 {
                self.sm
                    .apply_batch(std::mem::take(&mut batch))
                    .map_err(sled_io)?;
                pending = 0;
            }
        }
        batch.insert(M_APPLIED, encode_io(&meta.last_log_id)?);
        batch.insert(M_MEMBERSHIP, encode_io(&meta.last_membership)?);
        self.sm.apply_batch(batch).map_err(sled_io)?;
        // The installed state durable before the marker goes: openraft purges the log up to the
        // snapshot next.
        self.db.sync_everything()?;
        self.control.remove(INSTALLING).map_err(sled_io)?;
        self.db.sync_small_values()?;
        guard.state = State::load(&self.sm).map_err(io::Error::other)?;
        guard.last_applied = meta.last_log_id;
        guard.membership = meta.last_membership.clone();
        // The snapshot replaced this node's own, so only the new state's chunks are needed.
        self.released
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        let state = &guard.state;
        let removed = self.chunks.sweep(|h| state.tracks.names_chunk(h))?;
        let missing = self.chunks.lacking(state.tracks.chunks()).len();
        drop(guard);
        self.waiters.applied(meta.last_log_id);
        self.feed.publish([FeedItem::Replaced {
            index: meta.last_log_id.map_or(0, |l| l.index),
        }]);
        tracing::info!(last_log_id = ?meta.last_log_id, removed_chunks = removed, "installed snapshot");
        if missing > 0 {
            // Only after a crash between this node's checks and the install: a check finds them.
            tracing::error!(
                missing,
                "the installed state names audio chunks this node lacks; run `chorus verify`"
            );
        }
        Ok(meta)
    }
}
