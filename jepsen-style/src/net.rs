//! Network namespaces (one per node plus one for the bridge and the clients), nftables
//! partition tables and the NFQUEUE delayer. Follows /work/shared/partition-recipe.md:
//! everything lives inside namespaces we create, so deleting them removes every veth,
//! address and rule; nothing is added to the root namespace.

use anyhow::{Context, Result, bail};
use std::process::{Command, Stdio};

/// Every namespace name starts with this, followed by the harness pid and `-`, so runs can
/// coexist and a sweep can tell a dead run's leftovers from a live one's.
pub const NS_PREFIX: &str = "jepsen";

pub fn node_ip(i: usize) -> String {
    format!("10.77.0.{}", i + 1)
}
pub const CLIENT_IP: &str = "10.77.0.254";

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> Result<String> {
    run(Command::new("ip").args(args))
}

/// Run `nft -f -` with `script` inside namespace `ns` (one atomic transaction).
pub fn nft(ns: &str, script: &str) -> Result<()> {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning nft")?;
    child
        .stdin
        .take()
        .context("nft stdin")?
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "nft in {ns} failed: {}\n{script}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

pub struct Net {
    pub prefix: String,
    pub nodes: usize,
}

impl Net {
    pub fn node_ns(&self, i: usize) -> String {
        format!("{}n{}", self.prefix, i + 1)
    }
    pub fn bridge_ns(&self) -> String {
        format!("{}br", self.prefix)
    }

    /// Bridge namespace with `br0` (the client host), one namespace per node with a veth on it.
    pub fn create(prefix: String, nodes: usize) -> Result<Net> {
        let net = Net { prefix, nodes };
        let br = net.bridge_ns();
        ip(&["netns", "add", &br])?;
        ip(&["-n", &br, "link", "set", "lo", "up"])?;
        ip(&["-n", &br, "link", "add", "name", "br0", "type", "bridge"])?;
        ip(&["-n", &br, "link", "set", "br0", "up"])?;
        ip(&[
            "-n",
            &br,
            "addr",
            "add",
            &format!("{CLIENT_IP}/24"),
            "dev",
            "br0",
        ])?;
        for i in 0..nodes {
            let ns = net.node_ns(i);
            let v = format!("v{}", i + 1);
            ip(&["netns", "add", &ns])?;
            ip(&[
                "-n", &br, "link", "add", "name", &v, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ])?;
            ip(&["-n", &br, "link", "set", &v, "master", "br0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", node_ip(i)),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            nft(&ns, &table(&[], None, &[]))?;
        }
        Ok(net)
    }

    /// Set node `i`'s filter: drop everything from `blocked`, drop `loss` % of packets from
    /// every other node, drop new connections from `no_new`. Replaces the previous rules
    /// atomically; `set_rules(i, &[], None, &[])` heals.
    pub fn set_rules(
        &self,
        i: usize,
        blocked: &[usize],
        loss: Option<u32>,
        no_new: &[usize],
    ) -> Result<()> {
        let script = format!(
            "delete table inet jepsen\n{}",
            table(blocked, loss.map(|l| (l, i, self.nodes)), no_new)
        );
        nft(&self.node_ns(i), &script)
    }

    /// Kills whatever still runs in the namespaces and deletes them (with every veth, address
    /// and rule in them).
    pub fn delete(&self) {
        for i in 0..self.nodes {
            delete_ns(&self.node_ns(i));
        }
        delete_ns(&self.bridge_ns());
    }

    pub fn heal(&self) -> Result<()> {
        for i in 0..self.nodes {
            self.set_rules(i, &[], None, &[])?;
            // Delay rules, if any (iptables may be absent when delay is not used).
            let _ = run(Command::new("ip").args([
                "netns",
                "exec",
                &self.node_ns(i),
                "iptables",
                "-F",
                "OUTPUT",
            ]));
        }
        Ok(())
    }

    /// Queue node `i`'s packets to nodes `to` through NFQUEUE 0 (the delayer binds it).
    pub fn queue_outgoing(&self, i: usize, to: &[usize]) -> Result<()> {
        for &j in to.iter().filter(|&&j| j != i) {
            run(Command::new("ip").args([
                "netns",
                "exec",
                &self.node_ns(i),
                "iptables",
                "-A",
                "OUTPUT",
                "-d",
                &node_ip(j),
                "-j",
                "NFQUEUE",
                "--queue-num",
                "0",
                "--queue-bypass",
            ]))?;
        }
        Ok(())
    }
}

fn table(blocked: &[usize], loss: Option<(u32, usize, usize)>, no_new: &[usize]) -> String {
    let mut rules = String::new();
    let elems: Vec<String> = blocked.iter().map(|&j| node_ip(j)).collect();
    let set = if elems.is_empty() {
        String::new()
    } else {
        format!("elements = {{ {} }}", elems.join(", "))
    };
    if let Some((pct, me, n)) = loss {
        for j in (0..n).filter(|&j| j != me) {
            rules += &format!(
                "    ip saddr {} numgen random mod 100 < {pct} drop\n",
                node_ip(j)
            );
        }
    }
    for &j in no_new {
        rules += &format!("    ip saddr {} ct state new drop\n", node_ip(j));
    }
    format!(
        "table inet jepsen {{\n  set blocked_from {{ type ipv4_addr; {set} }}\n  chain input {{\n    type filter hook input priority filter; policy accept;\n    ip saddr @blocked_from drop\n{rules}  }}\n}}\n"
    )
}

/// Kill every process in namespace `ns` and delete it (a namespace with a live process would
/// survive unnamed, so processes go first).
pub fn delete_ns(ns: &str) {
    if !std::path::Path::new(&format!("/run/netns/{ns}")).exists() {
        return;
    }
    if let Ok(pids) = ip(&["netns", "pids", ns]) {
        let me = std::process::id() as i32;
        // The harness itself lives in the bridge namespace: everything else there goes.
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
            .filter(|&p| p != me)
        {
            // SAFETY: plain kill(2) on a pid we just listed.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
    if let Err(e) = ip(&["netns", "del", ns]) {
        tracing::warn!("deleting namespace {ns}: {e:#}");
    }
}

/// Remove namespaces left by earlier runs of this harness whose process is gone.
pub fn sweep_stale() -> Result<()> {
    let list = ip(&["netns", "list"])?;
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(rest) = name.strip_prefix(NS_PREFIX) else {
            continue;
        };
        let Some((pid, _)) = rest.split_once('-') else {
            continue;
        };
        let Ok(pid) = pid.parse::<i32>() else {
            continue;
        };
        // A live owner (another run in parallel) keeps its namespaces.
        if std::path::Path::new(&format!("/proc/{pid}")).exists()
            && pid != std::process::id() as i32
        {
            continue;
        }
        tracing::info!("sweeping leftover namespace {name}");
        delete_ns(name);
    }
    Ok(())
}

/// Move the calling thread into namespace `ns`; threads it spawns afterwards inherit it. The
/// harness does this on its main thread before starting the runtime, so every client socket is
/// created in the bridge namespace and the root namespace never dials 10.77.x.
pub fn enter(ns: &str) -> Result<()> {
    let f = std::fs::File::open(format!("/run/netns/{ns}"))
        .with_context(|| format!("opening /run/netns/{ns}"))?;
    use std::os::fd::AsRawFd;
    // SAFETY: setns(2) on a valid fd; affects only this thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        bail!("setns({ns}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Missing tools, each with the Debian package that provides it.
pub fn missing_prereqs(need_delay: bool, need_fuse: bool) -> Vec<String> {
    let mut missing = Vec::new();
    if need_fuse && !std::path::Path::new("/dev/fuse").exists() {
        missing.push(
            "/dev/fuse (the power-loss nemeses mount a FUSE file system): modprobe fuse".into(),
        );
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        missing.push(
            "root (namespaces and nftables need CAP_SYS_ADMIN/CAP_NET_ADMIN): run with sudo".into(),
        );
    }
    let mut tools = vec![("ip", "iproute2"), ("nft", "nftables")];
    if need_delay {
        tools.push(("iptables", "iptables"));
        tools.push(("python3", "python3"));
    }
    for (tool, pkg) in tools {
        let found = std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
        if !found {
            missing.push(format!("`{tool}` not found: apt-get install -y {pkg}"));
        }
    }
    missing
}
