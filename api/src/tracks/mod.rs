//! Tracks (seed 000): `POST /tracks/upload`, `GET /tracks`, `GET /tracks/{id}`,
//! `PATCH /tracks/{id}`, `PATCH /tracks/upload` (id in the metadata), `DELETE /tracks/{id}`.
//!
//! An upload streams: the [`TracksActor`] reads the multipart body piece by piece (`form`),
//! cuts the `file` part into 1 MiB chunks and replicates each one (`PutChunk`) before reading
//! on (`upload`), so a node holds about one chunk of an upload in memory whatever the file size.
//! Once the whole file is replicated it is checked and measured (`crate::audio::analyse`) from
//! the local copy, and only then is the track's metadata committed (`Create`/`Update`). Every
//! way out before that (bad input, a dropped connection, an error) drops the pending upload
//! (`upload::AbortOnDrop`); a node killed mid-upload leaves it to the leader's sweep of idle
//! uploads (`drop_idle_uploads`).
//!
//! The actor also owns this node's uploads in progress: a user may have at most
//! [`MAX_UPLOADS_PER_USER`] uploads or edits streaming into one node at once; past that the
//! request is answered 429 `too_many_uploads` at once, before its body is read, so one account
//! cannot hold every connection and the whole write path of a node.
//!
//! This file holds the wire shapes, the actor and the routes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::extract::multipart::{Multipart, MultipartRejection};
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::{get, post};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use raft::Replica;
use serde::{Deserialize, Serialize};
use storage::{AudioInfo, Command, Track, TrackCommand};
use utoipa::{IntoParams, ToSchema};

use crate::auth::AuthUser;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{Consistency, IdempotencyKey, PathParam, QueryParam, ReadOptions};
use crate::users::{Message, rfc3339};
use crate::{ApiSettings, AppState, ask, respond, write};

mod form;
pub(crate) mod push;
mod upload;

use form::too_large;
use upload::{update, upload};

/// Largest metadata part or form field.
const MAX_FIELD: usize = 64 * 1024;
const MAX_TEXT: usize = 500;
/// Multipart bytes besides the file (boundaries, part headers, metadata) allowed on top of
/// the upload limit when judging `Content-Length`.
const FORM_OVERHEAD: u64 = 1024 * 1024;
const MAX_PARTS: usize = 16;
const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 1000;

// ---- wire shapes (seed 000) ----

/// The `metadata` part (also accepted as `request`, or as plain form fields).
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct TrackMetadata {
    pub title: Option<String>,
    pub artist: Option<String>,
    pub album: Option<String>,
    pub genre: Option<String>,
    /// Only for `PATCH /tracks/upload`: which track to change.
    #[schema(value_type = Option<String>, example = "6789")]
    pub track_id: Option<serde_json::Value>,
}

/// `multipart/form-data` with a `file` part (the MP3) and a `metadata` part (JSON).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct UploadForm {
    /// JSON `{"title","artist","album","genre"}`; missing fields come from the ID3 tags.
    metadata: TrackMetadata,
    #[schema(format = Binary, content_media_type = "audio/mpeg")]
    file: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Uploaded {
    #[schema(example = "6789")]
    pub track_id: String,
}

/// A track of the library (the queue's tracks are `QueuedTrack`).
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = LibraryTrack)]
pub struct TrackView {
    #[schema(example = "6789")]
    pub track_id: String,
    pub title: String,
    pub artist: String,
    pub album: String,
    pub genre: String,
    /// RFC 3339 UTC.
    #[schema(example = "2023-09-19T10:00:00Z")]
    pub upload_date: String,
    /// Measured playing time, `m:ss` or `h:mm:ss`.
    #[schema(example = "3:45")]
    pub duration: String,
    pub duration_seconds: u64,
    pub size_bytes: u64,
    #[schema(example = "12345")]
    pub uploader_id: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Case-insensitive text to find in the title, artist or album.
    pub q: Option<String>,
    /// At most this many tracks (default 50, at most 1000).
    pub limit: Option<usize>,
    /// Skip this many matches (default 0).
    pub offset: Option<usize>,
}

/// `m:ss`, or `h:mm:ss` from an hour on.
pub(crate) fn format_duration(audio: &AudioInfo) -> String {
    let secs = audio.seconds();
    let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
    if h > 0 {
        format!("{h}:{m:02}:{s:02}")
    } else {
        format!("{m}:{s:02}")
    }
}

impl From<&Track> for TrackView {
    fn from(t: &Track) -> Self {
        Self {
            track_id: t.id.to_string(),
            title: t.meta.title.clone(),
            artist: t.meta.artist.clone(),
            album: t.meta.album.clone(),
            genre: t.meta.genre.clone(),
            upload_date: rfc3339(t.uploaded_at_ms),
            duration: format_duration(&t.audio),
            duration_seconds: t.audio.seconds(),
            size_bytes: t.audio.size,
            uploader_id: t.owner.to_string(),
        }
    }
}

pub(crate) fn parse_track_id(raw: &str) -> Result<u64, ApiError> {
    raw.trim()
        .parse()
        .map_err(|_| ApiError::bad_request(format!("track id `{raw}` is not a number")))
}

// ---- the actor ----

type Reply<T> = RpcReplyPort<Result<T, ApiError>>;

pub enum TracksMsg {
    Upload {
        by: u64,
        form: Multipart,
        key: Option<String>,
        reply: Reply<u64>,
    },
    Update {
        track_id: Option<u64>,
        by: u64,
        form: Multipart,
        key: Option<String>,
        reply: Reply<()>,
    },
    Delete {
        track_id: u64,
        by: u64,
        key: Option<String>,
        reply: Reply<()>,
    },
    Get(u64, Consistency, Reply<Track>),
    List(ListParams, Consistency, Reply<Vec<Track>>),
    /// An upload or edit by this user ended, however it ended (from its [`UploadSlot`]).
    UploadEnded(u64),
}

impl ractor::Message for TracksMsg {}

/// Uploads and edits one user may have streaming into one node at once.
pub const MAX_UPLOADS_PER_USER: usize = 4;

/// An upload or edit in progress; tells the actor when it ends (dropped with the request's
/// task, whether it succeeded, failed or its client went away).
struct UploadSlot {
    actor: ActorRef<TracksMsg>,
    by: u64,
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        let _ = self.actor.send_message(TracksMsg::UploadEnded(self.by));
    }
}

/// Runs `work` holding its upload slot until it ends, or answers the refusal at once.
fn respond_in_slot<T: Send + 'static>(
    slot: Result<UploadSlot, ApiError>,
    reply: Reply<T>,
    work: impl Future<Output = Result<T, ApiError>> + Send + 'static,
) {
    match slot {
        Ok(slot) => respond(reply, async move {
            let _slot = slot;
            work.await
        }),
        Err(refused) => {
            let _ = reply.send(Err(refused));
        }
    }
}

pub struct TracksState {
    replica: Replica,
    settings: Arc<ApiSettings>,
    /// Uploads and edits in progress on this node, per user.
    uploading: HashMap<u64, usize>,
}

impl TracksState {
    /// A slot for one more upload by `by`, or the 429 that refuses it.
    fn start_upload(
        &mut self,
        by: u64,
        actor: &ActorRef<TracksMsg>,
    ) -> Result<UploadSlot, ApiError> {
        let count = self.uploading.entry(by).or_default();
        if *count >= MAX_UPLOADS_PER_USER {
            return Err(ApiError::too_many(
                "too_many_uploads",
                format!(
                    "you already have {MAX_UPLOADS_PER_USER} uploads in progress on this node; \
                     wait for one to finish"
                ),
                Duration::from_secs(1),
            ));
        }
        *count += 1;
        Ok(UploadSlot {
            actor: actor.clone(),
            by,
        })
    }

    fn upload_ended(&mut self, by: u64) {
        if let Some(count) = self.uploading.get_mut(&by) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.uploading.remove(&by);
            }
        }
    }
}

/// Owns the tracks domain on this node.
pub struct TracksActor;

impl Actor for TracksActor {
    type Msg = TracksMsg;
    type State = TracksState;
    type Arguments = (Replica, Arc<ApiSettings>);

    async fn pre_start(
        &self,
        _: ActorRef<TracksMsg>,
        (replica, settings): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(TracksState {
            replica,
            settings,
            uploading: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<TracksMsg>,
        msg: TracksMsg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (r, settings) = (state.replica.clone(), state.settings.clone());
        match msg {
            TracksMsg::Upload {
                by,
                form,
                key,
                reply,
            } => respond_in_slot(
                state.start_upload(by, &myself),
                reply,
                upload(r, settings, by, form, key),
            ),
            TracksMsg::Update {
                track_id,
                by,
                form,
                key,
                reply,
            } => respond_in_slot(
                state.start_upload(by, &myself),
                reply,
                update(r, settings, track_id, by, form, key),
            ),
            TracksMsg::UploadEnded(by) => state.upload_ended(by),
            TracksMsg::Delete {
                track_id,
                by,
                key,
                reply,
            } => respond(reply, async move {
                write(
                    &r,
                    Command::Tracks(TrackCommand::Delete { track_id, by }),
                    key,
                )
                .await
                .map(drop)
            }),
            TracksMsg::Get(id, consistency, reply) => respond(reply, async move {
                crate::read(&r, consistency, |s| s.tracks.get(id).cloned())
                    .await?
                    .ok_or_else(|| ApiError::not_found(format!("track {id} does not exist")))
            }),
            TracksMsg::List(params, consistency, reply) => respond(reply, async move {
                let needle = params.q.unwrap_or_default().to_lowercase();
                let limit = params.limit.unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT);
                let offset = params.offset.unwrap_or(0);
                crate::read(&r, consistency, |s| {
                    s.tracks
                        .all()
                        .filter(|t| {
                            needle.is_empty()
                                || [&t.meta.title, &t.meta.artist, &t.meta.album]
                                    .iter()
                                    .any(|f| f.to_lowercase().contains(&needle))
                        })
                        .skip(offset)
                        .take(limit)
                        .cloned()
                        .collect()
                })
                .await
            }),
        }
        Ok(())
    }
}

/// On the leader, drops uploads whose receiving node stopped sending chunks (it crashed, or its
/// client vanished without the connection closing) for `idle_timeout`.
pub(crate) async fn drop_idle_uploads(replica: Replica, idle_timeout: Duration) {
    let period = (idle_timeout / 4).clamp(Duration::from_millis(500), Duration::from_secs(60));
    loop {
        tokio::time::sleep(period).await;
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let idle_since_ms = now_ms.saturating_sub(idle_timeout.as_millis() as u64);
        let any_idle = replica.state().read(|s| {
            s.tracks
                .uploads()
                .any(|u| u.last_activity_ms < idle_since_ms)
        });
        if !any_idle || replica.status().await.leader_id != Some(replica.id()) {
            continue;
        }
        let cmd = Command::Tracks(TrackCommand::AbortIdleUploads { idle_since_ms });
        if let Err(e) = replica.write(cmd, None).await {
            tracing::warn!(error = %e, "could not drop idle uploads; will retry");
        }
    }
}

// ---- routes ----

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/tracks", get(list_tracks))
        .route(
            "/tracks/upload",
            post(upload_track).patch(update_track_from_form),
        )
        .route(
            "/tracks/{id}",
            get(get_track).patch(update_track).delete(delete_track),
        )
        // Uploads are limited by `max_upload_bytes`, counted while streaming, not by the
        // router's JSON body limit.
        .layer(axum::extract::DefaultBodyLimit::disable())
}

/// 413 at once when the declared body is over the limit: nothing of it is read.
fn check_length(headers: &HeaderMap, limit: u64) -> Result<(), ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(len) if len > limit + FORM_OVERHEAD => Err(too_large(limit)),
        _ => Ok(()),
    }
}

fn form(form: Result<Multipart, MultipartRejection>) -> Result<Multipart, ApiError> {
    form.map_err(|e| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "send the upload as multipart/form-data with `metadata` and `file` parts ({e})"
            ),
        )
    })
}

/// Upload an MP3 with its metadata.
#[utoipa::path(post, path = "/tracks/upload", tag = "tracks",
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    params(("Idempotency-Key" = Option<String>, Header, description = "retries with the same key create one track")),
    security(("bearer" = [])),
    responses((status = 201, body = Uploaded),
        (status = 400, description = "no title given and none in the ID3 tags, or a malformed form", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 413, description = "over the upload limit", body = ErrorBody),
        (status = 415, description = "not a decodable MP3", body = ErrorBody),
        (status = 429, description = "4 uploads by this user already in progress on this node", body = ErrorBody)))]
pub async fn upload_track(
    State(app): State<AppState>,
    AuthUser(by): AuthUser,
    key: IdempotencyKey,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<(StatusCode, axum::Json<Uploaded>), ApiError> {
    check_length(&headers, app.settings.max_upload_bytes)?;
    let form = form(multipart)?;
    let key = key.for_user(by);
    let id = ask(&app.tracks, |reply| TracksMsg::Upload {
        by,
        form,
        key,
        reply,
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(Uploaded {
            track_id: id.to_string(),
        }),
    ))
}

async fn update_common(
    app: AppState,
    track_id: Option<u64>,
    by: u64,
    key: IdempotencyKey,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<axum::Json<Message>, ApiError> {
    check_length(&headers, app.settings.max_upload_bytes)?;
    let form = form(multipart)?;
    let key = key.for_user(by);
    ask(&app.tracks, |reply| TracksMsg::Update {
        track_id,
        by,
        form,
        key,
        reply,
    })
    .await?;
    Ok(axum::Json(Message {
        message: "Track info updated successfully".into(),
    }))
}

/// Change a track's metadata and/or replace its audio (uploader only).
#[utoipa::path(patch, path = "/tracks/{id}", tag = "tracks", params(("id" = String, Path)),
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    security(("bearer" = [])),
    responses((status = 200, body = Message), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, description = "not the uploader", body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn update_track(
    State(app): State<AppState>,
    AuthUser(by): AuthUser,
    key: IdempotencyKey,
    PathParam(id): PathParam<String>,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<axum::Json<Message>, ApiError> {
    let id = parse_track_id(&id)?;
    update_common(app, Some(id), by, key, headers, multipart).await
}

/// The seed's literal update path: like `PATCH /tracks/{id}` with the id in `metadata.track_id`.
#[utoipa::path(patch, path = "/tracks/upload", tag = "tracks",
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    security(("bearer" = [])),
    responses((status = 200, body = Message), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn update_track_from_form(
    State(app): State<AppState>,
    AuthUser(by): AuthUser,
    key: IdempotencyKey,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<axum::Json<Message>, ApiError> {
    update_common(app, None, by, key, headers, multipart).await
}

/// One track's metadata.
#[utoipa::path(get, path = "/tracks/{id}", tag = "tracks", params(("id" = String, Path), ReadOptions),
    responses((status = 200, body = TrackView), (status = 404, body = ErrorBody)))]
pub async fn get_track(
    State(app): State<AppState>,
    PathParam(id): PathParam<String>,
    opts: ReadOptions,
) -> Result<axum::Json<TrackView>, ApiError> {
    let id = parse_track_id(&id)?;
    let track = ask(&app.tracks, |reply| {
        TracksMsg::Get(id, opts.consistency, reply)
    })
    .await?;
    Ok(axum::Json(TrackView::from(&track)))
}

/// List and search tracks, in upload order.
#[utoipa::path(get, path = "/tracks", tag = "tracks", params(ListParams, ReadOptions),
    responses((status = 200, body = [TrackView])))]
pub async fn list_tracks(
    State(app): State<AppState>,
    QueryParam(params): QueryParam<ListParams>,
    opts: ReadOptions,
) -> Result<axum::Json<Vec<TrackView>>, ApiError> {
    let tracks = ask(&app.tracks, |reply| {
        TracksMsg::List(params, opts.consistency, reply)
    })
    .await?;
    Ok(axum::Json(tracks.iter().map(TrackView::from).collect()))
}

/// Delete a track: its audio, and its place in every playlist and the queue (uploader only).
#[utoipa::path(delete, path = "/tracks/{id}", tag = "tracks", params(("id" = String, Path)),
    security(("bearer" = [])),
    responses((status = 200, body = Message), (status = 401, body = ErrorBody),
        (status = 403, description = "not the uploader", body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_track(
    State(app): State<AppState>,
    AuthUser(by): AuthUser,
    key: IdempotencyKey,
    PathParam(id): PathParam<String>,
) -> Result<axum::Json<Message>, ApiError> {
    let track_id = parse_track_id(&id)?;
    let key = key.for_user(by);
    ask(&app.tracks, |reply| TracksMsg::Delete {
        track_id,
        by,
        key,
        reply,
    })
    .await?;
    Ok(axum::Json(Message {
        message: "Track deleted successfully".into(),
    }))
}
