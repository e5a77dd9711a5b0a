//! Users (seed 000): `POST /users/register`, `POST /users/login`, `GET /users/{id}`,
//! `DELETE /users/{id}`.
//!
//! The [`UsersActor`] owns the domain on this node: it validates input, hashes passwords off the
//! async workers, proposes [`UserCommand`]s and signs tokens. Uniqueness of usernames and emails
//! is decided by the state machine, so it holds cluster-wide even under concurrent registration.
//!
//! The actor also keeps this node's failed logins per username ([`FailedLogins`]): after
//! five wrong passwords in a row a username must wait before each further attempt (1 s,
//! doubling, at most 60 s), answered 429 `too_many_attempts` with `Retry-After` without
//! hashing anything. Each node counts its own attempts, so a guesser spreading over N nodes
//! gets N times the rate: still a few attempts a minute, against argon2id hashes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

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

// ---- failed logins ----

/// Wrong passwords in a row a username may have before it must wait between attempts.
const FREE_FAILURES: u32 = 5;
const MAX_LOGIN_WAIT: Duration = Duration::from_secs(60);
/// Usernames tracked before idle ones are forgotten (a guesser cycling through made-up names
/// must not grow this without bound).
const MAX_TRACKED: usize = 10_000;
/// A username with no failed login for this long starts afresh.
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);

/// Failed logins per username on this node (see the module docs).
#[derive(Debug, Default)]
pub struct FailedLogins {
    by_name: HashMap<String, (u32, Instant)>,
}

impl FailedLogins {
    /// How long `name` must still wait before its next attempt (none: it may try now).
    fn wait(&self, name: &str, now: Instant) -> Option<Duration> {
        let (failures, last) = self.by_name.get(&name.to_lowercase())?;
        let extra = failures.checked_sub(FREE_FAILURES)?;
        let backoff = Duration::from_secs(1u64 << extra.min(6)).min(MAX_LOGIN_WAIT);
        let left = backoff.saturating_sub(now.saturating_duration_since(*last));
        (!left.is_zero()).then_some(left)
    }

    /// Counts a failed attempt, or clears the count after a success.
    fn record(&mut self, name: &str, succeeded: bool, now: Instant) {
        let name = name.to_lowercase();
        if succeeded {
            self.by_name.remove(&name);
            return;
        }
        if self.by_name.len() >= MAX_TRACKED && !self.by_name.contains_key(&name) {
            self.by_name
                .retain(|_, (_, last)| now.saturating_duration_since(*last) < FORGET_AFTER);
            if self.by_name.len() >= MAX_TRACKED {
                return; // under a spray of names: count none rather than grow
            }
        }
        let entry = self.by_name.entry(name).or_insert((0, now));
        *entry = (entry.0 + 1, now);
    }
}

// ---- the actor ----

type Reply<T> = RpcReplyPort<Result<T, ApiError>>;

pub enum UsersMsg {
    Register(RegisterBody, Option<String>, Reply<u64>),
    Login(LoginBody, Reply<String>),
    /// A login's verdict, from the task that checked it, for [`FailedLogins`].
    LoginChecked {
        username: String,
        succeeded: bool,
    },
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

pub struct UsersState {
    replica: Replica,
    settings: Arc<ApiSettings>,
    failed_logins: FailedLogins,
}

impl Actor for UsersActor {
    type Msg = UsersMsg;
    type State = UsersState;
    type Arguments = (Replica, Arc<ApiSettings>);

    async fn pre_start(
        &self,
        _: ActorRef<UsersMsg>,
        (replica, settings): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(UsersState {
            replica,
            settings,
            failed_logins: FailedLogins::default(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<UsersMsg>,
        msg: UsersMsg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (r, settings) = (state.replica.clone(), state.settings.clone());
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
            UsersMsg::LoginChecked {
                username,
                succeeded,
            } => {
                let now = Instant::now();
                state.failed_logins.record(&username, succeeded, now);
            }
            UsersMsg::Login(body, reply) => {
                if let Some(wait) = state.failed_logins.wait(&body.username, Instant::now()) {
                    let message = format!(
                        "too many wrong passwords for `{}` on this node: try again in {} s",
                        body.username,
                        wait.as_secs_f64().ceil()
                    );
                    let _ = reply.send(Err(ApiError::too_many("too_many_attempts", message, wait)));
                    return Ok(());
                }
                respond(reply, check_login(r, settings, body, myself));
            }
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

/// Checks `body`'s password and signs a token; tells `actor` the verdict.
async fn check_login(
    r: Replica,
    settings: Arc<ApiSettings>,
    body: LoginBody,
    actor: ActorRef<UsersMsg>,
) -> Result<String, ApiError> {
    // Linearizable, so a user registered on another node a moment ago can log in.
    r.read_barrier().await?;
    let user = r.state().read(|s| {
        s.users
            .by_username(&body.username)
            .map(|u| (u.id, u.username.clone(), u.password_hash.clone()))
    });
    let hash = user.as_ref().map(|(_, _, h)| h.clone());
    let verified = auth::verify_password(body.password, hash).await;
    let _ = actor.send_message(UsersMsg::LoginChecked {
        username: body.username,
        succeeded: verified,
    });
    match user {
        Some((id, name, _)) if verified => auth::issue_token(&r, &settings, id, &name).await,
        _ => Err(ApiError::unauthorized("wrong username or password")),
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
        (status = 401, description = "wrong username or password (same answer for both)", body = ErrorBody),
        (status = 429, description = "too many wrong passwords for this username on this node; wait `Retry-After` seconds", body = ErrorBody)))]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_username_waits_longer_after_each_wrong_password_past_five_until_one_is_right() {
        let mut failed = FailedLogins::default();
        let t0 = Instant::now();
        for _ in 0..FREE_FAILURES {
            assert_eq!(failed.wait("Alice", t0), None);
            failed.record("Alice", false, t0);
        }
        // Past the free ones, waits double (case does not matter), up to a minute.
        let mut now = t0;
        for (extra, expected) in [1u64, 2, 4, 8, 16, 32, 60, 60].into_iter().enumerate() {
            assert_eq!(
                failed.wait("alice", now),
                Some(Duration::from_secs(expected)),
                "after {} failures",
                FREE_FAILURES as usize + extra
            );
            assert_eq!(failed.wait("bob", now), None, "other names are not held up");
            now += Duration::from_secs(expected);
            assert_eq!(failed.wait("ALICE", now), None, "the wait is over");
            failed.record("alice", false, now);
        }
        failed.record("alice", true, now);
        assert_eq!(failed.wait("alice", now), None);
        failed.record("alice", false, now);
        assert_eq!(
            failed.wait("alice", now),
            None,
            "a success starts the count afresh"
        );
    }

    #[test]
    fn a_spray_of_names_does_not_grow_the_table_past_its_bound() {
        let mut failed = FailedLogins::default();
        let t0 = Instant::now();
        for n in 0..MAX_TRACKED + 100 {
            failed.record(&format!("user{n}"), false, t0);
        }
        assert_eq!(failed.by_name.len(), MAX_TRACKED);
        // Once the old entries are idle long enough they make room.
        failed.record("late", false, t0 + FORGET_AFTER);
        assert_eq!(failed.by_name.len(), 1);
    }
}
