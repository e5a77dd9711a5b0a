//! The voting queue (seed 004): `/add_track`, `/remove_track`, `/vote`, `/queue`,
//! `/metadata/{id}`, `/history`, `/play_next`, `/clear`.
//!
//! Routes (here) validate and translate HTTP; the [`QueueActor`] (`actor`) owns the domain: it
//! turns requests into replicated [`QueueCommand`]s and answers reads from the applied state. It
//! runs each request in its own task, so one slow write never holds up the others.

mod actor;

pub use actor::{QueueActor, QueueMsg, Written};

use std::time::{Duration, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use storage::{Outcome, PlayedTrack, QueueCommand, QueuedTrack};
use utoipa::{IntoParams, ToSchema};

use crate::auth::{AuthUser, MaybeAuthUser};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{IdempotencyKey, JsonBody, PathParam, QueryParam, ReadOptions, ReturnMinimal};
use crate::{AppState, ask, require_admin, unexpected};

const MAX_TEXT: usize = 500;

// ---- wire shapes (seed 004) ----

/// A track to queue. With the id of an uploaded track only `id` is needed (the upload's own
/// metadata is used); any other id needs the three other fields. A `votes` field, as the seed's
/// clients send it, is ignored.
#[derive(Debug, Deserialize, ToSchema)]
pub struct AddTrackBody {
    #[schema(example = 123)]
    pub id: u64,
    #[schema(example = "Song Title")]
    pub title: Option<String>,
    #[schema(example = "Artist Name")]
    pub artist: Option<String>,
    /// Seconds.
    #[schema(example = 200)]
    pub duration: Option<u32>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct TrackIdBody {
    #[schema(example = 123)]
    pub id: u64,
}

/// A track in the voting queue (the library's tracks are `LibraryTrack`).
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = QueuedTrack)]
pub struct TrackView {
    pub id: u64,
    pub title: String,
    pub artist: String,
    pub duration: u32,
    pub votes: i64,
    /// The user who queued it, when they were signed in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub added_by: Option<u64>,
}

/// A played track: the track as it was queued, and when it was played.
#[derive(Debug, Serialize, ToSchema)]
pub struct PlayedView {
    #[serde(flatten)]
    pub track: TrackView,
    /// RFC 3339 UTC.
    #[schema(example = "2023-09-19T10:00:00Z")]
    pub played_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct QueueChanged {
    #[schema(example = "Track added")]
    pub message: String,
    pub queue: Vec<TrackView>,
}

/// A vote's answer. With `Prefer: return=minimal` the queue is left out.
#[derive(Debug, Serialize, ToSchema)]
pub struct Voted {
    pub id: u64,
    pub votes: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<Vec<TrackView>>,
}

/// `POST /add_track` or `/remove_track` with `Prefer: return=minimal`: the track, not the queue.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueChangedMinimal {
    #[schema(example = "Track added")]
    pub message: String,
    pub id: u64,
    /// The track's votes (absent when it was removed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub votes: Option<i64>,
}

/// A skip vote's answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct SkipVoted {
    /// Users who want the playing track skipped (counted before a skip happened).
    pub votes: u32,
    /// How many it takes (`[queue] skip_votes`).
    pub needed: u32,
    /// True when this vote skipped the track.
    pub skipped: bool,
    /// The track now playing, when this vote skipped the previous one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub now_playing: Option<PlayedView>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct QueuePage {
    /// Skip this many tracks from the top of the queue (default 0).
    pub offset: Option<usize>,
    /// At most this many tracks (default: all).
    pub limit: Option<usize>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NowPlaying {
    pub now_playing: PlayedView,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Message {
    pub message: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct VoteParams {
    /// Track id (or send `{"id": 123}` as the JSON body).
    pub id: Option<String>,
    /// `true` (default) or `false`, case-insensitive.
    pub up: Option<String>,
}

impl From<&QueuedTrack> for TrackView {
    fn from(t: &QueuedTrack) -> Self {
        Self {
            id: t.id,
            title: t.title.clone(),
            artist: t.artist.clone(),
            duration: t.duration,
            votes: t.votes,
            added_by: t.added_by,
        }
    }
}

impl From<&PlayedTrack> for PlayedView {
    fn from(p: &PlayedTrack) -> Self {
        let at = UNIX_EPOCH + Duration::from_millis(p.played_at_ms);
        Self {
            track: TrackView::from(&p.track),
            played_at: humantime::format_rfc3339_seconds(at).to_string(),
        }
    }
}

fn views(queue: &[QueuedTrack]) -> Vec<TrackView> {
    queue.iter().map(TrackView::from).collect()
}

// ---- routes ----

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/add_track", post(add_track))
        .route("/remove_track", post(remove_track))
        .route("/vote", post(vote).delete(unvote))
        .route("/skip", post(skip))
        .route("/queue", get(queue))
        .route("/metadata/{id}", get(metadata))
        .route("/history", get(history))
        .route("/play_next", post(play_next))
        .route("/clear", post(clear))
}

pub(crate) fn check_text(field: &str, value: &str) -> Result<(), ApiError> {
    if value.trim().is_empty() {
        return Err(ApiError::bad_request(format!(
            "`{field}` must not be empty"
        )));
    }
    if value.chars().count() > MAX_TEXT {
        return Err(ApiError::bad_request(format!(
            "`{field}` is longer than {MAX_TEXT} characters"
        )));
    }
    Ok(())
}

/// The idempotency key in the caller's scope (two users' keys never collide).
fn scoped(key: IdempotencyKey, user: Option<u64>) -> Option<String> {
    match user {
        Some(user) => key.for_user(user),
        None => key.0,
    }
}

/// Sends a queue write to the actor; the queue comes back unless the client asked for a
/// minimal answer.
async fn write_queue(
    app: &AppState,
    cmd: QueueCommand,
    key: Option<String>,
    minimal: ReturnMinimal,
) -> Result<Written, ApiError> {
    ask(&app.queue, |reply| QueueMsg::Write {
        cmd,
        key,
        with_queue: !minimal.0,
        reply,
    })
    .await
}

/// `body` as JSON, marked as minimal when the client's preference was applied.
fn answer(minimal: ReturnMinimal, body: impl Serialize) -> Response {
    let mut response = axum::Json(body).into_response();
    if minimal.0 {
        let (name, value) = ReturnMinimal::APPLIED;
        response
            .headers_mut()
            .insert(name, HeaderValue::from_static(value));
    }
    response
}

/// An add's or a remove's answer: the queue after it, or only the track when asked for less.
fn queue_changed(
    minimal: ReturnMinimal,
    message: &str,
    queue: Option<Vec<QueuedTrack>>,
    id: u64,
    votes: Option<i64>,
) -> Response {
    let message = message.to_string();
    match queue {
        Some(queue) => answer(
            minimal,
            QueueChanged {
                message,
                queue: views(&queue),
            },
        ),
        None => answer(minimal, QueueChangedMinimal { message, id, votes }),
    }
}

fn voted_track(outcome: Outcome) -> Result<QueuedTrack, ApiError> {
    match outcome {
        Outcome::Track(track) => Ok(track),
        other => Err(unexpected(other)),
    }
}

/// Add a track to the queue.
#[utoipa::path(post, path = "/add_track", tag = "queue", request_body = AddTrackBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "retries with the same key apply once"),
        ("Prefer" = Option<String>, Header, description = "`return=minimal`: answer without the queue")),
    responses((status = 200, body = QueueChanged), (status = 401, description = "`[queue] max_tracks_per_user` is set and the caller is anonymous", body = ErrorBody),
        (status = 409, description = "already queued, or the caller has `max_tracks_per_user` tracks queued", body = ErrorBody),
        (status = 422, description = "wrong types", body = ErrorBody), (status = 503, description = "no leader", body = ErrorBody)))]
pub async fn add_track(
    State(app): State<AppState>,
    MaybeAuthUser(user): MaybeAuthUser,
    minimal: ReturnMinimal,
    key: IdempotencyKey,
    JsonBody(body): JsonBody<AddTrackBody>,
) -> Result<Response, ApiError> {
    // The seed answers a body with missing fields with 422; keep that unless the id is an
    // uploaded track (then only `id` is needed). The state machine decides races.
    let complete = body.title.is_some() && body.artist.is_some() && body.duration.is_some();
    if !complete
        && app
            .replica
            .state()
            .read(|s| s.tracks.get(body.id).is_none())
    {
        return Err(ApiError::new(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            format!(
                "no uploaded track has id {}: give `title`, `artist` and `duration` to queue it anyway",
                body.id
            ),
        ));
    }
    if let Some(title) = &body.title {
        check_text("title", title)?;
    }
    if let Some(artist) = &body.artist {
        check_text("artist", artist)?;
    }
    let cmd = QueueCommand::Add {
        id: body.id,
        title: body.title,
        artist: body.artist,
        duration: body.duration,
        by: user,
        max_per_user: app.settings.max_tracks_per_user,
    };
    let (outcome, queue) = write_queue(&app, cmd, scoped(key, user), minimal).await?;
    let votes = voted_track(outcome)?.votes;
    Ok(queue_changed(
        minimal,
        "Track added",
        queue,
        body.id,
        Some(votes),
    ))
}

/// Remove a track from the queue.
#[utoipa::path(post, path = "/remove_track", tag = "queue", request_body = TrackIdBody,
    params(("Prefer" = Option<String>, Header, description = "`return=minimal`: answer without the queue")),
    responses((status = 200, body = QueueChanged), (status = 404, description = "not queued", body = ErrorBody)))]
pub async fn remove_track(
    State(app): State<AppState>,
    minimal: ReturnMinimal,
    IdempotencyKey(key): IdempotencyKey,
    JsonBody(body): JsonBody<TrackIdBody>,
) -> Result<Response, ApiError> {
    let cmd = QueueCommand::Remove { id: body.id };
    let (_, queue) = write_queue(&app, cmd, key, minimal).await?;
    Ok(queue_changed(
        minimal,
        "Track removed",
        queue,
        body.id,
        None,
    ))
}

pub(crate) fn parse_id(raw: &str) -> Result<u64, ApiError> {
    raw.trim().parse().map_err(|_| {
        ApiError::bad_request(format!("track id `{raw}` is not a non-negative integer"))
    })
}

/// Vote a queued track up or down. A signed-in user has one vote per track (the same vote again
/// changes nothing; the other one replaces it). Anonymous votes count each time, and only while
/// `[queue] anonymous_votes = true`.
#[utoipa::path(post, path = "/vote", tag = "queue", params(VoteParams,
        ("Prefer" = Option<String>, Header, description = "`return=minimal`: answer `{id, votes}` only")),
    request_body(content = Option<TrackIdBody>),
    responses((status = 200, body = Voted), (status = 400, body = ErrorBody),
        (status = 401, description = "anonymous, and this cluster takes only signed-in votes", body = ErrorBody),
        (status = 404, description = "not queued", body = ErrorBody)))]
pub async fn vote(
    State(app): State<AppState>,
    MaybeAuthUser(user): MaybeAuthUser,
    minimal: ReturnMinimal,
    key: IdempotencyKey,
    QueryParam(params): QueryParam<VoteParams>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| ApiError::new(e.status(), "bad_request", e.body_text()))?;
    let id = vote_target(params.id.as_deref(), &body)?;
    let up = match params
        .up
        .as_deref()
        .map(|s| s.trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("true") | Some("1") => true,
        Some("false") | Some("0") => false,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "`up` must be true or false, not `{other}`"
            )));
        }
    };
    if user.is_none() && !app.settings.anonymous_votes {
        return Err(anonymous_vote_refused());
    }
    let cmd = QueueCommand::Vote { id, up, by: user };
    let (outcome, queue) = write_queue(&app, cmd, scoped(key, user), minimal).await?;
    let track = voted_track(outcome)?;
    Ok(answer(
        minimal,
        Voted {
            id: track.id,
            votes: track.votes,
            queue: queue.as_deref().map(views),
        },
    ))
}

pub(crate) fn anonymous_vote_refused() -> ApiError {
    ApiError::unauthorized(
        "log in to vote: each user has one vote per track here (POST /users/login, then send `Authorization: Bearer <token>`)",
    )
}

/// The track id of a vote: `?id=` or `{"id": …}` in the body (the seed's clients send both).
fn vote_target(query: Option<&str>, body: &[u8]) -> Result<u64, ApiError> {
    let missing = || {
        ApiError::bad_request("give the track id as `?id=123` or as `{\"id\": 123}` in the body")
    };
    if let Some(raw) = query {
        return parse_id(raw);
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(missing());
    }
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("body is not JSON: {e}"),
        )
    })?;
    match value.get("id") {
        Some(serde_json::Value::Number(n)) => n.as_u64().ok_or_else(|| {
            ApiError::bad_request(format!("track id {n} is not a non-negative integer"))
        }),
        Some(serde_json::Value::String(s)) => parse_id(s),
        _ => Err(missing()),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UnvoteParams {
    /// Track id.
    pub id: String,
}

/// Take back your vote for a queued track (nothing changes if you had none).
#[utoipa::path(delete, path = "/vote", tag = "queue", params(UnvoteParams,
        ("Prefer" = Option<String>, Header, description = "`return=minimal`: answer `{id, votes}` only")),
    security(("bearer" = [])),
    responses((status = 200, body = Voted), (status = 401, body = ErrorBody), (status = 404, description = "not queued", body = ErrorBody)))]
pub async fn unvote(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    minimal: ReturnMinimal,
    key: IdempotencyKey,
    QueryParam(params): QueryParam<UnvoteParams>,
) -> Result<Response, ApiError> {
    let id = parse_id(&params.id)?;
    let cmd = QueueCommand::Unvote { id, by: user };
    let (outcome, queue) = write_queue(&app, cmd, key.for_user(user), minimal).await?;
    let track = voted_track(outcome)?;
    Ok(answer(
        minimal,
        Voted {
            id: track.id,
            votes: track.votes,
            queue: queue.as_deref().map(views),
        },
    ))
}

/// Vote to skip the playing track (the last one played). Once `[queue] skip_votes` distinct
/// users have, the next track plays, exactly once; later skip votes count against that one.
#[utoipa::path(post, path = "/skip", tag = "queue", security(("bearer" = [])),
    responses((status = 200, body = SkipVoted), (status = 400, description = "queue_empty: nothing could play instead", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, description = "skipping by vote is off (`skip_votes = 0`)", body = ErrorBody),
        (status = 409, description = "nothing is playing", body = ErrorBody)))]
pub async fn skip(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    key: IdempotencyKey,
) -> Result<axum::Json<SkipVoted>, ApiError> {
    let needed = app.settings.skip_votes;
    if needed == 0 {
        return Err(ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "skip_disabled",
            "skipping by vote is off on this cluster (`[queue] skip_votes = 0`)",
        ));
    }
    let cmd = QueueCommand::Skip { by: user, needed };
    let (outcome, _) = write_queue(&app, cmd, key.for_user(user), ReturnMinimal(true)).await?;
    match outcome {
        Outcome::Skip {
            votes,
            needed,
            played,
        } => Ok(axum::Json(SkipVoted {
            votes,
            needed,
            skipped: played.is_some(),
            now_playing: played.as_ref().map(PlayedView::from),
        })),
        other => Err(unexpected(other)),
    }
}

/// The queue, most votes first (ties in the order tracks were added). `X-Total-Count` is the
/// length of the whole queue.
#[utoipa::path(get, path = "/queue", tag = "queue", params(ReadOptions, QueuePage),
    responses((status = 200, body = [TrackView], headers(("X-Total-Count" = u64, description = "tracks in the whole queue")))))]
pub async fn queue(
    State(app): State<AppState>,
    opts: ReadOptions,
    QueryParam(page): QueryParam<QueuePage>,
) -> Result<Response, ApiError> {
    let range = (page.offset.unwrap_or(0), page.limit.unwrap_or(usize::MAX));
    let (queue, total) = ask(&app.queue, |reply| {
        QueueMsg::Queue(opts.consistency, range, reply)
    })
    .await?;
    let mut response = axum::Json(views(&queue)).into_response();
    response
        .headers_mut()
        .insert("x-total-count", HeaderValue::from(total));
    Ok(response)
}

/// One queued track.
#[utoipa::path(get, path = "/metadata/{id}", tag = "queue", params(("id" = u64, Path), ReadOptions),
    responses((status = 200, body = TrackView), (status = 404, body = ErrorBody)))]
pub async fn metadata(
    State(app): State<AppState>,
    PathParam(id): PathParam<String>,
    opts: ReadOptions,
) -> Result<axum::Json<TrackView>, ApiError> {
    let id = parse_id(&id)?;
    let track = ask(&app.queue, |reply| {
        QueueMsg::Metadata(id, opts.consistency, reply)
    })
    .await?;
    Ok(axum::Json(TrackView::from(&track)))
}

/// Played tracks, oldest first.
#[utoipa::path(get, path = "/history", tag = "queue", params(ReadOptions), responses((status = 200, body = [PlayedView])))]
pub async fn history(
    State(app): State<AppState>,
    opts: ReadOptions,
) -> Result<axum::Json<Vec<PlayedView>>, ApiError> {
    let history = ask(&app.queue, |reply| {
        QueueMsg::History(opts.consistency, reply)
    })
    .await?;
    Ok(axum::Json(history.iter().map(PlayedView::from).collect()))
}

/// Play the top track: remove it from the queue and append it to the history, exactly once.
#[utoipa::path(post, path = "/play_next", tag = "queue",
    responses((status = 200, body = NowPlaying), (status = 400, description = "queue_empty", body = ErrorBody)))]
pub async fn play_next(
    State(app): State<AppState>,
    IdempotencyKey(key): IdempotencyKey,
) -> Result<axum::Json<NowPlaying>, ApiError> {
    let played = ask(&app.queue, |reply| QueueMsg::PlayNext(key, reply)).await?;
    Ok(axum::Json(NowPlaying {
        now_playing: PlayedView::from(&played),
    }))
}

/// Empty the queue and the history (the seed's test-isolation endpoint).
#[utoipa::path(post, path = "/clear", tag = "queue", security(("admin_token" = [])),
    responses((status = 200, body = Message), (status = 401, body = ErrorBody)))]
pub async fn clear(
    State(app): State<AppState>,
    headers: HeaderMap,
    IdempotencyKey(key): IdempotencyKey,
) -> Result<axum::Json<Message>, ApiError> {
    if !app.settings.allow_anonymous_clear {
        require_admin(&app, &headers)?;
    }
    ask(&app.queue, |reply| QueueMsg::Clear(key, reply)).await?;
    Ok(axum::Json(Message {
        message: "Queue and history cleared".into(),
    }))
}
