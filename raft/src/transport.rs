//! Node-to-node transport on ractor_cluster.
//!
//! Every node runs a `NodeServer` (the cluster secret is its cookie, so only nodes that know it
//! can connect) and an endpoint actor, [`PeerEndpoint`], registered in the process group
//! `chorus.peer.<id>`. Once two nodes' sessions are up, ractor_cluster mirrors that group, and
//! [`Transport::call`] reaches the peer's endpoint through it.
//!
//! ractor_cluster neither reconnects nor detects a dead link, so [`PeerSupervisor`] does both:
//! every tick it connects to members without a session and pings members with one; a session
//! whose pings keep failing is stopped so that a fresh connection can replace it. Every call has
//! a timeout, and a malformed frame, or one of another wire format version
//! (`crate::protocol::WIRE_VERSION`), is answered with an error, never a panic.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use ractor::message::{BoxedDowncastErr, SerializedMessage};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, call_t};
use ractor_cluster::{IncomingEncryptionMode, NodeServer, NodeServerMessage};
use storage::codec;

use crate::protocol::{self, PeerRequest, PeerResponse, WireError};
use crate::replica::Replica;
use crate::{StartArgs, StartError};

const TICK: Duration = Duration::from_millis(500);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const PING_TIMEOUT: Duration = Duration::from_secs(1);
/// Consecutive failed pings after which a session is considered dead and dropped.
const MAX_PING_FAILURES: u32 = 4;
/// Peers sending frames larger than this are disconnected by ractor_cluster.
const MAX_FRAME: u64 = 64 * 1024 * 1024;

fn group(node_id: u64) -> String {
    format!("chorus.peer.{node_id}")
}

fn node_name(node_id: u64) -> String {
    format!("chorus-{node_id}")
}

/// The one remote message: an encoded [`PeerRequest`] answered with an encoded [`PeerResponse`]
/// (both frames of `crate::protocol`, starting with the wire format version). Its serialisation
/// for ractor_cluster is written out below rather than derived: the derive copies the argument
/// into a new buffer to send it and again out of the received one, and bridges each reply port
/// through a task of its own; the bytes of a 4 MiB frame of audio are not copied at either end.
pub enum PeerMsg {
    Rpc(Frame, RpcReplyPort<Vec<u8>>),
}

/// The name [`PeerMsg::Rpc`] goes under on the wire.
const RPC_VARIANT: &str = "Rpc";

impl ractor::Message for PeerMsg {
    fn serializable() -> bool {
        true
    }

    fn serialize(self) -> Result<SerializedMessage, BoxedDowncastErr> {
        let PeerMsg::Rpc(frame, reply) = self;
        Ok(SerializedMessage::Call {
            variant: RPC_VARIANT.to_string(),
            args: frame.0,
            reply,
            metadata: None,
        })
    }

    fn deserialize(message: SerializedMessage) -> Result<Self, BoxedDowncastErr> {
        match message {
            SerializedMessage::Call {
                variant,
                args,
                reply,
                ..
            } if variant == RPC_VARIANT => Ok(PeerMsg::Rpc(Frame(args), reply)),
            _ => Err(BoxedDowncastErr),
        }
    }
}

/// An encoded [`PeerRequest`] (`crate::protocol::encode`) as [`PeerMsg`] carries it, moved and
/// never copied. Its wire format version is checked where it is decoded, by the endpoint, so
/// that a frame of another version is answered with an error rather than dropped unanswered.
pub struct Frame(Vec<u8>);

impl Frame {
    fn encode(req: &PeerRequest) -> Result<Self, codec::CodecError> {
        protocol::encode(req).map(Self)
    }
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

#[derive(Debug, Default)]
struct Link {
    connecting: bool,
    ping_failures: u32,
    last_ok: Option<Instant>,
}

#[derive(Debug)]
struct Inner {
    node_id: u64,
    server: ActorRef<NodeServerMessage>,
    /// Raft addresses of the members this node should be connected to.
    peers: RwLock<BTreeMap<u64, String>>,
    links: Mutex<HashMap<u64, Link>>,
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
                links: Mutex::new(HashMap::new()),
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

    fn link<R>(&self, peer: u64, f: impl FnOnce(&mut Link) -> R) -> R {
        let mut links = self
            .inner
            .links
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        f(links.entry(peer).or_default())
    }

    fn endpoint(&self, peer: u64) -> Option<ActorRef<PeerMsg>> {
        ractor::pg::get_members(&group(peer))
            .into_iter()
            .next()
            .map(ActorRef::from)
    }

    /// True when a session with `peer` exists and it answered recently.
    pub fn reachable(&self, peer: u64) -> bool {
        if peer == self.inner.node_id {
            return true;
        }
        self.endpoint(peer).is_some()
            && self.link(peer, |l| {
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
        let frame =
            Frame::encode(req).map_err(|e| TransportError::Malformed(peer, e.to_string()))?;
        let (tx, rx) = ractor::concurrency::oneshot();
        let port: RpcReplyPort<Vec<u8>> = (tx, timeout).into();
        endpoint
            .send_message(PeerMsg::Rpc(frame, port))
            .map_err(|e| TransportError::Unreachable(peer, e.to_string()))?;
        Ok(PendingCall {
            transport: self.clone(),
            peer,
            timeout,
            rx,
        })
    }

    /// Opens a session with the node at `addr`, over TLS when the cluster uses it (the peer's
    /// certificate must name `addr`'s IP).
    async fn connect(&self, addr: &str) -> Result<(), String> {
        let server = &self.inner.server;
        let Some(tls) = &self.inner.tls else {
            return ractor_cluster::client_connect(server, addr)
                .await
                .map_err(|e| e.to_string());
        };
        let ip = addr
            .parse::<std::net::SocketAddr>()
            .map_err(|e| format!("`{addr}` is not ip:port: {e}"))?
            .ip();
        let name = tokio_rustls::rustls::pki_types::ServerName::IpAddress(ip.into());
        ractor_cluster::client_connect_enc(server, addr, tls.connector.clone(), name)
            .await
            .map_err(|e| e.to_string())
    }

    /// One supervisor tick: connect to peers without a session, ping those with one.
    fn maintain(&self) {
        for (peer, addr) in self.peers() {
            if peer == self.inner.node_id {
                continue;
            }
            if self.endpoint(peer).is_none() {
                if self.link(peer, |l| std::mem::replace(&mut l.connecting, true)) {
                    continue; // an attempt is already under way
                }
                let this = self.clone();
                tokio::spawn(async move {
                    let attempt = tokio::time::timeout(CONNECT_TIMEOUT, this.connect(&addr)).await;
                    match attempt {
                        Ok(Ok(())) => tracing::debug!(peer, %addr, "connected"),
                        Ok(Err(e)) => tracing::debug!(peer, %addr, error = %e, "connect failed"),
                        Err(_) => tracing::debug!(peer, %addr, "connect timed out"),
                    }
                    this.link(peer, |l| l.connecting = false);
                });
            } else {
                let this = self.clone();
                tokio::spawn(async move {
                    let ok = matches!(
                        this.call(peer, &PeerRequest::Status, PING_TIMEOUT).await,
                        Ok(PeerResponse::Status(_))
                    );
                    let failures = this.link(peer, |l| {
                        l.ping_failures = if ok { 0 } else { l.ping_failures + 1 };
                        l.ping_failures
                    });
                    if failures >= MAX_PING_FAILURES {
                        this.link(peer, |l| l.ping_failures = 0);
                        this.drop_session(peer).await;
                    }
                });
            }
        }
    }

    /// Stops the sessions with `peer` so that the supervisor opens a fresh one; returns how many
    /// it stopped. Without this a session over a link that went silent (a partition drops
    /// packets, it does not close connections) lives on in TCP's retransmission backoff, and
    /// after the link heals whatever was queued arrives seconds late: without it, a node cut
    /// off for 9 s had its vote requests answered 5 s after the heal, all at once, and the
    /// cluster went 9.7 s without a leader.
    async fn drop_session(&self, peer: u64) -> usize {
        let Ok(sessions) = call_t!(self.inner.server, NodeServerMessage::GetSessions, 1000) else {
            tracing::warn!(
                peer,
                "cannot list the transport's sessions to drop a dead one"
            );
            return 0;
        };
        let mut stopped = 0;
        for session in sessions.values() {
            if session
                .peer_name
                .as_ref()
                .is_some_and(|n| is_name_of(&n.name, peer))
            {
                tracing::warn!(
                    peer,
                    "peer stopped answering; dropping its session to reconnect"
                );
                session
                    .actor
                    .stop(Some("peer stopped answering pings".into()));
                stopped += 1;
            }
        }
        stopped
    }
}

/// Whether `session_name`, as ractor_cluster reports a peer (`<node name>@<host>`), is node
/// `peer`'s.
fn is_name_of(session_name: &str, peer: u64) -> bool {
    session_name.split('@').next() == Some(node_name(peer).as_str())
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
            .link(peer, |l| l.last_ok = Some(Instant::now()));
        read_answer(peer, &bytes)
    }
}

/// `peer`'s answer as the caller sees it: its `Malformed` (the peer could not read the request)
/// and an answer this node cannot read (another wire format version, or damage) are errors.
fn read_answer(peer: u64, frame: &[u8]) -> Result<PeerResponse, TransportError> {
    match protocol::decode(frame) {
        Ok(PeerResponse::Malformed(m)) => Err(TransportError::Malformed(peer, m)),
        Ok(resp) => Ok(resp),
        Err(e) => Err(TransportError::Malformed(peer, e.to_string())),
    }
}

/// The request in `frame`, or why this node cannot read it (for a peer of another wire format
/// version, both versions), to answer as `Malformed`.
fn read_request(frame: &Frame) -> Result<PeerRequest, String> {
    protocol::decode(&frame.0).map_err(|e| {
        tracing::warn!(error = %e, "unreadable request from a peer");
        match e {
            WireError::Version(_) => e.to_string(),
            e => format!("cannot decode request: {e}"),
        }
    })
}

/// Answers peers' requests. Each request runs in its own task so that a slow one (a snapshot
/// chunk, a write waiting for commit) never holds up heartbeats and votes — except
/// AppendEntries carrying entries, which go to openraft one after the other in the order they
/// arrived: a leader sends several frames before the first is answered (`crate::network`), and
/// each continues the one before it.
struct PeerEndpoint;

/// A request that must be handled in arrival order (an AppendEntries carrying entries, a
/// snapshot part) and where its answer goes, waiting for its turn.
type Ordered = (PeerRequest, RpcReplyPort<Vec<u8>>);

struct EndpointState {
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
        let PeerMsg::Rpc(frame, reply) = msg;
        // Decoded here, in arrival order; a frame of audio takes a few milliseconds.
        let req = match read_request(&frame) {
            Ok(req) => req,
            Err(why) => {
                answer(reply, &PeerResponse::Malformed(why));
                return Ok(());
            }
        };
        drop(frame);
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

enum SupervisorMsg {
    Tick,
}

impl ractor::Message for SupervisorMsg {}

/// Keeps this node connected to every member (see the module docs).
struct PeerSupervisor;

impl Actor for PeerSupervisor {
    type Msg = SupervisorMsg;
    type State = Transport;
    type Arguments = Transport;

    async fn pre_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        transport: Transport,
    ) -> Result<Transport, ActorProcessingErr> {
        myself.send_interval(TICK, || SupervisorMsg::Tick);
        transport.maintain();
        Ok(transport)
    }

    async fn handle(
        &self,
        _: ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
        transport: &mut Transport,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Tick => transport.maintain(),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RaftSettings;

    /// A request crosses ractor_cluster's serialisation unchanged: a frame of the wire format
    /// version, then the request.
    #[test]
    fn a_frame_travels_unchanged_behind_the_wire_version() {
        let req = PeerRequest::ClientWrites(Vec::new());
        let (tx, _rx) = ractor::concurrency::oneshot();
        let msg = PeerMsg::Rpc(Frame::encode(&req).expect("encode"), tx.into());
        let Ok(SerializedMessage::Call { variant, args, .. }) = ractor::Message::serialize(msg)
        else {
            panic!("not serialised as a call");
        };
        let expected = [
            &[protocol::WIRE_VERSION][..],
            &codec::encode(&req).expect("encode"),
        ]
        .concat();
        assert_eq!((variant.as_str(), &args), (RPC_VARIANT, &expected));

        let (tx, _rx) = ractor::concurrency::oneshot();
        let back = <PeerMsg as ractor::Message>::deserialize(SerializedMessage::Call {
            variant,
            args,
            reply: tx.into(),
            metadata: None,
        });
        let Ok(PeerMsg::Rpc(frame, _)) = back else {
            panic!("not deserialised");
        };
        assert!(matches!(
            read_request(&frame),
            Ok(PeerRequest::ClientWrites(w)) if w.is_empty()
        ));
    }

    /// A request of another wire format version is answered `Malformed`, naming both versions;
    /// an answer of another version is an error for the caller, naming both too.
    #[test]
    fn a_frame_of_another_wire_version_is_refused_with_both_versions() {
        let other = protocol::WIRE_VERSION + 1;
        let mut frame = Frame::encode(&PeerRequest::Status).expect("encode");
        frame.0[0] = other;
        let expected = format!(
            "peer speaks wire format v{other}, this node v{}",
            protocol::WIRE_VERSION
        );
        match read_request(&frame) {
            Err(m) => assert_eq!(m, expected),
            r => panic!("not refused: {r:?}"),
        }

        let mut answer = protocol::encode(&PeerResponse::ReadIndex(Ok(3))).expect("encode");
        assert!(matches!(
            read_answer(7, &answer),
            Ok(PeerResponse::ReadIndex(Ok(3)))
        ));
        answer[0] = other;
        match read_answer(7, &answer) {
            Err(TransportError::Malformed(7, m)) => assert_eq!(m, expected),
            r => panic!("not refused: {r:?}"),
        }
        // The peer's own refusal reaches the caller as the same error.
        let refusal = protocol::encode(&PeerResponse::Malformed(expected.clone())).expect("encode");
        match read_answer(7, &refusal) {
            Err(TransportError::Malformed(7, m)) => assert_eq!(m, expected),
            r => panic!("not refused: {r:?}"),
        }
    }

    fn free_addr() -> std::net::SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    }

    async fn transport(node_id: u64, addr: std::net::SocketAddr) -> Transport {
        let args = StartArgs {
            node_id,
            cluster_name: "test".into(),
            secret: "transport-test-secret".into(),
            raft_listen: addr,
            initial_members: BTreeMap::new(),
            settings: RaftSettings::default(),
            tls: None,
        };
        Transport::start(&args).await.expect("start transport")
    }

    /// The authenticated sessions of `transport` with node `peer`.
    async fn sessions_with(transport: &Transport, peer: u64) -> usize {
        let sessions = call_t!(transport.inner.server, NodeServerMessage::GetSessions, 1000)
            .expect("list sessions");
        sessions
            .values()
            .filter(|s| {
                s.peer_name
                    .as_ref()
                    .is_some_and(|n| is_name_of(&n.name, peer))
            })
            .count()
    }

    async fn wait_for_sessions(transport: &Transport, peer: u64, want: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while sessions_with(transport, peer).await != want {
            assert!(
                Instant::now() < deadline,
                "node {} still has {} sessions with node {peer}, not {want}",
                transport.node_id(),
                sessions_with(transport, peer).await
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What the supervisor does to a peer that stopped answering: the real ractor_cluster
    /// session with it is found by its peer name, which carries `@host`, and stopped.
    #[tokio::test]
    async fn the_session_with_a_peer_that_stopped_answering_is_dropped() {
        let (addr_a, addr_b) = (free_addr(), free_addr());
        let a = transport(1, addr_a).await;
        let b = transport(2, addr_b).await;
        ractor_cluster::client_connect(&a.inner.server, addr_b.to_string())
            .await
            .expect("connect");
        wait_for_sessions(&a, 2, 1).await;
        wait_for_sessions(&b, 1, 1).await;

        assert_eq!(a.drop_session(2).await, 1);
        wait_for_sessions(&a, 2, 0).await;
        // The peer sees the connection close, so both ends are free to connect afresh.
        wait_for_sessions(&b, 1, 0).await;
        assert_eq!(a.drop_session(2).await, 0, "nothing left to drop");
    }

    #[test]
    fn a_session_name_is_matched_to_its_node_exactly() {
        assert!(is_name_of("chorus-3@10.77.0.3", 3));
        assert!(is_name_of("chorus-3", 3));
        assert!(!is_name_of("chorus-30@10.77.0.3", 3));
        assert!(!is_name_of("chorus-3@10.77.0.3", 30));
    }
}
