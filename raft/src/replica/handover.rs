//! Leadership handed over: by a stopping leader, so that a rolling restart does not cost an
//! election timeout per node, and by a leader on slow links to a better-placed voter
//! (`placement`). openraft 0.9 has no leader transfer; this is the Raft thesis's (§3.10) done
//! from the outside:
//!
//! 1. the leader refuses new writes and read-index requests (`handing_over`): callers retry
//!    with the next leader;
//! 2. it picks the voter (for a stop: the one whose log matches its own furthest) and waits
//!    (briefly) until that follower has every entry;
//! 3. it stops heartbeating and campaigning, and waits out the followers' leader lease (two
//!    heartbeats: patch 5 in vendor/README.md, plus the time its last heartbeats spend on the
//!    slowest link), during which they still refuse other candidates;
//! 4. it asks that follower to campaign now (`PeerRequest::CampaignNow`); with the longest log
//!    and the lease run out, it wins in one round trip.
//!
//! Every step is bounded. When one fails a stopping node simply stops, and the others elect a
//! leader as after a crash; a node that stays resumes leading.

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

    /// True once this node began stopping (`hand_over_leadership`).
    pub(crate) fn stopping(&self) -> bool {
        self.inner.stopping.load(Ordering::Relaxed)
    }

    /// On a follower asked by its leader: stand for election now.
    pub(crate) async fn campaign_now(&self) -> Result<(), ForwardError> {
        tracing::info!("the leader asked this node to campaign");
        self.inner
            .raft
            .trigger()
            .elect()
            .await
            .map_err(|e| ForwardError::Failed(e.to_string()))
    }

    /// Called by a node about to stop: if it leads, hands leadership to its most caught-up
    /// follower. Returns the new leader's id, or `None` when this node was not leading or the
    /// handover did not finish in time (the cluster then elects one as after a crash).
    pub async fn hand_over_leadership(&self) -> Option<u64> {
        self.inner.stopping.store(true, Ordering::Relaxed);
        let _alone = self.inner.handover.lock().await;
        self.hand_over(None, || true).await
    }

    /// Hands leadership to `to` and goes on as a follower; if that does not work out, goes on
    /// leading. Returns the new leader's id.
    pub(crate) async fn move_leadership(&self, to: u64) -> Option<u64> {
        let _alone = self.inner.handover.lock().await;
        if self.stopping() {
            return None;
        }
        // The links may have recovered while `to` caught up: then this node stays.
        let moved = self
            .hand_over(Some(to), || self.better_placed_voter() == Some(to))
            .await;
        let runtime = self.inner.raft.runtime_config();
        runtime.heartbeat(true);
        runtime.elect(moved.is_none());
        self.inner.handing_over.store(false, Ordering::Relaxed);
        moved
    }

    /// Steps 1–4 of the module's docs, to `to` or else the most caught-up voter, unless
    /// `still_wanted` says otherwise once the target has caught up; leaves this node refusing
    /// work, and unless it gave up there, not heartbeating and not campaigning.
    async fn hand_over(&self, to: Option<u64>, still_wanted: impl Fn() -> bool) -> Option<u64> {
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
        // Over slow links the last entries take a few round trips to arrive everywhere, and
        // the last heartbeats half of one.
        let slowest = self.inner.transport.link_rtts().into_values().max();
        let slowest = slowest.unwrap_or_default();
        let target = self.caught_up_follower(to, CATCH_UP + slowest * 4).await?;
        if !still_wanted() {
            tracing::info!(target, "no longer handing over");
            return None;
        }
        let runtime = raft.runtime_config();
        runtime.heartbeat(false);
        runtime.elect(false);
        let lease = Duration::from_millis(raft.config().heartbeat_interval * 2);
        let in_flight = slowest / 2;
        let election = ELECTION + in_flight * 2;
        tokio::time::sleep(lease + in_flight + Duration::from_millis(20)).await;
        let asked = self
            .inner
            .transport
            .call(target, &PeerRequest::CampaignNow, election)
            .await;
        if !matches!(asked, Ok(PeerResponse::Membership(Ok(())))) {
            tracing::warn!(target, answer = ?asked, "could not hand leadership over");
            return None;
        }
        let mut watch = raft.metrics();
        let moved = tokio::time::timeout(
            election,
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
                tracing::warn!(target, "no new leader after the handover");
                None
            }
        }
    }

    /// `to` once it has everything this leader has; with no `to`, the voter whose log matches
    /// the leader's furthest, once it has everything (or `wait` has passed: the best one then,
    /// since this node is stopping anyway).
    async fn caught_up_follower(&self, to: Option<u64>, wait: Duration) -> Option<u64> {
        let deadline = Instant::now() + wait;
        let mut watch = self.inner.raft.metrics();
        loop {
            let (best, done, matched_best, last) = {
                let m = watch.borrow_and_update();
                let last = m.last_log_index;
                let voters: Vec<u64> = m
                    .membership_config
                    .membership()
                    .voter_ids()
                    .filter(|&v| v != self.inner.id && to.is_none_or(|t| t == v))
                    .collect();
                let matched = |id: &u64| {
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(id).cloned().flatten())
                        .map(|l| l.index)
                };
                let best = voters.iter().copied().max_by_key(|id| matched(id));
                let done = best.is_some_and(|b| matched(&b) >= last);
                (best, done, best.and_then(|b| matched(&b)), last)
            };
            if done {
                return best;
            }
            if Instant::now() >= deadline {
                tracing::warn!(?best, ?matched_best, ?last, "no voter caught up in time");
                return if to.is_none() { best } else { None };
            }
            let _ = tokio::time::timeout_at(deadline, watch.changed()).await;
        }
    }
}
