//! Reading the config file and the members file: the only I/O of the configuration. Parsing is
//! strict (an unknown key is an error naming it), so a misspelt setting is never ignored.

use std::path::Path;

use super::{ConfigError, MembersFile, NodeConfig};

/// Reads a config file (TOML, or YAML by extension).
pub fn read_file(path: &Path) -> Result<NodeConfig, ConfigError> {
    let fail = |reason: String| ConfigError::File { path: path.to_path_buf(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let yaml = matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"));
    if yaml {
        serde_yaml_ng::from_str(&text).map_err(|e| fail(e.to_string()))
    } else {
        toml::from_str(&text).map_err(|e| fail(e.to_string()))
    }
}

/// Reads a membership file (TOML).
pub fn read_members_file(path: &Path) -> Result<MembersFile, ConfigError> {
    let fail = |reason: String| ConfigError::File { path: path.to_path_buf(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    toml::from_str(&text).map_err(|e| fail(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::temp_file;

    #[test]
    fn yaml_file_and_unknown_keys() -> Result<(), Box<dyn std::error::Error>> {
        let (_dir, ok) = temp_file("node.yaml", "node_id: 4\nmax_value_bytes: 1048576\n")?;
        assert_eq!(read_file(&ok)?.node_id, Some(4));
        let (_dir, bad) = temp_file("bad.toml", "node_idd = 4\n")?;
        let err = read_file(&bad).err().ok_or("expected an error")?.to_string();
        assert!(err.contains("node_idd"), "{err}");
        Ok(())
    }

    #[test]
    fn members_file_is_read_strictly() -> Result<(), Box<dyn std::error::Error>> {
        let (_dir, ok) = temp_file("members.toml", "bootstrap_peers = \"1=http://a:1\"\n[ids]\na-0 = 1\n")?;
        assert_eq!(read_members_file(&ok)?.ids.get("a-0"), Some(&1));
        std::fs::write(&ok, "bootstrap = \"x\"\n")?;
        assert!(read_members_file(&ok).is_err());
        Ok(())
    }
}
