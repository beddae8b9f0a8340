//! Small files the node writes into its data directory (its id, generated secrets): written so a
//! crash or power loss leaves either the old file or the complete new one, never an empty one,
//! and secrets readable by the node's user only.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Owner read/write only.
pub const PRIVATE: u32 = 0o600;

/// Writes `contents` to `path` atomically and durably: a temporary file with `mode` is written
/// and fsynced, renamed over `path`, and the directory is fsynced so the rename survives a
/// power loss.
pub fn write_durably(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
        // `mode` applies only when the file is created; a leftover temporary file keeps its own.
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(contents)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

/// Makes an existing secret file private if it is readable by others (written by an older
/// version); returns whether it changed anything.
pub fn make_private(path: &Path) -> std::io::Result<bool> {
    let perms = std::fs::metadata(path)?.permissions();
    if perms.mode() & 0o077 == 0 {
        return Ok(false);
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(PRIVATE))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_secret_is_private_and_complete() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("secret");
        write_durably(&p, b"abc", PRIVATE)?;
        assert_eq!(std::fs::read(&p)?, b"abc");
        assert_eq!(std::fs::metadata(&p)?.permissions().mode() & 0o777, 0o600);
        write_durably(&p, b"defg", PRIVATE)?;
        assert_eq!(std::fs::read(&p)?, b"defg", "replaced whole");
        assert_eq!(std::fs::read_dir(dir.path())?.count(), 1, "no temporary file left");
        Ok(())
    }

    #[test]
    fn a_world_readable_secret_is_made_private() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("old");
        std::fs::write(&p, "x")?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644))?;
        assert!(make_private(&p)?);
        assert_eq!(std::fs::metadata(&p)?.permissions().mode() & 0o777, 0o600);
        assert!(!make_private(&p)?, "already private: nothing to do");
        Ok(())
    }
}
