//! Copies applied audio chunks from the Raft log into the `audio` tree on a thread of its own,
//! off the apply path.
//!
//! Why: writing a 1 MiB chunk into sled 0.34 costs about three writes of it (the chunk, then
//! the leaves that hold it, rewritten as they split and consolidate) and most of a core while
//! it runs. Done inside `apply`, that was the pace of a follower catching up: 500 MiB of
//! uploads took 2.8–3.2 s to apply, and 1.2 s with the audio write left out (eighth session,
//! `bench/catch_up.py --mib 500`). It also held every apply behind it — a vote applied after a
//! chunk waited for sled. The chunk is already durable in the log when it is applied, so the
//! copy into sled can trail the apply, as the `sm` tree's writes do (`sm_writer`).
//!
//! The copy also yields to the applies that feed it: while chunks keep arriving (an upload, a
//! follower catching up) it waits for a 20 ms lull, up to 512 pending chunks, and its thread
//! runs at a lower priority. A follower catching up then spends its CPU on replication and
//! copies afterwards. `bench/catch_up.py --mib 500`: copying at once at the same priority
//! 2.06–2.38 s; at nice 10, 1.40–2.23 s; waiting for a lull too, 1.28–2.21 s, the new follower
//! using 0.9–1.1 CPU s instead of 2.3–2.4 (the rest of the spread was openraft's back-off,
//! see `raft::network`).
//!
//! An install defers its audio the same way: the received snapshot file, fsynced before the
//! install, holds the chunks; the install records each as pending (key -> its place in that
//! file) and the mover copies it from there. Writing 500 MiB of audio into sled inline made an
//! install take seconds (a follower catching up through a snapshot: 7.0 s against etcd's 1.1 s).
//!
//! Invariants:
//! - A chunk an apply put is *pending* (key -> the index of the entry that holds it) from that
//!   apply until it is in the tree; reads of a pending chunk read it from that log entry. A
//!   chunk an install put is pending with the snapshot's index, read from the snapshot's file
//!   (held open, so a later file in its place does not matter). A
//!   reader looks in `pending` first and in the tree second: a chunk leaves `pending` only after
//!   it is in the tree, so a reader never misses one that exists.
//! - The log keeps every entry a pending chunk is in: openraft purges only up to a snapshot,
//!   and a build waits ([`AudioMover::wait_moved`]) until nothing at or before its index is
//!   pending. That wait also keeps a build from replacing an installed snapshot's file while
//!   chunks are still to be copied from it, so a crash finds them there
//!   (`StateMachineStore::repair_audio`). The exception is an install, before which openraft may purge past pending
//!   chunks: they belong to the state the install replaces; the mover drops a chunk whose entry
//!   is gone, and [`AudioMover::stop_and_clear`] drops the rest.
//! - A pending chunk that an apply deletes is marked, not removed; the mover removes it (and,
//!   if its copy raced with the delete, deletes it from the tree again), so a deleted chunk is
//!   never left in the tree.
//! - A failed copy is reported by the next `put` and by `wait_moved`: the state machine stops
//!   rather than go on with audio missing.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::LogStore;
use crate::snapshot::ValueAt;

#[derive(Debug, Clone)]
struct Pending {
    /// The log index of the entry that holds the chunk, or of the snapshot that did.
    index: u64,
    source: Source,
    /// Deleted by an apply while pending: the mover removes it without copying it.
    deleted: bool,
}

/// Where a pending chunk is read from.
#[derive(Debug, Clone)]
enum Source {
    /// The log entry at the pending chunk's index.
    Log,
    /// An installed snapshot's file (see [`AudioMover::put_from_snapshot`]).
    Snapshot { file: Arc<File>, at: ValueAt },
}

#[derive(Debug, Default)]
struct Progress {
    pending: HashMap<Vec<u8>, Pending>,
    /// How many of `pending` come from a snapshot rather than the log.
    from_snapshot: usize,
    failed: Option<String>,
    /// When an apply last put a chunk.
    last_put: Option<Instant>,
    /// Callers of `wait_moved` waiting now: the mover does not wait for a lull then.
    waiting_for_moves: usize,
}

#[derive(Debug)]
struct Shared {
    progress: Mutex<Progress>,
    changed: Condvar,
    /// Held by the mover for each whole copy, and by [`AudioMover::stop_and_clear`] to stop it.
    moving: Mutex<()>,
    /// Taken by the mover before each copy; held by tests to keep it from copying.
    #[cfg(test)]
    gate: Mutex<()>,
    audio: sled::Tree,
    log: LogStore,
    /// Set after each copy: the next snapshot build syncs sled's files (see `state_machine`).
    unsynced: Arc<AtomicBool>,
}

impl Progress {
    fn insert(&mut self, key: Vec<u8>, pending: Pending) {
        let added = usize::from(matches!(pending.source, Source::Snapshot { .. }));
        if let Some(old) = self.pending.insert(key, pending) {
            self.from_snapshot -= usize::from(matches!(old.source, Source::Snapshot { .. }));
        }
        self.from_snapshot += added;
    }

    fn remove(&mut self, key: &[u8]) -> Option<Pending> {
        let removed = self.pending.remove(key)?;
        self.from_snapshot -= usize::from(matches!(removed.source, Source::Snapshot { .. }));
        Some(removed)
    }

    /// Pending chunks whose copy keeps their log entry from being purged.
    fn pending_in_log(&self) -> usize {
        self.pending.len() - self.from_snapshot
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until `done` holds (`Ok`) or a copy has failed (`Err`); gives the lock back.
    fn wait_until<'a>(
        &self,
        mut progress: MutexGuard<'a, Progress>,
        done: impl Fn(&Progress) -> bool,
    ) -> (MutexGuard<'a, Progress>, io::Result<()>) {
        loop {
            if let Some(e) = &progress.failed {
                let e = failed(e);
                return (progress, Err(e));
            }
            if done(&progress) {
                return (progress, Ok(()));
            }
            progress = self
                .changed
                .wait(progress)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// Chunks pending from the log before applies wait for the mover (1 GiB of audio): bounds how
/// much of the log a slow copy keeps from being purged and how much a crash leaves to put back.
const MAX_PENDING: usize = 1024;

/// How long applies must have put no chunk before the mover copies while fewer than
/// [`YIELD_UP_TO`] are pending.
const LULL: Duration = Duration::from_millis(20);
/// Chunks pending beyond which the mover copies without waiting for a lull (512 MiB).
const YIELD_UP_TO: usize = MAX_PENDING / 2;

/// Pending chunks read from the log kept for the next reader (8 MiB).
const RECENT_READS: usize = 8;

/// One chunk to copy: its key and the log index of the entry that holds it.
type Move = (Vec<u8>, u64);

#[derive(Debug)]
pub(crate) struct AudioMover {
    /// The pending chunks last read from the log (chunks are immutable, so a copy is never
    /// stale; a deleted one is answered from `pending` before this is looked at).
    recent: Mutex<VecDeque<(Vec<u8>, Bytes)>>,
    queue: Option<Sender<Move>>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl AudioMover {
    pub(crate) fn start(
        audio: sled::Tree,
        log: LogStore,
        unsynced: Arc<AtomicBool>,
    ) -> io::Result<Self> {
        // Unbounded: an item is a key and an index; the chunks themselves stay in the log.
        let (queue, waiting) = channel();
        let shared = Arc::new(Shared {
            progress: Mutex::new(Progress::default()),
            changed: Condvar::new(),
            moving: Mutex::new(()),
            #[cfg(test)]
            gate: Mutex::new(()),
            audio,
            log,
            unsynced,
        });
        let for_thread = shared.clone();
        let thread = std::thread::Builder::new()
            .name("audio-mover".into())
            .spawn(move || {
                lower_priority();
                move_loop(&waiting, &for_thread)
            })?;
        Ok(Self {
            recent: Mutex::new(VecDeque::with_capacity(RECENT_READS)),
            queue: Some(queue),
            shared,
            thread: Some(thread),
        })
    }

    /// Fewer than [`MAX_PENDING`] chunks are pending from the log (then `wait_for_room` would
    /// not wait).
    pub(crate) fn has_room(&self) -> bool {
        self.shared.lock().pending_in_log() < MAX_PENDING
    }

    /// Waits while [`MAX_PENDING`] chunks are pending from the log, so the copy never trails the
    /// applies by more than that. Blocking; call before taking the state lock.
    pub(crate) fn wait_for_room(&self) -> io::Result<()> {
        let progress = self.shared.lock();
        self.shared
            .wait_until(progress, |p| p.pending_in_log() < MAX_PENDING)
            .1
    }

    /// Records that the entry at log index `index` put chunk `key`, and queues its copy. Call
    /// under the state lock, before the apply is visible.
    pub(crate) fn put(&self, key: Vec<u8>, index: u64) -> io::Result<()> {
        self.put_from(key, index, Source::Log)
    }

    /// Records that the snapshot at log index `index`, installed from `file`, holds chunk `key`
    /// at `at`, and queues its copy. `file` must be durable and stay unchanged (chorus renames
    /// a new file into place rather than rewriting one). Call under the state lock, before the
    /// install is visible.
    pub(crate) fn put_from_snapshot(
        &self,
        key: Vec<u8>,
        index: u64,
        file: Arc<File>,
        at: ValueAt,
    ) -> io::Result<()> {
        self.put_from(key, index, Source::Snapshot { file, at })
    }

    fn put_from(&self, key: Vec<u8>, index: u64, source: Source) -> io::Result<()> {
        {
            let mut progress = self.shared.lock();
            if let Some(e) = &progress.failed {
                return Err(failed(e));
            }
            progress.last_put = Some(Instant::now());
            progress.insert(
                key.clone(),
                Pending {
                    index,
                    source,
                    deleted: false,
                },
            );
        }
        let sent = self.queue.as_ref().map(|q| q.send((key, index)));
        if !matches!(sent, Some(Ok(()))) {
            return Err(io::Error::other("the audio mover thread has stopped"));
        }
        Ok(())
    }

    /// Deletes `key` if it is pending (the mover then drops it) and says whether it was; a chunk
    /// that is not pending is in the tree, and the caller deletes it there.
    pub(crate) fn delete_pending(&self, key: &[u8]) -> bool {
        let mut progress = self.shared.lock();
        match progress.pending.get_mut(key) {
            Some(pending) => {
                pending.deleted = true;
                true
            }
            None => false,
        }
    }

    /// Chunk `key`: from its log entry while pending, else from the tree; never copied after
    /// the read (both kinds of buffer become `Bytes` as they are). Blocking.
    pub(crate) fn get(&self, key: &[u8]) -> io::Result<Option<Bytes>> {
        let pending = self.shared.lock().pending.get(key).cloned();
        if let Some(pending) = pending {
            if pending.deleted {
                return Ok(None);
            }
            if let Some(bytes) = self.recently_read(key) {
                return Ok(Some(bytes));
            }
            if let Some(bytes) = read_pending(&self.shared.log, key, &pending)? {
                let bytes = Bytes::from(bytes);
                self.remember(key, &bytes);
                return Ok(Some(bytes));
            }
            // Purged meanwhile: copied by then (or the state is being replaced).
        }
        let stored = self.shared.audio.get(key).map_err(io::Error::other)?;
        Ok(stored.map(Bytes::from_owner))
    }

    /// A pending chunk read from the log moments ago: streams of a track just uploaded read
    /// the same chunks at about the same time, and each read from the log decodes the entry.
    fn recently_read(&self, key: &[u8]) -> Option<Bytes> {
        let recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        recent
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, b)| b.clone())
    }

    fn remember(&self, key: &[u8], bytes: &Bytes) {
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        if recent.len() == RECENT_READS {
            recent.pop_front();
        }
        recent.push_back((key.to_vec(), bytes.clone()));
    }

    /// Waits until no chunk put at or before log index `upto` is pending. Blocking.
    pub(crate) fn wait_moved(&self, upto: u64) -> io::Result<()> {
        let mut progress = self.shared.lock();
        progress.waiting_for_moves += 1;
        self.shared.changed.notify_all();
        let (mut progress, result) = self
            .shared
            .wait_until(progress, |p| p.pending.values().all(|c| c.index > upto));
        progress.waiting_for_moves -= 1;
        result
    }

    /// For an install, which replaces the whole state: stops the mover until the guard is
    /// dropped and forgets every pending chunk. Call under the state lock.
    pub(crate) fn stop_and_clear(&self) -> MutexGuard<'_, ()> {
        let stopped = self
            .shared
            .moving
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut progress = self.shared.lock();
        progress.pending.clear();
        progress.from_snapshot = 0;
        drop(progress);
        self.shared.changed.notify_all();
        stopped
    }

    /// Keeps the mover from copying until the guard is dropped (an install may run meanwhile).
    #[cfg(test)]
    pub(crate) fn pause(&self) -> MutexGuard<'_, ()> {
        self.shared
            .gate
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// How many chunks are pending.
    pub(crate) fn pending(&self) -> usize {
        self.shared.lock().pending.len()
    }
}

/// Gives the mover's thread a lower CPU priority (nice 10) than the threads that replicate and
/// apply: on a busy machine the copy, which nothing waits for, yields to them. Measured with
/// `bench/catch_up.py --mib 500` (2 cores, three nodes): 2.06–2.38 s at the same priority,
/// 1.40–1.67 s at nice 10.
fn lower_priority() {
    // SAFETY: a plain syscall on this thread's own id; a failure only leaves the priority as is.
    let done = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10) };
    if done != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "cannot lower the audio mover's priority");
    }
}

fn failed(e: &str) -> io::Error {
    io::Error::other(format!("copying audio from the log into sled failed: {e}"))
}

impl Drop for AudioMover {
    fn drop(&mut self) {
        // The thread copies what is queued, sees the queue closed and ends; joined so that the
        // sled database it holds is closed when the store is.
        drop(self.queue.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the audio mover thread panicked");
        }
    }
}

/// The bytes of pending chunk `key`, from where it is pending; `None` if it is pending from a log
/// entry that the log no longer has.
fn read_pending(log: &LogStore, key: &[u8], pending: &Pending) -> io::Result<Option<Vec<u8>>> {
    match &pending.source {
        Source::Log => chunk_from_log(log, key, pending.index),
        Source::Snapshot { file, at } => {
            let mut bytes = vec![0; at.len as usize];
            file.read_exact_at(&mut bytes, at.offset)?;
            Ok(Some(bytes))
        }
    }
}

/// The bytes of chunk `key` in the log entry at `index`, or `None` if the log no longer has
/// that entry. An entry that is there but does not hold the chunk is corruption.
fn chunk_from_log(log: &LogStore, key: &[u8], index: u64) -> io::Result<Option<Vec<u8>>> {
    let Some(entry) = log.entry(index)? else {
        return Ok(None);
    };
    let openraft::EntryPayload::Normal(request) = entry.payload else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("log entry {index} holds no audio"),
        ));
    };
    let chunk = request
        .command
        .into_chunks()
        .into_iter()
        .find(|(upload_id, chunk, _)| crate::state::tracks::chunk_key(*upload_id, *chunk) == key);
    match chunk {
        Some((_, _, bytes)) => Ok(Some(bytes)),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("log entry {index} does not hold audio chunk {key:?}"),
        )),
    }
}

fn move_loop(waiting: &Receiver<Move>, shared: &Shared) {
    while let Ok((key, index)) = waiting.recv() {
        wait_for_a_lull(shared);
        #[cfg(test)]
        let _gate = shared.gate.lock().unwrap_or_else(PoisonError::into_inner);
        // A panic in sled must not leave `wait_moved` waiting for a chunk never copied.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            move_one(shared, &key, index)
        }))
        .unwrap_or_else(|_| Err("sled panicked".to_string()));
        if let Err(e) = result {
            tracing::error!(error = %e, "copying audio from the log into sled failed");
            shared.lock().failed.get_or_insert(e);
            shared.changed.notify_all();
        }
    }
}

/// While chunks keep arriving (a follower catching up, an upload), waits until applies have put
/// none for [`LULL`], unless [`YIELD_UP_TO`] chunks are pending or someone waits for the copy.
fn wait_for_a_lull(shared: &Shared) {
    let mut progress = shared.lock();
    while let Some(last) = progress.last_put {
        let quiet = last.elapsed();
        if quiet >= LULL
            || progress.pending.len() >= YIELD_UP_TO
            || progress.waiting_for_moves > 0
            || progress.failed.is_some()
        {
            return;
        }
        progress = shared
            .changed
            .wait_timeout(progress, LULL - quiet)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
}

/// Copies one chunk, unless it was deleted or forgotten (by an install) meanwhile.
fn move_one(shared: &Shared, key: &[u8], index: u64) -> Result<(), String> {
    let _moving = shared.moving.lock().unwrap_or_else(PoisonError::into_inner);
    // Gone when an install forgot it; the index must match too, although keys are never reused.
    let pending = shared
        .lock()
        .pending
        .get(key)
        .filter(|p| p.index == index)
        .cloned();
    let pending = match pending {
        None => return Ok(()),
        Some(p) if p.deleted => {
            // Not copied, but the tree may hold it anyway: a restart applies again the entries
            // after the `sm` tree's `m/applied`, and a chunk an earlier run copied before it was
            // killed is put again, pending, with its old copy still in the tree. Keys are never
            // reused, so removing one that is not there is all this costs.
            shared.audio.remove(key).map_err(|e| e.to_string())?;
            shared.lock().remove(key);
            shared.changed.notify_all();
            return Ok(());
        }
        Some(p) => p,
    };
    let Some(bytes) = read_pending(&shared.log, key, &pending).map_err(|e| e.to_string())? else {
        // openraft purges the log up to a received snapshot before it installs it; the install
        // replaces the state this chunk belongs to. Not waited for: a build waiting for this
        // chunk would otherwise wait for an install that waits for the build.
        tracing::debug!(index, "audio chunk's entry purged before it was copied");
        shared.lock().remove(key);
        shared.changed.notify_all();
        return Ok(());
    };
    shared.audio.insert(key, bytes).map_err(|e| e.to_string())?;
    shared.unsynced.store(true, Ordering::Release);
    let mut progress = shared.lock();
    if progress.remove(key).is_some_and(|p| p.deleted) {
        // Deleted while it was being copied.
        shared.audio.remove(key).map_err(|e| e.to_string())?;
    }
    drop(progress);
    shared.changed.notify_all();
    Ok(())
}
