//! jepsen-style: starts real `chorus` processes in network namespaces, drives them over HTTP
//! from clients pinned to every node, injects faults on a seeded schedule, records every
//! operation, and checks the history (linearizability of a register, a set, a counter and
//! exactly-once play). See the README section "Fault testing" for how to run and read it.

mod checks;
mod cluster;
mod lazyfs;
mod lin;
mod nemesis;
mod net;
mod report;
mod schedule;
mod workload;

pub use nemesis::AppliedFault;
pub use workload::Op;

use anyhow::{Context, Result, bail};
use checks::Outcome;
use clap::Parser;
use cluster::Cluster;
use serde::Serialize;
use serde_json::json;
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, mpsc, watch};
use tokio::time::Instant;
use workload::Workload;

/// The tone the register tracks are uploaded with (any decodable MP3 will do).
const AUDIO: &[u8] = include_bytes!("../../node/tests/fixtures/untagged-2s.mp3");
const DELAYER: &str = include_str!("../nfq_delay.py");

#[derive(Parser, Debug)]
#[command(
    name = "jepsen-style",
    about = "Fault-injection test of a chorus cluster: real processes, real partitions, checked histories"
)]
struct Args {
    /// Number of chorus nodes (3 or 5).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Seconds of workload under faults (recovery and final reads come after).
    #[arg(long, default_value_t = 60)]
    time: u64,
    /// Faults to schedule, comma-separated: all, none, partition, isolate-leader, bridge,
    /// one-way, kill, kill-leader, pause, loss, delay, slow-node, slow-leader, membership,
    /// rolling-restart, power-loss, power-loss-leader, power-loss-all (the power-loss ones put
    /// every node's data directory on a FUSE file system that forgets what was not fsynced).
    #[arg(long, default_value = "all")]
    nemesis: String,
    /// Workloads, comma-separated: all, register, set, counter, exactly-once, upload.
    #[arg(long, default_value = "all")]
    workload: String,
    /// Seed of the fault schedule and the clients' choices (printed; pass it to replay).
    #[arg(long)]
    seed: Option<u64>,
    /// Read the register with `?consistency=stale`: the checker must then find anomalies.
    #[arg(long)]
    stale_reads: bool,
    /// The power-loss nemeses' control: once the workloads are set up, the nodes' disks answer
    /// fsync and keep nothing, so a power loss must show up as lost writes.
    #[arg(long)]
    unsafe_ignore_fsync: bool,
    /// Quiet time between faults, in seconds: `min..max`.
    #[arg(long, default_value = "2..6")]
    gap: String,
    /// Length of each fault, in seconds: `min..max`.
    #[arg(long, default_value = "4..12")]
    fault: String,
    /// Count a fault window with no successful operation for longer than the fault should
    /// cost as a failure of the run (it is always reported).
    #[arg(long)]
    fail_on_stall: bool,
    /// One-way delay of every `delay` fault, in ms (default: drawn from 25–125 per fault; the
    /// round trip is twice it).
    #[arg(long)]
    delay_ms: Option<u32>,
    /// Clients per node for the set, counter and exactly-once workloads.
    #[arg(long, default_value_t = 2)]
    clients_per_node: u32,
    /// Register keys (tracks); each has one client per node.
    #[arg(long, default_value_t = 2)]
    keys: usize,
    /// chorus's snapshot_every for the cluster under test (small, so snapshots get exercised).
    #[arg(long, default_value_t = 500)]
    snapshot_every: u64,
    /// The chorus binary (default: built from this workspace with the harness's profile).
    #[arg(long)]
    chorus: Option<PathBuf>,
    /// Directory for this run's outputs (default: jepsen-style/runs/<time>-seed<seed>).
    #[arg(long)]
    out: Option<PathBuf>,
}

fn parse_range(s: &str, what: &str) -> Result<(u64, u64)> {
    let parsed = s
        .split_once("..")
        .and_then(|(a, b)| Some((a.trim().parse::<f64>().ok()?, b.trim().parse::<f64>().ok()?)));
    match parsed {
        Some((a, b)) if a > 0.0 && b >= a => Ok(((a * 1000.0) as u64, (b * 1000.0) as u64)),
        _ => bail!("--{what} `{s}`: expected seconds as `min..max` with 0 < min <= max, e.g. 2..6"),
    }
}

/// Removes the namespaces (and everything running in them) however the run ends: success,
/// error, panic. Ctrl-C is turned into an orderly end by the runtime first.
struct NetGuard(net::Net);

impl Drop for NetGuard {
    fn drop(&mut self) {
        self.0.delete();
    }
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            // fuser (the power-loss file system) logs every mount at info.
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,fuser=warn".into()),
        )
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let code = match run(Args::parse()) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("jepsen-style: {e:#}");
            2
        }
    };
    std::process::exit(code);
}

/// Builds chorus with the same profile as this harness, unless a binary was given.
fn chorus_binary(given: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(path) = given {
        if !path.is_file() {
            bail!("--chorus {}: no such file", path.display());
        }
        return Ok(std::fs::canonicalize(path)?);
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("jepsen-style is not inside the chorus workspace")?;
    let release = !cfg!(debug_assertions);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.current_dir(workspace)
        .args(["build", "-p", "node", "--bin", "chorus"]);
    if release {
        cmd.arg("--release");
    }
    tracing::info!(
        "building chorus ({})",
        if release { "release" } else { "debug" }
    );
    let status = cmd.status().context("running cargo to build chorus")?;
    if !status.success() {
        bail!("building chorus failed");
    }
    // cargo run puts the harness next to chorus: target/<profile>/.
    let exe = std::env::current_exe()?;
    let beside = exe.with_file_name("chorus");
    if beside.is_file() {
        return Ok(beside);
    }
    let profile = if release { "release" } else { "debug" };
    Ok(workspace.join("target").join(profile).join("chorus"))
}

fn run(args: Args) -> Result<bool> {
    if !(3..=9).contains(&args.nodes) {
        bail!("--nodes {}: use 3 to 9 (3 or 5 make sense)", args.nodes);
    }
    if args.time < 10 {
        bail!("--time {}: use at least 10 seconds", args.time);
    }
    if args.keys == 0 || args.clients_per_node == 0 {
        bail!("--keys and --clients-per-node must be at least 1");
    }
    let nemeses = schedule::parse_list(&args.nemesis)?;
    let mut workloads = workload::parse_list(&args.workload)?;
    if workloads.contains(&Workload::ExactlyOnce) && !workloads.contains(&Workload::Set) {
        // play_next needs a queue that something fills.
        workloads.push(Workload::Set);
        workloads.sort_by_key(|w| workload::ALL.iter().position(|x| x == w));
    }
    if args.stale_reads && !workloads.contains(&Workload::Register) {
        bail!("--stale-reads reads the register: add `register` to --workload");
    }
    let gap = parse_range(&args.gap, "gap")?;
    let fault = parse_range(&args.fault, "fault")?;
    let cuts_power = nemeses.iter().any(|n| n.loses_power());
    if args.unsafe_ignore_fsync && !cuts_power {
        bail!("--unsafe-ignore-fsync is the power-loss control: add power-loss-all to --nemesis");
    }
    let delays = nemeses.iter().any(|n| n.delays());
    let missing = net::missing_prereqs(delays, cuts_power);
    if !missing.is_empty() {
        bail!("missing prerequisites:\n  {}", missing.join("\n  "));
    }
    let seed = args.seed.unwrap_or_else(rand::random);
    println!("jepsen-style: seed {seed} (replay with --seed {seed})");

    let run_dir = match &args.out {
        Some(dir) => dir.clone(),
        None => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("runs")
                .join(format!("{now}-seed{seed}"))
        }
    };
    // A used directory would hold the last run's data directories, and the cluster would start
    // from that state: every checker would (rightly) report what it never saw attempted.
    if std::fs::read_dir(&run_dir).is_ok_and(|mut entries| entries.next().is_some()) {
        bail!(
            "--out {}: the directory is not empty (an earlier run?); give a new one or delete it",
            run_dir.display()
        );
    }
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("creating the run directory {}", run_dir.display()))?;
    let run_dir = std::fs::canonicalize(&run_dir)?;
    let binary = chorus_binary(args.chorus.clone())?;
    println!("jepsen-style: outputs in {}", run_dir.display());
    let delayer = run_dir.join("nfq_delay.py");
    std::fs::write(&delayer, DELAYER)?;
    let mut faults = schedule::generate(seed, args.nodes, args.time * 1000, &nemeses, gap, fault);
    if let Some(ms) = args.delay_ms {
        faults
            .iter_mut()
            .filter(|f| f.kind == schedule::Nemesis::Delay)
            .for_each(|f| f.param = ms);
    }
    std::fs::write(
        run_dir.join("schedule.json"),
        serde_json::to_string_pretty(&json!({
            "seed": seed,
            "nodes": args.nodes,
            "time_s": args.time,
            "nemeses": nemeses,
            "workloads": workloads,
            "faults": faults,
        }))?,
    )?;

    net::sweep_stale()?;
    let prefix = format!("{}{}-", net::NS_PREFIX, std::process::id());
    let net = net::Net::create(prefix.clone(), args.nodes)?;
    let guard = NetGuard(net::Net {
        prefix,
        nodes: args.nodes,
    });
    // Every socket of the harness is made in the bridge namespace (the clients' host), so no
    // packet to 10.77.0.x ever leaves from the root namespace. Threads inherit it.
    net::enter(&net.bridge_ns())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let tuning = cluster::RaftTuning {
        snapshot_every: args.snapshot_every,
    };
    let mut cluster = Cluster::new(net, binary, run_dir.clone(), tuning)?;
    if cuts_power {
        cluster.mount_disks()?;
    }
    let cluster = Arc::new(Mutex::new(cluster));
    let outcome = runtime.block_on(async {
        tokio::select! {
            r = drive(&args, seed, &workloads, faults, cluster.clone(), &run_dir, &delayer) => r,
            _ = interrupted() => Err(anyhow::anyhow!("interrupted; cleaning up")),
        }
    });
    runtime.block_on(async { cluster.lock().await.teardown() });
    drop(runtime);
    drop(guard);
    outcome
}

async fn interrupted() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// The membership the run ends with: the node in every slot, and what the cluster reports
/// (voters, learners; `None` if no node answered).
struct Membership {
    expected_voters: Vec<u64>,
    seen: Option<(Vec<u64>, Vec<u64>)>,
}

/// Results of every checker, as written to `results.json`.
#[derive(Serialize)]
struct Results {
    valid: bool,
    seed: u64,
    nodes: usize,
    time_s: u64,
    stale_reads: bool,
    operations: BTreeMap<String, BTreeMap<String, usize>>,
    checkers: BTreeMap<String, serde_json::Value>,
    unavailability: Vec<report::Unavailability>,
    /// Every fault window and quiet stretch with its ok operations per second.
    windows: Vec<report::Window>,
    longest_unavailability_s: f64,
    longest_write_unavailability_s: f64,
    recovery_after_heal_s: f64,
    faults: Vec<AppliedFault>,
}

async fn drive(
    args: &Args,
    seed: u64,
    workloads: &[Workload],
    faults: Vec<schedule::Fault>,
    cluster: Arc<Mutex<Cluster>>,
    run_dir: &Path,
    delayer: &Path,
) -> Result<bool> {
    let nodes = args.nodes;
    let http = reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_secs(30))
        .build()?;
    {
        let mut c = cluster.lock().await;
        for i in 0..nodes {
            c.start(i)?;
        }
    }
    tracing::info!("waiting for the cluster to elect a leader");
    cluster::wait_ready(&http, nodes, Duration::from_secs(60), run_dir)
        .await
        .context("the cluster did not start")?;
    let fixture = Arc::new(
        workload::setup(&http, workloads, args.keys, nodes, AUDIO)
            .await
            .context("setting up the workloads on the healthy cluster")?,
    );
    if args.unsafe_ignore_fsync {
        tracing::warn!("control run: from now on the nodes' disks keep nothing they fsync");
        cluster.lock().await.ignore_fsync();
    }
    tracing::info!(
        register_keys = ?fixture.register_keys,
        counter_keys = ?fixture.counter_keys,
        "set up; starting the workload"
    );

    // The history: every op as one JSON line, written as it completes.
    let (history_tx, mut history_rx) = mpsc::unbounded_channel::<Op>();
    let history_path = run_dir.join("history.jsonl");
    let mut history_file = std::io::BufWriter::new(std::fs::File::create(&history_path)?);
    let collector = tokio::spawn(async move {
        let mut ops = Vec::new();
        while let Some(op) = history_rx.recv().await {
            if let Ok(line) = serde_json::to_string(&op) {
                let _ = writeln!(history_file, "{line}");
            }
            ops.push(op);
        }
        let _ = history_file.flush();
        ops
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    let start = Instant::now();
    let ctx = workload::Ctx {
        start,
        history: history_tx,
        stop: stop_rx,
        http: http.clone(),
    };
    let mut clients = Vec::new();
    let mut process = 0u32;
    for &w in workloads {
        let count = match w {
            Workload::Register => args.keys * nodes,
            // Uploads are megabytes each: one client per node.
            Workload::Upload => nodes,
            _ => args.clients_per_node as usize * nodes,
        };
        for k in 0..count {
            // Register: each key gets one client on every node.
            let (node, key_slot) = (k % nodes, k / nodes);
            clients.push(tokio::spawn(workload::run_client(
                ctx.clone(),
                w,
                process,
                node,
                key_slot,
                fixture.clone(),
                args.stale_reads,
                seed,
            )));
            process += 1;
        }
    }
    drop(ctx);

    // The nemesis: one fault at a time, on schedule.
    let mut nemesis = nemesis::Nemesis::new(cluster.clone(), http.clone(), delayer.to_path_buf());
    let mut applied: Vec<AppliedFault> = Vec::new();
    let mut nemesis_log = std::fs::File::create(run_dir.join("nemesis.log"))?;
    let micros = |t: Instant| t.duration_since(start).as_micros() as u64;
    for fault in &faults {
        tokio::time::sleep_until(start + Duration::from_millis(fault.start_ms)).await;
        let at = micros(Instant::now());
        let (targets, description) = match nemesis.apply(fault).await {
            Ok(r) => r,
            Err(e) => {
                let _ = nemesis.heal_all().await;
                return Err(e.context(format!("applying {}", fault.kind.name())));
            }
        };
        tracing::info!("{:>7.1} s  start {description}", at as f64 / 1e6);
        writeln!(nemesis_log, "{:.3} start {description}", at as f64 / 1e6)?;
        applied.push(AppliedFault {
            kind: fault.kind,
            targets,
            param: fault.param,
            applied_us: at,
            healed_us: None,
            description,
        });
        tokio::time::sleep_until(start + Duration::from_millis(fault.end_ms)).await;
        nemesis.heal_all().await.context("healing")?;
        let healed = micros(Instant::now());
        tracing::info!("{:>7.1} s  healed", healed as f64 / 1e6);
        writeln!(nemesis_log, "{:.3} heal", healed as f64 / 1e6)?;
        if let Some(last) = applied.last_mut() {
            last.healed_us = Some(healed);
        }
    }
    tokio::time::sleep_until(start + Duration::from_secs(args.time)).await;
    let end_us = micros(Instant::now());
    let _ = stop_tx.send(true);
    tracing::info!("workload over; waiting for in-flight operations");
    for c in clients {
        let _ = c.await;
    }
    let ops = collector.await.context("history collector")?;

    // Recovery: everything healed, every node up, then read the final state.
    nemesis.heal_all().await?;
    let healed_at = Instant::now();
    cluster::wait_ready(&http, nodes, Duration::from_secs(120), run_dir)
        .await
        .context("the cluster did not recover after the faults were healed")?;
    let recovery_s = healed_at.elapsed().as_secs_f64();
    let mut expected_voters = cluster.lock().await.ids().to_vec();
    expected_voters.sort_unstable();
    let membership = Membership {
        expected_voters,
        seen: cluster::membership(&http, nodes).await,
    };
    tracing::info!("recovered in {recovery_s:.1} s; reading the final state");
    let mut final_state = workload::read_final(&http, nodes).await?;
    if workloads.contains(&Workload::Upload) {
        final_state.uploads = workload::read_uploads(&http, nodes, AUDIO).await?;
    }

    let results = check(
        args,
        seed,
        workloads,
        &fixture,
        &ops,
        &final_state,
        &applied,
        end_us,
        recovery_s,
        &membership,
    );
    std::fs::write(
        run_dir.join("results.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    let title = format!(
        "chorus, {nodes} nodes, seed {seed}: latency per operation (dots: green ok, orange unknown, red failed), shaded faults; ok ops/s below"
    );
    std::fs::write(
        run_dir.join("timeline.svg"),
        report::svg(&ops, &applied, end_us, &title),
    )?;
    print_summary(&results, run_dir);
    Ok(results.valid)
}

/// `(key, outcome)` of every operation `f` in the history.
/// Each track's down-votes at the end (minus its score), less `setup` votes the run's setup
/// cast; a played track keeps the score it had then. `None` when the track is nowhere.
fn final_down_votes(
    final_state: &workload::FinalState,
    tracks: &[u64],
    setup: i64,
) -> BTreeMap<u64, Option<i64>> {
    tracks
        .iter()
        .map(|&k| {
            let votes = final_state
                .queue
                .iter()
                .chain(&final_state.history)
                .find(|t| t.0 == k)
                .map(|t| -t.1 - setup);
            (k, votes)
        })
        .collect()
}

fn keyed_outcomes(ops: &[Op], f: &str) -> Vec<(u64, Outcome)> {
    ops.iter()
        .filter(|o| o.f == f)
        .filter_map(|o| Some((o.key?, o.outcome)))
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn check(
    args: &Args,
    seed: u64,
    workloads: &[Workload],
    fixture: &workload::Fixture,
    ops: &[Op],
    final_state: &workload::FinalState,
    applied: &[AppliedFault],
    end_us: u64,
    recovery_s: f64,
    membership: &Membership,
) -> Results {
    let mut operations: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for op in ops {
        let counts = operations
            .entry(format!("{}/{}", op.workload.name(), op.f))
            .or_default();
        let outcome = serde_json::to_value(op.outcome)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        *counts.entry(outcome).or_default() += 1;
    }
    let mut checkers = BTreeMap::new();
    let mut valid = true;
    let queued: HashSet<u64> = final_state.queue.iter().map(|t| t.0).collect();
    let played: Vec<u64> = final_state.history.iter().map(|t| t.0).collect();

    if workloads.contains(&Workload::Register) {
        let mut per_key = Vec::new();
        for &key in &fixture.register_keys {
            let entries: Vec<lin::Entry<lin::RegisterOp>> = ops
                .iter()
                .enumerate()
                .filter(|(_, o)| o.workload == Workload::Register && o.key == Some(key))
                .filter_map(|(n, o)| {
                    let op = match (o.f, o.outcome) {
                        ("write", Outcome::Ok | Outcome::Info) => lin::RegisterOp::Write(o.value?),
                        ("read", Outcome::Ok) => lin::RegisterOp::Read(o.value),
                        _ => return None,
                    };
                    Some(lin::Entry {
                        id: n as u64,
                        invoke: o.invoke_us,
                        complete: (o.outcome == Outcome::Ok).then_some(o.complete_us),
                        op,
                    })
                })
                .collect();
            let entries = lin::without_unobserved_unknown_writes(entries);
            let r = lin::check(lin::Register(Some(0)), &entries, 20_000_000);
            valid &= r.valid == Some(true);
            per_key.push(json!({"key": key, "result": r}));
        }
        checkers.insert(
            "register (linearizable)".into(),
            json!({
                "valid": per_key.iter().all(|k| k["result"]["valid"] == json!(true)),
                "stale_reads": args.stale_reads,
                "note": "the `id` of an operation is its 0-based line number in history.jsonl",
                "keys": per_key,
            }),
        );
    }

    let counter_tracks = fixture
        .counter_keys
        .iter()
        .chain(&fixture.user_counter_keys);
    let mut attempted: HashSet<u64> = counter_tracks.clone().copied().collect();
    if workloads.contains(&Workload::Set) {
        let mut adds = keyed_outcomes(ops, "add");
        adds.extend(counter_tracks.map(|&k| (k, Outcome::Ok)));
        attempted.extend(adds.iter().map(|a| a.0));
        let final_ids: HashSet<u64> = queued.iter().chain(&played).copied().collect();
        let r = checks::check_set(&adds, &final_ids);
        valid &= r.valid;
        checkers.insert("set".into(), serde_json::to_value(&r).unwrap_or_default());
    }

    if workloads.contains(&Workload::Counter) {
        let mut incs = keyed_outcomes(ops, "vote");
        // The setup's acknowledged down-vote on each.
        incs.extend(fixture.counter_keys.iter().map(|&k| (k, Outcome::Ok)));
        // Down-votes: the count of votes is minus the track's score. A counter track that was
        // played keeps the score it had then (later votes find it gone: 404, failed).
        let finals = final_down_votes(final_state, &fixture.counter_keys, 0);
        let r = checks::check_counter(&incs, &finals);
        valid &= r.valid;
        checkers.insert(
            "counter".into(),
            serde_json::to_value(&r).unwrap_or_default(),
        );

        // Per-user votes: a track's down-votes beyond the setup's one are its distinct voters.
        let votes: Vec<(u64, u64, Outcome)> = ops
            .iter()
            .filter(|o| o.f == "user-vote")
            .filter_map(|o| Some((o.key?, u64::try_from(o.value?).ok()?, o.outcome)))
            .collect();
        let finals = final_down_votes(final_state, &fixture.user_counter_keys, 1);
        let r = checks::check_user_votes(&votes, &finals);
        valid &= r.valid;
        checkers.insert(
            "user-votes".into(),
            serde_json::to_value(&r).unwrap_or_default(),
        );
    }

    if workloads.contains(&Workload::ExactlyOnce) {
        let plays: Vec<(Outcome, Option<u64>)> = ops
            .iter()
            .filter(|o| o.f == "play")
            .map(|o| (o.outcome, o.value.and_then(|v| u64::try_from(v).ok())))
            .collect();
        let r =
            checks::check_exactly_once(&plays, &played, &final_state.node_histories, &attempted);
        valid &= r.valid;
        checkers.insert(
            "exactly-once".into(),
            serde_json::to_value(&r).unwrap_or_default(),
        );
    }

    if workloads.contains(&Workload::Upload) {
        let uploads: Vec<(u64, Outcome, Option<u64>)> = ops
            .iter()
            .filter(|o| o.f == "upload")
            .filter_map(|o| {
                let track = o.value.and_then(|v| u64::try_from(v).ok());
                Some((o.key?, o.outcome, track))
            })
            .collect();
        let r = checks::check_uploads(&uploads, &final_state.uploads);
        valid &= r.valid;
        checkers.insert(
            "upload".into(),
            serde_json::to_value(&r).unwrap_or_default(),
        );
    }

    // Every replaced node's successor is a voter and nothing else is left over.
    let (voters, learners) = membership.seen.clone().unwrap_or_default();
    let members_ok =
        membership.seen.is_some() && voters == membership.expected_voters && learners.is_empty();
    valid &= members_ok;
    checkers.insert(
        "membership".into(),
        json!({
            "valid": members_ok,
            "expected_voters": membership.expected_voters,
            "voters": voters,
            "learners": learners,
        }),
    );

    let unavailability = report::unavailability(ops, applied, end_us);
    let windows = report::windows(ops, applied, end_us);
    if args.fail_on_stall {
        valid &= !windows.iter().any(|w| w.stalled);
    }
    let longest = unavailability
        .iter()
        .map(|u| u.longest_gap_s)
        .fold(0.0, f64::max);
    let longest_write = unavailability
        .iter()
        .map(|u| u.longest_write_gap_s)
        .fold(0.0, f64::max);
    Results {
        valid,
        seed,
        nodes: args.nodes,
        time_s: args.time,
        stale_reads: args.stale_reads,
        operations,
        checkers,
        unavailability,
        windows,
        longest_unavailability_s: longest,
        longest_write_unavailability_s: longest_write,
        recovery_after_heal_s: recovery_s,
        faults: applied.to_vec(),
    }
}

/// Ok operations per second in each kind of window (min–max over its windows, the longest
/// gap), and every window that went silent for longer than its fault should cost.
fn print_windows(windows: &[report::Window]) {
    let mut kinds: Vec<&str> = windows.iter().map(|w| w.kind.as_str()).collect();
    kinds.sort_unstable();
    kinds.dedup();
    println!("  ok operations per second (min–max over windows; longest gap):");
    for kind in kinds {
        let of_kind: Vec<&report::Window> = windows.iter().filter(|w| w.kind == kind).collect();
        let rate = |f: fn(f64, f64) -> f64, init| of_kind.iter().map(|w| w.ok_per_s).fold(init, f);
        let gap = of_kind.iter().map(|w| w.longest_gap_s).fold(0.0, f64::max);
        println!(
            "    {kind:<16} {:>2} windows  {:>7.1}–{:<7.1} {gap:.1} s",
            of_kind.len(),
            rate(f64::min, f64::INFINITY),
            rate(f64::max, 0.0),
        );
    }
    for w in windows.iter().filter(|w| w.stalled) {
        println!(
            "  STALLED: {} (nodes {:?}, param {}) at {:.1}–{:.1} s: no successful operation for {:.1} s ({} ok in the window)",
            w.kind, w.targets, w.param, w.start_s, w.end_s, w.longest_gap_s, w.ok
        );
    }
}

fn print_summary(r: &Results, run_dir: &Path) {
    let total: usize = r.operations.values().flat_map(|m| m.values()).sum();
    println!("\n=== jepsen-style results (seed {})", r.seed);
    for (kind, counts) in &r.operations {
        let parts: Vec<String> = counts.iter().map(|(o, n)| format!("{o} {n}")).collect();
        println!("  {kind:<24} {}", parts.join(", "));
    }
    println!("  {total} operations, {} faults", r.faults.len());
    for (name, v) in &r.checkers {
        let ok = v["valid"] == json!(true);
        println!(
            "  checker {name:<26} {}",
            if ok { "valid" } else { "INVALID" }
        );
    }
    if r.unavailability.is_empty() {
        println!("  no leader-disrupting fault in this run, so no unavailability measured");
    } else {
        println!(
            "  longest unavailability after a leader-disrupting fault: {:.1} s (writes alone: {:.1} s)",
            r.longest_unavailability_s, r.longest_write_unavailability_s
        );
    }
    print_windows(&r.windows);
    println!(
        "  recovery after the final heal: {:.1} s",
        r.recovery_after_heal_s
    );
    println!(
        "  {}: details in {}/results.json, timeline.svg, history.jsonl",
        if r.valid { "VALID" } else { "INVALID" },
        run_dir.display()
    );
}
