//! Sessions with the other members: ractor_cluster neither reconnects nor detects a dead link,
//! so [`PeerSupervisor`] does both every tick (see the parent module's docs).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, call_t};
use ractor_cluster::NodeServerMessage;

use super::{Transport, node_name};
use crate::protocol::{PeerRequest, PeerResponse, PeerStatus};

/// How often the supervisor connects and pings.
pub(super) const TICK: Duration = Duration::from_millis(500);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const PING_TIMEOUT: Duration = Duration::from_secs(1);
/// Pings whose least round trip is the link's (two seconds of them).
const RTT_SAMPLES: usize = 4;
/// Consecutive failed pings after which a session is considered dead and dropped.
pub(super) const MAX_PING_FAILURES: u32 = 4;

/// What the supervisor knows of the session with one peer.
#[derive(Debug, Default)]
pub(super) struct SessionHealth {
    pub(super) connecting: bool,
    pub(super) ping_failures: u32,
    pub(super) last_ok: Option<Instant>,
    /// The round trips of the last few successful pings.
    pub(super) recent_rtts: VecDeque<Duration>,
    /// The peer's own round trips to its peers, as its last ping answer gave them.
    pub(super) reported: BTreeMap<u64, Duration>,
}

impl SessionHealth {
    /// The link's round trip: the least of the last few pings (a ping queued behind a large
    /// frame or a busy peer says nothing about the link), none while pings fail.
    pub(super) fn rtt(&self) -> Option<Duration> {
        if self.ping_failures > 0 {
            return None;
        }
        self.recent_rtts.iter().min().copied()
    }

    /// Takes in one ping's answer (`None`: it failed).
    fn pinged(&mut self, answer: Option<(Duration, &PeerStatus)>) {
        let Some((rtt, status)) = answer else {
            self.ping_failures += 1;
            self.reported.clear();
            return;
        };
        self.ping_failures = 0;
        if self.recent_rtts.len() == RTT_SAMPLES {
            self.recent_rtts.pop_front();
        }
        self.recent_rtts.push_back(rtt);
        self.reported = status
            .link_rtt_us
            .iter()
            .map(|(&peer, &us)| (peer, Duration::from_micros(us)))
            .collect();
    }
}

impl Transport {
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
                if self.health(peer, |l| std::mem::replace(&mut l.connecting, true)) {
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
                    this.health(peer, |l| l.connecting = false);
                });
            } else {
                let this = self.clone();
                tokio::spawn(async move {
                    let sent = Instant::now();
                    let answer = this.call(peer, &PeerRequest::Status, PING_TIMEOUT).await;
                    let rtt = sent.elapsed();
                    let failures = this.health(peer, |l| {
                        match &answer {
                            Ok(PeerResponse::Status(status)) => l.pinged(Some((rtt, status))),
                            _ => l.pinged(None),
                        }
                        l.ping_failures
                    });
                    if failures >= MAX_PING_FAILURES {
                        this.health(peer, |l| l.ping_failures = 0);
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

pub(super) enum SupervisorMsg {
    Tick,
}

impl ractor::Message for SupervisorMsg {}

/// Keeps this node connected to every member (see the module docs).
pub(super) struct PeerSupervisor;

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

    use crate::{RaftSettings, StartArgs};

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
