//! The HTTP API every node serves (axum), one module per domain, and the gRPC queue service.
//!
//! Layout:
//! - [`users`], [`tracks`], [`playback`], [`playlists`]: the music service (seed 000), each an
//!   actor and its routes; [`auth`] (passwords, JWTs, the `AuthUser` extractor) and [`audio`]
//!   (MP3 checks, duration, ID3 tags, reading stored audio) serve them.
//! - [`queue`]: the voting queue (seed 004): its actor and routes; the actor also keeps the
//!   live event streams ([`events`]: `GET /events`). [`grpc`] serves the same actor as the
//!   seed's gRPC `queue.QueueService`.
//! - [`web`]: the web app at `/` (embedded files).
//! - [`cluster`]: `/health`, `/ready`, `/cluster`, membership; [`backup`]: `GET /backup`.
//! - [`docs`]: OpenAPI and Swagger UI at `/docs`.
//! - [`admission`]: at most `max_in_flight` requests at once, 503 `overloaded` past it.
//! - [`error`]: [`ApiError`], the one error shape; [`extract`]: extractors that reject with it.
//!
//! Only this crate knows JSON, HTTP and gRPC; domain rules live in `storage::state`, replication in
//! `raft`.

pub mod admission;
pub mod audio;
pub mod auth;
pub mod backup;
pub mod cluster;
pub mod docs;
pub mod error;
pub mod events;
pub mod extract;
pub mod grpc;
pub mod metrics;
pub mod playback;
pub mod playlists;
pub mod queue;
pub mod slow_body;
pub mod tracks;
pub mod users;
pub mod web;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, StatusCode, header};
use ractor::{Actor, ActorRef, RpcReplyPort};
use raft::Replica;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

pub use error::ApiError;

/// Largest JSON body accepted.
pub const MAX_JSON_BODY: usize = 1024 * 1024;

/// Settings from `cluster.toml` that the API needs.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub cluster_name: String,
    pub admin_token: String,
    /// `POST /clear` without the admin token (the seed's test scripts need it).
    pub allow_anonymous_clear: bool,
    /// Anonymous votes count, each one ±1, as in the seed; otherwise voting needs a login.
    pub anonymous_votes: bool,
    /// Most tracks one user may have in the queue at once (0: no limit).
    pub max_tracks_per_user: u32,
    /// Distinct users' skip votes that skip the playing track (0: skipping by vote is off).
    pub skip_votes: u32,
    /// The base URL clients reach this node at, for the links the API hands out (playlist
    /// `url`s); `None`: `http://<http_addr>`.
    pub public_url: Option<String>,
    /// A request body must deliver at least [`slow_body::MIN_BYTES`] in every window this long.
    pub slow_body_timeout: Duration,
    /// Largest accepted MP3 upload.
    pub max_upload_bytes: u64,
    /// How long a login token is valid.
    pub token_ttl: Duration,
    /// A pending upload with no new chunk for this long is dropped with its chunks.
    pub upload_idle_timeout: Duration,
    /// Requests handled at once; past it, 503 `overloaded` (see [`admission`]).
    pub max_in_flight: usize,
    /// Push each uploaded chunk to the other nodes over plain HTTP ahead of its write
    /// (`tracks::push`); off when the nodes serve HTTPS, and then the writes carry the bytes.
    pub push_chunks: bool,
}

#[derive(Clone)]
pub struct AppState {
    pub replica: Replica,
    pub queue: ActorRef<queue::QueueMsg>,
    pub users: ActorRef<users::UsersMsg>,
    pub tracks: ActorRef<tracks::TracksMsg>,
    pub playback: ActorRef<playback::PlaybackMsg>,
    pub playlists: ActorRef<playlists::PlaylistsMsg>,
    pub settings: Arc<ApiSettings>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot start the {actor} actor: {message}")]
pub struct StartError {
    actor: &'static str,
    message: String,
}

/// What the server tells the API when it stops.
pub struct StopHandle {
    queue: ActorRef<queue::QueueMsg>,
}

impl StopHandle {
    /// Ends every live event stream, which never ends by itself: call it when the server
    /// starts its graceful shutdown, or that shutdown waits on the streams forever. Their
    /// browsers resume on another node.
    pub fn stopping(&self) {
        let _ = self.queue.cast(queue::QueueMsg::CloseStreams);
    }
}

/// What one node serves: the HTTP API, the gRPC services, and the handle for stopping.
pub struct Api {
    pub http: Router,
    pub grpc: grpc::GrpcServices,
    pub stop: StopHandle,
}

/// Starts this node's domain actors and returns the HTTP and gRPC services over them.
pub async fn start(replica: Replica, settings: ApiSettings) -> Result<Api, StartError> {
    let settings = Arc::new(settings);
    let queue = spawn("queue", queue::QueueActor, replica.clone()).await?;
    let users = spawn(
        "users",
        users::UsersActor,
        (replica.clone(), settings.clone()),
    )
    .await?;
    let tracks = spawn(
        "tracks",
        tracks::TracksActor,
        (replica.clone(), settings.clone()),
    )
    .await?;
    let playback = spawn("playback", playback::PlaybackActor, replica.clone()).await?;
    let playlists = spawn("playlists", playlists::PlaylistsActor, replica.clone()).await?;
    tokio::spawn(auth::create_signing_key_when_ready(replica.clone()));
    tokio::spawn(tracks::drop_idle_uploads(
        replica.clone(),
        settings.upload_idle_timeout,
    ));
    let stop = StopHandle {
        queue: queue.clone(),
    };
    let state = AppState {
        replica,
        queue,
        users,
        tracks,
        playback,
        playlists,
        settings,
    };
    let grpc = grpc::GrpcServices::new(state.clone());
    let settings_window = state.settings.slow_body_timeout;
    let settings_max_in_flight = state.settings.max_in_flight.max(1);
    let http = Router::new()
        .merge(web::routes())
        .merge(events::routes())
        .merge(users::routes())
        .merge(tracks::routes())
        .merge(playback::routes())
        .merge(playlists::routes())
        .merge(queue::routes())
        .merge(cluster::routes())
        .merge(backup::routes())
        .route("/metrics", axum::routing::get(metrics::scrape))
        .merge(SwaggerUi::new("/docs").url("/openapi.json", docs::ApiDoc::openapi()))
        .fallback(|| async { ApiError::not_found("no such endpoint; see /docs for the API") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not accept that method; see /docs",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
        .layer(axum::middleware::from_fn({
            let admission = admission::Admission::new(settings_max_in_flight);
            move |request, next| admission::admit(admission.clone(), request, next)
        }))
        .layer(axum::middleware::from_fn(metrics::count_requests))
        .layer(axum::middleware::map_request({
            let window = settings_window;
            move |request: axum::extract::Request| async move { slow_body::limit(request, window) }
        }))
        .layer(
            // 503s during an election are expected, not server errors worth an ERROR line.
            tower_http::trace::TraceLayer::new_for_http().on_failure(
                tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG),
            ),
        )
        // Any page may call any node with a bearer token (no cookies, so no ambient authority):
        // the web app moves to another node of the cluster when its own dies.
        .layer(
            tower_http::cors::CorsLayer::new()
                .allow_origin(tower_http::cors::Any)
                .allow_methods(tower_http::cors::Any)
                .allow_headers(tower_http::cors::Any)
                .expose_headers(tower_http::cors::Any)
                .max_age(Duration::from_secs(600)),
        )
        .with_state(state);
    Ok(Api { http, grpc, stop })
}

async fn spawn<A: Actor>(
    name: &'static str,
    actor: A,
    args: A::Arguments,
) -> Result<ActorRef<A::Msg>, StartError> {
    Actor::spawn(None, actor, args)
        .await
        .map(|(actor, _)| actor)
        .map_err(|e| StartError {
            actor: name,
            message: e.to_string(),
        })
}

/// Whether an `If-None-Match` header value names `etag`: the weak comparison RFC 9110 asks
/// for (`W/"x"` matches `"x"`), any of a comma-separated list, or `*`.
pub(crate) fn etag_matches(if_none_match: &str, etag: &str) -> bool {
    let opaque = |t: &str| t.trim().trim_start_matches("W/").to_string();
    let want = opaque(etag);
    if_none_match
        .split(',')
        .any(|t| t.trim() == "*" || opaque(t) == want)
}

/// A 500 for a broken invariant (logged; never caused by client input).
pub(crate) fn internal(message: impl Into<String>) -> ApiError {
    let message = message.into();
    tracing::error!(%message, "internal error");
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
}

/// Runs an actor's request in its own task, so one slow request never holds up the others,
/// and sends the answer back (unless the HTTP client is gone).
pub(crate) fn respond<T: Send + 'static>(
    reply: RpcReplyPort<Result<T, ApiError>>,
    work: impl Future<Output = Result<T, ApiError>> + Send + 'static,
) {
    tokio::spawn(async move {
        let _ = reply.send(work.await);
    });
}

/// Proposes `command` and returns what the state machine answered (rejections as errors).
pub(crate) async fn write(
    replica: &Replica,
    command: storage::Command,
    key: Option<String>,
) -> Result<storage::Outcome, ApiError> {
    let receipt = replica.write(command, key).await?;
    Ok(receipt.applied.result?)
}

/// A write's outcome that is not the kind the command produces: a bug, not bad input.
pub(crate) fn unexpected(outcome: storage::Outcome) -> ApiError {
    internal(format!("unexpected state machine answer: {outcome:?}"))
}

/// Waits for a linearizable read if asked for, then reads the local state.
pub(crate) async fn read<T>(
    replica: &Replica,
    consistency: extract::Consistency,
    f: impl FnOnce(&storage::state::State) -> T,
) -> Result<T, ApiError> {
    if consistency == extract::Consistency::Linearizable {
        replica.read_barrier().await?;
    }
    Ok(replica.state().read(f))
}

/// Reads `f` from the local state and, when it finds nothing, again after a read barrier: this
/// node may not yet have applied what another node acknowledged a moment ago (a track uploaded,
/// a user registered there), and a refusal must not come from a copy that is behind. What it
/// does find is used as it is (the callers look at what never changes once written: a track's
/// owner, a user's existence until deleted, and the state machine checks again when a write
/// applies).
pub(crate) async fn read_confirming_absence<T>(
    replica: &Replica,
    f: impl Fn(&storage::state::State) -> Option<T>,
) -> Result<Option<T>, ApiError> {
    if let Some(found) = replica.state().read(&f) {
        return Ok(Some(found));
    }
    replica.read_barrier().await?;
    Ok(replica.state().read(f))
}

/// Sends a request to a domain actor and waits for its answer.
pub(crate) async fn ask<M: ractor::Message, T: Send + 'static>(
    actor: &ActorRef<M>,
    msg: impl FnOnce(RpcReplyPort<Result<T, ApiError>>) -> M,
) -> Result<T, ApiError> {
    match actor.call(msg, None).await {
        Ok(ractor::rpc::CallResult::Success(result)) => result,
        _ => Err(shutting_down()),
    }
}

pub(crate) fn shutting_down() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "shutting_down",
        "this node is shutting down; use another node",
    )
}

/// Checks the cluster admin token (`X-Admin-Token: <token>` or `Authorization: Bearer <token>`).
pub(crate) fn require_admin(app: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let given = headers
        .get("x-admin-token")
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
        });
    match given {
        Some(token)
            if constant_time_eq(token.trim().as_bytes(), app.settings.admin_token.as_bytes()) =>
        {
            Ok(())
        }
        Some(_) => Err(ApiError::unauthorized("the admin token is wrong")),
        None => Err(ApiError::unauthorized(
            "this endpoint needs the cluster admin token (header X-Admin-Token)",
        )),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::etag_matches;

    #[test]
    fn if_none_match_compares_weakly() {
        assert!(etag_matches("\"a1\"", "\"a1\""));
        assert!(etag_matches("W/\"a1\"", "\"a1\""));
        assert!(etag_matches("\"zz\", W/\"a1\"", "\"a1\""));
        assert!(etag_matches("*", "\"a1\""));
        assert!(!etag_matches("\"a2\"", "\"a1\""));
        assert!(!etag_matches("a1", "\"a1\""));
    }
}
