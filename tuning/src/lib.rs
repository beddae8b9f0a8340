//! Raft timing and size settings and the invariants between them (SPEC §2.3, §3.3, seed
//! lesson 8). Pure and dependency-free: the node refuses to start on a violation, and the
//! operator, which derives these values from a payload class plus overrides, runs the same
//! checks so it never rolls out a configuration the node would refuse.

use serde::{Deserialize, Serialize};

/// The timing and size settings of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Tuning {
    /// Leader heartbeat period (ms).
    pub heartbeat_ms: u64,
    /// Election timeout lower bound (ms).
    pub election_min_ms: u64,
    /// Election timeout upper bound (ms).
    pub election_max_ms: u64,
    /// Deadline of a client request inside the node (ms): commit wait, read wait, forwarding.
    pub request_timeout_ms: u64,
    /// Deadline of one AppendEntries carrying entries (ms).
    pub append_timeout_ms: u64,
    /// Base allowance of a snapshot transfer before its size-based allowance (ms).
    pub snapshot_timeout_ms: u64,
    /// Largest value a client may write (bytes).
    pub max_value_bytes: u64,
    /// Largest client request body (bytes).
    pub body_limit_bytes: u64,
    /// Byte cap of one AppendEntries payload (one entry is always sent even if larger).
    pub max_append_bytes: u64,
    /// Entry cap of one AppendEntries payload.
    pub max_append_entries: u64,
    /// Build a snapshot once this many log bytes were appended since the last one.
    pub compaction_bytes: u64,
    /// Build a snapshot once this many entries were appended since the last one.
    pub compaction_entries: u64,
    /// Entries kept after a snapshot so briefly lagging followers catch up from the log.
    pub logs_to_keep: u64,
}

impl Default for Tuning {
    /// The node's built-in defaults (a LAN cluster with values up to 16 MiB).
    fn default() -> Self {
        Self {
            heartbeat_ms: 100,
            election_min_ms: 1_000,
            election_max_ms: 2_000,
            request_timeout_ms: 10_000,
            append_timeout_ms: 5_000,
            snapshot_timeout_ms: 30_000,
            max_value_bytes: 16 << 20,
            body_limit_bytes: 24 << 20,
            max_append_bytes: 4 << 20,
            max_append_entries: 256,
            compaction_bytes: 64 << 20,
            compaction_entries: 10_000,
            logs_to_keep: 200,
        }
    }
}

/// The declared size of the values a cluster stores; it selects the tuning (SPEC §3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadClass {
    /// 1–10 KB values: fast elections, small batches.
    Small,
    /// 10–100 KB values.
    Medium,
    /// 100 KB – 1 MB values.
    Large,
    /// Values over 1 MB.
    Huge,
}

impl PayloadClass {
    /// Every class, smallest first.
    pub const ALL: [PayloadClass; 4] =
        [PayloadClass::Small, PayloadClass::Medium, PayloadClass::Large, PayloadClass::Huge];

    /// The lowercase name used in specs and flags.
    pub fn as_str(self) -> &'static str {
        match self {
            PayloadClass::Small => "small",
            PayloadClass::Medium => "medium",
            PayloadClass::Large => "large",
            PayloadClass::Huge => "huge",
        }
    }

    /// Parses a class name.
    pub fn parse(s: &str) -> Option<PayloadClass> {
        PayloadClass::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The derived settings of the class. Larger values get longer timeouts (a batch must move
    /// and be fsynced well inside them), byte-bounded batches of fewer entries, larger
    /// compaction triggers in bytes, and a shorter log tail in entries.
    pub fn tuning(self) -> Tuning {
        const KIB: u64 = 1 << 10;
        const MIB: u64 = 1 << 20;
        match self {
            PayloadClass::Small => Tuning {
                heartbeat_ms: 100,
                election_min_ms: 800,
                election_max_ms: 1_600,
                request_timeout_ms: 8_000,
                append_timeout_ms: 2_000,
                snapshot_timeout_ms: 30_000,
                max_value_bytes: 256 * KIB,
                body_limit_bytes: 512 * KIB,
                max_append_bytes: MIB,
                max_append_entries: 512,
                compaction_bytes: 64 * MIB,
                compaction_entries: 20_000,
                logs_to_keep: 1_000,
            },
            PayloadClass::Medium => Tuning {
                heartbeat_ms: 100,
                election_min_ms: 1_000,
                election_max_ms: 2_000,
                request_timeout_ms: 10_000,
                append_timeout_ms: 3_000,
                snapshot_timeout_ms: 60_000,
                max_value_bytes: MIB,
                body_limit_bytes: 2 * MIB,
                max_append_bytes: 4 * MIB,
                max_append_entries: 256,
                compaction_bytes: 128 * MIB,
                compaction_entries: 10_000,
                logs_to_keep: 500,
            },
            PayloadClass::Large => Tuning {
                heartbeat_ms: 150,
                election_min_ms: 1_500,
                election_max_ms: 3_000,
                request_timeout_ms: 15_000,
                append_timeout_ms: 5_000,
                snapshot_timeout_ms: 120_000,
                max_value_bytes: 4 * MIB,
                body_limit_bytes: 6 * MIB,
                max_append_bytes: 8 * MIB,
                max_append_entries: 64,
                compaction_bytes: 256 * MIB,
                compaction_entries: 2_000,
                logs_to_keep: 64,
            },
            PayloadClass::Huge => Tuning {
                heartbeat_ms: 250,
                election_min_ms: 2_500,
                election_max_ms: 5_000,
                request_timeout_ms: 30_000,
                append_timeout_ms: 10_000,
                snapshot_timeout_ms: 300_000,
                max_value_bytes: 32 * MIB,
                body_limit_bytes: 40 * MIB,
                max_append_bytes: 32 * MIB,
                max_append_entries: 16,
                compaction_bytes: 512 * MIB,
                compaction_entries: 1_000,
                logs_to_keep: 16,
            },
        }
    }
}

/// Optional overrides of any derived value (the operator's `spec.tuning`, or node flags).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TuningOverrides {
    /// Overrides `heartbeat_ms`.
    pub heartbeat_ms: Option<u64>,
    /// Overrides `election_min_ms`.
    pub election_min_ms: Option<u64>,
    /// Overrides `election_max_ms`.
    pub election_max_ms: Option<u64>,
    /// Overrides `request_timeout_ms`.
    pub request_timeout_ms: Option<u64>,
    /// Overrides `append_timeout_ms`.
    pub append_timeout_ms: Option<u64>,
    /// Overrides `snapshot_timeout_ms`.
    pub snapshot_timeout_ms: Option<u64>,
    /// Overrides `max_value_bytes`.
    pub max_value_bytes: Option<u64>,
    /// Overrides `body_limit_bytes`.
    pub body_limit_bytes: Option<u64>,
    /// Overrides `max_append_bytes`.
    pub max_append_bytes: Option<u64>,
    /// Overrides `max_append_entries`.
    pub max_append_entries: Option<u64>,
    /// Overrides `compaction_bytes`.
    pub compaction_bytes: Option<u64>,
    /// Overrides `compaction_entries`.
    pub compaction_entries: Option<u64>,
    /// Overrides `logs_to_keep`.
    pub logs_to_keep: Option<u64>,
}

impl TuningOverrides {
    /// `base` with every set override applied (not validated).
    pub fn apply(&self, base: Tuning) -> Tuning {
        Tuning {
            heartbeat_ms: self.heartbeat_ms.unwrap_or(base.heartbeat_ms),
            election_min_ms: self.election_min_ms.unwrap_or(base.election_min_ms),
            election_max_ms: self.election_max_ms.unwrap_or(base.election_max_ms),
            request_timeout_ms: self.request_timeout_ms.unwrap_or(base.request_timeout_ms),
            append_timeout_ms: self.append_timeout_ms.unwrap_or(base.append_timeout_ms),
            snapshot_timeout_ms: self.snapshot_timeout_ms.unwrap_or(base.snapshot_timeout_ms),
            max_value_bytes: self.max_value_bytes.unwrap_or(base.max_value_bytes),
            body_limit_bytes: self.body_limit_bytes.unwrap_or(base.body_limit_bytes),
            max_append_bytes: self.max_append_bytes.unwrap_or(base.max_append_bytes),
            max_append_entries: self.max_append_entries.unwrap_or(base.max_append_entries),
            compaction_bytes: self.compaction_bytes.unwrap_or(base.compaction_bytes),
            compaction_entries: self.compaction_entries.unwrap_or(base.compaction_entries),
            logs_to_keep: self.logs_to_keep.unwrap_or(base.logs_to_keep),
        }
    }
}

/// Derives the effective tuning of a class with overrides, or every violated rule.
pub fn derive(class: PayloadClass, overrides: &TuningOverrides) -> Result<Tuning, Vec<Violation>> {
    let t = overrides.apply(class.tuning());
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
    fn class_values_are_the_documented_ones() {
        let s = PayloadClass::Small.tuning();
        assert_eq!((s.heartbeat_ms, s.election_min_ms, s.election_max_ms), (100, 800, 1_600));
        assert_eq!((s.max_value_bytes, s.body_limit_bytes), (256 << 10, 512 << 10));
        let h = PayloadClass::Huge.tuning();
        assert_eq!((h.heartbeat_ms, h.election_min_ms, h.election_max_ms), (250, 2_500, 5_000));
        assert_eq!((h.max_value_bytes, h.max_append_bytes, h.max_append_entries), (32 << 20, 32 << 20, 16));
    }

    #[test]
    fn overrides_merge_and_are_validated() {
        let o = TuningOverrides { heartbeat_ms: Some(200), ..Default::default() };
        let t = derive(PayloadClass::Medium, &o).map_err(|v| format!("{v:?}"));
        assert_eq!(t.map(|t| (t.heartbeat_ms, t.election_min_ms)), Ok((200, 1_000)));
        let bad = TuningOverrides { heartbeat_ms: Some(900), ..Default::default() };
        let err = derive(PayloadClass::Medium, &bad).err().unwrap_or_default();
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
