//! Spec validation (pure), before anything is built: what the CRD schema and CEL rules cannot
//! check, or should not be trusted to have checked. CEL `x-kubernetes-validations` are enforced
//! only from Kubernetes 1.25 (and not at all with a CRD installed from an older release), so every
//! CEL rule of the CRD has an operator-side twin here ([`CEL_TWINS`], kept equal to the CRD's rules
//! by a test). Returns the effective tuning or the `InvalidSpec` reason and message.

use confman_contract::Tuning;

use crate::crd::{ConfmanClusterSpec, TuningOverrides};
use crate::tuning::{effective_tuning, invalid_spec_message};

/// A refused spec: condition reason and a message naming the field, rule and values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// `InvalidTuning`, `InvalidReplicas`, `InvalidStorage`, `InvalidImage`, `InvalidTLS`, `InvalidAuth`,
    /// `InvalidService` or `Unsupported`.
    pub reason: &'static str,
    /// What is wrong.
    pub message: String,
}

fn invalid(reason: &'static str, message: String) -> Invalid {
    Invalid { reason, message }
}

/// What the operator already rolled out, standing in for CEL's `oldSelf` in transition rules:
/// the operator sees only the current spec, but the children it applied record what the
/// previous one was.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Whether the Raft group was created with TLS, read from the scheme of the bootstrap
    /// members' URLs in the member ledger (those addresses are in the Raft log, which is why the
    /// rule exists); None before the ledger exists (a new cluster: nothing to compare with).
    pub tls: Option<bool>,
    /// The volume claim template of the running StatefulSet; None before it exists, and at
    /// validation: a storage change is not refused as an invalid spec (which would stop every
    /// other change too) but held back at apply and reported `Degraded`.
    pub storage: Option<AppliedStorage>,
}

/// What the members' volumes were created with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppliedStorage {
    /// The claim template's storage request.
    pub size: String,
    /// The claim template's storage class.
    pub storage_class_name: Option<String>,
}

/// Messages of the CRD's CEL rules (the twins' refusals include them).
mod msg {
    pub const TLS_FIXED: &str =
        "tls cannot be added or removed after creation: the members' addresses (http or https) are in the Raft log";
    pub const REPLICAS: &str = "replicas must be odd and between 1 and 9";
    pub const IMAGE: &str = "image must not be empty";
    pub const ELECTION_ORDER: &str = "electionMinMs must be below electionMaxMs";
    pub const HEARTBEAT: &str = "heartbeatMs must be 10..10000";
    pub const ELECTION_MIN: &str = "electionMinMs must be 50..60000";
    pub const ELECTION_MAX: &str = "electionMaxMs must be 100..120000";
    pub const MAX_VALUE: &str = "maxValueBytes must be 1 KiB..256 MiB";
    pub const SERVICE_TYPE: &str = "type must be ClusterIP, NodePort or LoadBalancer";
    pub const SERVICE_PORT: &str = "port must be 1..65535";
    pub const STORAGE_FIXED: &str = "storage size and storageClassName cannot be changed after creation: they are the StatefulSet's volume claim template, which Kubernetes keeps immutable (volume growth is not supported)";
}

/// A CEL rule of the CRD and the operator-side check that refuses the same specs.
#[derive(Debug, Clone, Copy)]
pub struct CelTwin {
    /// The rule as it appears in the CRD (`x-kubernetes-validations[].rule`).
    pub rule: &'static str,
    /// Its message (the twin's refusal message includes it).
    pub message: &'static str,
    /// The check.
    pub check: fn(&ConfmanClusterSpec, &Applied) -> Result<(), Invalid>,
}

/// Every CEL rule of `crd.rs`, with its twin; a test asserts the rules equal those in the
/// generated CRD, so a rule added there without a twin fails the build's tests.
pub const CEL_TWINS: [CelTwin; 11] = [
    CelTwin { rule: "has(self.tls) == has(oldSelf.tls)", message: msg::TLS_FIXED, check: tls_fixed_at_creation },
    CelTwin { rule: "self >= 1 && self <= 9 && self % 2 == 1", message: msg::REPLICAS, check: replicas_odd_up_to_nine },
    CelTwin { rule: "self != ''", message: msg::IMAGE, check: image_not_empty },
    CelTwin {
        rule: "!has(self.electionMinMs) || !has(self.electionMaxMs) || self.electionMinMs < self.electionMaxMs",
        message: msg::ELECTION_ORDER,
        check: election_min_below_max,
    },
    CelTwin { rule: "self >= 10 && self <= 10000", message: msg::HEARTBEAT, check: heartbeat_range },
    CelTwin { rule: "self >= 50 && self <= 60000", message: msg::ELECTION_MIN, check: election_min_range },
    CelTwin { rule: "self >= 100 && self <= 120000", message: msg::ELECTION_MAX, check: election_max_range },
    CelTwin { rule: "self >= 1024 && self <= 268435456", message: msg::MAX_VALUE, check: max_value_range },
    CelTwin {
        rule: "self in ['ClusterIP', 'NodePort', 'LoadBalancer']",
        message: msg::SERVICE_TYPE,
        check: service_type,
    },
    CelTwin { rule: "self >= 1 && self <= 65535", message: msg::SERVICE_PORT, check: service_port },
    CelTwin { rule: STORAGE_RULE, message: msg::STORAGE_FIXED, check: storage_unchanged },
];

const STORAGE_RULE: &str = "self.size == oldSelf.size && has(self.storageClassName) == has(oldSelf.storageClassName) && (!has(self.storageClassName) || self.storageClassName == oldSelf.storageClassName)";

/// The storage rule, against the running StatefulSet's claim template ([`Applied::storage`]).
/// Sizes are compared as quantities (the API server stores `1024Mi` as `1Gi`).
pub fn storage_unchanged(spec: &ConfmanClusterSpec, applied: &Applied) -> Result<(), Invalid> {
    let Some(was) = &applied.storage else { return Ok(()) };
    let size_same = spec.storage.size == was.size
        || quantity_value(&spec.storage.size).is_some_and(|a| Some(a) == quantity_value(&was.size));
    if !size_same {
        return Err(invalid(
            "StorageImmutable",
            format!(
                "spec.storage.size is {} but the members' volumes were created with {}: {}; restore it",
                spec.storage.size,
                was.size,
                msg::STORAGE_FIXED
            ),
        ));
    }
    if spec.storage.storage_class_name != was.storage_class_name {
        let show = |c: &Option<String>| c.clone().unwrap_or_else(|| "the cluster default".into());
        return Err(invalid(
            "StorageImmutable",
            format!(
                "spec.storage.storageClassName is {} but the members' volumes were created with {}: {}; restore it",
                show(&spec.storage.storage_class_name),
                show(&was.storage_class_name),
                msg::STORAGE_FIXED
            ),
        ));
    }
    Ok(())
}

/// A quantity's value (`10Gi`, `1e3`, `500M`), for comparing two spellings of one size.
fn quantity_value(s: &str) -> Option<f64> {
    const SUFFIXES: [(&str, f64); 12] = [
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("Ti", 1099511627776.0),
        ("Pi", 1125899906842624.0),
        ("Ei", 1152921504606846976.0),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    let (number, scale) = SUFFIXES.iter().find_map(|(suf, m)| s.strip_suffix(suf).map(|n| (n, *m))).unwrap_or((s, 1.0));
    number.parse::<f64>().ok().filter(|v| v.is_finite()).map(|v| v * scale)
}

/// `has(self.tls) == has(oldSelf.tls)`: checked against the scheme the group was created with
/// ([`Applied::tls`]), the simplest sound stand-in for `oldSelf` — it is exactly the fact the rule
/// protects, and it survives a spec that was changed twice between reconciles.
fn tls_fixed_at_creation(spec: &ConfmanClusterSpec, applied: &Applied) -> Result<(), Invalid> {
    match applied.tls {
        Some(was) if was != spec.tls.is_some() => Err(invalid(
            "InvalidTLS",
            format!(
                "spec.tls was {} at creation and is {} now: {}; restore it",
                if was { "set" } else { "unset" },
                if spec.tls.is_some() { "set" } else { "unset" },
                msg::TLS_FIXED
            ),
        )),
        _ => Ok(()),
    }
}

fn replicas_odd_up_to_nine(spec: &ConfmanClusterSpec, _: &Applied) -> Result<(), Invalid> {
    if (1..=9).contains(&spec.replicas) && spec.replicas % 2 == 1 {
        return Ok(());
    }
    Err(invalid("InvalidReplicas", format!("spec.replicas is {}: {} (a Raft quorum)", spec.replicas, msg::REPLICAS)))
}

/// Stricter than the CEL rule: an image of blanks is refused too.
fn image_not_empty(spec: &ConfmanClusterSpec, _: &Applied) -> Result<(), Invalid> {
    if spec.image.trim().is_empty() {
        return Err(invalid("InvalidImage", format!("spec.image {:?}: {}", spec.image, msg::IMAGE)));
    }
    Ok(())
}

fn election_min_below_max(spec: &ConfmanClusterSpec, _: &Applied) -> Result<(), Invalid> {
    let t = spec.tuning.unwrap_or_default();
    match (t.election_min_ms, t.election_max_ms) {
        (Some(min), Some(max)) if min >= max => Err(invalid(
            "InvalidTuning",
            format!("spec.tuning.electionMinMs is {min} and spec.tuning.electionMaxMs {max}: {}", msg::ELECTION_ORDER),
        )),
        _ => Ok(()),
    }
}

/// A `spec.tuning` override, when set, within `lo..=hi`.
fn tuning_range(
    spec: &ConfmanClusterSpec,
    field: &str,
    get: fn(&TuningOverrides) -> Option<u64>,
    (lo, hi): (u64, u64),
    message: &str,
) -> Result<(), Invalid> {
    match spec.tuning.as_ref().and_then(get) {
        Some(v) if !(lo..=hi).contains(&v) => {
            Err(invalid("InvalidTuning", format!("spec.tuning.{field} is {v}: {message}")))
        }
        _ => Ok(()),
    }
}

fn heartbeat_range(spec: &ConfmanClusterSpec, _: &Applied) -> Result<(), Invalid> {
    tuning_range(spec, "heartbeatMs", |t| t.heartbeat_ms, (10, 10_000), msg::HEARTBEAT)
}

fn election_min_range(spec: &ConfmanClusterSpec, _: &Applied) -> Result<(), Invalid> {
    tuning_range(spec, "electionMinMs", |t| t.election_min_ms, (50, 60_000), msg::ELECTION_MIN)
}

fn election_max_range(spec: &ConfmanClusterSpec, _: &Applied) -> Result<(), Invalid> {
    tuning_range(spec, "electionMaxMs", |t| t.election_max_ms, (100, 120_000), msg::ELECTION_MAX)
}

fn max_value_range(spec: &ConfmanClusterSpec, _: &Applied) -> Result<(), Invalid> {
    tuning_range(spec, "maxValueBytes", |t| t.max_value_bytes, (1024, 268_435_456), msg::MAX_VALUE)
}

fn service_type(spec: &ConfmanClusterSpec, _: &Applied) -> Result<(), Invalid> {
    match spec.service.as_ref().and_then(|s| s.type_.as_deref()) {
        Some(t) if !["ClusterIP", "NodePort", "LoadBalancer"].contains(&t) => {
            Err(invalid("InvalidService", format!("spec.service.type is {t:?}: {}", msg::SERVICE_TYPE)))
        }
        _ => Ok(()),
    }
}

fn service_port(spec: &ConfmanClusterSpec, _: &Applied) -> Result<(), Invalid> {
    match spec.service.as_ref().and_then(|s| s.port) {
        Some(p) if !(1..=65_535).contains(&p) => {
            Err(invalid("InvalidService", format!("spec.service.port is {p}: {}", msg::SERVICE_PORT)))
        }
        _ => Ok(()),
    }
}

/// `10Gi`, `500M`, `1e9`, `1024`: a Kubernetes quantity as used for volume sizes.
fn is_quantity(s: &str) -> bool {
    const SUFFIXES: [&str; 13] = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "k", "M", "G", "T", "P", "E", ""];
    let Some(number) = SUFFIXES.iter().find_map(|suf| s.strip_suffix(suf).filter(|n| !n.is_empty())) else {
        return false;
    };
    let (mantissa, exp) = number.split_once(['e', 'E']).unwrap_or((number, "0"));
    mantissa.parse::<f64>().is_ok_and(|m| m > 0.0 && m.is_finite())
        && !mantissa.starts_with(['+', '-'])
        && exp.parse::<i32>().is_ok()
}

/// Validates a spec against the CEL twins (with `applied` standing in for the old object) and
/// what CEL cannot express, and derives its tuning.
pub fn validate(spec: &ConfmanClusterSpec, applied: &Applied) -> Result<Tuning, Invalid> {
    for twin in &CEL_TWINS {
        (twin.check)(spec, applied)?;
    }
    if !is_quantity(&spec.storage.size) {
        return Err(invalid(
            "InvalidStorage",
            format!("spec.storage.size {:?} is not a Kubernetes quantity such as 10Gi", spec.storage.size),
        ));
    }
    if let Some(tls) = &spec.tls {
        if tls.client_secret.trim().is_empty() {
            return Err(invalid("InvalidTLS", "spec.tls.clientSecret must name a Secret".into()));
        }
        if tls.peer_secret.as_ref().is_some_and(|p| *p != tls.client_secret) {
            return Err(invalid(
                "Unsupported",
                "spec.tls.peerSecret differs from spec.tls.clientSecret, but a node serves the client API and Raft on one listener with one certificate; remove peerSecret".into(),
            ));
        }
    }
    if let Some(auth) = &spec.auth {
        if auth.api_keys_secret.as_ref().is_some_and(|s| s.trim().is_empty()) {
            return Err(invalid("InvalidAuth", "spec.auth.apiKeysSecret must name a Secret (or be left out)".into()));
        }
        confman_contract::service_accounts::check_rules(&auth.service_accounts)
            .map_err(|e| invalid("InvalidAuth", format!("spec.auth.{e}")))?;
    }
    effective_tuning(spec).map_err(|v| invalid("InvalidTuning", invalid_spec_message(&v)))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::*;
    use crate::crd::{PayloadClass, ServiceSpec, TlsSpec, TuningOverrides};
    use crate::fixtures::cluster;

    /// The CRD as installed (the generated, committed file; a drift test keeps it current).
    const INSTALLED_CRD: &str = include_str!("../../crds/confmancluster.yaml");

    fn installed_schema() -> Value {
        let crd: Value = serde_yaml_ng::from_str(INSTALLED_CRD).unwrap_or_default();
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
    }

    /// Every `(rule, message)` of `x-kubernetes-validations` anywhere in `schema`.
    fn cel_rules(schema: &Value, out: &mut BTreeSet<(String, String)>) {
        match schema {
            Value::Object(m) => {
                for r in m.get("x-kubernetes-validations").and_then(Value::as_array).into_iter().flatten() {
                    let text = |k: &str| r[k].as_str().unwrap_or_default().to_string();
                    out.insert((text("rule"), text("message")));
                }
                m.values().for_each(|v| cel_rules(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| cel_rules(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_cel_rule_of_the_crd_has_an_operator_twin() {
        let mut installed = BTreeSet::new();
        cel_rules(&installed_schema(), &mut installed);
        assert!(installed.len() >= 10, "the CRD's CEL rules were not found: {installed:?}");
        let twins: BTreeSet<(String, String)> =
            CEL_TWINS.iter().map(|t| (t.rule.to_string(), t.message.to_string())).collect();
        assert_eq!(twins.len(), CEL_TWINS.len(), "a rule is listed twice");
        let missing: Vec<_> = installed.difference(&twins).collect();
        let stale: Vec<_> = twins.difference(&installed).collect();
        assert!(missing.is_empty(), "CEL rules without an operator-side twin in CEL_TWINS: {missing:?}");
        assert!(stale.is_empty(), "twins of rules the CRD no longer has: {stale:?}");
    }

    /// A spec (and the previous one, for transition rules) that breaks exactly `rule`.
    fn breaking(rule: &str) -> (ConfmanClusterSpec, Option<ConfmanClusterSpec>) {
        let base = cluster(3, PayloadClass::Small).spec;
        let tuning = |t: TuningOverrides| ConfmanClusterSpec { tuning: Some(t), ..base.clone() };
        let service = |s: ServiceSpec| ConfmanClusterSpec { service: Some(s), ..base.clone() };
        match rule {
            "has(self.tls) == has(oldSelf.tls)" => (
                ConfmanClusterSpec {
                    tls: Some(TlsSpec { client_secret: "tls".into(), peer_secret: None }),
                    ..base.clone()
                },
                Some(base),
            ),
            "self >= 1 && self <= 9 && self % 2 == 1" => (ConfmanClusterSpec { replicas: 4, ..base }, None),
            "self != ''" => (ConfmanClusterSpec { image: String::new(), ..base }, None),
            "!has(self.electionMinMs) || !has(self.electionMaxMs) || self.electionMinMs < self.electionMaxMs" => (
                tuning(TuningOverrides {
                    election_min_ms: Some(900),
                    election_max_ms: Some(800),
                    ..TuningOverrides::default()
                }),
                None,
            ),
            "self >= 10 && self <= 10000" => {
                (tuning(TuningOverrides { heartbeat_ms: Some(5), ..TuningOverrides::default() }), None)
            }
            "self >= 50 && self <= 60000" => {
                (tuning(TuningOverrides { election_min_ms: Some(10), ..TuningOverrides::default() }), None)
            }
            "self >= 100 && self <= 120000" => {
                (tuning(TuningOverrides { election_max_ms: Some(200_000), ..TuningOverrides::default() }), None)
            }
            "self >= 1024 && self <= 268435456" => {
                (tuning(TuningOverrides { max_value_bytes: Some(100), ..TuningOverrides::default() }), None)
            }
            "self in ['ClusterIP', 'NodePort', 'LoadBalancer']" => {
                (service(ServiceSpec { type_: Some("ExternalName".into()), port: None }), None)
            }
            "self >= 1 && self <= 65535" => (service(ServiceSpec { type_: None, port: Some(70_000) }), None),
            STORAGE_RULE => {
                let mut grown = base.clone();
                grown.storage.size = "20Gi".into();
                (grown, Some(base))
            }
            other => panic!("no breaking example for CEL rule {other:?}: add one"),
        }
    }

    fn object(spec: &ConfmanClusterSpec) -> Value {
        let mut c = cluster(3, PayloadClass::Small);
        c.spec = spec.clone();
        serde_json::to_value(&c).unwrap_or_default()
    }

    /// What the operator reads back for a previous spec (see [`Applied`]).
    fn applied_from(old: Option<&ConfmanClusterSpec>) -> Applied {
        Applied {
            tls: old.map(|o| o.tls.is_some()),
            storage: old.map(|o| AppliedStorage {
                size: o.storage.size.clone(),
                storage_class_name: o.storage.storage_class_name.clone(),
            }),
        }
    }

    /// Issue 19, defect 2: a changed `spec.storage.size` or `storageClassName` made every
    /// StatefulSet apply fail (422). The twin names the field; another spelling of the same
    /// size is no change.
    #[test]
    fn immutable_storage_fields_are_named_and_equal_quantities_are_no_change() {
        let spec = cluster(3, PayloadClass::Small).spec;
        let was = |size: &str, class: Option<&str>| Applied {
            tls: None,
            storage: Some(AppliedStorage { size: size.into(), storage_class_name: class.map(str::to_string) }),
        };
        assert_eq!(storage_unchanged(&spec, &was("10Gi", None)), Ok(()));
        assert_eq!(storage_unchanged(&spec, &was("10240Mi", None)), Ok(()), "the API server's canonical spelling");
        let grown = storage_unchanged(&spec, &was("5Gi", None)).err().map(|e| (e.reason, e.message));
        assert!(
            grown.as_ref().is_some_and(|(r, m)| *r == "StorageImmutable"
                && m.contains("spec.storage.size is 10Gi but the members' volumes were created with 5Gi")),
            "{grown:?}"
        );
        let moved = storage_unchanged(&spec, &was("10Gi", Some("fast"))).err().map(|e| e.message).unwrap_or_default();
        assert!(moved.contains("spec.storage.storageClassName is the cluster default"), "{moved}");
    }

    #[test]
    fn each_twin_refuses_exactly_what_its_cel_rule_refuses() {
        let schema = installed_schema();
        let cel = kube::core::cel::Validator::new();
        let base = cluster(3, PayloadClass::Small).spec;
        assert!(cel.validate(&schema, &object(&base), Some(&object(&base))).is_ok());
        for twin in &CEL_TWINS {
            assert_eq!((twin.check)(&base, &applied_from(Some(&base))), Ok(()), "{}", twin.rule);
            let (spec, old) = breaking(twin.rule);
            // The example breaks this very rule, as the API server (1.25+) would judge it.
            let errors = cel
                .validate(&schema, &object(&spec), old.as_ref().map(object).as_ref())
                .err()
                .map(|e| e.into_vec())
                .unwrap_or_default();
            assert!(
                errors.iter().any(|e| e.rule == twin.rule),
                "{}: the CEL validator does not refuse the example: {errors:?}",
                twin.rule
            );
            // The operator refuses it too, naming the rule's message, on its own and in validate().
            let applied = applied_from(old.as_ref());
            let err = (twin.check)(&spec, &applied).err().unwrap_or_else(|| panic!("{}: twin accepts", twin.rule));
            assert!(err.message.contains(twin.message), "{}: {}", twin.rule, err.message);
            assert!(validate(&spec, &applied).is_err(), "{}: validate accepts", twin.rule);
        }
    }

    #[test]
    fn tls_can_be_set_at_creation_but_not_added_or_removed_later() {
        let plain = cluster(3, PayloadClass::Small).spec;
        let tls = ConfmanClusterSpec {
            tls: Some(TlsSpec { client_secret: "tls".into(), peer_secret: None }),
            ..plain.clone()
        };
        assert!(validate(&tls, &Applied { tls: None, storage: None }).is_ok(), "a new cluster may use TLS");
        assert!(validate(&tls, &Applied { tls: Some(true), storage: None }).is_ok());
        let added = validate(&tls, &Applied { tls: Some(false), storage: None }).err().map(|e| (e.reason, e.message));
        assert!(
            added.as_ref().is_some_and(|(r, m)| *r == "InvalidTLS" && m.contains("unset at creation")),
            "{added:?}"
        );
        let removed =
            validate(&plain, &Applied { tls: Some(true), storage: None }).err().map(|e| e.message).unwrap_or_default();
        assert!(removed.contains("was set at creation"), "{removed}");
    }

    #[test]
    fn quantities() {
        for ok in ["10Gi", "500M", "1e9", "1024", "1.5Gi"] {
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in ["", "Gi", "ten", "-1Gi", "10GB", "0"] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }

    #[test]
    fn each_refusal_names_the_field() {
        let base = cluster(3, PayloadClass::Small).spec;
        assert!(validate(&base, &Applied::default()).is_ok());
        let cases: Vec<(ConfmanClusterSpec, &str, &str)> = vec![
            (ConfmanClusterSpec { replicas: 4, ..base.clone() }, "InvalidReplicas", "spec.replicas is 4"),
            (ConfmanClusterSpec { replicas: 11, ..base.clone() }, "InvalidReplicas", "spec.replicas is 11"),
            (
                ConfmanClusterSpec {
                    storage: crate::crd::StorageSpec { size: "lots".into(), ..base.storage.clone() },
                    ..base.clone()
                },
                "InvalidStorage",
                "spec.storage.size \"lots\"",
            ),
            (ConfmanClusterSpec { image: " ".into(), ..base.clone() }, "InvalidImage", "spec.image"),
            (
                ConfmanClusterSpec {
                    tls: Some(TlsSpec { client_secret: "s".into(), peer_secret: Some("p".into()) }),
                    ..base.clone()
                },
                "Unsupported",
                "spec.tls.peerSecret",
            ),
            (
                ConfmanClusterSpec {
                    tls: Some(TlsSpec { client_secret: " ".into(), peer_secret: None }),
                    ..base.clone()
                },
                "InvalidTLS",
                "spec.tls.clientSecret",
            ),
            (
                ConfmanClusterSpec {
                    tuning: Some(TuningOverrides { heartbeat_ms: Some(5000), ..TuningOverrides::default() }),
                    ..base.clone()
                },
                "InvalidTuning",
                "spec.tuning.heartbeatMs violates heartbeat-below-election-min",
            ),
        ];
        for (spec, reason, needle) in cases {
            let err = validate(&spec, &Applied::default()).err().unwrap_or_else(|| panic!("{needle}: accepted"));
            assert_eq!(err.reason, reason, "{needle}");
            assert!(err.message.contains(needle), "{} lacks {needle}", err.message);
        }
    }

    #[test]
    fn every_tuning_rule_is_named_in_invalid_spec() {
        // Overrides of the small class that each break exactly one rule of confman-contract.
        let cases: Vec<(TuningOverrides, &str)> = vec![
            (TuningOverrides { heartbeat_ms: Some(600), ..TuningOverrides::default() }, "heartbeat-below-election-min"),
            (TuningOverrides { election_min_ms: Some(1600), ..TuningOverrides::default() }, "election-min-below-max"),
            (
                TuningOverrides {
                    request_timeout_ms: Some(1000),
                    append_timeout_ms: Some(500),
                    ..TuningOverrides::default()
                },
                "request-timeout-above-election-max",
            ),
            (
                TuningOverrides { append_timeout_ms: Some(9000), ..TuningOverrides::default() },
                "append-timeout-within-request-timeout",
            ),
            (
                TuningOverrides { snapshot_timeout_ms: Some(1000), ..TuningOverrides::default() },
                "snapshot-timeout-above-election-max",
            ),
            (
                TuningOverrides { body_limit_bytes: Some(100_000), ..TuningOverrides::default() },
                "body-limit-covers-max-value",
            ),
            (
                TuningOverrides { compaction_bytes: Some(1_000_000), ..TuningOverrides::default() },
                "compaction-covers-append-batch",
            ),
            (
                TuningOverrides { logs_to_keep: Some(30_000), ..TuningOverrides::default() },
                "kept-tail-below-compaction",
            ),
            (TuningOverrides { max_append_entries: Some(0), ..TuningOverrides::default() }, "positive"),
        ];
        for (tuning, rule) in cases {
            let spec = ConfmanClusterSpec { tuning: Some(tuning), ..cluster(3, PayloadClass::Small).spec };
            let err = validate(&spec, &Applied::default()).err().unwrap_or_else(|| panic!("{rule}: accepted"));
            assert_eq!(err.reason, "InvalidTuning", "{rule}");
            assert!(err.message.contains(&format!("violates {rule}:")), "{rule}: {}", err.message);
            assert!(err.message.starts_with("spec.tuning."), "{rule}: {}", err.message);
            assert_eq!(err.message.matches(" violates ").count(), 1, "only {rule}: {}", err.message);
        }
    }

    #[test]
    fn an_incomplete_service_account_rule_or_blank_keys_secret_is_invalid_auth() {
        use confman_contract::{Role, ServiceAccountRule};
        let rule = ServiceAccountRule {
            namespace: "apps".into(),
            name: "web".into(),
            roles: vec![Role::Editor],
            namespaces: vec!["web-*".into()],
        };
        let with = |auth: crate::crd::AuthSpec| ConfmanClusterSpec {
            auth: Some(auth),
            ..cluster(3, PayloadClass::Small).spec
        };
        let good = crate::crd::AuthSpec { service_accounts: vec![rule.clone()], ..Default::default() };
        assert!(validate(&with(good), &Applied::default()).is_ok());
        let no_roles = ServiceAccountRule { roles: vec![], ..rule };
        let bad = crate::crd::AuthSpec { service_accounts: vec![no_roles], ..Default::default() };
        let err = validate(&with(bad), &Applied::default()).err().map(|e| (e.reason, e.message));
        assert_eq!(err, Some(("InvalidAuth", "spec.auth.serviceAccounts[0]: at least one role is required".into())));
        let blank = crate::crd::AuthSpec { api_keys_secret: Some(" ".into()), ..Default::default() };
        assert!(validate(&with(blank), &Applied::default()).is_err_and(|e| e.reason == "InvalidAuth"));
    }
}
