//! Authentication: argon2id password hashes and HS256 JWTs signed with the cluster-wide key.
//!
//! The signing key is part of the replicated state (`UserCommand::InitSigningKey`): the first
//! node to need it proposes a random one and the first committed proposal wins, so every node
//! verifies every token locally and tokens survive restarts. Hashing and verifying passwords is
//! deliberately slow CPU work, so it runs on the blocking pool, never on the async workers.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use raft::Replica;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use storage::{Command, UserCommand};

use crate::error::ApiError;
use crate::{ApiSettings, AppState, internal};

/// Tolerated clock difference between the node that signed a token and the one checking it.
const CLOCK_LEEWAY_SECS: u64 = 5;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    /// The user id, as a decimal string (like every seed-000 id).
    sub: String,
    username: String,
    iss: String,
    iat: u64,
    exp: u64,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Hashes a password with argon2id and a random salt (on the blocking pool).
pub(crate) async fn hash_password(password: String) -> Result<String, ApiError> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
    })
    .await
    .map_err(|e| internal(format!("password hashing task failed: {e}")))?
    .map_err(|e| internal(format!("password hashing failed: {e}")))
}

/// Checks `password` against `hash` (on the blocking pool). With no hash (unknown user) it still
/// spends the same time on a dummy hash, so response times do not reveal which usernames exist.
pub(crate) async fn verify_password(password: String, hash: Option<String>) -> bool {
    static DUMMY: OnceLock<Option<String>> = OnceLock::new();
    tokio::task::spawn_blocking(move || {
        let dummy = DUMMY.get_or_init(|| {
            let salt = SaltString::generate(&mut OsRng);
            Argon2::default()
                .hash_password(b"not a real password", &salt)
                .map(|h| h.to_string())
                .ok()
        });
        let (candidate, real) = match &hash {
            Some(h) => (h.as_str(), true),
            None => (dummy.as_deref().unwrap_or_default(), false),
        };
        let matches = PasswordHash::new(candidate).is_ok_and(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        });
        real && matches
    })
    .await
    .unwrap_or(false)
}

/// The cluster's signing key, creating it (once, cluster-wide) if the cluster has none yet.
pub(crate) async fn signing_key(replica: &Replica) -> Result<Vec<u8>, ApiError> {
    if let Some(key) = replica
        .state()
        .read(|s| s.users.signing_key().map(<[u8]>::to_vec))
    {
        return Ok(key);
    }
    let mut key = vec![0u8; 32];
    rand::rng().fill_bytes(&mut key);
    replica
        .write(Command::Users(UserCommand::InitSigningKey { key }), None)
        .await?;
    // The write is applied locally by now; whichever proposal committed first is the key.
    replica
        .state()
        .read(|s| s.users.signing_key().map(<[u8]>::to_vec))
        .ok_or_else(|| internal("the signing key is missing after it was written"))
}

/// Signs a token for `user_id` valid for the configured time.
pub(crate) async fn issue_token(
    replica: &Replica,
    settings: &ApiSettings,
    user_id: u64,
    username: &str,
) -> Result<String, ApiError> {
    let key = signing_key(replica).await?;
    let iat = now_secs();
    let claims = Claims {
        sub: user_id.to_string(),
        username: username.to_string(),
        iss: settings.cluster_name.clone(),
        iat,
        exp: iat + settings.token_ttl.as_secs(),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(&key),
    )
    .map_err(|e| internal(format!("cannot sign a token: {e}")))
}

/// The authenticated caller: a valid `Authorization: Bearer <jwt>` of an existing user.
#[derive(Debug, Clone, Copy)]
pub struct AuthUser(pub u64);

/// Like [`AuthUser`] but the header is optional (a present but invalid token is still a 401).
#[derive(Debug, Clone, Copy)]
pub struct MaybeAuthUser(pub Option<u64>);

fn bearer(parts: &Parts) -> Result<Option<&str>, ApiError> {
    let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|t| Some(t.trim()))
        .ok_or_else(|| {
            ApiError::unauthorized(
                "the Authorization header must be `Bearer <token>` (from POST /users/login)",
            )
        })
}

/// The user a bearer token belongs to, or why it is not accepted.
pub(crate) async fn verify(app: &AppState, token: &str) -> Result<u64, ApiError> {
    let invalid = || {
        ApiError::new(
            axum::http::StatusCode::UNAUTHORIZED,
            "invalid_token",
            "the token is not valid for this cluster; log in again (POST /users/login)",
        )
    };
    let key = app
        .replica
        .state()
        .read(|s| s.users.signing_key().map(<[u8]>::to_vec))
        .ok_or_else(invalid)?;
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = CLOCK_LEEWAY_SECS;
    validation.set_issuer(&[app.settings.cluster_name.as_str()]);
    validation.set_required_spec_claims(&["exp", "sub", "iss"]);
    let data = jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(&key), &validation)
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => ApiError::new(
                axum::http::StatusCode::UNAUTHORIZED,
                "token_expired",
                "the token has expired; log in again (POST /users/login)",
            ),
            _ => invalid(),
        })?;
    let user_id: u64 = data.claims.sub.parse().map_err(|_| invalid())?;
    let exists = crate::read_confirming_absence(&app.replica, |s| s.users.get(user_id).map(drop));
    if exists.await?.is_none() {
        return Err(ApiError::unauthorized(
            "the account this token belongs to no longer exists",
        ));
    }
    Ok(user_id)
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        match bearer(parts)? {
            Some(token) => Ok(Self(verify(app, token).await?)),
            None => Err(ApiError::unauthorized(
                "log in first: send `Authorization: Bearer <token>` with the token from POST /users/login",
            )),
        }
    }
}

impl FromRequestParts<AppState> for MaybeAuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        match bearer(parts)? {
            Some(token) => Ok(Self(Some(verify(app, token).await?))),
            None => Ok(Self(None)),
        }
    }
}

/// Creates the cluster's signing key as soon as this node can write, so the first login does not
/// pay for it. Every node runs this; the state machine keeps the first key committed.
pub(crate) async fn create_signing_key_when_ready(replica: Replica) {
    let mut delay = std::time::Duration::from_millis(200);
    loop {
        if replica.state().read(|s| s.users.signing_key().is_some()) {
            return;
        }
        if replica.status().await.ready() {
            match signing_key(&replica).await {
                Ok(_) => return,
                Err(e) => {
                    tracing::debug!(error = %e.message, "signing key not created yet; retrying")
                }
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(std::time::Duration::from_secs(5));
    }
}
