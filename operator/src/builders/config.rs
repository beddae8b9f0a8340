//! The node ConfigMap: `node.toml` with the derived tuning, and its hash (a pod-template
//! annotation, so a config change rolls the pods).

use std::collections::BTreeMap;

use confman_tuning::Tuning;
use k8s_openapi::api::core::v1::ConfigMap;
use sha2::{Digest, Sha256};

use super::{BuildError, NODE_PORT, config_name, meta};
use crate::crd::ConfmanCluster;

/// Where the node ConfigMap is mounted.
pub const CONFIG_DIR: &str = "/etc/confman/config";
/// File name of the node config inside [`CONFIG_DIR`].
pub const CONFIG_FILE: &str = "node.toml";

/// The node config file (TOML, snake_case keys of `confman-node --config`) with the derived
/// tuning; per-pod values (node id, advertise URL) come from the members file and environment.
pub fn node_config(tuning: &Tuning, keys_file: Option<&str>, tls: bool) -> String {
    let mut s = String::from("# Written by confman-operator; edit the ConfmanCluster instead.\n");
    s.push_str(&format!("listen = \"0.0.0.0:{NODE_PORT}\"\n"));
    s.push_str(&format!("data_dir = \"{}\"\n", super::DATA_DIR));
    s.push_str(&format!("cluster_token_file = \"/etc/confman/token/{}\"\n", super::TOKEN_KEY));
    s.push_str(&format!("members_file = \"{}/{}\"\n", super::MEMBERS_DIR, super::MEMBERS_FILE));
    if let Some(k) = keys_file {
        s.push_str(&format!("api_keys_file = \"{k}\"\n"));
    }
    if tls {
        let [cert, key, ca] = super::TLS_KEYS;
        let dir = super::TLS_DIR;
        s.push_str(&format!("tls_cert_file = \"{dir}/{cert}\"\ntls_key_file = \"{dir}/{key}\"\n"));
        s.push_str(&format!("tls_ca_file = \"{dir}/{ca}\"\n"));
    }
    s.push_str("log_format = \"json\"\n");
    for (k, v) in [
        ("heartbeat_ms", tuning.heartbeat_ms),
        ("election_min_ms", tuning.election_min_ms),
        ("election_max_ms", tuning.election_max_ms),
        ("request_timeout_ms", tuning.request_timeout_ms),
        ("append_timeout_ms", tuning.append_timeout_ms),
        ("snapshot_timeout_ms", tuning.snapshot_timeout_ms),
        ("max_value_bytes", tuning.max_value_bytes),
        ("body_limit_bytes", tuning.body_limit_bytes),
        ("max_append_bytes", tuning.max_append_bytes),
        ("max_append_entries", tuning.max_append_entries),
        ("compaction_bytes", tuning.compaction_bytes),
        ("compaction_entries", tuning.compaction_entries),
        ("logs_to_keep", tuning.logs_to_keep),
    ] {
        s.push_str(&format!("{k} = {v}\n"));
    }
    s
}

/// ConfigMap holding the node config.
pub fn config_map(c: &ConfmanCluster, tuning: &Tuning) -> Result<ConfigMap, BuildError> {
    let keys = c.spec.auth.as_ref().map(|_| "/etc/confman/keys/keys.yaml");
    Ok(ConfigMap {
        metadata: meta(c, config_name(c))?,
        data: Some(BTreeMap::from([(CONFIG_FILE.to_string(), node_config(tuning, keys, c.spec.tls.is_some()))])),
        ..ConfigMap::default()
    })
}

/// SHA-256 (hex, first 16 bytes) of a ConfigMap's data: equal configs give equal hashes.
pub fn config_hash(cm: &ConfigMap) -> String {
    let mut h = Sha256::new();
    for (k, v) in cm.data.iter().flatten() {
        h.update(k.as_bytes());
        h.update([0]);
        h.update(v.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..16])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::fixtures::cluster;
    use crate::crd::{PayloadClassSpec, TuningSpec};
    use crate::tuning::effective_tuning;

    #[test]
    fn config_map_carries_the_derived_tuning() -> Result<(), Box<dyn std::error::Error>> {
        let c = cluster(5, PayloadClassSpec::Large);
        let t = effective_tuning(&c.spec).map_err(|v| format!("{v:?}"))?;
        let cm = config_map(&c, &t)?;
        let toml = cm.data.unwrap_or_default().remove(CONFIG_FILE).unwrap_or_default();
        assert!(toml.contains(&format!("heartbeat_ms = {}\n", t.heartbeat_ms)), "{toml}");
        assert!(toml.contains("max_value_bytes = 4194304\n"), "{toml}");
        assert!(toml.contains("max_append_entries = 64\n"), "{toml}");
        assert!(toml.contains("members_file = \"/etc/confman/members/members.toml\"\n"), "{toml}");
        assert!(!toml.contains("api_keys_file"), "no keys file without spec.auth");
        Ok(())
    }

    #[test]
    fn the_hash_follows_the_config() -> Result<(), Box<dyn std::error::Error>> {
        let mut c = cluster(3, PayloadClassSpec::Small);
        let h1 = config_hash(&config_map(&c, &effective_tuning(&c.spec).map_err(|v| format!("{v:?}"))?)?);
        let h1_again = config_hash(&config_map(&c, &effective_tuning(&c.spec).map_err(|v| format!("{v:?}"))?)?);
        c.spec.tuning = Some(TuningSpec { heartbeat_ms: Some(120), ..TuningSpec::default() });
        let h2 = config_hash(&config_map(&c, &effective_tuning(&c.spec).map_err(|v| format!("{v:?}"))?)?);
        assert_eq!(h1, h1_again);
        assert_ne!(h1, h2);
        assert_eq!(h1.len(), 32);
        Ok(())
    }
}
