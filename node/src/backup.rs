//! `chorus backup` and `chorus restore`: save a running cluster's state to one file, and seed a
//! new cluster's data directories from it (the archive format is `storage::backup`'s).

use std::fs::File;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use storage::backup::{self, BackupHeader, StagedRestore};

use crate::client::music::{bar, part_file, receive};
use crate::client::{admin_token, failure, http_client, normalise, unreachable};
use crate::config::ClusterConfig;

/// Downloads `GET /backup` from `node` into `output` (through a `.part` file that is checked
/// before it takes the name), with a progress bar.
pub async fn save(
    node: Option<&str>,
    output: &Path,
    token: Option<&str>,
    config: &Path,
) -> anyhow::Result<()> {
    let token = admin_token(token, config)?;
    let base = match node {
        Some(node) => normalise(node),
        None => {
            let config = ClusterConfig::load(config)
                .context("pass --node http://host:port, or --config with the cluster's file")?;
            crate::client::node_url(&config.nodes[0])
        }
    };
    let started = Instant::now();
    let response = http_client(None)?
        .get(format!("{base}/backup"))
        .header("x-admin-token", token)
        .send()
        .await
        .map_err(unreachable)?;
    if !response.status().is_success() {
        return Err(failure(response).await);
    }
    let partial = part_file(output)?;
    receive(
        response,
        &partial,
        "backup",
        "the node broke off the backup; nothing was saved",
    )
    .await?;
    let header = match check(&partial).await {
        Ok(header) => header,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    std::fs::rename(&partial, output)
        .with_context(|| format!("cannot write {}", output.display()))?;
    let bytes = std::fs::metadata(output).map_or(0, |m| m.len());
    println!(
        "saved {}: {}, checked; {} (in {:.1} s, {:.0} MiB/s)",
        output.display(),
        describe(&header),
        mib(bytes),
        started.elapsed().as_secs_f64(),
        bytes as f64 / (1024.0 * 1024.0) / started.elapsed().as_secs_f64().max(1e-3)
    );
    Ok(())
}

/// Reads the whole archive back and checks it (digest, every chunk's hash, the state).
async fn check(path: &Path) -> anyhow::Result<BackupHeader> {
    let path = path.to_path_buf();
    let len = std::fs::metadata(&path).map_or(0, |m| m.len());
    let progress = bar(len, "checking");
    let shown = progress.clone();
    let checked = tokio::task::spawn_blocking(move || {
        let file = File::open(&path).with_context(|| format!("cannot read {}", path.display()))?;
        Ok::<_, anyhow::Error>(backup::verify(file, &mut |n| shown.set_position(n))?)
    })
    .await?;
    progress.finish_and_clear();
    checked
}

/// Seeds the data directory of every node of `config` (or only `only`) from the archive
/// `from`: all are written and checked before any is put in place.
pub async fn restore(
    config: &Path,
    from: &Path,
    only: Option<u64>,
    replace: bool,
) -> anyhow::Result<()> {
    let config = ClusterConfig::load(config)?;
    let nodes: Vec<_> = match only {
        Some(id) => vec![config.node(id)?.clone()],
        None => config.nodes.clone(),
    };
    for node in &nodes {
        backup::check_target(&node.data_dir, replace)
            .with_context(|| format!("node {}", node.id))?;
    }
    let members = config.members();
    let len = std::fs::metadata(from)
        .with_context(|| format!("cannot read {}", from.display()))?
        .len();
    let mut staged: Vec<StagedRestore> = Vec::new();
    let started = Instant::now();
    for node in &nodes {
        let progress = bar(len, &format!("node {}", node.id));
        let shown = progress.clone();
        let (archive, dir, id, members) = (
            from.to_path_buf(),
            node.data_dir.clone(),
            node.id,
            members.clone(),
        );
        let restored = tokio::task::spawn_blocking(move || {
            let file = File::open(&archive)
                .with_context(|| format!("cannot read {}", archive.display()))?;
            Ok::<_, anyhow::Error>(backup::restore(
                std::io::BufReader::new(file),
                &dir,
                id,
                &members,
                &mut |n| shown.set_position(n),
            )?)
        })
        .await?;
        progress.finish_and_clear();
        // On an error the restores staged so far are dropped, and their directories with them.
        staged.push(restored.with_context(|| {
            format!(
                "restoring node {} from {}; nothing was changed",
                node.id,
                from.display()
            )
        })?);
    }
    let header = staged.first().map(|s| s.header().clone());
    for (node, restore) in nodes.iter().zip(staged) {
        restore
            .commit()
            .with_context(|| format!("putting node {}'s restored data in place", node.id))?;
        println!(
            "node {}: restored into {}",
            node.id,
            node.data_dir.display()
        );
    }
    if let Some(header) = header {
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "restored {} to {} node(s) in {seconds:.1} s ({:.0} MiB/s per node); start them as usual (`chorus up`, or `chorus start --node N` on each machine)",
            describe(&header),
            nodes.len(),
            len as f64 / (1024.0 * 1024.0) / (seconds / nodes.len() as f64).max(1e-3)
        );
    }
    Ok(())
}

fn describe(h: &BackupHeader) -> String {
    format!(
        "state as of log index {}: {} users, {} tracks ({} of audio in {} chunks), {} queued, {} played",
        h.last_log_id.index,
        h.users,
        h.tracks,
        mib(h.chunk_bytes),
        h.chunks,
        h.queued,
        h.played
    )
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}
