//! The replicated data model: what goes into a Raft log entry and what applying it returns.
//!
//! Everything here must be deterministic: every node applies the same entries in the same order
//! and must reach the same state, so a [`Request`] carries everything `apply` needs (including
//! the wall-clock time, chosen once by the node that proposed it).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::state::queue::{PlayedTrack, QueuedTrack};

/// One Raft log entry's payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Identifies the write for deduplication: a forwarded write carries `fwd:<origin>:<boot>:<seq>`,
    /// a client's `Idempotency-Key` becomes `idem:<scope>:<key>`. A retry with the same key returns
    /// the first result and is not applied again.
    pub dedupe_key: Option<String>,
    /// Milliseconds since the Unix epoch when the write was accepted; used for `played_at`.
    pub at_ms: u64,
    pub command: Command,
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.command)
    }
}

/// A change to the replicated state, grouped by domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Queue(QueueCommand),
}

/// The voting queue's writes (seed 004).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueueCommand {
    Add {
        id: u64,
        title: String,
        artist: String,
        duration: u32,
    },
    Remove {
        id: u64,
    },
    Vote {
        id: u64,
        up: bool,
    },
    PlayNext,
    Clear,
}

/// What applying a command produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Applied; nothing to report beyond success (membership and blank entries too).
    Done,
    /// The track as it is after the command (add, vote).
    Track(QueuedTrack),
    /// The track `play_next` moved from the queue to the history.
    Played(PlayedTrack),
}

/// Why a command was rejected by the state machine. Rejections are deterministic and replicated
/// like successes, so every node reports the same one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct CommandError {
    pub kind: ErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    NotFound,
    AlreadyQueued,
    QueueEmpty,
}

impl CommandError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// The state machine's answer to one entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub result: Result<Outcome, CommandError>,
    /// True when this entry was a retry of an already-applied dedupe key: `result` is the first
    /// application's result and nothing changed.
    pub deduplicated: bool,
}

impl Response {
    pub fn done() -> Self {
        Self {
            result: Ok(Outcome::Done),
            deduplicated: false,
        }
    }
}
