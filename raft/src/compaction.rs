//! Log compaction by size as well as by count. openraft 0.9 builds a snapshot every
//! `snapshot_every` entries and keeps `keep_logs_after_snapshot` entries behind it, but chorus's
//! entries range from ~100 bytes (a vote) to 1 MiB (an audio chunk): 5,000 entries of uploads
//! are 5 GiB of log. This task, one per node, watches openraft's metrics and
//!
//! - asks for a snapshot once the log since the last one holds `snapshot_every_mib` (a build
//!   costs the metadata, not the library: a snapshot names audio chunks by hash);
//! - after each snapshot, purges the log behind it down to `keep_log_mib_after_snapshot` (never
//!   more than openraft keeps by count). A follower further behind than that gets the snapshot
//!   and fetches only the chunks it lacks, so it never receives audio it already has.
//!
//! openraft still decides what is safe: a purge waits until no replication stream is reading
//! what it removes, and a snapshot asked for while one is being built is ignored.

use std::time::{Duration, Instant};

use storage::LogStore;

use crate::Raft;

/// How often, at most, the log is measured while entries are being applied.
const CHECK_EVERY: Duration = Duration::from_millis(100);

/// How often the log is measured when nothing is being applied (a snapshot asked for may
/// not have come).
const CHECK_IDLE_EVERY: Duration = Duration::from_secs(1);

/// A snapshot asked for that has not arrived by then (the build failed, or the node was busy
/// installing one) is asked for again.
const ASK_AGAIN_AFTER: Duration = Duration::from_secs(10);

/// The size limits, in bytes (see the module docs).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SizePolicy {
    /// Ask for a snapshot once the log since the last one takes this much; 0: never by size.
    pub snapshot_every: u64,
    /// The log behind a snapshot is cut down to this many bytes.
    pub keep: u64,
}

pub(crate) fn spawn(raft: Raft, log: LogStore, policy: SizePolicy) {
    tokio::spawn(run(raft, log, policy));
}

async fn run(raft: Raft, log: LogStore, policy: SizePolicy) {
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
            if bytes >= policy.snapshot_every && !waiting {
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
            let first_kept = log.first_within(s + 1, policy.keep);
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
