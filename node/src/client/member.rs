//! `chorus client member`: list the cluster's members, add a node, remove one. Adding waits
//! until the node has caught up and is a voter (or says why it was not added).

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use serde_json::{Value, json};

use super::{expect_ok, http_client};

#[derive(Subcommand)]
pub enum MemberCmd {
    /// Every member: id, addresses, voter or learner, reachable from the node asked, the leader.
    List {
        /// Print the node's JSON (`GET /cluster`) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Add a node that is already running (`chorus start --node ID` on its machine, with the
    /// cluster's secret): it catches up as a learner, then becomes a voter.
    Add {
        id: u64,
        /// Its HTTP address (default: node ID's `http_addr` in the configuration).
        #[arg(long)]
        http_addr: Option<String>,
        /// Its Raft address (default: node ID's `raft_addr` in the configuration).
        #[arg(long)]
        raft_addr: Option<String>,
    },
    /// Remove a node (a dead one too); the cluster goes on without it.
    Remove { id: u64 },
}

pub async fn run(base: &str, token: &str, config: &Path, cmd: &MemberCmd) -> anyhow::Result<()> {
    // Adding waits for the node to catch up: as long as it keeps making progress.
    let http = http_client(None)?;
    match cmd {
        MemberCmd::List { json } => {
            let request = http
                .get(format!("{base}/cluster"))
                .timeout(Duration::from_secs(10));
            let cluster = expect_ok(request).await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&cluster)?);
            } else {
                print_members(&cluster);
            }
        }
        MemberCmd::Add {
            id,
            http_addr,
            raft_addr,
        } => {
            let (http_addr, raft_addr) = match (http_addr, raft_addr) {
                (Some(h), Some(r)) => (h.clone(), r.clone()),
                (h, r) => {
                    let config = crate::config::ClusterConfig::load(config).with_context(|| {
                        format!("pass --http-addr and --raft-addr, or list node {id} in --config")
                    })?;
                    let node = config.node(*id)?;
                    (
                        h.clone().unwrap_or_else(|| node.http_addr.to_string()),
                        r.clone().unwrap_or_else(|| node.raft_addr.to_string()),
                    )
                }
            };
            eprintln!("adding node {id} ({raft_addr}); it catches up first…");
            let body = json!({"id": id, "http_addr": http_addr, "raft_addr": raft_addr});
            let request = http
                .post(format!("{base}/cluster/members"))
                .header("x-admin-token", token)
                .json(&body);
            let answer = expect_ok(request).await?;
            println!("{}", answer["message"].as_str().unwrap_or("added"));
        }
        MemberCmd::Remove { id } => {
            let request = http
                .delete(format!("{base}/cluster/members/{id}"))
                .header("x-admin-token", token)
                .timeout(Duration::from_secs(60));
            let answer = expect_ok(request).await?;
            println!("{}", answer["message"].as_str().unwrap_or("removed"));
        }
    }
    Ok(())
}

fn print_members(cluster: &Value) {
    let leader = cluster["leader_id"].as_u64();
    println!(
        "{:>4}  {:<8} {:<9} {:<22} {:<22} LEADER",
        "ID", "ROLE", "REACHABLE", "HTTP", "RAFT"
    );
    for m in cluster["members"].as_array().into_iter().flatten() {
        let id = m["id"].as_u64();
        let role = if m["voter"].as_bool() == Some(true) {
            "voter"
        } else {
            "learner"
        };
        let reachable = if m["reachable"].as_bool() == Some(true) {
            "yes"
        } else {
            "no"
        };
        println!(
            "{:>4}  {:<8} {:<9} {:<22} {:<22} {}",
            id.map_or("?".to_string(), |i| i.to_string()),
            role,
            reachable,
            m["http_addr"].as_str().unwrap_or(""),
            m["raft_addr"].as_str().unwrap_or(""),
            if id.is_some() && id == leader {
                "*"
            } else {
                ""
            },
        );
    }
}
