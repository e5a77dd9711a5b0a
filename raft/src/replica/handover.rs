//! Leadership handed over by a stopping leader, so that a rolling restart does not cost an
//! election timeout per node. openraft 0.9 has no leader transfer; this is the Raft thesis's
//! (§3.10) done from the outside:
//!
//! 1. the leader refuses new writes and read-index requests (`handing_over`): callers retry
//!    with the next leader;
//! 2. it picks the voter whose log matches its own furthest and waits (briefly) until that
//!    follower has every entry;
//! 3. it stops heartbeating and campaigning, and waits out the followers' leader lease (two
//!    heartbeats: patch 5 in vendor/README.md), during which they still refuse other candidates;
//! 4. it asks that follower to campaign now (`PeerRequest::CampaignNow`); with the longest log
//!    and the lease run out, it wins in one round trip.
//!
//! Every step is bounded; when one fails the node simply stops, and the others elect a leader
//! as after a crash.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::Replica;
use crate::protocol::{ForwardError, PeerRequest, PeerResponse};

/// How long the chosen follower may take to receive the last entries.
const CATCH_UP: Duration = Duration::from_secs(1);
/// How long the handover waits for a new leader after asking for the campaign.
const ELECTION: Duration = Duration::from_secs(1);

impl Replica {
    pub(crate) fn handing_over(&self) -> bool {
        self.inner.handing_over.load(Ordering::Relaxed)
    }

    /// On a follower asked by its stopping leader: stand for election now.
    pub(crate) async fn campaign_now(&self) -> Result<(), ForwardError> {
        tracing::info!("the leader is stopping and asked this node to campaign");
        self.inner
            .raft
            .trigger()
            .elect()
            .await
            .map_err(|e| ForwardError::Failed(e.to_string()))
    }

    /// If this node leads, hands leadership to its most caught-up follower before it stops.
    /// Returns the new leader's id, or `None` when this node was not leading or the handover
    /// did not finish in time (the cluster then elects one as after a crash).
    pub async fn hand_over_leadership(&self) -> Option<u64> {
        let raft = &self.inner.raft;
        let metrics = raft.metrics().borrow().clone();
        let others = metrics
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v != self.inner.id);
        // A lone voter has no one to hand over to: it keeps serving until it stops.
        if metrics.current_leader != Some(self.inner.id) || !others {
            return None;
        }
        self.inner.handing_over.store(true, Ordering::Relaxed);
        let started = Instant::now();
        let target = self.caught_up_follower().await?;
        let runtime = raft.runtime_config();
        runtime.heartbeat(false);
        runtime.elect(false);
        let lease = Duration::from_millis(raft.config().heartbeat_interval * 2);
        tokio::time::sleep(lease + Duration::from_millis(20)).await;
        let asked = self
            .inner
            .transport
            .call(target, &PeerRequest::CampaignNow, ELECTION)
            .await;
        if !matches!(asked, Ok(PeerResponse::Membership(Ok(())))) {
            tracing::warn!(target, answer = ?asked, "could not hand leadership over");
            return None;
        }
        let mut watch = raft.metrics();
        let moved = tokio::time::timeout(
            ELECTION,
            watch.wait_for(|m| m.current_leader.is_some_and(|l| l != self.inner.id)),
        )
        .await;
        match moved {
            Ok(Ok(m)) => {
                let leader = m.current_leader;
                tracing::info!(?leader, took = ?started.elapsed(), "leadership handed over");
                leader
            }
            _ => {
                tracing::warn!(target, "no new leader after the handover; stopping anyway");
                None
            }
        }
    }

    /// The voter whose log matches the leader's furthest, once it has everything the leader
    /// has (or `CATCH_UP` has passed: the best one then).
    async fn caught_up_follower(&self) -> Option<u64> {
        let deadline = Instant::now() + CATCH_UP;
        let mut watch = self.inner.raft.metrics();
        loop {
            let (best, done) = {
                let m = watch.borrow_and_update();
                let last = m.last_log_index;
                let voters: Vec<u64> = m
                    .membership_config
                    .membership()
                    .voter_ids()
                    .filter(|&v| v != self.inner.id)
                    .collect();
                let matched = |id: &u64| {
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(id).cloned().flatten())
                        .map(|l| l.index)
                };
                let best = voters.iter().copied().max_by_key(|id| matched(id));
                let done = best.is_some_and(|b| matched(&b) >= last);
                (best, done)
            };
            if done || Instant::now() >= deadline {
                return best;
            }
            let _ = tokio::time::timeout_at(deadline, watch.changed()).await;
        }
    }
}
