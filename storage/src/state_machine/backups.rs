//! Preparing a backup: the tree written to a file as of one log position (as a snapshot is,
//! but never made current) and every chunk it names hard-linked beside it, so neither a
//! snapshot build nor a deleted track can remove a file the archive still has to send.

use std::fs;
use std::io;
use std::sync::atomic::Ordering;

use super::Inner;
use super::reader::StateReader;
use super::snapshots::chunks_named_by_snapshot;
use crate::backup::{Backup, BackupHeader, RemovedOnDrop, STATE_FILE};
use crate::chunks::ChunkError;

impl StateReader {
    /// Prepares a backup of the state as applied now (see [`crate::backup`]). Snapshot builds
    /// and installs wait while it is prepared (they could remove chunks it names); writes go
    /// on. The files stay until the returned [`Backup`] is dropped.
    pub async fn prepare_backup(&self) -> io::Result<Backup> {
        let _serial = self.inner.snapshot_lock.lock().await;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.prepare_backup_blocking())
            .await
            .map_err(io::Error::other)?
    }
}

impl Inner {
    fn prepare_backup_blocking(&self) -> io::Result<Backup> {
        let seq = self.file_seq.fetch_add(1, Ordering::Relaxed);
        let dir = RemovedOnDrop::new(
            self.dir
                .join(format!("backup-{}-{seq}", std::process::id())),
        );
        fs::create_dir(dir.path())?;
        let state_file = dir.path().join(STATE_FILE);
        let (meta, counts) = self.write_tree(&state_file, |state| {
            [
                state.users.len(),
                state.tracks.len(),
                state.queue.len(),
                state.queue.history_len(),
            ]
            .map(|n| n as u64)
        })?;
        let Some(last_log_id) = meta.last_log_id else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "this node has applied nothing yet, so there is nothing to back up",
            ));
        };
        let mut named: Vec<_> = chunks_named_by_snapshot(&state_file)?.into_iter().collect();
        named.sort();
        let mut chunks = Vec::with_capacity(named.len());
        for hash in named {
            let from = self.chunks.path(&hash);
            let to = dir.path().join(hash.to_hex());
            match fs::hard_link(&from, &to) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!(
                            "{}; run `chorus verify` on it, or back up from another node",
                            ChunkError::Missing(hash)
                        ),
                    ));
                }
                // Another file system (a chunks directory mounted elsewhere): copy instead.
                Err(_) => {
                    fs::copy(&from, &to)?;
                }
            }
            chunks.push((hash, fs::metadata(&to)?.len()));
        }
        let [users, tracks, queued, played] = counts;
        let header = BackupHeader {
            last_log_id,
            created_at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            users,
            tracks,
            queued,
            played,
            state_bytes: fs::metadata(&state_file)?.len(),
            chunks: chunks.len() as u64,
            chunk_bytes: chunks.iter().map(|(_, len)| len).sum(),
        };
        Backup::new(dir, header, chunks)
    }
}
