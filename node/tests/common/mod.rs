//! Test harness: a real `chorus` cluster made of child processes on free loopback ports, with
//! its configuration, data directories and logs in a temporary directory.
//!
//! Every wait is a poll against a deadline (never a fixed sleep). When a test panics, the tail
//! of every node's log is printed before the processes are killed.

// Each integration-test binary uses its own subset of the harness.
#![allow(dead_code)]

pub mod music;
pub mod sse;
pub mod webdriver;

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tempfile::TempDir;

/// How long a whole cluster, or one restarted node, may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a leader election or a catch-up may take on a loaded machine.
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a request is retried while it gets 503 (or the connection fails).
pub const RETRY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a node may take to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Per-request HTTP timeout (the cluster answers within `request_timeout_ms` = 5 s).
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between two polls.
pub const POLL: Duration = Duration::from_millis(100);

/// Raft settings written to the configuration (the tests rely on `SNAPSHOT_EVERY`).
pub const SNAPSHOT_EVERY: u64 = 50;

/// How the test clusters compact their logs unless a test says otherwise: a snapshot every
/// [`SNAPSHOT_EVERY`] entries (or 64 MiB, chorus's default), nothing kept behind it.
pub static DEFAULT_COMPACTION: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!("snapshot_every = {SNAPSHOT_EVERY}\nkeep_logs_after_snapshot = 0")
});

const LOG_TAIL_LINES: usize = 80;

/// Set this environment variable to keep a failed test's directory (config, data, logs).
pub const KEEP_DIR_ENV: &str = "CHORUS_TEST_KEEP_DIR";

/// An HTTP client builder. The `chorus` package's reqwest has HTTPS through rustls, which needs
/// a process-wide crypto provider before any client is built: aws-lc-rs, as the binary installs.
pub fn http_client_builder() -> reqwest::ClientBuilder {
    let _ = tokio_rustls::rustls::crypto::aws_lc_rs::default_provider().install_default();
    reqwest::Client::builder()
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut f: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Whether `python3` can run the seed's client (grpcio and grpcio-tools installed). Without them
/// the Python test is skipped with a message, unless `CHORUS_PYTHON_GRPC=require` (CI) makes
/// that a failure.
pub fn python_grpc_available() -> bool {
    let found = std::process::Command::new("python3")
        .args(["-c", "import grpc, grpc_tools"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert_ne!(
            std::env::var("CHORUS_PYTHON_GRPC").as_deref(),
            Ok("require"),
            "CHORUS_PYTHON_GRPC=require, but python3 cannot import grpc and grpc_tools (pip install grpcio grpcio-tools)"
        );
        eprintln!(
            "skipped: python3 cannot import grpc and grpc_tools (pip install grpcio grpcio-tools)"
        );
    }
    found
}

/// `n` distinct free loopback addresses (every listener is held until all are picked).
pub fn free_addrs(n: usize) -> Vec<SocketAddr> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local addr"))
        .collect()
}

/// A fresh `Idempotency-Key`, unique in this test process.
pub fn fresh_key(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// The `id`s of a JSON array of tracks, in order.
pub fn track_ids(tracks: &Value) -> Vec<u64> {
    tracks
        .as_array()
        .unwrap_or_else(|| panic!("expected a JSON array of tracks, got {tracks}"))
        .iter()
        .map(|t| {
            t["id"]
                .as_u64()
                .unwrap_or_else(|| panic!("track without a numeric id: {t}"))
        })
        .collect()
}

/// A request body.
#[derive(Debug, Clone)]
pub enum Body {
    None,
    Json(Value),
    /// Raw bytes with an optional `Content-Type`.
    Raw {
        content_type: Option<String>,
        bytes: Vec<u8>,
    },
}

/// An HTTP response, read completely.
#[derive(Debug, Clone)]
pub struct Resp {
    /// `METHOD url`, for messages.
    pub request: String,
    pub status: StatusCode,
    pub retry_after: Option<String>,
    /// The body as JSON (`Value::Null` when it is not JSON).
    pub body: Value,
    pub text: String,
    pub headers: reqwest::header::HeaderMap,
    /// The raw body (audio is not text).
    pub bytes: Vec<u8>,
}

impl Resp {
    /// A response header as text ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    pub fn describe(&self) -> String {
        format!("{} -> {} {}", self.request, self.status, self.text)
    }

    /// Panics unless the status is `status`; returns the JSON body.
    pub fn expect_status(&self, status: u16) -> &Value {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected status: {}",
            self.describe()
        );
        &self.body
    }

    /// Panics unless this is an error response with `status` and the documented body
    /// `{"error": "<code>", "message": "..."}`; returns the code.
    pub fn expect_error(&self, status: u16) -> String {
        self.expect_status(status);
        let code = self.body["error"].as_str().unwrap_or_else(|| {
            panic!(
                "error response without a string `error`: {}",
                self.describe()
            )
        });
        let message = self.body["message"].as_str().unwrap_or_else(|| {
            panic!(
                "error response without a string `message`: {}",
                self.describe()
            )
        });
        assert!(
            !code.is_empty() && !message.is_empty(),
            "empty error code or message: {}",
            self.describe()
        );
        assert!(
            code.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "error code is not snake_case: {}",
            self.describe()
        );
        code.to_string()
    }

    /// Like [`Resp::expect_error`], and the code must be `code`.
    pub fn expect_error_code(&self, status: u16, code: &str) {
        let got = self.expect_error(status);
        assert_eq!(got, code, "unexpected error code: {}", self.describe());
    }

    fn is_retryable(&self) -> bool {
        self.status == StatusCode::SERVICE_UNAVAILABLE
    }
}

#[derive(Debug, Clone)]
/// A registered, logged-in user.
pub struct User {
    pub id: String,
    pub token: String,
}

impl User {
    /// The `Authorization` header for this user's requests.
    pub fn auth(&self) -> Vec<(&'static str, String)> {
        vec![("Authorization", format!("Bearer {}", self.token))]
    }
}

/// Registers `name` (password `password123`) through `api` and logs in.
pub async fn register(api: &NodeApi, name: &str) -> User {
    let body = json!({"username": name, "password": "password123", "email": format!("{name}@example.com")});
    let resp = api
        .write("/users/register", Body::Json(body), &fresh_key("reg"))
        .await;
    let id = resp.expect_status(201)["user_id"]
        .as_str()
        .unwrap_or_else(|| panic!("user_id is not a string: {}", resp.describe()))
        .to_string();
    let login = json!({"username": name, "password": "password123"});
    let resp = api
        .post("/users/login", Body::Json(login))
        .await
        .expect("login");
    let token = resp.expect_status(200)["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token: {}", resp.describe()))
        .to_string();
    User { id, token }
}

/// A handle on one node's HTTP API (cheap to clone, usable from spawned tasks).
#[derive(Debug, Clone)]
pub struct NodeApi {
    pub id: u64,
    pub base: String,
    client: reqwest::Client,
}

impl NodeApi {
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Body,
        idempotency_key: Option<&str>,
    ) -> anyhow::Result<Resp> {
        let key = idempotency_key.map(|k| ("Idempotency-Key", k.to_string()));
        self.send_with(method, path, body, key.as_slice()).await
    }

    /// A request with extra headers (e.g. `Authorization`, `Range`).
    pub async fn send_with(
        &self,
        method: Method,
        path: &str,
        body: Body,
        headers: &[(&str, String)],
    ) -> anyhow::Result<Resp> {
        let url = format!("{}{path}", self.base);
        let request = format!("{method} {url} (node {})", self.id);
        let mut req = self.client.request(method, &url);
        for (name, value) in headers {
            req = req.header(*name, value);
        }
        req = match body {
            Body::None => req,
            Body::Json(v) => req.json(&v),
            Body::Raw {
                content_type,
                bytes,
            } => {
                if let Some(ct) = content_type {
                    req = req.header(reqwest::header::CONTENT_TYPE, ct);
                }
                req.body(bytes)
            }
        };
        let resp = req.send().await.with_context(|| request.clone())?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let headers = resp.headers().clone();
        let bytes = resp
            .bytes()
            .await
            .with_context(|| request.clone())?
            .to_vec();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(Resp {
            request,
            status,
            retry_after,
            body,
            text,
            headers,
            bytes,
        })
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Resp> {
        self.send(Method::GET, path, Body::None, None).await
    }

    pub async fn post(&self, path: &str, body: Body) -> anyhow::Result<Resp> {
        self.send(Method::POST, path, body, None).await
    }

    /// A GET that must answer 200: retried while it gets 503 or the connection fails.
    pub async fn read_ok(&self, path: &str) -> Value {
        let resp = self
            .retrying(Method::GET, path, Body::None, None, RETRY_TIMEOUT)
            .await;
        resp.expect_status(200).clone()
    }

    /// A write with `key`, retried (same key, so it applies once) while it gets 503 or the
    /// connection fails. Returns the first other response.
    pub async fn write(&self, path: &str, body: Body, key: &str) -> Resp {
        self.retrying(Method::POST, path, body, Some(key), RETRY_TIMEOUT)
            .await
    }

    /// A write that must succeed (200), with a fresh `Idempotency-Key` so retries apply once.
    pub async fn write_ok(&self, path: &str, body: Body) -> Value {
        let key = fresh_key("w");
        self.write(path, body, &key)
            .await
            .expect_status(200)
            .clone()
    }

    async fn retrying(
        &self,
        method: Method,
        path: &str,
        body: Body,
        key: Option<&str>,
        timeout: Duration,
    ) -> Resp {
        let deadline = Instant::now() + timeout;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let last = match self.send(method.clone(), path, body.clone(), key).await {
                Ok(r) if !r.is_retryable() => return r,
                Ok(r) => r.describe(),
                Err(e) => format!("{e:#}"),
            };
            if attempts <= 3 || attempts.is_multiple_of(20) {
                eprintln!("    (retrying, attempt {attempts}: {last})");
            }
            assert!(
                Instant::now() < deadline,
                "{method} {path} on node {} still failing after {timeout:?} \
                 ({attempts} attempts); last: {last}",
                self.id
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

struct NodeProc {
    id: u64,
    http_addr: SocketAddr,
    raft_addr: SocketAddr,
    grpc_addr: SocketAddr,
    data_dir: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
    /// Extra environment variables for this node's process.
    env: Vec<(String, String)>,
}

/// A running cluster of `chorus start` processes. Node ids are `1..=n`.
pub struct TestCluster {
    dir: TempDir,
    config_path: PathBuf,
    nodes: Vec<NodeProc>,
    client: reqwest::Client,
}

impl TestCluster {
    /// Writes the configuration, starts `n` nodes and waits until every one is ready.
    pub async fn start(n: u64) -> Self {
        Self::start_with(n, "").await
    }

    /// Like [`TestCluster::start`], with `extra` TOML sections (`[users]`, `[tracks]`) added to
    /// the configuration.
    pub async fn start_with(n: u64, extra: &str) -> Self {
        Self::start_compacting(n, &DEFAULT_COMPACTION, extra).await
    }

    /// Like [`TestCluster::start_with`], with `compaction` (`[raft]` lines) in place of
    /// [`DEFAULT_COMPACTION`].
    pub async fn start_compacting(n: u64, compaction: &str, extra: &str) -> Self {
        let mut cluster = Self::configure(n, compaction, extra);
        cluster.launch().await;
        cluster
    }

    /// Writes the configuration of `n` nodes (fresh ports, empty data directories) without
    /// starting them: [`TestCluster::launch`] does.
    pub fn configure(n: u64, compaction: &str, extra: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("chorus-test-")
            .tempdir()
            .expect("create the test's temp dir");
        let addrs = free_addrs(3 * n as usize);

        let nodes: Vec<NodeProc> = (1..=n)
            .map(|id| {
                let i = (id - 1) as usize;
                NodeProc {
                    id,
                    http_addr: addrs[3 * i],
                    raft_addr: addrs[3 * i + 1],
                    grpc_addr: addrs[3 * i + 2],
                    data_dir: dir.path().join(format!("n{id}")),
                    log_path: dir.path().join(format!("node{id}.log")),
                    child: None,
                    env: Vec::new(),
                }
            })
            .collect();

        // The seed's rules unless the test brings its own `[queue]`.
        let queue = if extra.contains("[queue]") {
            ""
        } else {
            "[queue]\nallow_anonymous_clear = true\nanonymous_votes = true\n"
        };
        let mut config = format!(
            r#"cluster_name = "test"
secret = "test-secret"
admin_token = "test-admin"

{queue}
[raft]
heartbeat_ms = 100
election_timeout_min_ms = 600
election_timeout_max_ms = 1200
request_timeout_ms = 5000
{compaction}
{extra}
"#
        );
        for node in &nodes {
            config.push_str(&node_section(node));
        }
        let config_path = dir.path().join("cluster.toml");
        std::fs::write(&config_path, config).expect("write cluster.toml");

        let client = http_client_builder()
            .timeout(HTTP_TIMEOUT)
            .connect_timeout(Duration::from_secs(2))
            .no_proxy()
            .build()
            .expect("build the HTTP client");

        Self {
            dir,
            config_path,
            nodes,
            client,
        }
    }

    /// Starts every configured node and waits until each is ready.
    pub async fn launch(&mut self) {
        let ids = self.ids();
        eprintln!(
            "=== starting a {}-node cluster in {}",
            ids.len(),
            self.dir.path().display()
        );
        for &id in &ids {
            self.spawn(id);
        }
        for &id in &ids {
            self.wait_ready(id).await;
        }
        eprintln!("=== cluster ready");
    }

    fn node(&self, id: u64) -> &NodeProc {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id} in this cluster"))
    }

    fn node_mut(&mut self, id: u64) -> &mut NodeProc {
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id} in this cluster"))
    }

    fn spawn(&mut self, id: u64) {
        let config_path = self.config_path.clone();
        let node = self.node_mut(id);
        assert!(node.child.is_none(), "node {id} is already running");
        let mut log = File::options()
            .create(true)
            .append(true)
            .open(&node.log_path)
            .expect("open the node's log file");
        writeln!(log, "===== test harness: starting node {id} =====").expect("write log banner");
        let stderr = log.try_clone().expect("clone the log file handle");
        let child = Command::new(env!("CARGO_BIN_EXE_chorus"))
            .arg("start")
            .arg("--node")
            .arg(id.to_string())
            .arg("--config")
            .arg(&config_path)
            .envs(node.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("spawn chorus");
        node.child = Some(child);
    }

    /// Adds a node with the next id to `cluster.toml` (fresh ports, an empty data directory)
    /// and starts it. It is not a member: it waits until it is added through the API.
    pub fn spawn_new_node(&mut self) -> u64 {
        self.spawn_new_node_with_env(&[])
    }

    /// [`Self::spawn_new_node`] with extra environment variables for that node's process
    /// (`CHORUS_…` overrides of its configuration).
    pub fn spawn_new_node_with_env(&mut self, env: &[(&str, &str)]) -> u64 {
        let id = self.nodes.iter().map(|n| n.id).max().unwrap_or(0) + 1;
        let addrs = free_addrs(3);
        let node = NodeProc {
            id,
            http_addr: addrs[0],
            raft_addr: addrs[1],
            grpc_addr: addrs[2],
            data_dir: self.dir.path().join(format!("n{id}")),
            log_path: self.dir.path().join(format!("node{id}.log")),
            child: None,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let mut config = File::options()
            .append(true)
            .open(&self.config_path)
            .expect("open cluster.toml");
        write!(config, "{}", node_section(&node)).expect("append to cluster.toml");
        self.nodes.push(node);
        self.spawn(id);
        id
    }

    /// Node `id`'s HTTP and Raft addresses.
    pub fn addrs(&self, id: u64) -> (SocketAddr, SocketAddr) {
        let node = self.node(id);
        (node.http_addr, node.raft_addr)
    }

    /// The cluster's `cluster.toml`.
    pub fn config_path(&self) -> &std::path::Path {
        &self.config_path
    }

    /// Node `id`'s data directory (its sled database is in `db/`).
    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.node(id).data_dir.clone()
    }

    /// Every node id, running or not.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// The ids of the nodes whose process is running (as far as the harness knows).
    pub fn running(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.id)
            .collect()
    }

    pub fn url(&self, id: u64) -> String {
        format!("http://{}", self.node(id).http_addr)
    }

    /// The node's gRPC address, `host:port`.
    pub fn grpc_addr(&self, id: u64) -> SocketAddr {
        self.node(id).grpc_addr
    }

    pub fn api(&self, id: u64) -> NodeApi {
        NodeApi {
            id,
            base: self.url(id),
            client: self.client.clone(),
        }
    }

    /// Majority of the configured members.
    pub fn majority(&self) -> usize {
        self.nodes.len() / 2 + 1
    }

    /// Polls `/cluster` on the running nodes until a majority of the configured members report
    /// the same leader, and that leader (running) reports itself as `Leader`.
    pub async fn leader_id(&self) -> u64 {
        let majority = self.majority();
        let leader = eventually(
            "a leader that a majority agrees on",
            CONVERGE_TIMEOUT,
            async || {
                let mut views: HashMap<u64, (Option<u64>, String)> = HashMap::new();
                for id in self.running() {
                    if let Ok(r) = self.api(id).get("/cluster").await
                        && r.status == StatusCode::OK
                    {
                        let leader = r.body["leader_id"].as_u64();
                        let state = r.body["state"].as_str().unwrap_or_default().to_string();
                        views.insert(id, (leader, state));
                    }
                }
                let mut votes: HashMap<u64, usize> = HashMap::new();
                for (leader, _) in views.values() {
                    if let Some(l) = leader {
                        *votes.entry(*l).or_default() += 1;
                    }
                }
                votes.into_iter().find_map(|(l, count)| {
                    let self_view = views.get(&l)?;
                    (count >= majority && self_view.0 == Some(l) && self_view.1 == "Leader")
                        .then_some(l)
                })
            },
        )
        .await;
        eprintln!("    leader is node {leader}");
        leader
    }

    /// The running nodes other than `leader`.
    pub fn followers(&self, leader: u64) -> Vec<u64> {
        self.running()
            .into_iter()
            .filter(|&id| id != leader)
            .collect()
    }

    /// GET `/cluster` on `id` (must answer 200).
    pub async fn cluster_view(&self, id: u64) -> Value {
        self.api(id).read_ok("/cluster").await
    }

    /// Polls `/ready` on `id` until it answers 200; fails fast if the process exits.
    pub async fn wait_ready(&mut self, id: u64) {
        let api = self.api(id);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            {
                let node = self.node_mut(id);
                let child = node
                    .child
                    .as_mut()
                    .unwrap_or_else(|| panic!("node {id} is not running"));
                if let Some(status) = child.try_wait().expect("poll the child process") {
                    node.child = None;
                    panic!("node {id} exited with {status} before it was ready");
                }
            }
            let last = match api.get("/ready").await {
                Ok(r) if r.status == StatusCode::OK => return,
                Ok(r) => r.describe(),
                Err(e) => format!("{e:#}"),
            };
            assert!(
                Instant::now() < deadline,
                "node {id} not ready after {READY_TIMEOUT:?}; last: {last}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until every running node is ready.
    pub async fn wait_all_ready(&mut self) {
        for id in self.running() {
            self.wait_ready(id).await;
        }
    }

    /// SIGKILL: the process gets no chance to clean up.
    pub fn kill9(&mut self, id: u64) {
        let node = self.node_mut(id);
        let mut child = node
            .child
            .take()
            .unwrap_or_else(|| panic!("node {id} is not running"));
        child.kill().expect("SIGKILL the node");
        child.wait().expect("reap the killed node");
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`): a node that is frozen, not gone — its sockets stay
    /// open and it answers nothing, as a node in a long GC pause or swapped out would.
    pub fn freeze(&mut self, id: u64, frozen: bool) {
        let child = self
            .node_mut(id)
            .child
            .as_ref()
            .unwrap_or_else(|| panic!("node {id} is not running"));
        signal(
            child,
            id,
            if frozen { libc::SIGSTOP } else { libc::SIGCONT },
        );
    }

    /// SIGTERM, then waits for a clean exit (status 0).
    pub async fn stop(&mut self, id: u64) {
        let node = self.node_mut(id);
        let mut child = node
            .child
            .take()
            .unwrap_or_else(|| panic!("node {id} is not running"));
        signal(&child, id, libc::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("poll the child process") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("node {id} did not exit within {STOP_TIMEOUT:?} of SIGTERM");
            }
            tokio::time::sleep(POLL).await;
        };
        assert!(
            status.success(),
            "node {id} exited with {status} after SIGTERM (expected a clean stop)"
        );
    }

    /// Starts a stopped node again, with the same arguments and data directory.
    pub fn restart(&mut self, id: u64) {
        self.spawn(id);
    }

    /// Deletes everything in a stopped node's data directory.
    pub fn wipe(&mut self, id: u64) {
        let node = self.node(id);
        assert!(
            node.child.is_none(),
            "wipe node {id} only while it is stopped"
        );
        let entries = match std::fs::read_dir(&node.data_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => panic!("read {}: {e}", node.data_dir.display()),
        };
        for entry in entries {
            let path = entry.expect("read a data dir entry").path();
            if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            }
            .unwrap_or_else(|e| panic!("remove {}: {e}", path.display()));
        }
    }

    fn dump_logs(&self) {
        eprintln!(
            "\n===== test failed: last {LOG_TAIL_LINES} lines of each node's log (dir {}) =====",
            self.dir.path().display()
        );
        for node in &self.nodes {
            eprintln!(
                "----- node {} ({}, http {}, raft {}) -----",
                node.id,
                if node.child.is_some() {
                    "running"
                } else {
                    "stopped"
                },
                node.http_addr,
                node.raft_addr
            );
            match File::open(&node.log_path) {
                Ok(f) => {
                    let lines: Vec<String> =
                        BufReader::new(f).lines().map_while(Result::ok).collect();
                    // A panic's message is often far above the tail: show it (the line
                    // after "panicked at") first.
                    let panics = lines
                        .iter()
                        .enumerate()
                        .filter(|(_, l)| l.contains("panicked at"))
                        .take(3);
                    for (i, line) in panics {
                        eprintln!("[panic] {line}");
                        if let Some(message) = lines.get(i + 1) {
                            eprintln!("[panic] {message}");
                        }
                    }
                    let start = lines.len().saturating_sub(LOG_TAIL_LINES);
                    for line in &lines[start..] {
                        eprintln!("{line}");
                    }
                }
                Err(e) => eprintln!("(cannot read {}: {e})", node.log_path.display()),
            }
        }
        eprintln!("===== end of logs =====\n");
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
            if std::env::var_os(KEEP_DIR_ENV).is_some() {
                let kept = self.dir.path().to_path_buf();
                // Leak the TempDir so the files stay for a post-mortem.
                std::mem::forget(std::mem::replace(
                    &mut self.dir,
                    TempDir::new().expect("create a placeholder temp dir"),
                ));
                eprintln!("(kept {} because {KEEP_DIR_ENV} is set)", kept.display());
            }
        }
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// The `[[nodes]]` section of `cluster.toml` for `node`.
fn node_section(node: &NodeProc) -> String {
    format!(
        "\n[[nodes]]\nid = {}\nhttp_addr = \"{}\"\nraft_addr = \"{}\"\ngrpc_addr = \"{}\"\ndata_dir = \"{}\"\n",
        node.id,
        node.http_addr,
        node.raft_addr,
        node.grpc_addr,
        node.data_dir.display()
    )
}

/// Sends `signal` to node `id`'s process `child`.
fn signal(child: &std::process::Child, id: u64, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits in pid_t");
    // SAFETY: `pid` is our own child, not yet reaped, so it cannot have been reused.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(rc, 0, "signal {signal} to node {id} failed");
}
