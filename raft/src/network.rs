//! openraft's network, carried by [`Transport`]. AppendEntries frames are cut at
//! [`MAX_APPEND_BYTES`] (openraft's `PartialSuccess` lets the network send a prefix). A transport
//! failure (no session, timeout, lost session) is reported as `Unreachable`, so openraft backs off
//! instead of hammering the peer.

use openraft::EntryPayload;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use storage::{ChorusNode, Entry, TypeConfig};

use crate::protocol::{PeerRequest, PeerResponse};
use crate::transport::{Transport, TransportError};

/// Bytes of entries per AppendEntries frame. openraft bounds a frame by entry count only
/// (`max_payload_entries`, high so that small writes replicate in large batches); audio chunk
/// entries are 1 MiB each, so frames are also cut by size here, and the rest goes in the next.
/// Small because openraft 0.9 gives an AppendEntries only `heartbeat_interval` to complete
/// (encode, send, the follower's write and fsync, answer): a frame that cannot make it times out
/// again and again and replication stalls (seen: a catch-up taking 42 s instead of 5).
const MAX_APPEND_BYTES: usize = 8 * 1024 * 1024;

/// Roughly how many bytes `entry` takes in a frame (blank and membership entries are small).
fn entry_size(entry: &Entry) -> usize {
    match &entry.payload {
        EntryPayload::Normal(req) => req.approx_size(),
        _ => 256,
    }
}

/// How many of `entries` (at least one, if any) fit in `budget` bytes.
fn entries_within(entries: &[Entry], budget: usize) -> usize {
    let mut used = 0;
    for (k, entry) in entries.iter().enumerate() {
        used += entry_size(entry);
        if used > budget {
            return k.max(1);
        }
    }
    entries.len()
}

pub struct Network {
    transport: Transport,
}

impl Network {
    pub fn new(transport: Transport) -> Self {
        Self { transport }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerLink;

    async fn new_client(&mut self, target: u64, _node: &ChorusNode) -> PeerLink {
        PeerLink {
            target,
            transport: self.transport.clone(),
        }
    }
}

pub struct PeerLink {
    target: u64,
    transport: Transport,
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<u64, ChorusNode, RaftError<u64, E>>>;

impl PeerLink {
    async fn send<T, E: std::error::Error>(
        &self,
        req: PeerRequest,
        option: &RPCOption,
        extract: impl FnOnce(PeerResponse) -> Option<Result<T, RaftError<u64, E>>>,
    ) -> RpcResult<T, E> {
        let resp = self
            .transport
            .call(self.target, &req, option.hard_ttl())
            .await
            .map_err(|e| match e {
                TransportError::Malformed(..) => RPCError::Network(NetworkError::new(&e)),
                _ => RPCError::Unreachable(Unreachable::new(&e)),
            })?;
        match extract(resp) {
            Some(Ok(v)) => Ok(v),
            Some(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            None => {
                let e = TransportError::Malformed(self.target, "answer of the wrong kind".into());
                Err(RPCError::Network(NetworkError::new(&e)))
            }
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerLink {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>> {
        let mut rpc = rpc;
        let all = rpc.entries.len();
        let fits = entries_within(&rpc.entries, MAX_APPEND_BYTES);
        rpc.entries.truncate(fits);
        let last_sent = rpc.entries.last().map(|e| e.log_id);
        // Heartbeats (no entries) are left out of the stage trace (bench/write_stages.py).
        let carries_entries = !rpc.entries.is_empty();
        if carries_entries {
            tracing::trace!(target: "chorus::stages", stage = "replicate.send");
        }
        let resp = self
            .send(PeerRequest::AppendEntries(rpc), &option, |r| match r {
                PeerResponse::AppendEntries(r) => Some(r),
                _ => None,
            })
            .await?;
        if carries_entries {
            tracing::trace!(target: "chorus::stages", stage = "replicate.acked");
        }
        // openraft sends the rest next, after the last entry the follower took.
        Ok(match resp {
            AppendEntriesResponse::Success if fits < all => {
                AppendEntriesResponse::PartialSuccess(last_sent)
            }
            other => other,
        })
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, InstallSnapshotError> {
        self.send(PeerRequest::InstallSnapshot(rpc), &option, |r| match r {
            PeerResponse::InstallSnapshot(r) => Some(r),
            _ => None,
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<u64>> {
        self.send(PeerRequest::Vote(rpc), &option, |r| match r {
            PeerResponse::Vote(r) => Some(r),
            _ => None,
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, LogId};
    use storage::{Command, QueueCommand, Request, TrackCommand};

    fn entry(index: u64, command: Command) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Request {
                dedupe_key: None,
                at_ms: 0,
                command,
            }),
        }
    }

    fn chunk(index: u64) -> Entry {
        let command = Command::Tracks(TrackCommand::PutChunk {
            upload_id: 1,
            index: index as u32,
            bytes: vec![0; 1024 * 1024],
        });
        entry(index, command)
    }

    #[test]
    fn frames_are_cut_by_audio_bytes_not_by_small_writes() {
        let small: Vec<Entry> = (0..512)
            .map(|i| entry(i, Command::Queue(QueueCommand::Clear)))
            .collect();
        assert_eq!(entries_within(&small, MAX_APPEND_BYTES), 512);

        let chunks: Vec<Entry> = (0..20).map(chunk).collect();
        let fits = entries_within(&chunks, MAX_APPEND_BYTES);
        assert!((1..20).contains(&fits), "{fits}");
        let bytes: usize = chunks[..fits].iter().map(entry_size).sum();
        assert!(bytes <= MAX_APPEND_BYTES);

        // One entry larger than the budget still goes (alone), or replication would stall.
        assert_eq!(entries_within(&chunks, 1000), 1);
        assert_eq!(entries_within(&[], 1000), 0);
    }
}
