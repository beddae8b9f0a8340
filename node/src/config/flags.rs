//! The command line: every key of the config file is a flag (and a `CONFMAN_*` variable) of the
//! same name, plus `--config` naming that file.

use std::path::PathBuf;

use clap::Parser;

use super::NodeConfig;

/// Flags and environment variables; unset values fall back to the config file, then to the
/// node's defaults.
#[derive(Debug, Default, Clone, Parser)]
#[command(name = "confman-node", version, about = "Confman node: a Raft-replicated configuration store")]
pub struct Flags {
    /// Config file (TOML, or YAML when it ends in .yaml/.yml) with any of these settings.
    #[arg(long, env = "CONFMAN_CONFIG")]
    pub config: Option<PathBuf>,
    /// Every other setting.
    #[command(flatten)]
    pub settings: NodeConfig,
}
