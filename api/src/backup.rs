//! `GET /backup`: the whole cluster's state, audio included, as one archive (the format is
//! `storage::backup`'s), streamed while writes go on. `chorus backup` saves and checks it;
//! `chorus restore` seeds a new cluster from it.

use std::io;

use axum::Router;
use axum::body::Body;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::mpsc;

use crate::error::ApiError;
use crate::{AppState, require_admin};

pub fn routes() -> Router<AppState> {
    Router::new().route("/backup", get(backup))
}

/// Pieces of the archive in flight to the client: a few chunks (1 MiB each) at most, so a
/// backup of any size takes bounded memory.
const IN_FLIGHT: usize = 4;

/// Download a backup: every user, track with its audio, playlist, the queue and the history,
/// as of one applied log index that includes every write acknowledged before the request.
/// Writes go on while it streams. `X-Chorus-Backup-Index` names the index. A truncated
/// download fails the archive's closing SHA-256 check. Admin token required.
#[utoipa::path(get, path = "/backup", tag = "cluster", security(("admin_token" = [])),
    responses((status = 200, description = "The archive (application/octet-stream)", content_type = "application/octet-stream"),
        (status = 401, body = crate::error::ErrorBody), (status = 503, body = crate::error::ErrorBody)))]
pub async fn backup(State(app): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    require_admin(&app, &headers)?;
    app.replica.read_barrier().await?;
    let prepared = app.replica.state().prepare_backup().await.map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "backup_unavailable",
                e.to_string(),
            )
        } else {
            crate::internal(format!("cannot prepare a backup: {e}"))
        }
    })?;
    let header = prepared.header().clone();
    let len = prepared.archive_len();
    tracing::info!(
        index = header.last_log_id.index,
        tracks = header.tracks,
        bytes = len,
        "backup started"
    );
    let (pieces, mut received) = mpsc::channel::<io::Result<Bytes>>(IN_FLIGHT);
    tokio::task::spawn_blocking(move || {
        let gone = || io::Error::new(io::ErrorKind::BrokenPipe, "the client went away");
        let sent = prepared.write(|piece| pieces.blocking_send(Ok(piece)).map_err(|_| gone()));
        match sent {
            Ok(()) => tracing::info!(index = header.last_log_id.index, "backup sent"),
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                tracing::info!("backup abandoned by its client")
            }
            Err(e) => {
                tracing::warn!(error = %e, "backup failed while streaming");
                // Ends the body with an error: the client sees a cut connection, and the
                // archive's missing digest tells `chorus backup` it is incomplete.
                let _ = pieces.blocking_send(Err(e));
            }
        }
        // `prepared` is dropped here, and its files with it.
    });
    let body = Body::from_stream(futures_util::stream::poll_fn(move |cx| {
        received.poll_recv(cx)
    }));
    let file_name = format!(
        "attachment; filename=\"chorus-{}.chorusbackup\"",
        header.last_log_id.index
    );
    let mut response = (StatusCode::OK, body).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Ok(v) = HeaderValue::from_str(&file_name) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(
        "x-chorus-backup-index",
        HeaderValue::from(header.last_log_id.index),
    );
    Ok(response)
}
