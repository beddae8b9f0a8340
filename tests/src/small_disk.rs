//! Small filesystems of their own for test nodes' data directories (a size-limited tmpfs
//! mounted on each), and a filler file that takes one down to a chosen free space — the
//! fault suite's full disk. The mounts carry the creating process's id in their source name
//! and are unmounted on drop; mounts a killed run left behind are swept at the next start.
//! Needs root.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cluster::{HarnessError, Result};

/// Prefix of every mount source this module creates (`cfdisk-<pid>`), for the sweep.
const SOURCE_PREFIX: &str = "cfdisk-";

/// Name of the filler file inside a data directory.
const FILLER: &str = "disk-filler";

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output()?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(HarnessError::Unexpected(format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim())))
    }
}

/// Unmounts the mounts of runs whose process is gone.
fn sweep() {
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else { return };
    for line in mounts.lines() {
        let mut fields = line.split_whitespace();
        let (Some(source), Some(target)) = (fields.next(), fields.next()) else { continue };
        let dead = source
            .strip_prefix(SOURCE_PREFIX)
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
        if dead {
            let _ = run(Command::new("umount").args(["-l", target]));
        }
    }
}

/// The small filesystems of one cluster.
#[derive(Debug)]
pub struct SmallDisks {
    mounted: Vec<PathBuf>,
}

impl SmallDisks {
    /// Mounts a tmpfs of `bytes` on each of `dirs` (created if missing).
    pub fn mount(dirs: &[PathBuf], bytes: u64) -> Result<SmallDisks> {
        sweep();
        let mut disks = SmallDisks { mounted: Vec::new() };
        let source = format!("{SOURCE_PREFIX}{}", std::process::id());
        for dir in dirs {
            std::fs::create_dir_all(dir)?;
            run(Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={bytes},mode=0700"), &source])
                .arg(dir))?;
            // Pushed once mounted: a failure on a later one unmounts the earlier on drop.
            disks.mounted.push(dir.clone());
        }
        Ok(disks)
    }

    /// Fills the filesystem of `dir` (one of these) until `leave` bytes are free; returns
    /// the filler's size. A filler already there grows.
    pub fn fill(dir: &Path, leave: u64) -> Result<u64> {
        let free = free_bytes(dir)?;
        let filler = dir.join(FILLER);
        let have = std::fs::metadata(&filler).map(|m| m.len()).unwrap_or(0);
        let size = have + free.saturating_sub(leave);
        // Allocated, not sparse: a sparse file would take no space.
        run(Command::new("fallocate").args(["-l", &size.to_string()]).arg(&filler))?;
        Ok(size)
    }

    /// Removes the filler of `dir`, if any.
    pub fn unfill(dir: &Path) -> Result<()> {
        match std::fs::remove_file(dir.join(FILLER)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }
}

/// Free bytes on the filesystem of `dir`, as an unprivileged writer sees them.
pub fn free_bytes(dir: &Path) -> Result<u64> {
    let out = run(Command::new("df").args(["--output=avail", "-B1"]).arg(dir))?;
    out.lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| HarnessError::Unexpected(format!("df printed {out:?}")))
}

impl Drop for SmallDisks {
    fn drop(&mut self) {
        for dir in &self.mounted {
            if let Err(e) = run(Command::new("umount").args(["-l"]).arg(dir)) {
                eprintln!("cannot unmount the test disk {}: {e}", dir.display());
            }
        }
    }
}
