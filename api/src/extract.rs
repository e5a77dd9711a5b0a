//! Extractors whose rejections are [`ApiError`]s (so a bad body, path or query gets the same
//! JSON error shape as every other failure), and the request options shared by all domains.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use utoipa::IntoParams;

use crate::error::ApiError;

/// `Json<T>` with [`ApiError`] rejections: 400 malformed JSON (invalid UTF-8 and lone surrogates
/// anywhere included), 422 wrong types or missing fields, 415 wrong content type, 413 too large.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        // Parsed as a whole first: serde skips fields `T` does not name without checking them,
        // so invalid UTF-8 or a lone surrogate there would be accepted (and stored, by handlers
        // that keep the raw body). Parsing into a `Value` checks every string.
        let axum::Json(value) = axum::Json::<serde_json::Value>::from_request(req, state).await?;
        T::deserialize(value).map(Self).map_err(|e| {
            ApiError::new(
                axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                format!("the JSON body does not have the expected shape: {e}"),
            )
        })
    }
}

/// `Path<T>` with [`ApiError`] rejections.
pub struct PathParam<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathParam<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Path(value) =
            axum::extract::Path::<T>::from_request_parts(parts, state).await?;
        Ok(Self(value))
    }
}

/// Read consistency, from `?consistency=`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// Reflects every write acknowledged before the read started, on any node (default).
    #[default]
    Linearizable,
    /// This node's local state, without asking the leader; may be behind.
    Stale,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReadOptions {
    /// `linearizable` (default) or `stale`.
    #[serde(default)]
    pub consistency: Consistency,
}

impl<S: Send + Sync> FromRequestParts<S> for ReadOptions {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        // Other query parameters (e.g. `id` on some routes) are not ours to judge.
        #[derive(Deserialize)]
        struct Raw {
            consistency: Option<String>,
        }
        let axum::extract::Query(raw) =
            axum::extract::Query::<Raw>::from_request_parts(parts, state).await?;
        let consistency = match raw
            .consistency
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("linearizable") => Consistency::Linearizable,
            Some("stale") => Consistency::Stale,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "unknown consistency `{other}`: use `linearizable` (default) or `stale`"
                )));
            }
        };
        Ok(Self { consistency })
    }
}

/// The `Idempotency-Key` header, if any: a retried write with the same key is applied once.
pub struct IdempotencyKey(pub Option<String>);

const MAX_KEY_LEN: usize = 200;

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let Some(value) = parts.headers.get("idempotency-key") else {
            return Ok(Self(None));
        };
        let raw = value.to_str().map_err(|_| bad_idempotency_key())?;
        Ok(Self(Some(anonymous_idempotency_key(raw)?)))
    }
}

fn bad_idempotency_key() -> ApiError {
    ApiError::bad_request(format!(
        "Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters (a UUID works well)"
    ))
}

/// A client's idempotency key in the anonymous scope ([`IdempotencyKey::for_user`] moves it to a
/// user's), or 400 if it is not 1 to 200 visible ASCII characters.
pub(crate) fn anonymous_idempotency_key(raw: &str) -> Result<String, ApiError> {
    if raw.is_empty() || raw.len() > MAX_KEY_LEN || !raw.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad_idempotency_key());
    }
    Ok(format!("idem:anon:{raw}"))
}

impl IdempotencyKey {
    /// The key in the scope of an authenticated user, so two users' keys never collide.
    pub fn for_user(self, user_id: u64) -> Option<String> {
        self.0.map(|k| match k.strip_prefix("idem:anon:") {
            Some(raw) => format!("idem:u{user_id}:{raw}"),
            None => k,
        })
    }
}

/// `Query<T>` with [`ApiError`] rejections.
pub struct QueryParam<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParam<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Query(value) =
            axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(Self(value))
    }
}

/// Whether the client asked for a minimal answer with `Prefer: return=minimal` (RFC 7240):
/// a write then answers with what it changed only, not the whole queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReturnMinimal(pub bool);

impl ReturnMinimal {
    /// The `Preference-Applied` header to send when the preference was honoured.
    pub const APPLIED: (&'static str, &'static str) = ("preference-applied", "return=minimal");
}

impl<S: Send + Sync> FromRequestParts<S> for ReturnMinimal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        // Preferences are comma-separated, may repeat the header, and may carry parameters
        // after `;`; names and the `minimal` token compare case-insensitively. Unknown
        // preferences are ignored, as the RFC asks.
        let minimal = parts
            .headers
            .get_all("prefer")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|pref| pref.split(';').next())
            .any(|pref| {
                let mut kv = pref.splitn(2, '=');
                let name = kv.next().unwrap_or("").trim();
                let value = kv.next().unwrap_or("").trim().trim_matches('"');
                name.eq_ignore_ascii_case("return") && value.eq_ignore_ascii_case("minimal")
            });
        Ok(Self(minimal))
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::extract::FromRequest;
    use serde::Deserialize;

    use super::JsonBody;

    #[derive(Debug, Deserialize)]
    struct Known {
        #[allow(dead_code)]
        id: u64,
    }

    async fn extract(body: &'static [u8]) -> Result<(), (u16, String)> {
        let request = axum::http::Request::builder()
            .header("content-type", "application/json")
            .body(Body::from(body))
            .expect("a request");
        JsonBody::<Known>::from_request(request, &())
            .await
            .map(drop)
            .map_err(|e| (e.status.as_u16(), e.code.to_string()))
    }

    #[tokio::test]
    async fn unknown_fields_must_be_valid_json_text_too() {
        assert_eq!(extract(br#"{"id": 1, "extra": "fine"}"#).await, Ok(()));
        let lone_surrogate = extract(br#"{"id": 1, "extra": "\ud800"}"#).await;
        assert_eq!(lone_surrogate, Err((400, "invalid_json".into())));
        let bad_utf8 = extract(b"{\"id\": 1, \"extra\": \"\xff\xfe\"}").await;
        assert_eq!(bad_utf8, Err((400, "invalid_json".into())));
        assert_eq!(
            extract(br#"{"id": "x"}"#).await,
            Err((422, "invalid_body".into()))
        );
    }
}
