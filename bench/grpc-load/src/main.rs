//! `grpc-load`: N clients, each on its own connection, sending one kind of request back to
//! back for a fixed time; prints one JSON line with throughput and latency percentiles.
//!
//! Targets: `chorus-vote` (VoteTrack, anonymous), `chorus-queue` (GetQueue, linearizable),
//! `etcd-put` (Put of a 100-byte value), `etcd-range` (a linearizable Get). Only answered
//! requests count toward latency; failures are counted as errors.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, ValueEnum};

mod pb {
    tonic::include_proto!("queue");
}

use pb::queue_service_client::QueueServiceClient;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Target {
    ChorusVote,
    ChorusQueue,
    EtcdPut,
    EtcdRange,
}

#[derive(Parser)]
struct Args {
    #[arg(long, value_enum)]
    target: Target,
    /// host:port of the node to load.
    #[arg(long)]
    endpoint: String,
    #[arg(long, default_value_t = 1)]
    clients: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Requests before this many seconds are not measured (connections warm up).
    #[arg(long, default_value_t = 1)]
    warmup_seconds: u64,
    /// The queued track VoteTrack votes for.
    #[arg(long, default_value = "1")]
    track_id: String,
}

/// One client's connection. etcd's client is boxed: it is some 3.5 KB, tonic's a few words.
enum Conn {
    Chorus(QueueServiceClient<tonic::transport::Channel>),
    Etcd(Box<etcd_client::Client>),
}

async fn connect(args: &Args) -> anyhow::Result<Conn> {
    Ok(match args.target {
        Target::ChorusVote | Target::ChorusQueue => {
            // One channel per client: tonic multiplexes a channel's calls over one HTTP/2
            // connection, and each client should have its own, as etcd-client's do.
            let channel =
                tonic::transport::Channel::from_shared(format!("http://{}", args.endpoint))?
                    .timeout(Duration::from_secs(10))
                    .connect()
                    .await
                    .with_context(|| format!("cannot connect to {}", args.endpoint))?;
            Conn::Chorus(QueueServiceClient::new(channel))
        }
        Target::EtcdPut | Target::EtcdRange => {
            let options = etcd_client::ConnectOptions::new().with_timeout(Duration::from_secs(10));
            // Only this one endpoint: etcd-client would spread calls over every endpoint it is
            // given, and the rows compare one follower with one follower.
            let client = etcd_client::Client::connect([args.endpoint.as_str()], Some(options))
                .await
                .with_context(|| format!("cannot connect to etcd at {}", args.endpoint))?;
            Conn::Etcd(Box::new(client))
        }
    })
}

const VALUE: [u8; 100] = [b'v'; 100];

/// One request; true when it was answered successfully. Both tonic and etcd-client turn a
/// non-OK gRPC status (and a transport failure or the 10 s timeout) into an `Err`.
async fn request(conn: &mut Conn, target: Target, client: usize, track_id: &str) -> bool {
    match (conn, target) {
        (Conn::Chorus(c), Target::ChorusVote) => c
            .vote_track(pb::VoteRequest {
                id: track_id.to_string(),
                up: true,
            })
            .await
            .is_ok(),
        (Conn::Chorus(c), Target::ChorusQueue) => c.get_queue(pb::Empty {}).await.is_ok(),
        (Conn::Etcd(c), Target::EtcdPut) => c
            .put(format!("bench/k{client}"), VALUE.to_vec(), None)
            .await
            .is_ok(),
        // No GetOptions: etcd-client's default is a linearizable read (not serializable).
        (Conn::Etcd(c), Target::EtcdRange) => c.get("bench/read", None).await.is_ok(),
        _ => false,
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Target::EtcdRange = args.target {
        // The key every read asks for.
        let mut conn = connect(&args).await?;
        if let Conn::Etcd(c) = &mut conn {
            c.put("bench/read", VALUE.to_vec(), None).await?;
        }
    }
    let mut conns = Vec::with_capacity(args.clients);
    for _ in 0..args.clients {
        conns.push(connect(&args).await?);
    }
    let start = Instant::now();
    let measure_from = start + Duration::from_secs(args.warmup_seconds);
    let end = measure_from + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for (client, mut conn) in conns.into_iter().enumerate() {
        let (target, track_id) = (args.target, args.track_id.clone());
        tasks.push(tokio::spawn(async move {
            let (mut latencies, mut errors) = (Vec::new(), 0u64);
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let ok = request(&mut conn, target, client, &track_id).await;
                if sent >= measure_from {
                    if ok {
                        latencies.push(sent.elapsed().as_micros() as u64);
                    } else {
                        errors += 1;
                    }
                }
            }
            (latencies, errors)
        }));
    }
    let (mut all, mut errors) = (Vec::new(), 0);
    for task in tasks {
        let (latencies, e) = task.await?;
        all.extend(latencies);
        errors += e;
    }
    all.sort_unstable();
    let measured = args.seconds as f64;
    println!(
        "{}",
        serde_json::json!({
            // The name given on the command line (chorus-vote, ...), as compare.py knows it.
            "target": args.target.to_possible_value().map(|v| v.get_name().to_string()),
            "clients": args.clients,
            "seconds": args.seconds,
            "ops": all.len(),
            "errors": errors,
            "rps": all.len() as f64 / measured,
            "p50_us": percentile(&all, 50.0),
            "p99_us": percentile(&all, 99.0),
            "p999_us": percentile(&all, 99.9),
        })
    );
    Ok(())
}
