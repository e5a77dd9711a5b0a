//! `chorus client`: talk to a running cluster over HTTP, against any node.
//!
//! - [`queue`]: the seed's `client.py` commands (add, play, history, queue, metadata, vote,
//!   remove), anonymous as in the seed.
//! - [`music`]: accounts, uploads with progress, the library, downloads and the playlist.
//! - [`member`]: the cluster's membership (list, add, remove), with the admin token.
//! - [`session`]: the login kept between commands (in the user's config directory).

mod member;
pub(crate) mod music;
mod queue;
mod session;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use reqwest::StatusCode;
use serde_json::Value;

#[derive(Args)]
pub struct ClientArgs {
    /// Node to talk to, e.g. http://127.0.0.1:8081 (default: the node you logged in to, else
    /// the first node of the configuration).
    #[arg(long, global = true)]
    node: Option<String>,
    #[arg(
        long,
        env = "CHORUS_CONFIG",
        default_value = "cluster.toml",
        global = true
    )]
    config: PathBuf,
    /// The cluster's admin token, for `member` (default: `admin_token` of the configuration).
    #[arg(
        long,
        env = "CHORUS_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    admin_token: Option<String>,
    /// A CA certificate (PEM) to trust for nodes that serve HTTPS (`https://` is then the
    /// default scheme of `--node`).
    #[arg(long, env = "CHORUS_CA_CERT", global = true)]
    pub ca_cert: Option<PathBuf>,
    #[command(subcommand)]
    command: ClientCmd,
}

#[derive(Subcommand)]
enum ClientCmd {
    #[command(flatten)]
    Queue(queue::QueueCmd),
    #[command(flatten)]
    Music(music::MusicCmd),
    /// The cluster's members: list them, add a node, remove one (admin token).
    #[command(subcommand)]
    Member(member::MemberCmd),
}

/// The CA the CLI trusts for HTTPS (`--ca-cert`), set once at start.
static CA_CERT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Trust the CA certificates at `ca_cert` for every HTTPS request this process makes.
pub(crate) fn trust(ca_cert: Option<PathBuf>) {
    if let Some(ca) = ca_cert {
        let _ = CA_CERT.set(ca);
    }
}

/// `--node` as a base URL (`https://` added when it has no scheme and a CA is given, else
/// `http://`).
pub(crate) fn normalise(node: &str) -> String {
    let node = node.trim_end_matches('/');
    if node.contains("://") {
        node.to_string()
    } else if CA_CERT.get().is_some() {
        format!("https://{node}")
    } else {
        format!("http://{node}")
    }
}

/// Where the configuration says node `n` is reached: its `public_url`, else HTTPS when it
/// serves TLS, else HTTP.
pub(crate) fn node_url(n: &crate::config::NodeConfig) -> String {
    match (&n.public_url, &n.tls_cert) {
        (Some(url), _) => url.trim_end_matches('/').to_string(),
        (None, Some(_)) => format!("https://{}", n.http_addr),
        (None, None) => format!("http://{}", n.http_addr),
    }
}

/// The node to talk to: `--node`, else the node of the stored login (if `use_session`), else
/// the first node of the configuration.
fn base_url(args: &ClientArgs, use_session: bool) -> anyhow::Result<String> {
    if let Some(node) = &args.node {
        return Ok(normalise(node));
    }
    if use_session && let Ok(Some(s)) = session::Session::load() {
        return Ok(s.node);
    }
    let config = crate::config::ClusterConfig::load(&args.config)
        .context("pass --node http://host:port, or run from a directory with cluster.toml")?;
    Ok(node_url(&config.nodes[0]))
}

pub(crate) fn http_client(timeout: Option<Duration>) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(5));
    if let Some(timeout) = timeout {
        builder = builder.timeout(timeout);
    }
    if let Some(ca) = CA_CERT.get() {
        builder = builder.use_preconfigured_tls(crate::tls::trusting(ca)?);
    }
    Ok(builder.build()?)
}

pub async fn run(args: ClientArgs) -> anyhow::Result<()> {
    match &args.command {
        ClientCmd::Queue(cmd) => {
            let session = session::Session::load().ok().flatten();
            let base = base_url(&args, true)?;
            // The login belongs to the node's cluster; another node of it takes it too, but a
            // token is never sent to a node the user did not log in to.
            let token = session
                .as_ref()
                .filter(|s| args.node.is_none() || s.node == base)
                .map(|s| s.token.as_str());
            queue::run(&base, cmd, token).await
        }
        ClientCmd::Music(cmd) => {
            let base = base_url(&args, !cmd.is_login())?;
            music::run(&base, cmd).await
        }
        ClientCmd::Member(cmd) => {
            let base = base_url(&args, false)?;
            let token = admin_token(args.admin_token.as_deref(), &args.config)?;
            member::run(&base, &token, &args.config, cmd).await
        }
    }
}

/// The admin token: given (`--admin-token`, `CHORUS_ADMIN_TOKEN`), else the configuration's.
pub fn admin_token(given: Option<&str>, config: &std::path::Path) -> anyhow::Result<String> {
    if let Some(token) = given {
        return Ok(token.to_string());
    }
    let config = crate::config::ClusterConfig::load(config).context(
        "pass --admin-token (or set CHORUS_ADMIN_TOKEN), or --config with the cluster's file",
    )?;
    Ok(config.admin_token)
}

/// The node's error as one line: status and its message, and what to do about a 401.
pub(crate) async fn failure(response: reqwest::Response) -> anyhow::Error {
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let message = body["message"].as_str().unwrap_or("no details");
    let hint = if status == StatusCode::UNAUTHORIZED && !message.contains("admin token") {
        " (run `chorus client login`)"
    } else {
        ""
    };
    anyhow::anyhow!("{status}: {message}{hint}")
}

/// Sends `request` and returns its JSON answer, or the node's error as one line.
pub(super) async fn expect_ok(request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
    let response = request.send().await.map_err(unreachable)?;
    if !response.status().is_success() {
        return Err(failure(response).await);
    }
    Ok(response.json().await.unwrap_or(Value::Null))
}

pub(crate) fn unreachable(e: reqwest::Error) -> anyhow::Error {
    let url = e.url().map(|u| u.as_str().to_string()).unwrap_or_default();
    anyhow::anyhow!("cannot reach the node ({url}): {e}")
}
