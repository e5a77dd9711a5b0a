//! The replicated domain state: kept in memory for reads, persisted in the `sm` sled tree.
//!
//! `apply` is the only writer. It mutates the in-memory state and records the same change as a
//! key/value write in [`Changes`]; the state machine commits those writes together with
//! `last_applied` in one atomic sled batch, so what is on disk always describes exactly one log
//! position. On start the in-memory state is rebuilt from the tree ([`State::load`]).
//!
//! Keys are `<domain prefix>/<key>`: each domain module owns its prefixes. Audio is not state:
//! a track names its chunks by hash, and [`Changes`] tells the state machine which chunk files
//! an apply stored and which no track or upload names any more (see [`tracks`], `chunks`).

pub mod dedupe;
pub mod playlists;
pub mod queue;
pub mod tracks;
pub mod users;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::change_feed::StateChange;
use crate::chunks::ChunkHash;
use crate::codec::{self, CodecError};
use crate::command::{
    Applied, Command, CommandError, ErrorKind, Outcome, PlaylistCommand, QueueCommand, Request,
    TrackCommand, UserCommand,
};
use dedupe::DedupeTable;
use playlists::PlaylistsState;
use queue::QueueState;
use tracks::{TrackUpdate, TracksState};
use users::UsersState;

/// What applying entries changed: key/value writes for the `sm` tree, committed atomically by
/// the state machine, and the chunk files to store (from the entry's bytes) or to let go.
#[derive(Default)]
pub struct Changes {
    writes: crate::sm_writer::Writes,
    /// Chunks an upload now names, with their bytes (from the applied entry).
    stored: Vec<(ChunkHash, Vec<u8>)>,
    /// Chunks no track or upload names any more.
    released: Vec<ChunkHash>,
    /// What watchers see changed (see `change_feed`).
    visible: Vec<StateChange>,
}

impl Changes {
    pub(crate) fn store_chunk(&mut self, hash: ChunkHash, bytes: &[u8]) {
        self.stored.push((hash, bytes.to_vec()));
    }

    pub(crate) fn release_chunk(&mut self, hash: ChunkHash) {
        self.released.push(hash);
    }

    pub(crate) fn record(&mut self, change: StateChange) {
        self.visible.push(change);
    }

    /// The visible changes recorded since the last call.
    pub fn take_visible(&mut self) -> Vec<StateChange> {
        std::mem::take(&mut self.visible)
    }

    /// The chunks stored since the last call.
    pub fn take_stored_chunks(&mut self) -> Vec<(ChunkHash, Vec<u8>)> {
        std::mem::take(&mut self.stored)
    }

    /// Chunks released so far.
    pub fn chunks_released(&self) -> &[ChunkHash] {
        &self.released
    }

    /// The chunks released since the last call.
    pub fn take_released_chunks(&mut self) -> Vec<ChunkHash> {
        std::mem::take(&mut self.released)
    }

    pub fn put<T: Serialize>(&mut self, key: Vec<u8>, value: &T) -> Result<(), CodecError> {
        self.writes.insert(key, Some(codec::encode(value)?));
        Ok(())
    }

    pub fn delete(&mut self, key: Vec<u8>) {
        self.writes.insert(key, None);
    }

    /// The `sm` writes, in key order (`None` deletes).
    pub fn into_writes(self) -> crate::sm_writer::Writes {
        self.writes
    }
}

/// `prefix` followed by a big-endian number, so keys sort numerically.
pub(crate) fn numbered_key(prefix: &[u8], n: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + 8);
    key.extend_from_slice(prefix);
    key.extend_from_slice(&n.to_be_bytes());
    key
}

pub(crate) fn key_number(key: &[u8], prefix: &[u8]) -> Option<u64> {
    let rest = key.strip_prefix(prefix)?;
    Some(u64::from_be_bytes(rest.try_into().ok()?))
}

/// Everything the cluster agrees on, as of one log position.
#[derive(Debug, Default)]
pub struct State {
    pub queue: QueueState,
    pub users: UsersState,
    pub tracks: TracksState,
    pub playlists: PlaylistsState,
    pub dedupe: DedupeTable,
}

impl State {
    /// Applies one request. Deterministic: the result depends only on the state and `req`.
    pub fn apply(&mut self, req: &Request, changes: &mut Changes) -> Result<Applied, CodecError> {
        let Command::Batch(requests) = &req.command else {
            return self.apply_one(req, changes);
        };
        let mut responses = Vec::with_capacity(requests.len());
        for inner in requests {
            responses.push(self.apply_one(inner, changes)?);
        }
        Ok(Applied {
            result: Ok(Outcome::Batch(responses)),
            deduplicated: false,
        })
    }

    /// Stores what the requests applied since the last call keep only in memory so far (the
    /// dedupe records, grouped). Call once per applied batch, before writing `changes`.
    pub fn finish_batch(&mut self, changes: &mut Changes) -> Result<(), CodecError> {
        self.dedupe.seal(changes)
    }

    fn apply_one(&mut self, req: &Request, changes: &mut Changes) -> Result<Applied, CodecError> {
        if let Some(key) = &req.dedupe_key
            && let Some(first) = self.dedupe.get(key)
        {
            return Ok(Applied {
                result: first.result.clone(),
                deduplicated: true,
            });
        }
        let at_ms = req.at_ms;
        let result = match &req.command {
            Command::Queue(cmd) => self.apply_queue(cmd, at_ms, changes)?,
            Command::Users(cmd) => self.apply_users(cmd, at_ms, changes)?,
            Command::Tracks(cmd) => self.apply_tracks(cmd, at_ms, changes)?,
            Command::Playlists(cmd) => self.apply_playlists(cmd, changes)?,
            Command::Batch(_) => Err(CommandError::new(
                ErrorKind::Invalid,
                "a batch of writes cannot contain another batch",
            )),
        };
        let response = Applied {
            result,
            deduplicated: false,
        };
        if let Some(key) = &req.dedupe_key {
            self.dedupe.record(key.clone(), response.clone(), changes);
        }
        Ok(response)
    }

    fn apply_queue(
        &mut self,
        cmd: &QueueCommand,
        at_ms: u64,
        changes: &mut Changes,
    ) -> Result<Result<Outcome, CommandError>, CodecError> {
        let QueueCommand::Add {
            id,
            title,
            artist,
            duration,
            by,
            max_per_user,
        } = cmd
        else {
            return self.queue.apply(cmd, at_ms, changes);
        };
        // An uploaded track is queued as uploaded; any other id becomes a queue-only track
        // whose id no upload will ever get.
        let (resolved, queue_only) = match self.tracks.get(*id) {
            Some(track) => (
                QueueCommand::Add {
                    id: *id,
                    title: Some(track.meta.title.clone()),
                    artist: Some(track.meta.artist.clone()),
                    duration: Some(u32::try_from(track.audio.seconds()).unwrap_or(u32::MAX)),
                    by: *by,
                    max_per_user: *max_per_user,
                },
                false,
            ),
            None if title.is_some() && artist.is_some() && duration.is_some() => {
                (cmd.clone(), true)
            }
            None => {
                return Ok(Err(CommandError::new(
                    ErrorKind::Invalid,
                    format!(
                        "no uploaded track has id {id}: give `title`, `artist` and `duration` to queue it anyway"
                    ),
                )));
            }
        };
        let result = self.queue.apply(&resolved, at_ms, changes)?;
        if queue_only && result.is_ok() {
            self.tracks.reserve(*id, changes)?;
        }
        Ok(result)
    }

    fn apply_users(
        &mut self,
        cmd: &UserCommand,
        at_ms: u64,
        changes: &mut Changes,
    ) -> Result<Result<Outcome, CommandError>, CodecError> {
        Ok(match cmd {
            UserCommand::Register {
                username,
                email,
                password_hash,
            } => {
                return self
                    .users
                    .register(username, email, password_hash, at_ms, changes);
            }
            UserCommand::Delete { user_id, by } => {
                let deleted = self.users.delete(*user_id, *by, changes);
                if deleted.is_ok() {
                    self.playlists.delete_user(*user_id, changes);
                }
                deleted
            }
            UserCommand::InitSigningKey { key } => Ok(self.users.init_signing_key(key, changes)?),
        })
    }

    fn apply_tracks(
        &mut self,
        cmd: &TrackCommand,
        at_ms: u64,
        changes: &mut Changes,
    ) -> Result<Result<Outcome, CommandError>, CodecError> {
        Ok(match cmd {
            TrackCommand::BeginUpload { owner } => {
                Ok(self.tracks.begin_upload(*owner, at_ms, changes)?)
            }
            TrackCommand::PutChunk {
                upload_id,
                index,
                hash,
                bytes,
            } => {
                return self
                    .tracks
                    .put_chunk(*upload_id, *index, hash, bytes, at_ms, changes);
            }
            TrackCommand::Create {
                upload_id,
                by,
                meta,
                audio,
            } => {
                return self
                    .tracks
                    .create(*upload_id, *by, meta, audio, at_ms, changes);
            }
            TrackCommand::Update {
                track_id,
                by,
                title,
                artist,
                album,
                genre,
                audio,
            } => {
                let update = TrackUpdate {
                    track_id: *track_id,
                    by: *by,
                    fields: [title, artist, album, genre],
                    audio,
                };
                return self.tracks.update(update, changes);
            }
            TrackCommand::Delete { track_id, by } => {
                let deleted = self.tracks.delete(*track_id, *by, changes);
                if deleted.is_ok() {
                    self.playlists.remove_everywhere(*track_id, changes)?;
                    self.queue.remove_deleted_track(*track_id, changes);
                }
                deleted
            }
            TrackCommand::AbortUpload { upload_id } => {
                Ok(self.tracks.abort_upload(*upload_id, changes))
            }
            TrackCommand::AbortIdleUploads { idle_since_ms } => {
                Ok(self.tracks.abort_idle_uploads(*idle_since_ms, changes))
            }
        })
    }

    fn apply_playlists(
        &mut self,
        cmd: &PlaylistCommand,
        changes: &mut Changes,
    ) -> Result<Result<Outcome, CommandError>, CodecError> {
        let (PlaylistCommand::Add {
            user_id,
            track_id,
            by,
        }
        | PlaylistCommand::Remove {
            user_id,
            track_id,
            by,
        }) = cmd;
        if self.users.get(*user_id).is_none() {
            return Ok(Err(users::no_user(*user_id)));
        }
        if by != user_id {
            return Ok(Err(CommandError::new(
                ErrorKind::Forbidden,
                format!("you can only change your own playlist, not user {user_id}'s"),
            )));
        }
        match cmd {
            PlaylistCommand::Add { .. } => {
                if self.tracks.get(*track_id).is_none() {
                    return Ok(Err(tracks::no_track(*track_id)));
                }
                Ok(Ok(self.playlists.add(*user_id, *track_id, changes)?))
            }
            PlaylistCommand::Remove { .. } => self.playlists.remove(*user_id, *track_id, changes),
        }
    }

    /// Rebuilds the state from the `sm` tree (ignores the state machine's own `m/` keys).
    pub fn load(tree: &sled::Tree) -> Result<Self, LoadError> {
        let mut state = State::default();
        for item in tree.iter() {
            let (key, value) = item?;
            state.load_record(&key, &value)?;
        }
        state.tracks.count_refs();
        Ok(state)
    }

    fn load_record(&mut self, key: &[u8], value: &[u8]) -> Result<(), LoadError> {
        let loaded = if key.starts_with(queue::PREFIX) {
            self.queue.load(key, value)
        } else if key.starts_with(users::PREFIX) {
            self.users.load(key, value)
        } else if key.starts_with(tracks::PREFIX) {
            self.tracks.load(key, value)
        } else if key.starts_with(playlists::PREFIX) {
            self.playlists.load(key, value)
        } else if key.starts_with(dedupe::PREFIX) {
            self.dedupe.load(key, value)
        } else {
            Ok(())
        };
        loaded
            .map_err(|e| LoadError::Decode(format!("key {:?}: {e}", String::from_utf8_lossy(key))))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Sled(#[from] sled::Error),
    #[error("{0}")]
    Decode(String),
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    codec::decode(bytes)
}
