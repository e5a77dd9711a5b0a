//! MP3 checks on uploads and reading stored audio.
//!
//! - [`AudioReader`] reads a track's or an upload's audio chunk by chunk (`Read + Seek`) from
//!   the chunk store, so the checks below and playback never hold a whole file in memory.
//! - [`check_head`] rejects an upload that is plainly not MP3 from its first chunk, before the
//!   rest is replicated.
//! - [`analyse`] demuxes every MP3 frame of a complete upload to measure its real playing time,
//!   decodes the first frames to prove it is decodable audio, and reads its ID3 tags (lofty).
//!
//! All of it is blocking work: callers run it on the blocking pool.

use std::io::{self, Read, Seek, SeekFrom};

use lofty::config::ParseOptions;
use lofty::file::{FileType, TaggedFileExt};
use lofty::prelude::Accessor;
use lofty::probe::Probe;
use std::sync::Arc;

use storage::state::tracks::CHUNK_SIZE;
use storage::{ChunkHash, StateReader};
use symphonia::core::codecs::DecoderOptions;
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::FormatOptions;
use symphonia::core::io::{MediaSource, MediaSourceStream};
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

/// How many frames are fully decoded to prove the audio is decodable (the rest is demuxed only,
/// which is enough to measure the duration and ~100× cheaper).
const DECODED_FRAMES: usize = 16;

/// Reads audio of `size` bytes, made of `chunks` in order, from the local chunk store.
#[derive(Clone)]
pub struct AudioReader {
    state: StateReader,
    chunks: Arc<[ChunkHash]>,
    size: u64,
    pos: u64,
    /// The chunk most recently read (sequential reads touch each chunk once).
    cached: Option<(u32, axum::body::Bytes)>,
}

impl AudioReader {
    pub fn new(state: StateReader, chunks: &[ChunkHash], size: u64) -> Self {
        Self {
            state,
            chunks: chunks.into(),
            size,
            pos: 0,
            cached: None,
        }
    }

    /// Chunk `index`, checked against its hash; an error if it is missing or damaged here.
    /// Blocking.
    pub fn chunk(&self, index: u32) -> io::Result<axum::body::Bytes> {
        let hash = self.chunks.get(index as usize).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the audio has no chunk {index}"),
            )
        })?;
        Ok(self.state.chunk(hash)?)
    }
}

impl Read for AudioReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let index = u32::try_from(self.pos / CHUNK_SIZE as u64).map_err(io::Error::other)?;
        let offset = (self.pos % CHUNK_SIZE as u64) as usize;
        let chunk = match &self.cached {
            Some((i, chunk)) if *i == index => chunk.clone(),
            _ => {
                let chunk = self.chunk(index)?;
                self.cached = Some((index, chunk.clone()));
                chunk
            }
        };
        let available = chunk.get(offset..).unwrap_or_default();
        let n = available.len().min(buf.len());
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "audio chunk shorter than the recorded size",
            ));
        }
        buf[..n].copy_from_slice(&available[..n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for AudioReader {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = target
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        Ok(self.pos)
    }
}

impl MediaSource for AudioReader {
    fn is_seekable(&self) -> bool {
        true
    }

    fn byte_len(&self) -> Option<u64> {
        Some(self.size)
    }
}

/// Tag values found in the file, used where the client gave none.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tags {
    pub title: Option<String>,
    pub artist: Option<String>,
    pub album: Option<String>,
    pub genre: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Analysis {
    pub duration_ms: u64,
    pub tags: Tags,
}

/// Why a file is not accepted as MP3; the message is shown to the client with a 415.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotMp3(pub String);

/// Size of a leading ID3v2 tag (0 if none), from its 10-byte header.
fn id3v2_len(head: &[u8]) -> u64 {
    match head {
        [b'I', b'D', b'3', _, _, flags, a, b, c, d, ..] => {
            let size = [*a, *b, *c, *d]
                .iter()
                .fold(0u64, |acc, byte| (acc << 7) | u64::from(byte & 0x7f));
            let footer = if flags & 0x10 != 0 { 10 } else { 0 };
            10 + size + footer
        }
        _ => 0,
    }
}

/// Audio after a leading tag, within the head, that is worth decoding in the quick check: a
/// few frames. Less is left to [`analyse`].
const AUDIO_TO_CHECK: usize = 16 * 1024;

/// Quick check of an upload's first bytes (its first chunk), before the rest is replicated. A
/// head that starts with an ID3v2 tag must have a well-formed tag header and well-formed frame
/// headers as far as the head reaches (a tag of album art can be larger than the head), and
/// decodable audio after the tag if the tag ends early enough; [`analyse`] decides on the
/// whole file. Otherwise "ID3" and 50 MiB of anything would be replicated in full before it
/// was refused.
pub fn check_head(head: &[u8]) -> Result<(), NotMp3> {
    let tag = id3v2_len(head);
    let audio = if tag > 0 {
        check_id3v2(head).map_err(|why| {
            NotMp3(format!(
                "the file starts like an MP3 with ID3 tags, but {why}"
            ))
        })?;
        match usize::try_from(tag) {
            Ok(tag) if tag + AUDIO_TO_CHECK <= head.len() => &head[tag..],
            _ => return Ok(()),
        }
    } else {
        head
    };
    let source = io::Cursor::new(audio.to_vec());
    frames(Box::new(source), None).map(|_| ())
}

/// Checks the header of the ID3v2 tag `head` starts with, and the headers of the frames in it
/// as far as `head` reaches: what garbage behind "ID3" fails at once.
fn check_id3v2(head: &[u8]) -> Result<(), String> {
    let [_, _, _, major, revision, flags, size @ ..] = head.get(..10).unwrap_or_default() else {
        return Err("its tag header is cut short".into());
    };
    if !(2..=4).contains(major) || *revision == 0xFF {
        return Err(format!(
            "its tag version 2.{major}.{revision} does not exist"
        ));
    }
    if size.iter().any(|b| b & 0x80 != 0) {
        return Err("its tag size is malformed".into());
    }
    if flags & 0x40 != 0 {
        // An extended header comes first; rare, and its layout differs by version.
        return Ok(());
    }
    let tag_end = usize::try_from(id3v2_len(head)).unwrap_or(usize::MAX);
    let end = tag_end.min(head.len());
    let (id_len, header_len) = if *major == 2 { (3, 6) } else { (4, 10) };
    let mut at = 10;
    while at + header_len <= end {
        let header = &head[at..at + header_len];
        if header[0] == 0 {
            // Padding: no more frames, and nothing but zeros to the tag's end.
            return match head[at..end].iter().all(|b| *b == 0) {
                true => Ok(()),
                false => Err("its tag padding holds data".into()),
            };
        }
        let id = &header[..id_len];
        if !id
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        {
            return Err(format!(
                "its tag holds a frame with the invalid id {:?}",
                String::from_utf8_lossy(id)
            ));
        }
        let size = match major {
            2 => header[3..6]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b)),
            3 => header[4..8]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b)),
            _ => header[4..8]
                .iter()
                .fold(0usize, |acc, b| (acc << 7) | usize::from(b & 0x7f)),
        };
        if size == 0 || at + header_len + size > tag_end {
            return Err(format!(
                "its tag frame {} claims {size} bytes, beyond the tag",
                String::from_utf8_lossy(id)
            ));
        }
        at += header_len + size;
    }
    Ok(())
}

/// Measures, checks and reads the tags of a complete MP3 of `size` bytes.
pub fn analyse(source: AudioReader) -> Result<Analysis, NotMp3> {
    let mut head = [0u8; 10];
    let head_len = source
        .clone()
        .read(&mut head)
        .map_err(|e| NotMp3(format!("cannot read the upload: {e}")))?;
    // Bytes that are tags, not frames: a leading ID3v2 tag and a trailing ID3v1 tag.
    let tag_bytes = id3v2_len(&head[..head_len]) + 128;
    let audio_bytes = source.size.saturating_sub(tag_bytes);
    let duration_ms = frames(Box::new(source.clone()), Some(audio_bytes))?;
    Ok(Analysis {
        duration_ms,
        tags: read_tags(source),
    })
}

/// Demuxes every frame and decodes the first few; returns the playing time in milliseconds.
/// Given the file's `audio_bytes` (its size without tags), also requires that MP3 frames make up
/// most of them: random bytes contain stray frame headers, real MP3s are frames end to end.
fn frames(source: Box<dyn MediaSource>, audio_bytes: Option<u64>) -> Result<u64, NotMp3> {
    let not_mp3 = |why: &str| NotMp3(format!("the file is not a decodable MP3: {why}"));
    let stream = MediaSourceStream::new(source, Default::default());
    let mut hint = Hint::new();
    hint.with_extension("mp3").mime_type("audio/mpeg");
    let probed = symphonia::default::get_probe()
        .format(
            &hint,
            stream,
            &FormatOptions::default(),
            &MetadataOptions::default(),
        )
        .map_err(|_| not_mp3("no MP3 audio found"))?;
    let mut format = probed.format;
    let track = format
        .default_track()
        .ok_or_else(|| not_mp3("no audio track"))?;
    let (track_id, params) = (track.id, track.codec_params.clone());
    let sample_rate = params
        .sample_rate
        .filter(|r| *r > 0)
        .ok_or_else(|| not_mp3("no sample rate"))?;
    let mut decoder = symphonia::default::get_codecs()
        .make(&params, &DecoderOptions::default())
        .map_err(|_| not_mp3("unsupported codec"))?;
    let (mut samples, mut decoded, mut frame_bytes) = (0u64, 0usize, 0u64);
    loop {
        let packet = match format.next_packet() {
            Ok(packet) => packet,
            Err(SymphoniaError::IoError(e)) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(SymphoniaError::ResetRequired) => break,
            Err(e) if decoded > 0 => {
                tracing::debug!(error = %e, "stopping at an undecodable frame");
                break;
            }
            Err(_) => return Err(not_mp3("no readable MP3 frame")),
        };
        if packet.track_id() != track_id {
            continue;
        }
        if decoded < DECODED_FRAMES {
            decoder
                .decode(&packet)
                .map_err(|_| not_mp3("its frames do not decode"))?;
            decoded += 1;
        }
        samples += packet.dur;
        frame_bytes += packet.data.len() as u64;
    }
    if decoded == 0 || samples == 0 {
        return Err(not_mp3("it contains no audio frames"));
    }
    if audio_bytes.is_some_and(|total| frame_bytes * 2 < total) {
        return Err(not_mp3("most of it is not MP3 frames"));
    }
    Ok(samples.saturating_mul(1000) / u64::from(sample_rate))
}

/// The file's ID3 (or APE) tags; none if it has none or they are unreadable.
fn read_tags(source: AudioReader) -> Tags {
    let options = ParseOptions::new().read_properties(false);
    let file = match Probe::with_file_type(source, FileType::Mpeg)
        .options(options)
        .read()
    {
        Ok(file) => file,
        Err(e) => {
            tracing::debug!(error = %e, "no readable tags");
            return Tags::default();
        }
    };
    let Some(tag) = file.primary_tag().or_else(|| file.first_tag()) else {
        return Tags::default();
    };
    let clean = |v: Option<std::borrow::Cow<'_, str>>| {
        v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
    };
    Tags {
        title: clean(tag.title()),
        artist: clean(tag.artist()),
        album: clean(tag.album()),
        genre: clean(tag.genre()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_garbage_are_not_mp3() {
        assert!(check_head(b"hello, this is a text file and not audio at all\n").is_err());
        let garbage: Vec<u8> = (0..200_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        assert!(check_head(&garbage).is_err());
        assert!(check_head(&[]).is_err());
    }

    /// "ID3" with a huge size and garbage behind it is refused from the first chunk; a real
    /// tagged file, and a tag of album art larger than the head, are let through.
    #[test]
    fn a_fake_id3_head_is_refused_and_real_tags_pass() {
        let mut fake = b"ID3\x04\x00\x00\x18\x7f\x7f\x7f".to_vec();
        fake.extend((0..1_000_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8));
        let err = check_head(&fake).expect_err("garbage behind an ID3 header");
        assert!(err.0.contains("ID3"), "{err}");
        assert!(check_head(b"ID3\x09\x00\x00\x00\x00\x00\x10").is_err());

        let tagged = include_bytes!("../../node/tests/fixtures/tagged-3s.mp3");
        check_head(tagged).expect("a tagged MP3");
        // A 3 MiB picture frame: the tag outlasts a 1 MiB head.
        let art = 3 * 1024 * 1024;
        let syncsafe = |n: usize| {
            [
                (n >> 21) as u8 & 0x7f,
                (n >> 14) as u8 & 0x7f,
                (n >> 7) as u8 & 0x7f,
                n as u8 & 0x7f,
            ]
        };
        let mut big = b"ID3\x04\x00\x00".to_vec();
        big.extend(syncsafe(10 + art));
        big.extend(b"APIC");
        big.extend(syncsafe(art));
        big.extend([0, 0]);
        big.resize(1024 * 1024, 0x55);
        check_head(&big).expect("a tag of album art larger than the head");
    }

    #[test]
    fn id3v2_size_is_syncsafe() {
        assert_eq!(id3v2_len(b"ID3\x04\x00\x00\x00\x00\x02\x01"), 10 + 257);
        assert_eq!(id3v2_len(b"\xff\xfb\x90\x00"), 0);
    }
}
