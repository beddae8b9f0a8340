//! Pure builders: ConfmanCluster (+ derived tuning, member ledger, token) → desired child objects,
//! no client. Every object carries the cluster's labels and a controller owner reference so
//! Kubernetes garbage-collects it with the cluster.

mod children;
mod config;
mod pdb;
mod rbac;
mod secret;
mod services;
mod statefulset;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};

use crate::crd::ConfmanCluster;

pub use children::{Children, Inputs, desired, template_annotation};
pub use config::{
    CONFIG_DIR, CONFIG_FILE, SERVICE_ACCOUNT_CACHE_SECONDS, SERVICE_ACCOUNTS_FILE, config_hash, config_map, node_config,
};
pub use pdb::{Budget, Pdb, budget, pdb_v1beta1_resource, pod_disruption_budget};
pub use rbac::{
    CLUSTER_NAMESPACE_LABEL, DEFAULT_TOKEN_REVIEW_ROLE, TOKEN_REVIEW_FINALIZER, accepts_service_accounts,
    binding_labels, member_service_account, member_service_account_name, token_audiences, token_review_binding,
    token_review_binding_name,
};
pub use secret::{
    ADMIN_KEY, ADMIN_KEY_NAME, CREDENTIALS_HASH_ANNOTATION, TOKEN_KEY, admin_keys_file, admin_keys_secret,
    credentials_hash, generate_token, presented_token, token_secret,
};
pub use services::{client_service, headless_service};
pub use statefulset::{
    CA_HASH_ANNOTATION, CONFIG_HASH_ANNOTATION, DATA_DIR, DEFAULT_FS_GROUP, HOST_KEY, MEMBERS_DIR, MEMBERS_FILE,
    UPDATE_STRATEGY, ZONE_KEY, default_requests, statefulset, termination_grace_seconds, with_credentials_hash,
    with_trusted_ca,
};

/// Port of the node's HTTP listener (client API and Raft RPC).
pub const NODE_PORT: i32 = 8080;

/// Why an object could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The cluster lacks metadata a child needs (name, namespace or uid).
    #[error("ConfmanCluster is missing metadata.{0}")]
    MissingMetadata(&'static str),
    /// A built object could not be converted to another API version's shape.
    #[error("converting a child object: {0}")]
    Json(#[from] serde_json::Error),
    /// A file the nodes read could not be written as TOML.
    #[error("writing a node file: {0}")]
    Toml(#[from] toml::ser::Error),
}

/// Name of the headless (peer) Service.
pub fn headless_name(c: &ConfmanCluster) -> String {
    format!("{}-peers", c.name_any())
}

/// Name of the client Service (and of the StatefulSet and PDB).
pub fn client_name(c: &ConfmanCluster) -> String {
    c.name_any()
}

/// Name of the node ConfigMap.
pub fn config_name(c: &ConfmanCluster) -> String {
    format!("{}-config", c.name_any())
}

/// Name of the member ledger ConfigMap (node ids by pod; read by the nodes).
pub fn members_name(c: &ConfmanCluster) -> String {
    format!("{}-members", c.name_any())
}

/// Name of the cluster token Secret.
pub fn token_name(c: &ConfmanCluster) -> String {
    format!("{}-token", c.name_any())
}

/// Name of the admin key Secret the operator generates for a cluster without `spec.auth`.
pub fn admin_keys_name(c: &ConfmanCluster) -> String {
    format!("{}-admin", c.name_any())
}

/// The Secret whose `keys.yaml` the members read: the one `spec.auth` names, else the
/// generated admin key Secret. Every member reads the same file, so any member accepts a key
/// (a node on its own would generate a development key of its own).
pub fn keys_secret_name(c: &ConfmanCluster) -> String {
    user_keys_secret(c).map_or_else(|| admin_keys_name(c), str::to_string)
}

/// The API keys Secret `spec.auth.apiKeysSecret` names; None when the operator generates one.
pub fn user_keys_secret(c: &ConfmanCluster) -> Option<&str> {
    c.spec.auth.as_ref()?.api_keys_secret.as_deref()
}

/// Name of the pod with `ordinal`.
pub fn pod_name(c: &ConfmanCluster, ordinal: u32) -> String {
    format!("{}-{ordinal}", c.name_any())
}

/// Key of the API keys file in the Secret `spec.auth.apiKeysSecret` names (and its file name in
/// the pods).
pub const KEYS_FILE: &str = "keys.yaml";

/// Where the TLS Secret (`spec.tls.clientSecret`) is mounted in the pods.
pub const TLS_DIR: &str = "/etc/confman/tls";
/// The TLS Secret's keys: a `kubernetes.io/tls` Secret plus the CA that signed it (`ca.crt`,
/// as cert-manager writes it), which members and the operator trust.
pub const TLS_KEYS: [&str; 3] = ["tls.crt", "tls.key", "ca.crt"];

/// `https` when the cluster serves TLS, else `http`.
pub fn scheme(c: &ConfmanCluster) -> &'static str {
    if c.spec.tls.is_some() { "https" } else { "http" }
}

/// URL other members use to reach the pod named `pod` (stable DNS of the headless Service).
pub fn pod_url(c: &ConfmanCluster, pod: &str) -> String {
    format!("{}://{pod}.{}.{}.svc:{NODE_PORT}", scheme(c), headless_name(c), c.namespace().unwrap_or_default())
}

/// Labels selecting the pods of a cluster (stable: never include versions).
pub fn selector_labels(c: &ConfmanCluster) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "confman".to_string()),
        ("app.kubernetes.io/instance".to_string(), c.name_any()),
    ])
}

/// [`selector_labels`] as a label selector string (`k=v,k=v`), for `status.selector` (the scale
/// subresource's `labelSelectorPath`) and pod list queries.
pub fn selector_string(c: &ConfmanCluster) -> String {
    selector_labels(c).iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

fn labels(c: &ConfmanCluster) -> BTreeMap<String, String> {
    let mut l = selector_labels(c);
    l.insert("app.kubernetes.io/managed-by".into(), "confman-operator".into());
    l
}

/// Metadata of a child: name, namespace, labels and the controller owner reference.
pub fn meta(c: &ConfmanCluster, name: String) -> Result<ObjectMeta, BuildError> {
    let owner = c.controller_owner_ref(&()).ok_or(BuildError::MissingMetadata("uid"))?;
    Ok(ObjectMeta {
        name: Some(name),
        namespace: Some(c.namespace().ok_or(BuildError::MissingMetadata("namespace"))?),
        labels: Some(labels(c)),
        owner_references: Some(vec![owner]),
        ..ObjectMeta::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capabilities::Capabilities;
    use crate::crd::PayloadClass;
    use crate::fixtures::cluster;

    #[test]
    fn every_child_is_owned_and_labelled() -> Result<(), BuildError> {
        let c = cluster(3, PayloadClass::Small);
        let t = PayloadClass::Small.tuning();
        let old = Capabilities::of_version(1, 20);
        let metas = [
            headless_service(&c)?.metadata,
            client_service(&c)?.metadata,
            config_map(&c, &t)?.metadata,
            pod_disruption_budget(&c, None, &Capabilities::RECENT)?.metadata().clone(),
            pod_disruption_budget(&c, None, &old)?.metadata().clone(),
            token_secret(&c, "t0k3n")?.metadata,
            statefulset(&c, &t, "hash", &Capabilities::RECENT)?.metadata,
            statefulset(&c, &t, "hash", &old)?.metadata,
        ];
        for m in metas {
            let owner = m.owner_references.unwrap_or_default();
            assert_eq!(owner.len(), 1);
            assert_eq!(
                (owner[0].kind.as_str(), owner[0].name.as_str(), owner[0].controller),
                ("ConfmanCluster", "config", Some(true))
            );
            assert_eq!(m.namespace.as_deref(), Some("platform"));
            assert_eq!(
                m.labels.unwrap_or_default().get("app.kubernetes.io/instance").map(String::as_str),
                Some("config")
            );
        }
        Ok(())
    }

    #[test]
    fn pod_urls_use_the_headless_service() {
        let c = cluster(3, PayloadClass::Small);
        assert_eq!(pod_url(&c, &pod_name(&c, 2)), "http://config-2.config-peers.platform.svc:8080");
    }

    #[test]
    fn missing_uid_is_an_error_not_a_panic() {
        let mut c = cluster(3, PayloadClass::Small);
        c.metadata.uid = None;
        assert!(matches!(headless_service(&c), Err(BuildError::MissingMetadata(_))));
    }
}
