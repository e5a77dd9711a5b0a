//! The seed's `client.py` commands, over HTTP, against any node.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;
use serde_json::{Value, json};

#[derive(Subcommand)]
pub enum QueueCmd {
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

/// Runs `cmd`; with a stored login the request carries its token, so a vote is that user's one
/// vote (a cluster without `anonymous_votes` takes no other).
pub async fn run(base: &str, cmd: &QueueCmd, token: Option<&str>) -> anyhow::Result<()> {
    let http = super::http_client(Some(Duration::from_secs(15)))?;
    let request = match cmd {
        QueueCmd::Add {
            id,
            title,
            artist,
            duration,
        } => http
            .post(format!("{base}/add_track"))
            .json(&json!({"id": id, "title": title, "artist": artist, "duration": duration})),
        QueueCmd::Play => http.post(format!("{base}/play_next")),
        QueueCmd::History => http.get(format!("{base}/history")),
        QueueCmd::Queue => http.get(format!("{base}/queue")),
        QueueCmd::Metadata { id } => http.get(format!("{base}/metadata/{id}")),
        QueueCmd::Vote { id, up } => http.post(format!("{base}/vote?id={id}&up={up}")),
        QueueCmd::Remove { id } => http
            .post(format!("{base}/remove_track"))
            .json(&json!({"id": id})),
    };
    let request = match token {
        Some(token) => request.bearer_auth(token),
        None => request,
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
