//! The rules between tuning settings. The node refuses to start on a violation; the operator
//! runs the same checks through [`derive`], so it never rolls out a configuration a node would
//! refuse.

use serde::Serialize;

use crate::class::PayloadClass;
use crate::tuning::{Tuning, TuningOverrides};

/// The effective tuning: the payload class's settings (the node's built-in defaults without a
/// class) with the overrides applied, or every rule they violate.
pub fn derive(class: Option<PayloadClass>, overrides: &TuningOverrides) -> Result<Tuning, Vec<Violation>> {
    let t = overrides.apply(class.map_or_else(Tuning::default, PayloadClass::tuning));
    let v = t.violations();
    if v.is_empty() { Ok(t) } else { Err(v) }
}

/// One violated rule: which setting, which rule, with the values involved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// The setting to change (as named in flags and config files).
    pub setting: &'static str,
    /// A stable rule identifier.
    pub rule: &'static str,
    /// Human-readable explanation with the values.
    pub message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} [{}]: {}", self.setting, self.rule, self.message)
    }
}

impl Tuning {
    /// Checks every invariant; an empty list means the settings are consistent.
    pub fn violations(&self) -> Vec<Violation> {
        let mut v = Vec::new();
        let mut check = |ok: bool, setting, rule, message: String| {
            if !ok {
                v.push(Violation { setting, rule, message });
            }
        };
        let t = self;
        for (value, setting) in [
            (t.heartbeat_ms, "heartbeat-ms"),
            (t.max_value_bytes, "max-value-bytes"),
            (t.max_append_bytes, "max-append-bytes"),
            (t.max_append_entries, "max-append-entries"),
            (t.compaction_bytes, "compaction-bytes"),
            (t.compaction_entries, "compaction-entries"),
        ] {
            check(value > 0, setting, "positive", format!("must be greater than 0, got {value}"));
        }
        check(
            t.heartbeat_ms * 2 <= t.election_min_ms,
            "heartbeat-ms",
            "heartbeat-below-election-min",
            format!(
                "heartbeat ({} ms) must be at most half of the minimum election timeout ({} ms), so a missed heartbeat does not start an election",
                t.heartbeat_ms, t.election_min_ms
            ),
        );
        check(
            t.election_min_ms < t.election_max_ms,
            "election-min-ms",
            "election-min-below-max",
            format!(
                "minimum election timeout ({} ms) must be below the maximum ({} ms)",
                t.election_min_ms, t.election_max_ms
            ),
        );
        check(
            t.request_timeout_ms > t.election_max_ms,
            "request-timeout-ms",
            "request-timeout-above-election-max",
            format!(
                "request timeout ({} ms) must exceed the maximum election timeout ({} ms), so a request survives one leader change",
                t.request_timeout_ms, t.election_max_ms
            ),
        );
        check(
            t.append_timeout_ms > t.heartbeat_ms && t.append_timeout_ms <= t.request_timeout_ms,
            "append-timeout-ms",
            "append-timeout-within-request-timeout",
            format!(
                "append timeout ({} ms) must exceed the heartbeat ({} ms) and not exceed the request timeout ({} ms)",
                t.append_timeout_ms, t.heartbeat_ms, t.request_timeout_ms
            ),
        );
        check(
            t.snapshot_timeout_ms >= t.election_max_ms,
            "snapshot-timeout-ms",
            "snapshot-timeout-above-election-max",
            format!(
                "snapshot timeout ({} ms) must be at least the maximum election timeout ({} ms)",
                t.snapshot_timeout_ms, t.election_max_ms
            ),
        );
        check(
            t.body_limit_bytes >= t.max_value_bytes,
            "body-limit-bytes",
            "body-limit-covers-max-value",
            format!(
                "request body limit ({} bytes) must be at least the max value size ({} bytes)",
                t.body_limit_bytes, t.max_value_bytes
            ),
        );
        check(
            t.compaction_bytes >= t.max_append_bytes,
            "compaction-bytes",
            "compaction-covers-append-batch",
            format!(
                "compaction trigger ({} bytes) must be at least one AppendEntries batch ({} bytes)",
                t.compaction_bytes, t.max_append_bytes
            ),
        );
        check(
            t.logs_to_keep < t.compaction_entries,
            "logs-to-keep",
            "kept-tail-below-compaction",
            format!(
                "entries kept after a snapshot ({}) must be fewer than the compaction trigger ({})",
                t.logs_to_keep, t.compaction_entries
            ),
        );
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(t: Tuning) -> Vec<&'static str> {
        t.violations().into_iter().map(|v| v.rule).collect()
    }

    #[test]
    fn defaults_are_consistent() {
        assert_eq!(Tuning::default().violations(), vec![]);
    }

    #[test]
    fn each_rule_fires_alone() {
        let d = Tuning::default();
        let cases: Vec<(Tuning, &str)> = vec![
            (Tuning { heartbeat_ms: 600, ..d }, "heartbeat-below-election-min"),
            (Tuning { election_min_ms: 2_000, ..d }, "election-min-below-max"),
            (Tuning { request_timeout_ms: 2_000, append_timeout_ms: 2_000, ..d }, "request-timeout-above-election-max"),
            (Tuning { append_timeout_ms: 20_000, ..d }, "append-timeout-within-request-timeout"),
            (Tuning { append_timeout_ms: 50, ..d }, "append-timeout-within-request-timeout"),
            (Tuning { snapshot_timeout_ms: 1_500, ..d }, "snapshot-timeout-above-election-max"),
            (Tuning { body_limit_bytes: 1 << 20, ..d }, "body-limit-covers-max-value"),
            (Tuning { compaction_bytes: 1 << 20, ..d }, "compaction-covers-append-batch"),
            (Tuning { logs_to_keep: 10_000, ..d }, "kept-tail-below-compaction"),
            (Tuning { max_append_entries: 0, ..d }, "positive"),
        ];
        for (t, rule) in cases {
            assert_eq!(rules(t), vec![rule], "{t:?}");
        }
    }

    #[test]
    fn every_class_is_consistent_and_grows_with_value_size() {
        let mut prev: Option<Tuning> = None;
        for c in PayloadClass::ALL {
            let t = c.tuning();
            assert_eq!(t.violations(), vec![], "{c:?}");
            assert_eq!(PayloadClass::parse(c.as_str()), Some(c));
            if let Some(p) = prev {
                assert!(t.max_value_bytes > p.max_value_bytes, "{c:?} max value");
                assert!(t.election_min_ms >= p.election_min_ms, "{c:?} election");
                assert!(t.compaction_bytes > p.compaction_bytes, "{c:?} compaction bytes");
                assert!(t.max_append_entries < p.max_append_entries, "{c:?} fewer entries per batch");
            }
            prev = Some(t);
        }
        assert_eq!(PayloadClass::parse("gigantic"), None);
    }

    #[test]
    fn overrides_merge_and_are_validated() {
        let o = TuningOverrides { heartbeat_ms: Some(200), ..Default::default() };
        let t = derive(Some(PayloadClass::Medium), &o).map_err(|v| format!("{v:?}"));
        assert_eq!(t.map(|t| (t.heartbeat_ms, t.election_min_ms)), Ok((200, 1_000)));
        let bad = TuningOverrides { heartbeat_ms: Some(900), ..Default::default() };
        let err = derive(Some(PayloadClass::Medium), &bad).err().unwrap_or_default();
        assert_eq!(err.iter().map(|v| v.rule).collect::<Vec<_>>(), vec!["heartbeat-below-election-min"]);
        assert!(err[0].message.contains("900"));
    }

    #[test]
    fn violation_names_setting_and_values() {
        let t = Tuning { heartbeat_ms: 900, ..Tuning::default() };
        let v = &t.violations()[0];
        assert_eq!(v.setting, "heartbeat-ms");
        assert!(v.message.contains("900") && v.message.contains("1000"), "{}", v.message);
    }
}
