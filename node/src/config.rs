//! `cluster.toml`: the cluster's name and secret, the admin token, Raft settings and the members.
//! Relative `data_dir`s are resolved against the directory of the file.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub cluster_name: String,
    /// Shared secret nodes use to authenticate each other.
    pub secret: String,
    /// Token for administrative endpoints (membership, `/clear`).
    pub admin_token: String,
    #[serde(default)]
    pub queue: QueueConfig,
    #[serde(default)]
    pub users: UsersConfig,
    #[serde(default)]
    pub tracks: TracksConfig,
    #[serde(default)]
    pub raft: RaftConfig,
    #[serde(default)]
    pub http: HttpConfig,
    pub nodes: Vec<NodeConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// A connection that has not sent a whole request head this long after it opened or after
    /// its last answer (a slow or idle client) is closed.
    pub header_read_timeout_secs: u64,
    /// A request body must deliver at least 1 KiB in every window this long, or it is cut off.
    pub slow_body_timeout_secs: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            header_read_timeout_secs: 30,
            slow_body_timeout_secs: 30,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UsersConfig {
    /// How long a login token (JWT) is valid.
    pub token_ttl_secs: u64,
}

impl Default for UsersConfig {
    fn default() -> Self {
        Self {
            token_ttl_secs: 24 * 3600,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracksConfig {
    /// Largest MP3 accepted by `POST /tracks/upload`, in MiB.
    pub max_upload_mb: u64,
    /// An upload that receives no data for this long (its node or client died) is dropped.
    pub upload_idle_timeout_secs: u64,
}

impl Default for TracksConfig {
    fn default() -> Self {
        Self {
            max_upload_mb: 50,
            upload_idle_timeout_secs: 600,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Allow `POST /clear` without the admin token (the seed's test scripts call it).
    pub allow_anonymous_clear: bool,
    /// Count anonymous votes, each one ±1, as the seed does (its test scripts vote without
    /// logging in). Off, an anonymous vote gets 401 and every vote is one per user.
    pub anonymous_votes: bool,
    /// Most tracks one user may have in the queue at once; 0 = no limit.
    pub max_tracks_per_user: u32,
    /// Distinct users whose `POST /skip` skips the playing track; 0 turns skipping off.
    pub skip_votes: u32,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            allow_anonymous_clear: false,
            anonymous_votes: false,
            max_tracks_per_user: 0,
            skip_votes: 2,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftConfig {
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    pub snapshot_every: u64,
    pub keep_logs_after_snapshot: u64,
    pub snapshot_every_mib: u64,
    pub keep_log_mib_after_snapshot: u64,
    pub request_timeout_ms: u64,
}

impl Default for RaftConfig {
    fn default() -> Self {
        let d = raft::RaftSettings::default();
        Self {
            heartbeat_ms: d.heartbeat.as_millis() as u64,
            election_timeout_min_ms: d.election_timeout_min.as_millis() as u64,
            election_timeout_max_ms: d.election_timeout_max.as_millis() as u64,
            snapshot_every: d.snapshot_every,
            keep_logs_after_snapshot: d.keep_logs_after_snapshot,
            snapshot_every_mib: d.snapshot_every_bytes >> 20,
            keep_log_mib_after_snapshot: d.keep_log_bytes_after_snapshot >> 20,
            request_timeout_ms: d.request_timeout.as_millis() as u64,
        }
    }
}

impl RaftConfig {
    pub fn settings(&self) -> raft::RaftSettings {
        raft::RaftSettings {
            heartbeat: Duration::from_millis(self.heartbeat_ms),
            election_timeout_min: Duration::from_millis(self.election_timeout_min_ms),
            election_timeout_max: Duration::from_millis(self.election_timeout_max_ms),
            snapshot_every: self.snapshot_every,
            keep_logs_after_snapshot: self.keep_logs_after_snapshot,
            snapshot_every_bytes: self.snapshot_every_mib << 20,
            keep_log_bytes_after_snapshot: self.keep_log_mib_after_snapshot << 20,
            request_timeout: Duration::from_millis(self.request_timeout_ms),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub id: u64,
    pub http_addr: SocketAddr,
    pub raft_addr: SocketAddr,
    /// The base URL clients reach this node at (behind a proxy, say), for the links the API
    /// hands out; default `http://<http_addr>`.
    #[serde(default)]
    pub public_url: Option<String>,
    /// Where the seed's gRPC queue service listens (none without it).
    #[serde(default)]
    pub grpc_addr: Option<SocketAddr>,
    pub data_dir: PathBuf,
}

impl ClusterConfig {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the cluster configuration {}", path.display()))?;
        let mut config: Self = toml::from_str(&text)
            .with_context(|| format!("{} is not a valid cluster configuration", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for node in &mut config.nodes {
            if node.data_dir.is_relative() {
                node.data_dir = base.join(&node.data_dir);
            }
        }
        config
            .validate()
            .with_context(|| format!("in {}", path.display()))?;
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.nodes.is_empty() {
            bail!("no [[nodes]]: list at least one node");
        }
        if self.secret.len() < 8 {
            bail!("`secret` must be at least 8 characters");
        }
        if self.admin_token.is_empty() {
            bail!("`admin_token` must not be empty");
        }
        let mut ids = HashSet::new();
        let mut addrs = HashSet::new();
        for n in &self.nodes {
            if !ids.insert(n.id) {
                bail!("node id {} appears twice", n.id);
            }
            if let Some(url) = &n.public_url
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                bail!(
                    "node {}: public_url `{url}` must start with http:// or https://",
                    n.id
                );
            }
            for addr in [Some(n.http_addr), Some(n.raft_addr), n.grpc_addr]
                .into_iter()
                .flatten()
            {
                if !addrs.insert(addr) {
                    bail!("address {addr} is used twice");
                }
            }
        }
        let r = &self.raft;
        if r.heartbeat_ms == 0 || r.election_timeout_min_ms <= 2 * r.heartbeat_ms {
            bail!("[raft] election_timeout_min_ms must be more than twice heartbeat_ms");
        }
        if r.election_timeout_max_ms <= r.election_timeout_min_ms {
            bail!("[raft] election_timeout_max_ms must be more than election_timeout_min_ms");
        }
        if r.snapshot_every == 0 || r.request_timeout_ms == 0 {
            bail!("[raft] snapshot_every and request_timeout_ms must be positive");
        }
        for (name, mib) in [
            ("snapshot_every_mib", r.snapshot_every_mib),
            ("keep_log_mib_after_snapshot", r.keep_log_mib_after_snapshot),
        ] {
            if mib > 1024 * 1024 {
                bail!("[raft] {name} must be at most 1048576 (1 TiB)");
            }
        }
        if self.http.header_read_timeout_secs == 0 || self.http.slow_body_timeout_secs == 0 {
            bail!("[http] header_read_timeout_secs and slow_body_timeout_secs must be positive");
        }
        if self.users.token_ttl_secs == 0 {
            bail!("[users] token_ttl_secs must be positive");
        }
        let t = &self.tracks;
        if t.max_upload_mb == 0 || t.max_upload_mb > 1024 * 1024 {
            bail!("[tracks] max_upload_mb must be between 1 and 1048576");
        }
        if t.upload_idle_timeout_secs == 0 {
            bail!("[tracks] upload_idle_timeout_secs must be positive");
        }
        Ok(())
    }

    pub fn node(&self, id: u64) -> anyhow::Result<&NodeConfig> {
        self.nodes.iter().find(|n| n.id == id).with_context(|| {
            let known: Vec<_> = self.nodes.iter().map(|n| n.id).collect();
            format!("node {id} is not in the configuration (its nodes are {known:?})")
        })
    }

    pub fn members(&self) -> BTreeMap<u64, storage::ChorusNode> {
        self.nodes
            .iter()
            .map(|n| {
                let node = storage::ChorusNode {
                    http_addr: n.http_addr.to_string(),
                    raft_addr: n.raft_addr.to_string(),
                };
                (n.id, node)
            })
            .collect()
    }
}
