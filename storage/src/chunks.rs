//! The chunk store: audio as content-addressed plain files under `<data_dir>/chunks/`.
//!
//! A chunk (at most [`crate::CHUNK_SIZE`] bytes of a track's audio) is named by the SHA-256 of
//! its bytes and kept at `chunks/<first byte, hex>/<hash, hex>`, so a chunk stored twice is
//! stored once and a file can always be checked against its name. Files are written to
//! `chunks/tmp/` and renamed into place, so a name never holds a partial chunk; `tmp/` is
//! emptied at open.
//!
//! Durability is the caller's to order (see `state_machine`): a chunk written by an apply is
//! recorded as unsynced, and [`ChunkStore::sync_pending`] makes every such file and its
//! directory durable; the state machine's writer calls it before it writes a batch that names
//! them, so sled never names a chunk a power loss could take. A chunk fetched from a peer is
//! checked against its hash first ([`ChunkStore::put_received`]); the fetcher syncs before the
//! install or repair that needs it goes on.
//!
//! Reads check the bytes against the name whenever they may come from the disk
//! ([`ChunkStore::read`]): a chunk damaged on disk is an error, never served. A read is trusted
//! without hashing only when this process has checked the same file before (same inode, size,
//! mtime and ctime: nothing wrote it since) and every page of it is in the page cache
//! (`cachestat`), so the bytes come from memory that was checked or written by chorus itself,
//! not from the disk. Why: hashing every chunk of every stream made serving CPU-bound at a
//! quarter of nginx's rate (bench/RESULTS.md). [`ChunkStore::verify_all`] always hashes.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The SHA-256 of a chunk's bytes: its name in the store.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ChunkHash(pub [u8; 32]);

impl ChunkHash {
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    pub fn to_hex(&self) -> String {
        let mut out = String::with_capacity(64);
        for b in self.0 {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }

    /// Parses 64 hex digits (a chunk file's name).
    pub fn from_hex(hex: &str) -> Option<Self> {
        if hex.len() != 64 || !hex.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Self(out))
    }
}

impl fmt::Debug for ChunkHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", &self.to_hex()[..16])
    }
}

impl fmt::Display for ChunkHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Why a chunk could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error("audio chunk {0} is not on this node")]
    Missing(ChunkHash),
    #[error("audio chunk {0} is damaged on this node's disk (its bytes do not match its hash)")]
    Corrupt(ChunkHash),
    #[error("reading audio chunk {hash}: {source}")]
    Io { hash: ChunkHash, source: io::Error },
}

impl From<ChunkError> for io::Error {
    fn from(e: ChunkError) -> Self {
        let kind = match &e {
            ChunkError::Missing(_) => io::ErrorKind::NotFound,
            ChunkError::Corrupt(_) => io::ErrorKind::InvalidData,
            ChunkError::Io { source, .. } => source.kind(),
        };
        io::Error::new(kind, e)
    }
}

/// What [`ChunkStore::verify_all`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub checked: usize,
    pub bytes: u64,
    /// Files whose bytes did not match their name; they were removed.
    pub corrupt: Vec<ChunkHash>,
}

#[derive(Debug)]
pub struct ChunkStore {
    dir: PathBuf,
    /// Chunks written without a sync since the last [`Self::sync_pending`].
    unsynced: Mutex<BTreeSet<ChunkHash>>,
    /// The file of each chunk as it was when this process last checked (or wrote) it.
    checked: Mutex<HashMap<ChunkHash, FileStamp>>,
    tmp_seq: AtomicU64,
}

/// Entries of `checked` at most: past it the map starts again (those chunks are hashed anew).
const CHECKED_MAX: usize = 1 << 16;

/// What changes when anything writes a file: its identity, size and times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    ino: u64,
    len: u64,
    mtime_ns: i64,
    ctime_ns: i64,
}

impl FileStamp {
    fn of(meta: &fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            ino: meta.ino(),
            len: meta.len(),
            mtime_ns: meta.mtime().saturating_mul(1_000_000_000) + meta.mtime_nsec(),
            ctime_ns: meta.ctime().saturating_mul(1_000_000_000) + meta.ctime_nsec(),
        }
    }
}

impl ChunkStore {
    /// Opens (or creates) the store in `dir`, removing what interrupted writes left in `tmp/`.
    pub fn open(dir: &Path) -> io::Result<Self> {
        let tmp = dir.join("tmp");
        fs::create_dir_all(&tmp)?;
        for entry in fs::read_dir(&tmp)? {
            fs::remove_file(entry?.path())?;
        }
        sync_dir(dir.parent().unwrap_or(dir))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            unsynced: Mutex::new(BTreeSet::new()),
            checked: Mutex::new(HashMap::new()),
            tmp_seq: AtomicU64::new(0),
        })
    }

    fn fan_out(&self, hash: &ChunkHash) -> PathBuf {
        self.dir.join(format!("{:02x}", hash.0[0]))
    }

    pub fn path(&self, hash: &ChunkHash) -> PathBuf {
        self.fan_out(hash).join(hash.to_hex())
    }

    /// Whether the chunk's file exists (its contents are not checked).
    pub fn contains(&self, hash: &ChunkHash) -> bool {
        self.path(hash).exists()
    }

    /// The chunks of `named` that have no file here. Blocking: one `stat` each.
    pub fn lacking<'a>(&self, named: impl IntoIterator<Item = &'a ChunkHash>) -> Vec<ChunkHash> {
        named
            .into_iter()
            .filter(|h| !self.contains(h))
            .copied()
            .collect()
    }

    /// Stores `bytes`, whose hash the caller computed as `hash`, without syncing (recorded for
    /// [`Self::sync_pending`]). A file already there with the right size is kept.
    pub fn put(&self, hash: &ChunkHash, bytes: &[u8]) -> io::Result<()> {
        if self.write(hash, bytes)? {
            self.lock_unsynced().insert(*hash);
        }
        Ok(())
    }

    /// Stores a chunk received from elsewhere, like [`Self::put`], once `bytes` are checked
    /// to hash to `hash`; its write to the disk starts at once, so the sync that follows a
    /// fetch of many chunks finds little left to do.
    pub fn put_received(&self, hash: &ChunkHash, bytes: &[u8]) -> io::Result<()> {
        if ChunkHash::of(bytes) != *hash {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the bytes received for audio chunk {hash} do not match its hash"),
            ));
        }
        if self.write(hash, bytes)? {
            self.lock_unsynced().insert(*hash);
            start_writeback(&self.path(hash));
        }
        Ok(())
    }

    /// Writes the file unless one of the right size is there; `true` if it wrote.
    fn write(&self, hash: &ChunkHash, bytes: &[u8]) -> io::Result<bool> {
        let path = self.path(hash);
        if fs::metadata(&path).is_ok_and(|m| m.len() == bytes.len() as u64) {
            return Ok(false);
        }
        let fan_out = self.fan_out(hash);
        if !fan_out.exists() {
            fs::create_dir_all(&fan_out)?;
            sync_dir(&self.dir)?;
        }
        let seq = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .dir
            .join("tmp")
            .join(format!("{}-{seq}", hash.to_hex()));
        let written = (|| {
            let mut file = File::create(&tmp)?;
            file.write_all(bytes)?;
            let stamp = FileStamp::of(&file.metadata()?);
            fs::rename(&tmp, &path)?;
            Ok(stamp)
        })();
        match written {
            // The caller hashed these very bytes: what the page cache now holds is checked.
            Ok(stamp) => {
                self.remember_checked(hash, stamp);
                Ok(true)
            }
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    fn lock_unsynced(&self) -> std::sync::MutexGuard<'_, BTreeSet<ChunkHash>> {
        self.unsynced.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes every chunk written by [`Self::put`] so far durable: the files, then the
    /// directories that name them. Blocking.
    pub fn sync_pending(&self) -> io::Result<()> {
        let pending = std::mem::take(&mut *self.lock_unsynced());
        if pending.is_empty() {
            return Ok(());
        }
        let synced = (|| {
            let mut dirs = BTreeSet::new();
            for hash in &pending {
                match File::open(self.path(hash)).and_then(|f| f.sync_data()) {
                    Ok(()) => {
                        dirs.insert(hash.0[0]);
                    }
                    // Deleted meanwhile (a garbage collection): nothing to make durable.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            for first in dirs {
                sync_dir(&self.dir.join(format!("{first:02x}")))?;
            }
            Ok(())
        })();
        if synced.is_err() {
            self.lock_unsynced().extend(pending);
        }
        synced
    }

    /// The whole chunk, checked against its hash unless it comes from memory already checked
    /// (see the module docs). Blocking.
    pub fn read(&self, hash: &ChunkHash) -> Result<bytes::Bytes, ChunkError> {
        self.read_checking(hash, false)
    }

    fn lock_checked(&self) -> std::sync::MutexGuard<'_, HashMap<ChunkHash, FileStamp>> {
        self.checked.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn remember_checked(&self, hash: &ChunkHash, stamp: FileStamp) {
        let mut checked = self.lock_checked();
        if checked.len() >= CHECKED_MAX {
            checked.clear();
        }
        checked.insert(*hash, stamp);
    }

    fn read_checking(&self, hash: &ChunkHash, always: bool) -> Result<bytes::Bytes, ChunkError> {
        let io = |source| ChunkError::Io {
            hash: *hash,
            source,
        };
        let mut file = match File::open(self.path(hash)) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ChunkError::Missing(*hash));
            }
            Err(source) => return Err(io(source)),
        };
        let stamp = FileStamp::of(&file.metadata().map_err(io)?);
        let trusted = !always
            && self.lock_checked().get(hash) == Some(&stamp)
            && all_pages_cached(&file, stamp.len);
        let bytes = match Mapped::of(&file, stamp.len) {
            Ok(mapped) => bytes::Bytes::from_owner(mapped),
            // Not mappable (an empty file): read it.
            Err(_) => {
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut file, &mut bytes).map_err(io)?;
                bytes::Bytes::from(bytes)
            }
        };
        if !trusted {
            if ChunkHash::of(&bytes) != *hash {
                self.lock_checked().remove(hash);
                tracing::error!(chunk = %hash, "an audio chunk on disk does not match its hash; not served");
                return Err(ChunkError::Corrupt(*hash));
            }
            self.remember_checked(hash, stamp);
        }
        Ok(bytes)
    }

    /// The chunk's bytes as they are on disk, unchecked: for a peer, which checks them itself
    /// before it keeps them. Blocking.
    pub fn read_unchecked(&self, hash: &ChunkHash) -> Result<Vec<u8>, ChunkError> {
        match fs::read(self.path(hash)) {
            Ok(bytes) => Ok(bytes),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(ChunkError::Missing(*hash)),
            Err(source) => Err(ChunkError::Io {
                hash: *hash,
                source,
            }),
        }
    }

    /// Removes the chunk's file (no error if it is not there). Not synced: a chunk that comes
    /// back after a crash is garbage again, removed by the next sweep.
    pub fn remove(&self, hash: &ChunkHash) -> io::Result<()> {
        self.lock_unsynced().remove(hash);
        self.lock_checked().remove(hash);
        match fs::remove_file(self.path(hash)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every chunk file in the store (by name; contents unchecked). Blocking.
    pub fn list(&self) -> io::Result<Vec<ChunkHash>> {
        let mut out = Vec::new();
        for fan_out in fs::read_dir(&self.dir)? {
            let fan_out = fan_out?;
            let name = fan_out.file_name();
            let is_fan_out = name.len() == 2
                && name
                    .to_str()
                    .is_some_and(|n| n.bytes().all(|b| b.is_ascii_hexdigit()));
            if !is_fan_out || !fan_out.file_type()?.is_dir() {
                continue;
            }
            for file in fs::read_dir(fan_out.path())? {
                let file = file?;
                match file.file_name().to_str().and_then(ChunkHash::from_hex) {
                    Some(hash) => out.push(hash),
                    None => {
                        tracing::warn!(path = %file.path().display(), "a file in the chunk store that is not a chunk")
                    }
                }
            }
        }
        Ok(out)
    }

    /// Removes every chunk file `keep` does not hold; returns how many went. Blocking.
    pub fn sweep(&self, keep: impl Fn(&ChunkHash) -> bool) -> io::Result<usize> {
        let mut removed = 0;
        for hash in self.list()? {
            if !keep(&hash) {
                self.remove(&hash)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Reads every chunk file and checks it against its name; removes those that do not match
    /// (the caller fetches them again). Blocking.
    pub fn verify_all(&self) -> io::Result<VerifyReport> {
        let mut report = VerifyReport::default();
        for hash in self.list()? {
            match self.read_checking(&hash, true) {
                Ok(bytes) => {
                    report.checked += 1;
                    report.bytes += bytes.len() as u64;
                }
                Err(ChunkError::Corrupt(_)) => {
                    report.checked += 1;
                    self.remove(&hash)?;
                    report.corrupt.push(hash);
                }
                // Removed by a garbage collection since the listing.
                Err(ChunkError::Missing(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(report)
    }

    /// The bytes all chunk files take (file sizes). Blocking.
    pub fn disk_bytes(&self) -> io::Result<u64> {
        let mut total = 0;
        for hash in self.list()? {
            if let Ok(m) = fs::metadata(self.path(&hash)) {
                total += m.len();
            }
        }
        Ok(total)
    }
}

/// A chunk file mapped read-only: a response sends from the page cache without a copy into a
/// buffer first. Safe because chunk files are never changed in place (written to `tmp/` and
/// renamed; removed by unlinking), so a mapping always sees whole, unchanging bytes; a file
/// truncated by hand while mapped would end the process (SIGBUS).
struct Mapped {
    ptr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is read-only and owned by this value alone.
unsafe impl Send for Mapped {}
// SAFETY: as above; shared access only reads.
unsafe impl Sync for Mapped {}

impl Mapped {
    fn of(file: &File, len: u64) -> io::Result<Self> {
        use std::os::fd::AsRawFd;
        let len = usize::try_from(len).map_err(io::Error::other)?;
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty file"));
        }
        // SAFETY: a fresh private read-only mapping of a file this function borrows; the
        // result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_POPULATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { ptr, len })
    }
}

impl AsRef<[u8]> for Mapped {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` readable bytes until `drop`.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `of`, once.
        unsafe {
            libc::munmap(self.ptr, self.len);
        }
    }
}

/// Whether every page of `file` (`len` bytes) is in the page cache; `false` when the kernel
/// cannot tell.
fn all_pages_cached(file: &File, len: u64) -> bool {
    crate::page_cache::stat(file).is_ok_and(|s| s.cached >= len.div_ceil(4096))
}

/// Starts writing the file's dirty pages to the disk without waiting (`sync_file_range` with
/// `SYNC_FILE_RANGE_WRITE`); only a head start for the fdatasync that makes it durable.
fn start_writeback(path: &Path) {
    use std::os::fd::AsRawFd;
    let Ok(file) = File::open(path) else {
        return;
    };
    // SAFETY: a plain syscall on a file descriptor owned here; it touches no memory.
    let rc = unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
    if rc != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "sync_file_range on a received chunk");
    }
}

pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, ChunkStore) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = ChunkStore::open(&dir.path().join("chunks")).expect("open");
        (dir, store)
    }

    #[test]
    fn a_chunk_is_named_by_its_hash_and_stored_once() {
        let (_dir, store) = store();
        let bytes = vec![7u8; 1000];
        let hash = ChunkHash::of(&bytes);
        store.put(&hash, &bytes).expect("put");
        store.put(&hash, &bytes).expect("put again");
        assert_eq!(store.list().expect("list"), vec![hash]);
        assert_eq!(store.read(&hash).expect("read"), bytes);
        store.sync_pending().expect("sync");
        assert_eq!(ChunkHash::from_hex(&hash.to_hex()), Some(hash));
    }

    #[test]
    fn a_damaged_chunk_is_never_read_and_verify_removes_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("chunks");
        let store = ChunkStore::open(&path).expect("open");
        let good = vec![1u8; 4096];
        let bad = vec![2u8; 4096];
        let (good_hash, bad_hash) = (ChunkHash::of(&good), ChunkHash::of(&bad));
        store.put(&good_hash, &good).expect("put");
        store.put(&bad_hash, &bad).expect("put");
        let mut flipped = bad.clone();
        flipped[100] ^= 1;
        fs::write(store.path(&bad_hash), &flipped).expect("flip a bit");
        // A process that has not checked the file yet (a restart) hashes it.
        let store = ChunkStore::open(&path).expect("reopen");
        assert!(matches!(store.read(&bad_hash), Err(ChunkError::Corrupt(_))));
        let report = store.verify_all().expect("verify");
        assert_eq!(report.checked, 2);
        assert_eq!(report.corrupt, vec![bad_hash]);
        assert!(!store.contains(&bad_hash));
        assert!(matches!(store.read(&bad_hash), Err(ChunkError::Missing(_))));
        // A file of the wrong size is written again by the next put.
        fs::write(store.path(&good_hash), b"short").expect("truncate");
        store.put(&good_hash, &good).expect("put");
        assert_eq!(store.read(&good_hash).expect("read"), good);
    }

    /// A chunk this process checked is trusted only while the file is the one it checked: one
    /// written since (another size here; other times in general) is hashed again.
    #[test]
    fn a_chunk_rewritten_since_it_was_checked_is_checked_again() {
        let (_dir, store) = store();
        let bytes = vec![3u8; 8192];
        let hash = ChunkHash::of(&bytes);
        store.put(&hash, &bytes).expect("put");
        assert_eq!(store.read(&hash).expect("read"), bytes);
        assert_eq!(store.read(&hash).expect("read again"), bytes);
        fs::write(store.path(&hash), &bytes[..4096]).expect("rewrite");
        assert!(matches!(store.read(&hash), Err(ChunkError::Corrupt(_))));
    }

    #[test]
    fn received_bytes_that_do_not_match_their_hash_are_refused() {
        let (_dir, store) = store();
        let hash = ChunkHash::of(b"right");
        let err = store.put_received(&hash, b"wrong").expect_err("refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(!store.contains(&hash));
        store.put_received(&hash, b"right").expect("accepted");
        assert!(store.contains(&hash));
    }

    #[test]
    fn sweep_keeps_only_what_is_wanted_and_open_clears_interrupted_writes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("chunks");
        let store = ChunkStore::open(&path).expect("open");
        let hashes: Vec<ChunkHash> = (0..5u8)
            .map(|i| {
                let bytes = vec![i; 10];
                let hash = ChunkHash::of(&bytes);
                store.put(&hash, &bytes).expect("put");
                hash
            })
            .collect();
        let removed = store.sweep(|h| *h == hashes[0]).expect("sweep");
        assert_eq!(removed, 4);
        assert_eq!(store.list().expect("list"), vec![hashes[0]]);
        fs::write(path.join("tmp").join("half-written"), b"x").expect("tmp file");
        drop(store);
        let store = ChunkStore::open(&path).expect("reopen");
        assert_eq!(fs::read_dir(path.join("tmp")).expect("tmp").count(), 0);
        assert_eq!(store.list().expect("list"), vec![hashes[0]]);
    }
}
