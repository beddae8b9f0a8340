//! Pure builders: ConfmanCluster (+ derived tuning) → desired child objects, no client.
//! Every object carries the cluster's labels and a controller owner reference so Kubernetes
//! garbage-collects it with the cluster. (StatefulSet and Secret builders come with the
//! reconcile loop, together with node-id allocation.)

use std::collections::BTreeMap;

use confman_tuning::Tuning;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::crd::ConfmanCluster;

/// Port of the node's HTTP listener (client API and Raft RPC).
pub const NODE_PORT: i32 = 8080;
/// Where the node config is mounted.
pub const CONFIG_PATH: &str = "/etc/confman/node.toml";

/// Why an object could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The cluster lacks metadata a child needs (name, namespace or uid).
    #[error("ConfmanCluster is missing metadata.{0}")]
    MissingMetadata(&'static str),
}

/// Names of the children of a cluster.
pub fn headless_name(c: &ConfmanCluster) -> String {
    format!("{}-peers", c.name_any())
}

/// Name of the client Service.
pub fn client_name(c: &ConfmanCluster) -> String {
    c.name_any()
}

/// Name of the node ConfigMap.
pub fn config_name(c: &ConfmanCluster) -> String {
    format!("{}-config", c.name_any())
}

/// Labels selecting the pods of a cluster.
pub fn selector_labels(c: &ConfmanCluster) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "confman".to_string()),
        ("app.kubernetes.io/instance".to_string(), c.name_any()),
    ])
}

fn labels(c: &ConfmanCluster) -> BTreeMap<String, String> {
    let mut l = selector_labels(c);
    l.insert("app.kubernetes.io/managed-by".into(), "confman-operator".into());
    l
}

fn meta(c: &ConfmanCluster, name: String) -> Result<ObjectMeta, BuildError> {
    let owner = c.controller_owner_ref(&()).ok_or(BuildError::MissingMetadata("uid"))?;
    Ok(ObjectMeta {
        name: Some(name),
        namespace: Some(c.namespace().ok_or(BuildError::MissingMetadata("namespace"))?),
        labels: Some(labels(c)),
        owner_references: Some(vec![owner]),
        ..ObjectMeta::default()
    })
}

fn http_port() -> ServicePort {
    ServicePort {
        name: Some("http".into()),
        port: NODE_PORT,
        target_port: Some(IntOrString::Int(NODE_PORT)),
        ..ServicePort::default()
    }
}

/// Headless Service giving each pod a stable DNS name; not-ready pods are published so peers
/// can find each other before the cluster has a leader.
pub fn headless_service(c: &ConfmanCluster) -> Result<Service, BuildError> {
    Ok(Service {
        metadata: meta(c, headless_name(c))?,
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(c)),
            ports: Some(vec![http_port()]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    })
}

/// Client Service load-balancing across pods (followers forward writes to the leader).
pub fn client_service(c: &ConfmanCluster) -> Result<Service, BuildError> {
    let svc = c.spec.service.as_ref();
    let port = ServicePort {
        name: Some("http".into()),
        port: svc.and_then(|s| s.port).unwrap_or(NODE_PORT),
        target_port: Some(IntOrString::Int(NODE_PORT)),
        ..ServicePort::default()
    };
    Ok(Service {
        metadata: meta(c, client_name(c))?,
        spec: Some(ServiceSpec {
            type_: Some(svc.and_then(|s| s.type_.clone()).unwrap_or_else(|| "ClusterIP".into())),
            selector: Some(selector_labels(c)),
            ports: Some(vec![port]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    })
}

/// The node config file (TOML, snake_case keys of `confman-node --config`) with the derived
/// tuning; per-pod values (node id, advertise URL) come from the environment.
pub fn node_config(tuning: &Tuning, keys_file: Option<&str>) -> String {
    let mut s = String::new();
    s.push_str(&format!("listen = \"0.0.0.0:{NODE_PORT}\"\n"));
    s.push_str("data_dir = \"/var/lib/confman\"\n");
    s.push_str("cluster_token_file = \"/etc/confman/token/token\"\n");
    if let Some(k) = keys_file {
        s.push_str(&format!("api_keys_file = \"{k}\"\n"));
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
        data: Some(BTreeMap::from([("node.toml".to_string(), node_config(tuning, keys))])),
        ..ConfigMap::default()
    })
}

/// PodDisruptionBudget that keeps a quorum: at most (replicas − 1) / 2 pods down by choice.
pub fn pod_disruption_budget(c: &ConfmanCluster) -> Result<PodDisruptionBudget, BuildError> {
    let quorum = c.spec.replicas / 2 + 1;
    Ok(PodDisruptionBudget {
        metadata: meta(c, c.name_any())?,
        spec: Some(PodDisruptionBudgetSpec {
            min_available: Some(IntOrString::Int(quorum)),
            selector: Some(LabelSelector { match_labels: Some(selector_labels(c)), ..LabelSelector::default() }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ConfmanClusterSpec, PayloadClassSpec, ServiceSpec as CmcService, StorageSpec};
    use crate::tuning::effective_tuning;

    fn cluster(replicas: i32, class: PayloadClassSpec) -> ConfmanCluster {
        let mut c = ConfmanCluster::new(
            "config",
            ConfmanClusterSpec {
                replicas,
                image: "confman:1".into(),
                payload_class: class,
                tuning: None,
                storage: StorageSpec {
                    size: "10Gi".into(),
                    storage_class_name: None,
                    retain_on_delete: false,
                    retain_on_scale_down: false,
                },
                resources: None,
                affinity: None,
                tolerations: None,
                node_selector: None,
                topology_spread_constraints: None,
                priority_class_name: None,
                auth: None,
                tls: None,
                service: None,
                paused: false,
            },
        );
        c.metadata.namespace = Some("platform".into());
        c.metadata.uid = Some("0f5a-uid".into());
        c
    }

    #[test]
    fn every_child_is_owned_and_labelled() -> Result<(), BuildError> {
        let c = cluster(3, PayloadClassSpec::Small);
        let metas = [
            headless_service(&c)?.metadata,
            client_service(&c)?.metadata,
            config_map(&c, &PayloadClassSpec::Small.into_tuning())?.metadata,
            pod_disruption_budget(&c)?.metadata,
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
    fn headless_service_publishes_not_ready_pods() -> Result<(), BuildError> {
        let s = headless_service(&cluster(3, PayloadClassSpec::Small))?;
        let spec = s.spec.unwrap_or_default();
        assert_eq!(s.metadata.name.as_deref(), Some("config-peers"));
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.publish_not_ready_addresses, Some(true));
        Ok(())
    }

    #[test]
    fn client_service_honours_type_and_port() -> Result<(), BuildError> {
        let mut c = cluster(3, PayloadClassSpec::Small);
        c.spec.service = Some(CmcService { type_: Some("LoadBalancer".into()), port: Some(80) });
        let spec = client_service(&c)?.spec.unwrap_or_default();
        assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
        let port = &spec.ports.unwrap_or_default()[0];
        assert_eq!((port.port, port.target_port.clone()), (80, Some(IntOrString::Int(NODE_PORT))));
        Ok(())
    }

    #[test]
    fn pdb_keeps_a_quorum() -> Result<(), BuildError> {
        for (replicas, min) in [(1, 1), (3, 2), (5, 3), (9, 5)] {
            let pdb = pod_disruption_budget(&cluster(replicas, PayloadClassSpec::Small))?;
            assert_eq!(pdb.spec.unwrap_or_default().min_available, Some(IntOrString::Int(min)), "{replicas}");
        }
        Ok(())
    }

    #[test]
    fn config_map_carries_the_derived_tuning() -> Result<(), Box<dyn std::error::Error>> {
        let c = cluster(5, PayloadClassSpec::Large);
        let t = effective_tuning(&c.spec).map_err(|v| format!("{v:?}"))?;
        let cm = config_map(&c, &t)?;
        let toml = cm.data.unwrap_or_default().remove("node.toml").unwrap_or_default();
        assert!(toml.contains(&format!("heartbeat_ms = {}\n", t.heartbeat_ms)), "{toml}");
        assert!(toml.contains("max_value_bytes = 4194304\n"), "{toml}");
        assert!(toml.contains("max_append_entries = 64\n"), "{toml}");
        assert!(!toml.contains("api_keys_file"), "no keys file without spec.auth");
        Ok(())
    }

    #[test]
    fn missing_uid_is_an_error_not_a_panic() {
        let mut c = cluster(3, PayloadClassSpec::Small);
        c.metadata.uid = None;
        assert!(matches!(headless_service(&c), Err(BuildError::MissingMetadata(_))));
    }
}
