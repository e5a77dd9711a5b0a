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

/// For working on the app: serve the files from this directory (e.g. `api/web`), read on each
/// request, instead of the copies compiled in — edit and reload, no rebuild.
pub const WEB_DIR_ENV: &str = "CHORUS_WEB_DIR";

pub fn routes() -> Router<AppState> {
    let page = |name: &'static str, embedded: &'static str, content_type: &'static str| {
        get(move |h: HeaderMap| async move { file(&h, name, embedded, content_type).await })
    };
    Router::new()
        .route(
            "/",
            page("index.html", INDEX_HTML, "text/html; charset=utf-8"),
        )
        .route(
            "/app.js",
            page("app.js", APP_JS, "text/javascript; charset=utf-8"),
        )
        .route(
            "/app.css",
            page("app.css", APP_CSS, "text/css; charset=utf-8"),
        )
}

async fn file(
    request: &HeaderMap,
    name: &str,
    embedded: &'static str,
    content_type: &'static str,
) -> Response {
    let from_disk = match std::env::var_os(WEB_DIR_ENV) {
        Some(dir) => tokio::fs::read(std::path::Path::new(&dir).join(name))
            .await
            .ok(),
        None => None,
    };
    let etag = ETAG.clone();
    let unchanged = from_disk.is_none()
        && request
            .get(header::IF_NONE_MATCH)
            .and_then(|given| given.to_str().ok())
            .is_some_and(|given| crate::etag_matches(given, etag.to_str().unwrap_or_default()));
    let mut response = if unchanged {
        StatusCode::NOT_MODIFIED.into_response()
    } else if let Some(bytes) = from_disk {
        bytes.into_response()
    } else {
        embedded.into_response()
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
