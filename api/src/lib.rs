//! The HTTP API every node serves (axum), one module per domain.
//!
//! Layout:
//! - [`queue`]: the voting queue (seed 004): its actor and routes.
//! - [`cluster`]: `/health`, `/ready`, `/cluster`, membership.
//! - [`docs`]: OpenAPI and Swagger UI at `/docs`.
//! - [`error`]: [`ApiError`], the one error shape; [`extract`]: extractors that reject with it.
//!
//! Only this crate knows JSON and HTTP; domain rules live in `storage::state`, replication in
//! `raft`.

pub mod cluster;
pub mod docs;
pub mod error;
pub mod extract;
pub mod queue;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Redirect;
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
}

#[derive(Clone)]
pub struct AppState {
    pub replica: Replica,
    pub queue: ActorRef<queue::QueueMsg>,
    pub settings: Arc<ApiSettings>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot start the {actor} actor: {message}")]
pub struct StartError {
    actor: &'static str,
    message: String,
}

/// Starts this node's domain actors and returns the router serving the whole API.
pub async fn router(replica: Replica, settings: ApiSettings) -> Result<Router, StartError> {
    let (queue, _) = Actor::spawn(None, queue::QueueActor, replica.clone())
        .await
        .map_err(|e| StartError {
            actor: "queue",
            message: e.to_string(),
        })?;
    let state = AppState {
        replica,
        queue,
        settings: Arc::new(settings),
    };
    Ok(Router::new()
        .route(
            "/",
            axum::routing::get(|| async { Redirect::temporary("/docs/") }),
        )
        .merge(queue::routes())
        .merge(cluster::routes())
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
        .layer(
            // 503s during an election are expected, not server errors worth an ERROR line.
            tower_http::trace::TraceLayer::new_for_http().on_failure(
                tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG),
            ),
        )
        .with_state(state))
}

/// Sends a request to a domain actor and waits for its answer.
pub(crate) async fn ask<M: ractor::Message, T: Send + 'static>(
    actor: &ActorRef<M>,
    msg: impl FnOnce(RpcReplyPort<Result<T, ApiError>>) -> M,
) -> Result<T, ApiError> {
    match actor.call(msg, None).await {
        Ok(ractor::rpc::CallResult::Success(result)) => result,
        _ => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "this node is shutting down; use another node",
        )),
    }
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
