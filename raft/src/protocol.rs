//! Messages between nodes. Each request is one bincode-encoded [`PeerRequest`] carried by the
//! single ractor_cluster RPC of [`crate::transport::PeerMsg`]; the answer is a [`PeerResponse`].

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{SnapshotMeta, Vote};
use serde::{Deserialize, Serialize};
use storage::{ChorusNode, Request, Response, TypeConfig};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PeerRequest {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<u64>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A client write forwarded by a follower to the leader.
    ClientWrite(Request),
    /// A follower asks the leader for a read index (the leader confirms its leadership first).
    ReadIndex,
    /// Liveness probe, also used by bootstrap to learn whether the peer was ever initialised.
    Status,
    AddMember {
        id: u64,
        node: ChorusNode,
    },
    RemoveMember {
        id: u64,
    },
    /// Client writes forwarded together (see `crate::forward`); answered in the same order.
    /// Added after the others so that the existing variants keep their encoding.
    ClientWrites(Vec<Request>),
    /// A snapshot chunk as sent since `InstallSnapshot` was found slow (see [`SnapshotChunk`]);
    /// answered like `InstallSnapshot`, which older nodes still send.
    SnapshotChunk(SnapshotChunk),
}

/// openraft's [`InstallSnapshotRequest`] with its data encoded as one byte string. openraft's
/// own type serialises `data` as a sequence of single bytes: for a 500 MiB snapshot that was
/// 27 % of the sender's CPU time and 16 % of the receiver's, and the transfer ran at
/// ~150 MiB/s (`perf record` during `bench/catch_up.py --through-snapshot`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotChunk {
    pub vote: Vote<u64>,
    pub meta: SnapshotMeta<u64, ChorusNode>,
    pub offset: u64,
    #[serde(with = "storage::codec::bytes")]
    pub data: Vec<u8>,
    pub done: bool,
}

impl From<InstallSnapshotRequest<TypeConfig>> for SnapshotChunk {
    fn from(r: InstallSnapshotRequest<TypeConfig>) -> Self {
        Self {
            vote: r.vote,
            meta: r.meta,
            offset: r.offset,
            data: r.data,
            done: r.done,
        }
    }
}

impl From<SnapshotChunk> for InstallSnapshotRequest<TypeConfig> {
    fn from(c: SnapshotChunk) -> Self {
        Self {
            vote: c.vote,
            meta: c.meta,
            offset: c.offset,
            data: c.data,
            done: c.done,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub enum PeerResponse {
    AppendEntries(Result<AppendEntriesResponse<u64>, RaftError<u64>>),
    Vote(Result<VoteResponse<u64>, RaftError<u64>>),
    InstallSnapshot(Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>),
    ClientWrite(Result<WriteReply, ForwardError>),
    ReadIndex(Result<u64, ForwardError>),
    Status(PeerStatus),
    Membership(Result<(), ForwardError>),
    /// The request could not be decoded.
    Malformed(String),
    /// One result per write of a `ClientWrites`, in order.
    ClientWrites(Vec<Result<WriteReply, ForwardError>>),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WriteReply {
    /// Log index of the entry; wait for it locally before reading your own write.
    pub index: u64,
    pub response: Response,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerStatus {
    pub node_id: u64,
    /// Never voted, never held a log entry: a brand-new node.
    pub pristine: bool,
}

/// Why the leader did not carry out a forwarded request.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
pub enum ForwardError {
    #[error("this node is not the leader")]
    NotLeader,
    /// The request itself is invalid (for example removing the last voter); retrying won't help.
    #[error("{0}")]
    Rejected(String),
    /// Raft failed to carry out the request; it may be retried.
    #[error("{0}")]
    Failed(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chunk goes over the wire as a `SnapshotChunk` and reaches openraft as the request the
    /// leader's openraft made.
    #[test]
    fn a_snapshot_chunk_carries_the_request_unchanged() {
        let request = InstallSnapshotRequest::<TypeConfig> {
            vote: Vote::new_committed(3, 1),
            meta: SnapshotMeta {
                last_log_id: None,
                last_membership: Default::default(),
                snapshot_id: "s-1".into(),
            },
            offset: 4096,
            data: (0..=255u8).cycle().take(70_000).collect(),
            done: false,
        };
        let wire = storage::codec::encode(&PeerRequest::SnapshotChunk(request.clone().into()))
            .expect("encode");
        let PeerRequest::SnapshotChunk(chunk) =
            storage::codec::decode::<PeerRequest>(&wire).expect("decode")
        else {
            panic!("decoded as another request");
        };
        let back: InstallSnapshotRequest<TypeConfig> = chunk.into();
        assert_eq!(back, request);
    }
}
