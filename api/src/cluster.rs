//! Cluster endpoints: liveness, readiness, service discovery and membership changes.

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{delete, get, post, put};
use serde::{Deserialize, Serialize};
use storage::ChorusNode;
use storage::state::tracks::CHUNK_SIZE;
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorBody};
use crate::extract::{JsonBody, PathParam};
use crate::queue::Message;
use crate::{AppState, require_admin};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/cluster", get(cluster))
        .route("/cluster/members", post(add_member))
        .route("/cluster/members/{id}", delete(remove_member))
        .route("/cluster/chunks/verify", post(verify_chunks))
        .route(
            "/cluster/chunks/{hash}",
            put(crate::tracks::push::receive_pushed_chunk).layer(DefaultBodyLimit::max(CHUNK_SIZE)),
        )
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: String,
    pub node_id: u64,
}

/// Liveness: 200 whenever the process serves HTTP.
#[utoipa::path(get, path = "/health", tag = "cluster", responses((status = 200, body = Health)))]
pub async fn health(State(app): State<AppState>) -> axum::Json<Health> {
    axum::Json(Health {
        status: "ok".into(),
        node_id: app.replica.id(),
    })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    pub ready: bool,
    pub node_id: u64,
    pub leader_id: Option<u64>,
    /// False when openraft's core did not answer within a second (the node is stuck).
    pub raft_core_answering: bool,
    pub commit_index: Option<u64>,
    pub applied_index: Option<u64>,
}

/// Readiness: 200 only when this node knows a leader and has applied everything it knows to be
/// committed; 503 otherwise.
#[utoipa::path(get, path = "/ready", tag = "cluster",
    responses((status = 200, body = Readiness), (status = 503, body = Readiness)))]
pub async fn ready(State(app): State<AppState>) -> (StatusCode, axum::Json<Readiness>) {
    let s = app.replica.status().await;
    let body = Readiness {
        ready: s.ready(),
        node_id: s.node_id,
        leader_id: s.leader_id,
        raft_core_answering: s.raft_core_answering,
        commit_index: s.commit_index,
        applied_index: s.applied_index,
    };
    let code = if body.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(body))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MemberView {
    pub id: u64,
    pub http_addr: String,
    pub raft_addr: String,
    /// Voter (counts for the majority) or learner.
    pub voter: bool,
    /// This node has a live session with it (always true for itself).
    pub reachable: bool,
    /// This node's round trip to it over the cluster transport, in milliseconds: the least of
    /// the last few pings (none for itself, or while pings fail).
    pub rtt_ms: Option<f64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterView {
    pub node_id: u64,
    pub cluster_name: String,
    pub leader_id: Option<u64>,
    /// The leader's HTTP address, if known.
    pub leader_http_addr: Option<String>,
    pub term: u64,
    /// `Leader`, `Follower`, `Candidate` or `Learner`.
    pub state: String,
    /// False when openraft's core did not answer within a second (the node is stuck).
    pub raft_core_answering: bool,
    pub commit_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub last_log_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    pub members: Vec<MemberView>,
    /// What this node's applied state holds.
    pub storage: StorageView,
}

/// Counts from this node's applied state.
#[derive(Debug, Serialize, ToSchema)]
pub struct StorageView {
    pub users: usize,
    pub tracks: usize,
    /// Uploads still receiving audio (or abandoned and not yet dropped).
    pub pending_uploads: usize,
    /// Distinct audio chunks that tracks and pending uploads name (each one file on disk).
    pub audio_chunks: u64,
    pub queued_tracks: usize,
}

/// Service discovery: this node, the leader, Raft progress and every member.
#[utoipa::path(get, path = "/cluster", tag = "cluster", responses((status = 200, body = ClusterView)))]
pub async fn cluster(State(app): State<AppState>) -> axum::Json<ClusterView> {
    let s = app.replica.status().await;
    let leader_http_addr = s
        .members
        .iter()
        .find(|m| Some(m.id) == s.leader_id)
        .map(|m| m.node.http_addr.clone());
    axum::Json(ClusterView {
        node_id: s.node_id,
        cluster_name: app.settings.cluster_name.clone(),
        leader_id: s.leader_id,
        leader_http_addr,
        term: s.term,
        state: s.state,
        raft_core_answering: s.raft_core_answering,
        commit_index: s.commit_index,
        applied_index: s.applied_index,
        last_log_index: s.last_log_index,
        snapshot_index: s.snapshot_index,
        purged_index: s.purged_index,
        storage: app.replica.state().read(|st| StorageView {
            users: st.users.len(),
            tracks: st.tracks.len(),
            pending_uploads: st.tracks.uploads().count(),
            audio_chunks: st.tracks.chunk_count(),
            queued_tracks: st.queue.len(),
        }),
        members: s
            .members
            .into_iter()
            .map(|m| MemberView {
                id: m.id,
                http_addr: m.node.http_addr,
                raft_addr: m.node.raft_addr,
                voter: m.voter,
                reachable: m.reachable,
                rtt_ms: m.rtt.map(|d| d.as_secs_f64() * 1000.0),
            })
            .collect(),
    })
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct NewMember {
    pub id: u64,
    #[schema(example = "127.0.0.1:8084")]
    pub http_addr: String,
    #[schema(example = "127.0.0.1:9084")]
    pub raft_addr: String,
}

fn check_addr(field: &str, addr: &str) -> Result<(), ApiError> {
    addr.parse::<std::net::SocketAddr>()
        .map(|_| ())
        .map_err(|_| {
            ApiError::bad_request(format!(
                "`{field}` must be an ip:port address, got `{addr}`"
            ))
        })
}

/// Add a node (already running, with the cluster's secret): it joins as a learner and becomes a
/// voter once it has applied everything the leader had when it was added, audio included. A
/// node that does not answer, or stops catching up for 15 s, is taken out again and the answer
/// is 400 with why. Adding a node that is already a voter at the same addresses is a no-op.
/// Admin token required.
#[utoipa::path(post, path = "/cluster/members", tag = "cluster", request_body = NewMember, security(("admin_token" = [])),
    responses((status = 200, body = Message), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn add_member(
    State(app): State<AppState>,
    headers: HeaderMap,
    JsonBody(m): JsonBody<NewMember>,
) -> Result<axum::Json<Message>, ApiError> {
    require_admin(&app, &headers)?;
    if m.id == 0 {
        return Err(ApiError::bad_request(
            "node ids start at 1; 0 is not a valid id",
        ));
    }
    check_addr("http_addr", &m.http_addr)?;
    check_addr("raft_addr", &m.raft_addr)?;
    let node = ChorusNode {
        http_addr: m.http_addr,
        raft_addr: m.raft_addr,
    };
    app.replica.add_member(m.id, node).await?;
    Ok(axum::Json(Message {
        message: format!("node {} is a voting member", m.id),
    }))
}

/// Remove a node from the cluster. Admin token required.
#[utoipa::path(delete, path = "/cluster/members/{id}", tag = "cluster", params(("id" = u64, Path)), security(("admin_token" = [])),
    responses((status = 200, body = Message), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn remove_member(
    State(app): State<AppState>,
    headers: HeaderMap,
    PathParam(id): PathParam<u64>,
) -> Result<axum::Json<Message>, ApiError> {
    require_admin(&app, &headers)?;
    app.replica.remove_member(id).await?;
    Ok(axum::Json(Message {
        message: format!("node {id} removed"),
    }))
}

/// What `POST /cluster/chunks/verify` found on this node and did about it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChunkCheck {
    /// The node that checked its chunks.
    pub node_id: u64,
    /// Chunk files read and checked against their SHA-256 name.
    pub checked: usize,
    pub checked_bytes: u64,
    /// Hashes of chunk files whose bytes did not match (removed, then fetched again).
    pub corrupt: Vec<String>,
    /// Hashes of chunks the state names that this node lacked (the damaged ones included).
    pub missing: Vec<String>,
    /// Chunks fetched again from peers.
    pub repaired: usize,
    /// Chunks no peer could give, with why: the node still lacks them.
    pub failed: Vec<String>,
}

/// Check every audio chunk file on this node against its hash, remove damaged ones, and fetch
/// from peers every chunk the state names that this node lacks. Admin token required.
/// (`chorus verify --node N` calls this.)
#[utoipa::path(post, path = "/cluster/chunks/verify", tag = "cluster", security(("admin_token" = [])),
    responses((status = 200, body = ChunkCheck), (status = 401, body = ErrorBody)))]
pub async fn verify_chunks(
    State(app): State<AppState>,
    headers: HeaderMap,
) -> Result<axum::Json<ChunkCheck>, ApiError> {
    require_admin(&app, &headers)?;
    let r = app.replica.verify_and_repair_chunks().await?;
    let hex = |hashes: &[storage::ChunkHash]| hashes.iter().map(ToString::to_string).collect();
    let failed = r
        .fetched
        .failed
        .iter()
        .map(|(hash, why)| format!("{hash}: {why}"));
    let sync = r.fetched.sync_failed.iter().map(|e| format!("sync: {e}"));
    Ok(axum::Json(ChunkCheck {
        node_id: app.replica.id(),
        checked: r.verified.checked,
        checked_bytes: r.verified.bytes,
        corrupt: hex(&r.verified.corrupt),
        missing: hex(&r.missing),
        repaired: r.fetched.chunks,
        failed: failed.chain(sync).collect(),
    }))
}
