//! The server side: [`PeerEndpoint`] answers what other nodes ask of this one.

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::wire::{PeerMsg, read_request};
use crate::protocol::{self, PeerRequest, PeerResponse};
use crate::replica::Replica;

/// Answers peers' requests. Each request runs in its own task so that a slow one (a snapshot
/// chunk, a write waiting for commit) never holds up heartbeats and votes — except
/// AppendEntries carrying entries, which go to openraft one after the other in the order they
/// arrived: a leader sends several frames before the first is answered (`crate::network`), and
/// each continues the one before it.
pub(super) struct PeerEndpoint;

/// A request that must be handled in arrival order (an AppendEntries carrying entries, a
/// snapshot part) and where its answer goes, waiting for its turn.
type Ordered = (PeerRequest, RpcReplyPort<Vec<u8>>);

pub(super) struct EndpointState {
    replica: Replica,
    in_order: tokio::sync::mpsc::UnboundedSender<Ordered>,
}

/// Handles AppendEntries and snapshot parts in arrival order, one at a time (openraft's core
/// handles AppendEntries one at a time anyway: a follower answers after its flush).
async fn run_in_order(replica: Replica, mut rx: tokio::sync::mpsc::UnboundedReceiver<Ordered>) {
    while let Some((req, reply)) = rx.recv().await {
        let response = replica.handle_peer(req).await;
        answer(reply, &response);
    }
}

fn answer(reply: RpcReplyPort<Vec<u8>>, response: &PeerResponse) {
    match protocol::encode(response) {
        Ok(bytes) => {
            // The caller may have timed out and gone; nothing to do then.
            let _ = reply.send(bytes);
        }
        Err(e) => tracing::error!(error = %e, "cannot encode a peer response"),
    }
}

impl Actor for PeerEndpoint {
    type Msg = PeerMsg;
    type State = EndpointState;
    type Arguments = Replica;

    async fn pre_start(
        &self,
        _: ActorRef<PeerMsg>,
        replica: Replica,
    ) -> Result<EndpointState, ActorProcessingErr> {
        let (in_order, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(run_in_order(replica.clone(), rx));
        Ok(EndpointState { replica, in_order })
    }

    async fn handle(
        &self,
        _: ActorRef<PeerMsg>,
        msg: PeerMsg,
        state: &mut EndpointState,
    ) -> Result<(), ActorProcessingErr> {
        let PeerMsg::Rpc(message, reply) = msg;
        // Decoded here, in arrival order; a frame of audio takes a few milliseconds.
        let req = match read_request(&message) {
            Ok(req) => req,
            Err(why) => {
                answer(reply, &PeerResponse::Malformed(why));
                return Ok(());
            }
        };
        drop(message);
        // Only AppendEntries that carry entries, and snapshot parts, keep their order. An empty
        // AppendEntries (a heartbeat, or the leader confirming its leadership for a
        // linearizable read) changes no entry, so it need not wait behind frames of audio that
        // are being written.
        let ordered = match &req {
            PeerRequest::AppendEntries(rpc) => !rpc.entries.is_empty(),
            PeerRequest::SnapshotPart(_) => true,
            _ => false,
        };
        if ordered {
            if let Err(e) = state.in_order.send((req, reply)) {
                tracing::error!("the task that handles ordered requests has stopped");
                let (_, reply) = e.0;
                answer(reply, &PeerResponse::Malformed("node is stopping".into()));
            }
            return Ok(());
        }
        let replica = state.replica.clone();
        tokio::spawn(async move {
            let response = replica.handle_peer(req).await;
            answer(reply, &response);
        });
        Ok(())
    }
}
