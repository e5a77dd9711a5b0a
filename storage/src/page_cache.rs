//! What the kernel's page cache holds of a file, by `cachestat` (Linux 6.5 and later).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Pages of a file: in the page cache, dirty (not written yet), under writeback.
#[derive(Debug, Default, Clone, Copy)]
#[repr(C)]
pub(crate) struct CacheStat {
    pub cached: u64,
    pub dirty: u64,
    pub writeback: u64,
    evicted: u64,
    recently_evicted: u64,
}

#[repr(C)]
struct Range {
    off: u64,
    len: u64,
}

/// `cachestat`'s number in the generic syscall table (x86_64 and aarch64 alike).
const SYS_CACHESTAT: libc::c_long = 451;

/// The page cache's view of the whole of `file`.
pub(crate) fn stat(file: &File) -> io::Result<CacheStat> {
    // A length of 0 means "to the end of the file".
    let range = Range { off: 0, len: 0 };
    let mut stat = CacheStat::default();
    // SAFETY: both pointers refer to live, properly laid out structs for the whole call.
    let rc = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            file.as_raw_fd(),
            &range as *const Range,
            &mut stat as *mut CacheStat,
            0u32,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stat)
}
