//! The snapshot file format: a header with the snapshot's metadata, then every key/value of the
//! state machine's `sm` tree, streamed so that a snapshot never has to fit in memory.
//!
//! ```text
//! "CHORUSSN" | u8 format version | u32 meta_len | meta (bincode)
//! repeated: u8 1 | u32 key_len | key | u32 value_len | value
//! u8 0xFF (end)
//! ```
//! Audio is not in the file: tracks name their chunks by hash, and a node that installs the
//! snapshot fetches the chunks it lacks first (see `crate::chunks`). All integers are
//! big-endian. A truncated or malformed file, or one of another format version, is an error,
//! never a panic.

use std::io::{self, BufReader, BufWriter, Read, Write};

use crate::codec;
use crate::types::SnapshotMeta;

const MAGIC: &[u8; 8] = b"CHORUSSN";
/// Written after the magic; a reader refuses any other (an upgrade would convert or read both).
pub const FORMAT_VERSION: u8 = 1;
const RECORD: u8 = 1;
const END: u8 = 0xFF;
/// Upper bound on one key or value; anything larger means the file is corrupt.
const MAX_FIELD: u32 = 64 * 1024 * 1024;

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

pub struct SnapshotWriter<W: Write> {
    out: BufWriter<W>,
}

impl<W: Write> SnapshotWriter<W> {
    pub fn new(out: W, meta: &SnapshotMeta) -> io::Result<Self> {
        let mut out = BufWriter::with_capacity(256 * 1024, out);
        let meta = codec::encode(meta).map_err(|e| invalid(e.to_string()))?;
        out.write_all(MAGIC)?;
        out.write_all(&[FORMAT_VERSION])?;
        write_field(&mut out, &meta)?;
        Ok(Self { out })
    }

    pub fn record(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        self.out.write_all(&[RECORD])?;
        write_field(&mut self.out, key)?;
        write_field(&mut self.out, value)
    }

    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&[END])?;
        self.out.into_inner().map_err(|e| e.into_error())
    }
}

fn write_field(out: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    let len = u32::try_from(bytes.len()).map_err(|_| invalid("field over 4 GiB"))?;
    if len > MAX_FIELD {
        return Err(invalid(format!(
            "field of {len} bytes is over the {MAX_FIELD} byte limit"
        )));
    }
    out.write_all(&len.to_be_bytes())?;
    out.write_all(bytes)
}

pub struct SnapshotReader<R: Read> {
    input: BufReader<R>,
    pub meta: SnapshotMeta,
}

/// One record of a snapshot file: a key/value of the `sm` tree.
pub struct Record {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

impl<R: Read> SnapshotReader<R> {
    pub fn new(input: R) -> io::Result<Self> {
        let mut input = BufReader::with_capacity(256 * 1024, input);
        let mut magic = [0u8; 8];
        input.read_exact(&mut magic)?;
        if &magic != MAGIC {
            return Err(invalid("not a chorus snapshot (bad magic)"));
        }
        let mut version = [0u8; 1];
        input.read_exact(&mut version)?;
        if version[0] != FORMAT_VERSION {
            return Err(invalid(format!(
                "snapshot format version {} (this chorus reads version {FORMAT_VERSION})",
                version[0]
            )));
        }
        let mut reader = Self {
            input,
            meta: SnapshotMeta::default(),
        };
        let meta = reader.read_field()?;
        reader.meta = codec::decode(&meta).map_err(|e| invalid(format!("snapshot meta: {e}")))?;
        Ok(reader)
    }

    /// The next record, or `None` at the end marker.
    pub fn next_record(&mut self) -> io::Result<Option<Record>> {
        let mut kind = [0u8; 1];
        self.input.read_exact(&mut kind)?;
        match kind[0] {
            END => Ok(None),
            RECORD => {
                let key = self.read_field()?;
                let value = self.read_field()?;
                Ok(Some(Record { key, value }))
            }
            other => Err(invalid(format!("unknown snapshot record kind {other}"))),
        }
    }

    fn read_field(&mut self) -> io::Result<Vec<u8>> {
        let mut len = [0u8; 4];
        self.input.read_exact(&mut len)?;
        let len = u32::from_be_bytes(len);
        if len > MAX_FIELD {
            return Err(invalid(format!(
                "field of {len} bytes is over the {MAX_FIELD} byte limit"
            )));
        }
        // Grown as bytes arrive, not allocated as claimed: a corrupt length costs at most what
        // the file really holds.
        let mut buf = Vec::new();
        (&mut self.input)
            .take(u64::from(len))
            .read_to_end(&mut buf)?;
        if buf.len() != len as usize {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let meta = SnapshotMeta::default();
        let mut w = SnapshotWriter::new(Vec::new(), &meta).expect("header");
        w.record(b"k1", b"v1").expect("record");
        w.record(b"k2", &[7u8; 1000]).expect("record");
        let bytes = w.finish().expect("finish");

        let mut r = SnapshotReader::new(&bytes[..]).expect("header");
        assert_eq!(r.meta, meta);
        let first = r.next_record().expect("read").expect("record");
        assert_eq!(
            (first.key.as_slice(), first.value.as_slice()),
            (&b"k1"[..], &b"v1"[..])
        );
        assert!(r.next_record().expect("read").is_some());
        assert!(r.next_record().expect("read").is_none());

        let mut cut = SnapshotReader::new(&bytes[..bytes.len() - 10]).expect("header");
        cut.next_record().expect("first record is whole");
        assert!(cut.next_record().is_err(), "a truncated file is an error");
        assert!(SnapshotReader::new(&b"garbage!"[..]).is_err());
    }

    proptest::proptest! {
        /// Whatever follows a valid header, reading records ends in records, the end or an
        /// error: never a panic, a hang or an allocation beyond the input.
        #[test]
        fn arbitrary_bytes_after_the_header_never_panic(tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)) {
            let mut bytes = SnapshotWriter::new(Vec::new(), &SnapshotMeta::default())
                .and_then(SnapshotWriter::finish)
                .expect("write");
            bytes.pop(); // the end marker
            bytes.extend(tail);
            if let Ok(mut reader) = SnapshotReader::new(&bytes[..]) {
                while let Ok(Some(_)) = reader.next_record() {}
            }
        }

        /// A valid file with one byte changed anywhere reads as records or fails cleanly.
        #[test]
        fn a_changed_byte_never_panics(at in 0usize..4096, xor in 1u8..=255) {
            let mut w = SnapshotWriter::new(Vec::new(), &SnapshotMeta::default()).expect("header");
            for i in 0..50u32 {
                w.record(&i.to_be_bytes(), &[i as u8; 60]).expect("record");
            }
            let mut bytes = w.finish().expect("finish");
            let at = at % bytes.len();
            bytes[at] ^= xor;
            if let Ok(mut reader) = SnapshotReader::new(&bytes[..]) {
                while let Ok(Some(_)) = reader.next_record() {}
            }
        }
    }

    #[test]
    fn a_field_claiming_more_than_the_file_holds_is_an_error() {
        let mut bytes = SnapshotWriter::new(Vec::new(), &SnapshotMeta::default())
            .and_then(SnapshotWriter::finish)
            .expect("write");
        bytes.pop();
        bytes.push(RECORD);
        bytes.extend(MAX_FIELD.to_be_bytes());
        bytes.extend(b"short");
        let mut reader = SnapshotReader::new(&bytes[..]).expect("header");
        let err = reader.next_record().err().expect("a truncated field");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn another_format_version_is_refused_with_a_clear_error() {
        let meta = SnapshotMeta::default();
        let mut bytes = SnapshotWriter::new(Vec::new(), &meta)
            .and_then(SnapshotWriter::finish)
            .expect("write");
        bytes[MAGIC.len()] = FORMAT_VERSION + 1;
        let err = SnapshotReader::new(&bytes[..])
            .err()
            .expect("another version is refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("format version 2"), "{err}");
    }
}
