//! Power loss for one node. Its data directory is a FUSE mount of a [`Disk`] the harness holds
//! in memory: reads and writes behave as on any file system, but what was not fsynced (file
//! data, and directory entries whose directory was not fsynced) lives only in a volatile layer.
//! [`NodeDisk::power_loss`] drops that layer, so a node restarted afterwards finds only what it
//! synced — what kill -9 cannot show, since the kernel's page cache survives a killed process.
//!
//! The kernel may cache pages, names and attributes of a FUSE mount, so a power loss unmounts
//! the disk and mounts it again: nothing cached outlives the data it came from.

mod disk;
mod fuse;

pub use disk::Disk;

use anyhow::{Context, Result, anyhow};
use fuser::{BackgroundSession, Config, MountOption};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// How long an unmount may take before the harness gives up on it.
const UNMOUNT_DEADLINE: Duration = Duration::from_secs(10);

pub struct NodeDisk {
    disk: Arc<Mutex<Disk>>,
    mountpoint: PathBuf,
    session: Option<BackgroundSession>,
    /// The FUSE connection's number (the mount's minor device number), for aborting it.
    connection: Option<u32>,
}

impl NodeDisk {
    /// An empty disk mounted at `mountpoint` (created if missing).
    pub fn mount(mountpoint: &Path) -> Result<NodeDisk> {
        std::fs::create_dir_all(mountpoint)
            .with_context(|| format!("creating {}", mountpoint.display()))?;
        let mut node_disk = NodeDisk {
            disk: Arc::new(Mutex::new(Disk::new())),
            mountpoint: mountpoint.to_path_buf(),
            session: None,
            connection: None,
        };
        node_disk.mount_again()?;
        Ok(node_disk)
    }

    fn disk(&self) -> MutexGuard<'_, Disk> {
        self.disk.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn mount_again(&mut self) -> Result<()> {
        let mut config = Config::default();
        config.mount_options = vec![MountOption::FSName("chorus-lazyfs".into())];
        let fs = fuse::LazyFs {
            disk: self.disk.clone(),
        };
        let session = fuser::spawn_mount(fs, &self.mountpoint, &config).with_context(|| {
            format!(
                "mounting the power-loss file system on {} (needs /dev/fuse and root)",
                self.mountpoint.display()
            )
        })?;
        self.session = Some(session);
        self.connection = std::fs::metadata(&self.mountpoint)
            .ok()
            .map(|m| libc::minor(std::os::unix::fs::MetadataExt::dev(&m)));
        Ok(())
    }

    /// Ends the FUSE connection for every mount namespace. Each node runs in a mount namespace
    /// of its own (`ip netns exec` makes one), copied from the harness's when the node started,
    /// so other nodes' namespaces hold copies of this mount: unmounting here alone would leave
    /// the connection, and the session thread serving it, alive until those nodes restart.
    fn abort_connection(&self) -> Result<()> {
        let Some(minor) = self.connection else {
            return Ok(());
        };
        let connections = Path::new("/sys/fs/fuse/connections");
        let abort = connections.join(minor.to_string()).join("abort");
        if !abort.exists() {
            // The fusectl file system is not always mounted; root may mount it.
            let mounted = std::process::Command::new("mount")
                .args(["-t", "fusectl", "fusectl"])
                .arg(connections)
                .status()
                .is_ok_and(|s| s.success());
            if !mounted || !abort.exists() {
                return Err(anyhow!(
                    "cannot abort FUSE connection {minor}: {} is missing",
                    abort.display()
                ));
            }
        }
        std::fs::write(&abort, "1").with_context(|| format!("writing {}", abort.display()))
    }

    fn unmount(&mut self) -> Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        self.abort_connection()?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(session.umount_and_join());
        });
        match rx.recv_timeout(UNMOUNT_DEADLINE) {
            Ok(result) => {
                result.with_context(|| format!("unmounting {}", self.mountpoint.display()))
            }
            Err(_) => Err(anyhow!(
                "unmounting {} took over {UNMOUNT_DEADLINE:?} (is a process still using it?)",
                self.mountpoint.display()
            )),
        }
    }

    /// The power goes out under a node that is no longer running: everything not synced is
    /// lost. Returns the bytes kept and the bytes lost, for the log.
    pub fn power_loss(&mut self) -> Result<(u64, u64)> {
        self.unmount()?;
        let bytes = {
            let mut disk = self.disk();
            let bytes = disk.bytes();
            disk.power_loss();
            bytes
        };
        self.mount_again()?;
        Ok(bytes)
    }

    /// A new, empty disk in place of this one (a replaced machine).
    pub fn wipe(&mut self) -> Result<()> {
        self.unmount()?;
        {
            let mut disk = self.disk();
            let ignore_fsync = disk.ignore_fsync;
            *disk = Disk::new();
            disk.ignore_fsync = ignore_fsync;
        }
        self.mount_again()
    }

    /// The control: from now on fsync keeps nothing.
    pub fn ignore_fsync(&self) {
        self.disk().ignore_fsync = true;
    }
}

impl Drop for NodeDisk {
    fn drop(&mut self) {
        if let Err(e) = self.unmount() {
            tracing::warn!("{e:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Mounting needs /dev/fuse and root (CI has both; `.ci/run` runs this as root). Elsewhere
    /// the model's own tests still run.
    fn can_mount() -> bool {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let ok = root && Path::new("/dev/fuse").exists();
        if !ok {
            eprintln!("skipping: mounting FUSE needs root and /dev/fuse");
        }
        ok
    }

    #[test]
    fn a_mounted_disk_keeps_what_was_synced_through_a_power_loss() -> Result<()> {
        if !can_mount() {
            return Ok(());
        }
        let dir = std::env::temp_dir().join(format!("lazyfs-test-{}", std::process::id()));
        let mnt = dir.join("data");
        let mut disk = NodeDisk::mount(&mnt)?;
        {
            let mut synced = std::fs::File::create(mnt.join("synced"))?;
            synced.write_all(b"durable")?;
            synced.sync_all()?;
            std::fs::File::open(&mnt)?.sync_all()?;
            synced.write_all(b" and not")?;
            let mut loose = std::fs::File::create(mnt.join("unsynced-name"))?;
            loose.write_all(b"x")?;
            loose.sync_all()?;
            std::fs::create_dir(mnt.join("sub"))?;
            std::fs::write(mnt.join("sub/f"), b"y")?;
        }
        assert_eq!(std::fs::read(mnt.join("synced"))?, b"durable and not");
        disk.power_loss()?;
        assert_eq!(std::fs::read(mnt.join("synced"))?, b"durable");
        assert!(!mnt.join("unsynced-name").exists());
        assert!(!mnt.join("sub").exists());
        let names: Vec<_> = std::fs::read_dir(&mnt)?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("synced")]);
        disk.wipe()?;
        assert!(!mnt.join("synced").exists());
        drop(disk);
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
