//! The `ConfmanCluster` custom resource (`confman.io/v1alpha1`): spec, status, printer columns,
//! `status` and `scale` subresources, and CEL rules for what the schema can check. The payload
//! class and the tuning are the contract's types (`confman-contract`), embedded as they are;
//! only the CEL rules on `spec.tuning` are added here.
//! `crd()` produces the installable CRD (descriptions of embedded Kubernetes types stripped so
//! the schema stays small); `crds/` holds its output and a test fails on drift.

// kube's `printcolumn(...)` attributes repeat `type_ = ...` by design.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

/// The contract's types the resource embeds: `spec.payloadClass`, `spec.tuning` and
/// `status.effectiveTuning`.
pub use confman_contract::{PayloadClass, Tuning, TuningOverrides};
use k8s_openapi::api::core::v1::{
    Affinity, LocalObjectReference, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::{Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};
use serde_json::Value;

fn default_replicas() -> i32 {
    3
}

/// A cluster that declares no payload class stores small values.
fn default_payload_class() -> PayloadClass {
    PayloadClass::Small
}

/// Desired state of a Confman cluster.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "confman.io",
    version = "v1alpha1",
    kind = "ConfmanCluster",
    namespaced,
    shortname = "cmc",
    status = "ConfmanClusterStatus",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.readyReplicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "Leader", type_ = "string", json_path = ".status.leader"),
    printcolumn(name = "Payload", type_ = "string", json_path = ".spec.payloadClass"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    doc = "A Confman cluster: a Raft-replicated configuration store run as a StatefulSet"
)]
#[x_kube(cel, validation = Rule::new("has(self.tls) == has(oldSelf.tls)").message("tls cannot be added or removed after creation: the members' addresses (http or https) are in the Raft log"))]
#[serde(rename_all = "camelCase")]
pub struct ConfmanClusterSpec {
    /// Number of Raft voters: odd, 1 to 9.
    #[serde(default = "default_replicas")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 9 && self % 2 == 1").message("replicas must be odd and between 1 and 9"))]
    pub replicas: i32,
    /// Container image of confman-node.
    #[x_kube(validation = Rule::new("self != ''").message("image must not be empty"))]
    pub image: String,
    /// Declared value size; selects the Raft timing and snapshot tuning.
    #[serde(default = "default_payload_class")]
    pub payload_class: PayloadClass,
    /// Overrides of derived tuning values (validated against the same rules as the node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "tuning_schema")]
    pub tuning: Option<TuningOverrides>,
    /// Persistent storage of each member.
    pub storage: StorageSpec,
    /// Container resources. A CPU or memory the user gives neither a request nor a limit for gets
    /// the payload class's default request (small 100m/256Mi, medium 250m/512Mi, large 500m/1Gi,
    /// huge 1/2Gi: memory is about four compaction triggers of the class), so members are never
    /// BestEffort, the first pods evicted under node pressure. No limit is ever defaulted: a
    /// guessed memory limit would OOM-kill a member in the middle of a snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Pod-level settings: service account, image pull secrets, extra labels and annotations,
    /// volume group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodOptions>,
    /// Pod affinity; by default members are spread across nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Pod tolerations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    /// Node selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Topology spread constraints. When unset, members are spread (`maxSkew` 1,
    /// `ScheduleAnyway`) across zones (`topology.kubernetes.io/zone`) and nodes
    /// (`kubernetes.io/hostname`): losing a zone then costs as few votes as the nodes allow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,
    /// Priority class of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// Who may call the API: an API keys Secret, and ServiceAccounts mapped to roles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSpec>,
    /// TLS secret references.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// Client Service settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceSpec>,
    /// Stop reconciling (nothing is changed while true).
    #[serde(default)]
    pub paused: bool,
}

impl ConfmanClusterSpec {
    /// A spec with only the required fields (everything else at its default), as the shortest
    /// manifest a user can write.
    pub fn minimal(replicas: i32, image: impl Into<String>, storage_size: impl Into<String>) -> Self {
        ConfmanClusterSpec {
            replicas,
            image: image.into(),
            payload_class: default_payload_class(),
            tuning: None,
            storage: StorageSpec {
                size: storage_size.into(),
                storage_class_name: None,
                retain_on_delete: false,
                retain_on_scale_down: false,
            },
            resources: None,
            pod: None,
            affinity: None,
            tolerations: None,
            node_selector: None,
            topology_spread_constraints: None,
            priority_class_name: None,
            auth: None,
            tls: None,
            service: None,
            paused: false,
        }
    }
}

/// Pod-level settings beyond placement and resources.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodOptions {
    /// Service account the pods run as. Useful for image pull secrets attached to it, or for
    /// admission policies (PodSecurityPolicy, OpenShift SCCs) granted per service account. Its
    /// token is mounted only when `spec.auth.serviceAccounts` is set (the members then call
    /// TokenReview, and the operator binds it to that permission); otherwise the nodes never
    /// call the Kubernetes API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Secrets for pulling `image` from a private registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secrets: Option<Vec<LocalObjectReference>>,
    /// Extra labels on the pods (e.g. for network policies or cost allocation). Labels the
    /// operator sets (`app.kubernetes.io/name`, `app.kubernetes.io/instance`,
    /// `app.kubernetes.io/component`) keep the operator's value: the StatefulSet, Services and
    /// budget select the pods by them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Extra annotations on the pods (e.g. for a service mesh or a metrics scraper). The
    /// operator's `confman.io/*` annotations keep the operator's value: they decide rollouts.
    /// A change rolls the pods, one at a time like any template change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Group that owns the data volume (`securityContext.fsGroup`), 10001 (the image's group)
    /// when unset. On OpenShift's restricted SCC pick one in the namespace's
    /// `openshift.io/sa.scc.supplemental-groups` range. The pods run as the image's user, or
    /// the one the platform assigns; they are never given a fixed `runAsUser`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub fs_group: Option<i64>,
}

/// Ranges of `spec.tuning` overrides the API server checks as CEL rules (each has an
/// operator-side twin in `validate`), by property: the relations between settings are the
/// contract's invariants, checked by the operator before a rollout.
const TUNING_RANGES: [(&str, &str, &str); 4] = [
    ("heartbeatMs", "self >= 10 && self <= 10000", "heartbeatMs must be 10..10000"),
    ("electionMinMs", "self >= 50 && self <= 60000", "electionMinMs must be 50..60000"),
    ("electionMaxMs", "self >= 100 && self <= 120000", "electionMaxMs must be 100..120000"),
    ("maxValueBytes", "self >= 1024 && self <= 268435456", "maxValueBytes must be 1 KiB..256 MiB"),
];

/// The rule between two overrides that CEL checks on `spec.tuning` itself.
const ELECTION_ORDER: (&str, &str) = (
    "!has(self.electionMinMs) || !has(self.electionMaxMs) || self.electionMinMs < self.electionMaxMs",
    "electionMinMs must be below electionMaxMs",
);

/// The schema of `spec.tuning`: the contract's overrides with the CEL rules added. A property
/// named wrongly in [`TUNING_RANGES`] would lose its rule; the CEL-twin test in `validate` then
/// fails, as the twin's rule is missing from the CRD.
fn tuning_schema(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = generator.subschema_for::<Option<TuningOverrides>>();
    let object = schema.ensure_object();
    add_cel_rule(object, ELECTION_ORDER);
    if let Some(properties) = object.get_mut("properties").and_then(Value::as_object_mut) {
        for (name, rule, message) in TUNING_RANGES {
            if let Some(property) = properties.get_mut(name).and_then(Value::as_object_mut) {
                add_cel_rule(property, (rule, message));
            }
        }
    }
    schema
}

/// Appends a rule to a schema's `x-kubernetes-validations`.
fn add_cel_rule(schema: &mut serde_json::Map<String, Value>, (rule, message): (&str, &str)) {
    let rules = schema.entry("x-kubernetes-validations").or_insert_with(|| Value::Array(Vec::new()));
    if let Some(rules) = rules.as_array_mut() {
        rules.push(serde_json::json!({ "rule": rule, "message": message }));
    }
}

/// Storage of each member. `size` and `storageClassName` are fixed at creation: they are the
/// StatefulSet's volume claim template, which Kubernetes does not let change (volume growth is
/// not supported).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[x_kube(cel, validation = Rule::new("self.size == oldSelf.size && has(self.storageClassName) == has(oldSelf.storageClassName) && (!has(self.storageClassName) || self.storageClassName == oldSelf.storageClassName)").message("storage size and storageClassName cannot be changed after creation: they are the StatefulSet's volume claim template, which Kubernetes keeps immutable (volume growth is not supported)"))]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Volume size (a Kubernetes quantity, e.g. `10Gi`).
    pub size: String,
    /// Storage class; the cluster default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Keep volumes when the ConfmanCluster is deleted.
    #[serde(default)]
    pub retain_on_delete: bool,
    /// Keep the volume of a member removed by a scale-down (it never rejoins under its old id).
    #[serde(default)]
    pub retain_on_scale_down: bool,
}

/// Who may call the API.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// Secret holding the API keys file under `keys.yaml`. Unset: the operator generates one
    /// admin key in the Secret `<name>-admin` (key `admin-key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_keys_secret: Option<String>,
    /// Kubernetes ServiceAccounts that may call the API with a projected token whose audience is
    /// `confman` or this cluster's name, and what each may do. The members check such tokens
    /// with the API server (TokenReview); the operator gives the members' ServiceAccount exactly
    /// that permission.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<confman_contract::ServiceAccountRule>,
}

/// TLS: one `kubernetes.io/tls` Secret with `tls.crt`, `tls.key` and the CA as `ca.crt` (what
/// cert-manager writes); the certificate must name `*.<cluster>-peers.<namespace>.svc`.
/// Members check each other against the CA, and so does the operator. Set at creation only.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// Secret (kubernetes.io/tls) for the client listener.
    pub client_secret: String,
    /// Secret for peer traffic; the client secret when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_secret: Option<String>,
}

/// Client Service.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Service type: ClusterIP (default), NodePort or LoadBalancer.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self in ['ClusterIP', 'NodePort', 'LoadBalancer']").message("type must be ClusterIP, NodePort or LoadBalancer"))]
    pub type_: Option<String>,
    /// Service port (default 8080).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 65535").message("port must be 1..65535"))]
    pub port: Option<i32>,
}

/// Observed state.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConfmanClusterStatus {
    /// Generation of the spec this status reflects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Members that are ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Raft members.
    #[serde(default)]
    pub members: Vec<MemberStatus>,
    /// Pod name of the current leader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// Tuning derived from the payload class and overrides, as rolled out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_tuning: Option<Tuning>,
    /// Ready, Available, Progressing, Degraded, InvalidSpec: a map list keyed by `type`, so
    /// server-side apply merges them per condition. `Ready` (what Argo CD, Flux and
    /// `kubectl wait --for=condition=Ready` look for) is True when `Available` is True and the
    /// cluster is neither progressing, degraded nor refusing its spec.
    #[serde(default)]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Summary phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Label selector of the pods, as a string (`labelSelectorPath` of the scale subresource:
    /// what the HorizontalPodAutoscaler and `kubectl scale` tooling read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
}

/// One Raft member.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    /// Raft node id (never reused).
    pub id: u64,
    /// Pod name.
    pub pod: String,
    /// `voter` or `learner`.
    pub role: String,
    /// Whether the member is healthy (its pod is Ready).
    pub healthy: bool,
    /// The member's applied log index while it lags the leader's commit index by more than
    /// the promotion allowance (64 entries); absent when it is caught up, so the status does not
    /// change with every write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_index: Option<u64>,
}

/// Properties whose (embedded Kubernetes) schemas keep their structure but lose the descriptions
/// inside them (the field's own description stays).
const STRIPPED: [&str; 4] = ["resources", "affinity", "tolerations", "topologySpreadConstraints"];

fn strip_descriptions(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.remove("description");
            m.values_mut().for_each(strip_descriptions);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_descriptions),
        _ => {}
    }
}

/// The installable CRD.
pub fn crd() -> Result<CustomResourceDefinition, serde_json::Error> {
    let mut v = serde_json::to_value(ConfmanCluster::crd())?;
    if let Some(versions) = v.pointer_mut("/spec/versions").and_then(|x| x.as_array_mut()) {
        for ver in versions {
            if let Some(props) = ver.pointer_mut("/schema/openAPIV3Schema/properties/spec/properties") {
                for name in STRIPPED {
                    if let Some(p) = props.get_mut(name) {
                        // The field's own description (ours) stays; the embedded type's go.
                        let own = p.get("description").cloned();
                        strip_descriptions(p);
                        if let (Some(d), Some(o)) = (own, p.as_object_mut()) {
                            o.insert("description".into(), d);
                        }
                    }
                }
            }
        }
    }
    serde_json::from_value(v)
}

/// Why the CRD could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    /// JSON (de)serialization of the generated CRD failed.
    #[error("crd json: {0}")]
    Json(#[from] serde_json::Error),
    /// YAML rendering failed.
    #[error("crd yaml: {0}")]
    Yaml(#[from] serde_yaml_ng::Error),
}

/// The CRD as YAML, as written to `crds/`.
pub fn crd_yaml() -> Result<String, CrdError> {
    Ok(serde_yaml_ng::to_string(&crd()?)?)
}
