//! [`Replica`]: how the rest of chorus reads and writes the replicated state.
//!
//! - `write` proposes a [`Command`]. Any node may call it: the request goes to whichever node is
//!   leader (over the transport when that is another node) and is retried across leader changes
//!   until a deadline. Every write carries a dedupe key, so a retry of a write that did commit
//!   returns the first result instead of applying twice. After the leader answers, `write` waits
//!   until this node has applied the entry, so the caller reads its own write locally.
//!   `write_reading_back` is for a caller that reads the state right after its write (a vote
//!   answers with the queue): the leader reads it after applying the write and sends it in its
//!   [`WriteReceipt`], and this node does not wait to apply the entry itself. A write travels as
//!   a `ClientWrites` request: small ones join a batch to the leader (`crate::forward`), one
//!   carrying audio goes alone, as a batch of one.
//! - `read_barrier` makes the next local read linearizable: it gets a read index from the leader
//!   (which confirms it still leads with a heartbeat round) and waits until this node has
//!   applied up to it. Concurrent reads share one such round (`read_rounds`).
//!
//! The client façade is here; `route` decides which node a request goes to and when to try
//! again, `peer` serves what other nodes ask of this one, `read_rounds` shares ReadIndex rounds
//! between reads, `chunks` checks and repairs this node's audio, `handover` and `placement` move
//! leadership (off a stopping node, off slow links).

mod chunks;
mod handover;
mod peer;
mod placement;
mod read_rounds;
mod route;

pub use chunks::ChunkRepair;
use read_rounds::ReadRounds;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openraft::TryAsRef;
use openraft::error::{ForwardToLeader, RaftError};
use storage::{
    ApplyWaitError, ChorusNode, ChunkStore, Command, LogStore, ReadBack, ReadBackValue, Request,
    StateReader,
};

use crate::Raft;
use crate::forward::{Forwarder, MAX_BATCHED_SIZE};
use crate::metrics;
use crate::propose::Proposer;
use crate::protocol::{ForwardError, PeerRequest, PeerResponse, WriteReceipt};
use crate::transport::{Transport, TransportError};

/// Longest single forwarding attempt; a write still has the rest of its deadline to find a new
/// leader if this one went away.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(2500);
/// How long a status query waits for openraft's core (it answers in microseconds when healthy).
const CORE_ANSWER_TIMEOUT: Duration = Duration::from_secs(1);
/// Adding a member waits for it to catch up as a learner first (given up on sooner if it makes
/// no progress: `peer::CATCH_UP_STALL`).
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, thiserror::Error)]
pub enum ReplicaError {
    #[error(
        "no leader is reachable: the cluster may be electing one, or this node is cut off from a majority"
    )]
    NoLeader,
    #[error(
        "the leader did not confirm the request in time ({0}); it may or may not have been applied"
    )]
    Unknown(String),
    #[error("this node has not caught up with the cluster in time")]
    Lagging,
    #[error("{0}")]
    Rejected(String),
    #[error("this node is shutting down")]
    ShuttingDown,
    /// This node is not in the cluster's membership (it was removed): it serves nothing that
    /// needs the cluster.
    #[error("{0}")]
    NotMember(String),
    /// This node's own disk failed it (not the request's fault).
    #[error("this node's storage failed: {0}")]
    Storage(String),
}

#[derive(Debug, Clone)]
pub struct MemberStatus {
    pub id: u64,
    pub node: ChorusNode,
    pub voter: bool,
    pub reachable: bool,
    /// This node's round trip to it (`Transport::link_rtts`).
    pub rtt: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct ClusterStatus {
    pub node_id: u64,
    pub leader_id: Option<u64>,
    pub term: u64,
    pub state: String,
    /// openraft's core answered the status query within [`CORE_ANSWER_TIMEOUT`].
    pub raft_core_answering: bool,
    pub commit_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub last_log_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    pub members: Vec<MemberStatus>,
}

impl ClusterStatus {
    /// Ready: a leader is known, the Raft core answers, and everything known to be committed is
    /// applied here.
    pub fn ready(&self) -> bool {
        let member = self.members.is_empty() || self.members.iter().any(|m| m.id == self.node_id);
        member
            && self.leader_id.is_some()
            && self.raft_core_answering
            && self.applied_index >= self.commit_index
    }
}

struct Inner {
    id: u64,
    raft: Raft,
    transport: Transport,
    reader: StateReader,
    log: LogStore,
    /// Random per process start, so dedupe keys of a restarted node never collide with old ones.
    boot: u64,
    seq: AtomicU64,
    timeout: Duration,
    reads: ReadRounds,
    forwarder: Forwarder,
    proposer: Proposer,
    /// The snapshot a leader is sending this node, if any.
    incoming: crate::snapshot_transfer::Incoming,
    /// Set while a leader hands over (`handover`): it refuses new work.
    handing_over: std::sync::atomic::AtomicBool,
    /// Set once this node began stopping: it no longer moves leadership about.
    stopping: std::sync::atomic::AtomicBool,
    /// One handover at a time.
    handover: tokio::sync::Mutex<()>,
    /// The cluster's secret: the key of the proofs on pushed chunks (`crate::by_hash`).
    secret: Vec<u8>,
}

#[derive(Clone)]
pub struct Replica {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("id", &self.inner.id)
            .finish_non_exhaustive()
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Maps a local Raft error to what a forwarding node needs to know.
pub(crate) fn forward_error<E>(e: RaftError<u64, E>) -> ForwardError
where
    E: TryAsRef<ForwardToLeader<u64, ChorusNode>> + std::error::Error,
{
    if e.forward_to_leader::<ChorusNode>().is_some() {
        return ForwardError::NotLeader;
    }
    match e {
        RaftError::APIError(e) => ForwardError::Rejected(e.to_string()),
        RaftError::Fatal(e) => ForwardError::Failed(e.to_string()),
    }
}

impl Replica {
    pub(crate) fn new(
        id: u64,
        raft: Raft,
        transport: Transport,
        reader: StateReader,
        log: LogStore,
        timeout: Duration,
        secret: &str,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                secret: secret.as_bytes().to_vec(),
                proposer: Proposer::start(raft.clone()),
                incoming: Default::default(),
                handing_over: Default::default(),
                stopping: Default::default(),
                handover: Default::default(),
                id,
                raft,
                reader,
                log,
                boot: rand::random(),
                seq: AtomicU64::new(0),
                timeout,
                reads: ReadRounds::default(),
                forwarder: Forwarder::start(transport.clone(), ATTEMPT_TIMEOUT),
                transport,
            }),
        }
    }

    pub fn id(&self) -> u64 {
        self.inner.id
    }

    pub(crate) fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    /// This node's addresses as the cluster's membership records them (`None` before this
    /// node has learned the membership).
    pub fn own_addresses(&self) -> Option<ChorusNode> {
        let metrics = self.inner.raft.metrics().borrow().clone();
        metrics
            .membership_config
            .membership()
            .get_node(&self.inner.id)
            .cloned()
    }

    pub(crate) fn secret(&self) -> &[u8] {
        &self.inner.secret
    }

    pub(crate) fn chunk_store(&self) -> Arc<ChunkStore> {
        self.inner.reader.chunk_store().clone()
    }

    pub(crate) fn transport(&self) -> &Transport {
        &self.inner.transport
    }

    /// The locally applied state. Call [`Self::read_barrier`] first for a linearizable read.
    pub fn state(&self) -> &StateReader {
        &self.inner.reader
    }

    pub fn request_timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// Proposes `command`; `dedupe_key` (from a client's `Idempotency-Key`) makes retries safe
    /// across requests. Returns once the entry is committed and applied on this node.
    pub async fn write(
        &self,
        command: Command,
        dedupe_key: Option<String>,
    ) -> Result<WriteReceipt, ReplicaError> {
        tracing::trace!(target: "chorus::stages", stage = "write.start");
        let started = Instant::now();
        let receipt = self.route_write(command, dedupe_key, None).await?;
        self.wait_applied(receipt.index, started + self.inner.timeout)
            .await?;
        tracing::trace!(target: "chorus::stages", stage = "write.done");
        Ok(receipt)
    }

    /// [`Self::write`] for a caller that reads `read_back` from the state right after the write:
    /// the leader reads it once it has applied the write and sends it with its receipt, so this
    /// returns without waiting for this node to apply the entry (a stale read here may not show
    /// the write yet; a linearizable one does). The wait it saves is for the commit to reach this
    /// node and for this node's own log flush, where the commit needed the leader and any one
    /// follower. The value read is returned beside the receipt (whose `read_back` is then empty).
    pub async fn write_reading_back(
        &self,
        command: Command,
        dedupe_key: Option<String>,
        read_back: ReadBack,
    ) -> Result<(WriteReceipt, ReadBackValue), ReplicaError> {
        tracing::trace!(target: "chorus::stages", stage = "write.start");
        let mut receipt = self
            .route_write(command, dedupe_key, Some(read_back))
            .await?;
        // A leader reads back whatever it is asked to (`propose_write`); without it the write
        // committed, but this answer is not one this node can give.
        let Some(value) = receipt.read_back.take() else {
            return Err(ReplicaError::Unknown(format!(
                "the leader answered write {} without what it read back",
                receipt.index
            )));
        };
        tracing::trace!(target: "chorus::stages", stage = "write.done");
        Ok((receipt, value))
    }

    /// Runs one write on the leader (see [`Self::route`]).
    async fn route_write(
        &self,
        command: Command,
        dedupe_key: Option<String>,
        read_back: Option<ReadBack>,
    ) -> Result<WriteReceipt, ReplicaError> {
        let request = self.request(command, dedupe_key);
        let req = PeerRequest::ClientWrites(vec![(request, read_back)]);
        self.route(req, self.inner.timeout, |r| match r {
            PeerResponse::ClientWrites(mut results) if results.len() == 1 => results.pop(),
            _ => None,
        })
        .await
    }

    fn request(&self, command: Command, dedupe_key: Option<String>) -> Request {
        let seq = self.inner.seq.fetch_add(1, Ordering::Relaxed);
        let key = dedupe_key
            .unwrap_or_else(|| format!("w:{}:{:x}:{seq}", self.inner.id, self.inner.boot));
        Request {
            dedupe_key: Some(key),
            at_ms: now_ms(),
            command,
        }
    }

    /// On the leader: proposes `request`, then reads `read_back`, if any, from the state, which
    /// has applied the write by then (openraft answers a client write after applying it; the
    /// wait only guards that).
    async fn propose_write(
        &self,
        request: Request,
        read_back: Option<ReadBack>,
    ) -> Result<WriteReceipt, ForwardError> {
        let mut receipt = self.inner.proposer.propose(request).await?;
        if let Some(read_back) = read_back {
            let deadline = Instant::now() + self.inner.timeout;
            self.wait_applied(receipt.index, deadline)
                .await
                .map_err(|e| ForwardError::Failed(e.to_string()))?;
            receipt.read_back = Some(self.inner.reader.read(|s| read_back.read(s)));
        }
        Ok(receipt)
    }

    /// Waits until a read of the local state reflects every write acknowledged before the call.
    pub async fn read_barrier(&self) -> Result<(), ReplicaError> {
        let deadline = Instant::now() + self.inner.timeout;
        let ask = || {
            let remaining = deadline.saturating_duration_since(Instant::now());
            self.route(PeerRequest::ReadIndex, remaining, |r| match r {
                PeerResponse::ReadIndex(r) => Some(r),
                _ => None,
            })
        };
        let index = self.inner.reads.index(deadline, ask).await?;
        self.wait_applied(index, deadline).await
    }

    async fn wait_applied(&self, index: u64, deadline: Instant) -> Result<(), ReplicaError> {
        // Give a write that did commit a moment to apply here even if its deadline is spent.
        let deadline = deadline.max(Instant::now() + Duration::from_millis(100));
        self.inner
            .reader
            .wait_applied(index, deadline.into())
            .await
            .map_err(|e| match e {
                ApplyWaitError::TimedOut => ReplicaError::Lagging,
                ApplyWaitError::Closed => ReplicaError::ShuttingDown,
            })
    }

    /// Adds a node: first as a learner (waiting for it to catch up), then as a voter.
    pub async fn add_member(&self, id: u64, node: ChorusNode) -> Result<(), ReplicaError> {
        self.route(
            PeerRequest::AddMember { id, node },
            MEMBERSHIP_TIMEOUT,
            membership_reply,
        )
        .await
    }

    pub async fn remove_member(&self, id: u64) -> Result<(), ReplicaError> {
        self.route(
            PeerRequest::RemoveMember { id },
            MEMBERSHIP_TIMEOUT,
            membership_reply,
        )
        .await
    }

    /// Runs `req` on the leader, wherever it is, retrying across leader changes until `timeout`
    /// (the policy: `route::route`).
    async fn route<T>(
        &self,
        req: PeerRequest,
        timeout: Duration,
        extract: fn(PeerResponse) -> Option<Result<T, ForwardError>>,
    ) -> Result<T, ReplicaError> {
        self.check_member()?;
        let deadline = tokio::time::Instant::now() + timeout;
        // The server metrics change only with the vote, role, leader or membership (the full
        // metrics are sent on every pass of openraft's core loop, which would wake every
        // request waiting here thousands of times a second under load).
        let leaders = self.inner.raft.server_metrics();
        route::route(self, leaders, &req, deadline, extract).await
    }

    /// Refuses to serve for a node the membership no longer names, saying which nodes to use.
    /// (A node that has not learned any membership yet, being new, waits for a leader instead.)
    fn check_member(&self) -> Result<(), ReplicaError> {
        let metrics = self.inner.raft.metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        if membership.nodes().next().is_none() || membership.get_node(&self.inner.id).is_some() {
            return Ok(());
        }
        let members: Vec<String> = membership
            .nodes()
            .map(|(id, n)| format!("node {id} at {}", n.http_addr))
            .collect();
        Err(ReplicaError::NotMember(format!(
            "node {} was removed from the cluster and serves nothing that needs it; use {}",
            self.inner.id,
            members.join(", ")
        )))
    }

    /// True when this node has never been part of a cluster.
    pub fn is_pristine(&self) -> bool {
        let metrics = self.inner.raft.metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        let no_membership = membership.get_node(&self.inner.id).is_none()
            && membership.voter_ids().next().is_none();
        no_membership && self.inner.log.is_pristine().unwrap_or(false)
    }

    pub async fn status(&self) -> ClusterStatus {
        let m = self.inner.raft.metrics().borrow().clone();
        // The commit index lives in openraft's core; a core that does not answer (stuck on its
        // storage) leaves the node unready rather than the caller waiting.
        let committed = tokio::time::timeout(
            CORE_ANSWER_TIMEOUT,
            self.inner
                .raft
                .with_raft_state(|s| s.committed.map(|l| l.index)),
        )
        .await;
        let raft_core_answering = committed.is_ok();
        let commit_index = committed.ok().and_then(Result::ok).flatten();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let rtts = self.inner.transport.link_rtts();
        let members = membership
            .nodes()
            .map(|(id, node)| MemberStatus {
                id: *id,
                node: node.clone(),
                voter: voters.contains(id),
                reachable: self.inner.transport.reachable(*id),
                rtt: rtts.get(id).copied(),
            })
            .collect();
        ClusterStatus {
            node_id: self.inner.id,
            leader_id: m.current_leader,
            term: m.current_term,
            state: format!("{:?}", m.state),
            raft_core_answering,
            commit_index,
            applied_index: m.last_applied.map(|l| l.index),
            last_log_index: m.last_log_index,
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            members,
        }
    }

    /// Keeps the transport connected to the current members (`initial` until one is known).
    pub(crate) fn watch_membership(&self, initial: BTreeMap<u64, ChorusNode>) {
        let mut metrics = self.inner.raft.metrics();
        let transport = self.inner.transport.clone();
        tokio::spawn(async move {
            loop {
                let peers: BTreeMap<u64, String> = {
                    let m = metrics.borrow_and_update();
                    let nodes: BTreeMap<u64, String> = m
                        .membership_config
                        .membership()
                        .nodes()
                        .map(|(id, n)| (*id, n.raft_addr.clone()))
                        .collect();
                    if nodes.is_empty() {
                        initial
                            .iter()
                            .map(|(id, n)| (*id, n.raft_addr.clone()))
                            .collect()
                    } else {
                        nodes
                    }
                };
                transport.set_peers(peers);
                if metrics.changed().await.is_err() {
                    return; // raft stopped
                }
            }
        });
    }

    /// Stops Raft; the caller then flushes the store.
    /// Resolves when the Raft core stops on its own (a fatal storage error or a panic inside
    /// openraft), with the reason. A node in that state can no longer serve correctly.
    pub async fn failed(&self) -> String {
        let mut metrics = self.inner.raft.metrics();
        loop {
            if let Err(fatal) = &metrics.borrow_and_update().running_state {
                return fatal.to_string();
            }
            if metrics.changed().await.is_err() {
                return "the Raft core is gone".to_string();
            }
        }
    }

    pub async fn shutdown(&self) {
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::warn!(error = %e, "raft did not shut down cleanly");
        }
    }
}

impl route::Nodes for Replica {
    /// A local call when `leader` is this node, else a forward.
    async fn attempt(
        &self,
        leader: u64,
        req: &PeerRequest,
        remaining: Duration,
    ) -> Result<PeerResponse, TransportError> {
        if leader == self.inner.id {
            // A leader that lost its majority would wait for the commit forever.
            return tokio::time::timeout(remaining, self.handle_peer(req.clone()))
                .await
                .map_err(|_| TransportError::Timeout(leader, remaining));
        }
        // A membership change waits for a learner to catch up: one attempt.
        let wait = match req {
            PeerRequest::AddMember { .. } | PeerRequest::RemoveMember { .. } => remaining,
            _ => remaining.min(ATTEMPT_TIMEOUT),
        };
        match batchable_write(req) {
            // Joins the next batch to this leader.
            Some((write, read_back)) => self
                .inner
                .forwarder
                .write(leader, write.clone(), read_back, wait)
                .await
                .map(|r| PeerResponse::ClientWrites(vec![r])),
            // Anything else, including a write too large to batch, goes alone; one carrying
            // audio goes without it first (`crate::by_hash`), with it if the leader lacks it.
            None => {
                let started = tokio::time::Instant::now();
                if let Some(light) = without_audio(req) {
                    match self.inner.transport.call(leader, &light, wait).await {
                        Ok(PeerResponse::LacksAudio(_)) => {
                            metrics::audio_sent(metrics::AudioSent::Inline);
                        }
                        answer => {
                            metrics::audio_sent(metrics::AudioSent::ByHash);
                            return answer;
                        }
                    }
                }
                let left = wait.saturating_sub(started.elapsed());
                self.inner.transport.call(leader, req, left).await
            }
        }
    }
}

/// `req` without the audio it carries, if it is a forwarded write that carries some.
fn without_audio(req: &PeerRequest) -> Option<PeerRequest> {
    let PeerRequest::ClientWrites(writes) = req else {
        return None;
    };
    writes.iter().any(|(r, _)| r.carries_audio()).then(|| {
        PeerRequest::ClientWrites(
            writes
                .iter()
                .map(|(r, read_back)| (r.without_audio(), *read_back))
                .collect(),
        )
    })
}

/// The one write of `req` if it is small enough to join a batch to the leader
/// (`crate::forward`); writes carrying audio go alone.
fn batchable_write(req: &PeerRequest) -> Option<(&Request, Option<ReadBack>)> {
    match req {
        PeerRequest::ClientWrites(writes) => match writes.as_slice() {
            [(write, read_back)] if write.approx_size() <= MAX_BATCHED_SIZE => {
                Some((write, *read_back))
            }
            _ => None,
        },
        _ => None,
    }
}

fn membership_reply(r: PeerResponse) -> Option<Result<(), ForwardError>> {
    match r {
        PeerResponse::Membership(r) => Some(r),
        _ => None,
    }
}

pub(crate) type ServerMetrics =
    tokio::sync::watch::Receiver<openraft::metrics::RaftServerMetrics<u64, ChorusNode>>;

/// Waits until openraft's server metrics satisfy `done`: true once they do, false if the Raft
/// stops first.
pub(crate) async fn server_metrics_until(
    mut metrics: ServerMetrics,
    done: impl Fn(&openraft::metrics::RaftServerMetrics<u64, ChorusNode>) -> bool,
) -> bool {
    loop {
        if done(&metrics.borrow_and_update()) {
            return true;
        }
        if metrics.changed().await.is_err() {
            return false;
        }
    }
}
