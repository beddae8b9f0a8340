//! `node.toml`, the node's config file: what the operator writes into the node ConfigMap and
//! the node reads with `--config`. Every key is optional (the node has a default for each) and
//! every key is also a flag and a `CONFMAN_*` variable of the same name, so the flags are
//! generated from this type too: a setting added here is accepted in all three places.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::tuning::{Tuning, TuningOverrides, settings_table};

/// Builds [`NodeConfig`] from its own fields and the tuning rows, which become file keys and
/// flags of their own (snake_case in the file, as every other key, where the CRD spells them in
/// camelCase).
macro_rules! node_config_type {
    ([$( $(#[$meta:meta])* $field:ident: $ty:ty, )*] $(
        $(#[doc = $doc:literal])*
        $name:ident, $env:literal:
            node $node:expr, small $small:expr, medium $medium:expr, large $large:expr, huge $huge:expr;
    )*) => {
        /// The node's settings as a config file (TOML, or YAML) and as flags. Unset keys fall
        /// back to a lower layer (flags over variables over this file), then to the node's
        /// defaults. Fields are in the order the operator writes them: the tuning last.
        #[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize, clap::Args)]
        #[serde(deny_unknown_fields)]
        pub struct NodeConfig {
            $(
                $(#[$meta])*
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub $field: $ty,
            )*
            $(
                $(#[doc = $doc])*
                #[arg(long, env = $env, help = format!("{} [default: {}]", concat!($($doc),*).trim(), Tuning::default().$name))]
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub $name: Option<u64>,
            )*
        }

        impl NodeConfig {
            /// `self`'s settings, falling back to `lower`'s where unset (flags over the file).
            pub fn or(self, lower: NodeConfig) -> NodeConfig {
                NodeConfig {
                    $($field: self.$field.or(lower.$field),)*
                    $($name: self.$name.or(lower.$name),)*
                }
            }

            /// The tuning settings among these, as overrides of the payload class (or of the
            /// node's defaults).
            pub fn tuning(&self) -> TuningOverrides {
                TuningOverrides { $($name: self.$name,)* }
            }

            /// `self` with every tuning setting given, so the node runs exactly `tuning`
            /// whatever its own defaults are (what the operator writes).
            pub fn with_tuning(self, tuning: &Tuning) -> NodeConfig {
                NodeConfig { $($name: Some(tuning.$name),)* ..self }
            }
        }
    };
}

settings_table!(node_config_type {
    /// Raft node id (unique, never reused). [default: 1]
    #[arg(long, env = "CONFMAN_NODE_ID")]
    node_id: Option<u64>,
    /// Address to listen on for the client API and Raft RPC. [default: 127.0.0.1:8080]
    #[arg(long, env = "CONFMAN_LISTEN")]
    listen: Option<String>,
    /// Base URL peers and clients use to reach this node. [default: http://<listen>]
    #[arg(long, env = "CONFMAN_ADVERTISE")]
    advertise: Option<String>,
    /// Data directory. [default: ./data]
    #[arg(long, env = "CONFMAN_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Initial members for bootstrap, `ID=URL,...`; must include this node. Ignored once the
    /// data directory holds a cluster (membership then comes from the log).
    #[arg(long, env = "CONFMAN_PEERS")]
    peers: Option<String>,
    /// Never initialise a cluster: wait to be added as a learner through the admin API.
    #[arg(long, env = "CONFMAN_JOIN", num_args = 0..=1, default_missing_value = "true")]
    join: Option<bool>,
    /// File holding the shared cluster token for `/raft/*`. Required with --peers.
    #[arg(long, env = "CONFMAN_CLUSTER_TOKEN_FILE")]
    cluster_token_file: Option<PathBuf>,
    /// Operator-written membership file (TOML): `bootstrap_peers = "ID=URL,..."` and an `[ids]`
    /// table mapping pod names to node ids. With it, the node id is looked up by --pod-name, and
    /// a node that is not a bootstrap peer waits to be added (join).
    #[arg(long, env = "CONFMAN_MEMBERS_FILE")]
    members_file: Option<PathBuf>,
    /// This pod's name, the key looked up in --members-file.
    #[arg(long, env = "CONFMAN_POD_NAME")]
    pod_name: Option<String>,
    /// API keys file (YAML or JSON). Without it a development admin key is generated.
    #[arg(long, env = "CONFMAN_API_KEYS_FILE")]
    api_keys_file: Option<PathBuf>,
    /// ServiceAccounts file (TOML, `service-accounts.toml`): accept Kubernetes ServiceAccount
    /// tokens of these audiences, validated by the API server's TokenReview, with these roles.
    #[arg(long, env = "CONFMAN_SERVICE_ACCOUNTS_FILE")]
    service_accounts_file: Option<PathBuf>,
    /// PEM certificate chain: serve the client API and Raft RPC over TLS (with --tls-key-file).
    #[arg(long, env = "CONFMAN_TLS_CERT_FILE")]
    tls_cert_file: Option<PathBuf>,
    /// PEM private key of --tls-cert-file.
    #[arg(long, env = "CONFMAN_TLS_KEY_FILE")]
    tls_key_file: Option<PathBuf>,
    /// PEM CA bundle that peers' certificates are checked against (for Raft RPC and forwarded
    /// writes to https:// peers). [default: the system's roots]
    #[arg(long, env = "CONFMAN_TLS_CA_FILE")]
    tls_ca_file: Option<PathBuf>,
    /// How often the certificate files are re-read (a renewed certificate is served without a
    /// restart), ms. [default: 30000]
    #[arg(long, env = "CONFMAN_TLS_RELOAD_MS")]
    tls_reload_ms: Option<u64>,
    /// Log format: `text` or `json`. [default: text]
    #[arg(long, env = "CONFMAN_LOG_FORMAT")]
    log_format: Option<String>,
    /// Base the timing/size defaults on a payload class: small, medium, large or huge (the
    /// operator's table); individual settings below still override. [default: node defaults]
    #[arg(long, env = "CONFMAN_PAYLOAD_CLASS")]
    payload_class: Option<String>,
    /// Superseded versions kept per key. [default: 10]
    #[arg(long, env = "CONFMAN_HISTORY_DEPTH")]
    history_depth: Option<u64>,
    /// Fixed addresses for peer host names, `HOST=IP,...` (like curl's --resolve; the URL's port
    /// is kept). For environments without DNS for the peer names.
    #[arg(long, env = "CONFMAN_RESOLVE")]
    resolve: Option<String>,
    /// Client connections open at once (TLS handshakes included); beyond it a new client gets
    /// 503, or a closed connection when the peer slots are full too. [default: 1024]
    #[arg(long, env = "CONFMAN_MAX_CLIENT_CONNECTIONS")]
    max_client_connections: Option<u64>,
    /// Connection slots kept for Raft peers on top of the client ones (a connection moves here
    /// once it carries an authenticated /raft/ request), so clients never starve Raft.
    /// [default: 64]
    #[arg(long, env = "CONFMAN_MAX_PEER_CONNECTIONS")]
    max_peer_connections: Option<u64>,
    /// Time a connection has to send a complete request header (from accept, or from the
    /// first byte of a later request), ms. [default: 10000]
    #[arg(long, env = "CONFMAN_HEADER_READ_TIMEOUT_MS")]
    header_read_timeout_ms: Option<u64>,
    /// Time a connection may wait between requests before it is closed, ms. [default: 90000]
    #[arg(long, env = "CONFMAN_IDLE_TIMEOUT_MS")]
    idle_timeout_ms: Option<u64>,
    /// Time a connection has to complete its TLS handshake, ms. [default: 10000]
    #[arg(long, env = "CONFMAN_TLS_HANDSHAKE_TIMEOUT_MS")]
    tls_handshake_timeout_ms: Option<u64>,
    /// Bytes of client write bodies held at once, from reading the body until Raft answers
    /// the write; a write that does not fit waits (its body unread) and gets 503 after half the
    /// request timeout. A body larger than the budget runs alone. [default: 8388608]
    #[arg(long, env = "CONFMAN_WRITE_BUDGET_BYTES")]
    write_budget_bytes: Option<u64>,
    /// Free space kept on the data directory's filesystem: below it the node refuses writes
    /// (507), a leader hands over, a follower takes no new log entries until space is freed.
    /// [default: 268435456]
    #[arg(long, env = "CONFMAN_DISK_RESERVE_BYTES")]
    disk_reserve_bytes: Option<u64>,
});

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PayloadClass;

    #[test]
    fn the_file_round_trips_with_snake_case_keys_and_only_what_is_set() -> Result<(), Box<dyn std::error::Error>> {
        let tuning = PayloadClass::Large.tuning();
        let file = NodeConfig { listen: Some("0.0.0.0:8080".into()), ..NodeConfig::default() }.with_tuning(&tuning);
        let text = toml::to_string(&file)?;
        assert!(text.starts_with("listen = \"0.0.0.0:8080\"\nheartbeat_ms = 150\n"), "{text}");
        assert!(!text.contains("node_id"), "{text}");
        let back: NodeConfig = toml::from_str(&text)?;
        assert_eq!(back, file);
        assert_eq!(back.tuning().apply(Tuning::default()), tuning);
        Ok(())
    }

    #[test]
    fn unknown_keys_are_refused_and_higher_layers_win() -> Result<(), Box<dyn std::error::Error>> {
        let err = toml::from_str::<NodeConfig>("node_idd = 4\n").err().ok_or("expected an error")?;
        assert!(err.to_string().contains("node_idd"), "{err}");
        let flags = NodeConfig { node_id: Some(3), ..NodeConfig::default() };
        let file: NodeConfig = toml::from_str("node_id = 7\nheartbeat_ms = 150\n")?;
        let merged = flags.or(file);
        assert_eq!((merged.node_id, merged.heartbeat_ms), (Some(3), Some(150)));
        Ok(())
    }
}
