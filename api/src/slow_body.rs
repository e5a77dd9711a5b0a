//! A floor under how slowly a client may send a request body: at least [`MIN_BYTES`] in every
//! window of `[http] slow_body_timeout_secs`, or the body ends with an error (the handler then
//! answers 4xx, an upload is dropped with its chunks, and the connection closes). Without it a
//! body sent at 10 bytes a second held a connection and a handler for as long as the client
//! liked. An honest upload on a slow link sends far more than this.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::header;
use futures_util::StreamExt;
use tokio::time::Instant;

/// Bytes a body must deliver in each window.
pub const MIN_BYTES: usize = 1024;

/// Wraps the request's body (if it has one) in the rate floor.
pub fn limit(request: Request, window: Duration) -> Request {
    let has_body = request.headers().contains_key(header::CONTENT_LENGTH)
        || request.headers().contains_key(header::TRANSFER_ENCODING);
    if !has_body {
        return request;
    }
    request.map(|body| Body::from_stream(at_least(body, window)))
}

fn at_least(
    body: Body,
    window: Duration,
) -> impl futures_util::Stream<Item = Result<Bytes, axum::Error>> + Send {
    let state = (
        body.into_data_stream(),
        Instant::now() + window,
        0usize,
        false,
    );
    futures_util::stream::unfold(
        state,
        move |(mut data, mut deadline, mut got, done)| async move {
            if done {
                return None;
            }
            match tokio::time::timeout_at(deadline, data.next()).await {
                Err(_) => Some((
                    Err(axum::Error::new(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!(
                            "the request body arrived too slowly (less than {MIN_BYTES} bytes in {} s)",
                            window.as_secs()
                        ),
                    ))),
                    (data, deadline, got, true),
                )),
                Ok(None) => None,
                Ok(Some(Ok(bytes))) => {
                    got += bytes.len();
                    if got >= MIN_BYTES {
                        deadline = Instant::now() + window;
                        got = 0;
                    }
                    Some((Ok(bytes), (data, deadline, got, false)))
                }
                Ok(Some(Err(e))) => Some((Err(e), (data, deadline, got, true))),
            }
        },
    )
}
