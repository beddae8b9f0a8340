//! Node settings from a config file, `CONFMAN_*` environment variables and flags, in rising
//! precedence (SPEC §2.4). Loading is pure apart from reading the config file, and every
//! error names the setting at fault.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

use crate::raft::{NodeId, RaftSettings};
use crate::tuning::{PayloadClass, Tuning, Violation};

/// Command-line flags; each is also a `CONFMAN_*` variable and a config-file key (snake_case).
/// Unset values fall back to the config file, then to built-in defaults.
#[derive(Debug, Default, Clone, Parser, Deserialize)]
#[command(name = "confman-node", version, about = "Confman node: a Raft-replicated configuration store")]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    /// Config file (TOML, or YAML when it ends in .yaml/.yml) with any of these settings.
    #[arg(long, env = "CONFMAN_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Raft node id (unique, never reused). [default: 1]
    #[arg(long, env = "CONFMAN_NODE_ID")]
    pub node_id: Option<u64>,
    /// Address to listen on for the client API and Raft RPC. [default: 127.0.0.1:8080]
    #[arg(long, env = "CONFMAN_LISTEN")]
    pub listen: Option<String>,
    /// Base URL peers and clients use to reach this node. [default: http://<listen>]
    #[arg(long, env = "CONFMAN_ADVERTISE")]
    pub advertise: Option<String>,
    /// Data directory. [default: ./data]
    #[arg(long, env = "CONFMAN_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Initial members for bootstrap, `ID=URL,...`; must include this node. Ignored once the
    /// data directory holds a cluster (membership then comes from the log).
    #[arg(long, env = "CONFMAN_PEERS")]
    pub peers: Option<String>,
    /// Operator-written membership file (TOML): `bootstrap_peers = "ID=URL,..."` and an `[ids]`
    /// table mapping pod names to node ids. With it, the node id is looked up by --pod-name, and
    /// a node that is not a bootstrap peer waits to be added (join).
    #[arg(long, env = "CONFMAN_MEMBERS_FILE")]
    pub members_file: Option<PathBuf>,
    /// This pod's name, the key looked up in --members-file.
    #[arg(long, env = "CONFMAN_POD_NAME")]
    pub pod_name: Option<String>,
    /// Never initialise a cluster: wait to be added as a learner through the admin API.
    #[arg(long, env = "CONFMAN_JOIN", num_args = 0..=1, default_missing_value = "true")]
    pub join: Option<bool>,
    /// API keys file (YAML or JSON). Without it a development admin key is generated.
    #[arg(long, env = "CONFMAN_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,
    /// File holding the shared cluster token for `/raft/*`. Required with --peers.
    #[arg(long, env = "CONFMAN_CLUSTER_TOKEN_FILE")]
    pub cluster_token_file: Option<PathBuf>,
    /// Base the timing/size defaults on a payload class: small, medium, large or huge (the
    /// operator's table); individual settings below still override. [default: node defaults]
    #[arg(long, env = "CONFMAN_PAYLOAD_CLASS")]
    pub payload_class: Option<String>,
    /// Superseded versions kept per key. [default: 10]
    #[arg(long, env = "CONFMAN_HISTORY_DEPTH")]
    pub history_depth: Option<u64>,
    /// Heartbeat interval, ms. [default: 100]
    #[arg(long, env = "CONFMAN_HEARTBEAT_MS")]
    pub heartbeat_ms: Option<u64>,
    /// Minimum election timeout, ms. [default: 1000]
    #[arg(long, env = "CONFMAN_ELECTION_MIN_MS")]
    pub election_min_ms: Option<u64>,
    /// Maximum election timeout, ms. [default: 2000]
    #[arg(long, env = "CONFMAN_ELECTION_MAX_MS")]
    pub election_max_ms: Option<u64>,
    /// Client request timeout inside the node, ms. [default: 10000]
    #[arg(long, env = "CONFMAN_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<u64>,
    /// Timeout of one AppendEntries carrying entries, ms. [default: 5000]
    #[arg(long, env = "CONFMAN_APPEND_TIMEOUT_MS")]
    pub append_timeout_ms: Option<u64>,
    /// Base allowance of a snapshot transfer, ms. [default: 30000]
    #[arg(long, env = "CONFMAN_SNAPSHOT_TIMEOUT_MS")]
    pub snapshot_timeout_ms: Option<u64>,
    /// Largest value a client may write, bytes. [default: 16777216]
    #[arg(long, env = "CONFMAN_MAX_VALUE_BYTES")]
    pub max_value_bytes: Option<u64>,
    /// Largest client request body, bytes. [default: 25165824]
    #[arg(long, env = "CONFMAN_BODY_LIMIT_BYTES")]
    pub body_limit_bytes: Option<u64>,
    /// Byte cap of one AppendEntries payload. [default: 4194304]
    #[arg(long, env = "CONFMAN_MAX_APPEND_BYTES")]
    pub max_append_bytes: Option<u64>,
    /// Entry cap of one AppendEntries payload. [default: 256]
    #[arg(long, env = "CONFMAN_MAX_APPEND_ENTRIES")]
    pub max_append_entries: Option<u64>,
    /// Snapshot after this many log bytes since the last one. [default: 67108864]
    #[arg(long, env = "CONFMAN_COMPACTION_BYTES")]
    pub compaction_bytes: Option<u64>,
    /// Snapshot after this many log entries since the last one. [default: 10000]
    #[arg(long, env = "CONFMAN_COMPACTION_ENTRIES")]
    pub compaction_entries: Option<u64>,
    /// Log entries kept after a snapshot for lagging followers; the kept tail is also held
    /// under a quarter of `--compaction-bytes` (beyond that a snapshot is cheaper). [default: 200]
    #[arg(long, env = "CONFMAN_LOGS_TO_KEEP")]
    pub logs_to_keep: Option<u64>,
    /// Fixed addresses for peer host names, `HOST=IP,...` (like curl's --resolve; the URL's port
    /// is kept). For environments without DNS for the peer names.
    #[arg(long, env = "CONFMAN_RESOLVE")]
    pub resolve: Option<String>,
    /// Log format: `text` or `json`. [default: text]
    #[arg(long, env = "CONFMAN_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// PEM certificate chain: serve the client API and Raft RPC over TLS (with --tls-key-file).
    #[arg(long, env = "CONFMAN_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of --tls-cert-file.
    #[arg(long, env = "CONFMAN_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// PEM CA bundle that peers' certificates are checked against (for Raft RPC and forwarded
    /// writes to https:// peers). [default: the system's roots]
    #[arg(long, env = "CONFMAN_TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,
    /// How often the certificate files are re-read (a renewed certificate is served without a
    /// restart), ms. [default: 30000]
    #[arg(long, env = "CONFMAN_TLS_RELOAD_MS")]
    pub tls_reload_ms: Option<u64>,
    /// Client connections open at once (TLS handshakes included); beyond it a new client gets
    /// 503, or a closed connection when the peer slots are full too. [default: 1024]
    #[arg(long, env = "CONFMAN_MAX_CLIENT_CONNECTIONS")]
    pub max_client_connections: Option<u64>,
    /// Connection slots kept for Raft peers on top of the client ones (a connection moves here
    /// once it carries an authenticated /raft/ request), so clients never starve Raft.
    /// [default: 64]
    #[arg(long, env = "CONFMAN_MAX_PEER_CONNECTIONS")]
    pub max_peer_connections: Option<u64>,
    /// Time a connection has to send a complete request header (from accept, or from the
    /// first byte of a later request), ms. [default: 10000]
    #[arg(long, env = "CONFMAN_HEADER_READ_TIMEOUT_MS")]
    pub header_read_timeout_ms: Option<u64>,
    /// Time a connection may wait between requests before it is closed, ms. [default: 90000]
    #[arg(long, env = "CONFMAN_IDLE_TIMEOUT_MS")]
    pub idle_timeout_ms: Option<u64>,
    /// Time a connection has to complete its TLS handshake, ms. [default: 10000]
    #[arg(long, env = "CONFMAN_TLS_HANDSHAKE_TIMEOUT_MS")]
    pub tls_handshake_timeout_ms: Option<u64>,
    /// Set from --members-file (never a flag): the ledger lists this node id as one that has
    /// held a place in the group, so an empty data directory means its volume was lost.
    #[arg(skip)]
    #[serde(skip)]
    pub was_member: Option<bool>,
}

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
    /// Cluster token file, if any.
    pub cluster_token_file: Option<PathBuf>,
    /// Superseded versions kept per key.
    pub history_depth: u64,
    /// Timing and sizes.
    pub tuning: Tuning,
    /// Host name overrides for peer URLs.
    pub resolve: Vec<(String, std::net::IpAddr)>,
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
    /// This node id has held a place in the group (operator ledger): starting it on an empty
    /// data directory would forget its vote and log, so the node refuses to (see
    /// `server::start`).
    pub was_member: bool,
}

macro_rules! merge_fields {
    ($hi:expr, $lo:expr, $($f:ident),* $(,)?) => {
        Overrides { config: $hi.config.or($lo.config), $($f: $hi.$f.or($lo.$f)),* }
    };
}

impl Overrides {
    /// Values of `self`, falling back to `lower` where unset.
    pub fn or(self, lower: Overrides) -> Overrides {
        merge_fields!(
            self,
            lower,
            node_id,
            listen,
            advertise,
            data_dir,
            peers,
            members_file,
            pod_name,
            join,
            api_keys_file,
            cluster_token_file,
            history_depth,
            payload_class,
            heartbeat_ms,
            election_min_ms,
            election_max_ms,
            request_timeout_ms,
            append_timeout_ms,
            snapshot_timeout_ms,
            max_value_bytes,
            body_limit_bytes,
            max_append_bytes,
            max_append_entries,
            compaction_bytes,
            compaction_entries,
            logs_to_keep,
            resolve,
            log_format,
            tls_cert_file,
            tls_key_file,
            tls_ca_file,
            tls_reload_ms,
            max_client_connections,
            max_peer_connections,
            header_read_timeout_ms,
            idle_timeout_ms,
            tls_handshake_timeout_ms,
            was_member,
        )
    }
}

/// Reads a config file (TOML, or YAML by extension).
pub fn read_file(path: &Path) -> Result<Overrides, ConfigError> {
    let fail = |reason: String| ConfigError::File { path: path.to_path_buf(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let yaml = matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"));
    if yaml {
        serde_yaml_ng::from_str(&text).map_err(|e| fail(e.to_string()))
    } else {
        toml::from_str(&text).map_err(|e| fail(e.to_string()))
    }
}

/// Parses `HOST=IP,HOST=IP,...`.
pub fn parse_resolve(s: &str) -> Result<Vec<(String, std::net::IpAddr)>, ConfigError> {
    let invalid = |reason: String| ConfigError::Invalid { setting: "resolve", reason };
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (host, ip) = part.split_once('=').ok_or_else(|| invalid(format!("{part:?} is not HOST=IP")))?;
        let ip = ip.trim().parse().map_err(|_| invalid(format!("{ip:?} is not an IP address")))?;
        if host.trim().is_empty() {
            return Err(invalid(format!("{part:?} has an empty host")));
        }
        out.push((host.trim().to_string(), ip));
    }
    Ok(out)
}

/// Parses `ID=URL,ID=URL,...`.
pub fn parse_peers(s: &str) -> Result<BTreeMap<NodeId, String>, ConfigError> {
    let invalid = |reason: String| ConfigError::Invalid { setting: "peers", reason };
    let mut peers = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, url) = part.split_once('=').ok_or_else(|| invalid(format!("{part:?} is not ID=URL")))?;
        let id: NodeId = id.trim().parse().map_err(|_| invalid(format!("{id:?} is not a numeric node id")))?;
        let url = url.trim();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(invalid(format!("{url:?} must be an http:// or https:// URL")));
        }
        if peers.insert(id, url.trim_end_matches('/').to_string()).is_some() {
            return Err(invalid(format!("node id {id} is listed twice")));
        }
    }
    Ok(peers)
}

/// The listener's connection limits and timeouts from the overrides, defaults where unset.
fn listener_limits(o: &Overrides) -> Result<crate::listener::Limits, ConfigError> {
    let d = crate::listener::Limits::default();
    let count = |setting: &'static str, v: Option<u64>, default: usize| match v {
        None => Ok(default),
        Some(0) => Err(ConfigError::Invalid { setting, reason: "must be at least 1".into() }),
        Some(n) if n > MAX_CONNECTIONS => {
            Err(ConfigError::Invalid { setting, reason: format!("{n} is above the maximum of {MAX_CONNECTIONS}") })
        }
        Some(n) => Ok(n as usize),
    };
    let millis = |setting: &'static str, v: Option<u64>, default: Duration| match v {
        None => Ok(default),
        Some(ms) if ms < 100 => {
            Err(ConfigError::Invalid { setting, reason: format!("{ms} is below the minimum of 100 ms") })
        }
        Some(ms) => Ok(Duration::from_millis(ms)),
    };
    Ok(crate::listener::Limits {
        max_client_connections: count("max-client-connections", o.max_client_connections, d.max_client_connections)?,
        max_peer_connections: count("max-peer-connections", o.max_peer_connections, d.max_peer_connections)?,
        header_read_timeout: millis("header-read-timeout-ms", o.header_read_timeout_ms, d.header_read_timeout)?,
        idle_timeout: millis("idle-timeout-ms", o.idle_timeout_ms, d.idle_timeout)?,
        tls_handshake_timeout: millis("tls-handshake-timeout-ms", o.tls_handshake_timeout_ms, d.tls_handshake_timeout)?,
    })
}

/// Upper bound of the connection caps (beyond any open-file limit; catches typos).
const MAX_CONNECTIONS: u64 = 1 << 20;

/// The listener's certificate chain and key (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
}

/// The membership file the operator writes into a ConfigMap: node ids by pod name (an id is
/// never reused) and the members the cluster was bootstrapped with.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MembersFile {
    /// Initial members, `ID=URL,...` (as --peers).
    #[serde(default)]
    pub bootstrap_peers: Option<String>,
    /// Node id of each pod.
    #[serde(default)]
    pub ids: BTreeMap<String, NodeId>,
    /// Ids that have held a place in the group with persisted state (the operator saw the node
    /// report itself a member). Such an id never starts again on an empty data directory.
    #[serde(default)]
    pub admitted: Vec<NodeId>,
}

/// Reads a membership file (TOML).
pub fn read_members_file(path: &Path) -> Result<MembersFile, ConfigError> {
    let fail = |reason: String| ConfigError::File { path: path.to_path_buf(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    toml::from_str(&text).map_err(|e| fail(e.to_string()))
}

/// Fills node id, peers and join from a membership file: the id is the pod's entry; a pod that is
/// one of the bootstrap peers bootstraps with them, any other waits to be added. Explicit
/// --node-id/--peers/--join win.
pub fn apply_members_file(mut o: Overrides, file: &MembersFile) -> Result<Overrides, ConfigError> {
    if o.node_id.is_none() {
        let pod = o.pod_name.as_deref().ok_or_else(|| ConfigError::Invalid {
            setting: "pod-name",
            reason: "is required with --members-file (the pod's key in its [ids] table)".into(),
        })?;
        let id = file.ids.get(pod).copied().ok_or_else(|| ConfigError::Invalid {
            setting: "members-file",
            reason: format!("has no node id for pod {pod:?} yet (the operator allocates it before the pod starts)"),
        })?;
        o.node_id = Some(id);
    }
    if let Some(id) = o.node_id {
        o.was_member = Some(file.admitted.contains(&id));
    }
    if o.peers.is_none() && o.join.is_none() {
        let bootstrap = match &file.bootstrap_peers {
            Some(p) => parse_peers(p)?,
            None => BTreeMap::new(),
        };
        let id = o.node_id.unwrap_or(1);
        if bootstrap.contains_key(&id) {
            o.peers = file.bootstrap_peers.clone();
        } else {
            o.join = Some(true);
        }
    }
    Ok(o)
}

impl Settings {
    /// Resolves flags/environment (`cli`) over the config file over defaults, and validates.
    pub fn resolve(cli: Overrides) -> Result<Settings, ConfigError> {
        let file = match &cli.config {
            Some(path) => read_file(path)?,
            None => Overrides::default(),
        };
        let merged = cli.or(file);
        let merged = match &merged.members_file {
            Some(path) => apply_members_file(merged.clone(), &read_members_file(path)?)?,
            None => merged,
        };
        Self::from_overrides(merged)
    }

    /// Applies defaults and validates merged overrides.
    pub fn from_overrides(o: Overrides) -> Result<Settings, ConfigError> {
        let d = match o.payload_class.as_deref() {
            None => Tuning::default(),
            Some(name) => PayloadClass::parse(name).map(PayloadClass::tuning).ok_or_else(|| ConfigError::Invalid {
                setting: "payload-class",
                reason: format!("{name:?} is not small, medium, large or huge"),
            })?,
        };
        let tuning = Tuning {
            heartbeat_ms: o.heartbeat_ms.unwrap_or(d.heartbeat_ms),
            election_min_ms: o.election_min_ms.unwrap_or(d.election_min_ms),
            election_max_ms: o.election_max_ms.unwrap_or(d.election_max_ms),
            request_timeout_ms: o.request_timeout_ms.unwrap_or(d.request_timeout_ms),
            append_timeout_ms: o.append_timeout_ms.unwrap_or(d.append_timeout_ms),
            snapshot_timeout_ms: o.snapshot_timeout_ms.unwrap_or(d.snapshot_timeout_ms),
            max_value_bytes: o.max_value_bytes.unwrap_or(d.max_value_bytes),
            body_limit_bytes: o.body_limit_bytes.unwrap_or(d.body_limit_bytes),
            max_append_bytes: o.max_append_bytes.unwrap_or(d.max_append_bytes),
            max_append_entries: o.max_append_entries.unwrap_or(d.max_append_entries),
            compaction_bytes: o.compaction_bytes.unwrap_or(d.compaction_bytes),
            compaction_entries: o.compaction_entries.unwrap_or(d.compaction_entries),
            logs_to_keep: o.logs_to_keep.unwrap_or(d.logs_to_keep),
        };
        let violations = tuning.violations();
        if !violations.is_empty() {
            return Err(ConfigError::Tuning(violations));
        }
        let limits = listener_limits(&o)?;

        let listen_s = o.listen.unwrap_or_else(|| "127.0.0.1:8080".into());
        let listen: SocketAddr = listen_s.parse().map_err(|e| ConfigError::Invalid {
            setting: "listen",
            reason: format!("{listen_s:?} is not an IP:port address ({e})"),
        })?;
        let tls = match (o.tls_cert_file, o.tls_key_file) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError::Invalid {
                    setting: "tls-key-file",
                    reason: "is required with --tls-cert-file".into(),
                });
            }
            (None, Some(_)) => {
                return Err(ConfigError::Invalid {
                    setting: "tls-cert-file",
                    reason: "is required with --tls-key-file".into(),
                });
            }
        };
        let tls_reload_ms = o.tls_reload_ms.unwrap_or(30_000);
        if tls_reload_ms < 100 {
            return Err(ConfigError::Invalid {
                setting: "tls-reload-ms",
                reason: format!("{tls_reload_ms} is below the minimum of 100 ms"),
            });
        }
        let scheme = if tls.is_some() { "https" } else { "http" };
        let advertise = o.advertise.unwrap_or_else(|| format!("{scheme}://{listen}")).trim_end_matches('/').to_string();
        if !advertise.starts_with(&format!("{scheme}://")) {
            return Err(ConfigError::Invalid {
                setting: "advertise",
                reason: format!(
                    "{advertise:?} must be an {scheme}:// URL (TLS is {})",
                    if tls.is_some() { "on" } else { "off" }
                ),
            });
        }
        let node_id = o.node_id.unwrap_or(1);
        let peers = match &o.peers {
            Some(p) => parse_peers(p)?,
            None => BTreeMap::new(),
        };
        if !peers.is_empty() {
            match peers.get(&node_id) {
                None => {
                    return Err(ConfigError::Invalid {
                        setting: "peers",
                        reason: format!("must list this node (node-id {node_id})"),
                    });
                }
                Some(url) if *url != advertise => {
                    return Err(ConfigError::Invalid {
                        setting: "peers",
                        reason: format!("entry {node_id}={url} differs from --advertise {advertise}"),
                    });
                }
                Some(_) => {}
            }
            if peers.len() > 1 && o.cluster_token_file.is_none() {
                return Err(ConfigError::Invalid {
                    setting: "cluster-token-file",
                    reason: "is required when --peers lists more than one node (every node needs the same token)"
                        .into(),
                });
            }
        }
        let log_format = match o.log_format.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    setting: "log-format",
                    reason: format!("{other:?} is not text or json"),
                });
            }
        };
        let history_depth = o.history_depth.unwrap_or(crate::store::apply::DEFAULT_HISTORY_DEPTH);
        if history_depth > crate::api::cluster::MAX_HISTORY_DEPTH {
            return Err(ConfigError::Invalid {
                setting: "history-depth",
                reason: format!("{history_depth} is above the maximum of {}", crate::api::cluster::MAX_HISTORY_DEPTH),
            });
        }
        Ok(Settings {
            node_id,
            listen,
            advertise,
            data_dir: o.data_dir.unwrap_or_else(|| PathBuf::from("./data")),
            peers,
            join: o.join.unwrap_or(false),
            api_keys_file: o.api_keys_file,
            cluster_token_file: o.cluster_token_file,
            history_depth,
            tuning,
            resolve: match &o.resolve {
                Some(r) => parse_resolve(r)?,
                None => Vec::new(),
            },
            log_format,
            tls,
            tls_ca_file: o.tls_ca_file,
            tls_reload: Duration::from_millis(tls_reload_ms),
            limits,
            was_member: o.was_member.unwrap_or(false),
        })
    }

    /// The Raft part of the settings.
    pub fn raft(&self) -> RaftSettings {
        let t = &self.tuning;
        RaftSettings {
            node_id: self.node_id,
            advertise: self.advertise.clone(),
            peers: self.peers.clone(),
            join: self.join,
            outgoing: crate::raft::network::Outgoing { resolve: self.resolve.clone(), trusted_cas: Vec::new() },
            heartbeat: Duration::from_millis(t.heartbeat_ms),
            election_min: Duration::from_millis(t.election_min_ms),
            election_max: Duration::from_millis(t.election_max_ms),
            request_timeout: Duration::from_millis(t.request_timeout_ms),
            append_timeout: Duration::from_millis(t.append_timeout_ms),
            snapshot_timeout: Duration::from_millis(t.snapshot_timeout_ms),
            max_append_bytes: t.max_append_bytes,
            max_append_entries: t.max_append_entries,
            compaction_bytes: t.compaction_bytes,
            compaction_entries: t.compaction_entries,
            logs_to_keep: t.logs_to_keep,
            history_depth: self.history_depth,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Overrides {
        let mut v = vec!["confman-node"];
        v.extend_from_slice(args);
        Overrides::parse_from(v)
    }

    #[test]
    fn defaults_give_a_single_local_node() -> Result<(), ConfigError> {
        let s = Settings::from_overrides(Overrides::default())?;
        assert_eq!(s.node_id, 1);
        assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.advertise, "http://127.0.0.1:8080");
        assert_eq!(s.data_dir, PathBuf::from("./data"));
        assert!(s.peers.is_empty());
        Ok(())
    }

    #[test]
    fn flags_override_file() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "node_id = 7\nheartbeat_ms = 150\nlisten = \"127.0.0.1:9000\"\n")?;
        let cli = parse(&["--config", path.to_str().ok_or("path")?, "--node-id", "3"]);
        let s = Settings::resolve(cli)?;
        assert_eq!(s.node_id, 3, "flag wins over file");
        assert_eq!(s.tuning.heartbeat_ms, 150, "file wins over default");
        assert_eq!(s.listen.port(), 9000);
        Ok(())
    }

    #[test]
    fn yaml_file_and_unknown_keys() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let ok = dir.path().join("node.yaml");
        std::fs::write(&ok, "node_id: 4\nmax_value_bytes: 1048576\n")?;
        assert_eq!(read_file(&ok)?.node_id, Some(4));
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "node_idd = 4\n")?;
        let err = read_file(&bad).err().ok_or("expected an error")?.to_string();
        assert!(err.contains("node_idd"), "{err}");
        Ok(())
    }

    #[test]
    fn inconsistent_timing_names_the_setting() {
        let o = Overrides { heartbeat_ms: Some(800), ..Default::default() };
        let err = Settings::from_overrides(o).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("heartbeat-ms") && err.contains("800"), "{err}");
    }

    #[test]
    fn payload_class_sets_the_base_and_flags_still_win() -> Result<(), ConfigError> {
        let o = Overrides { payload_class: Some("huge".into()), heartbeat_ms: Some(300), ..Default::default() };
        let s = Settings::from_overrides(o)?;
        assert_eq!(s.tuning.max_value_bytes, PayloadClass::Huge.tuning().max_value_bytes);
        assert_eq!(s.tuning.heartbeat_ms, 300);
        let bad = Overrides { payload_class: Some("gigantic".into()), ..Default::default() };
        assert!(matches!(Settings::from_overrides(bad), Err(ConfigError::Invalid { setting: "payload-class", .. })));
        Ok(())
    }

    #[test]
    fn peers_are_checked() {
        assert!(parse_peers("1=http://a:1,2=http://b:2").is_ok_and(|p| p.len() == 2));
        for bad in ["1", "x=http://a", "1=ftp://a", "1=http://a,1=http://b"] {
            assert!(parse_peers(bad).is_err(), "{bad}");
        }
        let o = Overrides { peers: Some("2=http://127.0.0.1:8080".into()), ..Default::default() };
        assert!(matches!(Settings::from_overrides(o), Err(ConfigError::Invalid { setting: "peers", .. })));
        let o =
            Overrides { peers: Some("1=http://127.0.0.1:8080,2=http://127.0.0.1:8081".into()), ..Default::default() };
        assert!(matches!(Settings::from_overrides(o), Err(ConfigError::Invalid { setting: "cluster-token-file", .. })));
    }

    #[test]
    fn members_file_gives_the_id_and_the_bootstrap_role() -> Result<(), Box<dyn std::error::Error>> {
        let file = MembersFile {
            bootstrap_peers: Some("1=http://c-0.p:8080,2=http://c-1.p:8080,3=http://c-2.p:8080".into()),
            ids: BTreeMap::from([("c-0".into(), 1), ("c-1".into(), 2), ("c-2".into(), 3), ("c-3".into(), 6)]),
            admitted: vec![1, 6],
        };
        let base = |pod: &str| Overrides {
            pod_name: Some(pod.into()),
            advertise: Some(format!("http://{pod}.p:8080")),
            cluster_token_file: Some("/t".into()),
            ..Default::default()
        };
        let s = Settings::from_overrides(apply_members_file(base("c-1"), &file)?)?;
        assert_eq!((s.node_id, s.peers.len(), s.join, s.was_member), (2, 3, false, false), "a bootstrap member");
        let s = Settings::from_overrides(apply_members_file(base("c-3"), &file)?)?;
        assert_eq!((s.node_id, s.peers.len(), s.join, s.was_member), (6, 0, true, true), "a later member joins");
        let err = apply_members_file(base("c-4"), &file).err().ok_or("expected an error")?;
        assert!(matches!(err, ConfigError::Invalid { setting: "members-file", .. }), "{err}");
        let no_pod = Overrides { pod_name: None, ..base("c-0") };
        let err = apply_members_file(no_pod, &file).err().ok_or("expected an error")?;
        assert!(matches!(err, ConfigError::Invalid { setting: "pod-name", .. }), "{err}");
        let explicit = Overrides { node_id: Some(9), join: Some(false), ..base("c-0") };
        let o = apply_members_file(explicit, &file)?;
        assert_eq!((o.node_id, o.join, o.peers), (Some(9), Some(false), None), "explicit settings win");
        Ok(())
    }

    #[test]
    fn tls_needs_both_files_and_an_https_advertise_url() -> Result<(), Box<dyn std::error::Error>> {
        let tls = |cert: Option<&str>, key: Option<&str>, advertise: Option<&str>| Overrides {
            tls_cert_file: cert.map(PathBuf::from),
            tls_key_file: key.map(PathBuf::from),
            advertise: advertise.map(str::to_string),
            ..Default::default()
        };
        let s = Settings::from_overrides(tls(Some("/c"), Some("/k"), None))?;
        assert_eq!(s.advertise, "https://127.0.0.1:8080");
        assert_eq!(s.tls, Some(TlsFiles { cert: "/c".into(), key: "/k".into() }));
        for (o, setting) in [
            (tls(Some("/c"), None, None), "tls-key-file"),
            (tls(None, Some("/k"), None), "tls-cert-file"),
            (tls(Some("/c"), Some("/k"), Some("http://a:1")), "advertise"),
            (tls(None, None, Some("https://a:1")), "advertise"),
        ] {
            let err = Settings::from_overrides(o).err().ok_or("expected an error")?;
            assert!(matches!(err, ConfigError::Invalid { setting: s, .. } if s == setting), "{err}");
        }
        Ok(())
    }

    #[test]
    fn members_file_is_read_strictly() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let ok = dir.path().join("members.toml");
        std::fs::write(&ok, "bootstrap_peers = \"1=http://a:1\"\n[ids]\na-0 = 1\n")?;
        assert_eq!(read_members_file(&ok)?.ids.get("a-0"), Some(&1));
        std::fs::write(&ok, "bootstrap = \"x\"\n")?;
        assert!(read_members_file(&ok).is_err());
        Ok(())
    }

    #[test]
    fn connection_limits_default_and_are_checked_by_name() -> Result<(), Box<dyn std::error::Error>> {
        let s = Settings::from_overrides(Overrides::default())?;
        assert_eq!(s.limits, crate::listener::Limits::default());
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "max_client_connections = 8\nidle_timeout_ms = 500\n")?;
        let cli = parse(&["--config", path.to_str().ok_or("path")?, "--header-read-timeout-ms", "300"]);
        let s = Settings::resolve(cli)?;
        assert_eq!(s.limits.max_client_connections, 8);
        assert_eq!(s.limits.idle_timeout, Duration::from_millis(500));
        assert_eq!(s.limits.header_read_timeout, Duration::from_millis(300));
        assert_eq!(s.limits.max_peer_connections, 64, "default kept");
        for (o, setting) in [
            (Overrides { max_client_connections: Some(0), ..Default::default() }, "max-client-connections"),
            (Overrides { max_peer_connections: Some(1 << 30), ..Default::default() }, "max-peer-connections"),
            (Overrides { header_read_timeout_ms: Some(10), ..Default::default() }, "header-read-timeout-ms"),
            (Overrides { idle_timeout_ms: Some(0), ..Default::default() }, "idle-timeout-ms"),
            (Overrides { tls_handshake_timeout_ms: Some(99), ..Default::default() }, "tls-handshake-timeout-ms"),
        ] {
            let err = Settings::from_overrides(o).err().ok_or("expected an error")?;
            assert!(matches!(err, ConfigError::Invalid { setting: s, .. } if s == setting), "{err}");
            assert!(err.to_string().contains(setting), "{err}");
        }
        Ok(())
    }

    #[test]
    fn resolve_overrides_are_parsed_and_checked() -> Result<(), ConfigError> {
        let r = parse_resolve("a-0.peers.ns.svc=127.1.0.1, b=::1")?;
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].0, "a-0.peers.ns.svc");
        for bad in ["a", "a=notanip", "=127.0.0.1"] {
            assert!(matches!(parse_resolve(bad), Err(ConfigError::Invalid { setting: "resolve", .. })), "{bad}");
        }
        Ok(())
    }
}
