//! The Raft state machine: applies committed entries to [`State`], persists them in the `sm`
//! sled tree and the audio in the chunk store; builds and installs snapshots as files under
//! `<data_dir>/snapshots/`.
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
//! - At open, chunk files neither the state nor the current snapshot names are removed (an
//!   apply that wrote one and a crash before its batch reached the tree; the entry is applied
//!   again from the log).

use std::collections::HashSet;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use tokio::io::AsyncWriteExt;

use crate::OpenError;
use crate::applied_waiters::AppliedWaiters;
pub use crate::applied_waiters::ApplyWaitError;
use crate::chunks::{ChunkError, ChunkHash, ChunkStore, sync_dir};
use crate::codec;
use crate::command::Response;
use crate::durable::DurableSled;
use crate::sm_writer::SmWriter;
use crate::snapshot::{SnapshotReader, SnapshotWriter};
use crate::state::tracks::chunks_named_by;
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
const CURRENT: &str = "current.snap";

/// The state as of `last_applied`.
#[derive(Debug, Default)]
pub struct Applied {
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
    applied: RwLock<Applied>,
    dir: PathBuf,
    /// The file most recently handed out by `begin_receiving_snapshot`.
    receiving: Mutex<Option<PathBuf>>,
    /// Serialises snapshot builds and installs.
    snapshot_lock: tokio::sync::Mutex<()>,
    file_seq: AtomicU64,
    waiters: AppliedWaiters,
}

#[derive(Debug, Clone)]
pub struct StateMachineStore {
    inner: Arc<Inner>,
}

/// Read access to the applied state and the audio, for the API's reads.
#[derive(Debug, Clone)]
pub struct StateReader {
    inner: Arc<Inner>,
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
        named
            .into_iter()
            .filter(|h| !self.inner.chunks.contains(h))
            .collect()
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

fn sled_io(e: sled::Error) -> io::Error {
    io::Error::other(e)
}

fn encode_io<T: serde::Serialize>(value: &T) -> io::Result<Vec<u8>> {
    codec::encode(value).map_err(io::Error::other)
}

impl Inner {
    fn write_lock(&self) -> std::sync::RwLockWriteGuard<'_, Applied> {
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

    /// Streams the tree into a new `current.snap`, then removes the chunks released at or
    /// before its index. Blocking.
    fn build_blocking(&self) -> io::Result<SnapshotMeta> {
        let tmp = self.next_file("building");
        let (meta, tree_held) = {
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
            (meta, tree_held)
        };
        let mut writer = SnapshotWriter::new(File::create(&tmp)?, &meta)?;
        for item in self.sm.iter() {
            let (key, value) = item.map_err(sled_io)?;
            if !key.starts_with(M_PREFIX) {
                writer.record(&key, &value)?;
            }
        }
        drop(tree_held);
        writer.finish()?.sync_all()?;
        // Every chunk the file names was synced before the batch that named it was written;
        // this covers a caller that never let the writer run.
        self.chunks.sync_pending()?;
        fs::rename(&tmp, self.current_path())?;
        sync_dir(&self.dir)?;
        self.remove_released(meta.last_log_id.map_or(0, |l| l.index))?;
        Ok(meta)
    }

    /// Removes the files of chunks released at or before `upto` that nothing names again.
    fn remove_released(&self, upto: u64) -> io::Result<()> {
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

    /// Replaces the whole state with the snapshot in `current.snap`. Blocking.
    fn install_blocking(&self, expected: Option<&SnapshotMeta>) -> io::Result<SnapshotMeta> {
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
        let missing = state
            .tracks
            .chunks()
            .filter(|h| !self.chunks.contains(h))
            .count();
        drop(guard);
        self.waiters.applied(meta.last_log_id);
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

    /// Removes chunk files that neither the state nor the current snapshot names. Blocking;
    /// for `open`, before anything applies.
    fn sweep_unnamed_chunks(&self) -> io::Result<()> {
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
        let missing = state
            .tracks
            .chunks()
            .filter(|h| !self.chunks.contains(h))
            .count();
        if missing > 0 {
            tracing::error!(
                missing,
                "the state names audio chunks this node lacks (deleted or lost files); run `chorus verify` to fetch them from peers"
            );
        }
        Ok(())
    }
}

async fn same_file(file: &tokio::fs::File, path: &Path) -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let (a, b) = (file.metadata().await?, tokio::fs::metadata(path).await?);
    Ok(a.dev() == b.dev() && a.ino() == b.ino())
}

impl StateMachineStore {
    pub(crate) fn open(db: DurableSled, chunks: ChunkStore, dir: &Path) -> Result<Self, OpenError> {
        let io_err = |source| OpenError::Io {
            path: dir.display().to_string(),
            source,
        };
        let corrupt = |message: String| OpenError::Corrupt {
            path: dir.display().to_string(),
            message,
        };
        fs::create_dir_all(dir).map_err(io_err)?;
        // Leftovers of builds or transfers that a crash interrupted.
        for entry in fs::read_dir(dir).map_err(io_err)? {
            let path = entry.map_err(io_err)?.path();
            if path.file_name().is_some_and(|n| n != CURRENT) {
                fs::remove_file(&path).map_err(io_err)?;
            }
        }
        let sm = db
            .db()
            .open_tree("sm")
            .map_err(|e| corrupt(e.to_string()))?;
        let control = db
            .db()
            .open_tree("sm_control")
            .map_err(|e| corrupt(e.to_string()))?;
        let chunks = Arc::new(chunks);
        let for_writer = chunks.clone();
        let sm_writer = SmWriter::start(
            sm.clone(),
            crate::sm_writer::COALESCE,
            Box::new(move || for_writer.sync_pending()),
        )
        .map_err(io_err)?;
        let inner = Inner {
            db,
            sm_writer,
            sm,
            control,
            chunks,
            released: Mutex::new(Vec::new()),
            applied: RwLock::new(Applied::default()),
            dir: dir.to_path_buf(),
            receiving: Mutex::new(None),
            snapshot_lock: tokio::sync::Mutex::new(()),
            file_seq: AtomicU64::new(0),
            waiters: AppliedWaiters::default(),
        };
        let interrupted = inner
            .control
            .contains_key(INSTALLING)
            .map_err(|e| corrupt(e.to_string()))?;
        if interrupted {
            tracing::warn!("a snapshot install was interrupted; installing it again");
            inner
                .install_blocking(None)
                .map_err(|e| corrupt(format!("redo snapshot install: {e}")))?;
        } else {
            let read = |key: &[u8]| -> Result<Option<sled::IVec>, OpenError> {
                inner.sm.get(key).map_err(|e| corrupt(e.to_string()))
            };
            let mut applied = Applied {
                state: State::load(&inner.sm).map_err(|e| corrupt(e.to_string()))?,
                ..Applied::default()
            };
            if let Some(bytes) = read(M_APPLIED)? {
                applied.last_applied = codec::decode(&bytes).map_err(|e| corrupt(e.to_string()))?;
            }
            if let Some(bytes) = read(M_MEMBERSHIP)? {
                applied.membership = codec::decode(&bytes).map_err(|e| corrupt(e.to_string()))?;
            }
            *inner.write_lock() = applied;
        }
        inner
            .sweep_unnamed_chunks()
            .map_err(|e| corrupt(format!("sweep the chunk store: {e}")))?;
        inner.waiters.applied(inner.write_lock().last_applied);
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// Repairs a state machine that is behind the log's purge point. openraft 0.9 purges the log
    /// up to a received snapshot while the snapshot is still being installed, so a crash in
    /// between leaves entries missing that neither the log nor the state machine has. If
    /// `current.snap` covers them it is installed again; otherwise the node cannot recover by
    /// itself, and says so instead of letting openraft fail on the missing entries.
    pub(crate) fn repair_if_behind(&self, purged: Option<LogId>) -> Result<(), OpenError> {
        let applied = self.reader().last_applied();
        if purged <= applied {
            return Ok(());
        }
        let corrupt = |message: String| OpenError::Corrupt {
            path: self.inner.dir.display().to_string(),
            message,
        };
        let snapshot = File::open(self.inner.current_path())
            .and_then(|f| Ok(SnapshotReader::new(f)?.meta))
            .ok();
        match snapshot {
            Some(meta) if meta.last_log_id >= purged => {
                tracing::warn!(
                    ?applied,
                    ?purged,
                    "state machine behind the purged log; installing current.snap again"
                );
                self.inner
                    .install_blocking(None)
                    .map(drop)
                    .map_err(|e| corrupt(format!("re-install current.snap: {e}")))
            }
            _ => Err(corrupt(format!(
                "the log is purged up to {purged:?} but the state machine has only applied {applied:?} and no snapshot covers the gap (a crash during a snapshot install); stop this node, delete its data directory and start it again: it will catch up from the leader"
            ))),
        }
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
        let meta = self
            .blocking(|inner| inner.build_blocking())
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        tracing::info!(snapshot_id = %meta.snapshot_id, last_log_id = ?meta.last_log_id, "built snapshot");
        let sig = meta.signature();
        self.open_current(meta)
            .await
            .map_err(|e| StorageIOError::read_snapshot(Some(sig), &e).into())
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

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        tracing::trace!(target: "chorus::stages", stage = "apply.start");
        let mut guard = self.inner.write_lock();
        let mut changes = Changes::default();
        let mut responses = Vec::new();
        let mut released = Vec::new();
        let write_err = |e: io::Error| StorageIOError::write_state_machine(&e);
        for entry in entries {
            guard.last_applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => Response::done(),
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
                    Response::done()
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
        self.blocking(move |inner| {
            // Refused before anything of this node's is replaced.
            let lacking = chunks_named_by_snapshot(&incoming)?
                .into_iter()
                .filter(|h| !inner.chunks.contains(h))
                .count();
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
            inner.install_blocking(Some(&expected))
        })
        .await
        .map_err(err)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Command, ErrorKind, Outcome, QueueCommand, Request, TrackCommand};
    use crate::state::tracks::{AudioInfo, CHUNK_SIZE, TrackMeta};
    use openraft::{CommittedLeaderId, Entry as RaftEntry};

    fn add(index: u64, id: u64) -> Entry {
        RaftEntry {
            log_id: openraft::LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Request {
                dedupe_key: None,
                at_ms: 0,
                command: Command::Queue(QueueCommand::Add {
                    id,
                    title: Some(format!("t{id}")),
                    artist: Some("a".into()),
                    duration: Some(60),
                }),
            }),
        }
    }

    /// openraft purged the log up to a received snapshot, then the node died before installing
    /// it: on the next open the state machine is brought up to the purge point from
    /// `current.snap`, or the open fails with advice instead of openraft failing later.
    #[tokio::test]
    async fn a_state_machine_behind_the_purged_log_is_repaired_or_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (_log, mut sm) = crate::open(dir.path()).expect("open");
        sm.apply((1..=3).map(|i| add(i, 100 + i)))
            .await
            .expect("apply");
        let covered = sm.build_snapshot().await.expect("build").meta.last_log_id;
        // Pretend the snapshot was received but its install never ran: the state is back at
        // index 1, the log purged up to the snapshot.
        sm.inner.sm.clear().expect("clear");
        let purged_at_1 = Some(openraft::LogId::new(CommittedLeaderId::new(1, 1), 1));
        sm.inner.write_lock().last_applied = purged_at_1;
        sm.repair_if_behind(covered)
            .expect("repaired from current.snap");
        let (applied, _) = sm.applied_state().await.expect("applied state");
        assert_eq!(applied, covered);
        assert_eq!(sm.reader().read(|s| s.queue.len()), 3);

        // A purge beyond every snapshot cannot be repaired here: a clear error, not a panic.
        let beyond = Some(openraft::LogId::new(CommittedLeaderId::new(1, 1), 99));
        let err = sm
            .repair_if_behind(beyond)
            .expect_err("nothing covers index 99");
        assert!(err.to_string().contains("unreadable"), "{err}");
    }

    /// The `sm` tree is written by its own thread: a snapshot built right after an apply, and
    /// a store opened after the previous one was dropped, still see every applied entry.
    #[tokio::test]
    async fn applied_entries_reach_snapshots_and_the_disk_although_written_in_the_background() {
        let dir = tempfile::tempdir().expect("temp dir");
        let last = {
            let (_log, mut sm) = crate::open(dir.path()).expect("open");
            for i in 1..=200 {
                sm.apply([add(i, 1000 + i)]).await.expect("apply");
            }
            sm.build_snapshot().await.expect("build");
            let (_fresh, _fresh_log, copy) = sent_to_a_fresh_store(&mut sm).await;
            assert_eq!(copy.reader().read(|s| s.queue.len()), 200);
            for i in 201..=210 {
                sm.apply([add(i, 1000 + i)]).await.expect("apply");
            }
            sm.applied_state().await.expect("applied").0
        };
        let (_log, mut sm) = crate::reopen(dir.path());
        assert_eq!(sm.applied_state().await.expect("applied").0, last);
        assert_eq!(sm.reader().read(|s| s.queue.len()), 210);
    }

    /// A node killed while installing a snapshot, after the install cleared `sm`, comes back
    /// with the snapshot installed: the marker lives outside `sm`, and its log has been purged
    /// up to the snapshot, so nothing else could bring it back.
    #[tokio::test]
    async fn an_install_interrupted_after_clearing_is_redone_on_open() {
        let dir = tempfile::tempdir().expect("temp dir");
        let last = {
            let (_log, mut sm) = crate::open(dir.path()).expect("open");
            sm.apply((1..=3).map(|i| add(i, 100 + i)))
                .await
                .expect("apply");
            let snapshot = sm.build_snapshot().await.expect("build");
            // What install_blocking has done when the process dies mid-install.
            let inner = &sm.inner;
            inner.control.insert(INSTALLING, &[1u8]).expect("marker");
            inner.sm.clear().expect("clear");
            inner.db.db().flush().expect("flush");
            snapshot.meta.last_log_id
        };
        let (_log, mut sm) = crate::reopen(dir.path());
        let (applied, _) = sm.applied_state().await.expect("applied state");
        assert_eq!(applied, last);
        let queued = sm.reader().read(|s| s.queue.len());
        assert_eq!(queued, 3);
        assert!(
            !sm.inner
                .control
                .contains_key(INSTALLING)
                .expect("read marker")
        );
    }

    fn entry(index: u64, command: Command) -> Entry {
        RaftEntry {
            log_id: openraft::LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Request {
                dedupe_key: None,
                at_ms: 0,
                command,
            }),
        }
    }

    /// Entries `first..first + 3` that begin upload `upload_id` (the next id) and put two
    /// chunks: a full one of `fill` bytes and a 10-byte tail of `fill + 1`.
    fn upload(first: u64, upload_id: u64, fill: u8) -> Vec<Entry> {
        use crate::command::TrackCommand::{BeginUpload, PutChunk};
        let chunk = |index: u32, len: usize| PutChunk {
            upload_id,
            index,
            bytes: vec![fill + index as u8; len],
        };
        vec![
            entry(first, Command::Tracks(BeginUpload { owner: 1 })),
            entry(first + 1, Command::Tracks(chunk(0, CHUNK_SIZE))),
            entry(first + 2, Command::Tracks(chunk(1, 10))),
        ]
    }

    fn create(index: u64, upload_id: u64) -> Entry {
        entry(
            index,
            Command::Tracks(TrackCommand::Create {
                upload_id,
                by: 1,
                meta: TrackMeta {
                    title: "t".into(),
                    artist: "a".into(),
                    album: String::new(),
                    genre: String::new(),
                },
                audio: AudioInfo {
                    size: CHUNK_SIZE as u64 + 10,
                    chunks: 2,
                    duration_ms: 1000,
                },
            }),
        )
    }

    fn chunks_of(fill: u8) -> [ChunkHash; 2] {
        [
            ChunkHash::of(&vec![fill; CHUNK_SIZE]),
            ChunkHash::of(&[fill + 1; 10]),
        ]
    }

    /// Installs `sm`'s current snapshot, as openraft sends it to another node, into a fresh
    /// store (kept alive by the returned directory and log).
    async fn sent_to_a_fresh_store(
        sm: &mut StateMachineStore,
    ) -> (tempfile::TempDir, crate::LogStore, StateMachineStore) {
        let snapshot = sm
            .get_current_snapshot()
            .await
            .expect("get")
            .expect("a snapshot");
        let fresh = tempfile::tempdir().expect("temp dir");
        let (log, mut copy) = crate::open(fresh.path()).expect("open");
        copy.install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .expect("install");
        (fresh, log, copy)
    }

    /// Applies two uploads of the same audio (filled with 5) as tracks 1 and 2 (entries 1–8).
    async fn two_tracks_of_the_same_audio(sm: &mut StateMachineStore) {
        sm.apply(upload(1, 1, 5)).await.expect("apply");
        sm.apply([create(4, 1)]).await.expect("apply");
        sm.apply(upload(5, 2, 5)).await.expect("apply");
        sm.apply([create(8, 2)]).await.expect("apply");
    }

    fn on_disk(sm: &StateMachineStore) -> HashSet<ChunkHash> {
        sm.inner.chunks.list().expect("list").into_iter().collect()
    }

    /// A track's audio is in the chunk store once its entries are applied, readable and named
    /// by its hash; the same audio uploaded twice is stored once.
    #[tokio::test]
    async fn uploaded_audio_is_stored_once_by_its_hash() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (_log, mut sm) = crate::open(dir.path()).expect("open");
        two_tracks_of_the_same_audio(&mut sm).await;
        let [full, tail] = chunks_of(5);
        assert_eq!(on_disk(&sm), HashSet::from([full, tail]));
        let tracks: Vec<Vec<ChunkHash>> = sm
            .reader()
            .read(|s| s.tracks.all().map(|t| t.chunks.clone()).collect());
        assert_eq!(tracks, vec![vec![full, tail], vec![full, tail]]);
        assert_eq!(sm.reader().chunk(&tail).expect("read"), vec![6u8; 10]);
    }

    /// A deleted track's chunks stay until a snapshot after the delete is built (the current
    /// snapshot, or a tree a crash leaves, may still name them), then go; chunks another track
    /// still names stay.
    #[tokio::test]
    async fn released_chunks_go_with_the_next_snapshot_and_shared_ones_stay() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (_log, mut sm) = crate::open(dir.path()).expect("open");
        two_tracks_of_the_same_audio(&mut sm).await;
        sm.apply(upload(9, 3, 20)).await.expect("apply");
        sm.build_snapshot().await.expect("build");
        let delete = |index, track_id| {
            entry(
                index,
                Command::Tracks(TrackCommand::Delete { track_id, by: 1 }),
            )
        };
        let abort = entry(
            14,
            Command::Tracks(TrackCommand::AbortUpload { upload_id: 3 }),
        );
        sm.apply([delete(12, 1), delete(13, 2), abort])
            .await
            .expect("apply");
        assert_eq!(on_disk(&sm).len(), 4, "kept until the next snapshot");
        sm.build_snapshot().await.expect("build");
        assert!(on_disk(&sm).is_empty(), "{:?}", on_disk(&sm));

        // Shared by two tracks: deleting one keeps the chunks.
        sm.apply(upload(15, 4, 7)).await.expect("apply");
        sm.apply([create(18, 4)]).await.expect("apply");
        sm.apply(upload(19, 5, 7)).await.expect("apply");
        sm.apply([create(22, 5)]).await.expect("apply");
        let first = sm
            .reader()
            .read(|s| s.tracks.all().next().map(|t| t.id))
            .expect("a track");
        sm.apply([delete(23, first)]).await.expect("apply");
        sm.build_snapshot().await.expect("build");
        assert_eq!(on_disk(&sm), HashSet::from(chunks_of(7)));
    }

    /// The writer syncs the chunk files a batch names before writing it: once the tree holds
    /// the upload, nothing of the chunks is left in the page cache only.
    #[tokio::test]
    async fn the_tree_never_names_a_chunk_that_is_not_on_disk() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (_log, mut sm) = crate::open(dir.path()).expect("open");
        sm.apply(upload(1, 1, 5)).await.expect("apply");
        sm.inner.sm_writer.drain().expect("drain");
        let chunks_dir = dir.path().join("chunks");
        assert_eq!(
            crate::durable::unsynced::pages_under(&chunks_dir).expect("cachestat"),
            0
        );
    }

    /// A node killed after an apply wrote a chunk file but before the tree named it finds the
    /// file unnamed at the next open and removes it; the entry applied again writes it anew.
    #[tokio::test]
    async fn a_chunk_file_nothing_names_is_swept_at_open() {
        let dir = tempfile::tempdir().expect("temp dir");
        let stray = ChunkHash::of(b"stray");
        {
            let (_log, mut sm) = crate::open(dir.path()).expect("open");
            sm.apply(upload(1, 1, 5)).await.expect("apply");
            sm.apply([create(4, 1)]).await.expect("apply");
            sm.inner.chunks.put(&stray, b"stray").expect("put");
        }
        let (_log, sm) = crate::reopen(dir.path());
        assert_eq!(on_disk(&sm), HashSet::from(chunks_of(5)));
        assert!(sm.reader().missing_chunks().is_empty());
    }

    /// A received snapshot naming chunks this node lacks is refused before anything here is
    /// replaced; with the chunks fetched first it installs, and this node's own chunks that the
    /// new state does not name go.
    #[tokio::test]
    async fn an_install_needs_every_chunk_the_snapshot_names() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (_log, mut sm) = crate::open(dir.path()).expect("open");
        sm.apply(upload(1, 1, 5)).await.expect("apply");
        sm.apply([create(4, 1)]).await.expect("apply");
        let snapshot = sm.build_snapshot().await.expect("build");
        let path = dir.path().join("snapshots").join(CURRENT);
        let named = chunks_named_by_snapshot(&path).expect("names");
        assert_eq!(named, HashSet::from(chunks_of(5)));

        let fresh = tempfile::tempdir().expect("temp dir");
        let (_fresh_log, mut other) = crate::open(fresh.path()).expect("open");
        other.apply(upload(1, 1, 30)).await.expect("apply");
        let err = other
            .install_snapshot(
                &snapshot.meta,
                Box::new(tokio::fs::File::open(&path).await.expect("open")),
            )
            .await
            .expect_err("refused");
        assert!(err.to_string().contains("2 audio chunks"), "{err}");
        assert_eq!(
            other.reader().read(|s| s.tracks.uploads().count()),
            1,
            "untouched"
        );

        for hash in &named {
            let bytes = sm.reader().chunk(hash).expect("read");
            other
                .reader()
                .chunk_store()
                .put_received(hash, &bytes)
                .expect("put");
        }
        other
            .install_snapshot(
                &snapshot.meta,
                Box::new(tokio::fs::File::open(&path).await.expect("open")),
            )
            .await
            .expect("installed");
        assert_eq!(other.reader().read(|s| s.tracks.len()), 1);
        assert_eq!(on_disk(&other), named, "the old upload's chunks went");
    }

    fn request(key: &str, command: Command) -> Request {
        Request {
            dedupe_key: Some(key.into()),
            at_ms: 0,
            command,
        }
    }

    fn vote(id: u64) -> Command {
        Command::Queue(QueueCommand::Vote { id, up: true })
    }

    /// The leader groups writes into one entry: each is applied as if it were an entry of its
    /// own (its dedupe key, its own result), and the batch answers each in order.
    #[tokio::test]
    async fn a_batch_entry_applies_and_answers_each_write() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (_log, mut sm) = crate::open(dir.path()).expect("open");
        sm.apply([add(1, 7)]).await.expect("apply");
        let batch = Command::Batch(vec![
            request("a", vote(7)),
            request("b", vote(8)),
            // A retry of "a" inside the same batch: answered with the first result.
            request("a", vote(7)),
            request("c", Command::Batch(vec![])),
        ]);
        let entry = RaftEntry {
            log_id: openraft::LogId::new(CommittedLeaderId::new(1, 1), 2),
            payload: EntryPayload::Normal(Request {
                dedupe_key: None,
                at_ms: 0,
                command: batch,
            }),
        };
        let reader = sm.reader();
        let waiting = reader.wait_applied(
            2,
            tokio::time::Instant::now() + std::time::Duration::from_secs(5),
        );
        let (responses, woken) = tokio::join!(sm.apply([entry]), waiting);
        assert_eq!(woken, Ok(()), "a waiter for index 2 is woken by its apply");
        let responses = responses.expect("apply");
        let Ok(Outcome::Batch(each)) = &responses[0].result else {
            panic!("not a batch answer: {responses:?}");
        };
        assert_eq!(each.len(), 4);
        assert!(matches!(&each[0].result, Ok(Outcome::Track(t)) if t.votes == 1));
        assert!(matches!(&each[1].result, Err(e) if e.kind == ErrorKind::NotFound));
        assert!(each[2].deduplicated && each[2].result == each[0].result);
        assert!(matches!(&each[3].result, Err(e) if e.kind == ErrorKind::Invalid));
        let votes = sm.reader().read(|s| s.queue.track(7).map(|t| t.votes));
        assert_eq!(
            votes,
            Some(1),
            "the retry inside the batch did not vote twice"
        );
    }

    /// When the Raft core stops, waits for entries not applied yet fail at once (the request
    /// answers "shutting down"), while entries already applied still count.
    #[tokio::test]
    async fn closing_the_waiters_fails_waits_for_unapplied_entries() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (_log, mut sm) = crate::open(dir.path()).expect("open");
        sm.apply([add(1, 7)]).await.expect("apply");
        let reader = sm.reader();
        let far = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        let waiting = reader.wait_applied(5, far);
        let (result, ()) = tokio::join!(waiting, async { reader.close_waiters() });
        assert_eq!(result, Err(ApplyWaitError::Closed));
        assert_eq!(
            reader.wait_applied(6, far).await,
            Err(ApplyWaitError::Closed)
        );
        assert_eq!(reader.wait_applied(1, far).await, Ok(()));
    }
}
