//! The StatefulSet running the members: one pod per ordinal with its own volume, stable DNS via
//! the headless Service, node id from the member ledger, hardened security context.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use confman_contract::Tuning;
use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec, StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities as LinuxCapabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvVar, EnvVarSource, HTTPGetAction, KeyToPath, ObjectFieldSelector, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PodAffinityTerm, PodAntiAffinity, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, SecretVolumeSource, SecurityContext, TopologySpreadConstraint, Volume,
    VolumeMount, VolumeResourceRequirements, WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{
    BuildError, CONFIG_DIR, CONFIG_FILE, CREDENTIALS_HASH_ANNOTATION, KEYS_FILE, NODE_PORT, TOKEN_KEY, client_name,
    config_name, headless_name, keys_secret_name, members_name, meta, selector_labels, token_name,
};
use crate::capabilities::Capabilities;
use crate::crd::{ConfmanCluster, PayloadClass};

/// Where each member's volume is mounted (the node's data dir).
pub const DATA_DIR: &str = "/var/lib/confman";
/// Where the member ledger ConfigMap is mounted (a directory mount, so updates reach running pods).
pub const MEMBERS_DIR: &str = "/etc/confman/members";
/// File name of the ledger inside [`MEMBERS_DIR`].
pub const MEMBERS_FILE: &str = "members.toml";
/// Pod-template annotation carrying the config hash.
pub const CONFIG_HASH_ANNOTATION: &str = "confman.io/config-hash";
/// Pod-template annotation carrying the hash of the trusted CA (`ca.crt` of the TLS Secret):
/// nodes read it at start, so a new CA bundle rolls the pods (followers first, leader last).
pub const CA_HASH_ANNOTATION: &str = "confman.io/ca-hash";
/// Default group owning the data volume: the image's group (`USER 10001:10001`). The user
/// itself is not fixed in the pod: the image's applies, or the one the platform assigns
/// (OpenShift's restricted SCC), and `runAsNonRoot` refuses root either way.
pub const DEFAULT_FS_GROUP: i64 = 10001;
/// Zone label the default spread uses (well-known since Kubernetes 1.17).
pub const ZONE_KEY: &str = "topology.kubernetes.io/zone";
/// Node label the default spread and anti-affinity use.
pub const HOST_KEY: &str = "kubernetes.io/hostname";

/// Seconds a pod gets to stop: longer than a client request plus a snapshot transfer/install, so
/// a member is never killed halfway through either (at least a minute).
pub fn termination_grace_seconds(t: &Tuning) -> i64 {
    let ms = t.request_timeout_ms + t.snapshot_timeout_ms + 30_000;
    i64::try_from(ms.div_ceil(1000)).unwrap_or(i64::MAX).max(60)
}

fn http_probe(c: &ConfmanCluster, path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(NODE_PORT),
            // The kubelet does not verify the certificate of an HTTPS probe.
            scheme: Some(super::scheme(c).to_uppercase()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(3),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

fn env(name: &str, value: String) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value), ..EnvVar::default() }
}

fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount { name: name.into(), mount_path: path.into(), read_only: Some(true), ..VolumeMount::default() }
}

fn config_volume(name: &str, config_map: String, keys: &[&str]) -> Volume {
    Volume {
        name: name.into(),
        config_map: Some(ConfigMapVolumeSource {
            name: config_map,
            items: Some(
                keys.iter()
                    .map(|k| KeyToPath { key: (*k).into(), path: (*k).into(), ..KeyToPath::default() })
                    .collect(),
            ),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }
}

fn secret_volume(name: &str, secret: String, keys: &[&str]) -> Volume {
    Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret),
            items: Some(
                keys.iter()
                    .map(|k| KeyToPath { key: (*k).into(), path: (*k).into(), ..KeyToPath::default() })
                    .collect(),
            ),
            default_mode: Some(0o400),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// Default placement: prefer one member per node, so a node failure costs at most one vote.
fn default_affinity(c: &ConfmanCluster) -> Affinity {
    Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![WeightedPodAffinityTerm {
                weight: 100,
                pod_affinity_term: PodAffinityTerm {
                    label_selector: Some(LabelSelector {
                        match_labels: Some(selector_labels(c)),
                        ..LabelSelector::default()
                    }),
                    topology_key: HOST_KEY.into(),
                    ..PodAffinityTerm::default()
                },
            }]),
            ..PodAntiAffinity::default()
        }),
        ..Affinity::default()
    }
}

/// Default spread when the spec gives none: at most one member of skew per zone and per node.
/// `ScheduleAnyway` for both, as a preference: a cluster with fewer zones (or nodes) than members,
/// or nodes without a zone label, must still schedule every member; and before 1.26 the
/// scheduler counts tainted nodes as domains, where `DoNotSchedule` could strand a pod.
fn default_spread(c: &ConfmanCluster) -> Vec<TopologySpreadConstraint> {
    [ZONE_KEY, HOST_KEY]
        .into_iter()
        .map(|key| TopologySpreadConstraint {
            max_skew: 1,
            topology_key: key.into(),
            when_unsatisfiable: "ScheduleAnyway".into(),
            label_selector: Some(LabelSelector { match_labels: Some(selector_labels(c)), ..LabelSelector::default() }),
            ..TopologySpreadConstraint::default()
        })
        .collect()
}

/// Default CPU and memory requests of a payload class: memory is about four compaction triggers
/// of the class (the log kept until compaction, a snapshot being built and one in flight, the
/// store's caches); CPU grows with the bytes each entry costs to hash, write and send.
pub fn default_requests(class: PayloadClass) -> (&'static str, &'static str) {
    match class {
        PayloadClass::Small => ("100m", "256Mi"),
        PayloadClass::Medium => ("250m", "512Mi"),
        PayloadClass::Large => ("500m", "1Gi"),
        PayloadClass::Huge => ("1", "2Gi"),
    }
}

/// The user's resources, plus the class's default request for every CPU or memory the user
/// left without a request and without a limit (with a limit, Kubernetes takes the limit as the
/// request; a default request above the user's limit would be refused). Limits are never added.
fn resources(c: &ConfmanCluster) -> ResourceRequirements {
    let mut r = c.spec.resources.clone().unwrap_or_default();
    let (cpu, memory) = default_requests(c.spec.payload_class);
    for (name, default) in [("cpu", cpu), ("memory", memory)] {
        let limited = r.limits.as_ref().is_some_and(|l| l.contains_key(name));
        let requests = r.requests.get_or_insert_default();
        if !limited && !requests.contains_key(name) {
            requests.insert(name.to_string(), Quantity(default.to_string()));
        }
    }
    r
}

fn container(c: &ConfmanCluster) -> Container {
    let mut mounts = vec![
        VolumeMount { name: "data".into(), mount_path: DATA_DIR.into(), ..VolumeMount::default() },
        mount("config", CONFIG_DIR),
        mount("members", MEMBERS_DIR),
        mount("token", "/etc/confman/token"),
        mount("keys", "/etc/confman/keys"),
        VolumeMount { name: "tmp".into(), mount_path: "/tmp".into(), ..VolumeMount::default() },
    ];
    if c.spec.tls.is_some() {
        mounts.push(mount("tls", super::TLS_DIR));
    }
    Container {
        name: "confman".into(),
        image: Some(c.spec.image.clone()),
        args: Some(vec!["--config".into(), format!("{CONFIG_DIR}/{CONFIG_FILE}")]),
        env: Some(vec![
            EnvVar {
                name: "CONFMAN_POD_NAME".into(),
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector { field_path: "metadata.name".into(), ..Default::default() }),
                    ..EnvVarSource::default()
                }),
                ..EnvVar::default()
            },
            // Kubernetes expands $(CONFMAN_POD_NAME) from the variable above.
            env("CONFMAN_ADVERTISE", super::pod_url(c, "$(CONFMAN_POD_NAME)")),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: NODE_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        readiness_probe: Some(http_probe(c, "/health/ready", 5, 2)),
        liveness_probe: Some(http_probe(c, "/health", 10, 6)),
        resources: Some(resources(c)),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(LinuxCapabilities { drop: Some(vec!["ALL".into()]), ..LinuxCapabilities::default() }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(mounts),
        ..Container::default()
    }
}

fn volume_claim(c: &ConfmanCluster) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta { name: Some("data".into()), labels: Some(selector_labels(c)), ..ObjectMeta::default() },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: c.spec.storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_string(), Quantity(c.spec.storage.size.clone()))])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}

/// Records the credentials hash (see [`CREDENTIALS_HASH_ANNOTATION`]) in the pod template.
pub fn with_credentials_hash(sts: &mut StatefulSet, hash: &str) {
    let meta = sts.spec.template.metadata.get_or_insert_default();
    meta.annotations.get_or_insert_default().insert(CREDENTIALS_HASH_ANNOTATION.to_string(), hash.to_string());
}

/// Records the hash of the CA bundle the pods trust in the pod template (see
/// [`CA_HASH_ANNOTATION`]); returns the hash.
pub fn with_trusted_ca(sts: &mut StatefulSet, ca_pem: &str) -> String {
    let hash = hex::encode(&Sha256::digest(ca_pem.trim().as_bytes())[..16]);
    let meta = sts.spec.template.metadata.get_or_insert_default();
    meta.annotations.get_or_insert_default().insert(CA_HASH_ANNOTATION.to_string(), hash.clone());
    hash
}

/// The update strategy: `OnDelete`. The operator replaces outdated pods itself, one at a time,
/// followers first and the leader last after a leadership transfer, and only while every member
/// is healthy (`membership_step::Step::Replace`). With `RollingUpdate` the StatefulSet controller
/// would also roll the pods on its own — highest ordinal first, blind to which one leads — while
/// the operator deletes the pod of its choice: two members down at once, a lost quorum in a
/// three-member group. With `OnDelete` a template change only moves `status.updateRevision`;
/// pods keep their old `controller-revision-hash` until the operator deletes them.
pub const UPDATE_STRATEGY: &str = "OnDelete";

/// The StatefulSet. `config_hash` goes into the pod template, so a config change makes the pods
/// outdated (the operator then replaces them, see [`UPDATE_STRATEGY`]).
/// Pods start in parallel (the node tolerates it: only the lowest bootstrap id initialises the
/// group, the others wait for it), which avoids the ordered-start deadlock where pod 0 cannot
/// become Ready without a quorum. The PVC retention policy is set only where the server
/// enforces it (`caps`); elsewhere volumes are kept and the cluster's owner is told.
pub fn statefulset(
    c: &ConfmanCluster,
    tuning: &Tuning,
    config_hash: &str,
    caps: &Capabilities,
) -> Result<StatefulSet, BuildError> {
    let grace = termination_grace_seconds(tuning);
    let config_files: &[&str] =
        if super::accepts_service_accounts(c) { &[CONFIG_FILE, super::SERVICE_ACCOUNTS_FILE] } else { &[CONFIG_FILE] };
    let mut volumes = vec![
        config_volume("config", config_name(c), config_files),
        config_volume("members", members_name(c), &[MEMBERS_FILE]),
        secret_volume("token", token_name(c), &[TOKEN_KEY]),
        secret_volume("keys", keys_secret_name(c), &[KEYS_FILE]),
        Volume { name: "tmp".into(), empty_dir: Some(EmptyDirVolumeSource::default()), ..Volume::default() },
    ];
    if let Some(tls) = &c.spec.tls {
        volumes.push(secret_volume("tls", tls.client_secret.clone(), &super::TLS_KEYS));
    }
    let pod = c.spec.pod.clone().unwrap_or_default();
    // The user's labels and annotations first, the operator's over them: the selector labels
    // must match the StatefulSet's selector, and the hash annotations drive the rollouts.
    let mut pod_labels = pod.labels.unwrap_or_default();
    pod_labels.extend(selector_labels(c));
    pod_labels.insert("app.kubernetes.io/component".into(), "node".into());
    let mut annotations = pod.annotations.unwrap_or_default();
    annotations.insert(CONFIG_HASH_ANNOTATION.to_string(), config_hash.to_string());
    let mut startup = http_probe(c, "/health", 5, 0);
    // A restarted member may finish a snapshot install before it listens: allow for it.
    startup.failure_threshold = Some(i32::try_from(grace / 5 + 1).unwrap_or(i32::MAX));
    let mut main = container(c);
    main.startup_probe = Some(startup);

    Ok(StatefulSet {
        metadata: meta(c, client_name(c))?,
        spec: StatefulSetSpec {
            replicas: Some(c.spec.replicas),
            service_name: Some(headless_name(c)),
            pod_management_policy: Some("Parallel".into()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some(UPDATE_STRATEGY.into()),
                rolling_update: None,
            }),
            selector: LabelSelector { match_labels: Some(selector_labels(c)), ..LabelSelector::default() },
            persistent_volume_claim_retention_policy: caps.pvc_retention_policy.then(|| {
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some(if c.spec.storage.retain_on_delete { "Retain" } else { "Delete" }.into()),
                    when_scaled: Some(if c.spec.storage.retain_on_scale_down { "Retain" } else { "Delete" }.into()),
                }
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: super::member_service_account_name(c),
                    image_pull_secrets: pod.image_pull_secrets,
                    // Only members that check ServiceAccount tokens call the API server.
                    automount_service_account_token: Some(super::accepts_service_accounts(c)),
                    enable_service_links: Some(false),
                    termination_grace_period_seconds: Some(grace),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        fs_group: Some(pod.fs_group.unwrap_or(DEFAULT_FS_GROUP)),
                        // The kubelet walks the volume to chown it only when its root does not
                        // already carry the group, not on every start (large volumes took minutes).
                        fs_group_change_policy: Some("OnRootMismatch".into()),
                        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() }),
                        ..PodSecurityContext::default()
                    }),
                    affinity: Some(c.spec.affinity.clone().unwrap_or_else(|| default_affinity(c))),
                    tolerations: c.spec.tolerations.clone(),
                    node_selector: c.spec.node_selector.clone(),
                    topology_spread_constraints: Some(
                        c.spec.topology_spread_constraints.clone().unwrap_or_else(|| default_spread(c)),
                    ),
                    priority_class_name: c.spec.priority_class_name.clone(),
                    containers: vec![main],
                    volumes: Some(volumes),
                    ..PodSpec::default()
                }),
            },
            volume_claim_templates: Some(vec![volume_claim(c)]),
            ..StatefulSetSpec::default()
        },
        ..StatefulSet::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::PayloadClass;
    use crate::fixtures::cluster;

    #[test]
    fn a_new_ca_bundle_changes_the_pod_template() -> Result<(), Box<dyn std::error::Error>> {
        let c = cluster(3, PayloadClass::Small);
        let t = PayloadClass::Small.tuning();
        let mut a = statefulset(&c, &t, "h", &Capabilities::RECENT)?;
        let mut b = statefulset(&c, &t, "h", &Capabilities::RECENT)?;
        let ha = with_trusted_ca(&mut a, "-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n");
        let same = with_trusted_ca(&mut b, "-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----");
        assert_eq!(ha, same, "whitespace around the bundle does not roll the pods");
        let annotations = |s: &StatefulSet| s.spec.template.metadata.as_ref().and_then(|m| m.annotations.clone());
        assert_eq!(annotations(&a).and_then(|m| m.get(CA_HASH_ANNOTATION).cloned()), Some(ha.clone()));
        let other = with_trusted_ca(&mut b, "-----BEGIN CERTIFICATE-----\nBBB\n-----END CERTIFICATE-----");
        assert_ne!(other, ha, "a different bundle rolls the pods");
        assert_eq!(annotations(&b).and_then(|m| m.get(CONFIG_HASH_ANNOTATION).cloned()), Some("h".to_string()));
        Ok(())
    }

    #[test]
    fn pods_are_replaced_by_the_operator_not_rolled_by_the_statefulset() -> Result<(), BuildError> {
        let c = cluster(3, PayloadClass::Small);
        let t = PayloadClass::Small.tuning();
        for caps in [Capabilities::RECENT, Capabilities::of_version(1, 20)] {
            let sts = statefulset(&c, &t, "h", &caps)?;
            let strategy = sts.spec.update_strategy.unwrap_or_default();
            assert_eq!(strategy.type_.as_deref(), Some("OnDelete"), "{caps:?}");
            assert_eq!(strategy.rolling_update, None);
        }
        Ok(())
    }

    fn pod_spec(sts: &StatefulSet) -> PodSpec {
        sts.spec.template.spec.clone().unwrap_or_default()
    }

    #[test]
    fn pod_spec_gaps_pull_secrets_service_account_labels_and_annotations_reach_the_pods() -> Result<(), BuildError> {
        use crate::crd::PodOptions;
        use k8s_openapi::api::core::v1::LocalObjectReference;
        let mut c = cluster(3, PayloadClass::Small);
        c.spec.pod = Some(PodOptions {
            service_account_name: Some("confman-nodes".into()),
            image_pull_secrets: Some(vec![LocalObjectReference { name: "registry".into() }]),
            labels: Some(BTreeMap::from([
                ("team".to_string(), "platform".to_string()),
                ("app.kubernetes.io/instance".to_string(), "hijack".to_string()),
                ("app.kubernetes.io/component".to_string(), "hijack".to_string()),
            ])),
            annotations: Some(BTreeMap::from([
                ("sidecar.istio.io/inject".to_string(), "false".to_string()),
                (CONFIG_HASH_ANNOTATION.to_string(), "user".to_string()),
            ])),
            fs_group: None,
        });
        let t = PayloadClass::Small.tuning();
        let sts = statefulset(&c, &t, "h", &Capabilities::RECENT)?;
        let pod = pod_spec(&sts);
        assert_eq!(pod.service_account_name.as_deref(), Some("confman-nodes"));
        assert_eq!(pod.image_pull_secrets, Some(vec![LocalObjectReference { name: "registry".into() }]));
        assert_eq!(pod.automount_service_account_token, Some(false), "nodes never call the API");
        let meta = sts.spec.template.metadata.clone().unwrap_or_default();
        let labels = meta.labels.unwrap_or_default();
        assert_eq!(labels.get("team").map(String::as_str), Some("platform"));
        assert_eq!(labels.get("app.kubernetes.io/instance").map(String::as_str), Some("config"));
        assert_eq!(labels.get("app.kubernetes.io/component").map(String::as_str), Some("node"));
        let selector = sts.spec.selector.match_labels.clone().unwrap_or_default();
        assert!(selector.iter().all(|(k, v)| labels.get(k) == Some(v)), "the selector still matches the pods");
        let annotations = meta.annotations.unwrap_or_default();
        assert_eq!(annotations.get("sidecar.istio.io/inject").map(String::as_str), Some("false"));
        assert_eq!(annotations.get(CONFIG_HASH_ANNOTATION).map(String::as_str), Some("h"));
        Ok(())
    }

    #[test]
    fn pod_spec_gaps_members_are_never_best_effort() -> Result<(), BuildError> {
        let quantity = |r: &ResourceRequirements, kind: &str, name: &str| {
            let map = if kind == "requests" { &r.requests } else { &r.limits };
            map.as_ref().and_then(|m| m.get(name)).map(|q| q.0.clone())
        };
        for class in [PayloadClass::Small, PayloadClass::Medium, PayloadClass::Large, PayloadClass::Huge] {
            let c = cluster(3, class);
            let sts = statefulset(&c, &class.tuning(), "h", &Capabilities::RECENT)?;
            let r = pod_spec(&sts).containers[0].resources.clone().unwrap_or_default();
            let (cpu, memory) = default_requests(class);
            assert_eq!(quantity(&r, "requests", "cpu").as_deref(), Some(cpu), "{class:?}");
            assert_eq!(quantity(&r, "requests", "memory").as_deref(), Some(memory), "{class:?}");
            assert_eq!(r.limits, None, "no limit is guessed");
        }
        // The user's values win; a resource with only a limit keeps Kubernetes' request = limit.
        let mut c = cluster(3, PayloadClass::Large);
        c.spec.resources = Some(ResourceRequirements {
            requests: Some(BTreeMap::from([("cpu".to_string(), Quantity("2".into()))])),
            limits: Some(BTreeMap::from([("memory".to_string(), Quantity("512Mi".into()))])),
            ..ResourceRequirements::default()
        });
        let sts = statefulset(&c, &PayloadClass::Large.tuning(), "h", &Capabilities::RECENT)?;
        let r = pod_spec(&sts).containers[0].resources.clone().unwrap_or_default();
        assert_eq!(quantity(&r, "requests", "cpu").as_deref(), Some("2"));
        assert_eq!(quantity(&r, "requests", "memory"), None, "a default above the user's limit would be refused");
        assert_eq!(quantity(&r, "limits", "memory").as_deref(), Some("512Mi"));
        Ok(())
    }

    #[test]
    fn pod_spec_gaps_no_fixed_user_and_volume_ownership_fixed_only_on_mismatch() -> Result<(), BuildError> {
        let mut c = cluster(3, PayloadClass::Small);
        let t = PayloadClass::Small.tuning();
        let sc = pod_spec(&statefulset(&c, &t, "h", &Capabilities::RECENT)?).security_context.unwrap_or_default();
        assert_eq!((sc.run_as_user, sc.run_as_group), (None, None), "OpenShift assigns the user");
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.fs_group, Some(DEFAULT_FS_GROUP));
        assert_eq!(sc.fs_group_change_policy.as_deref(), Some("OnRootMismatch"));
        c.spec.pod = Some(crate::crd::PodOptions { fs_group: Some(1_000_680_000), ..Default::default() });
        let sc = pod_spec(&statefulset(&c, &t, "h", &Capabilities::RECENT)?).security_context.unwrap_or_default();
        assert_eq!(sc.fs_group, Some(1_000_680_000));
        Ok(())
    }

    #[test]
    fn pod_spec_gaps_members_spread_across_zones_and_hosts() -> Result<(), BuildError> {
        let mut c = cluster(3, PayloadClass::Small);
        let t = PayloadClass::Small.tuning();
        let spread = pod_spec(&statefulset(&c, &t, "h", &Capabilities::RECENT)?).topology_spread_constraints;
        let spread = spread.unwrap_or_default();
        let keys: Vec<(&str, &str, i32)> =
            spread.iter().map(|s| (s.topology_key.as_str(), s.when_unsatisfiable.as_str(), s.max_skew)).collect();
        assert_eq!(keys, [(ZONE_KEY, "ScheduleAnyway", 1), (HOST_KEY, "ScheduleAnyway", 1)]);
        for s in &spread {
            let selector = s.label_selector.clone().unwrap_or_default().match_labels;
            assert_eq!(selector, Some(selector_labels(&c)));
        }
        // The user's constraints replace the defaults.
        let own = TopologySpreadConstraint {
            max_skew: 2,
            topology_key: ZONE_KEY.into(),
            when_unsatisfiable: "DoNotSchedule".into(),
            ..TopologySpreadConstraint::default()
        };
        c.spec.topology_spread_constraints = Some(vec![own.clone()]);
        let spread = pod_spec(&statefulset(&c, &t, "h", &Capabilities::RECENT)?).topology_spread_constraints;
        assert_eq!(spread, Some(vec![own]));
        Ok(())
    }

    #[test]
    fn the_retention_policy_is_sent_only_where_it_is_enforced() -> Result<(), BuildError> {
        let mut c = cluster(3, PayloadClass::Small);
        c.spec.storage.retain_on_delete = true;
        let t = PayloadClass::Small.tuning();
        let policy = statefulset(&c, &t, "h", &Capabilities::RECENT)?.spec.persistent_volume_claim_retention_policy;
        assert_eq!(
            policy,
            Some(StatefulSetPersistentVolumeClaimRetentionPolicy {
                when_deleted: Some("Retain".into()),
                when_scaled: Some("Delete".into()),
            })
        );
        for minor in [20, 23, 26] {
            let sts = statefulset(&c, &t, "h", &Capabilities::of_version(1, minor))?;
            assert_eq!(sts.spec.persistent_volume_claim_retention_policy, None, "1.{minor}");
            let json = serde_json::to_value(&sts).map_err(BuildError::Json)?;
            assert!(json["spec"].get("persistentVolumeClaimRetentionPolicy").is_none(), "1.{minor}: {json}");
        }
        Ok(())
    }
}
