//! Playback (seed 000): `GET /play/{id}` and `GET /tracks/{id}/file` stream a track's MP3 from
//! this node's copy, chunk by chunk, with the headers a browser `<audio>` element needs to seek:
//! `Accept-Ranges`, `ETag`, `Content-Length`, single ranges answered with 206 and
//! `Content-Range`, unsatisfiable ones with 416.
//!
//! The [`PlaybackActor`] resolves a request (the track, linearizably by default, and the byte
//! range); the route streams the bytes, one stored chunk at a time, so memory per stream is
//! about one chunk whatever the file size.

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::{StreamExt, stream};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use raft::Replica;
use storage::Track;
use storage::state::tracks::CHUNK_SIZE;

use crate::audio::AudioReader;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{Consistency, PathParam, ReadOptions};
use crate::tracks::parse_track_id;
use crate::{AppState, ask, respond};

/// Which bytes of the file to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    Whole,
    /// Inclusive byte range.
    Part(u64, u64),
    Unsatisfiable,
}

/// Interprets a `Range` header for a file of `size` bytes. Only one `bytes=` range is honoured;
/// a malformed header or several ranges get the whole file, as RFC 9110 allows.
pub fn parse_range(value: Option<&str>, size: u64) -> Span {
    let Some(spec) = value.and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return Span::Whole;
    };
    if spec.contains(',') {
        return Span::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Span::Whole;
    };
    let (first, last) = (first.trim(), last.trim());
    // Digits only: `u64::from_str` would also take `+5`, which is no byte position.
    let parsed = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    match (first.is_empty(), last.is_empty()) {
        // `bytes=-N`: the last N bytes.
        (true, false) => match parsed(last) {
            Some(0) => Span::Unsatisfiable,
            Some(n) if size > 0 => Span::Part(size.saturating_sub(n), size - 1),
            Some(_) => Span::Unsatisfiable,
            None => Span::Whole,
        },
        // `bytes=A-` or `bytes=A-B`.
        (false, _) => {
            let Some(start) = parsed(first) else {
                return Span::Whole;
            };
            let end = if last.is_empty() {
                Some(u64::MAX)
            } else {
                parsed(last)
            };
            match end {
                None => Span::Whole,
                Some(end) if end < start => Span::Whole,
                Some(_) if start >= size => Span::Unsatisfiable,
                Some(end) => Span::Part(start, end.min(size - 1)),
            }
        }
        (true, true) => Span::Whole,
    }
}

fn etag(track: &Track) -> String {
    format!("\"{}-{}\"", track.blob, track.audio.size)
}

// ---- the actor ----

type Reply<T> = RpcReplyPort<Result<T, ApiError>>;

pub enum PlaybackMsg {
    /// The track to play (the route then streams from the local store).
    Open(u64, Consistency, Reply<Track>),
}

impl ractor::Message for PlaybackMsg {}

/// Resolves playback requests on this node.
pub struct PlaybackActor;

impl Actor for PlaybackActor {
    type Msg = PlaybackMsg;
    type State = Replica;
    type Arguments = Replica;

    async fn pre_start(
        &self,
        _: ActorRef<PlaybackMsg>,
        replica: Replica,
    ) -> Result<Replica, ActorProcessingErr> {
        Ok(replica)
    }

    async fn handle(
        &self,
        _: ActorRef<PlaybackMsg>,
        msg: PlaybackMsg,
        replica: &mut Replica,
    ) -> Result<(), ActorProcessingErr> {
        let r = replica.clone();
        match msg {
            PlaybackMsg::Open(id, consistency, reply) => respond(reply, async move {
                crate::read(&r, consistency, |s| s.tracks.get(id).cloned())
                    .await?
                    .ok_or_else(|| ApiError::not_found(format!("track {id} does not exist")))
            }),
        }
        Ok(())
    }
}

// ---- routes ----

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/play/{id}", get(play))
        .route("/tracks/{id}/file", get(file))
}

/// Chunks read ahead of the one being sent: each is read (and, from disk, hashed) on the
/// blocking pool while the one before goes out, so a stream is not read, then sent, in turn.
const READ_AHEAD: usize = 2;

/// The bytes `[start, end]` of the track's audio, one chunk file at a time.
fn body(reader: AudioReader, start: u64, end: u64) -> Body {
    let chunk = CHUNK_SIZE as u64;
    let pieces = (start / chunk..=end / chunk).map(move |index| {
        // The part of chunk `index` inside `[start, end]`, as offsets within the chunk.
        let first = start.max(index * chunk) - index * chunk;
        let last = end.min(index * chunk + chunk - 1) - index * chunk;
        (index, first as usize, last as usize)
    });
    let reads = stream::iter(pieces).map(move |(index, first, last)| {
        let reader = reader.clone();
        async move {
            let index = u32::try_from(index).map_err(std::io::Error::other)?;
            let chunk = tokio::task::spawn_blocking(move || reader.chunk(index))
                .await
                .map_err(std::io::Error::other)??;
            if last >= chunk.len() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "stored audio is shorter than recorded",
                ));
            }
            crate::metrics::streamed(last + 1 - first);
            // The response shares the buffer the chunk was read (and checked) into.
            Ok::<_, std::io::Error>(chunk.slice(first..=last))
        }
    });
    Body::from_stream(reads.buffered(READ_AHEAD))
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

async fn stream_track(
    app: AppState,
    id: String,
    opts: ReadOptions,
    headers: HeaderMap,
) -> Response {
    let id = match parse_track_id(&id) {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    let track = match ask(&app.playback, |reply| {
        PlaybackMsg::Open(id, opts.consistency, reply)
    })
    .await
    {
        Ok(track) => track,
        Err(e) => return e.into_response(),
    };
    let size = track.audio.size;
    let tag = etag(&track);
    let header_str = |name| headers.get(name).and_then(|v| v.to_str().ok());
    if header_str(header::IF_NONE_MATCH).is_some_and(|v| crate::etag_matches(v, &tag)) {
        return (
            StatusCode::NOT_MODIFIED,
            [(header::ETAG, header_value(&tag))],
        )
            .into_response();
    }
    // `If-Range` with a different version of the file: send all of the current one.
    let range = match header_str(header::IF_RANGE) {
        Some(v) if v.trim() != tag => None,
        _ => header_str(header::RANGE),
    };
    let span = parse_range(range, size);
    let mut response = match span {
        Span::Unsatisfiable => {
            let mut response = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                format!("the requested range is outside the file, which is {size} bytes long"),
            )
            .into_response();
            response.headers_mut().insert(
                header::CONTENT_RANGE,
                header_value(&format!("bytes */{size}")),
            );
            return response;
        }
        Span::Whole if size == 0 => Response::new(Body::empty()),
        Span::Whole => Response::new(body(
            AudioReader::new(app.replica.state().clone(), &track.chunks, size),
            0,
            size - 1,
        )),
        Span::Part(start, end) => {
            let mut response = Response::new(body(
                AudioReader::new(app.replica.state().clone(), &track.chunks, size),
                start,
                end,
            ));
            *response.status_mut() = StatusCode::PARTIAL_CONTENT;
            response.headers_mut().insert(
                header::CONTENT_RANGE,
                header_value(&format!("bytes {start}-{end}/{size}")),
            );
            response
        }
    };
    let length = match span {
        Span::Part(start, end) => end - start + 1,
        _ => size,
    };
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("audio/mpeg"));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::ETAG, header_value(&tag));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Stream a track's MP3 (supports `Range`, so players can seek).
#[utoipa::path(get, path = "/play/{id}", tag = "playback", params(("id" = String, Path), ReadOptions,
        ("Range" = Option<String>, Header, description = "one byte range, e.g. `bytes=0-1023`, `bytes=5000-`, `bytes=-500`")),
    responses((status = 200, description = "the whole MP3", content_type = "audio/mpeg", body = Vec<u8>),
        (status = 206, description = "the requested range", content_type = "audio/mpeg", body = Vec<u8>),
        (status = 404, body = ErrorBody), (status = 416, description = "range outside the file", body = ErrorBody)))]
pub async fn play(
    State(app): State<AppState>,
    PathParam(id): PathParam<String>,
    opts: ReadOptions,
    headers: HeaderMap,
) -> Response {
    stream_track(app, id, opts, headers).await
}

/// Download a track's MP3 (same as `/play/{id}`).
#[utoipa::path(get, path = "/tracks/{id}/file", tag = "playback", params(("id" = String, Path), ReadOptions,
        ("Range" = Option<String>, Header, description = "one byte range")),
    responses((status = 200, content_type = "audio/mpeg", body = Vec<u8>), (status = 206, content_type = "audio/mpeg", body = Vec<u8>),
        (status = 404, body = ErrorBody), (status = 416, body = ErrorBody)))]
pub async fn file(
    State(app): State<AppState>,
    PathParam(id): PathParam<String>,
    opts: ReadOptions,
    headers: HeaderMap,
) -> Response {
    stream_track(app, id, opts, headers).await
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Any `Range` header gives the whole file, a range inside it, or "unsatisfiable".
        #[test]
        fn any_range_header_gives_a_span_inside_the_file(value in ".{0,40}", size in 0u64..10_000) {
            for header in [value.clone(), format!("bytes={value}")] {
                match parse_range(Some(&header), size) {
                    Span::Part(first, last) => proptest::prop_assert!(first <= last && last < size),
                    Span::Whole | Span::Unsatisfiable => {}
                }
            }
        }
    }

    #[test]
    fn ranges() {
        let r = |v: &str| parse_range(Some(v), 1000);
        assert_eq!(parse_range(None, 1000), Span::Whole);
        assert_eq!(r("bytes=0-0"), Span::Part(0, 0));
        assert_eq!(r("bytes=500-"), Span::Part(500, 999));
        assert_eq!(r("bytes=-100"), Span::Part(900, 999));
        assert_eq!(r("bytes=-5000"), Span::Part(0, 999));
        assert_eq!(r("bytes=990-5000"), Span::Part(990, 999));
        assert_eq!(r("bytes=999-999"), Span::Part(999, 999));
        assert_eq!(r("bytes=1000-"), Span::Unsatisfiable);
        assert_eq!(r("bytes=-0"), Span::Unsatisfiable);
        assert_eq!(r("bytes=5-1"), Span::Whole);
        assert_eq!(r("bytes=0-1,5-6"), Span::Whole);
        assert_eq!(r("items=0-1"), Span::Whole);
        assert_eq!(r("bytes=abc"), Span::Whole);
        // Signs are not digits: malformed, so the whole file.
        assert_eq!(r("bytes=+5-10"), Span::Whole);
        assert_eq!(r("bytes=5-+10"), Span::Whole);
        assert_eq!(r("bytes=-+10"), Span::Whole);
    }
}
