//! What the Raft layer counts for `GET /metrics` (one set per process, as in
//! `storage::metrics`). Gauges of the Raft state (term, leader, indexes) are read from the
//! replica at scrape time instead; these are the events between scrapes.

use std::sync::LazyLock;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
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
    /// Times this node, leading on slow links, handed leadership to a better-placed voter.
    pub leadership_moves: Counter,
    /// Audio chunks this node sent in Raft messages (AppendEntries, forwarded writes), by how.
    pub audio_sent: Family<AudioLabels, Counter>,
}

/// How an audio chunk went to a peer in a Raft message (`crate::by_hash`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum AudioSent {
    /// Without its bytes: the peer had the chunk (pushed ahead of the write).
    ByHash,
    /// With its bytes: the peer lacked the chunk, or had lacked one lately.
    Inline,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AudioLabels {
    how: AudioSent,
}

pub static METRICS: LazyLock<RaftMetrics> = LazyLock::new(|| RaftMetrics {
    proposals: Counter::default(),
    // 1 to 1024 writes per entry.
    proposal_writes: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
    leader_changes: Counter::default(),
    leadership_moves: Counter::default(),
    audio_sent: Family::default(),
});

/// Counts one audio chunk sent to a peer `how`.
pub(crate) fn audio_sent(how: AudioSent) {
    audio_sent_n(how, 1);
}

/// Counts `n` audio chunks sent to a peer `how`.
pub(crate) fn audio_sent_n(how: AudioSent, n: usize) {
    if n > 0 {
        METRICS
            .audio_sent
            .get_or_create(&AudioLabels { how })
            .inc_by(n as u64);
    }
}

/// Records a proposed entry carrying `writes` client writes.
pub(crate) fn proposed(writes: usize) {
    METRICS.proposals.inc();
    METRICS.proposal_writes.observe(writes as f64);
}

/// Counts one move of leadership off this node's slow links (`replica::placement`).
pub(crate) fn leadership_moved() {
    METRICS.leadership_moves.inc();
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
    registry.register(
        "chorus_raft_leadership_moves",
        "Times this node, leading, handed leadership to a voter nearer a majority (its own links were slow)",
        m.leadership_moves.clone(),
    );
    registry.register(
        "chorus_raft_audio_chunks_sent",
        "Audio chunks sent to peers in Raft messages: ByHash (the peer held the chunk, pushed ahead of the write) or Inline (with the bytes)",
        m.audio_sent.clone(),
    );
}
