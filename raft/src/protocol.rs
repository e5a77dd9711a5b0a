//! Messages between nodes. Each request is one [`PeerRequest`] carried by the single
//! ractor_cluster RPC of [`crate::transport::PeerMsg`]; the answer is a [`PeerResponse`].

use openraft::error::RaftError;
use openraft::raft::SnapshotResponse;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest, VoteResponse};
use serde::{Deserialize, Serialize};
use storage::{ChorusNode, ReadBack, ReadBackValue, Request, Response, TypeConfig};

use crate::snapshot_transfer::{SnapshotDone, SnapshotPart, SnapshotRefused};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PeerRequest {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<u64>),
    /// Part of a snapshot file, and the end of one (`crate::snapshot_transfer`).
    SnapshotPart(SnapshotPart),
    SnapshotDone(SnapshotDone),
    /// Client writes forwarded to the leader, each with what to read back right after it, if
    /// anything (see `crate::forward`); answered in the same order. A lone write, and a write
    /// too large to batch, is a batch of one.
    ClientWrites(Vec<(Request, Option<ReadBack>)>),
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
}

#[derive(Debug, Serialize, Deserialize)]
pub enum PeerResponse {
    AppendEntries(Result<AppendEntriesResponse<u64>, RaftError<u64>>),
    Vote(Result<VoteResponse<u64>, RaftError<u64>>),
    SnapshotPart(Result<(), SnapshotRefused>),
    SnapshotDone(Result<SnapshotResponse<u64>, SnapshotRefused>),
    /// One result per write of a `ClientWrites`, in order.
    ClientWrites(Vec<Result<WriteReceipt, ForwardError>>),
    ReadIndex(Result<u64, ForwardError>),
    Status(PeerStatus),
    Membership(Result<(), ForwardError>),
    /// The request could not be decoded (or was encoded in another wire format version).
    Malformed(String),
}

/// The result of a write: its log position, what the state machine answered, and what the
/// leader read right after applying it (`None` when nothing was asked for).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WriteReceipt {
    /// Log index of the entry; wait for it locally before reading your own write.
    pub index: u64,
    pub response: Response,
    pub read_back: Option<ReadBackValue>,
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
