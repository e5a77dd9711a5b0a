//! sled 0.34 made durable where chorus relies on it.
//!
//! sled's `flush` is not enough to survive a power loss or a kernel crash (a killed process is
//! another matter: what it wrote is in the page cache):
//! - it writes its log file `db` with `sync_file_range`, which neither flushes the drive's write
//!   cache nor records a grown file's new size (sled's background flusher calls `fsync` on that
//!   file about once a second, whenever it happens to run);
//! - it writes every record larger than a quarter segment (128 KiB: a large dedupe group or
//!   state record, and every leaf of them it rewrites) to a file of its own under `blobs/`, and
//!   never syncs those files. Its recovery skips a record whose blob file is missing or torn and
//!   goes on.
//!
//! So where chorus relies on what sled holds — the vote, the purge point, an installed
//! snapshot before the log behind it is purged — it calls one of these instead of `flush`.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A sled database and the directory sled keeps it in.
#[derive(Clone, Debug)]
pub(crate) struct DurableSled {
    db: sled::Db,
    dir: Arc<PathBuf>,
}

impl DurableSled {
    pub(crate) fn new(db: sled::Db, dir: &Path) -> Self {
        Self {
            db,
            dir: Arc::new(dir.to_path_buf()),
        }
    }

    pub(crate) fn db(&self) -> &sled::Db {
        &self.db
    }

    /// sled's flush, then an `fdatasync` of its log file. Enough for small values, which sled
    /// keeps inside that file (the vote and the purge point). Blocking.
    pub(crate) fn sync_small_values(&self) -> io::Result<()> {
        self.db.flush().map_err(io::Error::other)?;
        File::open(self.dir.join("db"))?.sync_data()
    }

    /// [`Self::sync_small_values`], then an `fdatasync` of every blob file and of sled's `conf`
    /// (which sled writes once and never syncs), and of the directories that list them. Blocking.
    ///
    /// Not `syncfs`: that writes everything dirty on the file system, other processes' data too,
    /// and with the three nodes of the benchmarks on one disk the first snapshot build after a
    /// 10 MiB upload put one-client p99 from ~2.1 to ~2.7 ms (p999 12–24 -> 26–31 ms); with a
    /// sync per file, 2.2–2.4 ms (p999 9–12 ms). A blob file already on disk costs little more
    /// than the call (1,500 such `fdatasync`s took 0.1 s here).
    pub(crate) fn sync_everything(&self) -> io::Result<()> {
        self.sync_small_values()?;
        let blobs = self.dir.join("blobs");
        match std::fs::read_dir(&blobs) {
            Ok(entries) => {
                for entry in entries {
                    match File::open(entry?.path()).and_then(|f| f.sync_data()) {
                        Ok(()) => {}
                        // sled removes blob files it no longer needs at any time.
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e),
                    }
                }
                File::open(&blobs)?.sync_all()?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        File::open(self.dir.join("conf"))?.sync_data()?;
        File::open(&*self.dir)?.sync_all()
    }
}

/// Test support: how many pages of sled's files are not on disk yet (dirty or under
/// writeback), from the kernel's page cache (`cachestat`, Linux 6.5 and later).
#[cfg(test)]
pub(crate) mod unsynced {
    use std::fs::File;
    use std::io;
    use std::path::Path;

    fn pages_not_on_disk(file: &Path) -> io::Result<u64> {
        let stat = crate::page_cache::stat(&File::open(file)?)?;
        Ok(stat.dirty + stat.writeback)
    }

    /// Pages of every file under `dir` (recursively) that the kernel has not written yet.
    pub(crate) fn pages_under(dir: &Path) -> io::Result<u64> {
        let mut total = 0;
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d)? {
                let entry = entry?;
                let kind = entry.file_type()?;
                if kind.is_dir() {
                    stack.push(entry.path());
                } else if kind.is_file() {
                    match pages_not_on_disk(&entry.path()) {
                        Ok(n) => total += n,
                        // sled removes blob files it no longer needs at any time.
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What sled's own flush leaves in the page cache — the blob files of large values — is on
    /// disk after `sync_everything`; small values are after `sync_small_values`.
    #[test]
    fn sync_leaves_nothing_of_sleds_files_unwritten() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("db");
        let db = sled::Config::new()
            .path(&path)
            .flush_every_ms(None)
            .open()
            .expect("open sled");
        let durable = DurableSled::new(db.clone(), &path);
        let audio = db.open_tree("audio").expect("tree");
        for i in 0..8u64 {
            audio
                .insert(i.to_be_bytes(), vec![i as u8; 1024 * 1024])
                .expect("insert");
        }
        db.flush().expect("flush");
        let after_flush = unsynced::pages_under(&path).expect("cachestat");
        assert!(
            after_flush > 0,
            "sled's flush left nothing unwritten; this test no longer shows what it is for"
        );
        durable.sync_everything().expect("sync everything");
        assert_eq!(unsynced::pages_under(&path).expect("cachestat"), 0);

        let meta = db.open_tree("raft_meta").expect("tree");
        meta.insert(b"vote", vec![1u8; 64]).expect("insert");
        durable.sync_small_values().expect("sync small values");
        assert_eq!(unsynced::pages_under(&path).expect("cachestat"), 0);
    }
}
