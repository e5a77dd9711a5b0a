//! Users (seed 000): `POST /users/register`, `POST /users/login`, `GET /users/{id}`,
//! `DELETE /users/{id}`.
//!
//! The [`UsersActor`] owns the domain on this node: it validates input, hashes passwords off the
//! async workers, proposes [`UserCommand`]s and signs tokens. Uniqueness of usernames and emails
//! is decided by the state machine, so it holds cluster-wide even under concurrent registration.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use raft::Replica;
use serde::{Deserialize, Serialize};
use storage::{Command, Outcome, User, UserCommand};
use utoipa::ToSchema;

use crate::auth::{self, AuthUser, MaybeAuthUser};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{Consistency, IdempotencyKey, JsonBody, PathParam, ReadOptions};
use crate::{ApiSettings, AppState, ask, respond, unexpected, write};

const MIN_PASSWORD: usize = 8;
/// Bounds the hashing work one request can ask for.
const MAX_PASSWORD: usize = 1024;
const MAX_EMAIL: usize = 254;

// ---- wire shapes (seed 000) ----

#[derive(Debug, Deserialize, ToSchema)]
pub struct RegisterBody {
    #[schema(example = "alice")]
    pub username: String,
    #[schema(example = "correct horse battery")]
    pub password: String,
    #[schema(example = "alice@example.com")]
    pub email: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Registered {
    #[schema(example = "12345")]
    pub user_id: String,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct LoginBody {
    pub username: String,
    pub password: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LoggedIn {
    /// An HS256 JWT; send it as `Authorization: Bearer <token>`.
    pub token: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    #[schema(example = "12345")]
    pub user_id: String,
    pub username: String,
    /// Only shown to the user themself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// RFC 3339 UTC.
    #[schema(example = "2023-09-19T10:00:00Z")]
    pub created_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Message {
    pub message: String,
}

pub(crate) fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn view(user: &User, viewer: Option<u64>) -> UserView {
    UserView {
        user_id: user.id.to_string(),
        username: user.username.clone(),
        email: (viewer == Some(user.id)).then(|| user.email.clone()),
        created_at: rfc3339(user.created_at_ms),
    }
}

// ---- validation ----

fn validate(body: &RegisterBody) -> Result<(), ApiError> {
    let name = &body.username;
    if !(3..=32).contains(&name.len())
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err(ApiError::bad_request(
            "`username` must be 3 to 32 characters of letters, digits, `_`, `.` or `-`",
        ));
    }
    let chars = body.password.chars().count();
    if chars < MIN_PASSWORD {
        return Err(ApiError::bad_request(format!(
            "`password` must be at least {MIN_PASSWORD} characters"
        )));
    }
    if chars > MAX_PASSWORD {
        return Err(ApiError::bad_request(format!(
            "`password` must be at most {MAX_PASSWORD} characters"
        )));
    }
    if !plausible_email(&body.email) {
        return Err(ApiError::bad_request(
            "`email` does not look like an email address (name@example.com)",
        ));
    }
    Ok(())
}

fn plausible_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    email.len() <= MAX_EMAIL
        && !local.is_empty()
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn parse_user_id(raw: &str) -> Result<u64, ApiError> {
    raw.trim()
        .parse()
        .map_err(|_| ApiError::bad_request(format!("user id `{raw}` is not a number")))
}

// ---- the actor ----

type Reply<T> = RpcReplyPort<Result<T, ApiError>>;

pub enum UsersMsg {
    Register(RegisterBody, Option<String>, Reply<u64>),
    Login(LoginBody, Reply<String>),
    Get {
        id: u64,
        viewer: Option<u64>,
        consistency: Consistency,
        reply: Reply<UserView>,
    },
    Delete {
        id: u64,
        by: u64,
        key: Option<String>,
        reply: Reply<()>,
    },
}

impl ractor::Message for UsersMsg {}

/// Owns the users domain on this node.
pub struct UsersActor;

impl Actor for UsersActor {
    type Msg = UsersMsg;
    type State = (Replica, Arc<ApiSettings>);
    type Arguments = (Replica, Arc<ApiSettings>);

    async fn pre_start(
        &self,
        _: ActorRef<UsersMsg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _: ActorRef<UsersMsg>,
        msg: UsersMsg,
        (replica, settings): &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (r, settings) = (replica.clone(), settings.clone());
        match msg {
            UsersMsg::Register(body, key, reply) => respond(reply, async move {
                validate(&body)?;
                let password_hash = auth::hash_password(body.password).await?;
                let cmd = UserCommand::Register {
                    username: body.username,
                    email: body.email,
                    password_hash,
                };
                match write(&r, Command::Users(cmd), key).await? {
                    Outcome::Id(id) => Ok(id),
                    other => Err(unexpected(other)),
                }
            }),
            UsersMsg::Login(body, reply) => respond(reply, async move {
                // Linearizable, so a user registered on another node a moment ago can log in.
                r.read_barrier().await?;
                let user = r.state().read(|s| {
                    s.users
                        .by_username(&body.username)
                        .map(|u| (u.id, u.username.clone(), u.password_hash.clone()))
                });
                let hash = user.as_ref().map(|(_, _, h)| h.clone());
                let verified = auth::verify_password(body.password, hash).await;
                match user {
                    Some((id, name, _)) if verified => {
                        auth::issue_token(&r, &settings, id, &name).await
                    }
                    _ => Err(ApiError::unauthorized("wrong username or password")),
                }
            }),
            UsersMsg::Get {
                id,
                viewer,
                consistency,
                reply,
            } => respond(reply, async move {
                crate::read(&r, consistency, |s| {
                    s.users.get(id).map(|u| view(u, viewer))
                })
                .await?
                .ok_or_else(|| ApiError::not_found(format!("user {id} does not exist")))
            }),
            UsersMsg::Delete { id, by, key, reply } => respond(reply, async move {
                write(
                    &r,
                    Command::Users(UserCommand::Delete { user_id: id, by }),
                    key,
                )
                .await
                .map(|_| ())
            }),
        }
        Ok(())
    }
}

// ---- routes ----

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/users/register", post(register))
        .route("/users/login", post(login))
        .route("/users/{id}", get(get_user).delete(delete_user))
}

/// Create an account.
#[utoipa::path(post, path = "/users/register", tag = "users", request_body = RegisterBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "retries with the same key apply once")),
    responses((status = 201, body = Registered),
        (status = 400, description = "invalid username, password or email", body = ErrorBody),
        (status = 409, description = "username or email taken", body = ErrorBody)))]
pub async fn register(
    State(app): State<AppState>,
    IdempotencyKey(key): IdempotencyKey,
    JsonBody(body): JsonBody<RegisterBody>,
) -> Result<(StatusCode, axum::Json<Registered>), ApiError> {
    let id = ask(&app.users, |reply| UsersMsg::Register(body, key, reply)).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(Registered {
            user_id: id.to_string(),
        }),
    ))
}

/// Log in: returns a JWT accepted by every node of the cluster.
#[utoipa::path(post, path = "/users/login", tag = "users", request_body = LoginBody,
    responses((status = 200, body = LoggedIn),
        (status = 401, description = "wrong username or password (same answer for both)", body = ErrorBody)))]
pub async fn login(
    State(app): State<AppState>,
    JsonBody(body): JsonBody<LoginBody>,
) -> Result<axum::Json<LoggedIn>, ApiError> {
    let token = ask(&app.users, |reply| UsersMsg::Login(body, reply)).await?;
    Ok(axum::Json(LoggedIn { token }))
}

/// A user's profile (`email` only with that user's own token).
#[utoipa::path(get, path = "/users/{id}", tag = "users", params(("id" = String, Path), ReadOptions),
    security((), ("bearer" = [])),
    responses((status = 200, body = UserView), (status = 404, body = ErrorBody)))]
pub async fn get_user(
    State(app): State<AppState>,
    MaybeAuthUser(viewer): MaybeAuthUser,
    PathParam(id): PathParam<String>,
    opts: ReadOptions,
) -> Result<axum::Json<UserView>, ApiError> {
    let id = parse_user_id(&id)?;
    let user = ask(&app.users, |reply| UsersMsg::Get {
        id,
        viewer,
        consistency: opts.consistency,
        reply,
    })
    .await?;
    Ok(axum::Json(user))
}

/// Delete your account and your playlist (your uploaded tracks stay).
#[utoipa::path(delete, path = "/users/{id}", tag = "users", params(("id" = String, Path)),
    security(("bearer" = [])),
    responses((status = 200, body = Message), (status = 401, body = ErrorBody),
        (status = 403, description = "another user's account", body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_user(
    State(app): State<AppState>,
    AuthUser(by): AuthUser,
    key: IdempotencyKey,
    PathParam(id): PathParam<String>,
) -> Result<axum::Json<Message>, ApiError> {
    let id = parse_user_id(&id)?;
    let key = key.for_user(by);
    ask(&app.users, |reply| UsersMsg::Delete { id, by, key, reply }).await?;
    Ok(axum::Json(Message {
        message: "User deleted successfully".into(),
    }))
}
