//! Node settings from flags, `CONFMAN_*` environment variables and a config file, in falling
//! precedence, over built-in defaults. The keys and their types are the contract's
//! [`NodeConfig`] (the operator writes the same type), so this module only reads and resolves
//! them, by job: [`flags`] (the command line), [`files`] (reading the config and members files:
//! the only I/O), [`resolve`] (pure: merge, defaults, the tuning through
//! `confman_contract::derive`, validation) and [`raft`] (the projection to the Raft layer's
//! settings). Every error names the setting at fault.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

pub use confman_contract::{MembersFile, NodeConfig};
use confman_contract::{Tuning, Violation};

use crate::raft::NodeId;

pub mod files;
pub mod flags;
pub mod raft;
pub mod resolve;

pub use files::{read_file, read_members_file};
pub use flags::Flags;
pub use resolve::{apply_members_file, parse_peers, parse_resolve};

/// A configuration error naming the setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read or parsed.
    #[error("config file {path}: {reason}")]
    File {
        /// File path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A setting has an unusable value.
    #[error("invalid setting {setting}: {reason}")]
    Invalid {
        /// Setting name as a flag (without `--`).
        setting: &'static str,
        /// Why.
        reason: String,
    },
    /// Timing or size settings are inconsistent.
    #[error("inconsistent timing settings:\n  {}", .0.iter().map(|v| v.to_string()).collect::<Vec<_>>().join("\n  "))]
    Tuning(Vec<Violation>),
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The listener's certificate chain and key (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
}

/// Fully resolved node settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Raft node id.
    pub node_id: NodeId,
    /// Listen address.
    pub listen: SocketAddr,
    /// Advertised base URL.
    pub advertise: String,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Bootstrap members (empty: single node).
    pub peers: BTreeMap<NodeId, String>,
    /// Wait to be added instead of bootstrapping.
    pub join: bool,
    /// API keys file, if any.
    pub api_keys_file: Option<PathBuf>,
    /// ServiceAccounts file, if any (ServiceAccount tokens are then accepted too).
    pub service_accounts_file: Option<PathBuf>,
    /// Cluster token file, if any.
    pub cluster_token_file: Option<PathBuf>,
    /// Superseded versions kept per key.
    pub history_depth: u64,
    /// Timing and sizes.
    pub tuning: Tuning,
    /// Host name overrides for peer URLs.
    pub resolve: Vec<(String, IpAddr)>,
    /// Log format.
    pub log_format: LogFormat,
    /// TLS certificate chain and key for the listener (None: plain HTTP).
    pub tls: Option<TlsFiles>,
    /// CA bundle for outgoing calls to https:// peers.
    pub tls_ca_file: Option<PathBuf>,
    /// How often the certificate files are re-read.
    pub tls_reload: Duration,
    /// Connection limits and timeouts of the listener.
    pub limits: crate::listener::Limits,
    /// Bytes of client write bodies held at once (`api::write_budget`).
    pub write_budget_bytes: u64,
    /// Free space kept on the data directory's filesystem (`disk_space`).
    pub disk_reserve_bytes: u64,
    /// This node id has held a place in the group (operator ledger): starting it on an empty
    /// data directory would forget its vote and log, so the node refuses to (see
    /// `server::start`).
    pub was_member: bool,
}

impl Settings {
    /// Resolves flags/environment over the config file over defaults, with the members file
    /// when one is named, and validates. Reads the files; the rest is [`Settings::from_config`].
    pub fn resolve(flags: Flags) -> Result<Settings, ConfigError> {
        let file = match &flags.config {
            Some(path) => read_file(path)?,
            None => NodeConfig::default(),
        };
        let merged = flags.settings.or(file);
        let members = match &merged.members_file {
            Some(path) => Some(read_members_file(path)?),
            None => None,
        };
        Self::from_config(merged, members.as_ref())
    }
}

/// A file holding `text` in a fresh temporary directory, which lives as long as the guard.
#[cfg(test)]
fn temp_file(name: &str, text: &str) -> std::io::Result<(tempfile::TempDir, PathBuf)> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join(name);
    std::fs::write(&path, text)?;
    Ok((dir, path))
}
