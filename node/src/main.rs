//! `chorus`: one binary for every node of a cluster, the local launcher and the CLI client.
//!
//! - `chorus up`: starts every node of `cluster.toml` as its own process on this machine.
//! - `chorus start --node <id>`: runs one node (one per machine in production).
//! - `chorus client …`: the seed's `client.py` commands and the music commands, over HTTP.
//! - `chorus backup` / `chorus restore`: save a cluster's state to a file; seed a new one from it.
//! - `chorus completions <shell>`: shell completions.

mod backup;
mod client;
mod config;
mod http_server;
mod serve;
mod tls;
mod up;
mod verify;

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
        /// The node's id in the configuration (default: the number the host name ends in,
        /// `chorus-2` being node 2).
        #[arg(long, env = "CHORUS_NODE")]
        node: Option<u64>,
        #[arg(long, env = "CHORUS_CONFIG", default_value = "cluster.toml")]
        config: PathBuf,
    },
    /// Talk to a running cluster: the seed's client.py commands, accounts, uploads, the library,
    /// downloads and the playlist.
    Client(client::ClientArgs),
    /// Print shell completions: `chorus completions bash > /etc/bash_completion.d/chorus`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Save a backup of the whole cluster (users, tracks with their audio, playlists, queue,
    /// history) from one running node, as of one moment; writes go on meanwhile.
    Backup {
        /// The node to ask, e.g. http://127.0.0.1:8081 (default: the configuration's first).
        #[arg(long)]
        node: Option<String>,
        /// Where to save it.
        #[arg(short, long)]
        output: PathBuf,
        /// The cluster's admin token (default: `admin_token` of the configuration).
        #[arg(long, env = "CHORUS_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
        /// A CA certificate (PEM) to trust when the node serves HTTPS.
        #[arg(long, env = "CHORUS_CA_CERT")]
        ca_cert: Option<PathBuf>,
        #[arg(long, env = "CHORUS_CONFIG", default_value = "cluster.toml")]
        config: PathBuf,
    },
    /// Seed a new cluster from a backup: writes the data directory of every node of the
    /// configuration (or of `--node` only), which must not be running; then start them as usual.
    Restore {
        /// The backup file (`chorus backup -o FILE`).
        #[arg(long)]
        from: PathBuf,
        /// The configuration of the new cluster: its nodes become the members.
        #[arg(long, env = "CHORUS_CONFIG", default_value = "cluster.toml")]
        config: PathBuf,
        /// Restore only this node's data directory (one node per machine).
        #[arg(long)]
        node: Option<u64>,
        /// Replace data directories that already hold data.
        #[arg(long)]
        force: bool,
    },
    /// Check every audio chunk file of one running node against its hash; fetch damaged or
    /// missing ones again from its peers.
    Verify {
        /// The node's id in the configuration.
        #[arg(long)]
        node: u64,
        #[arg(long, env = "CHORUS_CONFIG", default_value = "cluster.toml")]
        config: PathBuf,
    },
}

/// This machine's host name (the kernel's, else `$HOSTNAME`).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_default()
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

/// glibc's malloc gives each allocation above a (dynamically raised, at most 32 MiB) threshold
/// its own mmap, and returns free memory at the heap's top to the kernel above 128 KiB. Audio moves
/// through chorus in 1 MiB chunks and multi-MiB replication frames, so by default every one of
/// them costs fresh pages: page faults, zeroing and unmapping were half of a catching-up leader's
/// CPU. Fixing both thresholds keeps those buffers in the heap for reuse (measured: catching up
/// 300 MiB of audio 5.9-7.5 s -> 4.3-5.4 s). Set before any thread starts.
///
/// glibc also gives threads arenas of their own (up to 8 per core), and each keeps the 1 MiB
/// buffers freed in it: 16 clients streaming, each chunk read on whichever blocking-pool thread
/// was free, held 130 MiB on the serving node; with two arenas 56 MiB, at the same rate
/// (`bench/experiments/library.py`, bench/RESULTS.md).
fn tune_malloc() {
    // SAFETY: mallopt only changes allocator parameters; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 * 1024 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 * 1024 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// The trim threshold only returns memory at the top of the heap. A node that has applied many
/// writes holds ~100,000 small long-lived dedupe records scattered through the heap, and the
/// free pages between them stayed resident: 178 MiB RSS after 2 x 10 s of 64-client writes,
/// 114 MiB with this periodic trim, same throughput (`python3 bench/experiments/sustained_writes.py`).
fn start_malloc_trimmer() {
    let trimmer = std::thread::Builder::new()
        .name("malloc-trim".into())
        .spawn(|| {
            loop {
                std::thread::sleep(std::time::Duration::from_secs(2));
                // SAFETY: malloc_trim only releases free heap pages; it is thread-safe.
                unsafe {
                    libc::malloc_trim(0);
                }
            }
        });
    if let Err(e) = trimmer {
        tracing::warn!(error = %e, "cannot start the malloc-trim thread; memory stays as it is");
    }
}

fn main() -> anyhow::Result<()> {
    tune_malloc();
    tls::install_provider();
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
            let node = match node {
                Some(node) => node,
                None => config::node_id_from_host_name(&host_name())?,
            };
            init_logging();
            start_malloc_trimmer();
            runtime.block_on(serve::run(&config, node))
        }
        Cmd::Client(args) => {
            client::trust(args.ca_cert.clone());
            // One line, whatever RUST_BACKTRACE says: the client's errors are for people.
            if let Err(e) = runtime.block_on(client::run(args)) {
                eprintln!("error: {e:#}");
                std::process::exit(1);
            }
            Ok(())
        }
        Cmd::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "chorus", &mut std::io::stdout());
            Ok(())
        }
        Cmd::Verify { node, config } => runtime.block_on(verify::run(&config, node)),
        Cmd::Backup {
            node,
            output,
            admin_token,
            ca_cert,
            config,
        } => {
            client::trust(ca_cert);
            runtime.block_on(backup::save(
                node.as_deref(),
                &output,
                admin_token.as_deref(),
                &config,
            ))
        }
        Cmd::Restore {
            from,
            config,
            node,
            force,
        } => runtime.block_on(backup::restore(&config, &from, node, force)),
    }
}
