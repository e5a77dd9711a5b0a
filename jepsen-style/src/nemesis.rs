//! Carries out the fault schedule on the running cluster: cuts and heals links, kills and
//! restarts, pauses and resumes, adds loss and delay. Every fault is healed when its window
//! ends, and [`Nemesis::heal_all`] undoes whatever is still in force at the end of the run.

use crate::cluster::{self, Cluster};
use crate::schedule::{Fault, Nemesis as Kind};
use anyhow::{Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use tokio::sync::Mutex;

/// A fault as it was carried out (targets resolved: "the leader" is known only then).
#[derive(Clone, Debug, Serialize)]
pub struct AppliedFault {
    pub kind: Kind,
    /// Node ids (1-based) the fault was aimed at: the minority, the isolated or killed node...
    pub targets: Vec<u64>,
    pub param: u32,
    pub applied_us: u64,
    pub healed_us: Option<u64>,
    /// What was done, in words, for the log and the report.
    pub description: String,
}

/// What is in force now and must be undone.
#[derive(Default)]
struct Active {
    killed: Vec<usize>,
    paused: Vec<usize>,
    delayers: Vec<Child>,
    rules: bool,
    /// Nodes removed from the membership and wiped, with the node to add them back through.
    replaced: Vec<(usize, usize)>,
}

pub struct Nemesis {
    pub cluster: Arc<Mutex<Cluster>>,
    http: reqwest::Client,
    delayer_script: PathBuf,
    active: Active,
    /// Membership faults so far: they take the leader and a follower in turn.
    replacements: usize,
}

impl Nemesis {
    pub fn new(
        cluster: Arc<Mutex<Cluster>>,
        http: reqwest::Client,
        delayer_script: PathBuf,
    ) -> Self {
        Self {
            cluster,
            http,
            delayer_script,
            active: Active::default(),
            replacements: 0,
        }
    }

    async fn leader_or(&self, fallback: usize) -> usize {
        let ids = self.cluster.lock().await.ids().to_vec();
        cluster::find_leader(&self.http, &ids)
            .await
            .unwrap_or(fallback)
    }

    /// Applies `fault`; returns its targets and a description.
    pub async fn apply(&mut self, fault: &Fault) -> Result<(Vec<u64>, String)> {
        // The node a one-node fault hits: the leader for the faults aimed at it (asked before
        // the cluster is locked, since the query locks it for the node list), else the first
        // of the fault's order.
        let target = match fault.kind {
            Kind::IsolateLeader
            | Kind::KillLeader
            | Kind::Pause
            | Kind::Membership
            | Kind::PowerLossLeader
            | Kind::SlowLeader => self.leader_or(fault.order[0]).await,
            _ => fault.order[0],
        };
        let mut c = self.cluster.lock().await;
        let n = c.nodes();
        let order = &fault.order;
        let slot_ids = c.ids().to_vec();
        let node_id = |i: usize| slot_ids[i];
        let ids = |v: &[usize]| v.iter().map(|&i| node_id(i)).collect::<Vec<_>>();
        // Blocks every link between the two groups, both ways.
        let cut = |c: &Cluster, a: &[usize], b: &[usize]| -> Result<()> {
            for &i in a {
                c.net.set_rules(i, b, None, &[])?;
            }
            for &j in b {
                c.net.set_rules(j, a, None, &[])?;
            }
            Ok(())
        };
        let result = match fault.kind {
            Kind::Partition => {
                let (minority, majority) = order.split_at(n / 2);
                cut(&c, minority, majority)?;
                self.active.rules = true;
                (
                    ids(minority),
                    format!("partition {:?} | {:?}", ids(minority), ids(majority)),
                )
            }
            Kind::IsolateLeader => {
                let leader = target;
                let rest: Vec<usize> = (0..n).filter(|&j| j != leader).collect();
                cut(&c, &[leader], &rest)?;
                self.active.rules = true;
                (
                    ids(&[leader]),
                    format!("isolate leader {}", node_id(leader)),
                )
            }
            Kind::Bridge => {
                let bridge = order[0];
                let (a, b) = order[1..].split_at((n - 1) / 2);
                cut(&c, a, b)?;
                self.active.rules = true;
                (
                    ids(&[bridge]),
                    format!(
                        "bridge: {:?} | {:?}, node {} sees both",
                        ids(a),
                        ids(b),
                        node_id(bridge)
                    ),
                )
            }
            Kind::OneWay => {
                // The target ignores every packet from the others; they still hear it. Its
                // messages arrive, their answers do not.
                let rest: Vec<usize> = (0..n).filter(|&j| j != target).collect();
                c.net.set_rules(target, &rest, None, &[])?;
                self.active.rules = true;
                (
                    ids(&[target]),
                    format!("node {} hears no one (one-way)", node_id(target)),
                )
            }
            Kind::Kill | Kind::KillLeader => {
                c.kill(target);
                self.active.killed.push(target);
                (ids(&[target]), format!("kill -9 node {}", node_id(target)))
            }
            Kind::Pause => {
                c.pause(target)?;
                self.active.paused.push(target);
                (
                    ids(&[target]),
                    format!("SIGSTOP node {} (the leader)", node_id(target)),
                )
            }
            Kind::Loss => {
                for i in 0..n {
                    c.net.set_rules(i, &[], Some(fault.param), &[])?;
                }
                self.active.rules = true;
                (
                    ids(order),
                    format!("{} % packet loss between all nodes", fault.param),
                )
            }
            Kind::Membership => {
                // A dead machine: removed from the membership (through another node), killed,
                // its disk gone; the leader and a follower in turn, starting with the leader.
                // Its replacement joins under a new id when the fault ends.
                drop(c);
                let leader = target;
                let target = match self.replacements % 2 {
                    0 => leader,
                    _ => *order.iter().find(|&&i| i != leader).unwrap_or(&order[0]),
                };
                let via = *order.iter().find(|&&i| i != target).unwrap_or(&order[1]);
                self.replacements += 1;
                let path = format!("/cluster/members/{}", node_id(target));
                self.membership(via, reqwest::Method::DELETE, &path, None)
                    .await?;
                c = self.cluster.lock().await;
                c.kill(target);
                c.wipe(target)?;
                self.active.replaced.push((target, via));
                (
                    ids(&[target]),
                    format!(
                        "remove node {} ({}) from the membership, kill -9 it and wipe its disk",
                        node_id(target),
                        if target == leader {
                            "the leader"
                        } else {
                            "a follower"
                        }
                    ),
                )
            }
            Kind::PowerLoss | Kind::PowerLossLeader | Kind::PowerLossAll => {
                let targets: Vec<usize> = match fault.kind {
                    Kind::PowerLoss => order[..(n - 1) / 2].to_vec(),
                    Kind::PowerLossLeader => vec![target],
                    _ => (0..n).collect(),
                };
                let lost = c.power_loss(&targets)?;
                self.active.killed.extend(&targets);
                let lost: Vec<String> = lost.iter().map(|mib| format!("{mib:.1}")).collect();
                (
                    ids(&targets),
                    format!(
                        "power loss of node(s) {:?} (MiB not fsynced, dropped: {})",
                        ids(&targets),
                        lost.join(", ")
                    ),
                )
            }
            Kind::RollingRestart => {
                drop(c);
                for &i in order {
                    self.restart(i).await?;
                }
                (
                    ids(order),
                    format!(
                        "rolling restart (SIGTERM, start, ready) of nodes {:?}",
                        ids(order)
                    ),
                )
            }
            Kind::Delay => {
                let everyone: Vec<usize> = (0..n).collect();
                for i in 0..n {
                    let d = start_delayer(&c, &self.delayer_script, i, &everyone, fault)?;
                    self.active.delayers.push(d);
                }
                self.active.rules = true;
                (
                    ids(order),
                    format!("{} ms delay on every node's outgoing packets", fault.param),
                )
            }
            Kind::SlowNode | Kind::SlowLeader => {
                // Both ways: the node's packets to the others, and theirs to it.
                let rest: Vec<usize> = (0..n).filter(|&j| j != target).collect();
                let d = start_delayer(&c, &self.delayer_script, target, &rest, fault)?;
                self.active.delayers.push(d);
                for &j in &rest {
                    let d = start_delayer(&c, &self.delayer_script, j, &[target], fault)?;
                    self.active.delayers.push(d);
                }
                self.active.rules = true;
                (
                    ids(&[target]),
                    format!(
                        "{} ms delay each way on every link of node {}",
                        fault.param,
                        node_id(target)
                    ),
                )
            }
        };
        Ok(result)
    }

    /// Undoes everything in force: links healed, delayers stopped, paused nodes resumed,
    /// killed nodes restarted.
    pub async fn heal_all(&mut self) -> Result<()> {
        let mut c = self.cluster.lock().await;
        if self.active.rules {
            c.net.heal()?;
            self.active.rules = false;
        }
        let mut delayer_died = None;
        for mut d in self.active.delayers.drain(..) {
            // A delayer that exited early let packets through undelayed (the rules bypass the
            // queue when nothing is bound to it): the fault was not in force.
            if let Ok(Some(status)) = d.try_wait() {
                delayer_died = Some(status);
            }
            let _ = d.kill();
            let _ = d.wait();
        }
        for i in self.active.paused.drain(..) {
            c.resume(i)?;
        }
        for i in self.active.killed.drain(..) {
            c.start(i)?;
        }
        let replaced: Vec<(usize, usize)> = self.active.replaced.drain(..).collect();
        let mut joining = Vec::new();
        for &(target, via) in &replaced {
            let id = c.new_id(target)?;
            c.start(target)?;
            joining.push((target, via, id));
        }
        drop(c);
        // The replacement starts empty and is added as a new member: it catches up as a
        // learner first, so the add answers once it holds everything.
        for (target, via, id) in joining {
            let (http_addr, raft_addr) = cluster::addrs(target);
            let body = serde_json::json!({
                "id": id, "http_addr": http_addr, "raft_addr": raft_addr
            });
            self.membership(via, reqwest::Method::POST, "/cluster/members", Some(body))
                .await?;
            tracing::info!("node {id} joined in the place of the removed one");
        }
        if let Some(status) = delayer_died {
            anyhow::bail!(
                "a packet delayer exited ({status}) before the heal, so the delay was not in force; see delayer-n*.log in the run directory"
            );
        }
        Ok(())
    }

    /// Stops node `i` with SIGTERM (kill -9 after `STOP_DEADLINE`), starts it again and waits
    /// until it is ready. The cluster lock is not held while waiting: clients run meanwhile.
    async fn restart(&self, i: usize) -> Result<()> {
        self.cluster.lock().await.terminate(i)?;
        let deadline = std::time::Instant::now() + STOP_DEADLINE;
        while !self.cluster.lock().await.exited(i) {
            if std::time::Instant::now() >= deadline {
                tracing::warn!(
                    "slot n{} did not stop within {STOP_DEADLINE:?}; kill -9",
                    i + 1
                );
                self.cluster.lock().await.kill(i);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        self.cluster.lock().await.start(i)?;
        let deadline = std::time::Instant::now() + MEMBERSHIP_DEADLINE;
        loop {
            if cluster::is_ready(&self.http, i, std::time::Duration::from_secs(1)).await {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                anyhow::bail!("slot n{} was not ready again after a restart", i + 1);
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// A membership change through node `via`, retried (it is idempotent) while the cluster
    /// answers 503 or not at all, for up to [`MEMBERSHIP_DEADLINE`].
    async fn membership(
        &self,
        via: usize,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<()> {
        let deadline = std::time::Instant::now() + MEMBERSHIP_DEADLINE;
        loop {
            let mut request = self
                .http
                .request(method.clone(), format!("{}{path}", cluster::http_base(via)))
                .header("X-Admin-Token", cluster::ADMIN_TOKEN)
                .timeout(MEMBERSHIP_DEADLINE);
            if let Some(body) = &body {
                request = request.json(body);
            }
            let last = match request.send().await {
                Ok(r) if r.status().is_success() => return Ok(()),
                // Removing a node that is already gone: done (a retry after a lost answer).
                Ok(r) if method == reqwest::Method::DELETE && r.status() == 400 => {
                    let text = r.text().await.unwrap_or_default();
                    if text.contains("is not a member") {
                        return Ok(());
                    }
                    format!("400 {text}")
                }
                Ok(r) => format!("{} {}", r.status(), r.text().await.unwrap_or_default()),
                Err(e) => e.to_string(),
            };
            if std::time::Instant::now() >= deadline {
                anyhow::bail!("{method} {path} through slot n{}: {last}", via + 1);
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }
}

/// How long a node may take to stop after SIGTERM.
const STOP_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a membership change may take (an add waits for the node to catch up).
const MEMBERSHIP_DEADLINE: std::time::Duration = std::time::Duration::from_secs(120);

/// Delays node `i`'s packets to nodes `to` by the fault's milliseconds until it is healed: the
/// NFQUEUE rules and the delayer that holds the queued packets.
fn start_delayer(
    c: &Cluster,
    script: &Path,
    i: usize,
    to: &[usize],
    fault: &Fault,
) -> Result<Child> {
    let secs = (fault.end_ms - fault.start_ms) / 1000 + 30;
    c.net.queue_outgoing(i, to)?;
    let log_path = script.with_file_name(format!("delayer-n{}.log", i + 1));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    Command::new("ip")
        .args(["netns", "exec", &c.net.node_ns(i), "python3"])
        .arg(script)
        .args(["0", &fault.param.to_string(), &secs.to_string()])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting the NFQUEUE delayer (python3)")
}
