//! `cluster.toml`: the cluster's name and secret, the admin token, Raft settings and the members.
//! Relative `data_dir`s are resolved against the directory of the file.
//!
//! Every key can be overridden from the environment (see [`ENV_PREFIX`] and [`apply_env`]), and
//! the secrets can come from files (`secret_file`, `admin_token_file`), so nothing secret has to
//! sit in a checked-in file.

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
    #[serde(default)]
    pub secret: String,
    /// A file holding `secret` (its first line), instead of `secret` itself.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Token for administrative endpoints (membership, `/clear`).
    #[serde(default)]
    pub admin_token: String,
    /// A file holding `admin_token` (its first line), instead of `admin_token` itself.
    #[serde(default)]
    pub admin_token_file: Option<PathBuf>,
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
    /// Encrypt and mutually authenticate the cluster transport.
    #[serde(default)]
    pub cluster_tls: Option<ClusterTlsConfig>,
    pub nodes: Vec<NodeConfig>,
}

/// PEM files for the cluster transport's TLS (paths relative to the configuration). Every node
/// trusts `ca_cert`; each presents `cert` (naming its `raft_addr`'s IP) with `key`. Per machine,
/// `CHORUS_CLUSTER_TLS__CERT` and `__KEY` point at that node's own.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterTlsConfig {
    pub ca_cert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// A connection that has not sent a whole request head this long after it opened or after
    /// its last answer (a slow or idle client) is closed.
    pub header_read_timeout_secs: u64,
    /// A request body must deliver at least 1 KiB in every window this long, or it is cut off.
    pub slow_body_timeout_secs: u64,
    /// Requests handled at once; past it a request is answered 503 `overloaded` at once.
    pub max_in_flight: usize,
    /// Open HTTP connections; past it a new connection is answered 503 and closed.
    pub max_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            header_read_timeout_secs: 30,
            slow_body_timeout_secs: 30,
            max_in_flight: 512,
            max_connections: 8192,
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
    /// PEM certificate chain and private key: with both, the HTTP port speaks only HTTPS.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
}

impl ClusterConfig {
    /// Reads `path`, applies the `CHORUS_…` environment variables over it, reads the secret
    /// files, and checks the result.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        Self::load_with_env(path, std::env::vars())
    }

    fn load_with_env(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the cluster configuration {}", path.display()))?;
        let mut table: toml::Table = toml::from_str(&text)
            .with_context(|| format!("{} is not a valid cluster configuration", path.display()))?;
        let applied = apply_env(&mut table, env)?;
        let mut config: Self = toml::Value::Table(table).try_into().with_context(|| {
            let from_env = if applied.is_empty() {
                String::new()
            } else {
                format!(" with {} applied", applied.join(", "))
            };
            format!(
                "{}{from_env} is not a valid cluster configuration",
                path.display()
            )
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for node in &mut config.nodes {
            for path in [
                Some(&mut node.data_dir),
                node.tls_cert.as_mut(),
                node.tls_key.as_mut(),
            ]
            .into_iter()
            .flatten()
            {
                if path.is_relative() {
                    *path = base.join(&*path);
                }
            }
        }
        if let Some(tls) = &mut config.cluster_tls {
            for path in [&mut tls.ca_cert, &mut tls.cert, &mut tls.key] {
                if path.is_relative() {
                    *path = base.join(&*path);
                }
            }
        }
        config.secret = from_file_or_given("secret", &config.secret, &config.secret_file, base)?;
        config.admin_token = from_file_or_given(
            "admin_token",
            &config.admin_token,
            &config.admin_token_file,
            base,
        )?;
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
            bail!("`secret` (or the first line of `secret_file`) must be at least 8 characters");
        }
        if self.admin_token.is_empty() {
            bail!("`admin_token` (or the first line of `admin_token_file`) must not be empty");
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
            if n.tls_cert.is_some() != n.tls_key.is_some() {
                bail!("node {}: give both tls_cert and tls_key, or neither", n.id);
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
        if self.http.max_in_flight == 0 || self.http.max_connections == 0 {
            bail!("[http] max_in_flight and max_connections must be positive");
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

/// Environment variables that override keys of the configuration start with this:
/// `CHORUS_SECRET` sets `secret`, `CHORUS_RAFT__HEARTBEAT_MS` sets `[raft] heartbeat_ms`, and
/// `CHORUS_NODES__2__HTTP_ADDR` sets `http_addr` of the node with id 2 (which it adds if the file
/// lacks it). Sections and keys are separated by two underscores, as keys hold single ones.
pub const ENV_PREFIX: &str = "CHORUS_";

/// `CHORUS_` variables that are not configuration keys: the command line's, the tests' and
/// the benchmarks'.
const NOT_CONFIG: &[&str] = &[
    "CHORUS_CONFIG",
    "CHORUS_NODE",
    "CHORUS_ADMIN_TOKEN",
    "CHORUS_PASSWORD",
    "CHORUS_TOKEN",
    "CHORUS_WEB_DIR",
    "CHORUS_NODE_LOG",
    "CHORUS_BIN",
    "CHORUS_RAFT",
    "CHORUS_BROWSER_TESTS",
    "CHORUS_PYTHON_GRPC",
    "CHORUS_TEST_KEEP_DIR",
];

/// Keys whose values are text even when they look like a number or a boolean.
fn is_text_key(key: &str) -> bool {
    ["secret", "admin_token", "cluster_name"].contains(&key)
        || ["_addr", "_url", "_dir", "_file"]
            .iter()
            .any(|suffix| key.ends_with(suffix))
}

/// Applies the `CHORUS_…` variables of `env` to the configuration `table`. A variable that names
/// no key is refused here or, with the same message as an unknown key in the file, when the
/// table is read.
fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> anyhow::Result<Vec<String>> {
    let mut applied = Vec::new();
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(name, _)| name.starts_with(ENV_PREFIX) && !NOT_CONFIG.contains(&name.as_str()))
        .collect();
    vars.sort();
    for (name, raw) in vars {
        let path: Vec<String> = name[ENV_PREFIX.len()..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        let unknown = || {
            anyhow::anyhow!(
                "environment variable {name} names no configuration key: use CHORUS_<KEY>, \
                 CHORUS_<SECTION>__<KEY> or CHORUS_NODES__<ID>__<KEY> (e.g. CHORUS_SECRET, \
                 CHORUS_RAFT__HEARTBEAT_MS, CHORUS_NODES__1__HTTP_ADDR)"
            )
        };
        let (slot, key) = match path.as_slice() {
            [key] => (&mut *table, key),
            [section, key] if section != "nodes" => {
                let section = table
                    .entry(section.clone())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                let Some(section) = section.as_table_mut() else {
                    return Err(unknown());
                };
                (section, key)
            }
            [nodes, id, key] if nodes == "nodes" => {
                let id: i64 = id.parse().map_err(|_| unknown())?;
                (node_table(table, id).ok_or_else(unknown)?, key)
            }
            _ => return Err(unknown()),
        };
        if key.is_empty() {
            return Err(unknown());
        }
        let value = env_value(key, &raw, slot.get(key.as_str()));
        slot.insert(key.clone(), value);
        applied.push(name);
    }
    Ok(applied)
}

/// The `[[nodes]]` table with `id`, added when the file has none.
fn node_table(table: &mut toml::Table, id: i64) -> Option<&mut toml::Table> {
    let nodes = table
        .entry("nodes")
        .or_insert_with(|| toml::Value::Array(Vec::new()))
        .as_array_mut()?;
    let at = nodes
        .iter()
        .position(|n| n.get("id").and_then(toml::Value::as_integer) == Some(id));
    let at = match at {
        Some(at) => at,
        None => {
            let mut node = toml::Table::new();
            node.insert("id".into(), toml::Value::Integer(id));
            nodes.push(toml::Value::Table(node));
            nodes.len() - 1
        }
    };
    nodes[at].as_table_mut()
}

/// `raw` as the TOML value `key` takes: the type of the file's value if it has one, text for
/// the keys that are text, else a number or boolean if it reads as one.
fn env_value(key: &str, raw: &str, current: Option<&toml::Value>) -> toml::Value {
    let text = || toml::Value::String(raw.to_string());
    let guess = || {
        if let Ok(n) = raw.parse::<i64>() {
            toml::Value::Integer(n)
        } else if let Ok(b) = raw.parse::<bool>() {
            toml::Value::Boolean(b)
        } else {
            text()
        }
    };
    match current {
        Some(toml::Value::String(_)) => text(),
        Some(_) => guess(),
        None if is_text_key(key) => text(),
        None => guess(),
    }
}

/// The first line of `file` (relative to `base`) if given, else `given`; not both.
fn from_file_or_given(
    name: &str,
    given: &str,
    file: &Option<PathBuf>,
    base: &Path,
) -> anyhow::Result<String> {
    let Some(file) = file else {
        return Ok(given.to_string());
    };
    if !given.is_empty() {
        bail!("set `{name}` or `{name}_file`, not both");
    }
    let path = base.join(file);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read `{name}_file` {}", path.display()))?;
    Ok(text.lines().next().unwrap_or_default().trim().to_string())
}

/// The node id in a host name ending in `-<N>` (`chorus-2` is node 2), for one node per machine
/// or per StatefulSet pod.
pub fn node_id_from_host_name(host: &str) -> anyhow::Result<u64> {
    let ordinal = host
        .rsplit_once('-')
        .map(|(_, n)| n)
        .and_then(|n| n.parse::<u64>().ok());
    match ordinal {
        Some(0) => bail!("the host name `{host}` ends in -0, but node ids start at 1; pass --node"),
        Some(id) => Ok(id),
        None => {
            bail!("pass --node <id> (or CHORUS_NODE): the host name `{host}` does not end in -<id>")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
cluster_name = "c"
secret = "file-secret"
admin_token = "file-admin"

[raft]
heartbeat_ms = 150

[[nodes]]
id = 1
http_addr = "127.0.0.1:8081"
raft_addr = "127.0.0.1:9081"
data_dir = "data/node1"
"#;

    fn load(file: &str, env: &[(&str, &str)]) -> anyhow::Result<ClusterConfig> {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("cluster.toml");
        std::fs::write(&path, file).expect("write");
        std::fs::write(dir.path().join("secret.txt"), "from-a-file-123\n").expect("write");
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        ClusterConfig::load_with_env(&path, env)
    }

    #[test]
    fn environment_variables_override_every_kind_of_key() {
        let c = load(
            FILE,
            &[
                ("CHORUS_SECRET", "12345678"),
                ("CHORUS_RAFT__HEARTBEAT_MS", "200"),
                ("CHORUS_RAFT__ELECTION_TIMEOUT_MIN_MS", "900"),
                ("CHORUS_RAFT__ELECTION_TIMEOUT_MAX_MS", "1800"),
                ("CHORUS_QUEUE__ANONYMOUS_VOTES", "true"),
                ("CHORUS_NODES__1__HTTP_ADDR", "127.0.0.1:7001"),
                ("CHORUS_NODES__2__HTTP_ADDR", "127.0.0.1:7002"),
                ("CHORUS_NODES__2__RAFT_ADDR", "127.0.0.1:7102"),
                ("CHORUS_NODES__2__DATA_DIR", "/var/lib/chorus"),
                ("CHORUS_CONFIG", "ignored.toml"),
                ("OTHER", "ignored"),
            ],
        )
        .expect("load");
        assert_eq!(c.secret, "12345678", "a numeric-looking secret stays text");
        assert_eq!(c.raft.heartbeat_ms, 200);
        assert!(c.queue.anonymous_votes);
        assert_eq!(c.node(1).expect("node 1").http_addr.port(), 7001);
        let two = c.node(2).expect("node 2 comes from the environment alone");
        assert_eq!(two.raft_addr.port(), 7102);
        assert_eq!(two.data_dir, PathBuf::from("/var/lib/chorus"));
    }

    #[test]
    fn unknown_variables_and_bad_values_are_refused_with_their_name() {
        let e = load(FILE, &[("CHORUS_RAFT__HEARTBEAT", "100")]).expect_err("unknown key");
        let e = format!("{e:#}");
        assert!(
            e.contains("CHORUS_RAFT__HEARTBEAT applied") && e.contains("`heartbeat`"),
            "{e}"
        );
        let e = load(FILE, &[("CHORUS_SECRTE", "12345678")]).expect_err("misspelt");
        assert!(format!("{e:#}").contains("secrte"), "{e:#}");
        let e = load(FILE, &[("CHORUS_A__B__C__D", "x")]).expect_err("too deep");
        assert!(format!("{e:#}").contains("CHORUS_A__B__C__D"), "{e:#}");
        let e = load(FILE, &[("CHORUS_RAFT__HEARTBEAT_MS", "soon")]).expect_err("not a number");
        assert!(format!("{e:#}").contains("heartbeat_ms"), "{e:#}");
    }

    #[test]
    fn secrets_come_from_files() {
        let file = FILE.replace(
            "secret = \"file-secret\"\n",
            "secret_file = \"secret.txt\"\n",
        );
        let c = load(&file, &[]).expect("load");
        assert_eq!(c.secret, "from-a-file-123");
        let both = load(FILE, &[("CHORUS_SECRET_FILE", "secret.txt")]).expect_err("both");
        assert!(format!("{both:#}").contains("not both"), "{both:#}");
        let c = load(
            FILE,
            &[("CHORUS_SECRET", ""), ("CHORUS_SECRET_FILE", "secret.txt")],
        )
        .expect("the environment can swap a secret for a file");
        assert_eq!(c.secret, "from-a-file-123");
    }

    #[test]
    fn the_node_id_comes_from_the_host_names_ordinal() {
        assert_eq!(node_id_from_host_name("chorus-2").expect("id"), 2);
        assert_eq!(node_id_from_host_name("music-box-12").expect("id"), 12);
        assert!(node_id_from_host_name("chorus-0").is_err());
        assert!(node_id_from_host_name("laptop").is_err());
    }
}
