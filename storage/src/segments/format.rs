//! One segment file's format: the header ([`MAGIC`], [`FORMAT_VERSION`]), the records
//! (`len | crc32 | bincode(entry)`), and reading a file back: finding its records, where it was
//! torn, and whether it is a segment of this format at all.

use std::fs::File;
use std::io::{self, Read, Seek};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use super::{Segment, preallocate};
use crate::codec;
use crate::types::Entry;

/// The start of every segment file, before its format version.
pub(super) const MAGIC: &[u8; 7] = b"CHRSLOG";
/// The version of the segment format: the header, the records and the encoding of the entries
/// in them. Raise it with any change to one of these.
pub(crate) const FORMAT_VERSION: u8 = 1;
/// Bytes of a segment's header ([`MAGIC`] and [`FORMAT_VERSION`]); the first record follows.
pub(super) const FILE_HEADER: u64 = 8;
/// Bytes of a record's header (length and checksum).
pub(super) const RECORD_HEADER: usize = 8;

pub(super) fn corrupt(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// Splits one checked record off the front of `bytes`: its payload and what follows.
pub(super) fn split_record(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let header = bytes.get(..RECORD_HEADER)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().ok()?);
    let payload = bytes.get(RECORD_HEADER..RECORD_HEADER + len)?;
    (crc32fast::hash(payload) == crc).then(|| (payload, &bytes[RECORD_HEADER + len..]))
}

pub(super) fn encode_record(entry: &Entry, out: &mut Vec<u8>) -> io::Result<()> {
    let payload = codec::encode(entry).map_err(io::Error::other)?;
    let len = u32::try_from(payload.len())
        .map_err(|_| io::Error::other("a log entry is larger than 4 GiB"))?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(())
}

/// Reads a segment's record offsets. Its records end at a zero header or the end of the file.
/// In the last segment a damaged record ends the log (a write the crash interrupted, never
/// acknowledged); the file is cut after its records and preallocated again, so nothing a crash
/// left there survives into a segment that is no longer last. Elsewhere a damaged record is an
/// error. Only the last segment's checksums are verified here; the others are checked as they
/// are read.
pub(super) fn scan(
    path: &Path,
    first: u64,
    is_last: bool,
    segment_bytes: u64,
) -> io::Result<Segment> {
    let mut file = File::options().read(true).write(true).open(path)?;
    let (offsets, at, damaged) = match read_header(&file, path)? {
        Header::Valid => walk(&mut file, is_last)?,
        Header::Blank if is_last => {
            tracing::warn!(
                path = %path.display(),
                "the last log segment was never synced (a crash right after it was created); it starts empty"
            );
            file.write_all_at(&file_header(), 0)?;
            (Vec::new(), FILE_HEADER, false)
        }
        Header::Blank => {
            return Err(corrupt(format!(
                "log segment {} has no header; it is not the last segment, so this is not an interrupted write: delete the data directory and start the node again to let it catch up from the cluster (or, if every node lost its data, seed a new cluster with `chorus restore`)",
                path.display()
            )));
        }
    };
    if damaged {
        if !is_last {
            return Err(corrupt(format!(
                "log segment {} is damaged at byte {at}; it is not the last segment, so this is not an interrupted write: delete the data directory and start the node again to let it catch up from the cluster (or, if every node lost its data, seed a new cluster with `chorus restore`)",
                path.display()
            )));
        }
        tracing::warn!(
            path = %path.display(),
            at,
            "dropping the torn tail of the log (a write interrupted by a crash)"
        );
    }
    let size = file.metadata()?.len();
    // Past the records of the last segment there may be bytes of a write a crash interrupted
    // (its header page lost, later pages written): cut them, whatever the header said.
    if is_last && !(size == at && at >= segment_bytes) {
        file.set_len(at)?;
        preallocate(&file, at, segment_bytes)?;
        file.sync_all()?;
    }
    Ok(Segment {
        file: Arc::new(file),
        path: path.to_path_buf(),
        first,
        offsets,
        end: at,
    })
}

/// How many whole, checksummed records `path` starts with, if a damaged one follows them. A
/// segment whose header never reached the disk was never synced, so none of it counts.
pub(super) fn torn_after(path: &Path) -> io::Result<Option<u64>> {
    let mut file = File::open(path)?;
    match read_header(&file, path)? {
        Header::Blank => Ok(Some(0)),
        Header::Valid => {
            let (offsets, _, damaged) = walk(&mut file, true)?;
            Ok(damaged.then_some(offsets.len() as u64))
        }
    }
}

/// The header every segment starts with.
pub(super) fn file_header() -> [u8; FILE_HEADER as usize] {
    let mut header = [0; FILE_HEADER as usize];
    header[..MAGIC.len()].copy_from_slice(MAGIC);
    header[MAGIC.len()] = FORMAT_VERSION;
    header
}

/// What a segment's first bytes are.
#[derive(Debug, PartialEq)]
enum Header {
    /// A segment of this format.
    Valid,
    /// Zeros (or nothing): the header never reached the disk.
    Blank,
}

/// Reads the header of segment `path`; another format version, or a file that is not a segment,
/// is an error saying which.
fn read_header(file: &File, path: &Path) -> io::Result<Header> {
    let size = file.metadata()?.len().min(FILE_HEADER);
    let mut header = [0u8; FILE_HEADER as usize];
    file.read_exact_at(&mut header[..size as usize], 0)?;
    if header.iter().all(|&b| b == 0) {
        return Ok(Header::Blank);
    }
    if size < FILE_HEADER || header[..MAGIC.len()] != MAGIC[..] {
        return Err(corrupt(format!(
            "{} is not a chorus log segment (it starts with {:02x?}, not {MAGIC:02x?})",
            path.display(),
            &header[..size as usize]
        )));
    }
    let version = header[MAGIC.len()];
    if version != FORMAT_VERSION {
        return Err(corrupt(format!(
            "log segment {} is in log format v{version}, and this build of chorus reads only v{FORMAT_VERSION}",
            path.display()
        )));
    }
    Ok(Header::Valid)
}

/// Walks the records of a segment whose header was checked: their offsets, where they end, and
/// whether a damaged record (or with `verify` a wrong checksum) ended them rather than the
/// file's end or a zero header.
fn walk(file: &mut File, verify: bool) -> io::Result<(Vec<u64>, u64, bool)> {
    let size = file.metadata()?.len();
    let mut offsets = Vec::new();
    let mut at = FILE_HEADER;
    file.seek(io::SeekFrom::Start(at))?;
    let mut reader = io::BufReader::with_capacity(1 << 20, file);
    let mut payload = Vec::new();
    let damaged = loop {
        if at == size {
            break false;
        }
        let mut header = [0u8; RECORD_HEADER];
        if at + RECORD_HEADER as u64 > size || reader.read_exact(&mut header).is_err() {
            break true;
        }
        let len = u64::from(u32::from_le_bytes([
            header[0], header[1], header[2], header[3],
        ]));
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len == 0 && crc == 0 {
            break false; // the preallocated, never written rest
        }
        if at + RECORD_HEADER as u64 + len > size {
            break true;
        }
        if verify {
            payload.resize(len as usize, 0);
            if reader.read_exact(&mut payload).is_err() || crc32fast::hash(&payload) != crc {
                break true;
            }
        } else {
            reader.seek_relative(len as i64)?;
        }
        offsets.push(at);
        at += RECORD_HEADER as u64 + len;
    };
    Ok((offsets, at, damaged))
}
