//! The `chorus` processes under test: their configuration, start, kill -9, pause and restart,
//! each inside its own network namespace, and what the harness asks them about (the leader,
//! readiness). chorus is a black box here: only its binary, its config file and its HTTP API.

use crate::lazyfs::NodeDisk;
use crate::net::{self, Net};
use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::time::Instant;

pub const HTTP_PORT: u16 = 8000;
const RAFT_PORT: u16 = 9000;
/// The cluster under test's admin token (membership changes).
pub const ADMIN_TOKEN: &str = "jepsen-style-admin";

/// Node `i`'s `http_addr` and `raft_addr`.
pub fn addrs(i: usize) -> (String, String) {
    let ip = net::node_ip(i);
    (format!("{ip}:{HTTP_PORT}"), format!("{ip}:{RAFT_PORT}"))
}

pub fn http_base(i: usize) -> String {
    format!("http://{}:{HTTP_PORT}", net::node_ip(i))
}

/// Node ids in chorus are 1-based; indices in the harness are 0-based.
pub fn node_id(i: usize) -> u64 {
    i as u64 + 1
}

/// Raft settings of the cluster under test that differ from chorus's defaults: snapshots are
/// taken often so that restarts and lagging followers exercise snapshot installation, not only
/// log replication.
pub struct RaftTuning {
    pub snapshot_every: u64,
}

pub struct Cluster {
    pub net: Net,
    binary: PathBuf,
    run_dir: PathBuf,
    tuning: RaftTuning,
    /// The chorus node id in each slot (a namespace, its address, a data directory). A slot
    /// whose node was removed from the membership gets a fresh node under a new id: ids are
    /// never reused.
    ids: Vec<u64>,
    next_id: u64,
    children: Vec<Option<Child>>,
    /// Each node's data directory as a power-loss file system, when a run cuts the power.
    disks: Vec<NodeDisk>,
}

impl Cluster {
    /// The cluster of `net.nodes` nodes, ids 1..=n, its `cluster.toml` written into `run_dir`.
    pub fn new(net: Net, binary: PathBuf, run_dir: PathBuf, tuning: RaftTuning) -> Result<Self> {
        let n = net.nodes;
        let cluster = Self {
            children: (0..n).map(|_| None).collect(),
            ids: (0..n).map(node_id).collect(),
            next_id: n as u64,
            net,
            binary,
            run_dir,
            tuning,
            disks: Vec::new(),
        };
        cluster.write_config()?;
        Ok(cluster)
    }

    fn config_path(&self) -> PathBuf {
        self.run_dir.join("cluster.toml")
    }

    /// Writes the `cluster.toml` of the cluster under test: the node in each slot.
    fn write_config(&self) -> Result<()> {
        let mut text = format!(
            r#"# Written by jepsen-style for one run.
cluster_name = "jepsen"
secret = "jepsen-style-secret"
admin_token = "{ADMIN_TOKEN}"

[queue]
allow_anonymous_clear = true
anonymous_votes = true

# Timings are chorus's defaults: the run tests what users get.
[raft]
snapshot_every = {}
keep_logs_after_snapshot = {}
"#,
            self.tuning.snapshot_every,
            self.tuning.snapshot_every / 4
        );
        for (i, id) in self.ids.iter().enumerate() {
            let ip = net::node_ip(i);
            text += &format!(
                "\n[[nodes]]\nid = {id}\nhttp_addr = \"{ip}:{HTTP_PORT}\"\nraft_addr = \"{ip}:{RAFT_PORT}\"\ndata_dir = \"n{}/data\"\n",
                i + 1
            );
        }
        let path = self.config_path();
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    }

    /// The chorus node id in every slot.
    pub fn ids(&self) -> &[u64] {
        &self.ids
    }

    /// A new machine in slot `i` (whose node is gone): the next unused id, written into
    /// `cluster.toml` so that the node can be started under it.
    pub fn new_id(&mut self, i: usize) -> Result<u64> {
        self.next_id += 1;
        self.ids[i] = self.next_id;
        self.write_config()?;
        Ok(self.next_id)
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        self.run_dir.join(format!("n{}/data", i + 1))
    }

    /// Puts every node's data directory on a power-loss file system (before the nodes start).
    pub fn mount_disks(&mut self) -> Result<()> {
        for i in 0..self.nodes() {
            let disk = NodeDisk::mount(&self.data_dir(i))?;
            self.disks.push(disk);
        }
        Ok(())
    }

    /// The control: from now on the nodes' disks acknowledge fsync and keep nothing.
    pub fn ignore_fsync(&self) {
        self.disks.iter().for_each(NodeDisk::ignore_fsync);
    }

    /// The power goes out under `targets` at once: every one dies, then every disk forgets what
    /// was not fsynced. Returns the MiB each disk lost.
    pub fn power_loss(&mut self, targets: &[usize]) -> Result<Vec<f64>> {
        if self.disks.is_empty() {
            bail!("power loss needs the power-loss file system (mount_disks)");
        }
        for &i in targets {
            self.kill(i);
        }
        targets
            .iter()
            .map(|&i| {
                let (_kept, lost) = self.disks[i]
                    .power_loss()
                    .with_context(|| format!("power loss of node {}", self.ids[i]))?;
                Ok(lost as f64 / (1 << 20) as f64)
            })
            .collect()
    }

    pub fn nodes(&self) -> usize {
        self.net.nodes
    }

    /// Starts node `i` (again, after a kill) with its data directory; its output is appended to
    /// `n{i+1}.log` in the run directory.
    pub fn start(&mut self, i: usize) -> Result<()> {
        let log_path = self.run_dir.join(format!("n{}.log", i + 1));
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        // `ip netns exec` execs the node, so the child's pid is the node's pid.
        let child = Command::new("ip")
            .args(["netns", "exec", &self.net.node_ns(i)])
            .arg(&self.binary)
            .args(["start", "--node", &self.ids[i].to_string(), "--config"])
            .arg(self.config_path())
            // The nodes log at info unless CHORUS_NODE_LOG says otherwise (a RUST_LOG filter,
            // for looking closer at a run).
            .env(
                "RUST_LOG",
                std::env::var("CHORUS_NODE_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} in {}",
                    self.binary.display(),
                    self.net.node_ns(i)
                )
            })?;
        self.children[i] = Some(child);
        Ok(())
    }

    /// kill -9: the node gets no chance to flush or say goodbye.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.children[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn signal(&self, i: usize, signal: i32) -> Result<()> {
        let Some(child) = &self.children[i] else {
            bail!("node {} is not running", self.ids[i]);
        };
        // SAFETY: kill(2) on the pid of a child we have not reaped.
        if unsafe { libc::kill(child.id() as i32, signal) } != 0 {
            bail!(
                "signal {signal} to node {}: {}",
                self.ids[i],
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    /// SIGTERM: the node stops cleanly (a leader hands leadership over first).
    pub fn terminate(&self, i: usize) -> Result<()> {
        self.signal(i, libc::SIGTERM)
    }

    /// True once node `i`'s process has ended (it is then reaped).
    pub fn exited(&mut self, i: usize) -> bool {
        match self.children[i].as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => false,
            _ => {
                self.children[i] = None;
                true
            }
        }
    }

    pub fn pause(&self, i: usize) -> Result<()> {
        self.signal(i, libc::SIGSTOP)
    }

    pub fn resume(&self, i: usize) -> Result<()> {
        self.signal(i, libc::SIGCONT)
    }

    /// Deletes a stopped node's data directory: its disk is gone.
    pub fn wipe(&mut self, i: usize) -> Result<()> {
        if let Some(disk) = self.disks.get_mut(i) {
            return disk.wipe();
        }
        let dir = self.data_dir(i);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("wiping {}", dir.display()))
            }
            _ => Ok(()),
        }
    }

    /// Leaves nothing running: every node (paused ones too) and every namespace.
    pub fn teardown(&mut self) {
        for i in 0..self.nodes() {
            let _ = self.resume(i);
            self.kill(i);
        }
        // Unmounted once no node uses them.
        self.disks.clear();
        self.net.delete();
    }
}

/// Node `i`'s `GET /cluster` (`None` when it does not answer within `timeout`).
async fn cluster_view(http: &reqwest::Client, i: usize, timeout: Duration) -> Option<Value> {
    let resp = http
        .get(format!("{}/cluster", http_base(i)))
        .timeout(timeout)
        .send()
        .await
        .ok()?;
    resp.json().await.ok()
}

/// Whether node `i` answers `GET /ready` with 200 within `timeout`.
pub async fn is_ready(http: &reqwest::Client, i: usize, timeout: Duration) -> bool {
    http.get(format!("{}/ready", http_base(i)))
        .timeout(timeout)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// What one node says about the cluster, from `GET /cluster` (`None` when it does not answer).
pub async fn leader_seen_by(http: &reqwest::Client, i: usize) -> Option<(u64, u64)> {
    let v = cluster_view(http, i, Duration::from_secs(1)).await?;
    Some((v["leader_id"].as_u64()?, v["term"].as_u64()?))
}

/// The leader as the nodes report it (the one of the highest term), as a slot index; `ids` is
/// the node id in each slot.
pub async fn find_leader(http: &reqwest::Client, ids: &[u64]) -> Option<usize> {
    let mut best: Option<(u64, u64)> = None;
    for i in 0..ids.len() {
        if let Some((leader, term)) = leader_seen_by(http, i).await
            && best.is_none_or(|(_, t)| term > t)
        {
            best = Some((leader, term));
        }
    }
    let (leader, _) = best?;
    ids.iter().position(|&id| id == leader)
}

/// The voters and the learners, as the first node that answers `GET /cluster` sees them.
pub async fn membership(http: &reqwest::Client, nodes: usize) -> Option<(Vec<u64>, Vec<u64>)> {
    for i in 0..nodes {
        let Some(v) = cluster_view(http, i, Duration::from_secs(2)).await else {
            continue;
        };
        let (mut voters, mut learners) = (Vec::new(), Vec::new());
        for m in v["members"].as_array().into_iter().flatten() {
            let Some(id) = m["id"].as_u64() else { continue };
            if m["voter"].as_bool() == Some(true) {
                voters.push(id);
            } else {
                learners.push(id);
            }
        }
        voters.sort_unstable();
        learners.sort_unstable();
        return Some((voters, learners));
    }
    None
}

/// What each node says about itself (`GET /cluster`) and the last lines of each node's log: attached
/// to a failed wait so that a run that ends stuck (in CI, where only the output survives) says
/// which node was stuck where.
async fn diagnose(http: &reqwest::Client, nodes: usize, run_dir: &Path) -> String {
    let mut out = String::new();
    for i in 0..nodes {
        let view = http
            .get(format!("{}/cluster", http_base(i)))
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        let line = match view {
            Ok(resp) => match resp.json::<Value>().await {
                Ok(v) => {
                    let reachable: Vec<String> = v["members"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|m| format!("{}:{}", m["id"], m["reachable"]))
                        .collect();
                    format!(
                        "state {} core answering {} term {} leader {} committed {} applied {} last log {} snapshot {} purged {} reachable [{}]",
                        v["state"],
                        v["raft_core_answering"],
                        v["term"],
                        v["leader_id"],
                        v["commit_index"],
                        v["applied_index"],
                        v["last_log_index"],
                        v["snapshot_index"],
                        v["purged_index"],
                        reachable.join(" ")
                    )
                }
                Err(e) => format!("unreadable /cluster: {e}"),
            },
            Err(e) => format!("no answer to /cluster: {e}"),
        };
        out += &format!("\n  n{}: {line}", i + 1);
    }
    for i in 0..nodes {
        let path = run_dir.join(format!("n{}.log", i + 1));
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        out += &format!("\n  last lines of {}:", path.display());
        for line in &lines[lines.len().saturating_sub(LOG_TAIL)..] {
            out += &format!("\n    {line}");
        }
    }
    out
}

/// Lines of each node's log that [`diagnose`] shows.
const LOG_TAIL: usize = 25;

/// Waits until every node answers `GET /ready` with 200 (knows a leader, has applied what it
/// knows to be committed); if one does not in time, the error carries [`diagnose`]'s account.
pub async fn wait_ready(
    http: &reqwest::Client,
    nodes: usize,
    deadline: Duration,
    run_dir: &Path,
) -> Result<()> {
    let until = Instant::now() + deadline;
    for i in 0..nodes {
        loop {
            if is_ready(http, i, Duration::from_secs(2)).await {
                break;
            }
            if Instant::now() > until {
                bail!(
                    "the node in slot n{} is not ready after {} s (see n{}.log); what the nodes say:{}",
                    i + 1,
                    deadline.as_secs(),
                    i + 1,
                    diagnose(http, nodes, run_dir).await
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}
