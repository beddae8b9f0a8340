//! Spec validation (pure), before anything is built: what the CRD schema and CEL rules cannot
//! check, or should not be trusted to have checked (a CRD installed from an older release).
//! Returns the effective tuning or the `InvalidSpec` reason and message.

use confman_tuning::Tuning;

use crate::crd::ConfmanClusterSpec;
use crate::tuning::{effective_tuning, invalid_spec_message};

/// A refused spec: condition reason and a message naming the field, rule and values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// `InvalidTuning`, `InvalidReplicas`, `InvalidStorage` or `Unsupported`.
    pub reason: &'static str,
    /// What is wrong.
    pub message: String,
}

fn invalid(reason: &'static str, message: String) -> Invalid {
    Invalid { reason, message }
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

/// Validates a spec and derives its tuning.
pub fn validate(spec: &ConfmanClusterSpec) -> Result<Tuning, Invalid> {
    if !(1..=9).contains(&spec.replicas) || spec.replicas % 2 == 0 {
        return Err(invalid(
            "InvalidReplicas",
            format!("spec.replicas is {}; it must be odd and between 1 and 9 (a Raft quorum)", spec.replicas),
        ));
    }
    if !is_quantity(&spec.storage.size) {
        return Err(invalid(
            "InvalidStorage",
            format!("spec.storage.size {:?} is not a Kubernetes quantity such as 10Gi", spec.storage.size),
        ));
    }
    if spec.image.trim().is_empty() {
        return Err(invalid("InvalidImage", "spec.image must not be empty".into()));
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
    effective_tuning(spec).map_err(|v| invalid("InvalidTuning", invalid_spec_message(&v)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::fixtures::cluster;
    use crate::crd::{PayloadClassSpec, TlsSpec, TuningSpec};

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
        let base = cluster(3, PayloadClassSpec::Small).spec;
        assert!(validate(&base).is_ok());
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
                    tuning: Some(TuningSpec { heartbeat_ms: Some(5000), ..TuningSpec::default() }),
                    ..base.clone()
                },
                "InvalidTuning",
                "spec.tuning.heartbeatMs violates heartbeat-below-election-min",
            ),
        ];
        for (spec, reason, needle) in cases {
            let err = validate(&spec).err().unwrap_or_else(|| panic!("{needle}: accepted"));
            assert_eq!(err.reason, reason, "{needle}");
            assert!(err.message.contains(needle), "{} lacks {needle}", err.message);
        }
    }

    #[test]
    fn every_tuning_rule_is_named_in_invalid_spec() {
        // Overrides of the small class that each break exactly one rule of confman-tuning.
        let cases: Vec<(TuningSpec, &str)> = vec![
            (TuningSpec { heartbeat_ms: Some(600), ..TuningSpec::default() }, "heartbeat-below-election-min"),
            (TuningSpec { election_min_ms: Some(1600), ..TuningSpec::default() }, "election-min-below-max"),
            (
                TuningSpec { request_timeout_ms: Some(1000), append_timeout_ms: Some(500), ..TuningSpec::default() },
                "request-timeout-above-election-max",
            ),
            (
                TuningSpec { append_timeout_ms: Some(9000), ..TuningSpec::default() },
                "append-timeout-within-request-timeout",
            ),
            (
                TuningSpec { snapshot_timeout_ms: Some(1000), ..TuningSpec::default() },
                "snapshot-timeout-above-election-max",
            ),
            (TuningSpec { body_limit_bytes: Some(100_000), ..TuningSpec::default() }, "body-limit-covers-max-value"),
            (
                TuningSpec { compaction_bytes: Some(1_000_000), ..TuningSpec::default() },
                "compaction-covers-append-batch",
            ),
            (TuningSpec { logs_to_keep: Some(30_000), ..TuningSpec::default() }, "kept-tail-below-compaction"),
            (TuningSpec { max_append_entries: Some(0), ..TuningSpec::default() }, "positive"),
        ];
        for (tuning, rule) in cases {
            let spec = ConfmanClusterSpec { tuning: Some(tuning), ..cluster(3, PayloadClassSpec::Small).spec };
            let err = validate(&spec).err().unwrap_or_else(|| panic!("{rule}: accepted"));
            assert_eq!(err.reason, "InvalidTuning", "{rule}");
            assert!(err.message.contains(&format!("violates {rule}:")), "{rule}: {}", err.message);
            assert!(err.message.starts_with("spec.tuning."), "{rule}: {}", err.message);
            assert_eq!(err.message.matches(" violates ").count(), 1, "only {rule}: {}", err.message);
        }
    }
}
