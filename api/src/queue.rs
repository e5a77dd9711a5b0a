//! The voting queue (seed 004): `/add_track`, `/remove_track`, `/vote`, `/queue`,
//! `/metadata/{id}`, `/history`, `/play_next`, `/clear`.
//!
//! Routes validate and translate HTTP; the [`QueueActor`] owns the domain: it turns requests
//! into replicated [`QueueCommand`]s and answers reads from the applied state. It runs each
//! request in its own task, so one slow write never holds up the others.

use std::time::{Duration, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use raft::Replica;
use serde::{Deserialize, Serialize};
use storage::{
    Command, FeedItem, Outcome, PlayedTrack, QueueCommand, QueuedTrack, ReadBack, ReadBackValue,
};
use tokio::sync::{broadcast, mpsc};
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiError, ErrorBody};
use crate::events::{self, Frame, LiveFeed};
use crate::extract::{Consistency, IdempotencyKey, JsonBody, PathParam, QueryParam, ReadOptions};
use crate::{AppState, ask, require_admin, respond, unexpected};

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

#[derive(Debug, Serialize, ToSchema)]
pub struct TrackView {
    pub id: u64,
    pub title: String,
    pub artist: String,
    pub duration: u32,
    pub votes: i64,
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

#[derive(Debug, Serialize, ToSchema)]
pub struct Voted {
    pub id: u64,
    pub votes: i64,
    pub queue: Vec<TrackView>,
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

// ---- the actor ----

type Reply<T> = RpcReplyPort<Result<T, ApiError>>;

pub enum QueueMsg {
    Add(AddTrackBody, Option<String>, Reply<Vec<QueuedTrack>>),
    Remove(u64, Option<String>, Reply<Vec<QueuedTrack>>),
    Vote {
        id: u64,
        up: bool,
        key: Option<String>,
        reply: Reply<(QueuedTrack, Vec<QueuedTrack>)>,
    },
    PlayNext(Option<String>, Reply<PlayedTrack>),
    Clear(Option<String>, Reply<()>),
    Queue(Consistency, Reply<Vec<QueuedTrack>>),
    Metadata(u64, Consistency, Reply<QueuedTrack>),
    History(Consistency, Reply<Vec<PlayedTrack>>),
    /// A live event stream for `/events` (see [`crate::events`]).
    Subscribe {
        last_seen: Option<u64>,
        reply: Reply<mpsc::Receiver<Bytes>>,
    },
    /// From the state machine's change feed.
    Feed(FeedItem),
    /// The change feed went on without us: changes were missed.
    FeedLagged,
    /// The node is stopping: end the live streams.
    CloseStreams,
}

impl ractor::Message for QueueMsg {}

/// Owns the queue domain on this node: writes and reads of the queue, and the live event
/// streams of every browser connected here ([`LiveFeed`]).
pub struct QueueActor;

pub struct QueueActorState {
    replica: Replica,
    live: LiveFeed,
}

/// The `state` event for this node's applied state.
fn read_state_frame(replica: &Replica) -> Frame {
    replica.state().read_indexed(events::state_frame)
}

impl Actor for QueueActor {
    type Msg = QueueMsg;
    type State = QueueActorState;
    type Arguments = Replica;

    async fn pre_start(
        &self,
        myself: ActorRef<QueueMsg>,
        replica: Replica,
    ) -> Result<QueueActorState, ActorProcessingErr> {
        // Subscribed before the index is read, so nothing after that index is missed.
        let mut feed = replica.state().subscribe_changes();
        let start = replica.state().read_indexed(|_, index| index);
        tracing::debug!(start, "live feed starts after this index");
        tokio::spawn(async move {
            loop {
                let msg = match feed.recv().await {
                    Ok(item) => QueueMsg::Feed(item),
                    Err(broadcast::error::RecvError::Lagged(_)) => QueueMsg::FeedLagged,
                    Err(broadcast::error::RecvError::Closed) => break,
                };
                if myself.cast(msg).is_err() {
                    break;
                }
            }
        });
        Ok(QueueActorState {
            replica,
            live: LiveFeed::starting_at(start),
        })
    }

    async fn handle(
        &self,
        _: ActorRef<QueueMsg>,
        msg: QueueMsg,
        state: &mut QueueActorState,
    ) -> Result<(), ActorProcessingErr> {
        let r = state.replica.clone();
        match msg {
            QueueMsg::Subscribe { last_seen, reply } => {
                let answer = if state.live.is_closed() {
                    Err(crate::shutting_down())
                } else {
                    Ok(state.live.subscribe(last_seen, || read_state_frame(&r)))
                };
                let _ = reply.send(answer);
            }
            QueueMsg::CloseStreams => state.live.close(),
            QueueMsg::Feed(FeedItem::Applied(applied)) => {
                state.live.applied(events::change_frame(&applied));
            }
            QueueMsg::Feed(FeedItem::Replaced { .. }) | QueueMsg::FeedLagged => {
                state.live.restart(|| read_state_frame(&r));
            }
            QueueMsg::Add(t, key, reply) => respond(reply, async move {
                let cmd = QueueCommand::Add {
                    id: t.id,
                    title: t.title,
                    artist: t.artist,
                    duration: t.duration,
                };
                Ok(write_then_queue(&r, cmd, key).await?.1)
            }),
            QueueMsg::Remove(id, key, reply) => respond(reply, async move {
                Ok(write_then_queue(&r, QueueCommand::Remove { id }, key)
                    .await?
                    .1)
            }),
            QueueMsg::Vote { id, up, key, reply } => respond(reply, async move {
                match write_then_queue(&r, QueueCommand::Vote { id, up }, key).await? {
                    (Outcome::Track(voted), queue) => Ok((voted, queue)),
                    (other, _) => Err(unexpected(other)),
                }
            }),
            QueueMsg::PlayNext(key, reply) => respond(reply, async move {
                match write(&r, QueueCommand::PlayNext, key).await? {
                    Outcome::Played(p) => Ok(p),
                    other => Err(unexpected(other)),
                }
            }),
            QueueMsg::Clear(key, reply) => respond(reply, async move {
                write(&r, QueueCommand::Clear, key).await.map(|_| ())
            }),
            QueueMsg::Queue(c, reply) => {
                respond(reply, async move { read(&r, c, |q| q.queue()).await })
            }
            QueueMsg::Metadata(id, c, reply) => respond(reply, async move {
                read(&r, c, |q| q.track(id).cloned())
                    .await?
                    .ok_or_else(|| ApiError::not_found(format!("track {id} is not in the queue")))
            }),
            QueueMsg::History(c, reply) => {
                respond(reply, async move { read(&r, c, |q| q.history()).await })
            }
        }
        Ok(())
    }
}

async fn write(r: &Replica, cmd: QueueCommand, key: Option<String>) -> Result<Outcome, ApiError> {
    crate::write(r, Command::Queue(cmd), key).await
}

/// Writes `cmd` and returns its outcome with the queue right after it, as the leader read it
/// (`Replica::write_reading_back`: no wait for this node to apply the write).
async fn write_then_queue(
    r: &Replica,
    cmd: QueueCommand,
    key: Option<String>,
) -> Result<(Outcome, Vec<QueuedTrack>), ApiError> {
    let (receipt, ReadBackValue::Queue(queue)) = r
        .write_reading_back(Command::Queue(cmd), key, ReadBack::Queue)
        .await?;
    Ok((receipt.response.result?, queue))
}

async fn read<T>(
    r: &Replica,
    consistency: Consistency,
    f: impl FnOnce(&storage::state::queue::QueueState) -> T,
) -> Result<T, ApiError> {
    crate::read(r, consistency, |s| f(&s.queue)).await
}

// ---- routes ----

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/add_track", post(add_track))
        .route("/remove_track", post(remove_track))
        .route("/vote", post(vote))
        .route("/queue", get(queue))
        .route("/metadata/{id}", get(metadata))
        .route("/history", get(history))
        .route("/play_next", post(play_next))
        .route("/clear", post(clear))
}

fn check_text(field: &str, value: &str) -> Result<(), ApiError> {
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

/// Add a track to the queue.
#[utoipa::path(post, path = "/add_track", tag = "queue", request_body = AddTrackBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "retries with the same key apply once")),
    responses((status = 200, body = QueueChanged), (status = 409, description = "already queued", body = ErrorBody),
        (status = 422, description = "wrong types", body = ErrorBody), (status = 503, description = "no leader", body = ErrorBody)))]
pub async fn add_track(
    State(app): State<AppState>,
    IdempotencyKey(key): IdempotencyKey,
    JsonBody(body): JsonBody<AddTrackBody>,
) -> Result<axum::Json<QueueChanged>, ApiError> {
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
    let queue = ask(&app.queue, |reply| QueueMsg::Add(body, key, reply)).await?;
    Ok(axum::Json(QueueChanged {
        message: "Track added".into(),
        queue: views(&queue),
    }))
}

/// Remove a track from the queue.
#[utoipa::path(post, path = "/remove_track", tag = "queue", request_body = TrackIdBody,
    responses((status = 200, body = QueueChanged), (status = 404, description = "not queued", body = ErrorBody)))]
pub async fn remove_track(
    State(app): State<AppState>,
    IdempotencyKey(key): IdempotencyKey,
    JsonBody(body): JsonBody<TrackIdBody>,
) -> Result<axum::Json<QueueChanged>, ApiError> {
    let queue = ask(&app.queue, |reply| QueueMsg::Remove(body.id, key, reply)).await?;
    Ok(axum::Json(QueueChanged {
        message: "Track removed".into(),
        queue: views(&queue),
    }))
}

fn parse_id(raw: &str) -> Result<u64, ApiError> {
    raw.trim().parse().map_err(|_| {
        ApiError::bad_request(format!("track id `{raw}` is not a non-negative integer"))
    })
}

/// Vote a queued track up or down.
#[utoipa::path(post, path = "/vote", tag = "queue", params(VoteParams), request_body(content = Option<TrackIdBody>),
    responses((status = 200, body = Voted), (status = 400, body = ErrorBody), (status = 404, description = "not queued", body = ErrorBody)))]
pub async fn vote(
    State(app): State<AppState>,
    IdempotencyKey(key): IdempotencyKey,
    QueryParam(params): QueryParam<VoteParams>,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::Json<Voted>, ApiError> {
    let body = body.map_err(|e| ApiError::new(e.status(), "bad_request", e.body_text()))?;
    let id = match params.id.as_deref() {
        Some(raw) => parse_id(raw)?,
        None if body.iter().any(|b| !b.is_ascii_whitespace()) => {
            let value: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
                ApiError::new(
                    axum::http::StatusCode::BAD_REQUEST,
                    "invalid_json",
                    format!("body is not JSON: {e}"),
                )
            })?;
            match value.get("id") {
                Some(serde_json::Value::Number(n)) => n.as_u64().ok_or_else(|| {
                    ApiError::bad_request(format!("track id {n} is not a non-negative integer"))
                })?,
                Some(serde_json::Value::String(s)) => parse_id(s)?,
                _ => {
                    return Err(ApiError::bad_request(
                        "give the track id as `?id=123` or as `{\"id\": 123}` in the body",
                    ));
                }
            }
        }
        None => {
            return Err(ApiError::bad_request(
                "give the track id as `?id=123` or as `{\"id\": 123}` in the body",
            ));
        }
    };
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
    let (voted, queue) = ask(&app.queue, |reply| QueueMsg::Vote { id, up, key, reply }).await?;
    Ok(axum::Json(Voted {
        id: voted.id,
        votes: voted.votes,
        queue: views(&queue),
    }))
}

/// The queue, most votes first (ties in the order tracks were added).
#[utoipa::path(get, path = "/queue", tag = "queue", params(ReadOptions), responses((status = 200, body = [TrackView])))]
pub async fn queue(
    State(app): State<AppState>,
    opts: ReadOptions,
) -> Result<axum::Json<Vec<TrackView>>, ApiError> {
    let queue = ask(&app.queue, |reply| QueueMsg::Queue(opts.consistency, reply)).await?;
    Ok(axum::Json(views(&queue)))
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
