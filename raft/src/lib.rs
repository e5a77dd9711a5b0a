//! Replication: openraft wired to the store (segment-file log, sled state machine) and to a
//! ractor_cluster transport.
//!
//! Layout:
//! - [`protocol`]: the node-to-node messages (bincode over one ractor_cluster RPC).
//! - [`transport`]: the ractor_cluster node server, the endpoint actor that answers peers, the
//!   supervisor actor that (re)connects to peers and drops dead sessions, and `call` with a
//!   timeout on every remote request.
//! - [`by_hash`]: audio chunks pushed to peers ahead of their writes, which then travel
//!   without the bytes.
//! - [`batch`]: a queue handed to a sender in batches, with a bounded number in flight.
//! - [`forward`]: batching of the writes a follower forwards to the leader.
//! - [`propose`]: on the leader, waiting writes grouped into one log entry (`Command::Batch`).
//! - [`network`]: openraft's `RaftNetwork` on top of the transport.
//! - [`replica`]: [`Replica`], the handle the API uses: `write` (forwarded to the leader, retried
//!   safely across leader changes), `read_barrier` (linearizable reads on any node), membership.
//! - [`bootstrap`]: initialising a brand-new cluster exactly once.
//! - [`compaction`]: snapshots and log purges by the log's size, beside openraft's by count.

mod batch;
pub mod bootstrap;
pub mod by_hash;
mod chunk_fetch;
mod compaction;
mod forward;
pub mod metrics;
pub mod network;
mod propose;
pub mod protocol;
pub mod replica;
pub mod snapshot_transfer;
pub mod transport;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

pub use chunk_fetch::Fetched;
pub use protocol::WriteReceipt;
pub use replica::{ChunkRepair, ClusterStatus, MemberStatus, Replica, ReplicaError};
pub use storage::{ChorusNode, TypeConfig};

pub type Raft = openraft::Raft<TypeConfig>;

/// Raft timing and log-compaction settings (the `[raft]` table of `cluster.toml`).
#[derive(Debug, Clone)]
pub struct RaftSettings {
    pub heartbeat: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// Build a snapshot after this many applied entries since the last one.
    pub snapshot_every: u64,
    /// Entries kept in the log after a snapshot (for followers that are only a little behind).
    pub keep_logs_after_snapshot: u64,
    /// Also build a snapshot once the log since the last one takes this many bytes (0: only by
    /// count; see `compaction`).
    pub snapshot_every_bytes: u64,
    /// The log behind a snapshot is also cut down to this many bytes (see `compaction`).
    pub keep_log_bytes_after_snapshot: u64,
    /// Upper bound on how long a client request waits for the cluster (then 503).
    pub request_timeout: Duration,
}

impl Default for RaftSettings {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_millis(150),
            election_timeout_min: Duration::from_millis(600),
            election_timeout_max: Duration::from_millis(1200),
            snapshot_every: 5000,
            keep_logs_after_snapshot: 1000,
            snapshot_every_bytes: 64 << 20,
            keep_log_bytes_after_snapshot: 64 << 20,
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// What a node needs to join its cluster.
#[derive(Debug, Clone)]
pub struct StartArgs {
    pub node_id: u64,
    pub cluster_name: String,
    /// Shared secret; the ractor_cluster cookie that authenticates peers.
    pub secret: String,
    pub raft_listen: SocketAddr,
    /// The members from `cluster.toml`: used to bootstrap a new cluster and to find peers
    /// before the replicated membership is known.
    pub initial_members: BTreeMap<u64, ChorusNode>,
    pub settings: RaftSettings,
    /// Encrypt and mutually authenticate the cluster transport (`[cluster_tls]`).
    pub tls: Option<ClusterTls>,
}

/// TLS for node-to-node connections: the acceptor asks every connecting node for a certificate
/// of the cluster's CA, and the connector presents this node's and checks the peer's against
/// its `raft_addr`'s IP.
#[derive(Clone)]
pub struct ClusterTls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub connector: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterTls")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid raft settings: {0}")]
    Config(#[from] openraft::ConfigError),
    #[error("cannot start the cluster transport on {addr}: {message}")]
    Transport { addr: SocketAddr, message: String },
    #[error("cannot start an actor: {0}")]
    Actor(String),
    #[error("cannot start raft: {0}")]
    Raft(#[from] openraft::error::Fatal<u64>),
}

/// Starts this node's Raft, transport and supervisor, and bootstraps a new cluster if needed.
pub async fn start(
    args: StartArgs,
    log: storage::LogStore,
    sm: storage::StateMachineStore,
) -> Result<Replica, StartError> {
    let s = &args.settings;
    let config = openraft::Config {
        cluster_name: args.cluster_name.clone(),
        heartbeat_interval: s.heartbeat.as_millis() as u64,
        election_timeout_min: s.election_timeout_min.as_millis() as u64,
        election_timeout_max: s.election_timeout_max.as_millis() as u64,
        // Snapshot chunks and append batches stay well under ractor_cluster's frame limit.
        snapshot_max_chunk_size: 4 * 1024 * 1024,
        // Small writes replicate in batches of up to this many entries; frames carrying audio
        // chunks (1 MiB entries) are cut by size in `network` (`MAX_APPEND_BYTES`).
        max_payload_entries: 512,
        install_snapshot_timeout: 10_000,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(s.snapshot_every),
        max_in_snapshot_log_to_keep: s.keep_logs_after_snapshot,
        ..Default::default()
    }
    .validate()?;

    let transport = transport::Transport::start(&args).await?;
    let network = network::Network::new(transport.clone());
    let reader = sm.reader();
    let raft = Raft::new(
        args.node_id,
        std::sync::Arc::new(config),
        network,
        log.clone(),
        sm,
    )
    .await?;
    compaction::spawn(
        raft.clone(),
        log.clone(),
        compaction::SizePolicy {
            snapshot_every: s.snapshot_every_bytes,
            keep: s.keep_log_bytes_after_snapshot,
        },
    );
    let replica = Replica::new(
        args.node_id,
        raft,
        transport.clone(),
        reader,
        log,
        s.request_timeout,
        &args.secret,
    );
    transport.serve(replica.clone()).await?;
    // Requests waiting for an entry to apply here answer "shutting down" at once when the Raft
    // core stops, instead of waiting out their deadline.
    let stopped = replica.clone();
    tokio::spawn(async move {
        stopped.failed().await;
        stopped.state().close_waiters();
    });
    replica.watch_membership(args.initial_members.clone());
    metrics::watch_leader_changes(replica.raft());
    tokio::spawn(replica.clone().keep_leadership_well_placed());
    tokio::spawn(bootstrap::bootstrap(replica.clone(), args.initial_members));
    Ok(replica)
}
