//! Playlists (seed 000): `POST /playlist/add`, `DELETE /playlist/remove`,
//! `GET /playlist/{user_id}`. One playlist per user, in the order tracks were added.
//!
//! Who may change which playlist is decided by the state machine (the caller's id travels in
//! the command), so the check cannot race with a concurrent account deletion.

use axum::Router;
use axum::extract::State;

use axum::routing::{delete, get, post};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use raft::Replica;
use serde::{Deserialize, Serialize};
use storage::{Command, PlaylistCommand, Track};
use utoipa::ToSchema;

use crate::auth::AuthUser;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{Consistency, IdempotencyKey, JsonBody, PathParam, ReadOptions};
use crate::tracks::format_duration;
use crate::{AppState, ask, internal, respond, write};

// ---- wire shapes (seed 000) ----

/// An id as the seed sends it: a decimal string (`"6789"`) or a number.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Id {
    Number(u64),
    Text(String),
}

impl Id {
    fn parse(&self, what: &str) -> Result<u64, ApiError> {
        match self {
            Id::Number(n) => Ok(*n),
            Id::Text(s) => s
                .trim()
                .parse()
                .map_err(|_| ApiError::bad_request(format!("`{what}` `{s}` is not a number"))),
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct PlaylistChange {
    #[schema(value_type = String, example = "12345")]
    pub user_id: Id,
    #[schema(value_type = String, example = "6789")]
    pub track_id: Id,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TrackInfo {
    #[schema(example = "6789")]
    pub track_id: String,
    pub title: String,
    pub artist: String,
    pub album: String,
    /// Measured playing time, `m:ss`.
    #[schema(example = "3:45")]
    pub duration: String,
    /// Where to stream it from: this node.
    #[schema(example = "http://127.0.0.1:8081/play/6789")]
    pub url: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Added {
    #[schema(example = "Track added to playlist")]
    pub message: String,
    pub track_info: TrackInfo,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Removed {
    #[schema(example = "Track removed from the playlist")]
    pub message: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PlaylistView {
    #[schema(example = "12345")]
    pub user_id: String,
    pub tracks: Vec<TrackInfo>,
}

fn info(track: &Track, base: &str) -> TrackInfo {
    TrackInfo {
        track_id: track.id.to_string(),
        title: track.meta.title.clone(),
        artist: track.meta.artist.clone(),
        album: track.meta.album.clone(),
        duration: format_duration(&track.audio),
        url: format!("{base}/play/{}", track.id),
    }
}

/// Where clients reach this node: `[[nodes]] public_url` if set, else `http://<http_addr>` as
/// the membership records it. Never the request's `Host` header: a client could make the node
/// hand other users links to any host it names.
fn base_url(settings: &crate::ApiSettings, replica: &Replica) -> String {
    if let Some(url) = &settings.public_url {
        return url.trim_end_matches('/').to_string();
    }
    let addr = replica
        .own_addresses()
        .map_or_else(|| "localhost".to_string(), |n| n.http_addr);
    format!("http://{addr}")
}

// ---- the actor ----

type Reply<T> = RpcReplyPort<Result<T, ApiError>>;

pub enum PlaylistsMsg {
    /// Applies an add or a remove; answers the added track (`None` for a remove).
    Change(PlaylistCommand, Option<String>, Reply<Option<Track>>),
    Get(u64, Consistency, Reply<Vec<Track>>),
}

impl ractor::Message for PlaylistsMsg {}

/// Owns the playlists domain on this node.
pub struct PlaylistsActor;

impl Actor for PlaylistsActor {
    type Msg = PlaylistsMsg;
    type State = Replica;
    type Arguments = Replica;

    async fn pre_start(
        &self,
        _: ActorRef<PlaylistsMsg>,
        replica: Replica,
    ) -> Result<Replica, ActorProcessingErr> {
        Ok(replica)
    }

    async fn handle(
        &self,
        _: ActorRef<PlaylistsMsg>,
        msg: PlaylistsMsg,
        replica: &mut Replica,
    ) -> Result<(), ActorProcessingErr> {
        let r = replica.clone();
        match msg {
            PlaylistsMsg::Change(cmd, key, reply) => respond(reply, async move {
                let added = match &cmd {
                    PlaylistCommand::Add { track_id, .. } => Some(*track_id),
                    PlaylistCommand::Remove { .. } => None,
                };
                write(&r, Command::Playlists(cmd), key).await?;
                let Some(track_id) = added else {
                    return Ok(None);
                };
                // Applied locally by now (the write waits for it).
                r.state()
                    .read(|s| s.tracks.get(track_id).cloned())
                    .map(Some)
                    .ok_or_else(|| {
                        ApiError::not_found(format!("track {track_id} was deleted meanwhile"))
                    })
            }),
            PlaylistsMsg::Get(user_id, consistency, reply) => respond(reply, async move {
                crate::read(&r, consistency, |s| {
                    s.users.get(user_id)?;
                    Some(
                        s.playlists
                            .of(user_id)
                            .iter()
                            .filter_map(|id| s.tracks.get(*id).cloned())
                            .collect(),
                    )
                })
                .await?
                .ok_or_else(|| ApiError::not_found(format!("user {user_id} does not exist")))
            }),
        }
        Ok(())
    }
}

// ---- routes ----

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/playlist/add", post(add))
        .route("/playlist/remove", delete(remove))
        .route("/playlist/{user_id}", get(playlist))
}

/// Add a track to your playlist (adding one already there changes nothing).
#[utoipa::path(post, path = "/playlist/add", tag = "playlists", request_body = PlaylistChange,
    security(("bearer" = [])),
    responses((status = 200, body = Added), (status = 401, body = ErrorBody),
        (status = 403, description = "another user's playlist", body = ErrorBody),
        (status = 404, description = "no such user or track", body = ErrorBody)))]
pub async fn add(
    State(app): State<AppState>,
    AuthUser(by): AuthUser,
    key: IdempotencyKey,
    JsonBody(body): JsonBody<PlaylistChange>,
) -> Result<axum::Json<Added>, ApiError> {
    let (user_id, track_id) = (
        body.user_id.parse("user_id")?,
        body.track_id.parse("track_id")?,
    );
    let cmd = PlaylistCommand::Add {
        user_id,
        track_id,
        by,
    };
    let track = ask(&app.playlists, |reply| {
        PlaylistsMsg::Change(cmd, key.for_user(by), reply)
    })
    .await?
    .ok_or_else(|| internal("a playlist add answered no track"))?;
    Ok(axum::Json(Added {
        message: "Track added to playlist".into(),
        track_info: info(&track, &base_url(&app.settings, &app.replica)),
    }))
}

/// Remove a track from your playlist.
#[utoipa::path(delete, path = "/playlist/remove", tag = "playlists", request_body = PlaylistChange,
    security(("bearer" = [])),
    responses((status = 200, body = Removed), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, description = "not in the playlist", body = ErrorBody)))]
pub async fn remove(
    State(app): State<AppState>,
    AuthUser(by): AuthUser,
    key: IdempotencyKey,
    JsonBody(body): JsonBody<PlaylistChange>,
) -> Result<axum::Json<Removed>, ApiError> {
    let (user_id, track_id) = (
        body.user_id.parse("user_id")?,
        body.track_id.parse("track_id")?,
    );
    let cmd = PlaylistCommand::Remove {
        user_id,
        track_id,
        by,
    };
    ask(&app.playlists, |reply| {
        PlaylistsMsg::Change(cmd, key.for_user(by), reply)
    })
    .await?;
    Ok(axum::Json(Removed {
        message: "Track removed from the playlist".into(),
    }))
}

/// A user's playlist, in the order tracks were added.
#[utoipa::path(get, path = "/playlist/{user_id}", tag = "playlists", params(("user_id" = String, Path), ReadOptions),
    responses((status = 200, body = PlaylistView), (status = 404, body = ErrorBody)))]
pub async fn playlist(
    State(app): State<AppState>,
    PathParam(user_id): PathParam<String>,
    opts: ReadOptions,
) -> Result<axum::Json<PlaylistView>, ApiError> {
    let user_id = Id::Text(user_id).parse("user_id")?;
    let tracks = ask(&app.playlists, |reply| {
        PlaylistsMsg::Get(user_id, opts.consistency, reply)
    })
    .await?;
    let base = base_url(&app.settings, &app.replica);
    Ok(axum::Json(PlaylistView {
        user_id: user_id.to_string(),
        tracks: tracks.iter().map(|t| info(t, &base)).collect(),
    }))
}
