//! Uploaded tracks and their audio.
//!
//! A track's audio is an ordered list of chunks named by their hash (see [`crate::chunks`]),
//! every chunk but the last exactly [`CHUNK_SIZE`] bytes. An upload is a pending record plus the
//! chunks received so far, in order; `Create`/`Update` turn a complete upload into a track's
//! audio, so the track's metadata is committed last and a track is never visible without all of
//! its audio. A failed upload is aborted; one whose receiver died is aborted once it has been
//! idle for the configured time.
//!
//! Chunk files are counted by the tracks and uploads that name them ([`TracksState::refs`]);
//! an apply reports in [`Changes`] the chunks it stored and the ones nothing names any more, and
//! the state machine writes and removes the files.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use super::{Changes, decode, key_number, numbered_key};
use crate::change_feed::StateChange;
use crate::chunks::ChunkHash;
use crate::codec::CodecError;
use crate::command::{CommandError, ErrorKind, Outcome};

pub const PREFIX: &[u8] = b"t/";
const TRACK: &[u8] = b"t/t/";
const UPLOAD: &[u8] = b"t/u/";
const RESERVED: &[u8] = b"t/r/";
const COUNTERS: &[u8] = b"t/c";

/// The size of every audio chunk but a track's last.
pub const CHUNK_SIZE: usize = 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackMeta {
    pub title: String,
    pub artist: String,
    pub album: String,
    pub genre: String,
}

/// What the receiving node measured about an upload's audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AudioInfo {
    pub size: u64,
    pub chunks: u32,
    /// Playing time measured from the MP3 frames.
    pub duration_ms: u64,
}

impl AudioInfo {
    /// The playing time in whole seconds, rounded to the nearest.
    pub fn seconds(&self) -> u64 {
        self.duration_ms.saturating_add(500) / 1000
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Track {
    pub id: u64,
    pub owner: u64,
    pub meta: TrackMeta,
    pub uploaded_at_ms: u64,
    /// The upload that carried the audio; changes whenever the audio is replaced (an ETag).
    pub blob: u64,
    pub audio: AudioInfo,
    /// The audio, in order.
    pub chunks: Vec<ChunkHash>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upload {
    pub id: u64,
    pub owner: u64,
    /// The chunks received so far, in order.
    pub chunks: Vec<ChunkHash>,
    pub bytes: u64,
    /// When the last chunk (or the start) was applied, by the proposer's clock.
    pub last_activity_ms: u64,
}

#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize)]
struct Counters {
    next_track: u64,
    next_upload: u64,
}

#[derive(Debug, Default)]
pub struct TracksState {
    tracks: BTreeMap<u64, Track>,
    uploads: BTreeMap<u64, Upload>,
    /// Ids used by queue-only tracks (`POST /add_track` with an unknown id): never allocated.
    reserved: BTreeSet<u64>,
    counters: Counters,
    /// How many times tracks and uploads name each chunk (not stored: rebuilt by `load`).
    refs: HashMap<ChunkHash, u32>,
}

/// The chunks a stored track or upload record names (for the chunks a snapshot file needs);
/// nothing for any other record.
pub fn chunks_named_by(key: &[u8], value: &[u8]) -> Result<Vec<ChunkHash>, CodecError> {
    if key_number(key, TRACK).is_some() {
        Ok(decode::<Track>(value)?.chunks)
    } else if key_number(key, UPLOAD).is_some() {
        Ok(decode::<Upload>(value)?.chunks)
    } else {
        Ok(Vec::new())
    }
}

fn err(kind: ErrorKind, message: impl Into<String>) -> CommandError {
    CommandError::new(kind, message)
}

pub(crate) fn no_track(id: u64) -> CommandError {
    err(ErrorKind::NotFound, format!("track {id} does not exist"))
}

fn upload_gone(id: u64) -> CommandError {
    err(
        ErrorKind::UploadGone,
        format!("upload {id} no longer exists (it failed or was idle too long); upload again"),
    )
}

impl TracksState {
    pub fn get(&self, id: u64) -> Option<&Track> {
        self.tracks.get(&id)
    }

    pub fn all(&self) -> impl Iterator<Item = &Track> {
        self.tracks.values()
    }

    pub fn len(&self) -> usize {
        self.tracks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tracks.is_empty()
    }

    pub fn uploads(&self) -> impl Iterator<Item = &Upload> {
        self.uploads.values()
    }

    pub fn upload(&self, id: u64) -> Option<&Upload> {
        self.uploads.get(&id)
    }

    /// Whether a track or an upload names `hash`.
    pub fn names_chunk(&self, hash: &ChunkHash) -> bool {
        self.refs.contains_key(hash)
    }

    /// Every distinct chunk tracks and uploads name.
    pub fn chunks(&self) -> impl Iterator<Item = &ChunkHash> {
        self.refs.keys()
    }

    /// Distinct chunks the state names (tracks' audio plus pending uploads).
    pub fn chunk_count(&self) -> u64 {
        self.refs.len() as u64
    }

    fn add_refs<'a>(&mut self, hashes: impl IntoIterator<Item = &'a ChunkHash>) {
        for hash in hashes {
            *self.refs.entry(*hash).or_default() += 1;
        }
    }

    /// Drops one reference per hash; the chunks left unnamed are reported in `changes`.
    fn drop_refs(&mut self, hashes: &[ChunkHash], changes: &mut Changes) {
        for hash in hashes {
            if let Some(n) = self.refs.get_mut(hash) {
                *n -= 1;
                if *n == 0 {
                    self.refs.remove(hash);
                    changes.release_chunk(*hash);
                }
            }
        }
    }

    /// Rebuilds the reference counts from the tracks and uploads (after `load`).
    pub(crate) fn count_refs(&mut self) {
        let mut refs: HashMap<ChunkHash, u32> = HashMap::new();
        let named = self.tracks.values().flat_map(|t| &t.chunks);
        for hash in named.chain(self.uploads.values().flat_map(|u| &u.chunks)) {
            *refs.entry(*hash).or_default() += 1;
        }
        self.refs = refs;
    }

    /// Keeps `id` from ever being allocated to an upload (a queue-only track uses it).
    pub(crate) fn reserve(&mut self, id: u64, changes: &mut Changes) -> Result<(), CodecError> {
        if !self.tracks.contains_key(&id) && self.reserved.insert(id) {
            changes.put(numbered_key(RESERVED, id), &())?;
        }
        Ok(())
    }

    pub(crate) fn begin_upload(
        &mut self,
        owner: u64,
        at_ms: u64,
        changes: &mut Changes,
    ) -> Result<Outcome, CodecError> {
        let id = self.counters.next_upload.max(1);
        self.counters.next_upload = id + 1;
        let upload = Upload {
            id,
            owner,
            chunks: Vec::new(),
            bytes: 0,
            last_activity_ms: at_ms,
        };
        changes.put(numbered_key(UPLOAD, id), &upload)?;
        changes.put(COUNTERS.to_vec(), &self.counters)?;
        self.uploads.insert(id, upload);
        Ok(Outcome::Id(id))
    }

    pub(crate) fn put_chunk(
        &mut self,
        upload_id: u64,
        index: u32,
        hash: &ChunkHash,
        bytes: &[u8],
        at_ms: u64,
        changes: &mut Changes,
    ) -> Result<Result<Outcome, CommandError>, CodecError> {
        let Some(upload) = self.uploads.get_mut(&upload_id) else {
            return Ok(Err(upload_gone(upload_id)));
        };
        if bytes.is_empty() || bytes.len() > CHUNK_SIZE {
            return Ok(Err(err(
                ErrorKind::Invalid,
                format!(
                    "a chunk must hold 1 to {CHUNK_SIZE} bytes, not {}",
                    bytes.len()
                ),
            )));
        }
        let have = upload.chunks.len();
        if index as usize != have || upload.bytes != have as u64 * CHUNK_SIZE as u64 {
            return Ok(Err(err(
                ErrorKind::Invalid,
                format!(
                    "chunk {index} of upload {upload_id} is out of order (have {have} chunks, {} bytes)",
                    upload.bytes
                ),
            )));
        }
        // The name travels with the bytes so that a peer holding the chunk can be sent the
        // entry without them; every node checks it here, alike.
        if ChunkHash::of(bytes) != *hash {
            return Ok(Err(err(
                ErrorKind::Invalid,
                format!("chunk {index} of upload {upload_id} does not hash to {hash}"),
            )));
        }
        let hash = *hash;
        upload.chunks.push(hash);
        upload.bytes += bytes.len() as u64;
        upload.last_activity_ms = at_ms;
        changes.put(numbered_key(UPLOAD, upload_id), &*upload)?;
        self.add_refs([&hash]);
        changes.store_chunk(hash, bytes);
        Ok(Ok(Outcome::Done))
    }

    /// Checks that `upload_id` is complete, as `audio` describes, and belongs to `by`.
    fn complete_upload(
        &self,
        upload_id: u64,
        by: u64,
        audio: &AudioInfo,
    ) -> Result<(), CommandError> {
        let upload = self
            .uploads
            .get(&upload_id)
            .ok_or_else(|| upload_gone(upload_id))?;
        if upload.owner != by {
            return Err(err(
                ErrorKind::Forbidden,
                "that upload belongs to another user",
            ));
        }
        let have = upload.chunks.len();
        if have == 0 || have != audio.chunks as usize || upload.bytes != audio.size {
            return Err(err(
                ErrorKind::Invalid,
                format!(
                    "upload {upload_id} holds {have} chunks and {} bytes, not the {} chunks and {} bytes announced",
                    upload.bytes, audio.chunks, audio.size
                ),
            ));
        }
        Ok(())
    }

    pub(crate) fn create(
        &mut self,
        upload_id: u64,
        by: u64,
        meta: &TrackMeta,
        audio: &AudioInfo,
        at_ms: u64,
        changes: &mut Changes,
    ) -> Result<Result<Outcome, CommandError>, CodecError> {
        if let Err(e) = self.complete_upload(upload_id, by, audio) {
            return Ok(Err(e));
        }
        let mut id = self.counters.next_track.max(1);
        while self.reserved.contains(&id) || self.tracks.contains_key(&id) {
            id += 1;
        }
        self.counters.next_track = id + 1;
        // The upload's references pass to the track.
        let chunks = self
            .uploads
            .remove(&upload_id)
            .map(|u| u.chunks)
            .unwrap_or_default();
        changes.delete(numbered_key(UPLOAD, upload_id));
        let track = Track {
            id,
            owner: by,
            meta: meta.clone(),
            uploaded_at_ms: at_ms,
            blob: upload_id,
            audio: *audio,
            chunks,
        };
        changes.put(numbered_key(TRACK, id), &track)?;
        changes.put(COUNTERS.to_vec(), &self.counters)?;
        changes.record(StateChange::TrackAdded(track.clone()));
        self.tracks.insert(id, track);
        Ok(Ok(Outcome::Id(id)))
    }

    /// Checks that `by` may change track `track_id`.
    pub(crate) fn check_owner(&self, track_id: u64, by: u64) -> Result<&Track, CommandError> {
        let track = self
            .tracks
            .get(&track_id)
            .ok_or_else(|| no_track(track_id))?;
        if track.owner != by {
            return Err(err(
                ErrorKind::Forbidden,
                format!(
                    "track {track_id} belongs to another user; only its uploader may change it"
                ),
            ));
        }
        Ok(track)
    }

    pub(crate) fn update(
        &mut self,
        update: TrackUpdate<'_>,
        changes: &mut Changes,
    ) -> Result<Result<Outcome, CommandError>, CodecError> {
        let TrackUpdate {
            track_id,
            by,
            fields,
            audio,
        } = update;
        if let Err(e) = self.check_owner(track_id, by) {
            return Ok(Err(e));
        }
        if let Some((upload_id, info)) = audio
            && let Err(e) = self.complete_upload(*upload_id, by, info)
        {
            return Ok(Err(e));
        }
        let Some(mut track) = self.tracks.get(&track_id).cloned() else {
            return Ok(Err(no_track(track_id)));
        };
        let [title, artist, album, genre] = fields;
        for (slot, value) in [
            (&mut track.meta.title, title),
            (&mut track.meta.artist, artist),
            (&mut track.meta.album, album),
            (&mut track.meta.genre, genre),
        ] {
            if let Some(value) = value {
                *slot = value.clone();
            }
        }
        if let Some((upload_id, info)) = audio {
            let replaced = std::mem::take(&mut track.chunks);
            self.drop_refs(&replaced, changes);
            // The upload's references pass to the track.
            if let Some(upload) = self.uploads.remove(upload_id) {
                track.chunks = upload.chunks;
            }
            changes.delete(numbered_key(UPLOAD, *upload_id));
            track.blob = *upload_id;
            track.audio = *info;
        }
        changes.put(numbered_key(TRACK, track_id), &track)?;
        changes.record(StateChange::TrackUpdated(track.clone()));
        self.tracks.insert(track_id, track);
        Ok(Ok(Outcome::Done))
    }

    /// Deletes the track and its audio (the caller removes it from playlists and the queue).
    pub(crate) fn delete(
        &mut self,
        track_id: u64,
        by: u64,
        changes: &mut Changes,
    ) -> Result<Outcome, CommandError> {
        self.check_owner(track_id, by)?;
        if let Some(track) = self.tracks.remove(&track_id) {
            self.drop_refs(&track.chunks, changes);
        }
        changes.delete(numbered_key(TRACK, track_id));
        changes.record(StateChange::TrackRemoved(track_id));
        Ok(Outcome::Done)
    }

    pub(crate) fn abort_upload(&mut self, upload_id: u64, changes: &mut Changes) -> Outcome {
        if let Some(upload) = self.uploads.remove(&upload_id) {
            self.drop_refs(&upload.chunks, changes);
            changes.delete(numbered_key(UPLOAD, upload_id));
        }
        Outcome::Done
    }

    pub(crate) fn abort_idle_uploads(
        &mut self,
        idle_since_ms: u64,
        changes: &mut Changes,
    ) -> Outcome {
        let idle: Vec<u64> = self
            .uploads
            .values()
            .filter(|u| u.last_activity_ms < idle_since_ms)
            .map(|u| u.id)
            .collect();
        for id in idle {
            tracing::info!(upload_id = id, "dropping an idle upload and its chunks");
            self.abort_upload(id, changes);
        }
        Outcome::Done
    }

    pub(crate) fn load(&mut self, key: &[u8], value: &[u8]) -> Result<(), CodecError> {
        if let Some(id) = key_number(key, TRACK) {
            self.tracks.insert(id, decode(value)?);
        } else if let Some(id) = key_number(key, UPLOAD) {
            self.uploads.insert(id, decode(value)?);
        } else if let Some(id) = key_number(key, RESERVED) {
            self.reserved.insert(id);
        } else if key == COUNTERS {
            self.counters = decode(value)?;
        }
        Ok(())
    }
}

/// The arguments of [`TracksState::update`]: `fields` are title, artist, album, genre.
pub(crate) struct TrackUpdate<'a> {
    pub track_id: u64,
    pub by: u64,
    pub fields: [&'a Option<String>; 4],
    pub audio: &'a Option<(u64, AudioInfo)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> TrackMeta {
        TrackMeta {
            title: "t".into(),
            artist: "a".into(),
            album: "b".into(),
            genre: "g".into(),
        }
    }

    fn upload(tracks: &mut TracksState, owner: u64, sizes: &[usize]) -> (u64, AudioInfo) {
        let mut changes = Changes::default();
        let Outcome::Id(id) = tracks.begin_upload(owner, 0, &mut changes).expect("encode") else {
            panic!("no id");
        };
        for (i, size) in sizes.iter().enumerate() {
            let bytes = vec![1u8; *size];
            tracks
                .put_chunk(
                    id,
                    i as u32,
                    &ChunkHash::of(&bytes),
                    &bytes,
                    0,
                    &mut changes,
                )
                .expect("encode")
                .expect("chunk accepted");
        }
        let info = AudioInfo {
            size: sizes.iter().sum::<usize>() as u64,
            chunks: sizes.len() as u32,
            duration_ms: 1000,
        };
        (id, info)
    }

    #[test]
    fn chunks_must_arrive_in_order_and_full_sized() {
        let mut tracks = TracksState::default();
        let (id, _) = upload(&mut tracks, 1, &[100]);
        let mut changes = Changes::default();
        let ten = ChunkHash::of(&[1u8; 10]);
        let after_short = tracks
            .put_chunk(id, 1, &ten, &[1u8; 10], 0, &mut changes)
            .expect("encode");
        assert!(matches!(
            after_short,
            Err(CommandError {
                kind: ErrorKind::Invalid,
                ..
            })
        ));
        let skipped = tracks
            .put_chunk(id, 5, &ten, &[1u8; 10], 0, &mut changes)
            .expect("encode");
        assert!(matches!(
            skipped,
            Err(CommandError {
                kind: ErrorKind::Invalid,
                ..
            })
        ));
    }

    #[test]
    fn a_chunk_is_refused_unless_its_bytes_hash_to_its_name() {
        let mut tracks = TracksState::default();
        let (id, _) = upload(&mut tracks, 1, &[]);
        let mut changes = Changes::default();
        let bytes = [7u8; 10];
        let misnamed = tracks
            .put_chunk(id, 0, &ChunkHash::of(b"other"), &bytes, 0, &mut changes)
            .expect("encode");
        assert!(matches!(
            misnamed,
            Err(CommandError {
                kind: ErrorKind::Invalid,
                ..
            })
        ));
        // Left out in transit and never put back: refused, not applied as an empty chunk.
        let empty = tracks
            .put_chunk(id, 0, &ChunkHash::of(&bytes), &[], 0, &mut changes)
            .expect("encode");
        assert!(matches!(
            empty,
            Err(CommandError {
                kind: ErrorKind::Invalid,
                ..
            })
        ));
        let named = tracks
            .put_chunk(id, 0, &ChunkHash::of(&bytes), &bytes, 0, &mut changes)
            .expect("encode");
        assert!(named.is_ok());
    }

    #[test]
    fn a_track_needs_its_whole_upload_and_skips_reserved_ids() {
        let mut tracks = TracksState::default();
        let mut changes = Changes::default();
        tracks.reserve(1, &mut changes).expect("encode");
        let (id, info) = upload(&mut tracks, 7, &[CHUNK_SIZE, 5]);
        let short = AudioInfo { chunks: 1, ..info };
        let r = tracks
            .create(id, 7, &meta(), &short, 0, &mut changes)
            .expect("encode");
        assert!(matches!(
            r,
            Err(CommandError {
                kind: ErrorKind::Invalid,
                ..
            })
        ));
        let r = tracks
            .create(id, 8, &meta(), &info, 0, &mut changes)
            .expect("encode");
        assert!(matches!(
            r,
            Err(CommandError {
                kind: ErrorKind::Forbidden,
                ..
            })
        ));
        let r = tracks
            .create(id, 7, &meta(), &info, 0, &mut changes)
            .expect("encode");
        assert_eq!(r, Ok(Outcome::Id(2)), "id 1 is reserved by the queue");
        assert_eq!(tracks.uploads().count(), 0);
        assert_eq!(tracks.chunk_count(), 2);
    }

    #[test]
    fn idle_uploads_are_dropped_with_their_chunks() {
        let mut tracks = TracksState::default();
        upload(&mut tracks, 1, &[CHUNK_SIZE, CHUNK_SIZE]);
        let mut changes = Changes::default();
        tracks.abort_idle_uploads(1, &mut changes);
        assert_eq!(tracks.uploads().count(), 0);
        assert_eq!(tracks.chunk_count(), 0);
        assert_eq!(
            changes.chunks_released().len(),
            1,
            "one distinct chunk released"
        );
    }

    #[test]
    fn a_chunk_is_released_when_the_last_track_naming_it_goes() {
        let mut tracks = TracksState::default();
        let mut changes = Changes::default();
        let (a, info) = upload(&mut tracks, 1, &[CHUNK_SIZE, 5]);
        let a = tracks
            .create(a, 1, &meta(), &info, 0, &mut changes)
            .expect("encode");
        let (b, info) = upload(&mut tracks, 1, &[CHUNK_SIZE, 5]);
        let b = tracks
            .create(b, 1, &meta(), &info, 0, &mut changes)
            .expect("encode");
        let (Ok(Outcome::Id(a)), Ok(Outcome::Id(b))) = (a, b) else {
            panic!("tracks not created");
        };
        assert_eq!(
            tracks.chunk_count(),
            2,
            "the same file twice names two chunks"
        );
        let mut changes = Changes::default();
        tracks.delete(a, 1, &mut changes).expect("delete");
        assert!(
            changes.chunks_released().is_empty(),
            "still named by the other"
        );
        tracks.delete(b, 1, &mut changes).expect("delete");
        assert_eq!(changes.chunks_released().len(), 2);
        assert_eq!(tracks.chunk_count(), 0);
    }
}
