//! What the Raft layer counts for `GET /metrics` (one set per process, as in
//! `storage::metrics`). Gauges of the Raft state (term, leader, indexes) are read from the
//! replica at scrape time instead; these are the events between scrapes.

use std::sync::LazyLock;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::Raft;

pub struct RaftMetrics {
    /// Log entries this node proposed as leader (a batch of writes is one).
    pub proposals: Counter,
    /// Client writes per proposed entry.
    pub proposal_writes: Histogram,
    /// Times the leader this node knows changed (to another node or to none).
    pub leader_changes: Counter,
}

pub static METRICS: LazyLock<RaftMetrics> = LazyLock::new(|| RaftMetrics {
    proposals: Counter::default(),
    // 1 to 1024 writes per entry.
    proposal_writes: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
    leader_changes: Counter::default(),
});

/// Records a proposed entry carrying `writes` client writes.
pub(crate) fn proposed(writes: usize) {
    METRICS.proposals.inc();
    METRICS.proposal_writes.observe(writes as f64);
}

/// Counts leader changes as this node sees them, until Raft stops.
pub(crate) fn watch_leader_changes(raft: &Raft) {
    let mut metrics = raft.server_metrics();
    tokio::spawn(async move {
        let mut leader = metrics.borrow_and_update().current_leader;
        while metrics.changed().await.is_ok() {
            let now = metrics.borrow_and_update().current_leader;
            if now != leader {
                leader = now;
                METRICS.leader_changes.inc();
            }
        }
    });
}

pub fn register(registry: &mut Registry) {
    let m = &*METRICS;
    registry.register(
        "chorus_raft_proposals",
        "Log entries this node proposed as leader (a batch of client writes is one entry)",
        m.proposals.clone(),
    );
    registry.register(
        "chorus_raft_proposal_writes",
        "Client writes carried by one proposed log entry (the batch size)",
        m.proposal_writes.clone(),
    );
    registry.register(
        "chorus_raft_leader_changes",
        "Times the leader known to this node changed",
        m.leader_changes.clone(),
    );
}
