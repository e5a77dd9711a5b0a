//! Messages between nodes. Each request is one bincode-encoded [`PeerRequest`] carried by the
//! single ractor_cluster RPC of [`crate::transport::PeerMsg`]; the answer is a [`PeerResponse`].

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::SnapshotResponse;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};
use storage::{ChorusNode, ReadBack, ReadBackValue, Request, Response, TypeConfig};

use crate::snapshot_transfer::{SnapshotDone, SnapshotPart, SnapshotRefused};

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
    /// Part of a snapshot file, and the end of one (`crate::snapshot_transfer`), which replace
    /// `InstallSnapshot` (still answered for older nodes).
    SnapshotPart(SnapshotPart),
    SnapshotDone(SnapshotDone),
    /// A client write whose caller reads the state right after it: the leader answers with what
    /// it read ([`WriteAnswer`]), so the caller need not apply the entry first.
    ClientWriteReadingBack(Request, ReadBack),
    /// `ClientWrites` with a read-back per write, answered in the same order.
    ClientWritesReadingBack(Vec<(Request, Option<ReadBack>)>),
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
    SnapshotPart(Result<(), SnapshotRefused>),
    SnapshotDone(Result<SnapshotResponse<u64>, SnapshotRefused>),
    ClientWriteReadBack(Result<WriteAnswer, ForwardError>),
    ClientWritesReadBack(Vec<Result<WriteAnswer, ForwardError>>),
}

/// A write's reply with what the leader read right after applying it (`None` when nothing was
/// asked for).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WriteAnswer {
    pub reply: WriteReply,
    pub read_back: Option<ReadBackValue>,
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
