//! Everything chorus keeps on disk.
//!
//! Layout:
//! - [`types`]: the openraft type configuration ([`TypeConfig`]) and the node address record.
//! - [`command`]: the replicated data model: [`Request`] (a [`Command`] plus its dedupe key
//!   and timestamp) and [`Response`].
//! - [`state`]: the in-memory domain state and its deterministic `apply`, one module per domain.
//! - [`log_store`]: the Raft log ([`LogStore`]): entries in segment files (`segments`), vote and
//!   purge point in sled, group commit with fdatasync.
//! - [`state_machine`]: the sled-backed state machine ([`StateMachineStore`]) and snapshots.
//! - [`codec`]: the one binary encoding used for everything stored (bincode 2).
//! - `durable`: sled's writes made to survive a power loss where chorus relies on them.
//!
//! The log's metadata and the state machine share one `sled::Db`, the audio chunks have one of
//! their own (`audio/`); the log's entries are files.

// openraft's storage traits fix `StorageError` (large) as the error type of every method.
#![allow(clippy::result_large_err)]

mod audio_mover;
pub mod codec;
pub mod command;
mod durable;
pub mod log_store;
mod segments;
mod sm_writer;
pub mod snapshot;
pub mod state;
pub mod state_machine;
pub mod types;

use std::path::Path;

pub use command::{
    Command, CommandError, ErrorKind, Outcome, PlaylistCommand, QueueCommand, ReadBack,
    ReadBackValue, Request, Response, TrackCommand, UserCommand,
};
pub use log_store::LogStore;
pub use state::queue::{PlayedTrack, QueuedTrack};
pub use state::tracks::{AudioInfo, CHUNK_SIZE, Track, TrackMeta, Upload};
pub use state::users::User;
pub use state_machine::{ApplyWaitError, StateMachineStore, StateReader};
pub use types::{ChorusNode, Entry, TypeConfig};

/// Errors opening the store.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open the sled database in {path}: {source}")]
    Sled { path: String, source: sled::Error },
    #[error("cannot prepare the snapshot directory {path}: {source}")]
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

/// Opens (or creates) the store in `dir`: the Raft log and the state machine.
pub fn open(dir: &Path) -> Result<(LogStore, StateMachineStore), OpenError> {
    // sled's default cache target is 1 GiB. It is only a hint: measured with sled 0.34.7, values
    // written or read stay resident whatever the setting, so a node's RSS grows with the audio
    // it has stored or streamed since it started (see ARCHITECTURE.md). The state's trees are
    // small and also held in memory (`state`), the audio is what streaming reads.
    let db_path = dir.join("db");
    let db = open_sled(&db_path, 32)?;
    let audio_db = open_sled(&dir.join("audio"), 64)?;
    durable::move_audio_out(&db, &audio_db).map_err(|e| OpenError::Corrupt {
        path: dir.display().to_string(),
        message: format!("move the audio into its own database: {e}"),
    })?;
    let log = LogStore::open(&db, &dir.join("log"))?;
    let sm = StateMachineStore::open(db.clone(), audio_db, &log, &dir.join("snapshots"))?;
    let purged = log.last_purged().map_err(|e| OpenError::Corrupt {
        path: db_path.display().to_string(),
        message: e.to_string(),
    })?;
    sm.repair_if_behind(purged)?;
    sm.repair_audio(&log)?;
    Ok((log, sm))
}

/// One sled database. The audio has one of its own: sled 0.34 keeps a leaf of values larger
/// than a quarter segment as one blob file, and rewrites live pages while it cleans the
/// segments that other writes fill. With the audio beside the state, a vote-only load made
/// each node rewrite the 10 MiB leaf of a track's chunks, which the kernel wrote out in bursts
/// that stalled every node's log fdatasync on a shared disk (bench/RESULTS.md, eleventh
/// session).
fn open_sled(path: &Path, cache_mib: u64) -> Result<durable::DurableSled, OpenError> {
    let db = sled::Config::new()
        .path(path)
        // sled's own periodic flush is not what makes writes durable (LogStore flushes
        // explicitly before acknowledging, and see `durable`); a background safety net only.
        .flush_every_ms(Some(1000))
        .cache_capacity(cache_mib * 1024 * 1024)
        .open()
        .map_err(|source| OpenError::Sled {
            path: path.display().to_string(),
            source,
        })?;
    Ok(durable::DurableSled::new(db, path))
}
