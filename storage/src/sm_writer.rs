//! Writes the state machine's `sm` batches to sled on a thread of their own, off the apply path.
//!
//! Why: sled 0.34 rolls its IO buffer twice for every `apply_batch` (`PageCache::pin_log`), each
//! time handing a buffer write to its IO thread pool and waking it. Measured on the leader with one
//! client: 142 µs median, 300 µs at p90, for the `apply_batch` of one small entry, an eighth of a
//! write's whole latency, all of it on the way to the client's answer. Nothing on that way reads
//! the `sm` tree (reads use the in-memory [`crate::state::State`]), and an applied entry is
//! already durable in the Raft log, so the tree may trail the in-memory state: after a crash the
//! entries after the tree's `m/applied` are applied again, as they always were for sled writes
//! that sled had not flushed yet.
//!
//! The writer also waits up to [`COALESCE`] after a batch arrives for the batches that follow
//! it and writes them as one. Why: each `apply_batch` puts two small writes of the same 4 KiB
//! page on the disk (each roll of sled's buffer is a `pwrite` and a `sync_file_range` that waits
//! for it), so one-client votes made every node write 12.6 KiB per vote against etcd's 4.7, and
//! every node's log `fdatasync` queued behind those writes on the shared disk (bench/RESULTS.md).
//! The tree trails by that much more (and longer while a snapshot build
//! holds it or the disk is slow); a drain or hold does not wait for it (it wakes the writer).
//!
//! Invariants:
//! - Batches reach the tree in the order they were submitted, each atomically. Batches waiting
//!   together are merged into one (a later write of a key wins), so every batch written still
//!   describes one log position (the last one merged carries its `m/applied`).
//! - Whoever replaces the whole tree (an install) holds the state lock, so nothing new is
//!   submitted, and calls [`SmWriter::drain`] first. Whoever reads it (a snapshot build) calls
//!   [`SmWriter::hold`] under the state lock, then lets the lock go: applies go on in memory and
//!   queue their batches, and the tree stays at that log position until the hold ends.
//! - A failed write is reported by the next `submit` or `drain`: the state machine stops instead
//!   of going on with a tree that lost a batch.
//! - Before each write the writer runs its `before_write` hook: the state machine makes the
//!   chunk files the batch names durable there, so the tree never names a chunk a power loss
//!   could take.

use std::collections::BTreeMap;
use std::io;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Key/value writes of the `sm` tree: `None` deletes the key.
pub type Writes = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// Run by the writer before each write to the tree; an error fails the write.
pub type BeforeWrite = Box<dyn Fn() -> io::Result<()> + Send>;

/// Batches submitted but not yet written before `submit` waits (bounds the memory a slow disk
/// can make the writer hold).
const QUEUE: usize = 256;

/// How long the writer gathers batches before it writes them as one (etcd's backend commits its
/// batched writes every 100 ms too). A crash costs at most this much more of the log applied
/// again at the next start.
pub const COALESCE: Duration = Duration::from_millis(100);

/// Batches merged into one write at most, however short the wait was.
const MAX_MERGED: u64 = 4096;

/// What the writer's queue carries.
enum Job {
    Write(Writes),
    /// Someone waits for everything queued: write it now, do not wait for more.
    Now,
}

#[derive(Default)]
struct Progress {
    submitted: u64,
    written: u64,
    /// `apply_batch` calls made (each holds one or more merged batches).
    sled_batches: u64,
    failed: Option<String>,
}

#[derive(Default)]
struct Shared {
    progress: Mutex<Progress>,
    changed: Condvar,
    /// Held by the writer while it writes, and by [`SmWriter::hold`] to stop it.
    gate: Mutex<()>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pub struct SmWriter {
    queue: Option<SyncSender<Job>>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for SmWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = self.shared.lock();
        f.debug_struct("SmWriter")
            .field("submitted", &p.submitted)
            .field("written", &p.written)
            .field("sled_batches", &p.sled_batches)
            .field("failed", &p.failed)
            .finish()
    }
}

/// The batch that applies `writes` to a tree.
pub fn to_batch(writes: Writes) -> sled::Batch {
    let mut batch = sled::Batch::default();
    for (key, value) in writes {
        match value {
            Some(value) => batch.insert(key, value),
            None => batch.remove(key),
        }
    }
    batch
}

impl SmWriter {
    /// Starts the writer thread; it gathers batches for `coalesce` before writing them, and
    /// runs `before_write` before each write.
    pub fn start(
        tree: sled::Tree,
        coalesce: Duration,
        before_write: BeforeWrite,
    ) -> io::Result<Self> {
        let (queue, waiting) = sync_channel(QUEUE);
        let shared = Arc::new(Shared::default());
        let for_thread = shared.clone();
        let thread = std::thread::Builder::new()
            .name("sm-writer".into())
            .spawn(move || write_loop(&tree, &waiting, &for_thread, coalesce, &before_write))?;
        Ok(Self {
            queue: Some(queue),
            shared,
            thread: Some(thread),
        })
    }

    /// Queues `writes`; waits only if [`QUEUE`] batches are already waiting.
    pub fn submit(&self, writes: Writes) -> io::Result<()> {
        {
            let mut progress = self.shared.lock();
            if let Some(e) = &progress.failed {
                return Err(failed(e));
            }
            progress.submitted += 1;
        }
        let sent = self.queue.as_ref().map(|q| q.send(Job::Write(writes)));
        if !matches!(sent, Some(Ok(()))) {
            let mut progress = self.shared.lock();
            progress.submitted -= 1;
            return Err(io::Error::other(
                "the state machine's writer thread has stopped",
            ));
        }
        Ok(())
    }

    /// Drains the queue, then keeps the writer from writing until the guard is dropped. Call it
    /// where nothing is submitted meanwhile (under the state lock), or the tree may be a batch
    /// ahead of what the caller saw.
    pub fn hold(&self) -> io::Result<MutexGuard<'_, ()>> {
        self.drain()?;
        Ok(self
            .shared
            .gate
            .lock()
            .unwrap_or_else(PoisonError::into_inner))
    }

    /// Waits until everything submitted is in the tree.
    pub fn drain(&self) -> io::Result<()> {
        let behind = {
            let progress = self.shared.lock();
            progress.written < progress.submitted && progress.failed.is_none()
        };
        // Wake a writer that is gathering batches; one that is not ignores this. A writer that
        // stopped has written all it will, and `failed` or the counts say what happened.
        if behind && let Some(queue) = &self.queue {
            let _ = queue.send(Job::Now);
        }
        let mut progress = self.shared.lock();
        while progress.written < progress.submitted && progress.failed.is_none() {
            progress = self
                .shared
                .changed
                .wait(progress)
                .unwrap_or_else(PoisonError::into_inner);
        }
        match &progress.failed {
            Some(e) => Err(failed(e)),
            None => Ok(()),
        }
    }
}

fn failed(e: &str) -> io::Error {
    io::Error::other(format!("writing the state machine to sled failed: {e}"))
}

impl Drop for SmWriter {
    fn drop(&mut self) {
        // The thread writes what is queued, sees the queue closed and ends; joined so that the
        // sled database it holds is closed when the store is.
        drop(self.queue.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the state machine's writer thread panicked");
        }
    }
}

/// The writer thread: takes a batch, gathers what follows it for up to `coalesce` (less if
/// someone drains, the queue closes or [`MAX_MERGED`] are gathered), writes them as one.
fn write_loop(
    tree: &sled::Tree,
    waiting: &Receiver<Job>,
    shared: &Shared,
    coalesce: Duration,
    before_write: &BeforeWrite,
) {
    while let Ok(job) = waiting.recv() {
        let Job::Write(mut writes) = job else {
            continue; // a drain that found nothing left to write
        };
        let mut count = 1u64;
        let deadline = Instant::now() + coalesce;
        while count < MAX_MERGED {
            let wait = deadline.saturating_duration_since(Instant::now());
            match waiting.recv_timeout(wait) {
                Ok(Job::Write(more)) => {
                    writes.extend(more);
                    count += 1;
                }
                // Drained, waited long enough, or closed (then `recv` ends the loop after this).
                Ok(Job::Now) | Err(_) => break,
            }
        }
        // After a failed write nothing more is written: a later batch carries a later
        // `m/applied`, and the next start would not apply the lost batch's entries again.
        if shared.lock().failed.is_some() {
            continue;
        }
        // A panic in sled must not leave `drain` waiting for a batch that will never be written.
        let gate = shared.gate.lock().unwrap_or_else(PoisonError::into_inner);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            before_write().map_err(|e| format!("before the write: {e}"))?;
            tree.apply_batch(to_batch(writes))
                .map_err(|e| e.to_string())
        }))
        .unwrap_or_else(|_| Err("sled panicked".to_string()));
        drop(gate);
        let mut progress = shared.lock();
        progress.written += count;
        progress.sled_batches += 1;
        if let Err(e) = result {
            tracing::error!(error = %e, "writing the state machine to sled failed");
            progress.failed.get_or_insert(e);
        }
        drop(progress);
        shared.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writes(pairs: &[(&str, Option<&str>)]) -> Writes {
        pairs
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.map(|v| v.as_bytes().to_vec())))
            .collect()
    }

    /// A writer on the `sm` tree of a temporary database.
    fn started() -> (sled::Tree, SmWriter) {
        started_gathering(COALESCE)
    }

    /// The same, gathering batches for `coalesce`.
    fn started_gathering(coalesce: Duration) -> (sled::Tree, SmWriter) {
        let db = sled::Config::new().temporary(true).open().expect("sled");
        let tree = db.open_tree("sm").expect("tree");
        let writer = SmWriter::start(tree.clone(), coalesce, Box::new(|| Ok(()))).expect("start");
        (tree, writer)
    }

    /// How many `apply_batch` calls the writer has made.
    fn sled_batches(writer: &SmWriter) -> u64 {
        writer.shared.lock().sled_batches
    }

    /// Batches that arrive while the writer gathers are written as one, and a drain does not
    /// wait out the gathering: with an hour to gather, ten batches land in one write as soon as
    /// someone drains.
    #[test]
    fn batches_gathered_are_written_as_one_when_drained() {
        let (tree, writer) = started_gathering(Duration::from_secs(3600));
        for n in 0..10u32 {
            let value = n.to_string();
            writer
                .submit(writes(&[("last", Some(&value))]))
                .expect("submit");
        }
        assert!(tree.is_empty(), "still gathering");
        writer.drain().expect("drain");
        assert_eq!(tree.get("last").expect("get").as_deref(), Some(&b"9"[..]));
        assert_eq!(sled_batches(&writer), 1);
        // Drained again with nothing behind: no write, no wait.
        writer.drain().expect("drain");
        assert_eq!(sled_batches(&writer), 1);
    }

    #[test]
    fn batches_land_in_order_and_drain_waits_for_them() {
        let (tree, writer) = started();
        for n in 0..1000u32 {
            let value = n.to_string();
            let mut w = writes(&[("last", Some(&value))]);
            w.insert(format!("k{n}").into_bytes(), Some(value.into_bytes()));
            if n > 0 {
                // Each batch deletes what the one before wrote: merged or not, the order holds.
                w.insert(format!("k{}", n - 1).into_bytes(), None);
            }
            writer.submit(w).expect("submit");
        }
        writer.drain().expect("drain");
        assert_eq!(tree.get("last").expect("get").as_deref(), Some(&b"999"[..]));
        assert_eq!(tree.len(), 2, "only `last` and k999 are left");
        assert!(tree.contains_key("k999").expect("get"));
    }

    /// A lone batch is written once the gathering time is up, with nobody draining.
    #[test]
    fn a_lone_batch_is_written_without_a_drain() {
        let (tree, writer) = started();
        writer.submit(writes(&[("a", Some("1"))])).expect("submit");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !tree.contains_key("a").expect("get") {
            assert!(Instant::now() < deadline, "not written after 30 s");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(sled_batches(&writer), 1);
    }

    /// A snapshot build reads the tree while applies go on: what they submit meanwhile waits.
    /// (No gathering here, so that it is the hold that keeps the batch out.)
    #[test]
    fn a_hold_keeps_the_tree_where_it_was_until_it_ends() {
        let (tree, writer) = started_gathering(Duration::ZERO);
        writer.submit(writes(&[("a", Some("1"))])).expect("submit");
        let held = writer.hold().expect("hold");
        assert_eq!(
            tree.get("a").expect("get").as_deref(),
            Some(&b"1"[..]),
            "drained first"
        );
        writer
            .submit(writes(&[("a", Some("2")), ("b", Some("2"))]))
            .expect("submit");
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(tree.get("a").expect("get").as_deref(), Some(&b"1"[..]));
        assert!(!tree.contains_key("b").expect("get"));
        drop(held);
        writer.drain().expect("drain");
        assert_eq!(tree.get("a").expect("get").as_deref(), Some(&b"2"[..]));
        assert!(tree.contains_key("b").expect("get"));
    }

    #[test]
    fn dropping_the_writer_writes_what_was_queued() {
        let (tree, writer) = started();
        writer.submit(writes(&[("a", Some("1"))])).expect("submit");
        drop(writer);
        assert_eq!(tree.get("a").expect("get").as_deref(), Some(&b"1"[..]));
    }
}
