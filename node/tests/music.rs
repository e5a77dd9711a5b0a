//! Black-box tests of the music service on a real 3-process cluster: uploads replicated as
//! chunks and streamed back byte-identical (whole and by ranges) from every node, MP3 checks and
//! limits that leave no data behind, a node killed mid-upload, auth and ownership, and deletes
//! that cascade and survive a full restart.
//!
//! Inputs are the committed fixtures in `tests/fixtures/` (a few seconds of generated audio) and
//! larger files made from them at test time: MP3 frames concatenate into a longer valid MP3.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use api::tracks::MAX_UPLOADS_PER_USER;
use common::music::{
    BOUNDARY, MIB, Part, Refusal, all_refused, call, fails, fixture, form, form_bytes, long_mp3,
    upload,
};
use common::{Body, CONVERGE_TIMEOUT, NodeApi, Resp, TestCluster, User, eventually, register};
use reqwest::Method;
use serde_json::{Value, json};

async fn get_range(api: &NodeApi, path: &str, range: &str) -> Resp {
    api.send_with(
        Method::GET,
        path,
        Body::None,
        &[("Range", range.to_string())],
    )
    .await
    .unwrap_or_else(|e| panic!("{path} {range}: {e:#}"))
}

/// The storage counts of node `id`'s `/cluster` view.
async fn storage_counts(c: &TestCluster, id: u64) -> Value {
    c.cluster_view(id).await["storage"].clone()
}

/// Polls node `id`'s storage counts until `done` holds; returns them.
async fn storage_when(
    c: &TestCluster,
    id: u64,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    eventually(what, CONVERGE_TIMEOUT, async || {
        let s = storage_counts(c, id).await;
        done(&s).then_some(s)
    })
    .await
}

/// The audio chunk files in node `id`'s chunk store (`<data_dir>/chunks/<fan-out>/<hash>`).
fn chunk_files(c: &TestCluster, id: u64) -> Vec<PathBuf> {
    let Ok(fan_outs) = std::fs::read_dir(c.data_dir(id).join("chunks")) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = fan_outs
        .flatten()
        .filter(|d| d.file_name().len() == 2)
        .flat_map(|d| std::fs::read_dir(d.path()).expect("read a fan-out directory"))
        .map(|f| f.expect("a chunk file").path())
        .collect();
    files.sort();
    files
}

/// Writes queue-only tracks through `via` until every running node has built a snapshot at or
/// after the leader's current applied index: chunks released before it are then gone.
async fn snapshot_everywhere(c: &TestCluster, via: u64) {
    let upto = c.cluster_view(via).await["applied_index"]
        .as_u64()
        .expect("an applied index");
    static FILLERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    eventually("a snapshot on every node", CONVERGE_TIMEOUT, async || {
        let n = FILLERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let body = Body::Json(
            json!({"id": 800_000 + n, "title": format!("filler {n}"), "artist": "a", "duration": 60}),
        );
        c.api(via).write_ok("/add_track", body).await;
        let mut all = true;
        for id in c.running() {
            let snapshot = c.cluster_view(id).await["snapshot_index"].as_u64();
            all &= snapshot.is_some_and(|s| s >= upto);
        }
        all.then_some(())
    })
    .await;
}

/// The number of chunk files per running node, once a snapshot on every node has let the
/// released ones go.
async fn chunk_files_after_snapshot(c: &TestCluster, via: u64) -> Vec<usize> {
    snapshot_everywhere(c, via).await;
    c.running()
        .into_iter()
        .map(|id| chunk_files(c, id).len())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_stream_back_byte_identical_from_every_node_whole_and_by_ranges() {
    let c = TestCluster::start(3).await;
    let leader = c.leader_id().await;
    let follower = c.followers(leader)[0];
    let alice = register(&c.api(leader), "alice").await;

    eprintln!("=== a tagged 3 s fixture without metadata: title etc. come from its ID3 tags");
    let tagged = fixture("tagged-3s.mp3");
    let tagged_id = upload(&c.api(follower), &alice, None, &tagged).await;
    let meta = c.api(leader).read_ok(&format!("/tracks/{tagged_id}")).await;
    assert_eq!(meta["title"], "Fixture Tone", "{meta}");
    assert_eq!(meta["artist"], "chorus tests", "{meta}");
    assert_eq!(meta["album"], "Fixtures", "{meta}");
    assert_eq!(meta["genre"], "Blues", "{meta}");
    assert_eq!(
        meta["duration"], "0:03",
        "measured duration of the 3 s fixture: {meta}"
    );
    assert_eq!(meta["size_bytes"], tagged.len(), "{meta}");
    assert_eq!(meta["uploader_id"], alice.id.as_str(), "{meta}");

    eprintln!("=== a 5+ MiB file (6 chunks, last one partial) uploaded to a follower");
    let big = long_mp3(330);
    assert!(big.len() > 5 * MIB && !big.len().is_multiple_of(MIB));
    let big_id = upload(&c.api(follower), &alice, Some("Long one"), &big).await;
    let meta = c.api(leader).read_ok(&format!("/tracks/{big_id}")).await;
    // 330 × 2.04 s of frames = 672 s = 11:12 (the frames, not a guess from the byte size).
    let secs = meta["duration_seconds"].as_u64().expect("duration_seconds");
    assert!(
        (670..=674).contains(&secs),
        "measured duration {secs}s: {meta}"
    );
    assert_eq!(meta["duration"], format!("{}:{:02}", secs / 60, secs % 60));

    let size = big.len();
    let ranges: Vec<(String, usize, usize)> = vec![
        ("bytes=0-0".into(), 0, 0),
        (
            format!("bytes={}-{}", MIB - 10, MIB + 10),
            MIB - 10,
            MIB + 10,
        ),
        (
            format!("bytes={}-{}", size / 2, size / 2 + 99_999),
            size / 2,
            size / 2 + 99_999,
        ),
        (
            format!("bytes={}-{}", size - 1, size - 1),
            size - 1,
            size - 1,
        ),
        (format!("bytes={}-", 3 * MIB + 7), 3 * MIB + 7, size - 1),
        ("bytes=-1000".into(), size - 1000, size - 1),
        (
            format!("bytes={}-{}", size - 5, size + 500),
            size - 5,
            size - 1,
        ),
    ];
    for id in c.ids() {
        let api = c.api(id);
        for path in [format!("/play/{big_id}"), format!("/tracks/{big_id}/file")] {
            let whole = call(&api, Method::GET, &path, Body::None, None).await;
            whole.expect_status(200);
            assert!(
                whole.bytes == big,
                "node {id} {path}: the download differs from the upload"
            );
            assert_eq!(whole.header("content-type"), "audio/mpeg");
            assert_eq!(whole.header("accept-ranges"), "bytes");
            assert_eq!(whole.header("content-length"), size.to_string());
            let etag = whole.header("etag").to_string();
            assert!(!etag.is_empty(), "no ETag");
            // A weak validator of the same version is a match (RFC 9110's weak comparison).
            let weak = api
                .send_with(
                    Method::GET,
                    &path,
                    Body::None,
                    &[("If-None-Match", format!("W/{etag}"))],
                )
                .await
                .expect("conditional GET");
            weak.expect_status(304);
            // A signed position is no byte range: the whole file, not bytes 5-10.
            let signed = get_range(&api, &path, "bytes=+5-10").await;
            signed.expect_status(200);
            for (range, first, last) in &ranges {
                let part = get_range(&api, &path, range).await;
                part.expect_status(206);
                assert_eq!(
                    part.header("content-range"),
                    format!("bytes {first}-{last}/{size}"),
                    "node {id} {range}"
                );
                assert_eq!(
                    part.header("content-length"),
                    (last - first + 1).to_string()
                );
                assert!(
                    part.bytes == big[*first..=*last],
                    "node {id} {range}: wrong bytes"
                );
            }
            let past = get_range(&api, &path, &format!("bytes={size}-")).await;
            past.expect_error_code(416, "range_not_satisfiable");
            assert_eq!(past.header("content-range"), format!("bytes */{size}"));
        }
        let small = call(
            &api,
            Method::GET,
            &format!("/play/{tagged_id}"),
            Body::None,
            None,
        )
        .await;
        assert!(small.bytes == tagged, "node {id}: tagged fixture differs");
    }
    fails(
        &c.api(leader),
        Method::GET,
        "/play/999999",
        Body::None,
        None,
        404,
        "not_found",
    )
    .await;

    eprintln!("=== search");
    let found = c.api(follower).read_ok("/tracks?q=LONG").await;
    let ids: Vec<&str> = found
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|t| t["track_id"].as_str())
        .collect();
    assert_eq!(ids, [big_id.as_str()]);
    let all = c.api(follower).read_ok("/tracks?limit=1&offset=1").await;
    assert_eq!(all.as_array().map(Vec::len), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uploads_get_clear_errors_and_leave_nothing_behind() {
    let c = TestCluster::start_with(3, "[tracks]\nmax_upload_mb = 1\n").await;
    let leader = c.leader_id().await;
    let api = c.api(c.followers(leader)[0]);
    let bob = register(&api, "bob").await;
    let meta = json!({"title": "Bad"});
    let mp3 = fixture("untagged-2s.mp3");
    let garbage: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "a text file",
            b"just some text, not audio\n".repeat(100),
            415,
            "unsupported_media_type",
        ),
        (
            "a truncated MP3",
            mp3[..200].to_vec(),
            415,
            "unsupported_media_type",
        ),
        ("garbage bytes", garbage, 415, "unsupported_media_type"),
    ];
    for (what, bytes, status, code) in &cases {
        eprintln!("=== {what}");
        let body = form(&[
            Part::Json("metadata", meta.clone()),
            Part::File("file", bytes),
        ]);
        call(&api, Method::POST, "/tracks/upload", body, Some(&bob))
            .await
            .expect_error_code(*status, code);
    }
    eprintln!("=== over the 1 MiB limit: 413 from Content-Length before any body is sent");
    let big = form_bytes(&[
        Part::Json("metadata", meta.clone()),
        Part::File("file", &long_mp3(200)),
    ]);
    let (status, text) = raw_upload(&api.base, &bob, &big, Framing::ExpectContinue).await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("payload_too_large"), "{text}");
    eprintln!("=== over the limit without a length (chunked): 413 once the limit is passed");
    let (status, text) = raw_upload(&api.base, &bob, &big, Framing::Chunked).await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("payload_too_large"), "{text}");

    eprintln!("=== no title and no ID3 title; no file part; not multipart; no token");
    let (upload_path, file_only) = ("/tracks/upload", || form(&[Part::File("file", &mp3)]));
    let no_file = form(&[Part::Json("metadata", meta.clone())]);
    let json_body = Body::Json(meta.clone());
    #[rustfmt::skip]
    let refusals: Vec<Refusal> = vec![
        (&api, Method::POST, upload_path, file_only(), Some(&bob), 400, "bad_request"),
        (&api, Method::POST, upload_path, no_file, Some(&bob), 400, "bad_request"),
        (&api, Method::POST, upload_path, json_body, Some(&bob), 415, "unsupported_media_type"),
        (&api, Method::POST, upload_path, file_only(), None, 401, "unauthorized"),
    ];
    all_refused(refusals).await;
    eprintln!("=== a form field instead of JSON metadata works");
    let ok = call(
        &api,
        Method::POST,
        "/tracks/upload",
        form(&[Part::Text("title", "Plain field"), Part::File("file", &mp3)]),
        Some(&bob),
    )
    .await;
    let kept = ok.expect_status(201)["track_id"]
        .as_str()
        .expect("id")
        .to_string();

    eprintln!("=== a client that disconnects mid-upload: its upload is dropped at once");
    let body = form_bytes(&[
        Part::Json("metadata", meta.clone()),
        Part::File("file", &long_mp3(60)),
    ]);
    let conn = start_partial_upload(&api.base, &bob, &body, body.len() / 2).await;
    storage_when(&c, leader, "the partial upload to start replicating", |s| {
        s["pending_uploads"] == 1
    })
    .await;
    drop(conn);

    eprintln!("=== nothing else was kept: one track, no pending upload, only its chunk");
    let counts = storage_when(&c, leader, "failed uploads to be dropped", |s| {
        s["pending_uploads"] == 0
    })
    .await;
    assert_eq!(counts["tracks"], 1, "{counts}");
    assert_eq!(counts["audio_chunks"], 1, "{counts}");
    let listed = c.api(leader).read_ok("/tracks").await;
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(listed[0]["track_id"], kept.as_str());

    eprintln!(
        "=== {MAX_UPLOADS_PER_USER} uploads in progress per user and node; the next is refused"
    );
    let body = form_bytes(&[
        Part::Json("metadata", meta.clone()),
        Part::File("file", &long_mp3(60)),
    ]);
    let mut held = Vec::new();
    for _ in 0..MAX_UPLOADS_PER_USER {
        held.push(start_partial_upload(&api.base, &bob, &body, body.len() / 2).await);
    }
    storage_when(&c, leader, "the partial uploads to start", |s| {
        s["pending_uploads"] == MAX_UPLOADS_PER_USER
    })
    .await;
    let whole = || {
        form(&[
            Part::Json("metadata", meta.clone()),
            Part::File("file", &mp3),
        ])
    };
    let refused = call(&api, Method::POST, "/tracks/upload", whole(), Some(&bob)).await;
    refused.expect_error_code(429, "too_many_uploads");
    assert_eq!(refused.header("retry-after"), "1", "{}", refused.describe());
    let carol = register(&api, "carol").await;
    call(&api, Method::POST, "/tracks/upload", whole(), Some(&carol))
        .await
        .expect_status(201);
    drop(held.pop());
    eventually(
        "bob's finished upload to free a slot",
        CONVERGE_TIMEOUT,
        async || {
            let r = call(&api, Method::POST, "/tracks/upload", whole(), Some(&bob)).await;
            (r.status == 201).then_some(())
        },
    )
    .await;
    drop(held);
    storage_when(&c, leader, "the held uploads to be dropped", |s| {
        s["pending_uploads"] == 0
    })
    .await;

    eprintln!("=== the OpenAPI document describes the multipart upload and the bearer scheme");
    let doc = c.api(leader).read_ok("/openapi.json").await;
    let upload_doc = &doc["paths"]["/tracks/upload"]["post"];
    assert!(
        upload_doc["requestBody"]["content"]["multipart/form-data"].is_object(),
        "{upload_doc}"
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    for path in [
        "/users/register",
        "/users/login",
        "/tracks/{id}",
        "/play/{id}",
        "/playlist/add",
        "/playlist/{user_id}",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is not documented");
    }
    assert_eq!(
        chunk_files_after_snapshot(&c, leader).await,
        [1, 1, 1],
        "audio chunk files per node"
    );
}

/// Runs `chorus verify` for node `id`; its exit status and what it printed.
fn chorus_verify(c: &TestCluster, id: u64) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chorus"))
        .args(["verify", "--node", &id.to_string(), "--config"])
        .arg(c.config_path())
        .output()
        .expect("run chorus verify");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The audio as chunk files: the same file uploaded twice is stored once; a chunk file damaged
/// or deleted on one node is never served there, and `chorus verify` finds it and fetches it
/// again from a peer; deleting the tracks removes their chunk files from every node's disk with
/// the next snapshot, and only once no track names them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_files_are_shared_verified_repaired_and_collected() {
    let c = TestCluster::start(3).await;
    let leader = c.leader_id().await;
    let follower = c.followers(leader)[0];
    let alice = register(&c.api(leader), "alice").await;
    let mp3 = long_mp3(200);
    assert!(mp3.len() > 2 * MIB && mp3.len() < 4 * MIB);

    eprintln!("=== the same file twice: its chunks are stored once on every node");
    let first = upload(&c.api(follower), &alice, Some("Once"), &mp3).await;
    let second = upload(&c.api(follower), &alice, Some("Twice"), &mp3).await;
    let chunks = mp3.len().div_ceil(MIB);
    let counts = storage_when(&c, follower, "both tracks", |s| s["tracks"] == 2).await;
    assert_eq!(counts["audio_chunks"], chunks as u64, "{counts}");
    for id in c.ids() {
        assert_eq!(chunk_files(&c, id).len(), chunks, "node {id}'s chunk files");
    }

    eprintln!("=== a byte flipped in one chunk file of node {follower}: never served");
    let files = chunk_files(&c, follower);
    let damaged = &files[0];
    let good = std::fs::read(damaged).expect("read a chunk file");
    let mut flipped = good.clone();
    flipped[1000] ^= 0x40;
    std::fs::write(damaged, &flipped).expect("damage the chunk file");
    let url = format!("{}/play/{first}", c.url(follower));
    let http = common::http_client_builder().build().expect("HTTP client");
    let served = async { http.get(&url).send().await?.bytes().await }.await;
    assert!(
        served
            .as_ref()
            .map_or(true, |b| b.as_ref() == mp3.as_slice()),
        "a damaged chunk was served"
    );
    assert!(
        served.is_err(),
        "the stream should break off at the damaged chunk"
    );

    eprintln!("=== chorus verify finds it and fetches it again; the node streams the file");
    let (ok, report) = chorus_verify(&c, follower);
    assert!(ok, "{report}");
    assert!(
        report.contains("1 damaged") && report.contains("1 fetched again"),
        "{report}"
    );
    assert_eq!(std::fs::read(damaged).expect("read"), good);
    let whole = call(
        &c.api(follower),
        Method::GET,
        &format!("/play/{second}"),
        Body::None,
        None,
    )
    .await;
    whole.expect_status(200);
    assert!(whole.bytes == mp3, "the repaired node streams other bytes");

    eprintln!("=== a chunk file deleted: verify fetches it again");
    std::fs::remove_file(&files[1]).expect("delete a chunk file");
    let (ok, report) = chorus_verify(&c, follower);
    assert!(ok, "{report}");
    assert!(
        report.contains("1 missing") && report.contains("1 fetched again"),
        "{report}"
    );
    assert_eq!(chunk_files(&c, follower).len(), chunks);
    let (ok, report) = chorus_verify(&c, follower);
    assert!(ok && report.contains("0 damaged, 0 missing"), "{report}");

    eprintln!("=== one track deleted: its chunks stay, the other names them");
    let delete = |id: String| {
        let path = format!("/tracks/{id}");
        let (api, alice) = (c.api(leader), alice.clone());
        async move {
            call(&api, Method::DELETE, &path, Body::None, Some(&alice))
                .await
                .expect_status(200);
        }
    };
    delete(first).await;
    assert_eq!(
        chunk_files_after_snapshot(&c, leader).await,
        vec![chunks; 3]
    );
    eprintln!("=== the other deleted: with the next snapshot, no node keeps a chunk file");
    delete(second).await;
    assert_eq!(chunk_files_after_snapshot(&c, leader).await, [0, 0, 0]);
}

/// Sends the first `sent` bytes of an upload of `total` bytes over a raw connection and keeps
/// the connection open (the rest never comes).
async fn start_partial_upload(
    base: &str,
    user: &User,
    body: &[u8],
    sent: usize,
) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /tracks/upload HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {}\r\n\r\n",
        user.token,
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .await
        .expect("send headers");
    stream
        .write_all(&body[..sent])
        .await
        .expect("send part of the body");
    stream.flush().await.expect("flush");
    stream
}

enum Framing {
    /// `Content-Length` and `Expect: 100-continue`: the body is sent only if the server asks.
    ExpectContinue,
    /// `Transfer-Encoding: chunked`: the server learns the size only by reading.
    Chunked,
}

/// An upload over a raw connection that reads the answer while still sending (a server may
/// answer 413 before it has read the whole body). Returns the status and the response text.
async fn raw_upload(base: &str, user: &User, body: &[u8], framing: Framing) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://").to_string();
    let stream = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let (mut rx, mut tx) = stream.into_split();
    let framing_headers = match framing {
        Framing::ExpectContinue => {
            format!("Content-Length: {}\r\nExpect: 100-continue\r\n", body.len())
        }
        Framing::Chunked => "Transfer-Encoding: chunked\r\n".to_string(),
    };
    let head = format!(
        "POST /tracks/upload HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n{framing_headers}Connection: close\r\n\r\n",
        user.token
    );
    tx.write_all(head.as_bytes()).await.expect("send headers");
    let chunked = matches!(framing, Framing::Chunked);
    let body = body.to_vec();
    // Sends the body only after a `100 Continue` (or at once when chunked); stops at the first
    // write error, which is how a server refusing the rest shows up.
    let (continue_tx, continue_rx) = tokio::sync::oneshot::channel::<()>();
    let writer = tokio::spawn(async move {
        if !chunked && continue_rx.await.is_err() {
            return;
        }
        for piece in body.chunks(64 * 1024) {
            let sent = if chunked {
                let mut framed = format!("{:x}\r\n", piece.len()).into_bytes();
                framed.extend_from_slice(piece);
                framed.extend_from_slice(b"\r\n");
                tx.write_all(&framed).await
            } else {
                tx.write_all(piece).await
            };
            if sent.is_err() {
                return;
            }
        }
        if chunked {
            let _ = tx.write_all(b"0\r\n\r\n").await;
        }
    });
    let mut continue_tx = Some(continue_tx);
    let mut response = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let text = loop {
        let n = tokio::time::timeout(Duration::from_secs(30), rx.read(&mut buf))
            .await
            .expect("the server answers within 30 s")
            .unwrap_or(0);
        response.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&response).to_string();
        if text.starts_with("HTTP/1.1 100") && text.contains("\r\n\r\n") {
            if let Some(go) = continue_tx.take() {
                let _ = go.send(());
            }
            let end = text.find("\r\n\r\n").map_or(0, |i| i + 4);
            response.drain(..end);
            continue;
        }
        if n == 0 {
            break text;
        }
    };
    writer.abort();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    (status, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_upload_leaves_no_track_and_its_chunks_are_dropped() {
    let mut c = TestCluster::start_with(3, "[tracks]\nupload_idle_timeout_secs = 2\n").await;
    let leader = c.leader_id().await;
    let receiver = c.followers(leader)[0];
    let carol = register(&c.api(leader), "carol").await;
    let mp3 = long_mp3(300);
    let body = form_bytes(&[
        Part::Json("metadata", json!({"title": "Never finished"})),
        Part::File("file", &mp3),
    ]);

    eprintln!("=== send 3.5 MiB of a 4.7 MiB upload to node {receiver}, then kill it");
    let _conn = start_partial_upload(&c.url(receiver), &carol, &body, 3 * MIB + MIB / 2).await;
    let during = storage_when(
        &c,
        leader,
        "chunks of the unfinished upload to replicate",
        |s| s["audio_chunks"].as_u64() >= Some(3),
    )
    .await;
    assert_eq!(during["pending_uploads"], 1, "{during}");
    assert_eq!(during["tracks"], 0, "{during}");
    c.kill9(receiver);

    eprintln!("=== the leader drops the idle upload and its chunks");
    let after = storage_when(&c, leader, "the idle upload to be dropped", |s| {
        s["pending_uploads"] == 0
    })
    .await;
    assert_eq!(after["audio_chunks"], 0, "{after}");
    assert_eq!(after["tracks"], 0, "{after}");
    assert_eq!(c.api(leader).read_ok("/tracks").await, json!([]));

    eprintln!("=== the killed node comes back, catches up, and nobody keeps a chunk on disk");
    c.restart(receiver);
    c.wait_ready(receiver).await;
    let back = storage_when(&c, receiver, "the restarted node to catch up", |s| {
        s["pending_uploads"] == 0 && s["audio_chunks"] == 0
    })
    .await;
    assert_eq!(back["tracks"], 0, "{back}");
    assert_eq!(
        chunk_files_after_snapshot(&c, leader).await,
        [0, 0, 0],
        "audio chunk files per node"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_tokens_and_ownership_are_enforced_on_every_node() {
    let c = TestCluster::start_with(3, "[users]\ntoken_ttl_secs = 1\n").await;
    let leader = c.leader_id().await;
    let [a, b] = [c.followers(leader)[0], c.followers(leader)[1]];
    let (api_a, api_b, api_l) = (c.api(a), c.api(b), c.api(leader));

    eprintln!("=== validation and uniqueness");
    for (body, what) in [
        (
            json!({"username": "x", "password": "password123", "email": "x@example.com"}),
            "short username",
        ),
        (
            json!({"username": "bad name", "password": "password123", "email": "x@example.com"}),
            "space in username",
        ),
        (
            json!({"username": "dave", "password": "short", "email": "d@example.com"}),
            "short password",
        ),
        (
            json!({"username": "dave", "password": "password123", "email": "not-an-email"}),
            "bad email",
        ),
    ] {
        let resp = api_a
            .post("/users/register", Body::Json(body))
            .await
            .expect(what);
        resp.expect_error_code(400, "bad_request");
    }
    api_a
        .post("/users/register", Body::Json(json!({"username": "dave"})))
        .await
        .expect("missing")
        .expect_error(422);

    eprintln!("=== the same username registered on two nodes at once: exactly one wins");
    let racer = |api: NodeApi, email: &'static str| async move {
        let body = json!({"username": "Racer", "password": "password123", "email": email});
        api.post("/users/register", Body::Json(body))
            .await
            .expect("register")
    };
    let (r1, r2) = tokio::join!(
        racer(api_a.clone(), "r1@example.com"),
        racer(api_b.clone(), "r2@example.com")
    );
    let mut statuses = [r1.status.as_u16(), r2.status.as_u16()];
    statuses.sort_unstable();
    assert_eq!(
        statuses,
        [201, 409],
        "{} / {}",
        r1.describe(),
        r2.describe()
    );
    let taken = if r1.status == 409 { &r1 } else { &r2 };
    taken.expect_error_code(409, "username_taken");
    let body = json!({"username": "RACER2", "password": "password123", "email": "R1@example.com"});
    let dup_email = api_l
        .post("/users/register", Body::Json(body))
        .await
        .expect("register");
    if r1.status == 201 {
        dup_email.expect_error_code(409, "email_taken");
    }

    let erin = register(&api_a, "erin").await;
    let frank = register(&api_b, "frank").await;

    eprintln!("=== login: one message for unknown user and wrong password");
    let wrong = api_b
        .post(
            "/users/login",
            Body::Json(json!({"username": "erin", "password": "nope-nope"})),
        )
        .await
        .expect("login");
    let unknown = api_b
        .post(
            "/users/login",
            Body::Json(json!({"username": "nobody", "password": "nope-nope"})),
        )
        .await
        .expect("login");
    wrong.expect_error_code(401, "unauthorized");
    unknown.expect_error_code(401, "unauthorized");
    assert_eq!(wrong.body["message"], unknown.body["message"]);

    eprintln!("=== a token from node {a} works on node {b}; email only for the owner");
    let me = call(
        &api_b,
        Method::GET,
        &format!("/users/{}", erin.id),
        Body::None,
        Some(&erin),
    )
    .await;
    assert_eq!(me.expect_status(200)["email"], "erin@example.com");
    let other = call(
        &api_b,
        Method::GET,
        &format!("/users/{}", erin.id),
        Body::None,
        Some(&frank),
    )
    .await;
    assert!(
        other.expect_status(200).get("email").is_none(),
        "{}",
        other.describe()
    );
    let track = upload(&api_b, &erin, Some("Erin's"), &fixture("untagged-2s.mp3")).await;

    eprintln!("=== no token 401, forged token 401, someone else's track or playlist 403");
    let meta_only = || form(&[Part::Json("metadata", json!({"title": "Stolen"}))]);
    let mut bad_signature = frank.clone();
    bad_signature.token = format!("{}x", frank.token.trim_end_matches(|ch: char| ch != '.'));
    let not_a_jwt = User {
        token: "not.a.jwt".into(),
        ..frank.clone()
    };
    let add = json!({"user_id": erin.id, "track_id": track});
    let (track_path, erin_path) = (format!("/tracks/{track}"), format!("/users/{}", erin.id));
    let (track_path, erin_path) = (track_path.as_str(), erin_path.as_str());
    let (patch, delete, post) = (Method::PATCH, Method::DELETE, Method::POST);
    #[rustfmt::skip]
    let refusals: Vec<Refusal> = vec![
        (&api_a, patch.clone(), track_path, meta_only(), None, 401, "unauthorized"),
        (&api_a, delete.clone(), track_path, Body::None, Some(&bad_signature), 401, "invalid_token"),
        (&api_a, delete.clone(), track_path, Body::None, Some(&not_a_jwt), 401, "invalid_token"),
        (&api_a, patch, track_path, meta_only(), Some(&frank), 403, "forbidden"),
        (&api_l, delete.clone(), track_path, Body::None, Some(&frank), 403, "forbidden"),
        (&api_a, post.clone(), "/playlist/add", Body::Json(add.clone()), Some(&frank), 403, "forbidden"),
        (&api_a, post, "/playlist/add", Body::Json(add.clone()), None, 401, "unauthorized"),
        (&api_a, delete, erin_path, Body::None, Some(&frank), 403, "forbidden"),
    ];
    all_refused(refusals).await;
    assert_eq!(
        c.api(leader).read_ok(&format!("/tracks/{track}")).await["title"],
        "Erin's"
    );

    eprintln!("=== the owner may; then the 1 s token expires everywhere");
    call(
        &api_a,
        Method::POST,
        "/playlist/add",
        Body::Json(add),
        Some(&erin),
    )
    .await
    .expect_status(200);
    // Polled with a harmless authenticated read, so nothing changes while the token is valid.
    let profile = format!("/users/{}", erin.id);
    let expired = eventually(
        "erin's token to expire",
        Duration::from_secs(60),
        async || {
            let r = call(&api_b, Method::GET, &profile, Body::None, Some(&erin)).await;
            (r.status == 401).then_some(r)
        },
    )
    .await;
    expired.expect_error_code(401, "token_expired");
    fails(
        &api_l,
        Method::DELETE,
        &format!("/tracks/{track}"),
        Body::None,
        Some(&erin),
        401,
        "token_expired",
    )
    .await;
    assert_eq!(
        c.api(leader).read_ok(&format!("/tracks/{track}")).await["title"],
        "Erin's"
    );

    eprintln!("=== five wrong passwords in a row: frank waits on node {b} (429), not elsewhere");
    let login = |api: &NodeApi, password: &str| {
        let (api, body) = (
            api.clone(),
            json!({"username": "frank", "password": password}),
        );
        async move {
            api.post("/users/login", Body::Json(body))
                .await
                .expect("login")
        }
    };
    for _ in 0..5 {
        login(&api_b, "wrong-password")
            .await
            .expect_error_code(401, "unauthorized");
    }
    let held = login(&api_b, "password123").await;
    held.expect_error_code(429, "too_many_attempts");
    assert_eq!(held.header("retry-after"), "1", "{}", held.describe());
    login(&api_a, "password123").await.expect_status(200);
    eventually("frank's wait to end", Duration::from_secs(30), async || {
        (login(&api_b, "password123").await.status == 200).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_and_deletes_cascade_and_survive_a_full_restart() {
    let mut c = TestCluster::start(3).await;
    let leader = c.leader_id().await;
    let f = c.followers(leader);
    let (api_f0, api_f1, api_l) = (c.api(f[0]), c.api(f[1]), c.api(leader));
    let gina = register(&api_f0, "gina").await;
    let hank = register(&api_f1, "hank").await;
    let two = fixture("untagged-2s.mp3");
    let t1 = upload(&api_f0, &gina, Some("One"), &two).await;
    let t2 = upload(&api_f1, &gina, Some("Two"), &two).await;

    eprintln!("=== playlists: order kept, re-adding is idempotent, track_info as the seed shows");
    for (user, track) in [(&gina, &t1), (&gina, &t2), (&gina, &t1), (&hank, &t1)] {
        let add = json!({"user_id": user.id, "track_id": track});
        let resp = call(
            &api_f1,
            Method::POST,
            "/playlist/add",
            Body::Json(add),
            Some(user),
        )
        .await;
        let body = resp.expect_status(200);
        assert_eq!(body["message"], "Track added to playlist");
        assert_eq!(body["track_info"]["duration"], "0:02", "{body}");
        assert_eq!(
            body["track_info"]["url"],
            format!("{}/play/{track}", c.url(f[1])),
            "{body}"
        );
    }
    // The links name the node's own address, whatever Host the client sent.
    let mut headers = gina.auth();
    headers.push(("Host", "evil.example".into()));
    let list = api_f1
        .send_with(
            Method::GET,
            &format!("/playlist/{}", gina.id),
            Body::None,
            &headers,
        )
        .await
        .expect("playlist with a forged Host");
    let url = list.expect_status(200)["tracks"][0]["url"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(url.starts_with(&c.url(f[1])), "{url}");
    let list = api_f0.read_ok(&format!("/playlist/{}", gina.id)).await;
    let ids = |list: &Value| -> Vec<String> {
        list["tracks"]
            .as_array()
            .expect("tracks")
            .iter()
            .map(|t| t["track_id"].as_str().expect("id").to_string())
            .collect()
    };
    assert_eq!(ids(&list), [t1.clone(), t2.clone()]);
    assert_eq!(list["user_id"], gina.id.as_str());

    eprintln!("=== queue an uploaded track by id; /metadata shows it");
    let t1_num: u64 = t1.parse().expect("numeric id");
    let queued = api_l
        .write_ok("/add_track", Body::Json(json!({"id": t1_num})))
        .await;
    assert_eq!(queued["queue"][0]["title"], "One", "{queued}");
    let meta = api_f0.read_ok(&format!("/metadata/{t1}")).await;
    assert_eq!(meta["duration"], 2, "{meta}");

    eprintln!("=== edit: both PATCH paths, metadata and audio");
    let patch = form(&[Part::Json("metadata", json!({"title": "Two (edit)"}))]);
    call(
        &api_f0,
        Method::PATCH,
        &format!("/tracks/{t2}"),
        patch,
        Some(&gina),
    )
    .await
    .expect_status(200);
    let patch = form(&[Part::Json(
        "metadata",
        json!({"track_id": t2, "artist": "New Artist"}),
    )]);
    let resp = call(&api_l, Method::PATCH, "/tracks/upload", patch, Some(&gina)).await;
    assert_eq!(
        resp.expect_status(200)["message"],
        "Track info updated successfully"
    );
    let old_etag = call(
        &api_f1,
        Method::GET,
        &format!("/play/{t2}"),
        Body::None,
        None,
    )
    .await
    .header("etag")
    .to_string();
    let three = fixture("tagged-3s.mp3");
    let patch = form(&[Part::File("file", &three)]);
    call(
        &api_f1,
        Method::PATCH,
        &format!("/tracks/{t2}"),
        patch,
        Some(&gina),
    )
    .await
    .expect_status(200);
    let meta = api_f0.read_ok(&format!("/tracks/{t2}")).await;
    assert_eq!(
        (
            meta["title"].as_str(),
            meta["artist"].as_str(),
            meta["duration"].as_str()
        ),
        (Some("Two (edit)"), Some("New Artist"), Some("0:03")),
        "{meta}"
    );
    let played = call(
        &api_f0,
        Method::GET,
        &format!("/play/{t2}"),
        Body::None,
        None,
    )
    .await;
    assert!(played.bytes == three, "new audio is served");
    assert_ne!(
        played.header("etag"),
        old_etag,
        "the ETag changes with the audio"
    );

    eprintln!("=== deleting a track removes it from every playlist and the queue");
    let resp = call(
        &api_f1,
        Method::DELETE,
        &format!("/tracks/{t1}"),
        Body::None,
        Some(&gina),
    )
    .await;
    assert_eq!(
        resp.expect_status(200)["message"],
        "Track deleted successfully"
    );
    assert_eq!(
        ids(&api_l.read_ok(&format!("/playlist/{}", gina.id)).await),
        std::slice::from_ref(&t2)
    );
    assert!(ids(&api_l.read_ok(&format!("/playlist/{}", hank.id)).await).is_empty());
    assert_eq!(api_l.read_ok("/queue").await, json!([]));
    let remove = Body::Json(json!({"user_id": gina.id, "track_id": t1}));
    let play_t1 = format!("/play/{t1}");
    #[rustfmt::skip]
    let refusals: Vec<Refusal> = vec![
        (&api_l, Method::GET, &play_t1, Body::None, None, 404, "not_found"),
        (&api_f0, Method::DELETE, "/playlist/remove", remove, Some(&gina), 404, "not_found"),
    ];
    all_refused(refusals).await;

    eprintln!("=== deleting a user removes their playlist; their token stops working");
    let resp = call(
        &api_f0,
        Method::DELETE,
        &format!("/users/{}", hank.id),
        Body::None,
        Some(&hank),
    )
    .await;
    assert_eq!(
        resp.expect_status(200)["message"],
        "User deleted successfully"
    );
    let (hanks_playlist, hanks_profile) = (
        format!("/playlist/{}", hank.id),
        format!("/users/{}", hank.id),
    );
    let add = Body::Json(json!({"user_id": hank.id, "track_id": t2}));
    #[rustfmt::skip]
    let refusals: Vec<Refusal> = vec![
        (&api_l, Method::GET, &hanks_playlist, Body::None, None, 404, "not_found"),
        (&api_l, Method::GET, &hanks_profile, Body::None, None, 404, "not_found"),
        (&api_f1, Method::POST, "/playlist/add", add, Some(&hank), 401, "unauthorized"),
    ];
    all_refused(refusals).await;

    eprintln!("=== full restart: everything above is still true, tokens still valid");
    for id in c.ids() {
        c.stop(id).await;
    }
    for id in c.ids() {
        c.restart(id);
    }
    c.wait_all_ready().await;
    for id in c.ids() {
        let api = c.api(id);
        assert_eq!(
            ids(&api.read_ok(&format!("/playlist/{}", gina.id)).await),
            std::slice::from_ref(&t2),
            "node {id}"
        );
        let track_t1 = format!("/tracks/{t1}");
        #[rustfmt::skip]
        let refusals: Vec<Refusal> = vec![
            (&api, Method::GET, &hanks_playlist, Body::None, None, 404, "not_found"),
            (&api, Method::GET, &track_t1, Body::None, None, 404, "not_found"),
        ];
        all_refused(refusals).await;
        let played = call(&api, Method::GET, &format!("/play/{t2}"), Body::None, None).await;
        assert!(played.bytes == three, "node {id}: t2's audio after restart");
        let me = call(
            &api,
            Method::GET,
            &format!("/users/{}", gina.id),
            Body::None,
            Some(&gina),
        )
        .await;
        assert_eq!(
            me.expect_status(200)["email"],
            "gina@example.com",
            "node {id}: token survives restart"
        );
    }
}

/// Stops `follower`, wipes its data directory and starts it again, then checks that it streams
/// track `id` as `uploaded` once caught up, and that it holds exactly the chunk files every
/// other node holds. Returns the follower's `/cluster` view from when it was caught up.
async fn wiped_follower_streams(
    c: &mut TestCluster,
    follower: u64,
    id: &str,
    uploaded: &[u8],
) -> Value {
    eprintln!("=== stop follower {follower}, wipe it, start it again");
    c.stop(follower).await;
    c.wipe(follower);
    c.restart(follower);
    c.wait_ready(follower).await;

    let api = c.api(follower);
    let whole = call(&api, Method::GET, &format!("/play/{id}"), Body::None, None).await;
    whole.expect_status(200);
    assert!(
        whole.bytes == uploaded,
        "the wiped follower streams something else than was uploaded"
    );
    let caught_up = c.cluster_view(follower).await;
    let names = |files: Vec<PathBuf>| -> Vec<String> {
        let name = |f: &PathBuf| f.file_name().map(|n| n.to_string_lossy().into_owned());
        files.iter().filter_map(name).collect()
    };
    let expected = usize::try_from(
        caught_up["storage"]["audio_chunks"]
            .as_u64()
            .expect("a count"),
    )
    .expect("fits");
    for node in c.ids() {
        assert_eq!(
            names(chunk_files(c, node)).len(),
            expected,
            "node {node} holds every chunk the state names, and nothing else"
        );
    }
    assert_eq!(
        names(chunk_files(c, follower)),
        names(chunk_files(c, c.followers(follower)[0]))
    );
    caught_up
}

/// A follower whose data directory was wiped gets a dozen MiB of audio back through the log (the
/// leader has taken no snapshot yet): the leader first asks where the follower's log ends
/// without sending audio, then sends the chunks as several AppendEntries frames in flight at
/// once, which the follower must take in order. It then streams the track byte-identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_follower_gets_audio_back_through_the_log() {
    let mut c = TestCluster::start(3).await;
    let leader = c.leader_id().await;
    let alice = register(&c.api(leader), "alice").await;

    eprintln!("=== a 12+ MiB upload: fewer entries than a snapshot takes, several frames");
    let big = long_mp3(780);
    assert!(big.len() > 12 * MIB);
    let id = upload(&c.api(leader), &alice, Some("Catch me up"), &big).await;
    let view = c.cluster_view(leader).await;
    assert!(
        view["snapshot_index"].is_null(),
        "the leader took a snapshot; this test is about the log: {view}"
    );

    let follower = *c.followers(leader).iter().min().expect("a follower");
    let view = wiped_follower_streams(&mut c, follower, &id, &big).await;
    assert!(
        view["snapshot_index"].is_null(),
        "the follower got a snapshot, not the log: {view}"
    );
}

/// A node that is behind confirms before it refuses: while follower `a` is frozen, frank
/// registers and erin uploads a track through the other follower; the moment `a` thaws, frank
/// tries to edit erin's track there. `a` has applied neither yet, and must answer what the
/// cluster knows — 403, not the uploader — rather than what its copy says (401 for frank's
/// token, or 404 for the track).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_is_behind_confirms_before_it_refuses() {
    let mut c = TestCluster::start(3).await;
    let leader = c.leader_id().await;
    let [a, b] = [c.followers(leader)[0], c.followers(leader)[1]];
    let erin = register(&c.api(b), "erin").await;
    eventually("node a knows erin", CONVERGE_TIMEOUT, async || {
        let path = format!("/users/{}", erin.id);
        let me = call(&c.api(a), Method::GET, &path, Body::None, Some(&erin)).await;
        (me.status == 200).then_some(())
    })
    .await;

    eprintln!("=== node {a} frozen: frank registers, erin uploads through node {b}");
    c.freeze(a, true);
    let frank = register(&c.api(b), "frank").await;
    let track = upload(
        &c.api(b),
        &erin,
        Some("Erin's"),
        &fixture("untagged-2s.mp3"),
    )
    .await;

    eprintln!("=== node {a} thawed: frank edits erin's track there at once");
    c.freeze(a, false);
    let meta_only = form(&[Part::Json("metadata", json!({"title": "Stolen"}))]);
    let path = format!("/tracks/{track}");
    let edit = call(&c.api(a), Method::PATCH, &path, meta_only, Some(&frank)).await;
    edit.expect_error_code(403, "forbidden");
}

/// A bulk upload is compacted by the log's size, not only by its entry count: with a snapshot
/// every 1,000 entries and 1,000 kept behind it (openraft's rules, which a 12 MiB upload never
/// reaches), `snapshot_every_mib = 8` builds a snapshot and `keep_log_mib_after_snapshot = 2`
/// purges the log behind it to 2 MiB. A follower whose data directory is then
/// wiped needs the purged start of the log, so it gets the snapshot and streams the track from
/// it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_is_compacted_by_its_size_and_a_wiped_follower_gets_the_snapshot() {
    let compaction = "snapshot_every = 1000\nkeep_logs_after_snapshot = 1000\n\
                      snapshot_every_mib = 8\nkeep_log_mib_after_snapshot = 2";
    let mut c = TestCluster::start_compacting(3, compaction, "").await;
    let leader = c.leader_id().await;
    let alice = register(&c.api(leader), "alice").await;

    eprintln!("=== a 12+ MiB upload: a snapshot by size, the log behind it purged by size");
    let big = long_mp3(780);
    assert!(big.len() > 12 * MIB);
    let id = upload(&c.api(leader), &alice, Some("Compact me"), &big).await;
    let view = eventually("a snapshot and a purge", CONVERGE_TIMEOUT, async || {
        let view = c.cluster_view(leader).await;
        let purged = view["purged_index"].as_u64();
        purged.is_some().then_some(view)
    })
    .await;
    let snapshot = view["snapshot_index"].as_u64().expect("a snapshot index");
    let last = view["last_log_index"].as_u64().expect("a last log index");
    assert!(
        last < 1000,
        "more entries than openraft's count rules take: {view}"
    );

    let follower = *c.followers(leader).iter().min().expect("a follower");
    let view = wiped_follower_streams(&mut c, follower, &id, &big).await;
    assert!(
        view["snapshot_index"].as_u64() >= Some(snapshot),
        "the follower did not get the snapshot: {view}"
    );
}

/// A follower whose data directory was wiped after the leader took a snapshot of ~30 MiB of
/// audio gets it through that snapshot: the snapshot names the chunks, and the follower fetches
/// them from its peers before it installs it. It then streams the track byte-identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_follower_gets_audio_back_through_a_snapshot() {
    let mut c = TestCluster::start(3).await;
    let leader = c.leader_id().await;
    let alice = register(&c.api(leader), "alice").await;

    eprintln!("=== a 30+ MiB upload, then small writes until a snapshot covers it");
    let big = long_mp3(1950);
    assert!(big.len() > 30 * MIB);
    let id = upload(&c.api(leader), &alice, Some("Snap me up"), &big).await;
    let uploaded_at = c.cluster_view(leader).await["applied_index"]
        .as_u64()
        .expect("an applied index");
    let mut n = 0u64;
    eventually("a snapshot that covers the upload", CONVERGE_TIMEOUT, async || {
        n += 1;
        let body = Body::Json(json!({"id": 900_000 + n, "title": format!("filler {n}"), "artist": "a", "duration": 60}));
        c.api(leader).write_ok("/add_track", body).await;
        let snapshot = c.cluster_view(leader).await["snapshot_index"].as_u64();
        snapshot.is_some_and(|s| s >= uploaded_at).then_some(())
    })
    .await;

    let follower = *c.followers(leader).iter().min().expect("a follower");
    let view = wiped_follower_streams(&mut c, follower, &id, &big).await;
    assert!(
        view["snapshot_index"].as_u64() >= Some(uploaded_at),
        "the follower did not get the snapshot: {view}"
    );
}
