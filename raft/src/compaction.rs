//! Log compaction by size as well as by count. openraft 0.9 builds a snapshot every
//! `snapshot_every` entries and keeps `keep_logs_after_snapshot` entries behind it, but chorus's
//! entries range from ~100 bytes (a vote) to 1 MiB (an audio chunk): 5,000 entries of uploads
//! are 5 GiB of log, which holds every chunk a second time beside sled's copy until a snapshot
//! lets it go, and which a follower that lost its data is sent entry by entry. This task, one
//! per node, watches openraft's metrics and
//!
//! - asks for a snapshot once the log since the last one holds `snapshot_every_mib` and the
//!   audio mover has copied every chunk into sled (the build refers to the audio by key, so its
//!   cost follows the metadata — but it waits for that copy and syncs the audio: asked for in
//!   the middle of a bulk upload it made the upload ~50 % slower, `bench/music.py --mib 200`
//!   5.3–5.6 s against 3.5–3.6 s), or, whatever the mover has left, once the log holds
//!   [`FORCE_FACTOR`] times that;
//! - after each snapshot, purges the log behind it down to `keep_log_mib_after_snapshot` or half
//!   the audio the state holds, whichever is more (never more than openraft keeps by count). A
//!   follower further behind than that gets the snapshot instead, which carries the same bytes
//!   about twice as fast as the log (one sequential write and no per-entry work on the
//!   follower; `bench/catch_up.py`, bench/RESULTS.md) — and a snapshot carries the state, not
//!   its history. Keeping up to half the state's size means a follower that is a little behind
//!   a large library is still sent the log, not the library (CockroachDB truncates its Raft log
//!   by the same comparison with the range's size).
//!
//! openraft still decides what is safe: a purge waits until no replication stream is reading
//! what it removes, and a snapshot asked for while one is being built is ignored.

use std::time::{Duration, Instant};

use storage::{CHUNK_SIZE, LogStore, StateReader};

use crate::Raft;

/// How often, at most, the log is measured while entries are being applied.
const CHECK_EVERY: Duration = Duration::from_millis(100);

/// How often the log is measured when nothing is being applied (the mover may have finished
/// its copy meanwhile).
const CHECK_IDLE_EVERY: Duration = Duration::from_secs(1);

/// A log this many times `snapshot_every_mib` since the last snapshot gets one even while the
/// mover is copying (uploads that never pause).
const FORCE_FACTOR: u64 = 8;

/// A snapshot asked for that has not arrived by then (the build failed, or the node was busy
/// installing one) is asked for again.
const ASK_AGAIN_AFTER: Duration = Duration::from_secs(10);

/// The size limits, in bytes (see the module docs).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SizePolicy {
    /// Ask for a snapshot once the log since the last one takes this much; 0: never by size.
    pub snapshot_every: u64,
    /// The least the log behind a snapshot is cut down to.
    pub keep_at_least: u64,
}

impl SizePolicy {
    /// How many bytes of log to keep behind a snapshot when the state holds `audio` bytes of
    /// audio.
    fn keep(&self, audio: u64) -> u64 {
        self.keep_at_least.max(audio / 2)
    }
}

pub(crate) fn spawn(raft: Raft, log: LogStore, reader: StateReader, policy: SizePolicy) {
    tokio::spawn(run(raft, log, reader, policy));
}

async fn run(raft: Raft, log: LogStore, reader: StateReader, policy: SizePolicy) {
    let mut metrics = raft.metrics();
    // The snapshot index when a snapshot was last asked for, and when.
    let mut asked: Option<(Option<u64>, Instant)> = None;
    // The snapshot whose purge was decided.
    let mut purged_behind: Option<u64> = None;
    loop {
        let (snapshot, purged, applied) = {
            let m = metrics.borrow_and_update();
            if m.running_state.is_err() {
                return;
            }
            let index = |l: Option<openraft::LogId<u64>>| l.map(|l| l.index);
            (index(m.snapshot), index(m.purged), index(m.last_applied))
        };
        let since_snapshot = snapshot.map_or(0, |s| s + 1);
        if let Some(applied) = applied
            && policy.snapshot_every > 0
        {
            let bytes = log.bytes(since_snapshot, applied + 1);
            let waiting =
                asked.is_some_and(|(at, when)| at == snapshot && when.elapsed() < ASK_AGAIN_AFTER);
            let due = bytes >= policy.snapshot_every.saturating_mul(FORCE_FACTOR)
                || (bytes >= policy.snapshot_every && reader.audio_chunks_to_copy() == 0);
            if due && !waiting {
                tracing::info!(
                    log_mib = bytes >> 20,
                    "asking for a snapshot: the log since the last one is large"
                );
                if raft.trigger().snapshot().await.is_err() {
                    return; // the core stopped
                }
                asked = Some((snapshot, Instant::now()));
            }
        }
        if let Some(s) = snapshot
            && purged_behind != Some(s)
        {
            purged_behind = Some(s);
            let audio = reader.read(|state| state.tracks.chunk_count()) * CHUNK_SIZE as u64;
            let first_kept = log.first_within(s + 1, policy.keep(audio));
            let oldest = purged.map_or(0, |p| p + 1);
            if first_kept > oldest {
                tracing::info!(
                    snapshot = s,
                    upto = first_kept - 1,
                    kept_mib = log.bytes(first_kept, s + 1) >> 20,
                    "purging the log behind the snapshot by size"
                );
                if raft.trigger().purge_log(first_kept - 1).await.is_err() {
                    return;
                }
            }
        }
        match tokio::time::timeout(CHECK_IDLE_EVERY, metrics.changed()).await {
            Ok(Err(_)) => return, // the core stopped
            Ok(Ok(())) => tokio::time::sleep(CHECK_EVERY).await,
            Err(_idle) => {}
        }
    }
}
