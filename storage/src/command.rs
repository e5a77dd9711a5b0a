//! The replicated data model: what goes into a Raft log entry and what applying it returns.
//!
//! Everything here must be deterministic: every node applies the same entries in the same order
//! and must reach the same state, so a [`Request`] carries everything `apply` needs (including
//! the wall-clock time, chosen once by the node that proposed it).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::chunks::ChunkHash;
use crate::state::queue::{PlayedTrack, QueuedTrack};
use crate::state::tracks::{AudioInfo, TrackMeta};

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
    Users(UserCommand),
    Tracks(TrackCommand),
    Playlists(PlaylistCommand),
    /// Several writes in one log entry, applied in order, each as if it were an entry of its
    /// own (its own dedupe key and time); answered with [`Outcome::Batch`]. The leader groups
    /// concurrent small writes like this so that they share one append, one fsync and one
    /// replication slot. Never nested.
    Batch(Vec<Request>),
}

impl Request {
    /// Roughly how many bytes this write takes on the wire: the audio it carries plus a small
    /// allowance for everything else (which is a few hundred bytes at most). Used to keep
    /// replication frames small without encoding entries twice.
    pub fn approx_size(&self) -> usize {
        const SMALL: usize = 256;
        match &self.command {
            Command::Tracks(TrackCommand::PutChunk { bytes, .. }) => bytes.len() + SMALL,
            Command::Batch(requests) => requests.iter().map(Request::approx_size).sum(),
            _ => SMALL,
        }
    }

    /// The audio chunk this write carries, if it is a `PutChunk`: its name and its bytes.
    pub fn audio(&self) -> Option<(ChunkHash, &[u8])> {
        match &self.command {
            Command::Tracks(TrackCommand::PutChunk { hash, bytes, .. }) => Some((*hash, bytes)),
            _ => None,
        }
    }

    /// Whether this is a `PutChunk` with its bytes.
    pub fn carries_audio(&self) -> bool {
        self.audio().is_some_and(|(_, bytes)| !bytes.is_empty())
    }

    /// Whether this is a `PutChunk` whose bytes were left out ([`Self::without_audio`]).
    pub fn audio_left_out(&self) -> bool {
        self.audio().is_some_and(|(_, bytes)| bytes.is_empty())
    }

    /// [`Self::audio`], to put the bytes back or leave them out.
    pub fn audio_mut(&mut self) -> Option<(ChunkHash, &mut Vec<u8>)> {
        match &mut self.command {
            Command::Tracks(TrackCommand::PutChunk { hash, bytes, .. }) => Some((*hash, bytes)),
            _ => None,
        }
    }

    /// A copy without the audio chunk's bytes (a `PutChunk` with none; anything else is
    /// copied whole), for a peer that holds the chunk already: it puts the bytes back from its
    /// own store by hash before the write goes any further. A chunk is never empty, so an empty
    /// `PutChunk` is always one whose bytes were left out (and `apply` refuses it).
    pub fn without_audio(&self) -> Self {
        match &self.command {
            Command::Tracks(TrackCommand::PutChunk {
                upload_id,
                index,
                hash,
                ..
            }) => Self {
                dedupe_key: self.dedupe_key.clone(),
                at_ms: self.at_ms,
                command: Command::Tracks(TrackCommand::PutChunk {
                    upload_id: *upload_id,
                    index: *index,
                    hash: *hash,
                    bytes: Vec::new(),
                }),
            },
            _ => self.clone(),
        }
    }
}

/// The voting queue's writes (seed 004).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueueCommand {
    /// Queues track `id`. If an uploaded track has that id, its metadata is used and the fields
    /// here may be absent; otherwise all three are required and the id is reserved so that no
    /// upload ever gets it.
    ///
    /// `by` is the signed-in user who queues it (`None`: anonymous). With `max_per_user` > 0 a
    /// user may have at most that many tracks in the queue at once, and anonymous adds are
    /// refused (the limit could not be kept); the proposing node's setting travels in the
    /// command so every node decides alike.
    Add {
        id: u64,
        title: Option<String>,
        artist: Option<String>,
        duration: Option<u32>,
        by: Option<u64>,
        max_per_user: u32,
    },
    Remove {
        id: u64,
    },
    /// A signed-in user (`by`) has one vote per queued track: the same vote again changes
    /// nothing, the other one replaces it. An anonymous vote (`None`) adds or subtracts one
    /// each time, as in the seed.
    Vote {
        id: u64,
        up: bool,
        by: Option<u64>,
    },
    /// Takes back `by`'s vote for track `id` (nothing changes if there is none).
    Unvote {
        id: u64,
        by: u64,
    },
    /// `by` votes to skip the playing track (the last one played); once `needed` distinct
    /// users have, the next track is played, exactly once.
    Skip {
        by: u64,
        needed: u32,
    },
    PlayNext,
    Clear,
}

/// Users and the cluster-wide token signing key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum UserCommand {
    /// `password_hash` is an argon2id PHC string, computed before proposing (never in `apply`).
    Register {
        username: String,
        email: String,
        password_hash: String,
    },
    /// `by` is the authenticated caller; only the user may delete themself.
    Delete { user_id: u64, by: u64 },
    /// Sets the JWT signing key if the cluster has none yet; later proposals are no-ops, so
    /// every node ends up with the first key committed.
    InitSigningKey {
        #[serde(with = "crate::codec::bytes")]
        key: Vec<u8>,
    },
}

/// Uploads and tracks. Audio arrives as numbered chunks of one pending upload; a track only
/// becomes visible with `Create` (or gets new audio with `Update`) once every chunk is applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TrackCommand {
    BeginUpload {
        owner: u64,
    },
    /// Chunk `index` (0-based, in order) of an upload; at most [`crate::state::tracks::CHUNK_SIZE`].
    /// `hash` names `bytes` (checked by `apply`); it lets a node send the entry without its
    /// bytes to a peer that already holds the chunk (see [`Request::without_audio`]). Build
    /// one with [`TrackCommand::put_chunk`].
    PutChunk {
        upload_id: u64,
        index: u32,
        hash: ChunkHash,
        #[serde(with = "crate::codec::bytes")]
        bytes: Vec<u8>,
    },
    /// Turns a complete upload into a new track.
    Create {
        upload_id: u64,
        by: u64,
        meta: TrackMeta,
        audio: AudioInfo,
    },
    /// Replaces metadata fields given and, with `audio`, the audio (from a complete upload).
    Update {
        track_id: u64,
        by: u64,
        title: Option<String>,
        artist: Option<String>,
        album: Option<String>,
        genre: Option<String>,
        audio: Option<(u64, AudioInfo)>,
    },
    Delete {
        track_id: u64,
        by: u64,
    },
    /// Drops a pending upload and its chunks (the upload failed or was rejected).
    AbortUpload {
        upload_id: u64,
    },
    /// Drops every pending upload with no chunk since `idle_since_ms` (its receiver died).
    AbortIdleUploads {
        idle_since_ms: u64,
    },
}

impl TrackCommand {
    /// Chunk `index` of upload `upload_id`, named by the hash of `bytes`.
    pub fn put_chunk(upload_id: u64, index: u32, bytes: Vec<u8>) -> Self {
        Self::PutChunk {
            upload_id,
            index,
            hash: ChunkHash::of(&bytes),
            bytes,
        }
    }
}

/// Playlists (one per user). `by` is the authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PlaylistCommand {
    Add {
        user_id: u64,
        track_id: u64,
        by: u64,
    },
    Remove {
        user_id: u64,
        track_id: u64,
        by: u64,
    },
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
    /// The id the cluster allocated (user, upload or track).
    Id(u64),
    /// A skip vote counted: `votes` of `needed` users want the playing track skipped;
    /// `played` is the track that replaced it when this vote reached `needed`.
    Skip {
        votes: u32,
        needed: u32,
        played: Option<PlayedTrack>,
    },
    /// One response per write of a [`Command::Batch`], in order.
    Batch(Vec<Applied>),
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
    /// The request contradicts the state (e.g. a chunk out of order, a missing field).
    Invalid,
    UsernameTaken,
    EmailTaken,
    /// The caller is authenticated but not allowed to change this.
    Forbidden,
    /// The upload no longer exists (aborted after being idle too long).
    UploadGone,
    /// The user already has `max_tracks_per_user` tracks in the queue.
    QueueLimit,
    /// The write needs a signed-in user (a fair-queue rule counts per user).
    SignInRequired,
    /// Nothing has been played yet, so there is nothing to skip.
    NothingPlaying,
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
pub struct Applied {
    pub result: Result<Outcome, CommandError>,
    /// True when this entry was a retry of an already-applied dedupe key: `result` is the first
    /// application's result and nothing changed.
    pub deduplicated: bool,
}

impl Applied {
    pub fn done() -> Self {
        Self {
            result: Ok(Outcome::Done),
            deduplicated: false,
        }
    }
}

/// What a write's caller reads from the state right after the write. The leader reads it once
/// its apply of the write has answered and sends it with its reply, so the node that took the
/// request can answer without applying the entry itself first: it would wait for the commit to
/// reach it and for its own log flush, where the commit needs only the leader and any one
/// follower (bench/RESULTS.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadBack {
    /// The voting queue, in play order.
    Queue,
    /// Nothing: the caller only needs to know the write is applied (on the leader), not to
    /// wait for this node to apply it (`Prefer: return=minimal`).
    Nothing,
}

/// The answer to a [`ReadBack`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadBackValue {
    Queue(Vec<QueuedTrack>),
    Nothing,
}

impl ReadBack {
    pub fn read(self, state: &crate::state::State) -> ReadBackValue {
        match self {
            ReadBack::Queue => ReadBackValue::Queue(state.queue.queue()),
            ReadBack::Nothing => ReadBackValue::Nothing,
        }
    }
}
