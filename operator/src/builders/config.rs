//! The node ConfigMap: `node.toml` with the derived tuning, and its hash (a pod-template
//! annotation, so a config change rolls the pods).

use std::collections::BTreeMap;
use std::path::PathBuf;

use confman_contract::{NodeConfig, ServiceAccountsFile, Tuning};
use k8s_openapi::api::core::v1::ConfigMap;
use sha2::{Digest, Sha256};

use super::{BuildError, NODE_PORT, config_name, meta};
use crate::crd::ConfmanCluster;

/// Where the node ConfigMap is mounted.
pub const CONFIG_DIR: &str = "/etc/confman/config";
/// File name of the node config inside [`CONFIG_DIR`].
pub const CONFIG_FILE: &str = "node.toml";
/// File name of the ServiceAccount rules inside [`CONFIG_DIR`] (with `spec.auth.serviceAccounts`).
pub const SERVICE_ACCOUNTS_FILE: &str = "service-accounts.toml";

/// The node config file with the derived tuning (every setting written, so the node runs
/// exactly it); per-pod values (node id, advertise URL) come from the members file and
/// environment. Its text is hashed into the pod template, so it must not change for the same
/// cluster: fields are written in [`NodeConfig`]'s order, unset ones left out.
pub fn node_config(
    tuning: &Tuning,
    keys_file: Option<&str>,
    tls: bool,
    service_accounts: bool,
) -> Result<String, BuildError> {
    let tls_file = |name: &str| tls.then(|| PathBuf::from(format!("{}/{name}", super::TLS_DIR)));
    let [cert, key, ca] = super::TLS_KEYS;
    let file = NodeConfig {
        listen: Some(format!("0.0.0.0:{NODE_PORT}")),
        data_dir: Some(super::DATA_DIR.into()),
        cluster_token_file: Some(format!("/etc/confman/token/{}", super::TOKEN_KEY).into()),
        members_file: Some(format!("{}/{}", super::MEMBERS_DIR, super::MEMBERS_FILE).into()),
        api_keys_file: keys_file.map(Into::into),
        service_accounts_file: service_accounts.then(|| format!("{CONFIG_DIR}/{SERVICE_ACCOUNTS_FILE}").into()),
        tls_cert_file: tls_file(cert),
        tls_key_file: tls_file(key),
        tls_ca_file: tls_file(ca),
        log_format: Some("json".into()),
        ..NodeConfig::default()
    }
    .with_tuning(tuning);
    Ok(format!("# Written by confman-operator; edit the ConfmanCluster instead.\n{}", toml::to_string(&file)?))
}

/// ConfigMap holding the node config.
pub fn config_map(c: &ConfmanCluster, tuning: &Tuning) -> Result<ConfigMap, BuildError> {
    // Always a keys file (`spec.auth`'s or the generated admin Secret): without one every pod
    // would generate a development key of its own.
    let keys = Some("/etc/confman/keys/keys.yaml");
    let rules = c.spec.auth.as_ref().map(|a| a.service_accounts.clone()).unwrap_or_default();
    let mut data = BTreeMap::from([(
        CONFIG_FILE.to_string(),
        node_config(tuning, keys, c.spec.tls.is_some(), !rules.is_empty())?,
    )]);
    if !rules.is_empty() {
        let file = ServiceAccountsFile {
            audiences: super::token_audiences(c),
            cache_seconds: Some(SERVICE_ACCOUNT_CACHE_SECONDS),
            rules,
            ..ServiceAccountsFile::default()
        };
        let text =
            format!("# Written by confman-operator from spec.auth.serviceAccounts.\n{}", toml::to_string(&file)?);
        data.insert(SERVICE_ACCOUNTS_FILE.to_string(), text);
    }
    Ok(ConfigMap { metadata: meta(c, config_name(c))?, data: Some(data), ..ConfigMap::default() })
}

/// How long a member reuses the API server's answer for a token: the longest a deleted
/// ServiceAccount's token keeps working.
pub const SERVICE_ACCOUNT_CACHE_SECONDS: u64 = 10;

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
    use crate::crd::{PayloadClass, TuningOverrides};
    use crate::fixtures::cluster;

    use crate::tuning::effective_tuning;

    #[test]
    fn config_map_carries_the_derived_tuning() -> Result<(), Box<dyn std::error::Error>> {
        let c = cluster(5, PayloadClass::Large);
        let t = effective_tuning(&c.spec).map_err(|v| format!("{v:?}"))?;
        let cm = config_map(&c, &t)?;
        let toml = cm.data.unwrap_or_default().remove(CONFIG_FILE).unwrap_or_default();
        assert!(toml.contains(&format!("heartbeat_ms = {}\n", t.heartbeat_ms)), "{toml}");
        assert!(toml.contains("max_value_bytes = 4194304\n"), "{toml}");
        assert!(toml.contains("max_append_entries = 64\n"), "{toml}");
        assert!(toml.contains("members_file = \"/etc/confman/members/members.toml\"\n"), "{toml}");
        // The generated admin key Secret's file: without one every pod would make up its own key.
        assert!(toml.contains("api_keys_file = \"/etc/confman/keys/keys.yaml\"\n"), "{toml}");
        Ok(())
    }

    /// The text earlier operators wrote (with `format!`), so upgrading the operator does not
    /// change the config hash and roll every cluster's pods.
    #[test]
    fn the_file_text_is_what_earlier_operators_wrote() -> Result<(), Box<dyn std::error::Error>> {
        let text = node_config(&PayloadClass::Large.tuning(), Some("/etc/confman/keys/keys.yaml"), true, false)?;
        let expected = "# Written by confman-operator; edit the ConfmanCluster instead.
listen = \"0.0.0.0:8080\"
data_dir = \"/var/lib/confman\"
cluster_token_file = \"/etc/confman/token/token\"
members_file = \"/etc/confman/members/members.toml\"
api_keys_file = \"/etc/confman/keys/keys.yaml\"
tls_cert_file = \"/etc/confman/tls/tls.crt\"
tls_key_file = \"/etc/confman/tls/tls.key\"
tls_ca_file = \"/etc/confman/tls/ca.crt\"
log_format = \"json\"
heartbeat_ms = 150
election_min_ms = 1500
election_max_ms = 3000
request_timeout_ms = 15000
append_timeout_ms = 5000
snapshot_timeout_ms = 120000
max_value_bytes = 4194304
body_limit_bytes = 6291456
max_append_bytes = 8388608
max_append_entries = 64
compaction_bytes = 268435456
compaction_entries = 2000
logs_to_keep = 64
";
        assert_eq!(text, expected);
        Ok(())
    }

    #[test]
    fn the_hash_follows_the_config() -> Result<(), Box<dyn std::error::Error>> {
        let mut c = cluster(3, PayloadClass::Small);
        let h1 = config_hash(&config_map(&c, &effective_tuning(&c.spec).map_err(|v| format!("{v:?}"))?)?);
        let h1_again = config_hash(&config_map(&c, &effective_tuning(&c.spec).map_err(|v| format!("{v:?}"))?)?);
        c.spec.tuning = Some(TuningOverrides { heartbeat_ms: Some(120), ..TuningOverrides::default() });
        let h2 = config_hash(&config_map(&c, &effective_tuning(&c.spec).map_err(|v| format!("{v:?}"))?)?);
        assert_eq!(h1, h1_again);
        assert_ne!(h1, h2);
        assert_eq!(h1.len(), 32);
        Ok(())
    }
}
