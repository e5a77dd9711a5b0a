//! The Raft log: entries in append-only segment files under `<data_dir>/log/` ([`segments`]),
//! and the vote and the last purged id in sled's `raft_meta` tree. The committed index is not
//! kept (`save_committed` keeps nothing): the leader commits before its own flush, so a saved
//! index could outlive the entries it names in a power loss.
//!
//! Durability (what keeps Raft safe across crashes and power loss): `append` writes the batch to
//! the segment and hands its `LogFlushed` callback to the [`Flusher`] thread, which calls it only
//! after `fdatasync` of that segment. The flusher takes every batch waiting, syncs each file once
//! and acknowledges them all (group commit: concurrent appends share one sync, and the Raft core
//! never blocks on the disk). `save_vote` returns only after the vote is flushed; a purge records
//! its point durably before removing files.
//!
//! [`segments`]: crate::segments

use std::fmt::Debug;
use std::fs::File;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader};

use crate::codec;
use crate::durable::DurableSled;
use crate::segments::SegmentLog;
use crate::types::{Entry, LogId, StorageError, StorageIOError, TypeConfig, Vote};

const VOTE: &[u8] = b"vote";
const LAST_PURGED: &[u8] = b"last_purged";

#[derive(Clone, Debug)]
pub struct LogStore {
    db: DurableSled,
    meta: sled::Tree,
    entries: Arc<Mutex<SegmentLog>>,
    flusher: Flusher,
    janitor: Janitor,
    /// This reader's next replication batch, read while the last one is on its way.
    read_ahead: ReadAhead,
}

/// The next replication batch, read in the background for a stream that is behind by more
/// than one batch (see `LogStore::limited_get_log_entries`). Each clone of the store (openraft
/// gives every replication stream its own) starts without one.
#[derive(Debug, Default)]
struct ReadAhead {
    /// Where the stream's last read started: a read from there again is a retry (the follower
    /// did not answer), which reads nothing ahead.
    last_start: Option<u64>,
    /// The batch from `first` on, with the log's truncation count when its read began.
    next: Option<(u64, u64, EntriesRead)>,
}

/// A read of entries running on the blocking pool.
type EntriesRead = tokio::task::JoinHandle<std::io::Result<Vec<Entry>>>;

impl Clone for ReadAhead {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        if let Some((_, _, read)) = self.next.take() {
            read.abort();
        }
    }
}

/// The thread that unlinks purged segment files, off openraft's core (see
/// [`crate::segments::remove_files`]). Files it has not removed when the process stops are
/// removed on the next open, because the purge point is durable before they are handed over.
#[derive(Clone, Debug)]
struct Janitor {
    doomed: std::sync::mpsc::Sender<Vec<PathBuf>>,
}

impl Janitor {
    fn start(dir: &Path) -> std::io::Result<Self> {
        let (doomed, rx) = std::sync::mpsc::channel::<Vec<PathBuf>>();
        let dir = dir.to_path_buf();
        std::thread::Builder::new()
            .name("log-janitor".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut paths = first;
                    paths.extend(rx.try_iter().flatten());
                    if let Err(e) = crate::segments::remove_files(&dir, &paths) {
                        tracing::warn!(error = %e, "cannot remove purged log segments; the next start removes them");
                    }
                }
            })?;
        Ok(Self { doomed })
    }
}

/// The group-commit thread (see the module docs).
#[derive(Clone, Debug)]
struct Flusher {
    waiting: std::sync::mpsc::Sender<(Vec<Arc<File>>, LogFlushed<TypeConfig>)>,
}

impl Flusher {
    fn start() -> std::io::Result<Self> {
        let (waiting, rx) = std::sync::mpsc::channel::<(Vec<Arc<File>>, LogFlushed<TypeConfig>)>();
        std::thread::Builder::new()
            .name("log-flusher".into())
            .spawn(move || {
                // Once a sync has failed, every later append is reported failed too: Linux may
                // drop the dirty pages on an fsync error and report the next fsync clean, and
                // openraft must never hear "flushed" for an append after a lost one.
                let mut failed: Option<String> = None;
                // Ends when every LogStore (and so every sender) is gone.
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    batch.extend(rx.try_iter());
                    // Each file once, however many appends went to it.
                    let mut synced: Vec<(*const File, Result<(), String>)> = Vec::new();
                    for (files, callback) in batch {
                        let mut result = Ok(());
                        for file in files {
                            let key = Arc::as_ptr(&file);
                            let outcome = match synced.iter().find(|(k, _)| *k == key) {
                                Some((_, r)) => r.clone(),
                                None => {
                                    let started = std::time::Instant::now();
                                    let r = file.sync_data().map_err(|e| e.to_string());
                                    crate::metrics::log_fsynced(started.elapsed());
                                    synced.push((key, r.clone()));
                                    r
                                }
                            };
                            result = result.and(outcome);
                        }
                        if let Err(e) = &result {
                            failed.get_or_insert_with(|| e.clone());
                        }
                        if let Some(e) = &failed {
                            result = Err(e.clone());
                        }
                        tracing::trace!(target: "chorus::stages", stage = "log.flushed");
                        callback.log_io_completed(result.map_err(std::io::Error::other));
                    }
                }
            })?;
        Ok(Self { waiting })
    }

    /// Acknowledges `callback` once `files` are synced.
    fn after_sync(&self, files: Vec<Arc<File>>, callback: LogFlushed<TypeConfig>) {
        if let Err(std::sync::mpsc::SendError((_, callback))) = self.waiting.send((files, callback))
        {
            let gone = std::io::Error::other("the log flusher thread has stopped");
            callback.log_io_completed(Err(gone));
        }
    }
}

/// Most bytes of entries read for one AppendEntries (see `limited_get_log_entries`). The raft
/// crate sends them as several smaller frames in flight at once; all must be answered within
/// openraft's `heartbeat_interval`, which bounds this (24 MiB took ~100 ms end to end here).
pub const REPLICATION_READ_BYTES: u64 = 24 * 1024 * 1024;

fn read_spans(spans: Vec<crate::segments::Span>) -> Result<Vec<Entry>, StorageError> {
    read_entries(spans).map_err(|e| StorageIOError::read_logs(&e).into())
}

fn read_entries(spans: Vec<crate::segments::Span>) -> std::io::Result<Vec<Entry>> {
    let mut entries = Vec::new();
    for span in spans {
        entries.extend(span.read()?);
    }
    Ok(entries)
}

/// Reads `key` of the `raft_meta` tree, written as a `T` by `write_meta`.
fn read_meta_in<T: serde::de::DeserializeOwned>(
    meta: &sled::Tree,
    key: &[u8],
) -> Result<Option<T>, StorageError> {
    let Some(bytes) = meta.get(key).map_err(|e| StorageIOError::read(&e))? else {
        return Ok(None);
    };
    codec::decode(&bytes)
        .map(Some)
        .map_err(|e| StorageIOError::read(&e).into())
}

/// Which of sled's writes a sync makes durable (see [`crate::durable`]).
#[derive(Clone, Copy, Debug)]
enum SledSync {
    /// The vote and the purge point, which sled keeps in its log file.
    SmallValues,
    /// Everything, blob files included.
    Everything,
}

/// sled's flush and the syncs after it, on tokio's blocking pool — never sled 0.34's
/// `flush_async`: that runs the flush on a thread of sled's own IO pool, and a flush waits for
/// buffer writes that sled queues on the same pool. With every pool thread busy that way the
/// writes never run and the flushes never end (sled fixed it after 0.34.7,
/// spacejam/sled@7fc1534; the test `flushes_end_while_sleds_io_pool_is_busy` shows the hang). A
/// hung flush in `save_vote` stops the Raft core for good: the node never elects, answers or
/// becomes ready again.
async fn sync_sled(db: &DurableSled, what: SledSync) -> std::io::Result<()> {
    let db = db.clone();
    tokio::task::spawn_blocking(move || match what {
        SledSync::SmallValues => db.sync_small_values(),
        SledSync::Everything => db.sync_everything(),
    })
    .await
    .map_err(std::io::Error::other)?
}

fn first_and_end(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(i) => *i,
        Bound::Excluded(i) => i.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(i) => i.saturating_add(1),
        Bound::Excluded(i) => *i,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl LogStore {
    /// Opens the log: meta in `db`, entries in segment files in `dir`.
    pub(crate) fn open(db: &DurableSled, dir: &Path) -> Result<Self, crate::OpenError> {
        let log_err = |source| crate::OpenError::Log {
            path: dir.display().to_string(),
            source,
        };
        let meta = db
            .db()
            .open_tree("raft_meta")
            .map_err(|e| log_err(std::io::Error::other(e)))?;
        let purged = read_meta_in::<LogId>(&meta, LAST_PURGED).map_err(|e| {
            log_err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("last purged log id: {e}"),
            ))
        })?;
        let entries = SegmentLog::open(dir, purged).map_err(log_err)?;
        Ok(Self {
            db: db.clone(),
            meta,
            entries: Arc::new(Mutex::new(entries)),
            flusher: Flusher::start().map_err(log_err)?,
            janitor: Janitor::start(dir).map_err(log_err)?,
            read_ahead: ReadAhead::default(),
        })
    }

    fn segments(&self) -> std::sync::MutexGuard<'_, SegmentLog> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn read_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, StorageError> {
        read_meta_in(&self.meta, key)
    }

    fn write_meta<T: serde::Serialize>(&self, key: &[u8], value: &T) -> Result<(), StorageError> {
        let bytes = codec::encode(value).map_err(|e| StorageIOError::write(&e))?;
        self.meta
            .insert(key, bytes)
            .map_err(|e| StorageIOError::write(&e))?;
        Ok(())
    }

    /// Makes everything written so far (log and state machine) durable.
    pub async fn flush(&self) -> std::io::Result<()> {
        sync_sled(&self.db, SledSync::Everything).await?;
        self.segments().sync()
    }

    /// Bytes the entries `start..end` take in the log (what is purged takes nothing).
    pub fn bytes(&self, start: u64, end: u64) -> u64 {
        self.segments().bytes(start, end)
    }

    /// The first index from which the entries before `end` take at most `max_bytes` in the log:
    /// where a purge that keeps that much behind `end` would stop.
    pub fn first_within(&self, end: u64, max_bytes: u64) -> u64 {
        self.segments().first_within(end, max_bytes)
    }

    /// The last log id removed by a purge, if any.
    pub(crate) fn last_purged(&self) -> Result<Option<LogId>, StorageError> {
        self.read_meta(LAST_PURGED)
    }

    /// Writes the vote of a node seeded by a restore, before it first starts. Blocking.
    pub(crate) fn seed_vote(&self, vote: &Vote) -> std::io::Result<()> {
        self.write_meta(VOTE, vote).map_err(std::io::Error::other)?;
        self.db.sync_small_values()
    }

    /// True when this node has never taken part in a cluster: no vote, no log, nothing purged.
    pub fn is_pristine(&self) -> Result<bool, StorageError> {
        let vote: Option<Vote> = self.read_meta(VOTE)?;
        let purged: Option<LogId> = self.read_meta(LAST_PURGED)?;
        Ok(vote.is_none() && purged.is_none() && self.segments().is_empty())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (start, end) = first_and_end(&range);
        // Located under the lock, read without it: appends go on while a follower is fed.
        let spans = self.segments().spans(start, end);
        read_spans(spans)
    }

    /// What replication reads: at most [`REPLICATION_READ_BYTES`] of entries (openraft asks for
    /// up to `max_payload_entries`, which with 1 MiB audio entries would be hundreds of MiB read
    /// and decoded for one AppendEntries).
    ///
    /// When that leaves entries of the range unread (a follower behind by more than a batch of
    /// audio), the next batch is read in the background while this one is sent: openraft asks
    /// for it only after the follower has answered, and reading 24 MiB took ~15 ms of each
    /// ~100 ms round of a catch-up. A batch read ahead is used only if openraft asks from where
    /// it starts and no truncation happened since its read began, and it is cut to what openraft
    /// asks for. A read that starts where the last one did (the follower did not answer, and
    /// openraft tries again, every 200 ms at first) reads nothing ahead.
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        let retry = self.read_ahead.last_start.replace(start) == Some(start);
        let ahead = match self.read_ahead.next.take() {
            Some((first, truncations, read)) if first == start => match read.await {
                // A truncation since the read began may have replaced what it read.
                Ok(Ok(mut entries)) if self.segments().truncations() == truncations => {
                    entries.retain(|e| e.log_id.index < end);
                    entries
                }
                _ => Vec::new(),
            },
            Some((_, _, read)) => {
                read.abort();
                Vec::new()
            }
            None => Vec::new(),
        };
        let entries = if ahead.first().map(|e| e.log_id.index) == Some(start) {
            ahead
        } else {
            let spans = self
                .segments()
                .spans_within(start, end, REPLICATION_READ_BYTES);
            read_spans(spans)?
        };
        let next = start + entries.len() as u64;
        let ahead = {
            let segments = self.segments();
            let log_end = segments.last().map_or(0, |l| l.index + 1);
            (!retry && next < end.min(log_end)).then(|| {
                let spans =
                    segments.spans_within(next, next + (end - start), REPLICATION_READ_BYTES);
                let read = tokio::task::spawn_blocking(move || read_entries(spans));
                (next, segments.truncations(), read)
            })
        };
        self.read_ahead.next = ahead;
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.read_meta(LAST_PURGED)?;
        let last_log_id = self.segments().last().max(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.write_meta(VOTE, vote)?;
        sync_sled(&self.db, SledSync::SmallValues)
            .await
            .map_err(|e| StorageIOError::write_vote(&e))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.read_meta(VOTE)
    }

    /// Not kept. A leader commits as soon as a majority has flushed an entry, which may be
    /// before its own flush (see vendor/README.md); a saved committed index could then be
    /// durable while the entries up to it are not, and after a power loss openraft would fail
    /// to start re-applying entries the log no longer has. A restarted node learns the commit
    /// index from the leader instead, and applies from the state machine's `m/applied` on.
    async fn save_committed(&mut self, _committed: Option<LogId>) -> Result<(), StorageError> {
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(None)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        tracing::trace!(target: "chorus::stages", stage = "log.append");
        let files = self
            .segments()
            .append(entries)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        // Durable (and acknowledged) after the next group sync; openraft goes on meanwhile.
        self.flusher.after_sync(files, callback);
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(%log_id, "truncate log");
        self.segments()
            .truncate(log_id.index)
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(%log_id, "purge log");
        // The entries being purged are covered by a snapshot, and building or installing it
        // made the state it describes durable, audio included (`sync_everything`); what is left
        // is the purge point, durable before the entries go.
        self.write_meta(LAST_PURGED, &log_id)?;
        sync_sled(&self.db, SledSync::SmallValues)
            .await
            .map_err(|e| StorageIOError::write_logs(&e))?;
        let doomed = self
            .segments()
            .purge(log_id.index)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        if !doomed.is_empty() && self.janitor.doomed.send(doomed).is_err() {
            tracing::warn!(
                "the log janitor has stopped; purged segments stay until the next start"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn blank(index: u64) -> Entry {
        Entry {
            log_id: openraft::LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    /// Votes are saved (and flushed) while sled's IO pool has more flushes than threads and
    /// large values are being written: every flush ends. With `flush_async` none did, ever (the
    /// pool's seven threads each ran a flush waiting for a buffer write queued behind them), and
    /// this test hung until its deadline.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn flushes_end_while_sleds_io_pool_is_busy() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (log, sm) = crate::open(dir.path()).expect("open");
        let audio = log.db.db().open_tree("busy").expect("tree");
        let writer = std::thread::spawn(move || {
            let value = vec![7u8; 1024 * 1024];
            for i in 0..256u64 {
                audio
                    .insert((i % 16).to_be_bytes(), value.clone())
                    .expect("insert");
            }
        });
        let savers: Vec<_> = (0..16u64)
            .map(|n| {
                let mut log = log.clone();
                tokio::spawn(async move {
                    for term in 1..=10 {
                        let vote = Vote::new(term, n);
                        log.save_vote(&vote).await.expect("save vote");
                    }
                })
            })
            .collect();
        let all = async {
            for saver in savers {
                saver.await.expect("saver");
            }
        };
        // A liveness bound, not a speed target: the whole test takes well under a second here.
        if tokio::time::timeout(std::time::Duration::from_secs(60), all)
            .await
            .is_err()
        {
            // Closing the stores would wait on the hung sled forever; fail instead.
            std::mem::forget((log, sm));
            panic!("save_vote (its flush) did not end within 60 s: sled's IO pool is stuck");
        }
        writer.join().expect("writer");
    }

    fn chunk(index: u64) -> Entry {
        Entry {
            log_id: openraft::LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(crate::Request {
                dedupe_key: None,
                at_ms: 0,
                command: crate::Command::Tracks(crate::TrackCommand::put_chunk(
                    1,
                    index as u32,
                    vec![index as u8; 1024 * 1024],
                )),
            }),
        }
    }

    /// A store in `dir` whose log holds three replication batches of 1 MiB chunks; and the
    /// last index.
    fn log_of_three_batches(dir: &Path) -> (LogStore, u64) {
        let (log, _sm) = crate::open(dir).expect("open");
        let last = 3 * (REPLICATION_READ_BYTES / (1024 * 1024));
        log.segments()
            .append((1..=last).map(chunk))
            .expect("append");
        (log, last)
    }

    fn indexes(entries: &[Entry]) -> Vec<u64> {
        entries.iter().map(|e| e.log_id.index).collect()
    }

    /// Replication reads at most REPLICATION_READ_BYTES; the batch after it is read ahead, and
    /// whatever openraft asks for next, it gets exactly the entries of its range.
    #[tokio::test]
    async fn replication_reads_are_limited_and_what_is_read_ahead_matches_the_log() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (mut log, last) = log_of_three_batches(dir.path());
        let per_batch = last / 3;
        let mut reader = log.get_log_reader().await;
        let first = reader
            .limited_get_log_entries(1, last + 1)
            .await
            .expect("read");
        assert!(
            (1..per_batch).contains(&(first.len() as u64)),
            "{}",
            first.len()
        );
        assert_eq!(
            indexes(&first),
            (1..=first.len() as u64).collect::<Vec<_>>()
        );
        // Continues where the first stopped: served from the read-ahead.
        let from = first.len() as u64 + 1;
        let second = reader
            .limited_get_log_entries(from, last + 1)
            .await
            .expect("read");
        assert_eq!(second.first().map(|e| e.log_id.index), Some(from));
        assert_eq!(
            indexes(&second),
            (from..from + second.len() as u64).collect::<Vec<_>>()
        );
        let expected = log
            .try_get_log_entries(from..from + second.len() as u64)
            .await
            .expect("read");
        assert!(second == expected, "read-ahead differs from the log");
        // A shorter range than was read ahead is cut to it.
        let from = from + second.len() as u64;
        let third = reader
            .limited_get_log_entries(from, from + 2)
            .await
            .expect("read");
        assert_eq!(indexes(&third), vec![from, from + 1]);
        // Asked from somewhere else, the read-ahead is dropped and the log read.
        let again = reader.limited_get_log_entries(2, 4).await.expect("read");
        assert_eq!(indexes(&again), vec![2, 3]);
        assert!(again[0] == chunk(2));
        assert_eq!(
            reader.read_ahead.next.as_ref().map(|n| n.0),
            None,
            "range fully read"
        );

        // A retry (the same start again) reads nothing ahead.
        let batch = reader
            .limited_get_log_entries(1, last + 1)
            .await
            .expect("read");
        assert_eq!(
            reader.read_ahead.next.as_ref().map(|n| n.0),
            Some(batch.len() as u64 + 1)
        );
        reader
            .limited_get_log_entries(1, last + 1)
            .await
            .expect("read");
        assert!(reader.read_ahead.next.is_none(), "a retry read ahead");
    }

    /// A batch read ahead before the log was truncated and rewritten is not what gets sent.
    #[tokio::test]
    async fn what_was_read_ahead_before_a_truncation_is_read_again() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (mut log, last) = log_of_three_batches(dir.path());
        let mut reader = log.get_log_reader().await;
        let first = reader
            .limited_get_log_entries(1, last + 1)
            .await
            .expect("read");
        let from = first.len() as u64 + 1;
        assert_eq!(reader.read_ahead.next.as_ref().map(|n| n.0), Some(from));
        // Let the read ahead finish first, so it holds the entries from before the truncation.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !reader
            .read_ahead
            .next
            .as_ref()
            .is_some_and(|n| n.2.is_finished())
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the read ahead never finished"
            );
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }

        // A new leader's entries replace everything from `from` on.
        log.truncate(openraft::LogId::new(CommittedLeaderId::new(1, 1), from))
            .await
            .expect("truncate");
        let replaced = |index| {
            let mut e = chunk(index);
            e.log_id = openraft::LogId::new(CommittedLeaderId::new(2, 2), index);
            e
        };
        log.segments()
            .append((from..=last).map(replaced))
            .expect("append");

        let second = reader
            .limited_get_log_entries(from, last + 1)
            .await
            .expect("read");
        assert!(!second.is_empty());
        assert!(
            second.iter().all(|e| e.log_id.leader_id.term == 2),
            "entries from before the truncation were returned"
        );
    }

    /// A node that has purged its log starts again (the purge point reads back as written).
    #[tokio::test]
    async fn a_purged_log_opens_again() {
        let dir = tempfile::tempdir().expect("temp dir");
        {
            let (mut log, mut sm) = crate::open(dir.path()).expect("open");
            log.segments().append((1..=5).map(blank)).expect("append");
            // Only what the state machine has applied is ever purged.
            openraft::storage::RaftStateMachine::apply(&mut sm, (1..=3).map(blank))
                .await
                .expect("apply");
            log.purge(blank(3).log_id).await.expect("purge");
        }
        let (mut log, _sm) = crate::reopen(dir.path());
        let state = log.get_log_state().await.expect("state");
        assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(3));
        assert_eq!(state.last_log_id.map(|l| l.index), Some(5));
        let entries = log.try_get_log_entries(0..10).await.expect("read");
        let indexes: Vec<u64> = entries.iter().map(|e| e.log_id.index).collect();
        assert_eq!(indexes, vec![4, 5]);
    }
}
