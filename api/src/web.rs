//! The web app: `GET /` (the page), `/app.js`, `/app.css`, embedded in the binary.
//!
//! Plain HTML, CSS and one ES module, written by hand: no build step, no CDN, nothing fetched at
//! run time but this node's (or, after a failover, another node's) API. The page talks to the
//! API like any client; `/events` keeps it live. The Content-Security-Policy allows scripts and
//! styles from this node only, so text a user typed can never run as code even if a bug
//! rendered it as HTML; it allows API calls and audio from any node, for the failover.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::LazyLock;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::AppState;

const INDEX_HTML: &str = include_str!("../web/index.html");
const APP_JS: &str = include_str!("../web/app.js");
const APP_CSS: &str = include_str!("../web/app.css");

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src *; media-src *; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; \
     form-action 'self'";

/// One ETag for all three files: they change together, with the binary.
static ETAG: LazyLock<HeaderValue> = LazyLock::new(|| {
    // `DefaultHasher::new` has fixed keys: every node of one build gives the same tag.
    let mut hasher = DefaultHasher::new();
    (INDEX_HTML, APP_JS, APP_CSS).hash(&mut hasher);
    HeaderValue::from_str(&format!("\"{:016x}\"", hasher.finish()))
        .unwrap_or_else(|_| HeaderValue::from_static("\"chorus\""))
});

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|h: HeaderMap| async move { file(&h, INDEX_HTML, "text/html; charset=utf-8") }))
        .route("/app.js", get(|h: HeaderMap| async move { file(&h, APP_JS, "text/javascript; charset=utf-8") }))
        .route("/app.css", get(|h: HeaderMap| async move { file(&h, APP_CSS, "text/css; charset=utf-8") }))
}

fn file(request: &HeaderMap, body: &'static str, content_type: &'static str) -> Response {
    let etag = ETAG.clone();
    let unchanged = request
        .get(header::IF_NONE_MATCH)
        .is_some_and(|given| given == etag);
    let mut response = if unchanged {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        body.into_response()
    };
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Revalidated on every load, so a new binary's page is never mixed with an old script.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::ETAG, etag);
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}
