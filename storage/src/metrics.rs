//! What the storage layer counts for `GET /metrics`. One set per process: a chorus process is
//! one node, and the counters are bumped where the work happens, far from anything that could
//! carry a handle to them.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub struct StorageMetrics {
    pub log_fsyncs: Counter,
    pub log_fsync_seconds: Histogram,
    pub snapshot_builds: Counter,
    pub snapshot_build_seconds: Histogram,
    pub snapshot_built_bytes: Counter,
    pub snapshot_installs: Counter,
    pub snapshot_install_seconds: Histogram,
    pub snapshot_installed_bytes: Counter,
}

pub static METRICS: LazyLock<StorageMetrics> = LazyLock::new(|| StorageMetrics {
    log_fsyncs: Counter::default(),
    // 50 µs to ~1.6 s.
    log_fsync_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
    snapshot_builds: Counter::default(),
    // 10 ms to ~160 s.
    snapshot_build_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 15)),
    snapshot_built_bytes: Counter::default(),
    snapshot_installs: Counter::default(),
    snapshot_install_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 15)),
    snapshot_installed_bytes: Counter::default(),
});

/// Records one `fdatasync` of the log that took `took`.
pub fn log_fsynced(took: Duration) {
    METRICS.log_fsyncs.inc();
    METRICS.log_fsync_seconds.observe(took.as_secs_f64());
}

pub fn register(registry: &mut Registry) {
    let m = &*METRICS;
    registry.register(
        "chorus_log_fsyncs",
        "fdatasync calls on the Raft log's segment files",
        m.log_fsyncs.clone(),
    );
    registry.register(
        "chorus_log_fsync_duration_seconds",
        "How long one fdatasync of the Raft log took",
        m.log_fsync_seconds.clone(),
    );
    registry.register(
        "chorus_snapshot_builds",
        "Snapshots this node built",
        m.snapshot_builds.clone(),
    );
    registry.register(
        "chorus_snapshot_build_duration_seconds",
        "How long building a snapshot took",
        m.snapshot_build_seconds.clone(),
    );
    registry.register(
        "chorus_snapshot_built_bytes",
        "Bytes of the snapshot files this node built",
        m.snapshot_built_bytes.clone(),
    );
    registry.register(
        "chorus_snapshot_installs",
        "Snapshots a leader sent this node that it installed",
        m.snapshot_installs.clone(),
    );
    registry.register(
        "chorus_snapshot_install_duration_seconds",
        "How long installing a received snapshot took (syncing, checking, loading)",
        m.snapshot_install_seconds.clone(),
    );
    registry.register(
        "chorus_snapshot_installed_bytes",
        "Bytes of the snapshot files this node installed",
        m.snapshot_installed_bytes.clone(),
    );
}
