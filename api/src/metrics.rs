//! `GET /metrics`: this node in the Prometheus text format (prometheus-client's encoder).
//!
//! Counted as it happens: HTTP requests by route, method and status with their latency, audio
//! bytes uploaded and streamed, open event streams, gRPC calls; the storage and Raft layers'
//! own events (`storage::metrics`, `raft::metrics`). Read at scrape time: the Raft state (term,
//! leader, indexes, members) and the process (resident memory, CPU, open files). A scrape reads
//! watched values and `/proc` only; it takes no lock a write holds.

use std::sync::LazyLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::AppState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    /// The route as declared (`/tracks/{id}`), so ids do not make a series each.
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GrpcLabels {
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GrpcErrorLabels {
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShedLabels {
    /// `in_flight` (a request over `max_in_flight`) or `connections` (over `max_connections`).
    limit: String,
}

struct ApiMetrics {
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    uploaded_bytes: Counter,
    streamed_bytes: Counter,
    event_streams: Gauge,
    grpc_calls: Family<GrpcLabels, Counter>,
    grpc_errors: Family<GrpcErrorLabels, Counter>,
    shed: Family<ShedLabels, Counter>,
}

static METRICS: LazyLock<ApiMetrics> = LazyLock::new(|| ApiMetrics {
    requests: Family::default(),
    // 100 µs to ~13 s.
    latency: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0001, 2.0, 18))),
    uploaded_bytes: Counter::default(),
    streamed_bytes: Counter::default(),
    event_streams: Gauge::default(),
    grpc_calls: Family::default(),
    grpc_errors: Family::default(),
    shed: Family::default(),
});

/// The Raft state and the process, set from their sources at each scrape.
#[derive(Default)]
struct ScrapeGauges {
    term: Gauge,
    leader_id: Gauge,
    is_leader: Gauge,
    commit_index: Gauge,
    applied_index: Gauge,
    last_log_index: Gauge,
    snapshot_index: Gauge,
    members: Gauge,
    voters: Gauge,
    resident_bytes: Gauge,
    cpu_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    open_fds: Gauge,
}

struct Exporter {
    registry: Registry,
    gauges: ScrapeGauges,
}

static EXPORTER: LazyLock<Exporter> = LazyLock::new(|| {
    let mut registry = Registry::default();
    let m = &*METRICS;
    registry.register(
        "chorus_http_requests",
        "HTTP requests answered, by method, route and status",
        m.requests.clone(),
    );
    registry.register(
        "chorus_http_request_duration_seconds",
        "Time to the response head, by method and route",
        m.latency.clone(),
    );
    registry.register(
        "chorus_audio_uploaded_bytes",
        "MP3 bytes received by uploads on this node",
        m.uploaded_bytes.clone(),
    );
    registry.register(
        "chorus_audio_streamed_bytes",
        "Audio bytes sent to listeners by this node",
        m.streamed_bytes.clone(),
    );
    registry.register(
        "chorus_event_streams_open",
        "Open GET /events streams",
        m.event_streams.clone(),
    );
    registry.register(
        "chorus_grpc_calls",
        "gRPC queue-service calls, by method",
        m.grpc_calls.clone(),
    );
    registry.register(
        "chorus_grpc_errors",
        "gRPC queue-service calls that failed, by status code",
        m.grpc_errors.clone(),
    );
    registry.register(
        "chorus_http_shed",
        "Requests answered 503 overloaded, and connections refused, by the limit they hit",
        m.shed.clone(),
    );
    storage::metrics::register(&mut registry);
    raft::metrics::register(&mut registry);
    let gauges = ScrapeGauges::default();
    let g = &gauges;
    for (name, help, gauge) in [
        ("chorus_raft_term", "The current Raft term", &g.term),
        (
            "chorus_raft_leader_id",
            "The leader this node knows (0: none)",
            &g.leader_id,
        ),
        (
            "chorus_raft_is_leader",
            "1 when this node leads",
            &g.is_leader,
        ),
        (
            "chorus_raft_commit_index",
            "The last log index known committed",
            &g.commit_index,
        ),
        (
            "chorus_raft_applied_index",
            "The last log index applied here",
            &g.applied_index,
        ),
        (
            "chorus_raft_last_log_index",
            "The last log index held here",
            &g.last_log_index,
        ),
        (
            "chorus_raft_snapshot_index",
            "The last log index in this node's snapshot",
            &g.snapshot_index,
        ),
        (
            "chorus_raft_members",
            "Members, voters and learners",
            &g.members,
        ),
        ("chorus_raft_voters", "Voting members", &g.voters),
        (
            "process_resident_memory_bytes",
            "Resident memory of this process",
            &g.resident_bytes,
        ),
        (
            "process_open_fds",
            "Open file descriptors of this process",
            &g.open_fds,
        ),
    ] {
        registry.register(name, help, gauge.clone());
    }
    registry.register(
        "process_cpu_seconds",
        "User and system CPU time of this process",
        g.cpu_seconds.clone(),
    );
    Exporter { registry, gauges }
});

/// Counts every request by its declared route, method and status, with its latency.
pub async fn count_requests(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_string();
    let response = next.run(request).await;
    let m = &*METRICS;
    let status = response.status().as_u16();
    m.latency
        .get_or_create(&RouteLabels {
            method: method.clone(),
            route: route.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    m.requests
        .get_or_create(&RequestLabels {
            method,
            route,
            status,
        })
        .inc();
    response
}

/// A request or connection turned away by the limit `limit` (`in_flight`, `connections`).
pub fn shed(limit: &str) {
    METRICS
        .shed
        .get_or_create(&ShedLabels {
            limit: limit.to_string(),
        })
        .inc();
}

pub fn uploaded(bytes: usize) {
    METRICS.uploaded_bytes.inc_by(bytes as u64);
}

pub fn streamed(bytes: usize) {
    METRICS.streamed_bytes.inc_by(bytes as u64);
}

/// Held by an open event stream; the gauge goes down when it is dropped with the stream.
pub struct OpenEventStream(());

impl OpenEventStream {
    pub fn open() -> Self {
        METRICS.event_streams.inc();
        Self(())
    }
}

impl Drop for OpenEventStream {
    fn drop(&mut self) {
        METRICS.event_streams.dec();
    }
}

pub fn grpc_call(method: &str) {
    METRICS
        .grpc_calls
        .get_or_create(&GrpcLabels {
            method: method.to_string(),
        })
        .inc();
}

pub fn grpc_error(code: tonic::Code) {
    METRICS
        .grpc_errors
        .get_or_create(&GrpcErrorLabels {
            code: format!("{code:?}"),
        })
        .inc();
}

/// `GET /metrics`: no authentication, as usual for a scrape target (firewall it, see README).
pub async fn scrape(State(app): State<AppState>) -> Response {
    let exporter = &*EXPORTER;
    let g = &exporter.gauges;
    let s = app.replica.status().await;
    let index = |i: Option<u64>| i64::try_from(i.unwrap_or(0)).unwrap_or(i64::MAX);
    g.term.set(index(Some(s.term)));
    g.leader_id.set(index(s.leader_id));
    g.is_leader.set(i64::from(s.leader_id == Some(s.node_id)));
    g.commit_index.set(index(s.commit_index));
    g.applied_index.set(index(s.applied_index));
    g.last_log_index.set(index(s.last_log_index));
    g.snapshot_index.set(index(s.snapshot_index));
    g.members.set(s.members.len() as i64);
    g.voters
        .set(s.members.iter().filter(|m| m.voter).count() as i64);
    let process = process_stats();
    g.resident_bytes.set(process.resident_bytes);
    g.cpu_seconds.set(process.cpu_seconds);
    g.open_fds.set(process.open_fds);
    let mut text = String::new();
    if let Err(e) = encode(&mut text, &exporter.registry) {
        return crate::internal(format!("cannot encode the metrics: {e}")).into_response();
    }
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

#[derive(Default)]
struct ProcessStats {
    resident_bytes: i64,
    cpu_seconds: f64,
    open_fds: i64,
}

/// This process's memory, CPU time and open files from `/proc/self` (zeros where unreadable).
fn process_stats() -> ProcessStats {
    let page = 4096i64;
    let ticks = 100.0; // USER_HZ on Linux
    let mut out = ProcessStats::default();
    if let Ok(statm) = std::fs::read_to_string("/proc/self/statm")
        && let Some(pages) = statm.split_whitespace().nth(1)
        && let Ok(pages) = pages.parse::<i64>()
    {
        out.resident_bytes = pages * page;
    }
    // The fields after the command name (which may hold spaces) start after the last ')'.
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat")
        && let Some((_, rest)) = stat.rsplit_once(')')
    {
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
        let time = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
        if let (Some(user), Some(system)) = (time(11), time(12)) {
            out.cpu_seconds = (user + system) / ticks;
        }
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        out.open_fds = fds.count() as i64;
    }
    out
}
