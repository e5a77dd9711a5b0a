//! Backups: one self-contained file holding the whole state of a cluster as of one applied
//! index (every user, track, playlist, the queue, the history) and every audio chunk that state
//! names, so a new cluster can be seeded from it alone.
//!
//! ```text
//! "CHORUSBK" | u8 format version | u32 header_len | header (bincode BackupHeader)
//! u64 state_len | the state: a snapshot file of the `sm` tree (crate::snapshot)
//! per chunk:  u8 1 | 32-byte SHA-256 | u32 len | the chunk's bytes
//! u8 0xFF | 32-byte SHA-256 of every byte before it
//! ```
//! All integers are big-endian. The digest at the end makes a truncated or altered file
//! detectable; each chunk is also checked against its own hash as it is read. A node prepares a
//! backup ([`crate::StateReader::prepare_backup`]) by writing the tree to a file as of one log
//! position and hard-linking every chunk it names beside it, so the archive streams from files
//! that neither a snapshot build nor a deleted track can take away, in bounded memory.
//!
//! [`restore`] seeds one node's data directory from an archive: everything is written to a
//! sibling staging directory and checked (digest, chunk hashes, every named chunk present)
//! before [`StagedRestore::commit`] renames it into place, so a bad archive leaves nothing
//! behind. The restored state keeps its log position; its membership becomes the new
//! cluster's, and the node's vote starts at the archive's term so the new cluster's terms
//! continue past it (Raft needs log ids to keep increasing).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::chunks::{ChunkHash, sync_dir};
use crate::codec;
use crate::snapshot::{SnapshotReader, SnapshotWriter};
use crate::types::{ChorusNode, LogId, NodeId, StoredMembership, Vote};

const MAGIC: &[u8; 8] = b"CHORUSBK";
/// Written after the magic; a reader refuses any other (an upgrade would convert or read both).
pub const FORMAT_VERSION: u8 = 1;
const CHUNK: u8 = 1;
const END: u8 = 0xFF;
/// The header is a few numbers; anything larger means the file is not what it claims.
const MAX_HEADER: u32 = 64 * 1024;
/// Blocks the state section is streamed in.
const BLOCK: usize = 256 * 1024;

/// What an archive holds, written at its start (so a reader can show progress and check the
/// counts) and shown by `chorus backup`/`restore`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupHeader {
    /// The last log entry the state includes.
    pub last_log_id: LogId,
    /// When the node prepared it (milliseconds since the Unix epoch).
    pub created_at_ms: u64,
    pub users: u64,
    pub tracks: u64,
    /// Tracks in the voting queue, and tracks in the play history.
    pub queued: u64,
    pub played: u64,
    /// Bytes of the state section.
    pub state_bytes: u64,
    /// Distinct audio chunks, and their bytes.
    pub chunks: u64,
    pub chunk_bytes: u64,
}

impl BackupHeader {
    /// Bytes of the archive: preamble, state, one frame per chunk, end marker and digest.
    pub fn archive_len(&self, header_len: u64) -> u64 {
        MAGIC.len() as u64
            + 1
            + 4
            + header_len
            + 8
            + self.state_bytes
            + self.chunks * (1 + 32 + 4)
            + self.chunk_bytes
            + 1
            + 32
    }
}

/// A directory of work in progress (a prepared backup's files, a staged restore), removed with
/// everything in it when dropped unless [`Self::keep`] took it.
#[derive(Debug)]
pub(crate) struct RemovedOnDrop(Option<PathBuf>);

impl RemovedOnDrop {
    pub(crate) fn new(dir: PathBuf) -> Self {
        Self(Some(dir))
    }

    pub(crate) fn path(&self) -> &Path {
        self.0.as_deref().unwrap_or(Path::new(""))
    }

    fn keep(mut self) -> Option<PathBuf> {
        self.0.take()
    }
}

impl Drop for RemovedOnDrop {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take()
            && let Err(e) = fs::remove_dir_all(&dir)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a backup's or restore's working files");
        }
    }
}

/// The state file inside a [`BackupDir`]; the chunks sit beside it, named by their hex hash.
pub(crate) const STATE_FILE: &str = "state.snap";

/// A backup prepared on a node, ready to stream: its files stay until it is dropped.
#[derive(Debug)]
pub struct Backup {
    dir: RemovedOnDrop,
    header: BackupHeader,
    encoded_header: Vec<u8>,
    chunks: Vec<(ChunkHash, u64)>,
}

impl Backup {
    pub(crate) fn new(
        dir: RemovedOnDrop,
        header: BackupHeader,
        chunks: Vec<(ChunkHash, u64)>,
    ) -> io::Result<Self> {
        let encoded_header = codec::encode(&header).map_err(io::Error::other)?;
        Ok(Self {
            dir,
            header,
            encoded_header,
            chunks,
        })
    }

    pub fn header(&self) -> &BackupHeader {
        &self.header
    }

    /// The archive's length in bytes, known before it is written.
    pub fn archive_len(&self) -> u64 {
        self.header.archive_len(self.encoded_header.len() as u64)
    }

    /// Writes the archive to `sink` piece by piece (at most one chunk, 1 MiB, held at a time).
    /// A chunk file whose bytes no longer match its hash fails the backup rather than being
    /// copied. Blocking.
    pub fn write(&self, mut sink: impl FnMut(Bytes) -> io::Result<()>) -> io::Result<()> {
        let mut digest = Sha256::new();
        let mut emit = |piece: Bytes| {
            digest.update(&piece);
            sink(piece)
        };
        let mut preamble = Vec::with_capacity(64 + self.encoded_header.len());
        preamble.extend_from_slice(MAGIC);
        preamble.push(FORMAT_VERSION);
        preamble.extend_from_slice(&(self.encoded_header.len() as u32).to_be_bytes());
        preamble.extend_from_slice(&self.encoded_header);
        preamble.extend_from_slice(&self.header.state_bytes.to_be_bytes());
        emit(Bytes::from(preamble))?;

        let mut state = File::open(self.dir.path().join(STATE_FILE))?.take(self.header.state_bytes);
        let mut sent = 0u64;
        loop {
            let mut block = vec![0u8; BLOCK];
            let n = state.read(&mut block)?;
            if n == 0 {
                break;
            }
            block.truncate(n);
            sent += n as u64;
            emit(Bytes::from(block))?;
        }
        if sent != self.header.state_bytes {
            return Err(io::Error::other(
                "the backup's state file shrank while it was sent",
            ));
        }

        for (hash, len) in &self.chunks {
            let bytes = fs::read(self.dir.path().join(hash.to_hex()))?;
            if bytes.len() as u64 != *len || ChunkHash::of(&bytes) != *hash {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "audio chunk {hash} is damaged on this node's disk; run `chorus verify` on it, or back up from another node"
                    ),
                ));
            }
            let mut frame = Vec::with_capacity(1 + 32 + 4);
            frame.push(CHUNK);
            frame.extend_from_slice(&hash.0);
            frame.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
            emit(Bytes::from(frame))?;
            emit(Bytes::from(bytes))?;
        }
        emit(Bytes::from_static(&[END]))?;
        sink(Bytes::copy_from_slice(&digest.finalize()))
    }
}

/// Why an archive could not be checked or restored.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(
        "{0} is not empty; restoring replaces everything a node holds, so pass --force to do that"
    )]
    NotEmpty(PathBuf),
    #[error("{0} belongs to a running node (its database is locked); stop that node first")]
    InUse(PathBuf),
    #[error("this is not a chorus backup: {0}")]
    NotABackup(String),
    #[error("the backup is damaged: {0}")]
    Damaged(String),
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
    #[error("cannot open the restored store: {0}")]
    Open(#[from] crate::OpenError),
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> RestoreError {
    let context = context.into();
    move |source| RestoreError::Io { context, source }
}

/// What an archive reader hands on, section by section.
trait ArchiveVisitor {
    /// The state section: `state` yields exactly its bytes; read all of them.
    fn state(&mut self, state: &mut dyn Read) -> Result<(), RestoreError>;
    /// One chunk, already checked against its hash.
    fn chunk(&mut self, hash: &ChunkHash, bytes: &[u8]) -> Result<(), RestoreError>;
}

/// Reads `input` and hashes and counts every byte, for the digest and progress.
struct Hashed<'a, R> {
    input: R,
    digest: Sha256,
    read: u64,
    progress: &'a mut dyn FnMut(u64),
}

impl<R: Read> Read for Hashed<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.input.read(buf)?;
        self.digest.update(&buf[..n]);
        self.read += n as u64;
        (self.progress)(self.read);
        Ok(n)
    }
}

impl<R: Read> Hashed<'_, R> {
    fn exact(&mut self, buf: &mut [u8], what: &str) -> Result<(), RestoreError> {
        self.read_exact(buf).map_err(|e| self.failed(e, what))
    }

    fn failed(&self, e: io::Error, what: &str) -> RestoreError {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            RestoreError::Damaged(format!(
                "it ends after {} bytes, inside {what}: the file is truncated (an interrupted download or copy?)",
                self.read
            ))
        } else {
            RestoreError::Io {
                context: format!("reading the backup ({what})"),
                source: e,
            }
        }
    }
}

/// Reads and checks a whole archive, handing its sections to `visitor`; `progress` hears the
/// bytes read so far.
fn read_archive(
    input: impl Read,
    visitor: &mut dyn ArchiveVisitor,
    progress: &mut dyn FnMut(u64),
) -> Result<BackupHeader, RestoreError> {
    let mut r = Hashed {
        input: io::BufReader::with_capacity(BLOCK, input),
        digest: Sha256::new(),
        read: 0,
        progress,
    };
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)
        .map_err(|_| RestoreError::NotABackup("it is shorter than a backup's header".into()))?;
    if &magic != MAGIC {
        return Err(RestoreError::NotABackup(
            "it does not start with CHORUSBK (make one with `chorus backup`)".into(),
        ));
    }
    let mut u8buf = [0u8; 1];
    r.exact(&mut u8buf, "the header")?;
    if u8buf[0] != FORMAT_VERSION {
        return Err(RestoreError::NotABackup(format!(
            "backup format version {} (this chorus reads version {FORMAT_VERSION})",
            u8buf[0]
        )));
    }
    let mut u32buf = [0u8; 4];
    r.exact(&mut u32buf, "the header")?;
    let header_len = u32::from_be_bytes(u32buf);
    if header_len > MAX_HEADER {
        return Err(RestoreError::Damaged(format!(
            "its header claims {header_len} bytes"
        )));
    }
    let mut encoded = vec![0u8; header_len as usize];
    r.exact(&mut encoded, "the header")?;
    let header: BackupHeader = codec::decode(&encoded)
        .map_err(|e| RestoreError::Damaged(format!("its header is unreadable: {e}")))?;
    let mut u64buf = [0u8; 8];
    r.exact(&mut u64buf, "the header")?;
    if u64::from_be_bytes(u64buf) != header.state_bytes {
        return Err(RestoreError::Damaged(
            "the state's length disagrees with the header".into(),
        ));
    }

    let before = r.read;
    let mut state = (&mut r).take(header.state_bytes);
    visitor.state(&mut state)?;
    io::copy(&mut state, &mut io::sink()).map_err(|e| r.failed(e, "the state"))?;
    if r.read - before != header.state_bytes {
        return Err(r.failed(io::ErrorKind::UnexpectedEof.into(), "the state"));
    }

    let (mut chunks, mut chunk_bytes) = (0u64, 0u64);
    let mut buf = Vec::new();
    loop {
        r.exact(&mut u8buf, "the audio")?;
        match u8buf[0] {
            END => break,
            CHUNK => {}
            other => {
                return Err(RestoreError::Damaged(format!(
                    "unknown section kind {other} after {} bytes",
                    r.read - 1
                )));
            }
        }
        let mut hash = [0u8; 32];
        r.exact(&mut hash, "the audio")?;
        let hash = ChunkHash(hash);
        r.exact(&mut u32buf, "the audio")?;
        let len = u32::from_be_bytes(u32buf) as usize;
        if len > crate::CHUNK_SIZE {
            return Err(RestoreError::Damaged(format!(
                "audio chunk {hash} claims {len} bytes, more than a chunk holds"
            )));
        }
        buf.resize(len, 0);
        r.exact(&mut buf, "the audio")?;
        if ChunkHash::of(&buf) != hash {
            return Err(RestoreError::Damaged(format!(
                "the bytes of audio chunk {hash} do not match its hash (altered after it was written)"
            )));
        }
        visitor.chunk(&hash, &buf)?;
        chunks += 1;
        chunk_bytes += len as u64;
    }
    let computed: [u8; 32] = r.digest.clone().finalize().into();
    let mut stored = [0u8; 32];
    r.input
        .read_exact(&mut stored)
        .map_err(|e| r.failed(e, "the closing digest"))?;
    (r.progress)(r.read + stored.len() as u64);
    if stored != computed {
        return Err(RestoreError::Damaged(
            "its SHA-256 digest does not match its contents (altered after it was written)".into(),
        ));
    }
    if r.input
        .read(&mut u8buf)
        .map_err(io_err("reading the backup"))?
        != 0
    {
        return Err(RestoreError::Damaged(
            "there are bytes after its end (two files joined?)".into(),
        ));
    }
    if (chunks, chunk_bytes) != (header.chunks, header.chunk_bytes) {
        return Err(RestoreError::Damaged(format!(
            "it holds {chunks} chunks ({chunk_bytes} bytes), its header says {} ({} bytes)",
            header.chunks, header.chunk_bytes
        )));
    }
    Ok(header)
}

/// Reads a whole archive and checks it (structure, every chunk's hash, the digest, the state's
/// records) without writing anything. Blocking.
pub fn verify(
    input: impl Read,
    progress: &mut dyn FnMut(u64),
) -> Result<BackupHeader, RestoreError> {
    struct Check;
    impl ArchiveVisitor for Check {
        fn state(&mut self, state: &mut dyn Read) -> Result<(), RestoreError> {
            let mut reader = SnapshotReader::new(state).map_err(damaged_state)?;
            while reader.next_record().map_err(damaged_state)?.is_some() {}
            Ok(())
        }
        fn chunk(&mut self, _: &ChunkHash, _: &[u8]) -> Result<(), RestoreError> {
            Ok(())
        }
    }
    read_archive(input, &mut Check, progress)
}

fn damaged_state(e: io::Error) -> RestoreError {
    RestoreError::Damaged(format!("its state section is unreadable: {e}"))
}

/// A restore written and checked in a staging directory beside its target; dropping it
/// without [`Self::commit`] removes it.
#[derive(Debug)]
pub struct StagedRestore {
    staging: RemovedOnDrop,
    target: PathBuf,
    header: BackupHeader,
}

impl StagedRestore {
    pub fn header(&self) -> &BackupHeader {
        &self.header
    }

    /// Moves the restored data into the target directory, replacing what is there (the caller
    /// checked `--force` with [`check_target`]).
    pub fn commit(self) -> Result<(), RestoreError> {
        let target = self.target;
        let Some(staging) = self.staging.keep() else {
            return Ok(());
        };
        let target = &target;
        let replaced = sibling(target, "replaced");
        if target.exists() {
            if replaced.exists() {
                fs::remove_dir_all(&replaced)
                    .map_err(io_err(format!("removing {}", replaced.display())))?;
            }
            fs::rename(target, &replaced)
                .map_err(io_err(format!("moving {} aside", target.display())))?;
        }
        fs::rename(&staging, target).map_err(io_err(format!(
            "moving the restored data into {}",
            target.display()
        )))?;
        if let Some(parent) = target.parent() {
            sync_dir(parent).map_err(io_err(format!("syncing {}", parent.display())))?;
        }
        if replaced.exists() {
            fs::remove_dir_all(&replaced)
                .map_err(io_err(format!("removing the old {}", replaced.display())))?;
        }
        Ok(())
    }
}

/// Whether a running node holds the data directory's database: sled keeps an exclusive
/// `flock` on `db/db` while it is open.
fn locked_by_a_node(data_dir: &Path) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(file) = File::open(data_dir.join("db").join("db")) else {
        return false;
    };
    // SAFETY: flock on a descriptor this function owns; the lock goes when `file` is closed.
    let taken = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    taken != 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let name = dir
        .file_name()
        .map_or_else(|| "data".into(), |n| n.to_string_lossy().into_owned());
    dir.with_file_name(format!(".{name}.{suffix}"))
}

/// Refuses a target that holds anything unless `replace` is set, and one a running node uses.
pub fn check_target(data_dir: &Path, replace: bool) -> Result<(), RestoreError> {
    if locked_by_a_node(data_dir) {
        return Err(RestoreError::InUse(data_dir.to_path_buf()));
    }
    let occupied = match fs::read_dir(data_dir) {
        Ok(mut entries) => entries.next().is_some(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(io_err(format!("reading {}", data_dir.display()))(e)),
    };
    if occupied && !replace {
        return Err(RestoreError::NotEmpty(data_dir.to_path_buf()));
    }
    Ok(())
}

/// Seeds the data directory of node `node` of a new cluster whose members are `members` from
/// the archive `input`, in a staging directory; nothing in `data_dir` changes until the
/// returned restore is committed. Blocking.
pub fn restore(
    input: impl Read,
    data_dir: &Path,
    node: NodeId,
    members: &BTreeMap<NodeId, ChorusNode>,
    progress: &mut dyn FnMut(u64),
) -> Result<StagedRestore, RestoreError> {
    let staging = sibling(data_dir, "restoring");
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(io_err(format!("removing {}", staging.display())))?;
    }
    fs::create_dir_all(&staging).map_err(io_err(format!("creating {}", staging.display())))?;
    // Removes the staging directory on any error from here on (dropped after the store).
    let guard = RemovedOnDrop::new(staging.clone());
    let (log, sm) = crate::open(&staging)?;
    let snapshots = staging.join("snapshots");
    let received = snapshots.join("restoring.snap");

    struct Seed<'a> {
        chunks: &'a crate::ChunkStore,
        state_file: &'a Path,
        received: HashSet<ChunkHash>,
    }
    impl ArchiveVisitor for Seed<'_> {
        fn state(&mut self, state: &mut dyn Read) -> Result<(), RestoreError> {
            let mut file = File::create(self.state_file)
                .map_err(io_err(format!("creating {}", self.state_file.display())))?;
            io::copy(state, &mut file).map_err(io_err("writing the restored state"))?;
            file.sync_all()
                .map_err(io_err("syncing the restored state"))
        }
        fn chunk(&mut self, hash: &ChunkHash, bytes: &[u8]) -> Result<(), RestoreError> {
            self.chunks
                .put_received(hash, bytes)
                .map_err(io_err(format!("writing audio chunk {hash}")))?;
            self.received.insert(*hash);
            Ok(())
        }
    }
    let reader = sm.reader();
    let mut seed = Seed {
        chunks: reader.chunk_store(),
        state_file: &received,
        received: HashSet::new(),
    };
    let header = read_archive(input, &mut seed, progress)?;

    // The state, its membership replaced by the new cluster's, as the node's current snapshot.
    let mut snapshot =
        SnapshotReader::new(File::open(&received).map_err(io_err("reading the restored state"))?)
            .map_err(damaged_state)?;
    if snapshot.meta.last_log_id != Some(header.last_log_id) {
        return Err(RestoreError::Damaged(format!(
            "its state is at {:?}, its header says {}",
            snapshot.meta.last_log_id, header.last_log_id
        )));
    }
    let voters: BTreeSet<NodeId> = members.keys().copied().collect();
    let mut meta = snapshot.meta.clone();
    meta.last_membership = StoredMembership::new(
        Some(header.last_log_id),
        openraft::Membership::new(vec![voters], members.clone()),
    );
    meta.snapshot_id = format!("restored-{}", header.last_log_id.index);
    let current = snapshots.join(crate::state_machine::CURRENT);
    let mut named = HashSet::new();
    {
        let file = File::create(&current).map_err(io_err("writing the restored snapshot"))?;
        let mut writer =
            SnapshotWriter::new(file, &meta).map_err(io_err("writing the restored snapshot"))?;
        while let Some(record) = snapshot.next_record().map_err(damaged_state)? {
            named.extend(
                crate::state::tracks::chunks_named_by(&record.key, &record.value)
                    .map_err(|e| RestoreError::Damaged(format!("a track record: {e}")))?,
            );
            writer
                .record(&record.key, &record.value)
                .map_err(io_err("writing the restored snapshot"))?;
        }
        writer
            .finish()
            .and_then(|f| f.sync_all())
            .map_err(io_err("writing the restored snapshot"))?;
    }
    drop(snapshot);
    fs::remove_file(&received).map_err(io_err("removing the received state"))?;
    if let Some(missing) = named.iter().find(|h| !seed.received.contains(h)) {
        return Err(RestoreError::Damaged(format!(
            "its state names audio chunk {missing} that it does not hold"
        )));
    }
    sm.install_restored()
        .map_err(io_err("installing the restored state"))?;
    log.seed_vote(&Vote::new(header.last_log_id.leader_id.term, node))
        .map_err(io_err("writing the restored node's vote"))?;
    drop((reader, log, sm));
    Ok(StagedRestore {
        staging: guard,
        target: data_dir.to_path_buf(),
        header,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Arbitrary bytes after the magic and version are refused with an error, never a
        /// panic, a hang or an allocation beyond a chunk.
        #[test]
        fn arbitrary_archives_are_refused_cleanly(tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4096)) {
            let mut bytes = MAGIC.to_vec();
            bytes.push(FORMAT_VERSION);
            bytes.extend(tail);
            let refused = verify(&bytes[..], &mut |_| {}).is_err();
            proptest::prop_assert!(refused);
        }
    }
}
