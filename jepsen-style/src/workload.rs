//! The clients: what they send through chorus's public HTTP API and how each answer becomes an
//! operation in the history. Every client is pinned to one node, so clients are spread over
//! all of them and a partitioned or paused node's clients see what its users would see.
//!
//! Outcomes follow Jepsen: `ok` when the answer says it happened, `fail` only when it certainly
//! did not (a 4xx refusal of a write, any failed read: reads have no effect), `info` (unknown)
//! otherwise — a timeout, a dropped connection or a 5xx after a write was sent may or may not
//! have taken effect, and the checkers treat it so.

use crate::checks::Outcome;
use crate::cluster::{http_base, node_id};
use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Longer than chorus's own bound on a request (5 s to answer 503 without a leader), so a
/// timeout here means the node did not keep that promise or was paused.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(8);

/// Queue ids of the set workload's adds start here; counter tracks sit just below.
const SET_ID_BASE: u64 = 1_000_000;
const COUNTER_ID_BASE: u64 = 900_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    Register,
    Set,
    Counter,
    ExactlyOnce,
    Upload,
}

pub const ALL: [Workload; 5] = [
    Workload::Register,
    Workload::Set,
    Workload::Counter,
    Workload::ExactlyOnce,
    Workload::Upload,
];

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Register => "register",
            Workload::Set => "set",
            Workload::Counter => "counter",
            Workload::ExactlyOnce => "exactly-once",
            Workload::Upload => "upload",
        }
    }
}

pub fn parse_list(s: &str) -> Result<Vec<Workload>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if part == "all" {
            out.extend(ALL);
            continue;
        }
        match ALL.iter().find(|w| w.name() == part) {
            Some(w) => out.push(*w),
            None => bail!(
                "unknown workload `{part}`; known: all, {}",
                ALL.map(Workload::name).join(", ")
            ),
        }
    }
    out.sort_by_key(|w| ALL.iter().position(|x| x == w));
    out.dedup();
    if out.is_empty() {
        bail!("no workload selected");
    }
    Ok(out)
}

/// One operation of the history (one JSON line of `history.jsonl`).
#[derive(Clone, Debug, Serialize)]
pub struct Op {
    pub workload: Workload,
    /// The client that ran it (one client runs one operation at a time).
    pub process: u32,
    /// The node the client talked to.
    pub node: u64,
    /// `read`, `write`, `add`, `vote`, `play` or `upload`.
    pub f: &'static str,
    /// Register: the track id; counter: the voted track; set: the added id; upload: the
    /// upload's number (its title and bytes follow from it, [`upload_bytes`]).
    pub key: Option<u64>,
    /// Register: the value written, or read; play: the track played; upload: the new track.
    pub value: Option<i64>,
    pub outcome: Outcome,
    /// Microseconds since the workload started.
    pub invoke_us: u64,
    pub complete_us: u64,
    /// A read with `?consistency=stale`.
    pub stale: bool,
    /// Why it failed or is unknown: status and message, or the transport error.
    pub error: Option<String>,
}

/// What a client needs to record and to know when to stop.
#[derive(Clone)]
pub struct Ctx {
    pub start: Instant,
    pub history: mpsc::UnboundedSender<Op>,
    pub stop: watch::Receiver<bool>,
    pub http: reqwest::Client,
}

impl Ctx {
    pub fn micros(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }
}

/// What the run's setup created for the workloads.
#[derive(Clone, Debug, Default)]
pub struct Fixture {
    /// Bearer token of the user that uploads (the register tracks, the upload workload).
    pub token: String,
    /// The MP3 the uploads are made of.
    pub audio: Vec<u8>,
    pub register_keys: Vec<u64>,
    /// Tracks voted down anonymously: each acknowledged vote counts.
    pub counter_keys: Vec<u64>,
    /// Tracks voted down by signed-in users: each user counts once, however often they vote.
    pub user_counter_keys: Vec<u64>,
    /// Bearer tokens of the voters of `user_counter_keys` (the op's `value` is the index).
    pub voter_tokens: Vec<String>,
}

/// Signed-in voters of the counter workload: few enough that each votes on every track many
/// times over a run (all but the first vote must change nothing).
const VOTERS: usize = 12;

/// An HTTP answer, or the reason there was none.
enum Answer {
    Status(u16, Value),
    /// Sent, no answer: timeout, reset, connection closed.
    Lost(String),
    /// Never sent (could not connect): certainly no effect.
    NotSent(String),
}

async fn send(req: reqwest::RequestBuilder) -> Answer {
    match req.timeout(CLIENT_TIMEOUT).send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            match resp.bytes().await {
                Ok(body) => {
                    Answer::Status(status, serde_json::from_slice(&body).unwrap_or(Value::Null))
                }
                Err(e) => Answer::Lost(format!("reading the answer: {e}")),
            }
        }
        Err(e) if e.is_connect() => Answer::NotSent(e.to_string()),
        Err(e) => Answer::Lost(e.to_string()),
    }
}

fn describe(status: u16, body: &Value) -> String {
    format!(
        "{status} {} {}",
        body["error"].as_str().unwrap_or(""),
        body["message"].as_str().unwrap_or("")
    )
}

/// A write's outcome from its answer: 2xx ok; 4xx a definite refusal; 5xx or no answer unknown
/// (a follower that lost its leader mid-forward cannot know whether the entry committed).
fn write_outcome(answer: &Answer) -> (Outcome, Option<String>) {
    match answer {
        Answer::Status(s, _) if (200..300).contains(s) => (Outcome::Ok, None),
        Answer::Status(s, b) if (400..500).contains(s) => (Outcome::Fail, Some(describe(*s, b))),
        Answer::Status(s, b) => (Outcome::Info, Some(describe(*s, b))),
        Answer::Lost(e) => (Outcome::Info, Some(e.clone())),
        Answer::NotSent(e) => (Outcome::Fail, Some(e.clone())),
    }
}

struct Recorder<'a> {
    ctx: &'a Ctx,
    op: Op,
}

impl<'a> Recorder<'a> {
    fn invoke(
        ctx: &'a Ctx,
        workload: Workload,
        process: u32,
        node: usize,
        f: &'static str,
    ) -> Self {
        let now = ctx.micros();
        Recorder {
            ctx,
            op: Op {
                workload,
                process,
                node: node_id(node),
                f,
                key: None,
                value: None,
                outcome: Outcome::Info,
                invoke_us: now,
                complete_us: now,
                stale: false,
                error: None,
            },
        }
    }

    /// Completes a write with the outcome its answer implies (see [`write_outcome`]).
    fn complete_write(self, answer: &Answer) {
        let (outcome, error) = write_outcome(answer);
        self.complete(outcome, error);
    }

    fn complete(mut self, outcome: Outcome, error: Option<String>) {
        self.op.outcome = outcome;
        self.op.error = error;
        self.op.complete_us = self.ctx.micros();
        let _ = self.ctx.history.send(self.op);
    }
}

/// Client `process` of a workload, pinned to node `node`, until the stop signal. Register
/// clients work on key number `key_slot`.
#[allow(clippy::too_many_arguments)]
pub async fn run_client(
    ctx: Ctx,
    workload: Workload,
    process: u32,
    node: usize,
    key_slot: usize,
    fixture: Arc<Fixture>,
    stale_reads: bool,
    seed: u64,
) {
    use rand::{Rng, SeedableRng};
    let mut rng =
        rand::rngs::StdRng::seed_from_u64(seed ^ u64::from(process).wrapping_mul(0x9E37_79B9));
    static NEXT_VALUE: AtomicI64 = AtomicI64::new(1);
    static NEXT_ADD: AtomicU64 = AtomicU64::new(SET_ID_BASE);
    static NEXT_UPLOAD: AtomicU64 = AtomicU64::new(1);
    let base = http_base(node);
    if workload == Workload::ExactlyOnce {
        // Let the set's clients queue something first: an empty queue answers only
        // `queue_empty`, and the counter's tracks must not be the first ones played.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    while !ctx.stopped() {
        match workload {
            Workload::Register => {
                let key = fixture.register_keys[key_slot % fixture.register_keys.len()];
                if rng.random_bool(0.5) {
                    let value = NEXT_VALUE.fetch_add(1, Ordering::Relaxed);
                    register_write(&ctx, process, node, &base, &fixture.token, key, value).await;
                } else {
                    register_read(&ctx, process, node, &base, key, stale_reads).await;
                }
            }
            Workload::Set => {
                let id = NEXT_ADD.fetch_add(1, Ordering::Relaxed);
                add(&ctx, process, node, &base, id).await;
            }
            Workload::Counter if rng.random_bool(0.5) => {
                let key = fixture.counter_keys[rng.random_range(0..fixture.counter_keys.len())];
                vote_down(&ctx, process, node, &base, key).await;
            }
            Workload::Counter => {
                let keys = &fixture.user_counter_keys;
                let key = keys[rng.random_range(0..keys.len())];
                let voter = rng.random_range(0..fixture.voter_tokens.len());
                user_vote_down(&ctx, process, node, &base, key, voter, &fixture).await;
            }
            Workload::ExactlyOnce => {
                play_next(&ctx, process, node, &base).await;
                // Plays are slower than adds so the queue does not run dry.
                tokio::time::sleep(Duration::from_millis(rng.random_range(100..300))).await;
            }
            Workload::Upload => {
                let n = NEXT_UPLOAD.fetch_add(1, Ordering::Relaxed);
                upload(&ctx, process, node, &base, &fixture, n).await;
                // Uploads are megabytes: a few a second per node keep the final check short.
                tokio::time::sleep(Duration::from_millis(rng.random_range(300..900))).await;
            }
        }
        // A little jitter keeps the history a size the linearizability search handles.
        tokio::time::sleep(Duration::from_millis(rng.random_range(5..30))).await;
    }
}

/// A multipart body as chorus's upload and edit endpoints take it: `metadata` as JSON and,
/// optionally, the audio file. Send it with [`with_form`].
fn track_form(metadata: &Value, audio: Option<&[u8]>) -> Vec<u8> {
    let mut body = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"metadata\"\r\nContent-Type: application/json\r\n\r\n{metadata}\r\n"
    )
    .into_bytes();
    if let Some(audio) = audio {
        body.extend_from_slice(
            format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"register.mp3\"\r\nContent-Type: audio/mpeg\r\n\r\n").as_bytes(),
        );
        body.extend_from_slice(audio);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

const BOUNDARY: &str = "jepsen-style-boundary-7f3a";

fn with_form(req: reqwest::RequestBuilder, form: Vec<u8>) -> reqwest::RequestBuilder {
    req.header(
        "Content-Type",
        format!("multipart/form-data; boundary={BOUNDARY}"),
    )
    .body(form)
}

async fn register_write(
    ctx: &Ctx,
    process: u32,
    node: usize,
    base: &str,
    token: &str,
    key: u64,
    value: i64,
) {
    let mut rec = Recorder::invoke(ctx, Workload::Register, process, node, "write");
    rec.op.key = Some(key);
    rec.op.value = Some(value);
    let form = track_form(&json!({"title": value.to_string()}), None);
    let req = ctx
        .http
        .patch(format!("{base}/tracks/{key}"))
        .bearer_auth(token);
    let answer = send(with_form(req, form)).await;
    rec.complete_write(&answer);
}

async fn register_read(ctx: &Ctx, process: u32, node: usize, base: &str, key: u64, stale: bool) {
    let mut rec = Recorder::invoke(ctx, Workload::Register, process, node, "read");
    rec.op.key = Some(key);
    rec.op.stale = stale;
    let query = if stale { "?consistency=stale" } else { "" };
    match send(ctx.http.get(format!("{base}/tracks/{key}{query}"))).await {
        Answer::Status(200, body) => {
            match body["title"].as_str().and_then(|t| t.parse::<i64>().ok()) {
                Some(v) => {
                    rec.op.value = Some(v);
                    rec.complete(Outcome::Ok, None);
                }
                None => rec.complete(Outcome::Fail, Some(format!("unexpected track: {body}"))),
            }
        }
        Answer::Status(s, b) => rec.complete(Outcome::Fail, Some(describe(s, &b))),
        Answer::Lost(e) | Answer::NotSent(e) => rec.complete(Outcome::Fail, Some(e)),
    }
}

fn queue_track(id: u64) -> Value {
    json!({"id": id, "title": format!("t{id}"), "artist": "jepsen", "duration": 180})
}

async fn add(ctx: &Ctx, process: u32, node: usize, base: &str, id: u64) {
    let mut rec = Recorder::invoke(ctx, Workload::Set, process, node, "add");
    rec.op.key = Some(id);
    // The answer without the queue: the set grows to thousands of tracks, and the whole queue in
    // every answer made throughput fall by half over a run.
    let answer = send(
        ctx.http
            .post(format!("{base}/add_track"))
            .header("Prefer", "return=minimal")
            .json(&queue_track(id)),
    )
    .await;
    let (mut outcome, error) = write_outcome(&answer);
    // Ids are unique, so "already queued" can only mean an earlier attempt of this very add
    // went through: it happened, though this request did not do it.
    if let Answer::Status(409, _) = answer {
        outcome = Outcome::Info;
    }
    rec.complete(outcome, error);
}

/// The title of upload number `n`.
pub fn upload_title(n: u64) -> String {
    format!("jepsen-upload-{n}")
}

/// The bytes of upload number `n`: the fixture MP3 repeated (1 to 3 chunks, so uploads share
/// their first chunks and the chunk store's sharing is exercised too), then an ID3v1 tag that
/// makes the last chunk unique.
pub fn upload_bytes(audio: &[u8], n: u64) -> Vec<u8> {
    let repeats = [8, 40, 130][(n % 3) as usize];
    let mut bytes = audio.repeat(repeats);
    let mut tag = [0u8; 128];
    tag[..3].copy_from_slice(b"TAG");
    let title = upload_title(n);
    let len = title.len().min(30);
    tag[3..3 + len].copy_from_slice(&title.as_bytes()[..len]);
    tag[127] = 255;
    bytes.extend_from_slice(&tag);
    bytes
}

async fn upload(ctx: &Ctx, process: u32, node: usize, base: &str, fixture: &Fixture, n: u64) {
    let mut rec = Recorder::invoke(ctx, Workload::Upload, process, node, "upload");
    rec.op.key = Some(n);
    let meta = json!({"title": upload_title(n), "artist": "jepsen"});
    let form = track_form(&meta, Some(&upload_bytes(&fixture.audio, n)));
    let req = ctx
        .http
        .post(format!("{base}/tracks/upload"))
        .bearer_auth(&fixture.token);
    let answer = send(with_form(req, form)).await;
    if let Answer::Status(201, body) = &answer {
        match body["track_id"].as_str().and_then(|s| s.parse().ok()) {
            Some(id) => {
                rec.op.value = Some(id);
                rec.complete(Outcome::Ok, None);
            }
            None => rec.complete(
                Outcome::Info,
                Some(format!("201 without a track_id: {body}")),
            ),
        }
        return;
    }
    rec.complete_write(&answer);
}

async fn vote_down(ctx: &Ctx, process: u32, node: usize, base: &str, key: u64) {
    let mut rec = Recorder::invoke(ctx, Workload::Counter, process, node, "vote");
    rec.op.key = Some(key);
    // Down-votes keep the counter tracks at the bottom of the queue, out of play_next's way.
    let request = ctx.http.post(format!("{base}/vote?id={key}&up=false"));
    let answer = send(request.header("Prefer", "return=minimal")).await;
    rec.complete_write(&answer);
}

/// A signed-in user's down-vote: only the user's first one changes the track's votes.
async fn user_vote_down(
    ctx: &Ctx,
    process: u32,
    node: usize,
    base: &str,
    key: u64,
    voter: usize,
    fixture: &Fixture,
) {
    let mut rec = Recorder::invoke(ctx, Workload::Counter, process, node, "user-vote");
    rec.op.key = Some(key);
    rec.op.value = i64::try_from(voter).ok();
    let request = ctx
        .http
        .post(format!("{base}/vote?id={key}&up=false"))
        .bearer_auth(&fixture.voter_tokens[voter])
        .header("Prefer", "return=minimal");
    let answer = send(request).await;
    rec.complete_write(&answer);
}

async fn play_next(ctx: &Ctx, process: u32, node: usize, base: &str) {
    let mut rec = Recorder::invoke(ctx, Workload::ExactlyOnce, process, node, "play");
    let answer = send(ctx.http.post(format!("{base}/play_next"))).await;
    if let Answer::Status(200, body) = &answer {
        match body["now_playing"]["id"].as_i64() {
            Some(id) => {
                rec.op.value = Some(id);
                rec.complete(Outcome::Ok, None);
            }
            None => rec.complete(
                Outcome::Info,
                Some(format!("200 without now_playing.id: {body}")),
            ),
        }
        return;
    }
    rec.complete_write(&answer);
}

// ---- setup and final reads (the cluster is healthy then; retried until a deadline) ----

/// Retries `f` until it succeeds or `deadline` passes.
async fn retry<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let until = Instant::now() + deadline;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() > until => {
                return Err(e.context(format!("{what}: gave up after {} s", deadline.as_secs())));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}

async fn json_ok(req: reqwest::RequestBuilder, want: u16) -> Result<Value> {
    let resp = req.timeout(CLIENT_TIMEOUT).send().await?;
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    if status != want {
        bail!("expected {want}, got {}", describe(status, &body));
    }
    Ok(body)
}

/// Creates what the workloads need: a user and `keys` uploaded tracks (titled "0") for the
/// register; for the counter, `counters` queued tracks voted anonymously and `counters` voted by
/// signed-in voters, each with one anonymous down-vote.
pub async fn setup(
    http: &reqwest::Client,
    workloads: &[Workload],
    keys: usize,
    counters: usize,
    audio: &[u8],
) -> Result<Fixture> {
    let base = http_base(0);
    let deadline = Duration::from_secs(30);
    let mut fixture = Fixture {
        audio: audio.to_vec(),
        ..Fixture::default()
    };
    if workloads.contains(&Workload::Register) || workloads.contains(&Workload::Upload) {
        let user = json!({"username": "jepsen", "password": "jepsen-password", "email": "jepsen@example.com"});
        // Idempotency-Key: a retried registration is applied once and answers the same.
        retry("registering the test user", deadline, || {
            json_ok(
                http.post(format!("{base}/users/register"))
                    .header("Idempotency-Key", "jepsen-setup-user")
                    .json(&user),
                201,
            )
        })
        .await?;
        let login = json!({"username": "jepsen", "password": "jepsen-password"});
        let body = retry("logging in", deadline, || {
            json_ok(http.post(format!("{base}/users/login")).json(&login), 200)
        })
        .await?;
        fixture.token = body["token"]
            .as_str()
            .context("login answer without token")?
            .to_string();
        let register_keys = if workloads.contains(&Workload::Register) {
            keys
        } else {
            0
        };
        for k in 0..register_keys {
            let form = track_form(&json!({"title": "0", "artist": "jepsen"}), Some(audio));
            let body = retry("uploading a register track", deadline, || {
                let req = http
                    .post(format!("{base}/tracks/upload"))
                    .bearer_auth(&fixture.token)
                    .header("Idempotency-Key", format!("jepsen-setup-track-{k}"));
                json_ok(with_form(req, form.clone()), 201)
            })
            .await?;
            let id = body["track_id"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .with_context(|| format!("upload answer without a numeric track_id: {body}"))?;
            fixture.register_keys.push(id);
        }
    }
    if workloads.contains(&Workload::Counter) {
        for k in 0..2 * counters as u64 {
            let id = COUNTER_ID_BASE + k;
            retry("queueing a counter track", deadline, || {
                json_ok(
                    http.post(format!("{base}/add_track"))
                        .header("Idempotency-Key", format!("jepsen-setup-counter-{id}"))
                        .json(&queue_track(id)),
                    200,
                )
            })
            .await?;
            // One down-vote each before the clients start, so the counter tracks sort below
            // the set's fresh tracks from the first play on (ties go in the order of adding).
            retry("voting a counter track down", deadline, || {
                json_ok(
                    http.post(format!("{base}/vote?id={id}&up=false"))
                        .header("Idempotency-Key", format!("jepsen-setup-vote-{id}")),
                    200,
                )
            })
            .await?;
            if k < counters as u64 {
                fixture.counter_keys.push(id);
            } else {
                fixture.user_counter_keys.push(id);
            }
        }
        for v in 0..VOTERS {
            let name = format!("voter{v}");
            let user = json!({"username": name, "password": "jepsen-password", "email": format!("{name}@example.com")});
            retry("registering a voter", deadline, || {
                json_ok(
                    http.post(format!("{base}/users/register"))
                        .header("Idempotency-Key", format!("jepsen-setup-voter-{v}"))
                        .json(&user),
                    201,
                )
            })
            .await?;
            let login = json!({"username": name, "password": "jepsen-password"});
            let body = retry("logging a voter in", deadline, || {
                json_ok(http.post(format!("{base}/users/login")).json(&login), 200)
            })
            .await?;
            let token = body["token"]
                .as_str()
                .context("login answer without token")?;
            fixture.voter_tokens.push(token.to_string());
        }
    }
    Ok(fixture)
}

/// What the cluster holds at the end, read after recovery.
#[derive(Debug, Default)]
pub struct FinalState {
    /// `GET /queue`, linearizable: id → votes.
    pub queue: Vec<(u64, i64)>,
    /// `GET /history`, linearizable: (id, votes when played), oldest first.
    pub history: Vec<(u64, i64)>,
    /// Each node's own `GET /history?consistency=stale`.
    pub node_histories: Vec<(u64, Vec<u64>)>,
    /// What each node lists and serves of the upload workload's tracks.
    pub uploads: Vec<NodeUploads>,
}

fn ids_votes(v: &Value) -> Result<Vec<(u64, i64)>> {
    v.as_array()
        .context("expected a JSON array")?
        .iter()
        .map(|t| {
            Ok((
                t["id"].as_u64().context("track without id")?,
                t["votes"].as_i64().context("track without votes")?,
            ))
        })
        .collect()
}

pub async fn read_final(http: &reqwest::Client, nodes: usize) -> Result<FinalState> {
    let deadline = Duration::from_secs(60);
    let base = http_base(0);
    let queue = retry("reading the final queue", deadline, || async {
        ids_votes(&json_ok(http.get(format!("{base}/queue")), 200).await?)
    })
    .await?;
    let history = retry("reading the final history", deadline, || async {
        ids_votes(&json_ok(http.get(format!("{base}/history")), 200).await?)
    })
    .await?;
    let mut node_histories = Vec::new();
    for i in 0..nodes {
        let base = http_base(i);
        let h = retry("reading a node's own history", deadline, || async {
            ids_votes(&json_ok(http.get(format!("{base}/history?consistency=stale")), 200).await?)
        })
        .await?;
        node_histories.push((node_id(i), h.into_iter().map(|(id, _)| id).collect()));
    }
    Ok(FinalState {
        queue,
        history,
        node_histories,
        uploads: Vec::new(),
    })
}

/// What one node serves of the upload workload's tracks after recovery.
#[derive(Debug, Default, Serialize)]
pub struct NodeUploads {
    pub node: u64,
    /// Upload number -> the track ids titled so (one, if all is well), from the node's
    /// linearizable `GET /tracks`.
    pub listed: std::collections::BTreeMap<u64, Vec<u64>>,
    /// Tracks whose `GET /play` on this node did not give the uploaded bytes: (upload, track,
    /// what came instead).
    pub wrong: Vec<(u64, u64, String)>,
}

/// Lists the upload workload's tracks on every node and plays each one there, comparing it with
/// the bytes that were uploaded.
pub async fn read_uploads(
    http: &reqwest::Client,
    nodes: usize,
    audio: &[u8],
) -> Result<Vec<NodeUploads>> {
    let deadline = Duration::from_secs(60);
    let mut out = Vec::new();
    for i in 0..nodes {
        let base = http_base(i);
        let mut node = NodeUploads {
            node: node_id(i),
            ..Default::default()
        };
        let mut offset = 0;
        loop {
            let url = format!("{base}/tracks?q=jepsen-upload-&limit=1000&offset={offset}");
            let page = retry("listing the uploaded tracks", deadline, || {
                json_ok(http.get(&url), 200)
            })
            .await?;
            let tracks = page.as_array().context("GET /tracks: not an array")?;
            for t in tracks {
                let n = t["title"]
                    .as_str()
                    .and_then(|t| t.strip_prefix("jepsen-upload-"))
                    .and_then(|n| n.parse().ok());
                let id = t["track_id"].as_str().and_then(|id| id.parse().ok());
                if let (Some(n), Some(id)) = (n, id) {
                    node.listed.entry(n).or_default().push(id);
                }
            }
            if tracks.len() < 1000 {
                break;
            }
            offset += tracks.len();
        }
        for (&n, ids) in &node.listed {
            let want = upload_bytes(audio, n);
            for &id in ids {
                let url = format!("{base}/play/{id}");
                let got = retry("playing an uploaded track", deadline, || async {
                    let resp = http.get(&url).timeout(CLIENT_TIMEOUT).send().await?;
                    let status = resp.status().as_u16();
                    let body = resp.bytes().await?;
                    if status >= 500 {
                        bail!("{status}");
                    }
                    Ok((status, body))
                })
                .await;
                let wrong = match got {
                    Ok((200, body)) if body.as_ref() == want.as_slice() => continue,
                    Ok((200, body)) => {
                        format!("{} bytes, not the {} uploaded", body.len(), want.len())
                    }
                    Ok((status, _)) => format!("status {status}"),
                    Err(e) => format!("{e:#}"),
                };
                node.wrong.push((n, id, wrong));
            }
        }
        out.push(node);
    }
    Ok(out)
}
