//! The API's error type: a status code and `{"error": "<code>", "message": "<text>"}`.
//!
//! Every failure a client can cause maps to a 4xx with a message saying what to fix; cluster
//! trouble maps to 503 with `Retry-After`. Nothing here panics.

use std::time::Duration;

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use raft::ReplicaError;
use serde::Serialize;
use storage::{CommandError, ErrorKind};
use utoipa::ToSchema;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds to send as `Retry-After` (a 503 without one says 1).
    pub retry_after: Option<u64>,
}

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// A stable snake_case code, e.g. `not_found`, `no_leader`.
    #[schema(example = "not_found")]
    pub error: String,
    /// What went wrong and what to do about it.
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 429: this client must wait `wait` before asking again.
    pub fn too_many(code: &'static str, message: impl Into<String>, wait: Duration) -> Self {
        Self {
            retry_after: Some(wait.as_secs_f64().ceil().max(1.0) as u64),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, code, message)
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.code.to_string(),
            message: self.message,
        };
        let mut response = (self.status, Json(body)).into_response();
        let retry_after = match self.retry_after {
            Some(seconds) => Some(HeaderValue::from(seconds)),
            None if self.status == StatusCode::SERVICE_UNAVAILABLE => {
                Some(HeaderValue::from_static("1"))
            }
            None => None,
        };
        if let Some(value) = retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

impl From<ReplicaError> for ApiError {
    fn from(e: ReplicaError) -> Self {
        let code = match &e {
            ReplicaError::NoLeader => "no_leader",
            ReplicaError::Unknown(_) => "outcome_unknown",
            ReplicaError::Lagging => "lagging",
            ReplicaError::ShuttingDown => "shutting_down",
            ReplicaError::NotMember(_) => "not_a_member",
            ReplicaError::Rejected(_) => return Self::bad_request(e.to_string()),
            ReplicaError::Storage(_) => return crate::internal(e.to_string()),
        };
        let message = match &e {
            // What a client can do about it is HTTP's business, not the replica's.
            ReplicaError::Unknown(_) => format!("{e}: retry with the same Idempotency-Key"),
            _ => e.to_string(),
        };
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    }
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> Self {
        match e.kind {
            ErrorKind::NotFound => Self::not_found(e.message),
            ErrorKind::AlreadyQueued => {
                Self::new(StatusCode::CONFLICT, "already_queued", e.message)
            }
            ErrorKind::QueueEmpty => Self::new(StatusCode::BAD_REQUEST, "queue_empty", e.message),
            ErrorKind::Invalid => Self::bad_request(e.message),
            ErrorKind::UsernameTaken => {
                Self::new(StatusCode::CONFLICT, "username_taken", e.message)
            }
            ErrorKind::EmailTaken => Self::new(StatusCode::CONFLICT, "email_taken", e.message),
            ErrorKind::Forbidden => Self::new(StatusCode::FORBIDDEN, "forbidden", e.message),
            ErrorKind::UploadGone => Self::new(StatusCode::CONFLICT, "upload_gone", e.message),
            ErrorKind::QueueLimit => Self::new(StatusCode::CONFLICT, "queue_limit", e.message),
            ErrorKind::SignInRequired => Self::unauthorized(e.message),
            ErrorKind::NothingPlaying => {
                Self::new(StatusCode::CONFLICT, "nothing_playing", e.message)
            }
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let code = match &r {
            JsonRejection::JsonSyntaxError(_) => "invalid_json",
            JsonRejection::JsonDataError(_) => "invalid_body",
            JsonRejection::MissingJsonContentType(_) => "unsupported_media_type",
            _ if r.status() == StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            _ => "bad_request",
        };
        let hint = match code {
            "payload_too_large" => " (JSON bodies are limited to 1 MiB)",
            _ => "",
        };
        Self::new(r.status(), code, format!("{}{hint}", r.body_text()))
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::bad_request(r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        Self::bad_request(r.body_text())
    }
}
