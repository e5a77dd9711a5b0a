//! The peer server: what other nodes (and this node's own `route`, when it leads) ask of this
//! one over the transport.

use std::collections::BTreeSet;

use openraft::ChangeMembers;
use openraft::error::{CheckIsLeaderError, RaftError};
use storage::ChorusNode;

use super::{Replica, forward_error};
use crate::protocol::{ChunkBytes, ForwardError, PeerRequest, PeerResponse, PeerStatus};

impl Replica {
    /// Serves a request from a peer (or from this node's own `route` when it is the leader).
    pub(crate) async fn handle_peer(&self, req: PeerRequest) -> PeerResponse {
        let raft = &self.inner.raft;
        match req {
            PeerRequest::AppendEntries(r) => {
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
            PeerRequest::ClientWrites(writes) => {
                // Queued to the proposer together, so they normally share one log entry.
                let proposals = writes
                    .into_iter()
                    .map(|(r, read_back)| self.propose_write(r, read_back));
                PeerResponse::ClientWrites(futures_util::future::join_all(proposals).await)
            }
            PeerRequest::ReadIndex => PeerResponse::ReadIndex(
                raft.get_read_log_id()
                    .await
                    .map(|(read, _)| read.map_or(0, |l| l.index))
                    .map_err(|e| match e {
                        // Not a bad request: the leader cannot reach a majority right now.
                        RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q)) => {
                            ForwardError::Failed(q.to_string())
                        }
                        e => forward_error(e),
                    }),
            ),
            PeerRequest::Status => PeerResponse::Status(PeerStatus {
                node_id: self.inner.id,
                pristine: self.is_pristine(),
            }),
            PeerRequest::AddMember { id, node } => {
                PeerResponse::Membership(self.add_member_here(id, node).await)
            }
            PeerRequest::RemoveMember { id } => {
                PeerResponse::Membership(self.remove_member_here(id).await)
            }
        }
    }

    async fn add_member_here(&self, id: u64, node: ChorusNode) -> Result<(), ForwardError> {
        let raft = &self.inner.raft;
        raft.add_learner(id, node, true)
            .await
            .map_err(forward_error)?;
        raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(forward_error)?;
        Ok(())
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
