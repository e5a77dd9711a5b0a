//! Opening the state machine, and repairing what a crash left: leftovers of interrupted builds
//! and transfers removed, an interrupted install redone, the state loaded from the `sm` tree,
//! chunk files nothing names swept; and a state machine behind the purged log re-installed from
//! `current.snap` (or the node refusing to start, saying what to do).

use std::fs::{self, File};
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};

use super::{AppliedState, CURRENT, INSTALLING, Inner, M_APPLIED, M_MEMBERSHIP, StateMachineStore};
use crate::OpenError;
use crate::applied_waiters::AppliedWaiters;
use crate::change_feed::ChangeFeed;
use crate::chunks::ChunkStore;
use crate::codec;
use crate::durable::DurableSled;
use crate::sm_writer::SmWriter;
use crate::snapshot::SnapshotReader;
use crate::state::State;
use crate::types::LogId;

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
        // Leftovers of builds, transfers or backups that a crash interrupted.
        for entry in fs::read_dir(dir).map_err(io_err)? {
            let path = entry.map_err(io_err)?.path();
            if path.is_dir() {
                fs::remove_dir_all(&path).map_err(io_err)?;
            } else if path.file_name().is_some_and(|n| n != CURRENT) {
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
            applied: RwLock::new(AppliedState::default()),
            dir: dir.to_path_buf(),
            receiving: Mutex::new(None),
            snapshot_lock: tokio::sync::Mutex::new(()),
            file_seq: AtomicU64::new(0),
            waiters: AppliedWaiters::default(),
            feed: ChangeFeed::default(),
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
            let mut applied = AppliedState {
                state: State::load(&inner.sm).map_err(|e| corrupt(e.to_string()))?,
                ..AppliedState::default()
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
}
