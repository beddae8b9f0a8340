//! Spec → effective tuning (pure): the payload-class table of `confman-contract` with the spec's
//! overrides, validated by the same rules the node applies at startup, so the operator never
//! rolls out a configuration a node would refuse. A violation becomes an `InvalidSpec`
//! condition message naming the rule and the values.

use confman_contract::{Tuning, Violation, derive};

use crate::crd::ConfmanClusterSpec;

/// The effective tuning of a spec, or the violated rules.
pub fn effective_tuning(spec: &ConfmanClusterSpec) -> Result<Tuning, Vec<Violation>> {
    derive(Some(spec.payload_class), &spec.tuning.unwrap_or_default())
}

/// The `InvalidSpec` condition message for violations: one line per rule, naming the setting as
/// it appears in `spec.tuning`.
pub fn invalid_spec_message(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(|v| format!("spec.tuning.{} violates {}: {}", camel(v.setting), v.rule, v.message))
        .collect::<Vec<_>>()
        .join("; ")
}

/// `heartbeat-ms` → `heartbeatMs`.
fn camel(setting: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for c in setting.chars() {
        if c == '-' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::crd::{PayloadClass, TuningOverrides};

    use super::*;

    fn spec(class: PayloadClass, tuning: Option<TuningOverrides>) -> ConfmanClusterSpec {
        ConfmanClusterSpec { payload_class: class, tuning, ..ConfmanClusterSpec::minimal(3, "confman:test", "1Gi") }
    }

    #[test]
    fn each_class_derives_its_table_row() {
        for c in PayloadClass::ALL {
            assert_eq!(effective_tuning(&spec(c, None)), Ok(c.tuning()));
        }
    }

    #[test]
    fn overrides_merge_and_violations_name_the_field() {
        let t = TuningOverrides { heartbeat_ms: Some(120), ..Default::default() };
        assert_eq!(effective_tuning(&spec(PayloadClass::Small, Some(t))).map(|t| t.heartbeat_ms), Ok(120));
        let bad = TuningOverrides { max_value_bytes: Some(64 << 20), ..Default::default() };
        let v = effective_tuning(&spec(PayloadClass::Small, Some(bad))).err().unwrap_or_default();
        let msg = invalid_spec_message(&v);
        assert!(msg.contains("spec.tuning.bodyLimitBytes violates body-limit-covers-max-value"), "{msg}");
        assert!(msg.contains("67108864"), "{msg}");
    }
}
