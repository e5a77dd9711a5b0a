//! `chorus start`: one node — storage, Raft, transport, HTTP — and its graceful shutdown.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::config::ClusterConfig;

pub async fn run(config_path: &Path, node_id: u64) -> anyhow::Result<()> {
    let config = ClusterConfig::load(config_path)?;
    let me = config.node(node_id)?.clone();
    std::fs::create_dir_all(&me.data_dir)
        .with_context(|| format!("cannot create the data directory {}", me.data_dir.display()))?;
    let (log, sm) = storage::open(&me.data_dir).with_context(|| {
        format!(
            "cannot open the store in {} (is another node using it?)",
            me.data_dir.display()
        )
    })?;

    let (tls, grpc_tls) = match (&me.tls_cert, &me.tls_key) {
        (Some(cert), Some(key)) => {
            let (http, grpc) = crate::tls::client_acceptors(cert, key)?;
            (Some(http), Some(grpc))
        }
        _ => (None, None),
    };
    // Bind HTTP first: a port conflict should fail before we join the cluster.
    let listener = TcpListener::bind(me.http_addr)
        .await
        .with_context(|| format!("cannot listen for HTTP on {}", me.http_addr))?;
    let grpc_listener = match me.grpc_addr {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for gRPC on {addr}"))?,
        ),
        None => None,
    };

    let args = raft::StartArgs {
        node_id,
        cluster_name: config.cluster_name.clone(),
        secret: config.secret.clone(),
        raft_listen: me.raft_addr,
        initial_members: config.members(),
        settings: config.raft.settings(),
        tls: match &config.cluster_tls {
            Some(t) => Some(crate::tls::cluster(&t.ca_cert, &t.cert, &t.key)?),
            None => None,
        },
    };
    let replica = raft::start(args, log.clone(), sm)
        .await
        .context("cannot start raft")?;
    let settings = api::ApiSettings {
        cluster_name: config.cluster_name.clone(),
        admin_token: config.admin_token.clone(),
        allow_anonymous_clear: config.queue.allow_anonymous_clear,
        anonymous_votes: config.queue.anonymous_votes,
        max_tracks_per_user: config.queue.max_tracks_per_user,
        skip_votes: config.queue.skip_votes,
        // Links point at HTTPS when this node serves it.
        public_url: me.public_url.clone().or_else(|| {
            me.tls_cert
                .as_ref()
                .map(|_| format!("https://{}", me.http_addr))
        }),
        slow_body_timeout: Duration::from_secs(config.http.slow_body_timeout_secs),
        max_upload_bytes: config.tracks.max_upload_mb * 1024 * 1024,
        token_ttl: Duration::from_secs(config.users.token_ttl_secs),
        upload_idle_timeout: Duration::from_secs(config.tracks.upload_idle_timeout_secs),
        max_in_flight: config.http.max_in_flight,
        // Peers are pushed to at their plain `http_addr`.
        push_chunks: me.tls_cert.is_none(),
    };
    let api = api::start(replica.clone(), settings).await?;
    tracing::info!(node = node_id, http = %me.http_addr, raft = %me.raft_addr, grpc = ?me.grpc_addr, data = %me.data_dir.display(), "node serving");

    // gRPC stops with HTTP: both watch `stopping`.
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    let grpc = grpc_listener.map(|listener| {
        let mut stopping = stopping.clone();
        tokio::spawn(api.grpc.serve(listener, grpc_tls, async move {
            let _ = stopping.wait_for(|stop| *stop).await;
        }))
    });

    // Stop on SIGTERM/SIGINT, or when the Raft core dies: a node that cannot replicate must not
    // keep answering /health as if it were fine (its supervisor restarts it).
    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<String>();
    let raft_failed = {
        let replica = replica.clone();
        async move {
            let why = replica.failed().await;
            tracing::error!(node = node_id, reason = %why, "the Raft core stopped; shutting down");
            let _ = failed_tx.send(why);
        }
    };
    let api_stop = api.stop;
    let header_read_timeout = Duration::from_secs(config.http.header_read_timeout_secs);
    let limits = crate::http_server::Limits {
        header_read_timeout,
        max_connections: crate::http_server::connection_cap(config.http.max_connections),
    };
    let stopping_replica = replica.clone();
    crate::http_server::serve(listener, tls, api.http, limits, async move {
        tokio::select! {
            _ = shutdown_signal() => {
                // A leader hands leadership over first (about 0.35 s), so the cluster does not
                // wait out an election timeout; requests arriving meanwhile go to the next one.
                if let Some(leader) = stopping_replica.hand_over_leadership().await {
                    tracing::info!(node = node_id, leader, "handed leadership over");
                }
            }
            _ = raft_failed => {}
        }
        api_stop.stopping();
        let _ = stopping_tx.send(true);
    })
    .await;
    if let Some(grpc) = grpc {
        match grpc.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "the gRPC server stopped with an error"),
            Err(e) => tracing::warn!(error = %e, "the gRPC server task failed"),
        }
    }
    let failure = failed_rx.await.ok();

    tracing::info!(node = node_id, "shutting down");
    replica.shutdown().await;
    // The state machine's last writes may still be queued for sled: written (with the chunk
    // files they name synced), so the next start has no entries to apply again.
    let state = replica.state().clone();
    if let Err(e) = tokio::task::spawn_blocking(move || state.finish_writes())
        .await
        .context("waiting for the state machine's writes")?
    {
        tracing::warn!(error = %e, "the state machine's last writes failed; they are replayed from the log at the next start");
    }
    log.flush()
        .await
        .context("final flush of the store failed")?;
    if let Some(why) = failure {
        anyhow::bail!("the Raft core stopped: {why}");
    }
    tracing::info!(node = node_id, "stopped");
    Ok(())
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}
