//! Live updates: `GET /events`, a Server-Sent Events stream of what changed in the queue, the
//! history and the library, on every node.
//!
//! Each `change` event is one applied log entry: its SSE `id` is the entry's Raft index, which
//! is the same on every node. A client that reconnects with `Last-Event-ID: N` (or
//! `?last_event_id=N`, for an `EventSource` opened afresh on another node) gets every change
//! after `N` from this node's backlog, or, when `N` is older than the backlog, one `state` event
//! (the whole queue, now playing and recent history as of an index) and the changes after it.
//! Either way it sees no gap and no change twice. A client without an id starts with `state`.
//!
//! [`LiveFeed`] is the bookkeeping; the queue actor owns one (its subscribers, the backlog and
//! the latest `state` it built) and feeds it the state machine's change feed. A subscriber that
//! cannot keep up is dropped rather than buffered without bound: its browser reconnects with
//! the last id it saw.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use storage::state::State as DomainState;
use storage::{AppliedChanges, QueuedTrack, StateChange};
use tokio::sync::mpsc;
use utoipa::IntoParams;

use crate::error::ApiError;
use crate::extract::QueryParam;
use crate::queue::{PlayedView, QueueMsg, TrackView as QueuedView};
use crate::tracks::TrackView as LibraryView;
use crate::{AppState, ask};

/// Changes kept for clients that reconnect; one older than these gets a `state` event instead.
const BACKLOG_ENTRIES: usize = 4096;
const BACKLOG_BYTES: usize = 8 << 20;
/// Events a subscriber may have unsent before it is dropped (it reconnects and resumes).
const SUBSCRIBER_BUFFER: usize = 512;
/// Played tracks in a `state` event (the most recent).
const STATE_HISTORY: usize = 100;
/// A comment line this often keeps proxies and browsers from closing an idle stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// One SSE message, encoded once and shared by every subscriber.
#[derive(Debug, Clone)]
pub struct Frame {
    pub index: u64,
    pub bytes: Bytes,
}

/// A queued track as events show it: the queue's shape plus its place in the order of
/// additions, so a client can keep the queue's order (votes, then `added_seq`) itself.
#[derive(Debug, Serialize)]
struct LiveQueued {
    #[serde(flatten)]
    track: QueuedView,
    added_seq: u64,
}

#[derive(Debug, Serialize)]
struct LivePlayed {
    #[serde(flatten)]
    played: PlayedView,
    added_seq: u64,
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum LiveChange {
    Queued {
        track: LiveQueued,
    },
    Voted {
        track: LiveQueued,
    },
    Unqueued {
        id: u64,
    },
    Played {
        played: LivePlayed,
    },
    Cleared,
    /// Users who want the playing track skipped, of those needed.
    SkipVoted {
        votes: u32,
        needed: u32,
    },
    TrackAdded {
        track: LibraryView,
    },
    TrackUpdated {
        track: LibraryView,
    },
    TrackRemoved {
        track_id: String,
    },
}

fn live_queued(t: &QueuedTrack) -> LiveQueued {
    LiveQueued {
        track: QueuedView::from(t),
        added_seq: t.added_seq,
    }
}

fn live_played(p: &storage::PlayedTrack) -> LivePlayed {
    LivePlayed {
        played: PlayedView::from(p),
        added_seq: p.track.added_seq,
    }
}

impl From<&StateChange> for LiveChange {
    fn from(change: &StateChange) -> Self {
        match change {
            StateChange::Queued(t) => Self::Queued {
                track: live_queued(t),
            },
            StateChange::Voted(t) => Self::Voted {
                track: live_queued(t),
            },
            StateChange::Unqueued(id) => Self::Unqueued { id: *id },
            StateChange::Played(p) => Self::Played {
                played: live_played(p),
            },
            StateChange::Cleared => Self::Cleared,
            StateChange::SkipVoted { votes, needed } => Self::SkipVoted {
                votes: *votes,
                needed: *needed,
            },
            StateChange::TrackAdded(t) => Self::TrackAdded {
                track: LibraryView::from(t),
            },
            StateChange::TrackUpdated(t) => Self::TrackUpdated {
                track: LibraryView::from(t),
            },
            StateChange::TrackRemoved(id) => Self::TrackRemoved {
                track_id: id.to_string(),
            },
        }
    }
}

#[derive(Serialize)]
struct ChangeData {
    index: u64,
    changes: Vec<LiveChange>,
}

#[derive(Serialize)]
struct StateData {
    index: u64,
    queue: Vec<LiveQueued>,
    now_playing: Option<LivePlayed>,
    /// Oldest first; the most recent [`STATE_HISTORY`] only.
    history: Vec<LivePlayed>,
    history_total: usize,
    /// Users who want the playing track skipped.
    skip_votes: u32,
}

/// `id:`, `event:` and one `data:` line. JSON from serde_json has no raw newline, so one line.
fn frame(index: u64, event: &str, data: &impl Serialize) -> Frame {
    let json = serde_json::to_string(data).unwrap_or_else(|e| {
        // Only our own plain structs are encoded here: not expected, but never a panic.
        tracing::error!(error = %e, "cannot encode an event");
        "{}".into()
    });
    Frame {
        index,
        bytes: Bytes::from(format!("id: {index}\nevent: {event}\ndata: {json}\n\n")),
    }
}

/// The `change` event of one applied entry.
pub fn change_frame(applied: &AppliedChanges) -> Frame {
    let data = ChangeData {
        index: applied.index,
        changes: applied.changes.iter().map(LiveChange::from).collect(),
    };
    frame(applied.index, "change", &data)
}

/// The `state` event for the domain state as of `index`.
pub fn state_frame(state: &DomainState, index: u64) -> Frame {
    let history = state.queue.history();
    let recent = &history[history.len().saturating_sub(STATE_HISTORY)..];
    let data = StateData {
        index,
        queue: state.queue.queue().iter().map(live_queued).collect(),
        now_playing: history.last().map(live_played),
        history: recent.iter().map(live_played).collect(),
        history_total: history.len(),
        skip_votes: state.queue.skip_votes(),
    };
    frame(index, "state", &data)
}

struct Subscriber {
    sender: mpsc::Sender<Bytes>,
    /// The highest index this subscriber has been sent (by a change or a `state`).
    after: u64,
}

/// Subscribers, the backlog of recent changes, and the latest `state` event: everything a node
/// needs to serve `/events`. Owned by the queue actor; pure bookkeeping, no I/O.
pub struct LiveFeed {
    /// Every change with an index above this is in the backlog (or still to come).
    floor: u64,
    /// The highest index heard of (a change, a replaced state, or the state at the start).
    heard: u64,
    backlog: VecDeque<Frame>,
    backlog_bytes: usize,
    subscribers: Vec<Subscriber>,
    /// The last `state` event built, while no change has been heard since.
    latest_state: Option<Frame>,
    /// The node is stopping: streams are ended and no new one starts.
    closed: bool,
}

impl LiveFeed {
    /// A feed that has heard everything up to `index` (the state it starts from).
    pub fn starting_at(index: u64) -> Self {
        Self {
            floor: index,
            heard: index,
            backlog: VecDeque::new(),
            backlog_bytes: 0,
            subscribers: Vec::new(),
            latest_state: None,
            closed: false,
        }
    }

    /// Ends every stream (a server stopping gracefully would otherwise wait on them forever;
    /// their clients resume on another node) and refuses new ones.
    pub fn close(&mut self) {
        self.closed = true;
        self.subscribers.clear();
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    pub fn subscribers(&self) -> usize {
        self.subscribers.len()
    }

    /// Adds a subscriber that has seen everything up to `last_seen` (`None`: nothing) and
    /// returns its stream, primed with what it missed. `state` reads the whole state with its
    /// index, for a subscriber the backlog cannot serve.
    pub fn subscribe(
        &mut self,
        last_seen: Option<u64>,
        state: impl FnOnce() -> Frame,
    ) -> mpsc::Receiver<Bytes> {
        let (primer, after) = match last_seen {
            Some(seen) if seen >= self.floor => {
                let missed: Vec<Bytes> = self
                    .backlog
                    .iter()
                    .filter(|f| f.index > seen)
                    .map(|f| f.bytes.clone())
                    .collect();
                (missed, seen)
            }
            _ => {
                let state = self.latest_state(state);
                (vec![state.bytes], state.index)
            }
        };
        let (sender, receiver) = mpsc::channel(SUBSCRIBER_BUFFER + primer.len());
        for bytes in primer {
            // Room was made for all of it above.
            let _ = sender.try_send(bytes);
        }
        self.subscribers.push(Subscriber { sender, after });
        receiver
    }

    /// Keeps one applied entry's changes and sends them to every subscriber that has not seen
    /// them. Entries at or below what was already heard (in the state the feed started from,
    /// or a state sent since) are skipped.
    pub fn applied(&mut self, frame: Frame) {
        if frame.index <= self.heard {
            return;
        }
        self.heard = frame.index;
        self.latest_state = None;
        self.backlog_bytes += frame.bytes.len();
        self.backlog.push_back(frame.clone());
        while self.backlog.len() > BACKLOG_ENTRIES || self.backlog_bytes > BACKLOG_BYTES {
            let Some(old) = self.backlog.pop_front() else {
                break;
            };
            self.backlog_bytes -= old.bytes.len();
            self.floor = old.index;
        }
        self.subscribers.retain_mut(|sub| {
            if frame.index <= sub.after {
                return true;
            }
            sub.after = frame.index;
            // Full: dropped, it resumes from the last id it got. Closed: the client left.
            sub.sender.try_send(frame.bytes.clone()).is_ok()
        });
    }

    /// The state was replaced without changes (a snapshot installed) or changes were missed:
    /// the backlog no longer joins up, so every subscriber gets the whole state.
    pub fn restart(&mut self, state: impl FnOnce() -> Frame) {
        self.backlog.clear();
        self.backlog_bytes = 0;
        self.latest_state = None;
        let state = self.latest_state(state);
        self.floor = state.index;
        self.heard = self.heard.max(state.index);
        self.subscribers.retain_mut(|sub| {
            if state.index <= sub.after {
                return true;
            }
            sub.after = state.index;
            sub.sender.try_send(state.bytes.clone()).is_ok()
        });
    }

    fn latest_state(&mut self, build: impl FnOnce() -> Frame) -> Frame {
        match &self.latest_state {
            Some(state) => state.clone(),
            None => {
                let state = build();
                // Changes up to the state's index are in it; later ones still come.
                self.heard = self.heard.max(state.index);
                self.latest_state = Some(state.clone());
                state
            }
        }
    }
}

// ---- route ----

pub fn routes() -> Router<AppState> {
    Router::new().route("/events", get(events))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsParams {
    /// Resume after this Raft index (for a new `EventSource`, which cannot set
    /// `Last-Event-ID` itself). The header wins when both are given.
    pub last_event_id: Option<String>,
}

fn parse_last_id(raw: &str) -> Result<u64, ApiError> {
    raw.trim().parse().map_err(|_| {
        ApiError::bad_request(format!(
            "the last event id `{raw}` is not an event id from /events (a Raft index)"
        ))
    })
}

/// Live updates (Server-Sent Events): `state` (the whole queue, now playing and recent history)
/// and `change` (one applied entry's changes to the queue, history and library), each with its
/// Raft index as the event id. Resume on any node with `Last-Event-ID`.
#[utoipa::path(get, path = "/events", tag = "queue", params(EventsParams,
        ("Last-Event-ID" = Option<String>, Header, description = "resume after this event id")),
    responses((status = 200, description = "text/event-stream", content_type = "text/event-stream"),
        (status = 400, description = "bad event id", body = crate::error::ErrorBody)))]
pub async fn events(
    State(app): State<AppState>,
    QueryParam(params): QueryParam<EventsParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let header_id = headers
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::bad_request("the Last-Event-ID header is not text"))
        })
        .transpose()?;
    let last_seen = match header_id.or(params.last_event_id.as_deref()) {
        // An empty id is how EventSource says "none yet".
        Some(raw) if !raw.trim().is_empty() => Some(parse_last_id(raw)?),
        _ => None,
    };
    let receiver = ask(&app.queue, |reply| QueueMsg::Subscribe { last_seen, reply }).await?;
    // Counted open for as long as the stream (which owns it) lives.
    let open = crate::metrics::OpenEventStream::open();
    let body = Body::from_stream(futures_util::stream::unfold(
        (receiver, true, open),
        |(mut receiver, first, open)| async move {
            if first {
                // Browsers wait this long before reconnecting (their default is 3 s).
                let retry = Bytes::from_static(b"retry: 1000\n\n");
                return Some((Ok::<_, Infallible>(retry), (receiver, false, open)));
            }
            match tokio::time::timeout(KEEP_ALIVE, receiver.recv()).await {
                Ok(Some(bytes)) => Some((Ok(bytes), (receiver, false, open))),
                // Dropped for falling behind, or the node is shutting down: the client resumes.
                Ok(None) => None,
                Err(_) => Some((
                    Ok(Bytes::from_static(b": keep-alive\n\n")),
                    (receiver, false, open),
                )),
            }
        },
    ));
    let mut response = body.into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // nginx and similar proxies otherwise hold events back in their buffers.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(index: u64) -> Frame {
        Frame {
            index,
            bytes: Bytes::from(format!("c{index}")),
        }
    }

    fn state_at(index: u64) -> impl FnOnce() -> Frame {
        move || Frame {
            index,
            bytes: Bytes::from(format!("s{index}")),
        }
    }

    fn drain(receiver: &mut mpsc::Receiver<Bytes>) -> Vec<String> {
        let mut got = Vec::new();
        while let Ok(bytes) = receiver.try_recv() {
            got.push(String::from_utf8_lossy(&bytes).into_owned());
        }
        got
    }

    #[test]
    fn a_new_subscriber_starts_from_the_state_then_gets_each_later_change_once() {
        let mut feed = LiveFeed::starting_at(10);
        let mut rx = feed.subscribe(None, state_at(12));
        // 11 and 12 are in the state it was sent; 13 is new.
        for i in [11, 12, 13] {
            feed.applied(change(i));
        }
        feed.applied(change(13));
        assert_eq!(drain(&mut rx), ["s12", "c13"]);
    }

    #[test]
    fn a_resuming_subscriber_gets_the_backlog_after_its_id_or_the_state_when_too_old() {
        let mut feed = LiveFeed::starting_at(10);
        for i in 11..=15 {
            feed.applied(change(i));
        }
        let mut resumed = feed.subscribe(Some(13), state_at(99));
        assert_eq!(drain(&mut resumed), ["c14", "c15"]);
        let mut old = feed.subscribe(Some(9), state_at(15));
        assert_eq!(drain(&mut old), ["s15"]);
        // Ahead of this node (it saw 17 elsewhere): nothing until 18.
        let mut ahead = feed.subscribe(Some(17), state_at(99));
        for i in 16..=18 {
            feed.applied(change(i));
        }
        assert_eq!(drain(&mut ahead), ["c18"]);
        assert_eq!(drain(&mut resumed), ["c16", "c17", "c18"]);
    }

    #[test]
    fn the_backlog_is_bounded_and_its_floor_moves_with_it() {
        let mut feed = LiveFeed::starting_at(0);
        for i in 1..=(BACKLOG_ENTRIES as u64 + 10) {
            feed.applied(change(i));
        }
        assert_eq!(feed.backlog.len(), BACKLOG_ENTRIES);
        let mut too_old = feed.subscribe(Some(5), state_at(BACKLOG_ENTRIES as u64 + 10));
        assert_eq!(drain(&mut too_old).len(), 1, "one state, not a gap");
        let mut recent = feed.subscribe(Some(BACKLOG_ENTRIES as u64 + 8), state_at(0));
        assert_eq!(drain(&mut recent).len(), 2);
    }

    #[test]
    fn a_subscriber_that_falls_behind_is_dropped_and_a_closed_one_forgotten() {
        let mut feed = LiveFeed::starting_at(0);
        let _slow = feed.subscribe(Some(0), state_at(0));
        let gone = feed.subscribe(Some(0), state_at(0));
        drop(gone);
        feed.applied(change(1));
        assert_eq!(feed.subscribers(), 1);
        for i in 2..=(SUBSCRIBER_BUFFER as u64) {
            feed.applied(change(i));
        }
        assert_eq!(feed.subscribers(), 1, "exactly full still fits");
        feed.applied(change(SUBSCRIBER_BUFFER as u64 + 1));
        assert_eq!(feed.subscribers(), 0);
    }

    #[test]
    fn a_replaced_state_is_sent_to_everyone_and_the_backlog_restarts_there() {
        let mut feed = LiveFeed::starting_at(0);
        let mut rx = feed.subscribe(Some(0), state_at(0));
        feed.applied(change(1));
        feed.restart(state_at(50));
        feed.applied(change(50));
        feed.applied(change(51));
        assert_eq!(drain(&mut rx), ["c1", "s50", "c51"]);
        let mut gap = feed.subscribe(Some(1), state_at(51));
        assert_eq!(
            drain(&mut gap),
            ["s51"],
            "index 1 is before the replaced state"
        );
    }
}
