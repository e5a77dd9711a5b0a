//! `chorus client`: the seed's `client.py` commands, over HTTP, against any node.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

#[derive(Args)]
pub struct ClientArgs {
    /// Node to talk to, e.g. http://127.0.0.1:8081 (default: the first node of the configuration).
    #[arg(long, global = true)]
    node: Option<String>,
    #[arg(
        long,
        env = "CHORUS_CONFIG",
        default_value = "cluster.toml",
        global = true
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: ClientCmd,
}

#[derive(Subcommand)]
enum ClientCmd {
    /// Add a track to the queue.
    Add {
        #[arg(long)]
        id: u64,
        #[arg(long)]
        title: String,
        #[arg(long)]
        artist: String,
        /// Seconds.
        #[arg(long)]
        duration: u32,
    },
    /// Play the next track.
    Play,
    /// Show the play history.
    History,
    /// Show the queue.
    Queue,
    /// Show one queued track.
    Metadata {
        #[arg(long)]
        id: u64,
    },
    /// Vote a track up or down.
    Vote {
        #[arg(long)]
        id: u64,
        #[arg(long, default_value = "true", action = clap::ArgAction::Set)]
        up: bool,
    },
    /// Remove a track from the queue.
    Remove {
        #[arg(long)]
        id: u64,
    },
}

fn base_url(args: &ClientArgs) -> anyhow::Result<String> {
    if let Some(node) = &args.node {
        let node = node.trim_end_matches('/');
        return Ok(if node.contains("://") {
            node.to_string()
        } else {
            format!("http://{node}")
        });
    }
    let config = crate::config::ClusterConfig::load(&args.config)
        .context("pass --node http://host:port, or run from a directory with cluster.toml")?;
    Ok(format!("http://{}", config.nodes[0].http_addr))
}

pub async fn run(args: ClientArgs) -> anyhow::Result<()> {
    let base = base_url(&args)?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()?;
    let request = match &args.command {
        ClientCmd::Add {
            id,
            title,
            artist,
            duration,
        } => http
            .post(format!("{base}/add_track"))
            .json(&json!({"id": id, "title": title, "artist": artist, "duration": duration})),
        ClientCmd::Play => http.post(format!("{base}/play_next")),
        ClientCmd::History => http.get(format!("{base}/history")),
        ClientCmd::Queue => http.get(format!("{base}/queue")),
        ClientCmd::Metadata { id } => http.get(format!("{base}/metadata/{id}")),
        ClientCmd::Vote { id, up } => http.post(format!("{base}/vote?id={id}&up={up}")),
        ClientCmd::Remove { id } => http
            .post(format!("{base}/remove_track"))
            .json(&json!({"id": id})),
    };
    let response = request
        .send()
        .await
        .with_context(|| format!("cannot reach {base}"))?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        let message = body
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("no details");
        bail!("{status}: {message}");
    }
    println!("{}", serde_json::to_string_pretty(&body)?);
    Ok(())
}
