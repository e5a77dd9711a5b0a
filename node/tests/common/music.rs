//! Music-service helpers shared by the test binaries: the committed MP3 fixtures, multipart
//! upload forms, and requests that must succeed or fail in a given way.

use std::io::Write as _;

use reqwest::Method;
use serde_json::Value;
use serde_json::json;

use super::{Body, NodeApi, Resp, User};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
pub const MIB: usize = 1024 * 1024;
pub const BOUNDARY: &str = "chorus-test-boundary-5c1f0e";

pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{name}")).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

/// The 2 s fixture `times` times over: a valid MP3 of `times` × ~2.04 s.
pub fn long_mp3(times: usize) -> Vec<u8> {
    fixture("untagged-2s.mp3").repeat(times)
}

pub enum Part<'a> {
    Text(&'a str, &'a str),
    Json(&'a str, Value),
    File(&'a str, &'a [u8]),
}

pub fn form_bytes(parts: &[Part<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for part in parts {
        write!(out, "--{BOUNDARY}\r\n").expect("write to a Vec");
        match part {
            Part::Text(name, value) => {
                write!(
                    out,
                    "Content-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}"
                )
                .expect("write to a Vec");
            }
            Part::Json(name, value) => {
                write!(
                    out,
                    "Content-Disposition: form-data; name=\"{name}\"\r\nContent-Type: application/json\r\n\r\n{value}"
                )
                .expect("write to a Vec");
            }
            Part::File(name, bytes) => {
                write!(
                    out,
                    "Content-Disposition: form-data; name=\"{name}\"; filename=\"song.mp3\"\r\nContent-Type: audio/mpeg\r\n\r\n"
                )
                .expect("write to a Vec");
                out.extend_from_slice(bytes);
            }
        }
        out.extend_from_slice(b"\r\n");
    }
    write!(out, "--{BOUNDARY}--\r\n").expect("write to a Vec");
    out
}

pub fn form(parts: &[Part<'_>]) -> Body {
    Body::Raw {
        content_type: Some(format!("multipart/form-data; boundary={BOUNDARY}")),
        bytes: form_bytes(parts),
    }
}

pub async fn call(
    api: &NodeApi,
    method: Method,
    path: &str,
    body: Body,
    user: Option<&User>,
) -> Resp {
    let headers = user.map(User::auth).unwrap_or_default();
    api.send_with(method, path, body, &headers)
        .await
        .unwrap_or_else(|e| panic!("{path}: {e:#}"))
}

/// Sends a request that must fail with `status` and error `code`.
pub async fn fails(
    api: &NodeApi,
    method: Method,
    path: &str,
    body: Body,
    user: Option<&User>,
    status: u16,
    code: &str,
) {
    call(api, method, path, body, user)
        .await
        .expect_error_code(status, code);
}

/// A request that must be refused: the node, method, path, body, user, status and error code.
pub type Refusal<'a> = (
    &'a NodeApi,
    Method,
    &'a str,
    Body,
    Option<&'a User>,
    u16,
    &'a str,
);

/// Sends each request in turn; each must fail with its status and error code.
pub async fn all_refused(cases: Vec<Refusal<'_>>) {
    for (api, method, path, body, user, status, code) in cases {
        eprintln!("--- {method} {path}: {status} {code}");
        fails(api, method, path, body, user, status, code).await;
    }
}

/// Uploads `mp3` with `title` (none: rely on the ID3 tags) and returns the track id.
pub async fn upload(api: &NodeApi, user: &User, title: Option<&str>, mp3: &[u8]) -> String {
    let mut parts = vec![Part::File("file", mp3)];
    if let Some(title) = title {
        parts.insert(
            0,
            Part::Json(
                "metadata",
                json!({"title": title, "artist": "Tester", "album": "Tests", "genre": "Test"}),
            ),
        );
    }
    let resp = call(
        api,
        Method::POST,
        "/tracks/upload",
        form(&parts),
        Some(user),
    )
    .await;
    resp.expect_status(201)["track_id"]
        .as_str()
        .unwrap_or_else(|| panic!("track_id is not a string: {}", resp.describe()))
        .to_string()
}

/// `GET /tracks/{track}/file` as `user`: the whole MP3.
pub async fn download(api: &NodeApi, track: &str, user: &User) -> Resp {
    let path = format!("/tracks/{track}/file");
    call(api, Method::GET, &path, Body::None, Some(user)).await
}
