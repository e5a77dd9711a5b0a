//! openraft's network, carried by [`Transport`]. A transport failure (no session, timeout, lost
//! session) is reported as `Unreachable`, so openraft backs off instead of hammering the peer.

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use storage::{ChorusNode, TypeConfig};

use crate::protocol::{PeerRequest, PeerResponse};
use crate::transport::{Transport, TransportError};

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
        self.send(PeerRequest::AppendEntries(rpc), &option, |r| match r {
            PeerResponse::AppendEntries(r) => Some(r),
            _ => None,
        })
        .await
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
