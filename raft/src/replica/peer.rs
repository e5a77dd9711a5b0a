//! The peer server: what other nodes (and this node's own `route`, when it leads) ask of this
//! one over the transport.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use openraft::ChangeMembers;
use openraft::error::{CheckIsLeaderError, RaftError};
use storage::ChorusNode;

use super::{Replica, forward_error};
use crate::by_hash;
use crate::protocol::{ChunkBytes, ForwardError, PeerRequest, PeerResponse, PeerStatus};

/// A learner that makes no progress this long is given up on (not answering at all, or stuck).
const CATCH_UP_STALL: Duration = Duration::from_secs(15);
/// How often a joining learner's progress is checked.
const CATCH_UP_POLL: Duration = Duration::from_millis(250);

/// Where a node named in an add request stands.
enum Joining {
    New,
    AlreadyLearner,
    AlreadyVoter,
}

impl Replica {
    /// Serves a request from a peer (or from this node's own `route` when it is the leader).
    pub(crate) async fn handle_peer(&self, req: PeerRequest) -> PeerResponse {
        let raft = &self.inner.raft;
        match req {
            PeerRequest::AppendEntries(mut r) => {
                if let Err(lacking) =
                    by_hash::fill_entries(&self.chunk_store(), &mut r.entries).await
                {
                    return PeerResponse::LacksAudio(lacking);
                }
                let carries_entries = !r.entries.is_empty();
                if carries_entries {
                    tracing::trace!(target: "chorus::stages", stage = "follower.append");
                }
                let answer = raft.append_entries(r).await;
                if carries_entries {
                    tracing::trace!(target: "chorus::stages", stage = "follower.acked");
                }
                PeerResponse::AppendEntries(answer)
            }
            PeerRequest::Vote(r) => PeerResponse::Vote(raft.vote(r).await),
            PeerRequest::SnapshotPart(part) => {
                PeerResponse::SnapshotPart(self.inner.incoming.part(raft, part).await)
            }
            PeerRequest::SnapshotDone(done) => {
                PeerResponse::SnapshotDone(self.inner.incoming.done(self, done).await)
            }
            PeerRequest::GetChunk(hash) => {
                // Unchecked here: the asking node checks the bytes against the hash itself.
                let store = self.inner.reader.chunk_store().clone();
                let read =
                    crate::chunk_fetch::on_blocking_pool(move || store.read_unchecked(&hash)).await;
                PeerResponse::Chunk(read.map(ChunkBytes))
            }
            // A leader handing over refuses new work, so that nothing it sends refreshes the
            // followers' leases; the sender retries with the next leader.
            PeerRequest::ClientWrites(writes) if self.handing_over() => PeerResponse::ClientWrites(
                writes
                    .iter()
                    .map(|_| Err(ForwardError::NotLeader))
                    .collect(),
            ),
            PeerRequest::ReadIndex if self.handing_over() => {
                PeerResponse::ReadIndex(Err(ForwardError::NotLeader))
            }
            PeerRequest::CampaignNow => PeerResponse::Membership(self.campaign_now().await),
            PeerRequest::ClientWrites(mut writes) => {
                if let Err(lacking) = by_hash::fill_writes(&self.chunk_store(), &mut writes).await {
                    return PeerResponse::LacksAudio(lacking);
                }
                // Queued to the proposer together, so they normally share one log entry.
                let proposals = writes
                    .into_iter()
                    .map(|(r, read_back)| self.propose_write(r, read_back));
                PeerResponse::ClientWrites(futures_util::future::join_all(proposals).await)
            }
            PeerRequest::ReadIndex => PeerResponse::ReadIndex(self.read_index().await),
            PeerRequest::Status => PeerResponse::Status(PeerStatus {
                node_id: self.inner.id,
                pristine: self.is_pristine(),
                applied_index: self
                    .inner
                    .raft
                    .metrics()
                    .borrow()
                    .last_applied
                    .map(|l| l.index),
                link_rtt_us: self
                    .inner
                    .transport
                    .link_rtts()
                    .into_iter()
                    .map(|(peer, rtt)| (peer, rtt.as_micros() as u64))
                    .collect(),
            }),
            PeerRequest::AddMember { id, node } => {
                PeerResponse::Membership(self.add_member_here(id, node).await)
            }
            PeerRequest::RemoveMember { id } => {
                PeerResponse::Membership(self.remove_member_here(id).await)
            }
        }
    }

    /// The index a linearizable read must wait for: this node's whole log, once a quorum has
    /// confirmed it still leads. Not openraft's read log id alone: that is the commit index
    /// this node knows, and a leader that restarts in its own term (openraft 0.9 resumes
    /// leading when its saved vote is its own, committed) knows only what it had applied,
    /// since the commit index is not saved (vendor/README.md). Reads served at that index
    /// returned values older than acknowledged writes (jepsen-style, 32 leader kills). Every
    /// committed entry is in the leader's log, so waiting for all of it to apply is safe; it
    /// costs a read the writes still in flight when it arrives.
    async fn read_index(&self) -> Result<u64, ForwardError> {
        let raft = &self.inner.raft;
        let (read, _) = raft.get_read_log_id().await.map_err(|e| match e {
            // Not a bad request: the leader cannot reach a majority right now.
            RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q)) => {
                ForwardError::Failed(q.to_string())
            }
            e => forward_error(e),
        })?;
        let last_log = raft.metrics().borrow().last_log_index;
        Ok(read.map_or(0, |l| l.index).max(last_log.unwrap_or(0)))
    }

    /// Adds `id` as a learner, waits until it has really caught up, then makes it a voter. A
    /// node that never answers, or stops making progress, is taken out again: adding a voter
    /// that cannot vote would shrink the margin of failures the cluster survives (four voters
    /// with one dead need three of the other three), and a few such adds would lose the quorum.
    async fn add_member_here(&self, id: u64, node: ChorusNode) -> Result<(), ForwardError> {
        let raft = &self.inner.raft;
        match self.check_new_member(id, &node)? {
            Joining::AlreadyVoter => return Ok(()),
            Joining::AlreadyLearner => {}
            Joining::New => {
                raft.add_learner(id, node.clone(), false)
                    .await
                    .map_err(forward_error)?;
            }
        }
        if let Err(why) = self.wait_caught_up(id, &node).await {
            // Leave the membership as it was; a learner that failed costs nothing, but a stale one
            // would be retried by the leader for ever.
            let undo = raft
                .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                .await;
            if let Err(e) = undo {
                tracing::warn!(node = id, error = %e, "could not take the failed learner out again");
            }
            return Err(ForwardError::Rejected(format!(
                "node {id} ({}) was not added: {why}",
                node.raft_addr
            )));
        }
        raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(forward_error)?;
        tracing::info!(node = id, raft_addr = %node.raft_addr, "a new voting member");
        Ok(())
    }

    /// Refuses id 0, an id already a member at other addresses, and addresses another member
    /// uses; says whether `id` is already on its way in (a retried add).
    fn check_new_member(&self, id: u64, node: &ChorusNode) -> Result<Joining, ForwardError> {
        let reject = |m: String| Err(ForwardError::Rejected(m));
        if id == 0 {
            return reject("node ids start at 1; 0 is not a valid id".into());
        }
        if node.http_addr == node.raft_addr {
            return reject("http_addr and raft_addr must differ".into());
        }
        let metrics = self.inner.raft.metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        for (other, n) in membership.nodes() {
            if *other == id {
                if n != node {
                    return reject(format!(
                        "node {id} is already a member at {} (raft) and {} (http); remove it first or pick another id",
                        n.raft_addr, n.http_addr
                    ));
                }
                return Ok(if membership.voter_ids().any(|v| v == id) {
                    Joining::AlreadyVoter
                } else {
                    Joining::AlreadyLearner
                });
            }
            for addr in [&node.http_addr, &node.raft_addr] {
                if *addr == n.http_addr || *addr == n.raft_addr {
                    return reject(format!("address {addr} is already used by node {other}"));
                }
            }
        }
        Ok(Joining::New)
    }

    /// Waits until learner `id` has applied everything the leader had when it was added (so it
    /// holds every entry and audio chunk a voter needs). Fails when it makes no progress for
    /// [`CATCH_UP_STALL`], with what it was waiting for.
    async fn wait_caught_up(&self, id: u64, node: &ChorusNode) -> Result<(), String> {
        let target = self
            .inner
            .raft
            .metrics()
            .borrow()
            .last_log_index
            .unwrap_or(0);
        let mut progress: (Option<u64>, Option<u64>) = (None, None);
        let mut last_progress = Instant::now();
        loop {
            let matched = self
                .inner
                .raft
                .metrics()
                .borrow()
                .replication
                .as_ref()
                .and_then(|r| r.get(&id).cloned().flatten())
                .map(|l| l.index);
            let answer = self
                .inner
                .transport
                .call(id, &PeerRequest::Status, CATCH_UP_POLL)
                .await;
            let applied = match answer {
                Ok(PeerResponse::Status(s)) if s.node_id != id => {
                    return Err(format!(
                        "the process at {} says it is node {}",
                        node.raft_addr, s.node_id
                    ));
                }
                Ok(PeerResponse::Status(s)) => s.applied_index,
                _ => None,
            };
            if applied.is_some_and(|a| a >= target) && matched.is_some_and(|m| m >= target) {
                return Ok(());
            }
            if (matched, applied) != progress {
                progress = (matched, applied);
                last_progress = Instant::now();
            } else if last_progress.elapsed() >= CATCH_UP_STALL {
                let secs = CATCH_UP_STALL.as_secs();
                return Err(match applied {
                    None => format!(
                        "it did not answer at {} for {secs} s (start it first with `chorus start --node {id}` and the cluster's secret)",
                        node.raft_addr
                    ),
                    Some(a) => {
                        format!("it stopped catching up for {secs} s at index {a} of {target}")
                    }
                });
            }
            tokio::time::sleep(CATCH_UP_POLL).await;
        }
    }

    async fn remove_member_here(&self, id: u64) -> Result<(), ForwardError> {
        let metrics = self.inner.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let change = if membership.voter_ids().any(|v| v == id) {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else if membership.get_node(&id).is_some() {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        } else {
            return Err(ForwardError::Rejected(format!(
                "node {id} is not a member of the cluster"
            )));
        };
        self.inner
            .raft
            .change_membership(change, false)
            .await
            .map_err(forward_error)?;
        Ok(())
    }
}
