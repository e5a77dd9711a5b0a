//! The Raft log in sled: tree `raft_log` (index → entry) and tree `raft_meta` (vote, committed,
//! last purged).
//!
//! Durability (what keeps Raft safe across crashes): `append` writes the batch and hands its
//! `LogFlushed` callback to the [`Flusher`] thread, which calls it only after a `flush` of the
//! whole database has made the batch durable. The flusher takes every batch waiting, flushes
//! once and acknowledges them all (group commit: concurrent appends share one flush, and the Raft
//! core never blocks on the disk). sled 0.34's flush ends in `sync_file_range`, not `fsync`:
//! see ARCHITECTURE.md for what that does and does not cover. `save_vote` returns only after the vote is flushed.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader};

use crate::codec;
use crate::types::{Entry, LogId, StorageError, StorageIOError, TypeConfig, Vote};

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const LAST_PURGED: &[u8] = b"last_purged";

#[derive(Clone, Debug)]
pub struct LogStore {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
    flusher: Flusher,
}

/// The group-commit thread (see the module docs).
#[derive(Clone, Debug)]
struct Flusher {
    waiting: std::sync::mpsc::Sender<LogFlushed<TypeConfig>>,
}

impl Flusher {
    fn start(db: sled::Db) -> std::io::Result<Self> {
        let (waiting, rx) = std::sync::mpsc::channel::<LogFlushed<TypeConfig>>();
        std::thread::Builder::new()
            .name("log-flusher".into())
            .spawn(move || {
                // Ends when every LogStore (and so every sender) is gone.
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    batch.extend(rx.try_iter());
                    let flushed = db.flush().map(drop).map_err(|e| e.to_string());
                    for callback in batch {
                        let result = flushed.clone().map_err(std::io::Error::other);
                        callback.log_io_completed(result);
                    }
                }
            })?;
        Ok(Self { waiting })
    }

    /// Acknowledges `callback` once everything written before this call is durable.
    fn after_next_flush(&self, callback: LogFlushed<TypeConfig>) {
        if let Err(std::sync::mpsc::SendError(callback)) = self.waiting.send(callback) {
            let gone = std::io::Error::other("the log flusher thread has stopped");
            callback.log_io_completed(Err(gone));
        }
    }
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn bound_key(b: Bound<&u64>) -> Bound<[u8; 8]> {
    match b {
        Bound::Included(i) => Bound::Included(index_key(*i)),
        Bound::Excluded(i) => Bound::Excluded(index_key(*i)),
        Bound::Unbounded => Bound::Unbounded,
    }
}

impl LogStore {
    pub(crate) fn open(db: &sled::Db) -> Result<Self, sled::Error> {
        Ok(Self {
            db: db.clone(),
            log: db.open_tree("raft_log")?,
            meta: db.open_tree("raft_meta")?,
            flusher: Flusher::start(db.clone()).map_err(sled::Error::Io)?,
        })
    }

    fn read_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, StorageError> {
        let Some(bytes) = self.meta.get(key).map_err(|e| StorageIOError::read(&e))? else {
            return Ok(None);
        };
        codec::decode(&bytes)
            .map(Some)
            .map_err(|e| StorageIOError::read(&e).into())
    }

    fn write_meta<T: serde::Serialize>(&self, key: &[u8], value: &T) -> Result<(), StorageError> {
        let bytes = codec::encode(value).map_err(|e| StorageIOError::write(&e))?;
        self.meta
            .insert(key, bytes)
            .map_err(|e| StorageIOError::write(&e))?;
        Ok(())
    }

    /// Makes everything written so far (log and state machine) durable.
    pub async fn flush(&self) -> Result<(), sled::Error> {
        self.db.flush_async().await.map(|_| ())
    }

    /// Removes the entries `range` yields and flushes.
    async fn remove_durably(&self, range: sled::Iter) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        for item in range {
            let (key, _) = item.map_err(|e| StorageIOError::write_logs(&e))?;
            batch.remove(key);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        self.flush()
            .await
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    /// The last log id removed by a purge, if any.
    pub(crate) fn last_purged(&self) -> Result<Option<LogId>, StorageError> {
        self.read_meta(LAST_PURGED)
    }

    /// True when this node has never taken part in a cluster: no vote, no log, nothing purged.
    pub fn is_pristine(&self) -> Result<bool, StorageError> {
        let vote: Option<Vote> = self.read_meta(VOTE)?;
        let purged: Option<LogId> = self.read_meta(LAST_PURGED)?;
        Ok(vote.is_none() && purged.is_none() && self.log.is_empty())
    }

    fn last_log_id(&self) -> Result<Option<LogId>, StorageError> {
        match self.log.last().map_err(|e| StorageIOError::read_logs(&e))? {
            Some((_, bytes)) => {
                let entry: Entry =
                    codec::decode(&bytes).map_err(|e| StorageIOError::read_logs(&e))?;
                Ok(Some(entry.log_id))
            }
            None => Ok(None),
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let range = (bound_key(range.start_bound()), bound_key(range.end_bound()));
        let mut entries = Vec::new();
        for item in self.log.range::<[u8; 8], _>(range) {
            let (_, bytes) = item.map_err(|e| StorageIOError::read_logs(&e))?;
            entries.push(codec::decode(&bytes).map_err(|e| StorageIOError::read_logs(&e))?);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.read_meta(LAST_PURGED)?;
        let last_log_id = self.last_log_id()?.or(last_purged_log_id);
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
        self.flush()
            .await
            .map_err(|e| StorageIOError::write_vote(&e))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.read_meta(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not flushed on purpose: a committed index that is lost in a crash is learned again
        // from the leader; persisting it only lets a restarted node apply its log sooner.
        self.write_meta(COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.read_meta::<Option<LogId>>(COMMITTED)?.flatten())
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
        let mut batch = sled::Batch::default();
        for entry in entries {
            let bytes = codec::encode(&entry).map_err(|e| StorageIOError::write_logs(&e))?;
            batch.insert(&index_key(entry.log_id.index), bytes);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        // Durable (and acknowledged) with the next group flush; openraft goes on meanwhile.
        self.flusher.after_next_flush(callback);
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(%log_id, "truncate log");
        self.remove_durably(self.log.range(index_key(log_id.index)..))
            .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(%log_id, "purge log");
        // The entries being purged are covered by a snapshot whose state the state machine has
        // applied; make that state durable before the entries that could rebuild it disappear.
        self.flush()
            .await
            .map_err(|e| StorageIOError::write_logs(&e))?;
        self.write_meta(LAST_PURGED, &log_id)?;
        self.remove_durably(self.log.range(..=index_key(log_id.index)))
            .await
    }
}
