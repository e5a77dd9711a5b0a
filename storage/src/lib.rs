//! Everything chorus keeps on disk.
//!
//! Layout:
//! - [`types`]: the openraft type configuration ([`TypeConfig`]) and the node address record.
//! - [`command`]: the replicated data model: [`Request`] (a [`Command`] plus its dedupe key
//!   and timestamp) and [`Applied`].
//! - [`state`]: the in-memory domain state and its deterministic `apply`, one module per domain.
//! - [`log_store`]: the Raft log ([`LogStore`]): entries in segment files (`segments`), vote and
//!   purge point in sled, group commit with fdatasync.
//! - [`state_machine`]: the sled-backed state machine ([`StateMachineStore`]) and snapshots.
//! - [`change_feed`]: what each applied entry visibly changed, for live event streams.
//! - [`chunks`]: the audio, as content-addressed files ([`ChunkStore`]).
//! - [`backup`]: the backup archive: prepared on a running node, checked, restored offline.
//! - [`codec`]: the one binary encoding used for everything stored (bincode 2).
//! - `durable`: sled's writes made to survive a power loss where chorus relies on them.
//!
//! On disk under a node's data directory: `db/` (sled: the log's metadata and the state
//! machine), `log/` (the log's entries), `snapshots/`, `chunks/` (the audio).

// openraft's storage traits fix `StorageError` (large) as the error type of every method.
#![allow(clippy::result_large_err)]

mod applied_waiters;
pub mod backup;
pub mod change_feed;
pub mod chunks;
pub mod codec;
pub mod command;
mod durable;
pub mod log_store;
pub mod metrics;
mod page_cache;
mod segments;
mod sm_writer;
pub mod snapshot;
pub mod state;
pub mod state_machine;
pub mod types;

use std::path::Path;

pub use change_feed::{AppliedChanges, FeedItem, StateChange};
pub use chunks::{ChunkError, ChunkHash, ChunkStore};
pub use command::{
    Applied, Command, CommandError, ErrorKind, Outcome, PlaylistCommand, QueueCommand, ReadBack,
    ReadBackValue, Request, TrackCommand, UserCommand,
};
pub use log_store::LogStore;
pub use state::queue::{PlayedTrack, QueuedTrack};
pub use state::tracks::{AudioInfo, CHUNK_SIZE, Track, TrackMeta, Upload};
pub use state::users::User;
pub use state_machine::{
    ApplyWaitError, StateMachineStore, StateReader, chunks_named_by_snapshot, chunks_named_in,
};
pub use types::{ChorusNode, Entry, TypeConfig};

/// Errors opening the store.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open the sled database in {path}: {source}")]
    Sled { path: String, source: sled::Error },
    #[error("cannot prepare {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("the state machine in {path} is unreadable: {message}")]
    Corrupt { path: String, message: String },
    #[error("cannot open the Raft log in {path}: {source}")]
    Log {
        path: String,
        source: std::io::Error,
    },
}

/// Opens the store in `dir` again after this process dropped it (tests only: a node never
/// reopens its store in-process). sled finishes some writes on its own background threads, which
/// hold the database's lock file for a moment after the last handle is gone, so an immediate
/// reopen can find it locked (sled's own tests block on the lock for the same reason); this
/// waits for the lock, up to 10 s, and fails on anything else.
#[cfg(test)]
pub(crate) fn reopen(dir: &Path) -> (LogStore, StateMachineStore) {
    use std::time::{Duration, Instant};
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match open(dir) {
            Ok(store) => return store,
            Err(OpenError::Sled {
                source: sled::Error::Io(e),
                ..
            }) if e.to_string().contains("could not acquire lock") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("reopen {}: {e}", dir.display()),
        }
    }
}

/// The store's directories, created if missing, and every name on the way to them durable.
///
/// A name is durable only once the directory holding it is synced: a log segment fsynced inside
/// a `log/` whose own entry in the data directory was never synced is lost with it on power
/// loss. Syncing the data directory and its
/// parent once at start covers a store created now as well as one a crash left half-named.
fn name_directories_durably(dir: &Path) -> std::io::Result<()> {
    for sub in ["chunks", "log", "snapshots"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    // sled made `db/` and its files; it does not sync the directories that name them.
    chunks::sync_dir(&dir.join("db"))?;
    chunks::sync_dir(dir)?;
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => chunks::sync_dir(parent),
        _ => Ok(()),
    }
}

/// Opens (or creates) the store in `dir`: the Raft log, the state machine and the chunk store.
pub fn open(dir: &Path) -> Result<(LogStore, StateMachineStore), OpenError> {
    let db_path = dir.join("db");
    let db = sled::Config::new()
        .path(&db_path)
        // sled's own periodic flush is not what makes writes durable (LogStore flushes
        // explicitly before acknowledging, and see `durable`); a background safety net only.
        .flush_every_ms(Some(1000))
        // The state is held in memory (`state`) and read from sled only at start; the cache
        // serves the log's metadata and the state machine's writes.
        .cache_capacity(32 * 1024 * 1024)
        .open()
        .map_err(|source| OpenError::Sled {
            path: db_path.display().to_string(),
            source,
        })?;
    let db = durable::DurableSled::new(db, &db_path);
    name_directories_durably(dir).map_err(|source| OpenError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let chunks_dir = dir.join("chunks");
    let chunks = ChunkStore::open(&chunks_dir).map_err(|source| OpenError::Io {
        path: chunks_dir.display().to_string(),
        source,
    })?;
    let log = LogStore::open(&db, &dir.join("log"))?;
    let sm = StateMachineStore::open(db.clone(), chunks, &dir.join("snapshots"))?;
    let purged = log.last_purged().map_err(|e| OpenError::Corrupt {
        path: db_path.display().to_string(),
        message: e.to_string(),
    })?;
    sm.repair_if_behind(purged)?;
    Ok((log, sm))
}
