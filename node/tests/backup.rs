//! Backup and restore with real processes, as an operator runs them: `chorus backup` from a
//! live 3-node cluster while a client keeps writing, `chorus restore` into a new cluster on
//! other ports, and the new cluster holds the same users (same passwords), tracks (same bytes),
//! playlists, queue and history, as of one moment. A truncated or altered archive restores
//! nothing.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use common::music::{download, fixture, long_mp3, upload};
use common::{
    Body, CONVERGE_TIMEOUT, DEFAULT_COMPACTION, NodeApi, TestCluster, User, eventually, register,
};
use reqwest::Method;
use serde_json::{Value, json};

/// Runs `chorus <args>` with the cluster's admin token coming from its configuration file.
fn chorus(args: &[&str], config: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chorus"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("CHORUS_ADMIN_TOKEN")
        .output()
        .expect("run chorus")
}

fn succeeded(out: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn failed(out: &Output, what: &str) -> String {
    assert!(!out.status.success(), "{what} succeeded but must not");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

async fn login(api: &NodeApi, name: &str) -> u16 {
    let body = json!({"username": name, "password": "password123"});
    let resp = api
        .post("/users/login", Body::Json(body))
        .await
        .expect("login");
    resp.status.as_u16()
}

/// The queue's entries whose id satisfies `keep`, as the node lists them.
fn entries(queue: &Value, keep: impl Fn(u64) -> bool) -> Vec<Value> {
    queue
        .as_array()
        .expect("the queue is an array")
        .iter()
        .filter(|t| t["id"].as_u64().is_some_and(&keep))
        .cloned()
        .collect()
}

const WRITER_IDS: u64 = 100_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_writes_restores_into_a_new_cluster() {
    let old = TestCluster::start(3).await;
    let api = old.api(1);
    let alice = register(&api, "alice").await;
    let bob = register(&api, "bob").await;
    let songs = [fixture("untagged-2s.mp3"), long_mp3(40)];
    let mut tracks: Vec<(String, &User, &Vec<u8>)> = Vec::new();
    for (i, (user, mp3)) in [(&alice, &songs[0]), (&alice, &songs[1]), (&bob, &songs[1])]
        .into_iter()
        .enumerate()
    {
        let id = upload(&api, user, Some(&format!("song {i}")), mp3).await;
        tracks.push((id, user, mp3));
    }
    let playlist = json!({"user_id": alice.id, "track_id": tracks[1].0});
    common::music::call(
        &api,
        Method::POST,
        "/playlist/add",
        Body::Json(playlist),
        Some(&alice),
    )
    .await
    .expect_status(200);
    for id in 1..=5 {
        let add = json!({"id": id, "title": format!("q{id}"), "artist": "a", "duration": 60});
        api.write_ok("/add_track", Body::Json(add)).await;
    }
    api.write_ok("/vote?id=3&up=true", Body::None).await;
    api.write_ok("/vote?id=4&up=false", Body::None).await;
    api.write_ok("/play_next", Body::None).await;
    let history = api.read_ok("/history").await;
    let queued_before = entries(&api.read_ok("/queue").await, |id| id < WRITER_IDS);
    let library = api.read_ok("/tracks").await;
    let alice_playlist = api.read_ok(&format!("/playlist/{}", alice.id)).await;

    let unauthorised = api.get("/backup").await.expect("GET /backup");
    unauthorised.expect_error_code(401, "unauthorized");

    // A client adds tracks to the queue, one after another, through another node.
    let acked = Arc::new(Mutex::new(Vec::<u64>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (api, acked, stop) = (old.api(2), acked.clone(), stop.clone());
        tokio::spawn(async move {
            let mut id = WRITER_IDS;
            while !stop.load(Ordering::Relaxed) {
                let add = json!({"id": id, "title": "w", "artist": "w", "duration": 60});
                api.write_ok("/add_track", Body::Json(add)).await;
                acked.lock().expect("lock").push(id);
                id += 1;
            }
        })
    };
    eventually("the writer is writing", CONVERGE_TIMEOUT, async || {
        (acked.lock().expect("lock").len() >= 5).then_some(())
    })
    .await;
    let acked_before = acked.lock().expect("lock").len();
    let dir = tempfile::tempdir().expect("temp dir");
    let archive = dir.path().join("cluster.chorusbackup");
    let (config, url, file) = (
        old.config_path().to_path_buf(),
        old.url(3),
        archive.to_string_lossy().into_owned(),
    );
    let saved = tokio::task::spawn_blocking(move || {
        chorus(&["backup", "--node", &url, "-o", &file], &config)
    })
    .await
    .expect("join");
    let acked_during = acked.lock().expect("lock").len();
    stop.store(true, Ordering::Relaxed);
    writer.await.expect("the writer");
    let said = succeeded(&saved, "chorus backup");
    assert!(
        said.contains("3 tracks") && said.contains("2 users"),
        "{said}"
    );
    assert!(
        acked_during > acked_before,
        "the backup ran while writes went on"
    );

    let mut new = TestCluster::configure(3, &DEFAULT_COMPACTION, "");
    let restored = chorus(
        &["restore", "--from", &archive.to_string_lossy()],
        new.config_path(),
    );
    succeeded(&restored, "chorus restore");
    new.launch().await;
    let api = new.api(2);

    for name in ["alice", "bob"] {
        assert_eq!(
            login(&api, name).await,
            200,
            "{name} logs in with the same password"
        );
    }
    assert_eq!(api.read_ok("/tracks").await, library);
    for (id, user, mp3) in &tracks {
        let file = download(&new.api(3), id, user).await;
        assert_eq!(file.status, 200, "{}", file.describe());
        assert!(file.bytes == **mp3, "track {id}'s bytes are the same");
    }
    // The same playlist; its links name the node asked.
    let relinked = api.read_ok(&format!("/playlist/{}", alice.id)).await;
    let old_base = format!("http://{}", old.addrs(1).0);
    let new_base = format!("http://{}", new.addrs(2).0);
    assert_eq!(
        relinked.to_string(),
        alice_playlist.to_string().replace(&old_base, &new_base)
    );
    assert_eq!(api.read_ok("/history").await, history);
    let queue = api.read_ok("/queue").await;
    assert_eq!(entries(&queue, |id| id < WRITER_IDS), queued_before);
    // One moment: every add acknowledged before the backup began, then a prefix of the rest.
    let mut written: Vec<u64> = entries(&queue, |id| id >= WRITER_IDS)
        .iter()
        .filter_map(|t| t["id"].as_u64())
        .collect();
    written.sort_unstable();
    let all = acked.lock().expect("lock").clone();
    assert!(
        written.len() >= acked_before,
        "{} < {acked_before}",
        written.len()
    );
    assert_eq!(
        written,
        all[..written.len().min(all.len())],
        "a prefix of the writes"
    );

    // The new cluster takes writes, and a restore over its running nodes is refused.
    register(&api, "carol").await;
    let over = chorus(
        &["restore", "--from", &archive.to_string_lossy(), "--force"],
        new.config_path(),
    );
    let said = failed(&over, "restore over a running cluster");
    assert!(said.contains("running node"), "{said}");
    let again = chorus(
        &[
            "restore",
            "--from",
            &archive.to_string_lossy(),
            "--node",
            "1",
        ],
        new.config_path(),
    );
    let said = failed(&again, "restore over data");
    assert!(
        said.contains("--force") || said.contains("running node"),
        "{said}"
    );

    // A truncated or altered archive: a clear error and no data directory written.
    let bytes = std::fs::read(&archive).expect("read the archive");
    let cut = dir.path().join("cut.chorusbackup");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).expect("write");
    let mut altered = bytes.clone();
    let middle = bytes.len() / 3;
    altered[middle] ^= 1;
    let tampered = dir.path().join("altered.chorusbackup");
    std::fs::write(&tampered, &altered).expect("write");
    let fresh = TestCluster::configure(3, &DEFAULT_COMPACTION, "");
    for (file, expect) in [(&cut, "truncated"), (&tampered, "damaged")] {
        let out = chorus(
            &["restore", "--from", &file.to_string_lossy()],
            fresh.config_path(),
        );
        let said = failed(&out, "restore of a bad archive");
        assert!(said.contains(expect), "{said}");
        for id in fresh.ids() {
            assert!(!fresh.data_dir(id).exists(), "nothing half-restored");
        }
    }
}
