//! Admission: at most `max_in_flight` requests are handled at once on a node; past that a
//! request is answered at once with 503 `overloaded` and `Retry-After`, before its body is
//! read. A node under ten times the load it can serve then keeps answering what it admits at
//! its usual pace and sheds the rest in microseconds, with bounded memory, instead of queueing
//! every request until all of them time out. A request counts from its head to its answer's
//! head: a long audio or event stream holds no slot while its body flows. Probes (`/health`,
//! `/ready`, `/metrics`, `/cluster`) are always admitted, so an overloaded node still tells
//! its orchestrator and its operator what is going on.

use std::sync::Arc;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use crate::error::ApiError;

/// Slots for requests in flight on this node.
#[derive(Debug, Clone)]
pub struct Admission {
    slots: Arc<Semaphore>,
    limit: usize,
}

impl Admission {
    pub fn new(limit: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }
}

fn is_probe(path: &str) -> bool {
    matches!(path, "/health" | "/ready" | "/metrics" | "/cluster")
}

/// The middleware: a slot for the request's handling, or 503 at once.
pub async fn admit(admission: Admission, request: Request, next: Next) -> Response {
    if is_probe(request.uri().path()) {
        return next.run(request).await;
    }
    match admission.slots.clone().try_acquire_owned() {
        Ok(_slot) => next.run(request).await,
        Err(_) => {
            crate::metrics::shed("in_flight");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                format!(
                    "this node is handling as many requests as it takes at once ({}); retry after a moment, or use another node",
                    admission.limit
                ),
            )
            .into_response()
        }
    }
}
