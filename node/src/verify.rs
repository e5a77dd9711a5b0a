//! `chorus verify`: asks one node to check every audio chunk file against its hash and to fetch
//! what is missing or damaged from its peers (`POST /cluster/chunks/verify`), then prints what
//! it found. Exits non-zero if the node still lacks chunks afterwards.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::config::ClusterConfig;

/// A check reads every chunk file: allow for a large library on a slow disk.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(3600);

pub async fn run(config: &Path, node: u64) -> anyhow::Result<()> {
    let config = ClusterConfig::load(config)?;
    let addr = config.node(node)?.http_addr;
    let url = format!("http://{addr}/cluster/chunks/verify");
    let client = reqwest::Client::builder()
        .timeout(VERIFY_TIMEOUT)
        .no_proxy()
        .build()?;
    let answer = client
        .post(&url)
        .header("x-admin-token", &config.admin_token)
        .send()
        .await
        .with_context(|| format!("cannot reach node {node} at {addr}: is it running?"))?;
    let status = answer.status();
    let body: Value = answer.json().await.with_context(|| {
        format!("node {node} answered {status} with something that is not JSON")
    })?;
    if !status.is_success() {
        bail!(
            "node {node} answered {status}: {}",
            body["message"].as_str().unwrap_or("(no message)")
        );
    }
    let count = |key: &str| body[key].as_array().map_or(0, Vec::len);
    let checked = body["checked"].as_u64().unwrap_or(0);
    println!(
        "node {node}: checked {checked} chunk file{} ({} MiB); {} damaged, {} missing, {} fetched again from peers",
        if checked == 1 { "" } else { "s" },
        body["checked_bytes"].as_u64().unwrap_or(0) >> 20,
        count("corrupt"),
        count("missing"),
        body["repaired"],
    );
    for hash in body["corrupt"].as_array().into_iter().flatten() {
        println!(
            "  damaged (removed, fetched again): {}",
            hash.as_str().unwrap_or("?")
        );
    }
    let failed = body["failed"].as_array().cloned().unwrap_or_default();
    for why in &failed {
        println!("  NOT repaired: {}", why.as_str().unwrap_or("?"));
    }
    if !failed.is_empty() {
        bail!(
            "{} chunks could not be fetched from any peer; start the other nodes and run verify again",
            failed.len()
        );
    }
    Ok(())
}
