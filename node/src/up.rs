//! `chorus up`: every node of the configuration as its own process on this machine.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::process::{Child, Command};

use crate::config::ClusterConfig;

pub async fn run(config_path: &Path) -> anyhow::Result<()> {
    let config = ClusterConfig::load(config_path)?;
    let exe = std::env::current_exe().context("cannot find the chorus executable")?;
    let mut children: Vec<(u64, Child)> = Vec::new();
    for node in &config.nodes {
        std::fs::create_dir_all(&node.data_dir)
            .with_context(|| format!("cannot create {}", node.data_dir.display()))?;
        let log_path = node.data_dir.join("node.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("cannot open {}", log_path.display()))?;
        let child = Command::new(&exe)
            .arg("start")
            .arg("--node")
            .arg(node.id.to_string())
            .arg("--config")
            .arg(config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start node {}", node.id))?;
        let grpc = node
            .grpc_addr
            .map(|addr| format!(", grpc {addr}"))
            .unwrap_or_default();
        println!(
            "node {}: http://{}  (raft {}{grpc}, log {})",
            node.id,
            node.http_addr,
            node.raft_addr,
            log_path.display()
        );
        children.push((node.id, child));
    }

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let ready = wait_ready(&client, &config, Duration::from_secs(60));
    tokio::select! {
        ok = ready => {
            if ok {
                println!("cluster ready: open the app at http://{}/ (the API is at /docs)", config.nodes[0].http_addr);
            } else {
                println!("the cluster is not ready after 60 s; see the node logs above");
            }
        }
        _ = crate::serve::shutdown_signal() => return stop_all(children).await,
    }
    println!("Ctrl-C stops every node.");
    loop {
        tokio::select! {
            _ = crate::serve::shutdown_signal() => return stop_all(children).await,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                for (id, child) in &mut children {
                    if let Ok(Some(status)) = child.try_wait() {
                        println!("node {id} exited ({status}); see its log");
                    }
                }
                children.retain_mut(|(_, c)| matches!(c.try_wait(), Ok(None)));
                if children.is_empty() {
                    anyhow::bail!("every node has exited");
                }
            }
        }
    }
}

async fn wait_ready(client: &reqwest::Client, config: &ClusterConfig, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let mut all = true;
        for node in &config.nodes {
            let ok = client
                .get(format!("http://{}/ready", node.http_addr))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            all &= ok;
        }
        if all {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}

/// SIGTERM to every node, then wait for each (SIGKILL after 15 s).
async fn stop_all(mut children: Vec<(u64, Child)>) -> anyhow::Result<()> {
    println!("stopping {} node(s)…", children.len());
    for (_, child) in &children {
        if let Some(pid) = child.id() {
            terminate(pid);
        }
    }
    for (id, child) in &mut children {
        match tokio::time::timeout(Duration::from_secs(15), child.wait()).await {
            Ok(Ok(status)) => println!("node {id} stopped ({status})"),
            _ => {
                println!("node {id} did not stop in time; killing it");
                let _ = child.kill().await;
            }
        }
    }
    Ok(())
}

fn terminate(pid: u32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) has no memory-safety preconditions; `pid` is a child we spawned and have
    // not yet reaped, so it cannot have been reused by another process.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
}
