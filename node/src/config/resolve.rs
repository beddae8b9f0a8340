//! Merged settings → [`Settings`] (pure): the members file's answer for this pod, defaults for
//! what is unset, the tuning through `confman_contract::derive` (the operator's path too), and
//! every check, each error naming its setting.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use super::{ConfigError, LogFormat, MembersFile, NodeConfig, Settings, TlsFiles};
use crate::listener::Limits;
use crate::raft::NodeId;
use confman_contract::{PayloadClass, derive};

/// Upper bound of the connection caps (beyond any open-file limit; catches typos).
const MAX_CONNECTIONS: u64 = 1 << 20;

/// Parses `HOST=IP,HOST=IP,...`.
pub fn parse_resolve(s: &str) -> Result<Vec<(String, IpAddr)>, ConfigError> {
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

/// The listener's connection limits and timeouts, defaults where unset.
fn listener_limits(o: &NodeConfig) -> Result<Limits, ConfigError> {
    let d = Limits::default();
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
    Ok(Limits {
        max_client_connections: count("max-client-connections", o.max_client_connections, d.max_client_connections)?,
        max_peer_connections: count("max-peer-connections", o.max_peer_connections, d.max_peer_connections)?,
        header_read_timeout: millis("header-read-timeout-ms", o.header_read_timeout_ms, d.header_read_timeout)?,
        idle_timeout: millis("idle-timeout-ms", o.idle_timeout_ms, d.idle_timeout)?,
        tls_handshake_timeout: millis("tls-handshake-timeout-ms", o.tls_handshake_timeout_ms, d.tls_handshake_timeout)?,
    })
}

/// `write-budget-bytes`, the default where unset.
fn write_budget(v: Option<u64>) -> Result<u64, ConfigError> {
    use crate::api::write_budget::{DEFAULT_WRITE_BUDGET_BYTES, MAX_WRITE_BUDGET_BYTES, MIN_WRITE_BUDGET_BYTES};
    let invalid = |reason: String| ConfigError::Invalid { setting: "write-budget-bytes", reason };
    match v {
        None => Ok(DEFAULT_WRITE_BUDGET_BYTES),
        Some(n) if n < MIN_WRITE_BUDGET_BYTES => {
            Err(invalid(format!("{n} is below the minimum of {MIN_WRITE_BUDGET_BYTES} (1 MiB)")))
        }
        Some(n) if n > MAX_WRITE_BUDGET_BYTES => {
            Err(invalid(format!("{n} is above the maximum of {MAX_WRITE_BUDGET_BYTES} (1 GiB)")))
        }
        Some(n) => Ok(n),
    }
}

/// `disk-reserve-bytes`, the default where unset.
fn disk_reserve(v: Option<u64>) -> Result<u64, ConfigError> {
    use crate::disk_space::{DEFAULT_DISK_RESERVE_BYTES, MIN_DISK_RESERVE_BYTES};
    match v {
        None => Ok(DEFAULT_DISK_RESERVE_BYTES),
        Some(n) if n < MIN_DISK_RESERVE_BYTES => Err(ConfigError::Invalid {
            setting: "disk-reserve-bytes",
            reason: format!("{n} is below the minimum of {MIN_DISK_RESERVE_BYTES} (16 MiB)"),
        }),
        Some(n) => Ok(n),
    }
}

/// Fills node id, peers and join from a membership file: the id is the pod's entry; a pod that is
/// one of the bootstrap peers bootstraps with them, any other waits to be added. Explicit
/// --node-id/--peers/--join win. Also returns whether the node id was admitted (has held a place
/// in the group), which the node checks against its data directory.
pub fn apply_members_file(mut o: NodeConfig, file: &MembersFile) -> Result<(NodeConfig, bool), ConfigError> {
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
    let id = o.node_id.unwrap_or(1);
    let was_member = file.admitted.contains(&id);
    if o.peers.is_none() && o.join.is_none() {
        if parse_peers(&file.bootstrap_peers)?.contains_key(&id) {
            o.peers = Some(file.bootstrap_peers.clone());
        } else {
            o.join = Some(true);
        }
    }
    Ok((o, was_member))
}

/// The TLS files, both or neither.
fn tls_files(cert: Option<PathBuf>, key: Option<PathBuf>) -> Result<Option<TlsFiles>, ConfigError> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(TlsFiles { cert, key })),
        (None, None) => Ok(None),
        (Some(_), None) => {
            Err(ConfigError::Invalid { setting: "tls-key-file", reason: "is required with --tls-cert-file".into() })
        }
        (None, Some(_)) => {
            Err(ConfigError::Invalid { setting: "tls-cert-file", reason: "is required with --tls-key-file".into() })
        }
    }
}

/// Bootstrap members must list this node under its advertised URL, and a group of more than
/// one needs the shared token.
fn check_peers(o: &NodeConfig, node_id: NodeId, advertise: &str) -> Result<BTreeMap<NodeId, String>, ConfigError> {
    let peers = match &o.peers {
        Some(p) => parse_peers(p)?,
        None => BTreeMap::new(),
    };
    if peers.is_empty() {
        return Ok(peers);
    }
    match peers.get(&node_id) {
        None => {
            return Err(ConfigError::Invalid {
                setting: "peers",
                reason: format!("must list this node (node-id {node_id})"),
            });
        }
        Some(url) if url != advertise => {
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
            reason: "is required when --peers lists more than one node (every node needs the same token)".into(),
        });
    }
    Ok(peers)
}

impl Settings {
    /// Applies the members file (when given) and the defaults to merged settings, derives the
    /// tuning and validates everything.
    pub fn from_config(o: NodeConfig, members: Option<&MembersFile>) -> Result<Settings, ConfigError> {
        let (o, was_member) = match members {
            Some(file) => apply_members_file(o, file)?,
            None => (o, false),
        };
        let class = match o.payload_class.as_deref() {
            None => None,
            Some(name) => Some(PayloadClass::parse(name).ok_or_else(|| ConfigError::Invalid {
                setting: "payload-class",
                reason: format!("{name:?} is not small, medium, large or huge"),
            })?),
        };
        let tuning = derive(class, &o.tuning()).map_err(ConfigError::Tuning)?;
        let limits = listener_limits(&o)?;

        let listen_s = o.listen.clone().unwrap_or_else(|| "127.0.0.1:8080".into());
        let listen: SocketAddr = listen_s.parse().map_err(|e| ConfigError::Invalid {
            setting: "listen",
            reason: format!("{listen_s:?} is not an IP:port address ({e})"),
        })?;
        let tls = tls_files(o.tls_cert_file.clone(), o.tls_key_file.clone())?;
        let tls_reload_ms = o.tls_reload_ms.unwrap_or(30_000);
        if tls_reload_ms < 100 {
            return Err(ConfigError::Invalid {
                setting: "tls-reload-ms",
                reason: format!("{tls_reload_ms} is below the minimum of 100 ms"),
            });
        }
        let scheme = if tls.is_some() { "https" } else { "http" };
        let advertise =
            o.advertise.clone().unwrap_or_else(|| format!("{scheme}://{listen}")).trim_end_matches('/').to_string();
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
        let peers = check_peers(&o, node_id, &advertise)?;
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
        let write_budget_bytes = write_budget(o.write_budget_bytes)?;
        let disk_reserve_bytes = disk_reserve(o.disk_reserve_bytes)?;
        Ok(Settings {
            node_id,
            listen,
            advertise,
            data_dir: o.data_dir.unwrap_or_else(|| PathBuf::from("./data")),
            peers,
            join: o.join.unwrap_or(false),
            api_keys_file: o.api_keys_file,
            service_accounts_file: o.service_accounts_file,
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
            write_budget_bytes,
            disk_reserve_bytes,
            was_member,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::config::{Flags, temp_file};

    fn parse(args: &[&str]) -> Flags {
        let mut v = vec!["confman-node"];
        v.extend_from_slice(args);
        Flags::parse_from(v)
    }

    fn settings(o: NodeConfig) -> Result<Settings, ConfigError> {
        Settings::from_config(o, None)
    }

    #[test]
    fn defaults_give_a_single_local_node() -> Result<(), ConfigError> {
        let s = settings(NodeConfig::default())?;
        assert_eq!(s.node_id, 1);
        assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.advertise, "http://127.0.0.1:8080");
        assert_eq!(s.data_dir, PathBuf::from("./data"));
        assert!(s.peers.is_empty());
        Ok(())
    }

    #[test]
    fn flags_override_file() -> Result<(), Box<dyn std::error::Error>> {
        let (_dir, path) = temp_file("node.toml", "node_id = 7\nheartbeat_ms = 150\nlisten = \"127.0.0.1:9000\"\n")?;
        let cli = parse(&["--config", path.to_str().ok_or("path")?, "--node-id", "3"]);
        let s = Settings::resolve(cli)?;
        assert_eq!(s.node_id, 3, "flag wins over file");
        assert_eq!(s.tuning.heartbeat_ms, 150, "file wins over default");
        assert_eq!(s.listen.port(), 9000);
        Ok(())
    }

    #[test]
    fn inconsistent_timing_names_the_setting() {
        let o = NodeConfig { heartbeat_ms: Some(800), ..Default::default() };
        let err = settings(o).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("heartbeat-ms") && err.contains("800"), "{err}");
    }

    #[test]
    fn payload_class_sets_the_base_and_flags_still_win() -> Result<(), ConfigError> {
        let o = NodeConfig { payload_class: Some("huge".into()), heartbeat_ms: Some(300), ..Default::default() };
        let s = settings(o)?;
        assert_eq!(s.tuning.max_value_bytes, PayloadClass::Huge.tuning().max_value_bytes);
        assert_eq!(s.tuning.heartbeat_ms, 300);
        let bad = NodeConfig { payload_class: Some("gigantic".into()), ..Default::default() };
        assert!(matches!(settings(bad), Err(ConfigError::Invalid { setting: "payload-class", .. })));
        Ok(())
    }

    #[test]
    fn peers_are_checked() {
        assert!(parse_peers("1=http://a:1,2=http://b:2").is_ok_and(|p| p.len() == 2));
        for bad in ["1", "x=http://a", "1=ftp://a", "1=http://a,1=http://b"] {
            assert!(parse_peers(bad).is_err(), "{bad}");
        }
        let o = NodeConfig { peers: Some("2=http://127.0.0.1:8080".into()), ..Default::default() };
        assert!(matches!(settings(o), Err(ConfigError::Invalid { setting: "peers", .. })));
        let o =
            NodeConfig { peers: Some("1=http://127.0.0.1:8080,2=http://127.0.0.1:8081".into()), ..Default::default() };
        assert!(matches!(settings(o), Err(ConfigError::Invalid { setting: "cluster-token-file", .. })));
    }

    #[test]
    fn members_file_gives_the_id_and_the_bootstrap_role() -> Result<(), Box<dyn std::error::Error>> {
        let file = MembersFile {
            bootstrap_peers: "1=http://c-0.p:8080,2=http://c-1.p:8080,3=http://c-2.p:8080".into(),
            ids: BTreeMap::from([("c-0".into(), 1), ("c-1".into(), 2), ("c-2".into(), 3), ("c-3".into(), 6)]),
            admitted: [1, 6].into(),
        };
        let base = |pod: &str| NodeConfig {
            pod_name: Some(pod.into()),
            advertise: Some(format!("http://{pod}.p:8080")),
            cluster_token_file: Some("/t".into()),
            ..Default::default()
        };
        let s = Settings::from_config(base("c-1"), Some(&file))?;
        assert_eq!((s.node_id, s.peers.len(), s.join, s.was_member), (2, 3, false, false), "a bootstrap member");
        let s = Settings::from_config(base("c-3"), Some(&file))?;
        assert_eq!((s.node_id, s.peers.len(), s.join, s.was_member), (6, 0, true, true), "a later member joins");
        let err = apply_members_file(base("c-4"), &file).err().ok_or("expected an error")?;
        assert!(matches!(err, ConfigError::Invalid { setting: "members-file", .. }), "{err}");
        let no_pod = NodeConfig { pod_name: None, ..base("c-0") };
        let err = apply_members_file(no_pod, &file).err().ok_or("expected an error")?;
        assert!(matches!(err, ConfigError::Invalid { setting: "pod-name", .. }), "{err}");
        let explicit = NodeConfig { node_id: Some(9), join: Some(false), ..base("c-0") };
        let (o, _) = apply_members_file(explicit, &file)?;
        assert_eq!((o.node_id, o.join, o.peers), (Some(9), Some(false), None), "explicit settings win");
        Ok(())
    }

    #[test]
    fn tls_needs_both_files_and_an_https_advertise_url() -> Result<(), Box<dyn std::error::Error>> {
        let tls = |cert: Option<&str>, key: Option<&str>, advertise: Option<&str>| NodeConfig {
            tls_cert_file: cert.map(PathBuf::from),
            tls_key_file: key.map(PathBuf::from),
            advertise: advertise.map(str::to_string),
            ..Default::default()
        };
        let s = settings(tls(Some("/c"), Some("/k"), None))?;
        assert_eq!(s.advertise, "https://127.0.0.1:8080");
        assert_eq!(s.tls, Some(TlsFiles { cert: "/c".into(), key: "/k".into() }));
        for (o, setting) in [
            (tls(Some("/c"), None, None), "tls-key-file"),
            (tls(None, Some("/k"), None), "tls-cert-file"),
            (tls(Some("/c"), Some("/k"), Some("http://a:1")), "advertise"),
            (tls(None, None, Some("https://a:1")), "advertise"),
        ] {
            let err = settings(o).err().ok_or("expected an error")?;
            assert!(matches!(err, ConfigError::Invalid { setting: s, .. } if s == setting), "{err}");
        }
        Ok(())
    }

    #[test]
    fn connection_limits_default_and_are_checked_by_name() -> Result<(), Box<dyn std::error::Error>> {
        let s = settings(NodeConfig::default())?;
        assert_eq!(s.limits, Limits::default());
        let (_dir, path) = temp_file("node.toml", "max_client_connections = 8\nidle_timeout_ms = 500\n")?;
        let cli = parse(&["--config", path.to_str().ok_or("path")?, "--header-read-timeout-ms", "300"]);
        let s = Settings::resolve(cli)?;
        assert_eq!(s.limits.max_client_connections, 8);
        assert_eq!(s.limits.idle_timeout, Duration::from_millis(500));
        assert_eq!(s.limits.header_read_timeout, Duration::from_millis(300));
        assert_eq!(s.limits.max_peer_connections, 64, "default kept");
        for (o, setting) in [
            (NodeConfig { max_client_connections: Some(0), ..Default::default() }, "max-client-connections"),
            (NodeConfig { max_peer_connections: Some(1 << 30), ..Default::default() }, "max-peer-connections"),
            (NodeConfig { header_read_timeout_ms: Some(10), ..Default::default() }, "header-read-timeout-ms"),
            (NodeConfig { idle_timeout_ms: Some(0), ..Default::default() }, "idle-timeout-ms"),
            (NodeConfig { tls_handshake_timeout_ms: Some(99), ..Default::default() }, "tls-handshake-timeout-ms"),
        ] {
            let err = settings(o).err().ok_or("expected an error")?;
            assert!(matches!(err, ConfigError::Invalid { setting: s, .. } if s == setting), "{err}");
            assert!(err.to_string().contains(setting), "{err}");
        }
        Ok(())
    }

    #[test]
    fn the_write_budget_defaults_and_is_checked_by_name() -> Result<(), Box<dyn std::error::Error>> {
        use crate::api::write_budget::DEFAULT_WRITE_BUDGET_BYTES;
        assert_eq!(settings(NodeConfig::default())?.write_budget_bytes, DEFAULT_WRITE_BUDGET_BYTES);
        let s = Settings::resolve(parse(&["--write-budget-bytes", "67108864"]))?;
        assert_eq!(s.write_budget_bytes, 64 << 20);
        for n in [1000, 2 << 30] {
            let err = settings(NodeConfig { write_budget_bytes: Some(n), ..Default::default() })
                .err()
                .ok_or("expected an error")?;
            assert!(matches!(err, ConfigError::Invalid { setting: "write-budget-bytes", .. }), "{err}");
            assert!(err.to_string().contains("write-budget-bytes"), "{err}");
        }
        Ok(())
    }

    #[test]
    fn the_disk_reserve_defaults_and_is_checked_by_name() -> Result<(), Box<dyn std::error::Error>> {
        use crate::disk_space::DEFAULT_DISK_RESERVE_BYTES;
        assert_eq!(settings(NodeConfig::default())?.disk_reserve_bytes, DEFAULT_DISK_RESERVE_BYTES);
        let s = Settings::resolve(parse(&["--disk-reserve-bytes", "33554432"]))?;
        assert_eq!(s.disk_reserve_bytes, 32 << 20);
        let err = settings(NodeConfig { disk_reserve_bytes: Some(4096), ..Default::default() })
            .err()
            .ok_or("expected an error")?;
        assert!(matches!(err, ConfigError::Invalid { setting: "disk-reserve-bytes", .. }), "{err}");
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
