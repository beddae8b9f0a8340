//! Free space on the data directory's filesystem, and the reserve the node keeps there.
//!
//! Raft cannot survive a failed log write: openraft treats any storage error as fatal and
//! stops, and a RocksDB flush that meets ENOSPC puts the database in an error state. So the
//! node never lets its disk get that far. Below `disk-reserve-bytes` of free space the node is
//! *low*: it proposes no client writes (507 `insufficient-storage`), a leader hands its
//! leadership to a member that can take them, a follower accepts no new log entries or
//! snapshots from the leader (heartbeats go on, so it calls no election) and forwards
//! linearizable reads to the leader (its own state lags). Nothing is lost: the entries it
//! refused are sent again once it has room, from the log or as a snapshot. etcd instead raises
//! a cluster-wide NOSPACE alarm that blocks every write until an operator disarms it; here the
//! cluster keeps writing while a majority has room, and a node recovers by itself once space
//! is freed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Default of `disk-reserve-bytes`: room for what still writes while the node is low (votes,
/// applying entries already received, a memtable flush of up to 96 MiB, the WAL's
/// preallocation) with some to spare.
pub const DEFAULT_DISK_RESERVE_BYTES: u64 = 256 << 20;
/// Smallest accepted reserve: below it a memtable flush alone could fill the disk.
pub const MIN_DISK_RESERVE_BYTES: u64 = 16 << 20;

/// How often the free space is read in the background (writes and appends also read it).
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Whether a node with `free` of `total` bytes free is low, given whether it `was_low`: low
/// below the reserve, and low until a quarter of the reserve more is free again (at most half
/// of what the filesystem holds beyond the reserve, so a small volume can leave the state), so
/// a disk hovering at the line does not flip the node between refusing and taking writes.
pub fn is_low(was_low: bool, free: u64, total: u64, reserve: u64) -> bool {
    let release = reserve.saturating_add((reserve / 4).min(total.saturating_sub(reserve) / 2));
    if was_low { free < release } else { free < reserve }
}

/// The data directory's free space and the node's state against its reserve.
#[derive(Debug)]
pub struct DiskSpace {
    dir: PathBuf,
    reserve: u64,
    free: AtomicU64,
    low: AtomicBool,
}

impl DiskSpace {
    /// Reads the free space of `dir`'s filesystem once.
    pub fn new(dir: &Path, reserve: u64) -> std::io::Result<Self> {
        let space = Self { dir: dir.to_path_buf(), reserve, free: AtomicU64::new(0), low: AtomicBool::new(false) };
        space.refresh()?;
        Ok(space)
    }

    /// Reads the free space now; returns whether the node is low. A failed read keeps the
    /// last state.
    pub fn refresh(&self) -> std::io::Result<bool> {
        let (free, total) = space(&self.dir)?;
        self.free.store(free, Ordering::Relaxed);
        let was = self.low.load(Ordering::Relaxed);
        let now = is_low(was, free, total, self.reserve);
        if now != was {
            self.low.store(now, Ordering::Relaxed);
            if now {
                tracing::warn!(
                    free,
                    reserve = self.reserve,
                    dir = %self.dir.display(),
                    "data directory below its free-space reserve: refusing writes and new log entries until space is freed"
                );
            } else {
                tracing::info!(free, reserve = self.reserve, "data directory has room again: taking writes");
            }
        }
        Ok(now)
    }

    /// Like [`DiskSpace::refresh`], logging a failed read and answering from the last state.
    pub fn check(&self) -> bool {
        match self.refresh() {
            Ok(low) => low,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), "cannot read the free space: {e}");
                self.is_low()
            }
        }
    }

    /// Whether the node was low at the last read.
    pub fn is_low(&self) -> bool {
        self.low.load(Ordering::Relaxed)
    }

    /// Free bytes at the last read.
    pub fn free(&self) -> u64 {
        self.free.load(Ordering::Relaxed)
    }

    /// The configured reserve.
    pub fn reserve(&self) -> u64 {
        self.reserve
    }

    /// Why writes are refused, for a problem detail or a log line.
    pub fn describe(&self) -> String {
        format!(
            "the data directory has {} bytes free, below the reserve of {} bytes (disk-reserve-bytes); \
             writes are refused until space is freed, reads go on",
            self.free(),
            self.reserve
        )
    }
}

/// Bytes available to an unprivileged writer on the filesystem holding `dir`, and its size.
fn space(dir: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    let mut st: libc::statvfs = {
        // An all-zero statvfs is a valid value of the plain C struct; statvfs fills it.
        #[allow(unsafe_code)]
        unsafe {
            std::mem::zeroed()
        }
    };
    // SAFETY: `path` is a NUL-terminated string and `st` a valid out-pointer for the call.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let block = st.f_frsize as u64;
    Ok(((st.f_bavail as u64).saturating_mul(block), (st.f_blocks as u64).saturating_mul(block)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_low_below_the_reserve_and_stays_low_until_a_quarter_more_or_half_the_rest_is_free() {
        let (reserve, total) = (100, 1000);
        assert!(!is_low(false, 100, total, reserve));
        assert!(is_low(false, 99, total, reserve));
        assert!(is_low(true, 100, total, reserve), "just at the line again: still low");
        assert!(is_low(true, 124, total, reserve));
        assert!(!is_low(true, 125, total, reserve));
        assert!(!is_low(false, u64::MAX, u64::MAX, u64::MAX / 2 + 1));
        // A volume barely larger than the reserve still leaves the state halfway up.
        assert!(!is_low(true, 110, 120, reserve));
        assert!(is_low(true, 109, 120, reserve));
    }

    #[test]
    fn the_free_space_of_a_real_directory_is_read() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let roomy = DiskSpace::new(dir.path(), 0)?;
        assert!(roomy.free() > 0);
        assert!(!roomy.is_low());
        let cramped = DiskSpace::new(dir.path(), u64::MAX)?;
        assert!(cramped.is_low(), "no filesystem has u64::MAX bytes free");
        assert!(cramped.describe().contains("disk-reserve-bytes"));
        let missing = DiskSpace::new(&dir.path().join("missing"), 0);
        assert!(missing.is_err(), "a missing directory is an error, not zero bytes free");
        Ok(())
    }
}
