//! The upload pipeline: a `file` part streamed into replicated chunks of a pending upload, the
//! local copy checked and measured, then the track committed; every other way out drops the
//! pending upload ([`AbortOnDrop`]).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::multipart::{Field, Multipart};
use axum::http::StatusCode;
use raft::Replica;
use storage::state::tracks::CHUNK_SIZE;
use storage::{AudioInfo, Command, Outcome, TrackCommand, TrackMeta};

use super::form::{multipart_error, read_form, too_large, unsupported};
use super::parse_track_id;
use crate::audio::{self, AudioReader};
use crate::error::ApiError;
use crate::{ApiSettings, internal, unexpected, write};

/// Drops a pending upload and its chunks unless disarmed (the upload became a track). Runs on
/// every early exit, including the request future being dropped when the client disconnects.
pub(super) struct AbortOnDrop {
    replica: Replica,
    upload_id: u64,
    armed: bool,
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (replica, upload_id) = (self.replica.clone(), self.upload_id);
        tokio::spawn(async move {
            let cmd = Command::Tracks(TrackCommand::AbortUpload { upload_id });
            match replica.write(cmd, None).await {
                Ok(_) => tracing::info!(upload_id, "dropped an unfinished upload"),
                // The idle-upload sweep will get it.
                Err(e) => {
                    tracing::warn!(upload_id, error = %e, "could not drop an unfinished upload")
                }
            }
        });
    }
}

/// A `file` part stored as a pending upload.
pub(super) struct Received {
    pub(super) upload: AbortOnDrop,
    pub(super) info: AudioInfo,
}

/// Streams the `file` part into replicated chunks.
pub(super) async fn receive_file(
    r: &Replica,
    by: u64,
    field: &mut Field<'_>,
    limit: u64,
    push: bool,
) -> Result<Received, ApiError> {
    let upload_id = match write(
        r,
        Command::Tracks(TrackCommand::BeginUpload { owner: by }),
        None,
    )
    .await?
    {
        Outcome::Id(id) => id,
        other => return Err(unexpected(other)),
    };
    let upload = AbortOnDrop {
        replica: r.clone(),
        upload_id,
        armed: true,
    };
    let mut buf: Vec<u8> = Vec::with_capacity(CHUNK_SIZE);
    let (mut size, mut index) = (0u64, 0u32);
    let mut writing: Option<ChunkWrite> = None;
    loop {
        let piece = field.chunk().await.map_err(multipart_error)?;
        let done = piece.is_none();
        if let Some(piece) = piece {
            size += piece.len() as u64;
            crate::metrics::uploaded(piece.len());
            if size > limit {
                return Err(too_large(limit));
            }
            buf.extend_from_slice(&piece);
        }
        while buf.len() >= CHUNK_SIZE || (done && !buf.is_empty()) {
            let rest = buf.split_off(buf.len().min(CHUNK_SIZE));
            let chunk = std::mem::replace(&mut buf, rest);
            if index == 0 {
                let head = chunk.clone();
                tokio::task::spawn_blocking(move || audio::check_head(&head))
                    .await
                    .map_err(|e| internal(format!("MP3 check failed to run: {e}")))?
                    .map_err(unsupported)?;
            }
            let cmd = TrackCommand::put_chunk(upload_id, index, chunk);
            if push {
                keep_and_push(r, &cmd).await;
            }
            if let Some(previous) = writing.take() {
                previous.finish().await?;
            }
            writing = Some(ChunkWrite::start(r, cmd));
            index += 1;
            buf.reserve(CHUNK_SIZE.saturating_sub(buf.capacity()));
        }
        if done {
            break;
        }
    }
    if let Some(last) = writing.take() {
        last.finish().await?;
    }
    if size == 0 {
        return Err(ApiError::bad_request("the `file` part is empty"));
    }
    Ok(Received {
        upload,
        info: AudioInfo {
            size,
            chunks: index,
            duration_ms: 0,
        },
    })
}

/// A chunk's write, going on while the next chunk is read and pushed: on a slow link each
/// costs round trips, and neither needs the other. One at a time, in order; stopped if the
/// upload is dropped.
struct ChunkWrite(tokio::task::JoinHandle<Result<(), ApiError>>);

impl ChunkWrite {
    fn start(r: &Replica, cmd: TrackCommand) -> Self {
        let r = r.clone();
        Self(tokio::spawn(async move {
            write(&r, Command::Tracks(cmd), None).await.map(drop)
        }))
    }

    async fn finish(mut self) -> Result<(), ApiError> {
        (&mut self.0)
            .await
            .map_err(|e| internal(format!("a chunk write did not finish: {e}")))?
    }
}

impl Drop for ChunkWrite {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Keeps a copy of the chunk here and pushes it to the other nodes, so that its write travels
/// without the bytes (`raft::by_hash`). Best effort: a node without the copy is sent the bytes.
async fn keep_and_push(r: &Replica, cmd: &TrackCommand) {
    let TrackCommand::PutChunk { hash, bytes, .. } = cmd else {
        return;
    };
    let bytes = Bytes::copy_from_slice(bytes);
    if let Err(e) = r.keep_chunk_copy(*hash, bytes.to_vec()).await {
        tracing::warn!(%hash, error = %e, "cannot keep a copy of an uploaded chunk");
    }
    super::push::push_chunk(r, *hash, bytes).await;
}

/// Checks and measures a received file from the local copy of its chunks.
pub(super) async fn analyse(
    r: &Replica,
    received: &mut Received,
) -> Result<audio::Analysis, ApiError> {
    let upload_id = received.upload.upload_id;
    let chunks = r
        .state()
        .read(|s| s.tracks.upload(upload_id).map(|u| u.chunks.clone()))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                "upload_gone",
                format!("upload {upload_id} no longer exists (it was idle too long); upload again"),
            )
        })?;
    let reader = AudioReader::new(r.state().clone(), &chunks, received.info.size);
    let analysis = tokio::task::spawn_blocking(move || audio::analyse(reader))
        .await
        .map_err(|e| internal(format!("MP3 analysis failed to run: {e}")))?
        .map_err(unsupported)?;
    received.info.duration_ms = analysis.duration_ms;
    Ok(analysis)
}

pub(super) async fn upload(
    r: Replica,
    settings: Arc<ApiSettings>,
    by: u64,
    form: Multipart,
    key: Option<String>,
) -> Result<u64, ApiError> {
    let (fields, file) = read_form(&r, by, form, &settings).await?;
    let mut file = file.ok_or_else(|| {
        ApiError::bad_request("the form has no `file` part: attach the MP3 as `file`")
    })?;
    let tags = analyse(&r, &mut file).await?.tags;
    let title = fields
        .title
        .filter(|t| !t.is_empty())
        .or(tags.title)
        .ok_or_else(|| {
            ApiError::bad_request(
                "the track needs a title: give `title` in the metadata (the file has no ID3 title)",
            )
        })?;
    let meta = TrackMeta {
        title,
        artist: fields.artist.or(tags.artist).unwrap_or_default(),
        album: fields.album.or(tags.album).unwrap_or_default(),
        genre: fields.genre.or(tags.genre).unwrap_or_default(),
    };
    let cmd = TrackCommand::Create {
        upload_id: file.upload.upload_id,
        by,
        meta,
        audio: file.info,
    };
    let receipt = r.write(Command::Tracks(cmd), key).await?;
    // Rejected, or a retry of an upload that already succeeded (same Idempotency-Key, which
    // returns the first track): this copy of the file is dropped. (Dropping an upload that
    // became a track is a no-op, so an unknown outcome may safely drop too.)
    file.upload.armed = receipt.applied.deduplicated || receipt.applied.result.is_err();
    match receipt.applied.result? {
        Outcome::Id(id) => Ok(id),
        other => Err(unexpected(other)),
    }
}

pub(super) async fn update(
    r: Replica,
    settings: Arc<ApiSettings>,
    path_id: Option<u64>,
    by: u64,
    form: Multipart,
    key: Option<String>,
) -> Result<(), ApiError> {
    // Refuse early (from the local state) rather than after streaming a file for nothing; the
    // state machine checks again when the change is applied.
    if let Some(id) = path_id {
        check_owner(&r, id, by).await?;
    }
    let (fields, file) = read_form(&r, by, form, &settings).await?;
    let track_id = match (path_id, fields.track_id.as_deref()) {
        (Some(id), _) => id,
        (None, Some(raw)) => parse_track_id(raw)?,
        (None, None) => {
            return Err(ApiError::bad_request(
                "say which track to change: `track_id` in the metadata part",
            ));
        }
    };
    if fields.is_empty() && file.is_none() {
        return Err(ApiError::bad_request(
            "nothing to change: send metadata fields and/or a `file` part",
        ));
    }
    if fields.title.as_deref() == Some("") {
        return Err(ApiError::bad_request("`title` must not be empty"));
    }
    let mut file = file;
    if let Some(received) = &mut file {
        analyse(&r, received).await?;
    }
    let cmd = TrackCommand::Update {
        track_id,
        by,
        title: fields.title,
        artist: fields.artist,
        album: fields.album,
        genre: fields.genre,
        audio: file.as_ref().map(|f| (f.upload.upload_id, f.info)),
    };
    let receipt = r.write(Command::Tracks(cmd), key).await?;
    if let Some(received) = &mut file {
        received.upload.armed = receipt.applied.deduplicated || receipt.applied.result.is_err();
    }
    receipt.applied.result.map(drop).map_err(ApiError::from)
}

pub(super) async fn check_owner(r: &Replica, track_id: u64, by: u64) -> Result<(), ApiError> {
    let owner = crate::read_confirming_absence(r, |s| s.tracks.get(track_id).map(|t| t.owner));
    match owner.await? {
        None => Err(ApiError::not_found(format!(
            "track {track_id} does not exist"
        ))),
        Some(owner) if owner != by => Err(ApiError::forbidden(format!(
            "track {track_id} belongs to another user; only its uploader may change it"
        ))),
        Some(_) => Ok(()),
    }
}
