//! The Raft state machine: applies committed entries to [`State`], persists them in the `sm`
//! sled tree and the audio in the chunk store; builds and installs snapshots as files under
//! `<data_dir>/snapshots/`. This file is the openraft adapter (apply); `startup` opens the store
//! and repairs what a crash left, `snapshots` builds and installs, `chunk_gc` removes chunk files
//! nothing names, `reader` is the read side.
//!
//! Invariants:
//! - Every applied batch is one atomic sled batch holding the domain writes *and* `m/applied`
//!   and `m/membership`, so the tree always describes exactly one log position. The batches are
//!   written by their own thread ([`crate::sm_writer`]), so the tree may trail the in-memory
//!   state; whatever reads or replaces the whole tree drains that writer first.
//! - An apply that stores a chunk writes its file before the apply answers, so a track is never
//!   visible without its audio; the writer syncs the chunk files before it writes a batch that
//!   names them, so the tree never names a chunk a power loss could take.
//! - A chunk no track or upload names any more is released with the index of that apply and
//!   its file removed once a snapshot at or after that index is current: until then the current
//!   snapshot, or the tree a crash leaves behind, may still name it. Removal happens under the
//!   state lock, so no apply stores the same chunk again meanwhile.
//! - The in-memory [`State`] and the tree change together under the write lock; readers
//!   ([`StateReader`]) take the read lock and so see whole entries only.
//! - A snapshot is the `sm` tree streamed to a file as of one log position (taken under the
//!   read lock; the `sm-writer` is then held there while applies go on in memory). It names
//!   chunks, never carries them: an install refuses a file naming a chunk this node lacks
//!   before anything is replaced (the `raft` crate fetches them from peers first). An install
//!   interrupted by a crash is redone from `current.snap` on the next start (the `installing`
//!   marker in the `sm_control` tree says so; it lives outside `sm` because the install
//!   clears `sm`).
//! - What each entry visibly changed is published on the change feed after its apply, in log
//!   order; an install publishes that the whole state was replaced (`crate::change_feed`).
//! - At open, chunk files neither the state nor the current snapshot names are removed (an
//!   apply that wrote one and a crash before its batch reached the tree; the entry is applied
//!   again from the log).

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use tokio::io::AsyncWriteExt;

mod backups;
mod chunk_gc;
mod reader;
mod snapshots;
mod startup;
#[cfg(test)]
mod tests;

pub use reader::StateReader;
pub use snapshots::{chunks_named_by_snapshot, chunks_named_in};

use crate::applied_waiters::AppliedWaiters;
pub use crate::applied_waiters::ApplyWaitError;
use crate::change_feed::{AppliedChanges, ChangeFeed, FeedItem};
use crate::chunks::{ChunkHash, ChunkStore, sync_dir};
use crate::codec;
use crate::command::Applied;
use crate::durable::DurableSled;
use crate::sm_writer::SmWriter;
use crate::snapshot::SnapshotReader;
use crate::state::{Changes, State};
use crate::types::{
    Entry, LogId, Snapshot, SnapshotMeta, StorageError, StorageIOError, StoredMembership,
    TypeConfig,
};

const M_PREFIX: &[u8] = b"m/";
const M_APPLIED: &[u8] = b"m/applied";
const M_MEMBERSHIP: &[u8] = b"m/membership";
/// In the `sm_control` tree: a snapshot install is under way (see `install_blocking`).
const INSTALLING: &[u8] = b"installing";
pub(crate) const CURRENT: &str = "current.snap";

/// The state as of `last_applied`.
#[derive(Debug, Default)]
pub struct AppliedState {
    pub state: State,
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
}

#[derive(Debug)]
struct Inner {
    /// The state's trees (`sm`, `sm_control`) and the log's metadata.
    db: DurableSled,
    sm: sled::Tree,
    /// Writes the `sm` batches of applied entries, off the apply path.
    sm_writer: SmWriter,
    /// Holds the install marker. Not `sm`: an install clears `sm`, and with it the marker.
    control: sled::Tree,
    chunks: Arc<ChunkStore>,
    /// Chunks nothing names any more, with the index of the apply that let them go.
    released: Mutex<Vec<(u64, ChunkHash)>>,
    applied: RwLock<AppliedState>,
    dir: PathBuf,
    /// The file most recently handed out by `begin_receiving_snapshot`.
    receiving: Mutex<Option<PathBuf>>,
    /// Serialises snapshot builds and installs.
    snapshot_lock: tokio::sync::Mutex<()>,
    file_seq: AtomicU64,
    waiters: AppliedWaiters,
    feed: ChangeFeed,
}

#[derive(Debug, Clone)]
pub struct StateMachineStore {
    inner: Arc<Inner>,
}

fn sled_io(e: sled::Error) -> io::Error {
    io::Error::other(e)
}

fn encode_io<T: serde::Serialize>(value: &T) -> io::Result<Vec<u8>> {
    codec::encode(value).map_err(io::Error::other)
}

impl Inner {
    fn write_lock(&self) -> std::sync::RwLockWriteGuard<'_, AppliedState> {
        self.applied.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn current_path(&self) -> PathBuf {
        self.dir.join(CURRENT)
    }

    fn next_file(&self, kind: &str) -> PathBuf {
        let seq = self.file_seq.fetch_add(1, Ordering::Relaxed);
        self.dir
            .join(format!("{kind}-{}-{seq}.snap", std::process::id()))
    }
}

async fn same_file(file: &tokio::fs::File, path: &Path) -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let (a, b) = (file.metadata().await?, tokio::fs::metadata(path).await?);
    Ok(a.dev() == b.dev() && a.ino() == b.ino())
}

impl StateMachineStore {
    /// Installs the `current.snap` a restore wrote into this (new) store. Blocking.
    pub(crate) fn install_restored(&self) -> io::Result<SnapshotMeta> {
        self.inner.install_blocking(None)
    }

    pub fn reader(&self) -> StateReader {
        StateReader {
            inner: self.inner.clone(),
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(io::Error::other)?
    }

    async fn open_current(&self, meta: SnapshotMeta) -> io::Result<Snapshot> {
        let file = tokio::fs::File::open(self.inner.current_path()).await?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(file),
        })
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let _serial = self.inner.snapshot_lock.lock().await;
        let started = std::time::Instant::now();
        let meta = self
            .blocking(|inner| inner.build_blocking())
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        tracing::info!(snapshot_id = %meta.snapshot_id, last_log_id = ?meta.last_log_id, "built snapshot");
        let sig = meta.signature();
        let snapshot = self
            .open_current(meta)
            .await
            .map_err(|e| StorageIOError::read_snapshot(Some(sig), &e))?;
        let m = &crate::metrics::METRICS;
        m.snapshot_builds.inc();
        m.snapshot_build_seconds
            .observe(started.elapsed().as_secs_f64());
        if let Ok(file) = snapshot.snapshot.metadata().await {
            m.snapshot_built_bytes.inc_by(file.len());
        }
        Ok(snapshot)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let guard = self
            .inner
            .applied
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        Ok((guard.last_applied, guard.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        tracing::trace!(target: "chorus::stages", stage = "apply.start");
        let mut guard = self.inner.write_lock();
        let mut changes = Changes::default();
        let mut responses = Vec::new();
        let mut released = Vec::new();
        let mut visible = Vec::new();
        let write_err = |e: io::Error| StorageIOError::write_state_machine(&e);
        for entry in entries {
            guard.last_applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => Applied::done(),
                EntryPayload::Normal(req) => {
                    let response = guard
                        .state
                        .apply(&req, &mut changes)
                        .map_err(|e| StorageIOError::apply(entry.log_id, &e))?;
                    // Written before the apply answers: a track is never visible without its
                    // audio. Synced by the writer before the batch that names it.
                    for (hash, bytes) in changes.take_stored_chunks() {
                        self.inner.chunks.put(&hash, &bytes).map_err(write_err)?;
                    }
                    let index = entry.log_id.index;
                    let seen = changes.take_visible();
                    if !seen.is_empty() {
                        visible.push(FeedItem::Applied(Arc::new(AppliedChanges {
                            index,
                            changes: seen,
                        })));
                    }
                    released.extend(
                        changes
                            .take_released_chunks()
                            .into_iter()
                            .map(|h| (index, h)),
                    );
                    response
                }
                EntryPayload::Membership(m) => {
                    guard.membership = StoredMembership::new(Some(entry.log_id), m);
                    Applied::done()
                }
            };
            responses.push(response);
        }
        let encode_err = |e: crate::codec::CodecError| StorageIOError::write_state_machine(&e);
        guard.state.finish_batch(&mut changes).map_err(encode_err)?;
        changes
            .put(M_APPLIED.to_vec(), &guard.last_applied)
            .map_err(encode_err)?;
        changes
            .put(M_MEMBERSHIP.to_vec(), &guard.membership)
            .map_err(encode_err)?;
        if !released.is_empty() {
            self.inner
                .released
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend(released);
        }
        // Not flushed: the log already is, and a crash replays entries after `m/applied`.
        self.inner
            .sm_writer
            .submit(changes.into_writes())
            .map_err(write_err)?;
        let last = guard.last_applied;
        drop(guard);
        self.inner.waiters.applied(last);
        // After the lock is released: whoever hears of an index finds the state there or later.
        self.inner.feed.publish(visible);
        tracing::trace!(target: "chorus::stages", stage = "apply.done");
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        tracing::info!("receiving a snapshot");
        let path = self.inner.next_file("incoming");
        let file = tokio::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        let abandoned = self
            .inner
            .receiving
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .replace(path);
        // A transfer that never finished (a leader that went away, a refused part): its file
        // would otherwise stay until the next start, one per abandoned transfer.
        if let Some(abandoned) = abandoned
            && let Err(e) = tokio::fs::remove_file(&abandoned).await
        {
            tracing::debug!(path = %abandoned.display(), error = %e, "cannot remove an abandoned incoming snapshot");
        }
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        mut snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let sig = meta.signature();
        let err = |e: io::Error| {
            StorageError::from(StorageIOError::write_snapshot(Some(sig.clone()), &e))
        };
        let _serial = self.inner.snapshot_lock.lock().await;
        let started = std::time::Instant::now();
        snapshot.flush().await.map_err(err)?;
        snapshot.sync_all().await.map_err(err)?;
        tracing::info!(took = ?started.elapsed(), "received snapshot synced");
        let received = self
            .inner
            .receiving
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        // openraft normally hands back the file we gave out in `begin_receiving_snapshot`; any
        // other file (a test may substitute one) is copied next to it first.
        let ours = match &received {
            Some(path) => same_file(&snapshot, path).await.map_err(err)?,
            None => false,
        };
        let incoming = match received {
            Some(path) if ours => path,
            _ => {
                let tmp = self.inner.next_file("copy");
                let mut out = tokio::fs::File::create(&tmp).await.map_err(err)?;
                use tokio::io::AsyncSeekExt;
                snapshot.seek(io::SeekFrom::Start(0)).await.map_err(err)?;
                tokio::io::copy(&mut snapshot, &mut out)
                    .await
                    .map_err(err)?;
                out.sync_all().await.map_err(err)?;
                tmp
            }
        };
        let expected = meta.clone();
        let bytes = self.blocking(move |inner| {
            // Refused before anything of this node's is replaced.
            let lacking = inner
                .chunks
                .lacking(&chunks_named_by_snapshot(&incoming)?)
                .len();
            if lacking > 0 {
                let _ = fs::remove_file(&incoming);
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "the snapshot names {lacking} audio chunks this node does not have (they are fetched from peers before an install)"
                    ),
                ));
            }
            // The chunks fetched for it are durable before it replaces anything.
            inner.chunks.sync_pending()?;
            fs::rename(&incoming, inner.current_path())?;
            sync_dir(&inner.dir)?;
            // For the metrics only: never a reason to fail the install.
            let bytes = fs::metadata(inner.current_path()).map_or(0, |m| m.len());
            inner.install_blocking(Some(&expected))?;
            Ok(bytes)
        })
        .await
        .map_err(err)?;
        let m = &crate::metrics::METRICS;
        m.snapshot_installs.inc();
        m.snapshot_install_seconds
            .observe(started.elapsed().as_secs_f64());
        m.snapshot_installed_bytes.inc_by(bytes);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        // Under the lock, so no build or install replaces the file between reading its header
        // and opening it.
        let _serial = self.inner.snapshot_lock.lock().await;
        let path = self.inner.current_path();
        if !path.exists() {
            return Ok(None);
        }
        let meta = self
            .blocking(move |_| Ok(SnapshotReader::new(File::open(&path)?)?.meta))
            .await
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        let sig = meta.signature();
        let snapshot = self
            .open_current(meta)
            .await
            .map_err(|e| StorageIOError::read_snapshot(Some(sig), &e))?;
        Ok(Some(snapshot))
    }
}
