//! Messages between nodes. Each request is one [`PeerRequest`] carried by the single
//! ractor_cluster RPC of [`crate::transport::PeerMsg`]; the answer is a [`PeerResponse`].
//!
//! On the wire each is a frame ([`encode`], [`decode`]): one byte, [`WIRE_VERSION`], then the
//! message in bincode. bincode carries no schema, so a node reading another encoding would
//! misread it or fail with a puzzling decode error; the version byte turns that into a plain
//! refusal that names both versions.

use std::collections::BTreeMap;

use openraft::error::RaftError;
use openraft::raft::SnapshotResponse;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest, VoteResponse};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use storage::codec::{self, CodecError};
use storage::{Applied, ChorusNode, ChunkHash, ReadBack, ReadBackValue, Request, TypeConfig};

use crate::snapshot_transfer::{SnapshotDone, SnapshotPart, SnapshotRefused};

/// The version of the encoding of [`PeerRequest`] and [`PeerResponse`], the first byte of every
/// frame. Raise it with any change to these messages (or to the types they carry) that alters
/// their encoding.
pub const WIRE_VERSION: u8 = 3;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("empty frame")]
    Empty,
    #[error("peer speaks wire format v{0}, this node v{WIRE_VERSION}")]
    Version(u8),
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// `message` as a frame: [`WIRE_VERSION`], then its encoding (written in place: one
/// allocation, no copy of what may be megabytes of audio).
pub(crate) fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, CodecError> {
    let mut frame = codec::encode_after(message, 1)?;
    frame[0] = WIRE_VERSION;
    Ok(frame)
}

/// Reads a frame written by [`encode`], refusing one of another wire format version.
pub(crate) fn decode<T: DeserializeOwned>(frame: &[u8]) -> Result<T, WireError> {
    let (&version, message) = frame.split_first().ok_or(WireError::Empty)?;
    if version != WIRE_VERSION {
        return Err(WireError::Version(version));
    }
    Ok(codec::decode(message)?)
}

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
    /// An audio chunk by its hash (`crate::chunk_fetch`: for a snapshot install or a repair).
    GetChunk(ChunkHash),
    /// A stopping leader asks its most caught-up follower to stand for election now
    /// (`Replica::hand_over_leadership`); answered with `Membership`.
    CampaignNow,
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
    /// The chunk's bytes (checked against its hash here), or why this node cannot give them.
    Chunk(Result<ChunkBytes, String>),
    /// An AppendEntries or forwarded write sent with its audio left out named chunks this node
    /// lacks (`crate::by_hash`); nothing of it was taken. Send it again with the bytes.
    LacksAudio(Vec<ChunkHash>),
}

/// An audio chunk's bytes on the wire (one byte string, not a sequence of numbers).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChunkBytes(#[serde(with = "storage::codec::bytes")] pub Vec<u8>);

/// The result of a write: its log position, what the state machine answered, and what the
/// leader read right after applying it (`None` when nothing was asked for).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WriteReceipt {
    /// Log index of the entry; wait for it locally before reading your own write.
    pub index: u64,
    pub applied: Applied,
    pub read_back: Option<ReadBackValue>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerStatus {
    pub node_id: u64,
    /// Never voted, never held a log entry: a brand-new node.
    pub pristine: bool,
    /// The last log index this node has applied (audio included: a snapshot is applied only
    /// once every chunk it names is here).
    pub applied_index: Option<u64>,
    /// This node's round trip to each peer it reached lately (the least of its recent pings),
    /// in microseconds: the
    /// leader learns from them where a leader would commit fastest (`replica::placement`).
    pub link_rtt_us: BTreeMap<u64, u64>,
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

    proptest::proptest! {
        /// A frame of arbitrary bytes from a peer decodes or is refused, never a panic.
        #[test]
        fn arbitrary_frames_never_panic(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4096)) {
            let mut frame = vec![WIRE_VERSION];
            frame.extend(body);
            let _ = decode::<PeerRequest>(&frame);
            let _ = decode::<PeerResponse>(&frame);
        }
    }

    #[test]
    fn a_frame_starts_with_the_wire_version_and_reads_back() {
        let frame = encode(&PeerRequest::ReadIndex).expect("encode");
        assert_eq!(frame.first(), Some(&WIRE_VERSION));
        assert!(matches!(
            decode::<PeerRequest>(&frame),
            Ok(PeerRequest::ReadIndex)
        ));
    }

    /// A frame of another version is refused before its bytes are read as a message, with an
    /// error that names both versions.
    #[test]
    fn a_frame_of_another_wire_version_is_refused_by_name() {
        let mut frame = encode(&PeerRequest::Status).expect("encode");
        frame[0] = WIRE_VERSION + 1;
        let err = decode::<PeerRequest>(&frame).expect_err("another version");
        assert!(matches!(err, WireError::Version(v) if v == WIRE_VERSION + 1));
        assert_eq!(
            err.to_string(),
            format!(
                "peer speaks wire format v{}, this node v{WIRE_VERSION}",
                WIRE_VERSION + 1
            )
        );
        assert!(matches!(decode::<PeerRequest>(&[]), Err(WireError::Empty)));
    }
}
