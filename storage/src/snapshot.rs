//! The snapshot file format: a header with the snapshot's metadata, then every key/value of the
//! state machine's trees, streamed so that a snapshot never has to fit in memory.
//!
//! ```text
//! "CHORUSS1" (self-contained) or "CHORUSR1" (refers to audio) | u32 meta_len | meta (bincode)
//! repeated: u8 tree (0 = sm, 1 = audio, 2 = audio reference) | u32 key_len | key
//!           | u32 value_len | value (empty for a reference)
//! u8 0xFF (end)
//! ```
//! A node's own snapshots refer to audio chunks by key (the chunks stay in its `audio` tree);
//! what is sent to another node is self-contained, every reference replaced by the chunk.
//! All integers are big-endian. A truncated or malformed file is an error, never a panic.

use std::io::{self, BufReader, BufWriter, Read, Seek, Write};

use crate::codec;
use crate::types::SnapshotMeta;

const MAGIC: &[u8; 8] = b"CHORUSS1";
pub(crate) const MAGIC_REFS: &[u8; 8] = b"CHORUSR1";
const END: u8 = 0xFF;
/// Upper bound on one key or value; anything larger means the file is corrupt.
const MAX_FIELD: u32 = 64 * 1024 * 1024;

pub const TREE_SM: u8 = 0;
pub const TREE_AUDIO: u8 = 1;
/// An audio chunk by key only: it is in the `audio` tree of the node that wrote the file.
pub const TREE_AUDIO_REF: u8 = 2;

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

pub struct SnapshotWriter<W: Write> {
    out: BufWriter<W>,
}

impl<W: Write> SnapshotWriter<W> {
    /// A writer of a self-contained snapshot, or (`refers_to_audio`) of one whose audio records
    /// may be references.
    pub fn new(out: W, meta: &SnapshotMeta, refers_to_audio: bool) -> io::Result<Self> {
        let mut out = BufWriter::with_capacity(256 * 1024, out);
        let meta = codec::encode(meta).map_err(|e| invalid(e.to_string()))?;
        out.write_all(if refers_to_audio { MAGIC_REFS } else { MAGIC })?;
        write_field(&mut out, &meta)?;
        Ok(Self { out })
    }

    pub fn record(&mut self, tree: u8, key: &[u8], value: &[u8]) -> io::Result<()> {
        self.out.write_all(&[tree])?;
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
    /// Offset in the file of the next byte `input` hands out.
    position: u64,
    pub meta: SnapshotMeta,
    /// Written with audio references ([`TREE_AUDIO_REF`]): only the node that wrote it can use it.
    pub refers_to_audio: bool,
}

/// One record of a snapshot file.
pub struct Record {
    pub tree: u8,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// Where a record's value lies in the file (see [`SnapshotReader::next_record_skipping`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValueAt {
    pub offset: u64,
    pub len: u32,
}

impl<R: Read> SnapshotReader<R> {
    pub fn new(input: R) -> io::Result<Self> {
        let mut input = BufReader::with_capacity(256 * 1024, input);
        let mut magic = [0u8; 8];
        input.read_exact(&mut magic)?;
        let refers_to_audio = match &magic {
            m if m == MAGIC => false,
            m if m == MAGIC_REFS => true,
            _ => return Err(invalid("not a chorus snapshot (bad magic)")),
        };
        let mut reader = Self {
            input,
            position: magic.len() as u64,
            meta: SnapshotMeta::default(),
            refers_to_audio,
        };
        let meta = reader.read_field()?;
        reader.meta = codec::decode(&meta).map_err(|e| invalid(format!("snapshot meta: {e}")))?;
        Ok(reader)
    }

    /// The next record, or `None` at the end marker.
    pub fn next_record(&mut self) -> io::Result<Option<Record>> {
        let Some(tree) = self.next_tree()? else {
            return Ok(None);
        };
        let key = self.read_field()?;
        let value = self.read_field()?;
        Ok(Some(Record { tree, key, value }))
    }

    /// The tree byte of the next record, or `None` at the end marker.
    fn next_tree(&mut self) -> io::Result<Option<u8>> {
        let mut tree = [0u8; 1];
        self.read_exact(&mut tree)?;
        Ok((tree[0] != END).then_some(tree[0]))
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.input.read_exact(buf)?;
        self.position += buf.len() as u64;
        Ok(())
    }

    fn read_len(&mut self) -> io::Result<u32> {
        let mut len = [0u8; 4];
        self.read_exact(&mut len)?;
        let len = u32::from_be_bytes(len);
        if len > MAX_FIELD {
            return Err(invalid(format!(
                "field of {len} bytes is over the {MAX_FIELD} byte limit"
            )));
        }
        Ok(len)
    }

    fn read_field(&mut self) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; self.read_len()? as usize];
        self.read_exact(&mut buf)?;
        Ok(buf)
    }
}

impl<R: Read + Seek> SnapshotReader<R> {
    /// Like [`Self::next_record`], but the value of a record in a tree for which `skip` holds is
    /// left in the file (the record's `value` is empty) and its place returned instead: an
    /// install leaves the audio where it is, to be copied later. A value cut short by the end
    /// of the file is an error here too.
    pub fn next_record_skipping(
        &mut self,
        skip: impl Fn(u8) -> bool,
    ) -> io::Result<Option<(Record, Option<ValueAt>)>> {
        let Some(tree) = self.next_tree()? else {
            return Ok(None);
        };
        let key = self.read_field()?;
        if !skip(tree) {
            let value = self.read_field()?;
            return Ok(Some((Record { tree, key, value }, None)));
        }
        let len = self.read_len()?;
        let at = ValueAt {
            offset: self.position,
            len,
        };
        self.input.seek_relative(i64::from(len))?;
        self.position += u64::from(len);
        // A seek past the end succeeds; the next read, at least the end marker, must not.
        Ok(Some((
            Record {
                tree,
                key,
                value: Vec::new(),
            },
            Some(at),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let meta = SnapshotMeta::default();
        let mut w = SnapshotWriter::new(Vec::new(), &meta, false).expect("header");
        w.record(TREE_SM, b"k1", b"v1").expect("record");
        w.record(TREE_SM, b"k2", &[7u8; 1000]).expect("record");
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

    /// An install leaves audio values in the file: the reader says where each one is, and a
    /// file cut inside a skipped value is still an error.
    #[test]
    fn skipped_values_are_where_the_reader_says() {
        let meta = SnapshotMeta::default();
        let mut w = SnapshotWriter::new(Vec::new(), &meta, false).expect("header");
        w.record(TREE_SM, b"k1", b"v1").expect("record");
        w.record(TREE_AUDIO, b"a1", &[7u8; 3000]).expect("record");
        w.record(TREE_SM, b"k2", b"v2").expect("record");
        w.record(TREE_AUDIO, b"a2", b"tail").expect("record");
        let bytes = w.finish().expect("finish");

        let mut r = SnapshotReader::new(io::Cursor::new(&bytes)).expect("header");
        let mut seen = Vec::new();
        while let Some((record, at)) = r
            .next_record_skipping(|tree| tree == TREE_AUDIO)
            .expect("read")
        {
            let value = match at {
                Some(at) => {
                    assert!(record.value.is_empty());
                    let start = at.offset as usize;
                    bytes[start..start + at.len as usize].to_vec()
                }
                None => record.value,
            };
            seen.push((record.key, value));
        }
        let expected: Vec<(Vec<u8>, Vec<u8>)> = vec![
            (b"k1".to_vec(), b"v1".to_vec()),
            (b"a1".to_vec(), vec![7u8; 3000]),
            (b"k2".to_vec(), b"v2".to_vec()),
            (b"a2".to_vec(), b"tail".to_vec()),
        ];
        assert_eq!(seen, expected);

        let cut = &bytes[..bytes.len() - 3];
        let mut r = SnapshotReader::new(io::Cursor::new(cut)).expect("header");
        let mut outcome = Ok(());
        for _ in 0..5 {
            match r.next_record_skipping(|tree| tree == TREE_AUDIO) {
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
        }
        assert!(outcome.is_err(), "a value cut short is an error");
    }
}
