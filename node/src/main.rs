//! `chorus`: one binary for every node of a cluster, the local launcher and the CLI client.
//!
//! - `chorus up`: starts every node of `cluster.toml` as its own process on this machine.
//! - `chorus start --node <id>`: runs one node (one per machine in production).
//! - `chorus client …`: the seed's `client.py` commands over HTTP, against any node.

mod client;
mod config;
mod serve;
mod up;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "chorus",
    version,
    about = "A replicated, self-hosted music service"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start every node of the configuration on this machine and stay in the foreground
    /// (Ctrl-C stops them all).
    Up {
        #[arg(long, env = "CHORUS_CONFIG", default_value = "cluster.toml")]
        config: PathBuf,
    },
    /// Run one node of the configuration.
    Start {
        /// The node's id in the configuration.
        #[arg(long)]
        node: u64,
        #[arg(long, env = "CHORUS_CONFIG", default_value = "cluster.toml")]
        config: PathBuf,
    },
    /// Talk to a running cluster (the seed's client.py commands).
    Client(client::ClientArgs),
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("info,openraft=warn,ractor=warn,ractor_cluster=warn,sled=warn")
    });
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Cmd::Up { config } => {
            init_logging();
            runtime.block_on(up::run(&config))
        }
        Cmd::Start { node, config } => {
            init_logging();
            runtime.block_on(serve::run(&config, node))
        }
        Cmd::Client(args) => runtime.block_on(client::run(args)),
    }
}
