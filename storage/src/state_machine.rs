//! The Raft state machine: applies committed entries to [`State`] and persists them in the `sm`
//! sled tree; builds and installs snapshots as files under `<data_dir>/snapshots/`.
//!
//! Invariants:
//! - Every applied batch is one atomic sled batch holding the domain writes *and* `m/applied`
//!   and `m/membership`, so the tree always describes exactly one log position. The batches are
//!   written by their own thread ([`crate::sm_writer`]), so the tree may trail the in-memory
//!   state; whatever reads or replaces the whole tree drains that writer first.
//! - An applied audio chunk is pending in the `audio_mover` (readable from its log entry)
//!   until that thread has copied it into the `audio` tree; deletes of stored chunks go to the
//!   tree during the apply. Builds wait for the copy up to their index; a crash before it is
//!   repaired at the next start from the log (`StateMachineStore::repair_audio`). An installed
//!   snapshot's chunks are pending the same way, read from the installed file (`current.snap`),
//!   which no build replaces before they are copied; a start copies what a crash left there.
//! - The in-memory [`State`] and the tree change together under the write lock; readers
//!   ([`StateReader`]) take the read lock and so see whole entries only.
//! - A snapshot is the `sm` tree streamed to a file as of one log position (taken under the
//!   read lock; the `sm-writer` is then held there while applies go on in memory), with the
//!   audio chunks the state holds *by key* only: building one costs the metadata, not the
//!   library. Chunks are immutable and their keys never reused, so a key names the bytes.
//!   The chunks the current snapshot refers to must stay until a newer snapshot replaces it:
//!   an apply that deletes one records it in `sm` as `m/trash/<key>` (atomic with the apply)
//!   instead, and the next build deletes the trash it no longer refers to (`Inner::refs`).
//!   What is sent to another node is made self-contained first (`Inner::materialize`).
//!   A received snapshot is installed by streaming the file back, its audio left in the file.
//!   An install interrupted by a crash is redone from `current.snap` on the next start (the
//!   `installing` marker in the `sm_control` tree says so; it lives outside `sm` because the
//!   install clears `sm`).
//! - Audio survives a power loss (see `durable`): a build that follows audio writes, and
//!   every install, sync everything sled wrote before the snapshot takes over, and record in
//!   `sm_control` the index up to which audio is durable (`audio_synced`, also at shutdown); at
//!   start, chunks the state has but the `audio` tree lacks are put back from the log entries
//!   after it (`StateMachineStore::repair_audio`).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::oneshot;

use crate::audio_mover::AudioMover;
use crate::codec;
use crate::command::Response;
use crate::durable::DurableSled;
use crate::sm_writer::SmWriter;
use crate::snapshot::{SnapshotReader, SnapshotWriter, TREE_AUDIO, TREE_AUDIO_REF, TREE_SM};
use crate::state::tracks::chunk_key;
use crate::state::{Changes, State};
use crate::types::{
    Entry, LogId, Snapshot, SnapshotMeta, StorageError, StorageIOError, StoredMembership,
    TypeConfig,
};
use crate::{LogStore, OpenError};

const M_PREFIX: &[u8] = b"m/";
const M_APPLIED: &[u8] = b"m/applied";
const M_MEMBERSHIP: &[u8] = b"m/membership";
/// Where an older version kept the install marker (inside `sm`, which the install clears).
const M_INSTALLING_LEGACY: &[u8] = b"m/installing";
/// `m/trash/<audio key>` = log index of the delete: a chunk deleted while the current snapshot
/// refers to it, to be deleted once a snapshot at or after that index replaces it.
const M_TRASH: &[u8] = b"m/trash/";

fn trash_key(audio_key: &[u8]) -> Vec<u8> {
    [M_TRASH, audio_key].concat()
}

/// Audio chunks by blob: blob id -> number of chunks (`0..n` are referred to).
#[derive(Debug, Default, Clone)]
struct AudioRefs(BTreeMap<u64, u32>);

impl AudioRefs {
    fn split(key: &[u8]) -> Option<(u64, u32)> {
        let blob = u64::from_be_bytes(key.get(..8)?.try_into().ok()?);
        let index = u32::from_be_bytes(key.get(8..12)?.try_into().ok()?);
        (key.len() == 12).then_some((blob, index))
    }

    fn covers(&self, key: &[u8]) -> bool {
        Self::split(key).is_some_and(|(blob, index)| self.0.get(&blob).is_some_and(|&n| index < n))
    }

    fn add(&mut self, key: &[u8]) -> io::Result<()> {
        let (blob, index) = Self::split(key)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad audio chunk key"))?;
        let n = self.0.entry(blob).or_default();
        *n = (*n).max(index + 1);
        Ok(())
    }

    fn union(mut self, other: &AudioRefs) -> AudioRefs {
        for (&blob, &n) in &other.0 {
            let mine = self.0.entry(blob).or_default();
            *mine = (*mine).max(n);
        }
        self
    }

    fn keys(&self) -> impl Iterator<Item = [u8; 12]> + '_ {
        self.0
            .iter()
            .flat_map(|(&blob, &n)| (0..n).map(move |index| chunk_key(blob, index)))
    }
}
/// In the `sm_control` tree: a snapshot install is under way (see `install_blocking`).
const INSTALLING: &[u8] = b"installing";
/// Log index up to which the audio that applies wrote is known durable (big-endian u64); a start
/// repairs audio from the entries after it (`repair_audio`). In `sm_control`.
const AUDIO_SYNCED: &[u8] = b"audio_synced";
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
    /// The `audio` tree, in a database of its own (see `crate::open_sled`).
    audio_db: DurableSled,
    /// Audio was written since the last `sync_everything`: the next snapshot build syncs.
    audio_unsynced: Arc<AtomicBool>,
    /// One `sync_audio` at a time: one that found nothing to sync must not record its index while
    /// another's sync of earlier audio is still running.
    audio_sync: Mutex<()>,
    sm: sled::Tree,
    /// Writes the `sm` batches of applied entries, off the apply path.
    sm_writer: SmWriter,
    audio: sled::Tree,
    /// Copies the chunks that applies put from the log into `audio`, off the apply path.
    audio_mover: AudioMover,
    /// Holds the install marker. Not `sm`: an install clears `sm`, and with it the marker.
    control: sled::Tree,
    applied: RwLock<Applied>,
    dir: PathBuf,
    /// The file most recently handed out by `begin_receiving_snapshot`.
    receiving: Mutex<Option<PathBuf>>,
    /// Serialises snapshot builds and installs.
    snapshot_lock: tokio::sync::Mutex<()>,
    /// The audio the current snapshot refers to (blob id -> chunk count); `None` when that
    /// snapshot is self-contained or there is none. During a build, also what the new one will.
    refs: Mutex<Option<AudioRefs>>,
    /// Set by [`StateMachineStore::expect_startup_probe`]: the next `get_current_snapshot` is
    /// openraft's startup call, which reads only the metadata.
    startup_probe: std::sync::atomic::AtomicBool,
    file_seq: AtomicU64,
    waiters: AppliedWaiters,
}

/// Tasks waiting for the state machine to reach a log index (a write that wants to read its own
/// result here, a linearizable read waiting for its read index). Each is woken once, by the
/// apply that reaches its index, rather than on every change of openraft's metrics.
#[derive(Debug, Default)]
struct AppliedWaiters {
    inner: Mutex<Waiting>,
}

#[derive(Debug, Default)]
struct Waiting {
    /// One past the last applied index (0: nothing applied yet; index 0 is a real entry).
    applied_end: u64,
    waiting: BTreeMap<u64, Vec<oneshot::Sender<()>>>,
    /// Set when the Raft core has stopped: nothing will be applied any more.
    closed: bool,
}

/// Why [`StateReader::wait_applied`] gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ApplyWaitError {
    #[error("the entry was not applied here in time")]
    TimedOut,
    #[error("this node has stopped applying entries (its Raft core stopped)")]
    Closed,
}

impl AppliedWaiters {
    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records that everything up to `last` is applied and wakes the waiters it satisfies.
    fn applied(&self, last: Option<LogId>) {
        let end = last.map_or(0, |l| l.index + 1);
        let mut w = self.lock();
        if end <= w.applied_end {
            return;
        }
        w.applied_end = end;
        let still_waiting = w.waiting.split_off(&end);
        let ready = std::mem::replace(&mut w.waiting, still_waiting);
        drop(w);
        for sender in ready.into_values().flatten() {
            let _ = sender.send(());
        }
    }

    /// `None` when `index` is applied already, else a receiver that fires once it is (and fails
    /// if the waiters are closed first).
    fn wait(&self, index: u64) -> Result<Option<oneshot::Receiver<()>>, ApplyWaitError> {
        let mut w = self.lock();
        if index < w.applied_end {
            return Ok(None);
        }
        if w.closed {
            return Err(ApplyWaitError::Closed);
        }
        let (tx, rx) = oneshot::channel();
        w.waiting.entry(index).or_default().push(tx);
        Ok(Some(rx))
    }

    /// Fails every waiter, now and later, that is not satisfied yet.
    fn close(&self) {
        let mut w = self.lock();
        w.closed = true;
        w.waiting.clear();
    }
}

#[derive(Debug, Clone)]
pub struct StateMachineStore {
    inner: Arc<Inner>,
}

/// Read access to the applied state, for the API's reads.
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

    /// Chunk `index` of audio blob `blob` (see [`crate::state::tracks`]): from the `audio`
    /// tree, or from its log entry if it was applied so recently that it is not there yet.
    /// Blocking.
    pub fn audio_chunk(&self, blob: u64, index: u32) -> io::Result<Option<bytes::Bytes>> {
        self.inner
            .audio_mover
            .get(&crate::state::tracks::chunk_key(blob, index))
    }

    /// Chunks applied or installed but not yet copied into the `audio` tree (from their log
    /// entries or the installed snapshot's file).
    pub fn audio_chunks_to_copy(&self) -> usize {
        self.inner.audio_mover.pending()
    }

    /// Number of chunks physically in the `audio` tree (walks the tree: for tests and tools).
    pub fn stored_audio_chunks(&self) -> usize {
        self.inner.audio.len()
    }

    /// Waits until the state of every applied entry is in the sled tree (the `sm-writer` has
    /// caught up) and the audio they wrote is durable, so that the next start has no audio to
    /// repair (`repair_audio`): for shutdown. Blocking.
    pub fn wait_written(&self) -> io::Result<()> {
        self.inner.sm_writer.drain()?;
        let applied = self.last_applied();
        self.inner
            .audio_mover
            .wait_moved(applied.map_or(0, |l| l.index))?;
        self.inner.sync_audio(applied)
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

fn sled_io(e: sled::Error) -> io::Error {
    io::Error::other(e)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Inner {
    fn write_lock(&self) -> std::sync::RwLockWriteGuard<'_, Applied> {
        self.applied.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes the audio that applies up to `upto` wrote durable — if audio was written since the
    /// last time, everything the audio's database holds (see `durable`) — and records `upto` as
    /// where the next start begins to look for audio to repair (`repair_audio`). Blocking.
    fn sync_audio(&self, upto: Option<LogId>) -> io::Result<()> {
        let _one_at_a_time = self
            .audio_sync
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Cleared first: audio written during the sync is synced next time.
        if self.audio_unsynced.swap(false, Ordering::AcqRel) {
            self.audio_db.sync_everything().inspect_err(|_| {
                self.audio_unsynced.store(true, Ordering::Release);
            })?;
        }
        // Durable with sled's next flush; until then a start looks from an older point.
        let upto = upto.map_or(0, |l| l.index);
        self.control
            .insert(AUDIO_SYNCED, &upto.to_be_bytes())
            .map_err(sled_io)?;
        Ok(())
    }

    fn current_path(&self) -> PathBuf {
        self.dir.join(CURRENT)
    }

    fn next_file(&self, kind: &str) -> PathBuf {
        let seq = self.file_seq.fetch_add(1, Ordering::Relaxed);
        self.dir
            .join(format!("{kind}-{}-{seq}.snap", std::process::id()))
    }

    /// Streams the tree, with the audio by reference, into a new `current.snap`. Blocking.
    fn build_blocking(&self) -> io::Result<SnapshotMeta> {
        let tmp = self.next_file("building");
        let (meta, refs, tree_held) = {
            let guard = self.applied.read().unwrap_or_else(PoisonError::into_inner);
            // The tree as of `last_applied` (no batch is in flight while the lock is held), kept
            // there until the file is written: applies go on meanwhile, their batches wait.
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
            let refs = AudioRefs(guard.state.tracks.chunk_blobs().collect());
            // Until the new file replaces the old, deletes keep what either refers to. Set
            // under the lock, so no apply after `last_applied` sees only the old references.
            let mut current = self.refs();
            let union = current.take().unwrap_or_default().union(&refs);
            *current = Some(union);
            (meta, refs, tree_held)
        };
        let mut writer = SnapshotWriter::new(File::create(&tmp)?, &meta, true)?;
        for item in self.sm.iter() {
            let (key, value) = item.map_err(sled_io)?;
            if !key.starts_with(M_PREFIX) {
                writer.record(TREE_SM, &key, &value)?;
            }
        }
        drop(tree_held);
        for key in refs.keys() {
            writer.record(TREE_AUDIO_REF, &key, &[])?;
        }
        writer.finish()?.sync_all()?;
        let upto = meta.last_log_id.map_or(0, |l| l.index);
        self.audio_mover.wait_moved(upto)?;
        // The chunks it refers to were put by applies up to `last_applied`, and are in the
        // tree now that the mover has copied them that far; durable before
        // the file takes over (and the log behind it may be purged), so a restarted node still
        // has what it refers to — sled's own flush leaves their blob files unsynced. Only when
        // audio was written since the last time: a `syncfs` at every build (every 5,000 writes
        // of votes) cost one-client writes p99 (all nodes share one disk here). The first build
        // after a bulk upload writes that audio out at once and writes wait on the disk
        // meanwhile (`bench/snapshot_stall.py --mib 200`: p99 27–150 ms instead of 3–10 ms);
        // syncing it earlier in the background cost as much, later, or hit the writes that
        // followed a small upload (bench/RESULTS.md, eighth session).
        self.sync_audio(meta.last_log_id)?;
        fs::rename(&tmp, self.current_path())?;
        sync_dir(&self.dir)?;
        *self.refs() = Some(refs);
        self.empty_trash(Some(upto))?;
        Ok(meta)
    }

    /// Hands the audio mover the chunks that `exists` covers (what the state has), the `audio`
    /// tree lacks and `current.snap` carries: an install leaves its audio in that file for the
    /// mover, and a stop before the copy finished (a crash; a clean stop waits for it) leaves some
    /// there. Returns how many. Blocking; for `open`.
    fn pend_uncopied_snapshot_audio(&self, exists: &AudioRefs) -> io::Result<usize> {
        let path = self.current_path();
        if !path.exists() {
            return Ok(0);
        }
        let file = Arc::new(File::open(&path)?);
        let mut reader = SnapshotReader::new(&*file)?;
        // A node's own build carries no audio (its chunks are in the tree before it is written).
        if reader.refers_to_audio {
            return Ok(0);
        }
        let index = reader.meta.last_log_id.map_or(0, |l| l.index);
        let mut found = 0usize;
        // Every value is skipped: only the audio's keys and places are needed, and the `sm`
        // records (megabytes with a full dedupe table) would be read at every start for nothing.
        while let Some((record, at)) = reader.next_record_skipping(|_| true)? {
            if let Some(at) = at
                && record.tree == TREE_AUDIO
                && exists.covers(&record.key)
                && !self.audio.contains_key(&record.key).map_err(sled_io)?
            {
                self.audio_mover
                    .put_from_snapshot(record.key, index, file.clone(), at)?;
                found += 1;
            }
        }
        Ok(found)
    }

    fn refs(&self) -> std::sync::MutexGuard<'_, Option<AudioRefs>> {
        self.refs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Deletes the trashed chunks deleted at or before `upto` (all of them with `None`): the
    /// current snapshot no longer refers to them.
    fn empty_trash(&self, upto: Option<u64>) -> io::Result<()> {
        let mut audio = sled::Batch::default();
        let mut sm = sled::Batch::default();
        let mut found = 0usize;
        for item in self.sm.scan_prefix(M_TRASH) {
            let (key, value) = item.map_err(sled_io)?;
            let deleted_at: u64 = codec::decode(&value).map_err(io::Error::other)?;
            if upto.is_some_and(|upto| deleted_at > upto) {
                continue;
            }
            audio.remove(&key[M_TRASH.len()..]);
            sm.remove(key);
            found += 1;
        }
        if found > 0 {
            tracing::debug!(
                chunks = found,
                "deleting audio no snapshot refers to any more"
            );
            // Audio first: a crash in between leaves trash entries, which are deleted again.
            self.audio.apply_batch(audio).map_err(sled_io)?;
            self.sm.apply_batch(sm).map_err(sled_io)?;
        }
        Ok(())
    }

    /// The audio references of the snapshot in `current.snap`, if it has any, and the log index
    /// it is at. Blocking.
    fn load_refs(&self) -> io::Result<Option<(AudioRefs, u64)>> {
        let path = self.current_path();
        if !path.exists() {
            return Ok(None);
        }
        let mut reader = SnapshotReader::new(File::open(&path)?)?;
        if !reader.refers_to_audio {
            return Ok(None);
        }
        let mut refs = AudioRefs::default();
        while let Some(record) = reader.next_record()? {
            if record.tree == TREE_AUDIO_REF {
                refs.add(&record.key)?;
            }
        }
        Ok(Some((refs, reader.meta.last_log_id.map_or(0, |l| l.index))))
    }

    /// A self-contained copy of `current.snap` for another node: every audio reference
    /// replaced by the chunk. The file is unlinked once open, so it goes when the handle does.
    /// Called under the snapshot lock, so no build deletes a chunk it refers to meanwhile.
    /// Blocking.
    fn materialize(&self) -> io::Result<(SnapshotMeta, File)> {
        let mut reader = SnapshotReader::new(File::open(self.current_path())?)?;
        let meta = reader.meta.clone();
        let path = self.next_file("sending");
        let mut writer = SnapshotWriter::new(File::create(&path)?, &meta, false)?;
        let copied =
            (|| {
                while let Some(record) = reader.next_record()? {
                    if record.tree == TREE_AUDIO_REF {
                        let value = self.audio.get(&record.key).map_err(sled_io)?.ok_or_else(
                            || {
                                io::Error::other(format!(
                                    "audio chunk {:?} of the snapshot is missing from the store",
                                    record.key
                                ))
                            },
                        )?;
                        writer.record(TREE_AUDIO, &record.key, &value)?;
                    } else {
                        writer.record(record.tree, &record.key, &record.value)?;
                    }
                }
                writer.finish()?;
                File::open(&path)
            })();
        let removed = fs::remove_file(&path);
        let file = copied?;
        removed?;
        Ok((meta, file))
    }

    /// Replaces the whole state with the snapshot in `current.snap`. Blocking.
    fn install_blocking(&self, expected: Option<&SnapshotMeta>) -> io::Result<SnapshotMeta> {
        // Held open by the audio mover until it has copied the chunks left in it.
        let file = Arc::new(File::open(self.current_path())?);
        let mut reader = SnapshotReader::new(&*file)?;
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
        // Nothing queued may land in the trees after they are cleared.
        self.sm_writer.drain()?;
        let _mover_stopped = self.audio_mover.stop_and_clear();
        // Durable before anything is cleared: a crash from here on is repaired at the next open
        // by installing `current.snap` again.
        self.control.insert(INSTALLING, &[1u8]).map_err(sled_io)?;
        self.db.sync_small_values()?;
        self.sm.clear().map_err(sled_io)?;
        // A snapshot of this node's own refers to chunks still in its audio tree.
        if !reader.refers_to_audio {
            self.audio.clear().map_err(sled_io)?;
        }
        let mut refs = AudioRefs::default();
        let mut batch = sled::Batch::default();
        let mut pending = 0usize;
        // The chunks the file carries stay in it: the mover copies them into sled afterwards.
        let mut audio = Vec::new();
        while let Some((record, at)) = reader.next_record_skipping(|tree| tree == TREE_AUDIO)? {
            match record.tree {
                TREE_SM => {
                    batch.insert(record.key, record.value);
                    pending += 1;
                    if pending == 10_000 {
                        self.sm
                            .apply_batch(std::mem::take(&mut batch))
                            .map_err(sled_io)?;
                        pending = 0;
                    }
                }
                TREE_AUDIO => {
                    let at = at.ok_or_else(|| io::Error::other("audio value read, not skipped"))?;
                    audio.push((record.key, at));
                }
                TREE_AUDIO_REF if reader.refers_to_audio => {
                    if !self.audio.contains_key(&record.key).map_err(sled_io)? {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!(
                                "the snapshot refers to audio chunk {:?}, which this node does not have",
                                record.key
                            ),
                        ));
                    }
                    refs.add(&record.key)?;
                }
                other => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("unknown tree {other}"),
                    ));
                }
            }
        }
        batch.insert(M_APPLIED, encode_io(&meta.last_log_id)?);
        batch.insert(M_MEMBERSHIP, encode_io(&meta.last_membership)?);
        batch.remove(M_INSTALLING_LEGACY);
        self.sm.apply_batch(batch).map_err(sled_io)?;
        let index = meta.last_log_id.map_or(0, |l| l.index);
        let audio_left = audio.len();
        for (key, at) in audio {
            self.audio_mover
                .put_from_snapshot(key, index, file.clone(), at)?;
        }
        // The installed state durable before the marker goes: openraft purges the log up to the
        // snapshot next. Its audio is durable in the file (`install_snapshot` synced it), which
        // stays until a build, which waits for the copy, replaces it.
        self.db.sync_everything()?;
        self.audio_unsynced.store(true, Ordering::Release);
        self.sync_audio(meta.last_log_id)?;
        self.control.remove(INSTALLING).map_err(sled_io)?;
        self.db.sync_small_values()?;
        guard.state = State::load(&self.sm).map_err(io::Error::other)?;
        *self.refs() = reader.refers_to_audio.then_some(refs);
        guard.last_applied = meta.last_log_id;
        guard.membership = meta.last_membership.clone();
        drop(guard);
        self.waiters.applied(meta.last_log_id);
        tracing::info!(last_log_id = ?meta.last_log_id, chunks_left_in_file = audio_left, "installed snapshot");
        Ok(meta)
    }
}

async fn same_file(file: &tokio::fs::File, path: &Path) -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let (a, b) = (file.metadata().await?, tokio::fs::metadata(path).await?);
    Ok(a.dev() == b.dev() && a.ino() == b.ino())
}

fn encode_io<T: serde::Serialize>(value: &T) -> io::Result<Vec<u8>> {
    codec::encode(value).map_err(io::Error::other)
}

impl StateMachineStore {
    pub(crate) fn open(
        db: DurableSled,
        audio_db: DurableSled,
        log: &LogStore,
        dir: &Path,
    ) -> Result<Self, OpenError> {
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
        let audio = audio_db
            .db()
            .open_tree(crate::durable::AUDIO_TREE)
            .map_err(|e| corrupt(e.to_string()))?;
        let control = db
            .db()
            .open_tree("sm_control")
            .map_err(|e| corrupt(e.to_string()))?;
        // `repair_audio` syncs what an earlier run left unsynced.
        let audio_unsynced = Arc::new(AtomicBool::new(true));
        let inner = Inner {
            audio_mover: AudioMover::start(audio.clone(), log.clone(), audio_unsynced.clone())
                .map_err(io_err)?,
            audio_unsynced,
            audio_sync: Mutex::new(()),
            db,
            audio_db,
            sm_writer: SmWriter::start(sm.clone(), crate::sm_writer::COALESCE).map_err(io_err)?,
            sm,
            audio,
            control,
            applied: RwLock::new(Applied::default()),
            dir: dir.to_path_buf(),
            receiving: Mutex::new(None),
            snapshot_lock: tokio::sync::Mutex::new(()),
            refs: Mutex::new(None),
            startup_probe: std::sync::atomic::AtomicBool::new(false),
            file_seq: AtomicU64::new(0),
            waiters: AppliedWaiters::default(),
        };
        let marked = |tree: &sled::Tree, key: &[u8]| {
            tree.contains_key(key).map_err(|e| corrupt(e.to_string()))
        };
        let interrupted =
            marked(&inner.control, INSTALLING)? || marked(&inner.sm, M_INSTALLING_LEGACY)?;
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
        {
            let loaded = inner
                .load_refs()
                .map_err(|e| corrupt(format!("read the current snapshot: {e}")))?;
            // What the current snapshot does not refer to can go (a build that a crash
            // interrupted after replacing the file, or a self-contained snapshot).
            let (refs, upto) = match loaded {
                Some((refs, upto)) => (Some(refs), Some(upto)),
                None => (None, None),
            };
            *inner.refs() = refs;
            inner
                .empty_trash(upto)
                .map_err(|e| corrupt(format!("empty the audio trash: {e}")))?;
        }
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

    /// Puts back the audio chunks that the state says exist but the `audio` tree lacks, from the
    /// log entries applied since the audio was last known durable (`AUDIO_SYNCED`), then makes
    /// everything sled holds durable. sled's background flush can make `m/applied` durable
    /// before the blob files of chunks applied earlier (see `durable`); after a power loss those
    /// chunks would be gone with no entry applied again for them. Chunk keys are never reused, so
    /// a chunk put back is the one lost. After a clean shutdown there is nothing to look at
    /// (`wait_written` records the last applied index). Blocking.
    pub(crate) fn repair_audio(&self, log: &crate::LogStore) -> Result<(), OpenError> {
        let inner = &self.inner;
        let corrupt = |message: String| OpenError::Corrupt {
            path: inner.dir.display().to_string(),
            message,
        };
        let synced = match inner
            .control
            .get(AUDIO_SYNCED)
            .map_err(|e| corrupt(e.to_string()))?
        {
            Some(bytes) => u64::from_be_bytes(
                bytes
                    .as_ref()
                    .try_into()
                    .map_err(|_| corrupt("bad audio_synced record".to_string()))?,
            ),
            // A store from before the record existed: look at the whole log.
            None => 0,
        };
        let applied = self.reader().last_applied();
        let upto = applied.map_or(0, |l| l.index);
        // The chunks the state says exist: only those are put back, from the log or the file.
        let exists = AudioRefs(self.reader().read(|s| s.tracks.chunk_blobs().collect()));
        if synced < upto {
            let mut repaired = 0usize;
            log.for_each_entry(synced + 1, upto + 1, |entry| {
                let EntryPayload::Normal(request) = entry.payload else {
                    return Ok(());
                };
                for (upload_id, index, bytes) in request.command.into_chunks() {
                    let key = chunk_key(upload_id, index);
                    if exists.covers(&key) && !inner.audio.contains_key(key).map_err(sled_io)? {
                        inner.audio.insert(key, bytes).map_err(sled_io)?;
                        repaired += 1;
                    }
                }
                Ok(())
            })
            .map_err(|e| corrupt(format!("repair audio from the log: {e}")))?;
            if repaired > 0 {
                inner.audio_unsynced.store(true, Ordering::Release);
                tracing::warn!(
                    repaired,
                    from = synced + 1,
                    upto,
                    "audio chunks were missing (a power loss?); put back from the log"
                );
            }
        }
        let left = inner
            .pend_uncopied_snapshot_audio(&exists)
            .map_err(|e| corrupt(format!("look for audio left in current.snap: {e}")))?;
        if left > 0 {
            tracing::info!(
                chunks = left,
                "audio an install left in current.snap is copied into sled again"
            );
        }
        // Syncs whatever the last run left unsynced (the flag starts set) and what was put back.
        inner
            .db
            .sync_everything()
            .and_then(|()| inner.sync_audio(applied))
            .map_err(|e| corrupt(format!("sync the audio: {e}")))
    }

    /// Call just before `Raft::new`. openraft 0.9.25's `Raft::new` calls `get_current_snapshot`
    /// once, for the metadata only (`StorageHelper::get_initial_state`), before its core and
    /// workers start; that call gets this node's own file. Every other call is for sending the
    /// snapshot to another node and gets a self-contained copy, which costs a copy of the audio.
    pub fn expect_startup_probe(&self) {
        self.inner.startup_probe.store(true, Ordering::Release);
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
        if !self.inner.audio_mover.has_room() {
            let inner = self.inner.clone();
            tokio::task::spawn_blocking(move || inner.audio_mover.wait_for_room())
                .await
                .map_err(io::Error::other)
                .and_then(|waited| waited)
                .map_err(|e| StorageIOError::write_state_machine(&e))?;
        }
        let mut guard = self.inner.write_lock();
        let mut changes = Changes::default();
        let mut responses = Vec::new();
        let mut puts = Vec::new();
        for entry in entries {
            guard.last_applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => Response::done(),
                EntryPayload::Normal(req) => {
                    let response = guard
                        .state
                        .apply(&req, &mut changes)
                        .map_err(|e| StorageIOError::apply(entry.log_id, &e))?;
                    let index = entry.log_id.index;
                    puts.extend(changes.take_audio_puts().into_iter().map(|k| (k, index)));
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
        // Not flushed: the log already is, and a crash replays entries after `m/applied`.
        // The chunks put are readable (from the log) before the entries' state is, so a track
        // is never visible without its audio; the mover copies them into the `audio` tree and
        // the `sm` writes follow on the writer's thread.
        let write_err = |e: io::Error| StorageIOError::write_state_machine(&e);
        for (key, index) in puts {
            self.inner.audio_mover.put(key, index).map_err(write_err)?;
        }
        let deletes = changes.take_audio_deletes();
        if !deletes.is_empty() {
            let applied_index = guard.last_applied.map_or(0, |l| l.index);
            let refs = self.inner.refs();
            let mut audio = sled::Batch::default();
            let mut stored = 0usize;
            for key in deletes {
                if refs.as_ref().is_some_and(|r| r.covers(&key)) {
                    changes
                        .put(trash_key(&key), &applied_index)
                        .map_err(encode_err)?;
                } else if !self.inner.audio_mover.delete_pending(&key) {
                    audio.remove(key);
                    stored += 1;
                }
            }
            if stored > 0 {
                self.inner
                    .audio
                    .apply_batch(audio)
                    .map_err(|e| StorageIOError::write_state_machine(&e))?;
            }
        }
        self.inner
            .sm_writer
            .submit(changes.into_writes())
            .map_err(|e| StorageIOError::write_state_machine(&e))?;
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
        // Only the node that wrote a file with audio references can use it: refused here,
        // before anything of this node's is replaced.
        let mut magic = [0u8; 8];
        snapshot.seek(io::SeekFrom::Start(0)).await.map_err(err)?;
        snapshot.read_exact(&mut magic).await.map_err(err)?;
        if &magic == crate::snapshot::MAGIC_REFS {
            return Err(err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the received snapshot refers to audio it does not carry",
            )));
        }
        let received = self
            .inner
            .receiving
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let current = self.inner.current_path();
        // openraft normally hands back the file we gave out in `begin_receiving_snapshot`, which
        // is moved into place; any other file (a test may substitute one) is copied.
        let ours = match &received {
            Some(path) => same_file(&snapshot, path).await.map_err(err)?,
            None => false,
        };
        match received {
            Some(path) if ours => tokio::fs::rename(&path, &current).await.map_err(err)?,
            _ => {
                let tmp = self.inner.next_file("copy");
                let mut out = tokio::fs::File::create(&tmp).await.map_err(err)?;
                snapshot.seek(io::SeekFrom::Start(0)).await.map_err(err)?;
                tokio::io::copy(&mut snapshot, &mut out)
                    .await
                    .map_err(err)?;
                out.sync_all().await.map_err(err)?;
                tokio::fs::rename(&tmp, &current).await.map_err(err)?;
            }
        }
        let expected = meta.clone();
        self.blocking(move |inner| {
            sync_dir(&inner.dir)?;
            inner.install_blocking(Some(&expected))
        })
        .await
        .map_err(err)?;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        // Used up by the first call, whether or not there is a snapshot yet.
        let probe = self.inner.startup_probe.swap(false, Ordering::AcqRel);
        // Under the lock, so no build or install replaces the file between reading its header
        // and opening it (a file that refers to audio must never reach another node).
        let _serial = self.inner.snapshot_lock.lock().await;
        let path = self.inner.current_path();
        if !path.exists() {
            return Ok(None);
        }
        let (meta, refers_to_audio) = self
            .blocking(move |_| {
                let reader = SnapshotReader::new(File::open(&path)?)?;
                Ok((reader.meta, reader.refers_to_audio))
            })
            .await
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        if refers_to_audio && !probe {
            let started = std::time::Instant::now();
            let (meta, file) = self
                .blocking(|inner| inner.materialize())
                .await
                .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
            tracing::info!(took = ?started.elapsed(), "materialized snapshot to send");
            return Ok(Some(Snapshot {
                meta,
                snapshot: Box::new(tokio::fs::File::from_std(file)),
            }));
        }
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
    use crate::command::{Command, ErrorKind, Outcome, QueueCommand, Request};
    use openraft::{CommittedLeaderId, Entry as RaftEntry};

    impl Inner {
        /// sled's own flush of both databases: what a process that dies next leaves.
        fn flush_both(&self) {
            self.db.db().flush().expect("flush the state's database");
            self.audio_db
                .db()
                .flush()
                .expect("flush the audio's database");
        }
    }

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

    /// Found by jepsen-style: a node killed while installing a snapshot came back with an empty
    /// state machine and no marker (clearing `sm` had removed it), and could never start again
    /// because its log had been purged up to the snapshot.
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

    /// Entries `first..` that begin upload `upload_id` (the next id) and put two chunks.
    fn upload(first: u64, upload_id: u64) -> Vec<Entry> {
        use crate::command::TrackCommand::{BeginUpload, PutChunk};
        let chunk = |index: u32, len: usize| PutChunk {
            upload_id,
            index,
            bytes: vec![index as u8 + 1; len],
        };
        vec![
            entry(first, Command::Tracks(BeginUpload { owner: 1 })),
            entry(
                first + 1,
                Command::Tracks(chunk(0, crate::state::tracks::CHUNK_SIZE)),
            ),
            entry(first + 2, Command::Tracks(chunk(1, 10))),
        ]
    }

    fn abort(index: u64, upload_id: u64) -> Entry {
        entry(
            index,
            Command::Tracks(crate::command::TrackCommand::AbortUpload { upload_id }),
        )
    }

    /// `entries`, appended to `log` first: the audio mover reads chunks from the log.
    fn logged(log: &crate::LogStore, entries: impl IntoIterator<Item = Entry>) -> Vec<Entry> {
        let entries: Vec<Entry> = entries.into_iter().collect();
        log.append_synced(entries.clone());
        entries
    }

    /// Waits until the audio mover has copied (or dropped) every chunk applied so far.
    fn settle(sm: &StateMachineStore) {
        sm.inner
            .audio_mover
            .wait_moved(u64::MAX)
            .expect("audio copied");
    }

    /// A store in `dir` that applied uploads 1 and 2 (entries 1–6, two chunks each) and built a
    /// snapshot of them.
    async fn two_uploads_in_a_snapshot(
        dir: &std::path::Path,
    ) -> (crate::LogStore, StateMachineStore) {
        let (log, mut sm) = crate::open(dir).expect("open");
        sm.apply(logged(&log, upload(1, 1))).await.expect("apply");
        sm.apply(logged(&log, upload(4, 2))).await.expect("apply");
        sm.build_snapshot().await.expect("build");
        (log, sm)
    }

    fn trash_entries(sm: &StateMachineStore) -> usize {
        sm.inner.sm_writer.drain().expect("drain");
        sm.inner.sm.scan_prefix(M_TRASH).count()
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

    /// The chunks of `blob` that a fresh store got from `sm`'s snapshot.
    async fn chunks_sent(sm: &mut StateMachineStore, blob: u64) -> Vec<Option<Vec<u8>>> {
        let (_fresh, _log, copy) = sent_to_a_fresh_store(sm).await;
        (0..2)
            .map(|i| {
                let chunk = copy.reader().audio_chunk(blob, i).expect("read");
                chunk.map(|c| c.to_vec())
            })
            .collect()
    }

    /// A node's own snapshot refers to its audio by key, so building one does not copy the
    /// library; what it sends is self-contained. A chunk the current snapshot refers to outlives
    /// its delete until a newer snapshot replaces it, also across a restart.
    #[tokio::test]
    async fn snapshots_refer_to_audio_and_keep_deleted_chunks_until_replaced() {
        let dir = tempfile::tempdir().expect("temp dir");
        let expected = vec![
            Some(vec![1u8; crate::state::tracks::CHUNK_SIZE]),
            Some(vec![2u8; 10]),
        ];
        {
            let (log, mut sm) = crate::open(dir.path()).expect("open");
            sm.apply(logged(&log, upload(1, 1))).await.expect("apply");
            sm.build_snapshot().await.expect("build");
            let built = fs::metadata(sm.inner.current_path()).expect("stat").len();
            assert!(built < 4096, "the audio is not copied: {built} bytes");
            assert_eq!(chunks_sent(&mut sm, 1).await, expected);

            // Deleted after the snapshot: the state forgets it, the disk keeps it for the
            // snapshot, which still sends it.
            sm.apply(logged(&log, [abort(4, 1)])).await.expect("apply");
            assert_eq!(sm.reader().read(|s| s.tracks.uploads().count()), 0);
            settle(&sm);
            assert_eq!(sm.reader().stored_audio_chunks(), 2);
            assert_eq!(trash_entries(&sm), 2);
            assert_eq!(chunks_sent(&mut sm, 1).await, expected);

            // A chunk no snapshot refers to goes at once.
            sm.apply(logged(&log, upload(5, 2))).await.expect("apply");
            sm.apply(logged(&log, [abort(8, 2)])).await.expect("apply");
            settle(&sm);
            assert_eq!(sm.reader().stored_audio_chunks(), 2);

            // A newer snapshot: upload 1 is gone from it, and from the disk.
            sm.build_snapshot().await.expect("build");
            assert_eq!(sm.reader().stored_audio_chunks(), 0);
            assert_eq!(trash_entries(&sm), 0);
            assert_eq!(chunks_sent(&mut sm, 1).await, vec![None, None]);

            // Trashed, then the process stops.
            sm.apply(logged(&log, upload(9, 3))).await.expect("apply");
            sm.build_snapshot().await.expect("build");
            sm.apply(logged(&log, [abort(12, 3)])).await.expect("apply");
        }
        let (_log, mut sm) = crate::reopen(dir.path());
        assert_eq!(
            sm.reader().stored_audio_chunks(),
            2,
            "the snapshot still refers to them"
        );
        assert_eq!(chunks_sent(&mut sm, 3).await, expected);
        sm.apply([entry(13, Command::Queue(QueueCommand::Clear))])
            .await
            .expect("apply");
        sm.build_snapshot().await.expect("build");
        assert_eq!(sm.reader().stored_audio_chunks(), 0);
        assert_eq!(trash_entries(&sm), 0);
    }

    /// The audio a snapshot refers to is on disk before the snapshot takes over (after which the
    /// log behind it may be purged), on the node that built it and on one that installed it
    /// (there, in the received file, from which it is copied into sled later): sled's own flush
    /// leaves the blob files that hold audio chunks in the page cache, where a power loss would
    /// take them.
    #[tokio::test]
    async fn a_snapshot_leaves_none_of_its_audio_unwritten() {
        use crate::durable::unsynced;
        let dir = tempfile::tempdir().expect("temp dir");
        let (log, mut sm) = crate::open(dir.path()).expect("open");
        let sled_dir = dir.path().join("audio");
        // The second build is the one after audio was written since the last sync.
        for (first, upload_id) in [(1, 1), (4, 2)] {
            sm.apply(logged(&log, upload(first, upload_id)))
                .await
                .expect("apply");
            settle(&sm);
            sm.inner.sm_writer.drain().expect("drain");
            sm.inner.audio_db.db().flush().expect("flush");
            assert!(
                unsynced::pages_under(&sled_dir).expect("cachestat") > 0,
                "the chunk's blob file is expected unwritten after sled's flush; if the kernel \
                 wrote it already, this test shows nothing"
            );
            sm.build_snapshot().await.expect("build");
            assert_eq!(unsynced::pages_under(&sled_dir).expect("cachestat"), 0);
        }

        let (fresh, _fresh_log, copy) = sent_to_a_fresh_store(&mut sm).await;
        assert_eq!(
            unsynced::pages_under(&fresh.path().join("snapshots")).expect("cachestat"),
            0
        );
        settle(&copy);
        assert_eq!(copy.reader().stored_audio_chunks(), 4);
    }

    /// An install does not write the audio the snapshot carries into sled: it stays in the
    /// received file, from which it is read until the mover has copied it; a delete meanwhile
    /// leaves nothing in the tree.
    #[tokio::test]
    #[expect(
        clippy::await_holding_lock,
        reason = "the guard pauses the mover thread; nothing on this task takes that lock"
    )]
    async fn an_install_leaves_its_audio_in_the_received_file_until_copied() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (_log, mut sm) = two_uploads_in_a_snapshot(dir.path()).await;
        let snapshot = sm
            .get_current_snapshot()
            .await
            .expect("get")
            .expect("a snapshot");

        let fresh = tempfile::tempdir().expect("temp dir");
        let (_fresh_log, mut copy) = crate::open(fresh.path()).expect("open");
        let inner = copy.inner.clone();
        let full = vec![1u8; crate::state::tracks::CHUNK_SIZE];
        {
            let _paused = inner.audio_mover.pause();
            copy.install_snapshot(&snapshot.meta, snapshot.snapshot)
                .await
                .expect("install");
            assert_eq!(copy.reader().stored_audio_chunks(), 0, "nothing copied yet");
            assert_eq!(copy.reader().audio_chunks_to_copy(), 4);
            let chunk = copy.reader().audio_chunk(1, 0).expect("read");
            assert_eq!(chunk.as_deref(), Some(&full[..]), "read from the file");
            copy.apply([abort(7, 2)]).await.expect("apply");
            assert_eq!(copy.reader().audio_chunk(2, 0).expect("read"), None);
        }
        settle(&copy);
        assert_eq!(copy.reader().audio_chunks_to_copy(), 0);
        assert_eq!(copy.reader().stored_audio_chunks(), 2, "upload 2 is gone");
        let chunk = copy.reader().audio_chunk(1, 1).expect("read");
        assert_eq!(chunk.as_deref(), Some(&[2u8; 10][..]), "read from the tree");
    }

    /// A stop before the mover copied an installed snapshot's audio (or a power loss that took
    /// it from sled afterwards) leaves it in `current.snap`: the next start copies it from there,
    /// and only what the state still has.
    #[tokio::test]
    async fn audio_an_install_left_in_its_file_is_copied_after_a_restart() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (_log, mut sm) = two_uploads_in_a_snapshot(dir.path()).await;
        let fresh = {
            let (fresh, _fresh_log, mut copy) = sent_to_a_fresh_store(&mut sm).await;
            copy.apply([abort(7, 2)]).await.expect("apply");
            settle(&copy);
            copy.inner.sm_writer.drain().expect("drain");
            // What a crash before the copy, or a power loss after it, can leave.
            copy.inner.audio.clear().expect("clear");
            copy.inner.flush_both();
            fresh
        };
        let (_log, copy) = crate::reopen(fresh.path());
        let chunk = copy.reader().audio_chunk(1, 0).expect("read");
        assert_eq!(
            chunk.as_deref(),
            Some(&vec![1u8; crate::state::tracks::CHUNK_SIZE][..])
        );
        settle(&copy);
        assert_eq!(
            copy.reader().stored_audio_chunks(),
            2,
            "upload 2 stays deleted"
        );
        assert_eq!(copy.reader().audio_chunk(2, 0).expect("read"), None);
    }

    /// After a power loss sled may have kept `m/applied` but lost the audio chunks that applies
    /// before it wrote (see `durable`). A start puts them back from the log, and only those the
    /// state still has: a deleted upload's chunks stay deleted.
    #[tokio::test]
    async fn audio_lost_after_it_was_applied_is_put_back_from_the_log_at_start() {
        let dir = tempfile::tempdir().expect("temp dir");
        {
            let (log, mut sm) = crate::open(dir.path()).expect("open");
            let mut entries = upload(1, 1);
            entries.extend(upload(4, 2));
            entries.push(abort(7, 2));
            log.append_synced(entries.clone());
            sm.apply(entries).await.expect("apply");
            settle(&sm);
            sm.inner.sm_writer.drain().expect("drain");
            assert_eq!(sm.reader().stored_audio_chunks(), 2);
            // What a power loss can leave: the applied index durable, a chunk's blob gone.
            sm.inner.audio.remove(chunk_key(1, 0)).expect("remove");
            sm.inner.flush_both();
            // No clean shutdown (`wait_written` would record the audio as durable).
        }
        let (_log, sm) = crate::reopen(dir.path());
        let chunk = sm.reader().audio_chunk(1, 0).expect("read");
        assert!(
            chunk.is_some_and(|c| c.as_ref() == vec![1u8; crate::state::tracks::CHUNK_SIZE]),
            "chunk 0 of upload 1 was not put back"
        );
        assert_eq!(sm.reader().stored_audio_chunks(), 2);
    }

    /// A store written before the audio had a database of its own keeps its chunks in the
    /// state's database; opening it moves them, also after a move that a crash cut short (some
    /// chunks in both). Nothing repairs them from the log here: the shutdown was clean.
    #[tokio::test]
    async fn audio_in_the_old_layout_is_moved_into_its_own_database() {
        let dir = tempfile::tempdir().expect("temp dir");
        {
            let (log, mut sm) = crate::open(dir.path()).expect("open");
            sm.apply(logged(&log, upload(1, 1))).await.expect("apply");
            sm.apply(logged(&log, upload(4, 2))).await.expect("apply");
            sm.reader().wait_written().expect("written");
            assert_eq!(sm.reader().stored_audio_chunks(), 4);
            let old = sm
                .inner
                .db
                .db()
                .open_tree(crate::durable::AUDIO_TREE)
                .expect("tree");
            for item in sm.inner.audio.iter() {
                let (key, value) = item.expect("read");
                old.insert(&key, value).expect("insert");
                // The one left behind is where a move was cut short.
                if key.as_ref() != chunk_key(2, 0).as_slice() {
                    sm.inner.audio.remove(key).expect("remove");
                }
            }
            sm.inner.flush_both();
        }
        let (_log, sm) = crate::reopen(dir.path());
        assert_eq!(sm.reader().stored_audio_chunks(), 4);
        for (upload_id, index) in [(1, 0), (1, 1), (2, 0), (2, 1)] {
            let chunk = sm.reader().audio_chunk(upload_id, index).expect("read");
            assert!(chunk.is_some(), "chunk {index} of upload {upload_id} lost");
        }
        let names = sm.inner.db.db().tree_names();
        assert!(
            !names
                .iter()
                .any(|n| n == crate::durable::AUDIO_TREE.as_bytes()),
            "the old audio tree is still in the state's database"
        );
    }

    /// Applying a chunk does not write it into sled: until the mover has copied it, it is read
    /// from its log entry, and a delete meanwhile leaves nothing behind in the tree.
    #[tokio::test]
    #[expect(
        clippy::await_holding_lock,
        reason = "the guard pauses the mover thread; nothing on this task takes that lock"
    )]
    async fn a_chunk_is_read_from_the_log_until_it_is_copied() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (log, mut sm) = crate::open(dir.path()).expect("open");
        let full = vec![1u8; crate::state::tracks::CHUNK_SIZE];
        let inner = sm.inner.clone();
        {
            let _paused = inner.audio_mover.pause();
            sm.apply(logged(&log, upload(1, 1))).await.expect("apply");
            sm.apply(logged(&log, upload(4, 2))).await.expect("apply");
            assert_eq!(sm.reader().stored_audio_chunks(), 0, "nothing copied yet");
            assert_eq!(sm.inner.audio_mover.pending(), 4);
            let chunk = sm.reader().audio_chunk(1, 0).expect("read");
            assert_eq!(chunk.as_deref(), Some(&full[..]), "read from the log");
            sm.apply(logged(&log, [abort(7, 2)])).await.expect("apply");
            assert_eq!(sm.reader().audio_chunk(2, 0).expect("read"), None);
        }
        settle(&sm);
        assert_eq!(sm.inner.audio_mover.pending(), 0);
        assert_eq!(
            sm.reader().stored_audio_chunks(),
            2,
            "upload 2's chunks are gone"
        );
        let chunk = sm.reader().audio_chunk(1, 1).expect("read");
        assert_eq!(chunk.as_deref(), Some(&[2u8; 10][..]), "read from the tree");
    }

    /// After a crash the `sm` tree can be behind the `audio` tree: entries after its
    /// `m/applied` are applied again, and a chunk an earlier run already copied is pending once
    /// more. An abort while it is pending removes the old copy as well.
    #[tokio::test]
    #[expect(
        clippy::await_holding_lock,
        reason = "the guard pauses the mover thread; nothing on this task takes that lock"
    )]
    async fn a_chunk_copied_before_a_crash_and_applied_again_goes_with_its_upload() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (log, mut sm) = crate::open(dir.path()).expect("open");
        let inner = sm.inner.clone();
        // What the killed run left: upload 1's chunks in the audio tree, no state that has them.
        for index in 0..2 {
            inner
                .audio
                .insert(
                    crate::state::tracks::chunk_key(1, index),
                    &b"copied before"[..],
                )
                .expect("insert");
        }
        {
            let _paused = inner.audio_mover.pause();
            sm.apply(logged(&log, upload(1, 1))).await.expect("apply");
            assert_eq!(
                sm.inner.audio_mover.pending(),
                2,
                "applied again, pending again"
            );
            sm.apply(logged(&log, [abort(4, 1)])).await.expect("apply");
        }
        settle(&sm);
        assert_eq!(sm.reader().stored_audio_chunks(), 0, "no chunk left behind");
    }

    /// A snapshot refers to audio by key, so a build ends only once the mover has copied every
    /// chunk applied up to its index into the tree (which it then syncs).
    #[tokio::test]
    #[expect(
        clippy::await_holding_lock,
        reason = "the guard pauses the mover thread; nothing on this task takes that lock"
    )]
    async fn a_build_waits_until_the_audio_it_refers_to_is_copied() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (log, mut sm) = crate::open(dir.path()).expect("open");
        let inner = sm.inner.clone();
        let paused = inner.audio_mover.pause();
        sm.apply(logged(&log, upload(1, 1))).await.expect("apply");
        let mut builder = sm.clone();
        let mut build = tokio::spawn(async move { builder.build_snapshot().await });
        let early = tokio::time::timeout(std::time::Duration::from_millis(200), &mut build).await;
        assert!(
            early.is_err(),
            "the build ended before its audio was copied"
        );
        drop(paused);
        build.await.expect("join").expect("build");
        assert_eq!(sm.reader().stored_audio_chunks(), 2);
        assert_eq!(
            chunks_sent(&mut sm, 1).await,
            vec![
                Some(vec![1u8; crate::state::tracks::CHUNK_SIZE]),
                Some(vec![2u8; 10])
            ]
        );
    }

    /// openraft's startup call reads only the metadata and gets this node's own small file;
    /// such a file is refused by another node before anything there is replaced.
    #[tokio::test]
    async fn a_snapshot_that_refers_to_audio_never_replaces_another_nodes_state() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (log, mut sm) = crate::open(dir.path()).expect("open");
        sm.apply(logged(&log, upload(1, 1))).await.expect("apply");
        sm.build_snapshot().await.expect("build");
        sm.expect_startup_probe();
        let own = sm
            .get_current_snapshot()
            .await
            .expect("get")
            .expect("a snapshot");
        let fresh = tempfile::tempdir().expect("temp dir");
        let (_fresh_log, mut other) = crate::open(fresh.path()).expect("open");
        other.apply([add(1, 7)]).await.expect("apply");
        let err = other
            .install_snapshot(&own.meta, own.snapshot)
            .await
            .expect_err("refused");
        assert!(err.to_string().contains("refers to audio"), "{err}");
        assert_eq!(
            other.reader().read(|s| s.queue.len()),
            1,
            "its state is untouched"
        );
        // The probe is used up: the next call is for sending, and carries the audio.
        assert_eq!(chunks_sent(&mut sm, 1).await[1], Some(vec![2u8; 10]));
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
