//! The file system's contents as a disk with a volatile cache in front of it: every change is
//! visible at once, but only what was fsynced survives [`Disk::power_loss`].
//!
//! What counts as synced follows POSIX, as strictly as a real disk may behave:
//! - a file's data (and size) is durable once the file is fsynced (`fsync` or `fdatasync`);
//! - a directory entry (a create, link, unlink or rename) is durable once *its directory* is
//!   fsynced — fsyncing the file does not make its name durable;
//! - a directory reachable only through entries that were never synced is gone after power
//!   loss, with everything under it.
//!
//! Errors are `errno` values, for the FUSE layer to pass on.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::time::SystemTime;

pub type Ino = u64;
pub const ROOT: Ino = 1;
/// The unit of copy-on-write between the synced data and the volatile cache.
pub const BLOCK: u64 = 4096;

pub type Errno = i32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
}

/// What `stat` shows of an inode.
#[derive(Clone, Debug)]
pub struct Attr {
    pub ino: Ino,
    pub kind: Kind,
    pub size: u64,
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
}

/// A file's bytes: what was synced, and what was written since (whole blocks, copied on write).
#[derive(Default)]
struct FileData {
    synced: HashMap<u64, Box<[u8]>>,
    synced_len: u64,
    dirty: BTreeMap<u64, Box<[u8]>>,
    /// A truncation since the last sync: synced blocks from this index on read as zeros.
    cut_from: Option<u64>,
    len: u64,
}

impl FileData {
    fn block(&self, b: u64) -> Option<&[u8]> {
        if let Some(d) = self.dirty.get(&b) {
            return Some(d);
        }
        if self.cut_from.is_some_and(|c| b >= c) {
            return None;
        }
        self.synced.get(&b).map(|s| &s[..])
    }

    fn block_mut(&mut self, b: u64) -> &mut [u8] {
        if !self.dirty.contains_key(&b) {
            let copy = match self.block(b) {
                Some(bytes) => bytes.into(),
                None => vec![0; BLOCK as usize].into_boxed_slice(),
            };
            self.dirty.insert(b, copy);
        }
        self.dirty
            .get_mut(&b)
            .map(|d| &mut d[..])
            .unwrap_or(&mut [])
    }

    fn read(&self, offset: u64, size: u32) -> Vec<u8> {
        let end = self.len.min(offset.saturating_add(u64::from(size)));
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut pos = offset;
        while pos < end {
            let (b, within) = (pos / BLOCK, (pos % BLOCK) as usize);
            let take = ((BLOCK - pos % BLOCK).min(end - pos)) as usize;
            match self.block(b) {
                Some(bytes) => out.extend_from_slice(&bytes[within..within + take]),
                None => out.resize(out.len() + take, 0),
            }
            pos += take as u64;
        }
        out
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut done = 0usize;
        while done < data.len() {
            let pos = offset + done as u64;
            let (b, within) = (pos / BLOCK, (pos % BLOCK) as usize);
            let take = (BLOCK as usize - within).min(data.len() - done);
            self.block_mut(b)[within..within + take].copy_from_slice(&data[done..done + take]);
            done += take;
        }
        self.len = self.len.max(offset + data.len() as u64);
    }

    /// Bytes at or past `len` always read as zeros, so growing a file needs no work here.
    fn truncate(&mut self, len: u64) {
        if len < self.len {
            let keep = len.div_ceil(BLOCK);
            self.dirty.retain(|&b, _| b < keep);
            self.cut_from = Some(self.cut_from.map_or(keep, |c| c.min(keep)));
            if !len.is_multiple_of(BLOCK) {
                let within = (len % BLOCK) as usize;
                self.block_mut(len / BLOCK)[within..].fill(0);
            }
        }
        self.len = len;
    }

    fn sync(&mut self) {
        if let Some(cut) = self.cut_from.take() {
            self.synced.retain(|&b, _| b < cut);
        }
        self.synced.extend(std::mem::take(&mut self.dirty));
        self.synced_len = self.len;
    }

    fn lose_unsynced(&mut self) {
        self.dirty.clear();
        self.cut_from = None;
        self.len = self.synced_len;
    }
}

#[derive(Default)]
struct DirData {
    entries: BTreeMap<OsString, Ino>,
    synced: BTreeMap<OsString, Ino>,
}

enum Content {
    File(FileData),
    Dir(DirData),
}

struct Inode {
    content: Content,
    perm: u16,
    uid: u32,
    gid: u32,
    mtime: SystemTime,
    ctime: SystemTime,
    /// Entries naming this inode now, and in the synced directories.
    links: u32,
    synced_links: u32,
    /// Open file handles: an unlinked file lives until the last one is closed.
    open: u32,
}

impl Inode {
    fn new(kind: Kind, perm: u16, uid: u32, gid: u32) -> Inode {
        let now = SystemTime::now();
        Inode {
            content: match kind {
                Kind::File => Content::File(FileData::default()),
                Kind::Dir => Content::Dir(DirData::default()),
            },
            perm,
            uid,
            gid,
            mtime: now,
            ctime: now,
            links: 0,
            synced_links: 0,
            open: 0,
        }
    }

    fn kind(&self) -> Kind {
        match self.content {
            Content::File(_) => Kind::File,
            Content::Dir(_) => Kind::Dir,
        }
    }
}

pub struct Disk {
    inodes: HashMap<Ino, Inode>,
    next_ino: Ino,
    /// The control: fsync answers success and keeps nothing, as a disk with a lying write cache.
    pub ignore_fsync: bool,
}

impl Default for Disk {
    fn default() -> Self {
        Self::new()
    }
}

impl Disk {
    /// An empty disk: a root directory owned by root.
    pub fn new() -> Disk {
        let mut root = Inode::new(Kind::Dir, 0o755, 0, 0);
        (root.links, root.synced_links) = (1, 1);
        Disk {
            inodes: HashMap::from([(ROOT, root)]),
            next_ino: ROOT + 1,
            ignore_fsync: false,
        }
    }

    fn inode(&self, ino: Ino) -> Result<&Inode, Errno> {
        self.inodes.get(&ino).ok_or(libc::ENOENT)
    }

    fn inode_mut(&mut self, ino: Ino) -> Result<&mut Inode, Errno> {
        self.inodes.get_mut(&ino).ok_or(libc::ENOENT)
    }

    fn dir(&self, ino: Ino) -> Result<&DirData, Errno> {
        match &self.inode(ino)?.content {
            Content::Dir(d) => Ok(d),
            Content::File(_) => Err(libc::ENOTDIR),
        }
    }

    fn dir_mut(&mut self, ino: Ino) -> Result<&mut DirData, Errno> {
        match &mut self.inode_mut(ino)?.content {
            Content::Dir(d) => Ok(d),
            Content::File(_) => Err(libc::ENOTDIR),
        }
    }

    fn file(&self, ino: Ino) -> Result<&FileData, Errno> {
        match &self.inode(ino)?.content {
            Content::File(f) => Ok(f),
            Content::Dir(_) => Err(libc::EISDIR),
        }
    }

    fn file_mut(&mut self, ino: Ino) -> Result<&mut FileData, Errno> {
        let inode = self.inode_mut(ino)?;
        inode.mtime = SystemTime::now();
        inode.ctime = inode.mtime;
        match &mut inode.content {
            Content::File(f) => Ok(f),
            Content::Dir(_) => Err(libc::EISDIR),
        }
    }

    pub fn attr(&self, ino: Ino) -> Result<Attr, Errno> {
        let inode = self.inode(ino)?;
        let (size, nlink) = match &inode.content {
            Content::File(f) => (f.len, inode.links),
            Content::Dir(d) => {
                let subdirs = d
                    .entries
                    .values()
                    .filter(|c| self.inodes.get(c).is_some_and(|i| i.kind() == Kind::Dir))
                    .count();
                (4096, 2 + subdirs as u32)
            }
        };
        Ok(Attr {
            ino,
            kind: inode.kind(),
            size,
            perm: inode.perm,
            nlink,
            uid: inode.uid,
            gid: inode.gid,
            mtime: inode.mtime,
            ctime: inode.ctime,
        })
    }

    pub fn lookup(&self, parent: Ino, name: &OsStr) -> Result<Attr, Errno> {
        let ino = *self.dir(parent)?.entries.get(name).ok_or(libc::ENOENT)?;
        self.attr(ino)
    }

    pub fn entries(&self, ino: Ino) -> Result<Vec<(OsString, Ino, Kind)>, Errno> {
        Ok(self
            .dir(ino)?
            .entries
            .iter()
            .filter_map(|(name, &child)| {
                let kind = self.inodes.get(&child)?.kind();
                Some((name.clone(), child, kind))
            })
            .collect())
    }

    /// A new file or directory named `name` in `parent`.
    pub fn create(
        &mut self,
        parent: Ino,
        name: &OsStr,
        kind: Kind,
        perm: u16,
        uid: u32,
        gid: u32,
    ) -> Result<Attr, Errno> {
        if self.dir(parent)?.entries.contains_key(name) {
            return Err(libc::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.inodes.insert(ino, Inode::new(kind, perm, uid, gid));
        self.add_entry(parent, name, ino)?;
        self.attr(ino)
    }

    /// Another name for file `ino`.
    pub fn link(&mut self, ino: Ino, parent: Ino, name: &OsStr) -> Result<Attr, Errno> {
        if self.inode(ino)?.kind() == Kind::Dir {
            return Err(libc::EPERM);
        }
        if self.dir(parent)?.entries.contains_key(name) {
            return Err(libc::EEXIST);
        }
        self.add_entry(parent, name, ino)?;
        self.attr(ino)
    }

    fn add_entry(&mut self, parent: Ino, name: &OsStr, ino: Ino) -> Result<(), Errno> {
        self.dir_mut(parent)?.entries.insert(name.to_owned(), ino);
        self.inode_mut(ino)?.links += 1;
        self.touch(parent);
        Ok(())
    }

    fn remove_entry(&mut self, parent: Ino, name: &OsStr) -> Result<Ino, Errno> {
        let ino = self
            .dir_mut(parent)?
            .entries
            .remove(name)
            .ok_or(libc::ENOENT)?;
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.links = inode.links.saturating_sub(1);
            inode.ctime = SystemTime::now();
        }
        self.touch(parent);
        self.free_if_unused(ino);
        Ok(ino)
    }

    fn touch(&mut self, ino: Ino) {
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.mtime = SystemTime::now();
            inode.ctime = inode.mtime;
        }
    }

    pub fn unlink(&mut self, parent: Ino, name: &OsStr) -> Result<(), Errno> {
        if self.lookup(parent, name)?.kind == Kind::Dir {
            return Err(libc::EISDIR);
        }
        self.remove_entry(parent, name).map(drop)
    }

    pub fn rmdir(&mut self, parent: Ino, name: &OsStr) -> Result<(), Errno> {
        let ino = self.lookup(parent, name)?.ino;
        if !self.dir(ino)?.entries.is_empty() {
            return Err(libc::ENOTEMPTY);
        }
        self.remove_entry(parent, name).map(drop)
    }

    pub fn rename(
        &mut self,
        parent: Ino,
        name: &OsStr,
        new_parent: Ino,
        new_name: &OsStr,
        no_replace: bool,
    ) -> Result<(), Errno> {
        let moving = self.lookup(parent, name)?;
        self.dir(new_parent)?;
        if let Ok(target) = self.lookup(new_parent, new_name) {
            if no_replace {
                return Err(libc::EEXIST);
            }
            if target.ino == moving.ino {
                return Ok(());
            }
            match (moving.kind, target.kind) {
                (Kind::File, Kind::Dir) => return Err(libc::EISDIR),
                (Kind::Dir, Kind::File) => return Err(libc::ENOTDIR),
                (Kind::Dir, Kind::Dir) if !self.dir(target.ino)?.entries.is_empty() => {
                    return Err(libc::ENOTEMPTY);
                }
                _ => {}
            }
            // Take the new link first so the moving inode is never left with none.
            self.remove_entry(new_parent, new_name)?;
        }
        self.add_entry(new_parent, new_name, moving.ino)?;
        self.remove_entry(parent, name).map(drop)
    }

    pub fn set_perm(&mut self, ino: Ino, perm: u16) -> Result<(), Errno> {
        let inode = self.inode_mut(ino)?;
        inode.perm = perm;
        inode.ctime = SystemTime::now();
        Ok(())
    }

    pub fn set_owner(&mut self, ino: Ino, uid: Option<u32>, gid: Option<u32>) -> Result<(), Errno> {
        let inode = self.inode_mut(ino)?;
        inode.uid = uid.unwrap_or(inode.uid);
        inode.gid = gid.unwrap_or(inode.gid);
        Ok(())
    }

    pub fn set_mtime(&mut self, ino: Ino, mtime: SystemTime) -> Result<(), Errno> {
        self.inode_mut(ino)?.mtime = mtime;
        Ok(())
    }

    pub fn truncate(&mut self, ino: Ino, len: u64) -> Result<(), Errno> {
        self.file_mut(ino)?.truncate(len);
        Ok(())
    }

    pub fn read(&self, ino: Ino, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        Ok(self.file(ino)?.read(offset, size))
    }

    pub fn write(&mut self, ino: Ino, offset: u64, data: &[u8]) -> Result<(), Errno> {
        if offset.checked_add(data.len() as u64).is_none() {
            return Err(libc::EFBIG);
        }
        self.file_mut(ino)?.write(offset, data);
        Ok(())
    }

    pub fn open(&mut self, ino: Ino) -> Result<(), Errno> {
        self.inode_mut(ino)?.open += 1;
        Ok(())
    }

    pub fn release(&mut self, ino: Ino) {
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.open = inode.open.saturating_sub(1);
        }
        self.free_if_unused(ino);
    }

    /// fsync of a file (its data and size) or of a directory (its entries).
    pub fn fsync(&mut self, ino: Ino) -> Result<(), Errno> {
        if self.ignore_fsync {
            self.inode(ino)?;
            return Ok(());
        }
        match &mut self.inode_mut(ino)?.content {
            Content::File(f) => {
                f.sync();
                Ok(())
            }
            Content::Dir(d) => {
                let (gone, added) = diff(&d.synced, &d.entries);
                d.synced = d.entries.clone();
                for child in added {
                    if let Some(c) = self.inodes.get_mut(&child) {
                        c.synced_links += 1;
                    }
                }
                for child in gone {
                    if let Some(c) = self.inodes.get_mut(&child) {
                        c.synced_links = c.synced_links.saturating_sub(1);
                    }
                    self.free_if_unused(child);
                }
                Ok(())
            }
        }
    }

    /// Drops an inode that nothing names, now or after a power loss, and nobody has open.
    fn free_if_unused(&mut self, ino: Ino) {
        let mut queue = VecDeque::from([ino]);
        while let Some(ino) = queue.pop_front() {
            let unused = self
                .inodes
                .get(&ino)
                .is_some_and(|i| ino != ROOT && i.links == 0 && i.synced_links == 0 && i.open == 0);
            if !unused {
                continue;
            }
            if let Some(Inode {
                content: Content::Dir(d),
                ..
            }) = self.inodes.remove(&ino)
            {
                for child in d.synced.into_values() {
                    if let Some(c) = self.inodes.get_mut(&child) {
                        c.synced_links = c.synced_links.saturating_sub(1);
                    }
                    queue.push_back(child);
                }
            }
        }
    }

    /// The power goes out: every file and directory is as it was when last synced, and what
    /// only unsynced entries named is gone.
    pub fn power_loss(&mut self) {
        for inode in self.inodes.values_mut() {
            match &mut inode.content {
                Content::File(f) => f.lose_unsynced(),
                Content::Dir(d) => d.entries = d.synced.clone(),
            }
            inode.open = 0;
        }
        let mut links: HashMap<Ino, u32> = HashMap::from([(ROOT, 1)]);
        let mut seen = HashSet::from([ROOT]);
        let mut queue = VecDeque::from([ROOT]);
        while let Some(ino) = queue.pop_front() {
            let Ok(dir) = self.dir(ino) else { continue };
            for &child in dir.entries.values() {
                *links.entry(child).or_default() += 1;
                if seen.insert(child) {
                    queue.push_back(child);
                }
            }
        }
        self.inodes.retain(|ino, _| seen.contains(ino));
        for (ino, inode) in &mut self.inodes {
            let n = links.get(ino).copied().unwrap_or(0);
            (inode.links, inode.synced_links) = (n, n);
        }
    }

    /// Bytes held, synced and not (for the harness's log).
    pub fn bytes(&self) -> (u64, u64) {
        self.inodes
            .values()
            .filter_map(|i| match &i.content {
                Content::File(f) => {
                    Some((f.synced.len() as u64 * BLOCK, f.dirty.len() as u64 * BLOCK))
                }
                Content::Dir(_) => None,
            })
            .fold((0, 0), |(a, b), (c, d)| (a + c, b + d))
    }
}

/// Inodes named in `old` and not in `new` (by name and inode), and the other way round.
fn diff(old: &BTreeMap<OsString, Ino>, new: &BTreeMap<OsString, Ino>) -> (Vec<Ino>, Vec<Ino>) {
    let gone = old
        .iter()
        .filter(|(name, ino)| new.get(*name) != Some(ino))
        .map(|(_, &ino)| ino)
        .collect();
    let added = new
        .iter()
        .filter(|(name, ino)| old.get(*name) != Some(ino))
        .map(|(_, &ino)| ino)
        .collect();
    (gone, added)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    fn file(disk: &mut Disk, parent: Ino, n: &str) -> Ino {
        disk.create(parent, name(n), Kind::File, 0o644, 0, 0)
            .map(|a| a.ino)
            .unwrap_or(0)
    }

    fn read_all(disk: &Disk, parent: Ino, n: &str) -> Option<Vec<u8>> {
        let ino = disk.lookup(parent, name(n)).ok()?.ino;
        disk.read(ino, 0, u32::MAX).ok()
    }

    #[test]
    fn unsynced_data_and_names_are_lost_synced_ones_stay() {
        let mut d = Disk::new();
        let a = file(&mut d, ROOT, "a");
        d.write(a, 0, b"kept").ok();
        d.fsync(a).ok();
        d.fsync(ROOT).ok();
        d.write(a, 4, b" and lost").ok();
        let b = file(&mut d, ROOT, "b");
        d.write(b, 0, b"synced data, unsynced name").ok();
        d.fsync(b).ok();
        assert_eq!(
            read_all(&d, ROOT, "a").as_deref(),
            Some(&b"kept and lost"[..])
        );
        d.power_loss();
        assert_eq!(read_all(&d, ROOT, "a").as_deref(), Some(&b"kept"[..]));
        assert_eq!(d.lookup(ROOT, name("b")).err(), Some(libc::ENOENT));
    }

    #[test]
    fn rename_is_durable_only_with_its_directory() {
        let mut d = Disk::new();
        let old = file(&mut d, ROOT, "current");
        d.write(old, 0, b"old").ok();
        d.fsync(old).ok();
        d.fsync(ROOT).ok();
        // The write-temp, fsync, rename pattern without the directory fsync.
        let tmp = file(&mut d, ROOT, "tmp");
        d.write(tmp, 0, b"new").ok();
        d.fsync(tmp).ok();
        d.rename(ROOT, name("tmp"), ROOT, name("current"), false)
            .ok();
        assert_eq!(read_all(&d, ROOT, "current").as_deref(), Some(&b"new"[..]));
        d.power_loss();
        assert_eq!(read_all(&d, ROOT, "current").as_deref(), Some(&b"old"[..]));
        // And with it.
        let tmp = file(&mut d, ROOT, "tmp");
        d.write(tmp, 0, b"new").ok();
        d.fsync(tmp).ok();
        d.rename(ROOT, name("tmp"), ROOT, name("current"), false)
            .ok();
        d.fsync(ROOT).ok();
        d.power_loss();
        assert_eq!(read_all(&d, ROOT, "current").as_deref(), Some(&b"new"[..]));
        assert_eq!(d.lookup(ROOT, name("tmp")).err(), Some(libc::ENOENT));
        assert_eq!(d.inodes.len(), 2, "the replaced file is freed");
    }

    #[test]
    fn truncation_and_growth_follow_the_last_sync() {
        let mut d = Disk::new();
        let f = file(&mut d, ROOT, "f");
        d.fsync(ROOT).ok();
        let long: Vec<u8> = (0..3 * BLOCK + 100).map(|i| (i % 251) as u8 + 1).collect();
        d.write(f, 0, &long).ok();
        d.fsync(f).ok();
        // Shrink into the second block, grow again: the regrown bytes are zeros.
        d.truncate(f, BLOCK + 10).ok();
        d.truncate(f, 3 * BLOCK).ok();
        let now = d.read(f, 0, u32::MAX).unwrap_or_default();
        assert_eq!(
            &now[..(BLOCK + 10) as usize],
            &long[..(BLOCK + 10) as usize]
        );
        assert!(now[(BLOCK + 10) as usize..].iter().all(|&b| b == 0));
        assert_eq!(now.len() as u64, 3 * BLOCK);
        d.power_loss();
        assert_eq!(d.read(f, 0, u32::MAX).ok(), Some(long.clone()));
        // Synced after the shrink: the cut part is gone for good.
        d.truncate(f, 10).ok();
        d.fsync(f).ok();
        d.truncate(f, 2 * BLOCK).ok();
        d.power_loss();
        assert_eq!(d.read(f, 0, u32::MAX).ok(), Some(long[..10].to_vec()));
    }

    #[test]
    fn an_unsynced_directory_takes_its_synced_contents_with_it() {
        let mut d = Disk::new();
        let dir = d
            .create(ROOT, name("dir"), Kind::Dir, 0o755, 0, 0)
            .map(|a| a.ino)
            .unwrap_or(0);
        let f = file(&mut d, dir, "f");
        d.write(f, 0, b"x").ok();
        d.fsync(f).ok();
        d.fsync(dir).ok();
        d.power_loss();
        assert_eq!(d.lookup(ROOT, name("dir")).err(), Some(libc::ENOENT));
        assert_eq!(d.inodes.len(), 1);
    }

    #[test]
    fn an_unlinked_file_lives_while_open_and_links_count() {
        let mut d = Disk::new();
        let f = file(&mut d, ROOT, "f");
        d.link(f, ROOT, name("g")).ok();
        assert_eq!(d.attr(f).map(|a| a.nlink).ok(), Some(2));
        d.open(f).ok();
        d.unlink(ROOT, name("f")).ok();
        d.unlink(ROOT, name("g")).ok();
        assert!(d.write(f, 0, b"still here").is_ok());
        d.release(f);
        assert_eq!(d.attr(f).err(), Some(libc::ENOENT));
        assert_eq!(
            d.rmdir(ROOT, name("nothing")).err(),
            Some(libc::ENOENT),
            "errors are errno values"
        );
    }

    #[test]
    fn the_control_keeps_nothing() {
        let mut d = Disk::new();
        d.ignore_fsync = true;
        let f = file(&mut d, ROOT, "f");
        d.write(f, 0, b"acknowledged").ok();
        d.fsync(f).ok();
        d.fsync(ROOT).ok();
        d.power_loss();
        assert_eq!(d.lookup(ROOT, name("f")).err(), Some(libc::ENOENT));
    }
}
