//! Raft timing and size settings and the invariants between them (SPEC §2.3, §3.3, seed
//! lesson 8). Pure: the node refuses to start on a violation, and the operator (which derives
//! these values from a payload class) runs the same checks so it never rolls out a
//! configuration the node would refuse.

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
    fn violation_names_setting_and_values() {
        let t = Tuning { heartbeat_ms: 900, ..Tuning::default() };
        let v = &t.violations()[0];
        assert_eq!(v.setting, "heartbeat-ms");
        assert!(v.message.contains("900") && v.message.contains("1000"), "{}", v.message);
    }
}
