//! Node-to-node transport on ractor_cluster.
//!
//! Every node runs a `NodeServer` (the cluster secret is its cookie, so only nodes that know it
//! can connect) and an endpoint actor (`endpoint`), registered in the process group
//! `chorus.peer.<id>`. Once two nodes' sessions are up, ractor_cluster mirrors that group, and
//! [`Transport::call`] reaches the peer's endpoint through it.
//!
//! - `mod.rs`: [`Transport`], the client: sends a request to a peer and awaits its answer.
//! - `wire`: the one remote message and how a request and its answer are read from it.
//! - `endpoint`: the server: answers peers' requests, in order where order matters.
//! - `sessions`: ractor_cluster neither reconnects nor detects a dead link, so a supervisor does
//!   both: every tick it connects to members without a session and pings members with one; a
//!   session whose pings keep failing is stopped so that a fresh connection can replace it.
//!
//! Every call has a timeout, and a malformed message, or one of another wire format version
//! (`crate::protocol::WIRE_VERSION`), is answered with an error, never a panic.

mod endpoint;
mod sessions;
mod wire;

pub use wire::PeerMsg;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorRef, RpcReplyPort};
use ractor_cluster::{IncomingEncryptionMode, NodeServer, NodeServerMessage};

use crate::protocol::{PeerRequest, PeerResponse};
use crate::replica::Replica;
use crate::{StartArgs, StartError};
use endpoint::PeerEndpoint;
use sessions::{MAX_PING_FAILURES, PeerSupervisor, SessionHealth, TICK};
use wire::{WireMessage, read_answer};

/// Peers sending frames larger than this are disconnected by ractor_cluster.
const MAX_FRAME: u64 = 64 * 1024 * 1024;

fn group(node_id: u64) -> String {
    format!("chorus.peer.{node_id}")
}

fn node_name(node_id: u64) -> String {
    format!("chorus-{node_id}")
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    #[error("no session with node {0}")]
    NotConnected(u64),
    #[error("node {0} did not answer within {1:?}")]
    Timeout(u64, Duration),
    #[error("node {0} is unreachable: {1}")]
    Unreachable(u64, String),
    #[error("node {0} sent an unreadable answer: {1}")]
    Malformed(u64, String),
}

#[derive(Debug)]
struct Inner {
    node_id: u64,
    server: ActorRef<NodeServerMessage>,
    /// Raft addresses of the members this node should be connected to.
    peers: RwLock<BTreeMap<u64, String>>,
    sessions: Mutex<HashMap<u64, SessionHealth>>,
    tls: Option<crate::ClusterTls>,
}

#[derive(Debug, Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

impl Transport {
    pub(crate) async fn start(args: &StartArgs) -> Result<Self, StartError> {
        let addr = args.raft_listen;
        let fail = |message: String| StartError::Transport { addr, message };
        let server = NodeServer::new(
            addr.port(),
            args.secret.clone(),
            node_name(args.node_id),
            addr.ip().to_string(),
            args.tls
                .as_ref()
                .map(|tls| IncomingEncryptionMode::Tls(tls.acceptor.clone())),
            Some(ractor_cluster::node::NodeConnectionMode::Isolated),
        )
        .with_listen_addr(addr.ip())
        .with_max_inbound_frame_size(MAX_FRAME);
        let (server, _) = Actor::spawn(None, server, ())
            .await
            .map_err(|e| fail(e.to_string()))?;
        let peers = args
            .initial_members
            .iter()
            .map(|(id, n)| (*id, n.raft_addr.clone()))
            .collect();
        Ok(Self {
            inner: Arc::new(Inner {
                node_id: args.node_id,
                server,
                peers: RwLock::new(peers),
                sessions: Mutex::new(HashMap::new()),
                tls: args.tls.clone(),
            }),
        })
    }

    /// Starts answering peers (the endpoint actor) and maintaining links (the supervisor).
    pub(crate) async fn serve(&self, replica: Replica) -> Result<(), StartError> {
        let fail = |e: ractor::SpawnErr| StartError::Actor(e.to_string());
        let (endpoint, _) = Actor::spawn(
            Some(format!("chorus-peer-endpoint-{}", self.inner.node_id)),
            PeerEndpoint,
            replica,
        )
        .await
        .map_err(fail)?;
        ractor::pg::join(group(self.inner.node_id), vec![endpoint.get_cell()]);
        Actor::spawn(None, PeerSupervisor, self.clone())
            .await
            .map_err(fail)?;
        Ok(())
    }

    pub fn node_id(&self) -> u64 {
        self.inner.node_id
    }

    /// Replaces the set of peers to stay connected to (the current membership).
    pub fn set_peers(&self, peers: BTreeMap<u64, String>) {
        *self
            .inner
            .peers
            .write()
            .unwrap_or_else(PoisonError::into_inner) = peers;
    }

    fn peers(&self) -> BTreeMap<u64, String> {
        self.inner
            .peers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn health<R>(&self, peer: u64, f: impl FnOnce(&mut SessionHealth) -> R) -> R {
        let mut sessions = self
            .inner
            .sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        f(sessions.entry(peer).or_default())
    }

    fn endpoint(&self, peer: u64) -> Option<ActorRef<PeerMsg>> {
        ractor::pg::get_members(&group(peer))
            .into_iter()
            .next()
            .map(ActorRef::from)
    }

    /// This node's round trip to each peer whose pings succeed (`SessionHealth::rtt`).
    pub(crate) fn link_rtts(&self) -> BTreeMap<u64, Duration> {
        let sessions = self
            .inner
            .sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        sessions
            .iter()
            .filter_map(|(&peer, health)| Some((peer, health.rtt()?)))
            .collect()
    }

    /// Every link's round trip this node knows of: its own, and those its peers reported in
    /// their last ping answers. A link reported from both ends keeps this node's own figure.
    pub(crate) fn rtt_table(&self) -> BTreeMap<(u64, u64), Duration> {
        let mut table = BTreeMap::new();
        for (&peer, health) in self
            .inner
            .sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            for (&other, &rtt) in &health.reported {
                table.entry(link(peer, other)).or_insert(rtt);
            }
        }
        let me = self.inner.node_id;
        table.extend(
            self.link_rtts()
                .into_iter()
                .map(|(peer, rtt)| (link(me, peer), rtt)),
        );
        table
    }

    /// True when a session with `peer` exists and it answered recently.
    pub fn reachable(&self, peer: u64) -> bool {
        if peer == self.inner.node_id {
            return true;
        }
        self.endpoint(peer).is_some()
            && self.health(peer, |l| {
                l.last_ok
                    .is_some_and(|t| t.elapsed() < TICK * (MAX_PING_FAILURES + 2))
            })
    }

    /// Sends `req` to `peer` and waits at most `timeout` for the answer.
    pub async fn call(
        &self,
        peer: u64,
        req: &PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse, TransportError> {
        self.send(peer, req, timeout)?.answer().await
    }

    /// Sends `req` to `peer` now and returns the call, whose answer is awaited separately:
    /// requests sent one after the other reach the peer's endpoint in that order (one
    /// ractor_cluster session, one mailbox), so several can be in flight (see
    /// `crate::network`'s pipelined AppendEntries).
    pub fn send(
        &self,
        peer: u64,
        req: &PeerRequest,
        timeout: Duration,
    ) -> Result<PendingCall, TransportError> {
        let endpoint = self
            .endpoint(peer)
            .ok_or(TransportError::NotConnected(peer))?;
        let message =
            WireMessage::encode(req).map_err(|e| TransportError::Malformed(peer, e.to_string()))?;
        let (tx, rx) = ractor::concurrency::oneshot();
        let port: RpcReplyPort<Vec<u8>> = (tx, timeout).into();
        endpoint
            .send_message(PeerMsg::Rpc(message, port))
            .map_err(|e| TransportError::Unreachable(peer, e.to_string()))?;
        Ok(PendingCall {
            transport: self.clone(),
            peer,
            timeout,
            rx,
        })
    }
}

/// A request sent by [`Transport::send`] whose answer has not been awaited yet.
pub struct PendingCall {
    transport: Transport,
    peer: u64,
    timeout: Duration,
    rx: ractor::concurrency::OneshotReceiver<Vec<u8>>,
}

impl PendingCall {
    /// Waits at most the call's timeout (counted from now) for the answer.
    pub async fn answer(self) -> Result<PeerResponse, TransportError> {
        let peer = self.peer;
        let bytes = match tokio::time::timeout(self.timeout, self.rx).await {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(_)) => {
                return Err(TransportError::Unreachable(
                    peer,
                    "the session closed before answering".into(),
                ));
            }
            Err(_) => return Err(TransportError::Timeout(peer, self.timeout)),
        };
        self.transport
            .health(peer, |l| l.last_ok = Some(Instant::now()));
        read_answer(peer, &bytes)
    }
}

/// The key of the link between `a` and `b` in an RTT table (the smaller id first).
pub(crate) fn link(a: u64, b: u64) -> (u64, u64) {
    (a.min(b), a.max(b))
}
