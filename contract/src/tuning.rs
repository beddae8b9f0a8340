//! The tuning table: every timing and size setting of a node, once. `settings_table!` holds
//! the rows; the types built from them are [`Tuning`] (every setting set, as the node runs and
//! the status reports it), [`TuningOverrides`] (any of them set, as `spec.tuning`), the class
//! table ([`PayloadClass::tuning`]) and, in `node_config`, the node's file keys and flags.

use serde::{Deserialize, Serialize};

use crate::class::PayloadClass;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

/// Every tuning setting, one row each: its description (shown in the CRD, the status and
/// `confman-node --help`), the variable of its flag, the node's built-in default (used without
/// `--payload-class`) and its value in each payload class. Larger classes get longer timeouts,
/// byte-bounded batches of fewer entries, larger compaction triggers in bytes and a shorter log
/// tail in entries. The rows are handed to `$then!`, which builds one type from them, so adding
/// a setting is adding a row (and a rule in `invariants` if it relates to other settings).
macro_rules! settings_table {
    ($then:ident { $($extra:tt)* }) => {
        $then! {
            [$($extra)*]
            /// Leader heartbeat period, ms.
            heartbeat_ms, "CONFMAN_HEARTBEAT_MS": node 100, small 100, medium 100, large 150, huge 250;
            /// Election timeout lower bound, ms.
            election_min_ms, "CONFMAN_ELECTION_MIN_MS": node 1_000, small 800, medium 1_000, large 1_500, huge 2_500;
            /// Election timeout upper bound, ms.
            election_max_ms, "CONFMAN_ELECTION_MAX_MS": node 2_000, small 1_600, medium 2_000, large 3_000, huge 5_000;
            /// Deadline of a client request inside the node (commit wait, read wait,
            /// forwarding), ms.
            request_timeout_ms, "CONFMAN_REQUEST_TIMEOUT_MS":
                node 10_000, small 8_000, medium 10_000, large 15_000, huge 30_000;
            /// Deadline of one AppendEntries carrying entries, ms.
            append_timeout_ms, "CONFMAN_APPEND_TIMEOUT_MS":
                node 5_000, small 2_000, medium 3_000, large 5_000, huge 10_000;
            /// Snapshot transfer idle timeout, ms: a transfer fails when no byte moves for this
            /// long, and the receiver's install may take this long after the last byte (there is
            /// no total deadline, so a large snapshot on a slow link still completes).
            snapshot_timeout_ms, "CONFMAN_SNAPSHOT_TIMEOUT_MS":
                node 30_000, small 30_000, medium 60_000, large 120_000, huge 300_000;
            /// Largest value a client may write, bytes.
            max_value_bytes, "CONFMAN_MAX_VALUE_BYTES":
                node 16 * MIB, small 256 * KIB, medium MIB, large 4 * MIB, huge 32 * MIB;
            /// Largest client request body, bytes.
            body_limit_bytes, "CONFMAN_BODY_LIMIT_BYTES":
                node 24 * MIB, small 512 * KIB, medium 2 * MIB, large 6 * MIB, huge 40 * MIB;
            /// Byte cap of one AppendEntries payload (one entry is always sent, even a larger one).
            max_append_bytes, "CONFMAN_MAX_APPEND_BYTES":
                node 4 * MIB, small MIB, medium 4 * MIB, large 8 * MIB, huge 32 * MIB;
            /// Entry cap of one AppendEntries payload.
            max_append_entries, "CONFMAN_MAX_APPEND_ENTRIES": node 256, small 512, medium 256, large 64, huge 16;
            /// Build a snapshot once this many log bytes were appended since the last one.
            compaction_bytes, "CONFMAN_COMPACTION_BYTES":
                node 64 * MIB, small 64 * MIB, medium 128 * MIB, large 256 * MIB, huge 512 * MIB;
            /// Build a snapshot once this many log entries were appended since the last one.
            compaction_entries, "CONFMAN_COMPACTION_ENTRIES":
                node 10_000, small 20_000, medium 10_000, large 2_000, huge 1_000;
            /// Log entries kept after a snapshot, so briefly lagging followers catch up from the
            /// log; the kept tail is also held under a quarter of the compaction byte trigger
            /// (beyond that a snapshot is cheaper).
            logs_to_keep, "CONFMAN_LOGS_TO_KEEP": node 200, small 1_000, medium 500, large 64, huge 16;
        }
    };
}
pub(crate) use settings_table;

/// Builds [`Tuning`], [`TuningOverrides`] and the class table from the rows.
macro_rules! tuning_types {
    ([] $(
        $(#[doc = $doc:literal])*
        $name:ident, $env:literal:
            node $node:expr, small $small:expr, medium $medium:expr, large $large:expr, huge $huge:expr;
    )*) => {
        /// The timing and size settings of a node, every one set: what a node runs with, what
        /// its API and the cluster's status report.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
        #[serde(rename_all = "camelCase")]
        pub struct Tuning {
            $( $(#[doc = $doc])* pub $name: u64, )*
        }

        /// Overrides of any setting (the operator's `spec.tuning`); unset ones keep the value of
        /// the payload class.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
        #[serde(rename_all = "camelCase")]
        pub struct TuningOverrides {
            $(
                $(#[doc = $doc])*
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub $name: Option<u64>,
            )*
        }

        impl Default for Tuning {
            /// The node's built-in defaults, used without a payload class: a LAN cluster with
            /// values up to 16 MiB.
            fn default() -> Self {
                Tuning { $($name: $node,)* }
            }
        }

        impl TuningOverrides {
            /// `base` with every set override applied (not validated: see [`crate::derive`]).
            pub fn apply(&self, base: Tuning) -> Tuning {
                Tuning { $($name: self.$name.unwrap_or(base.$name),)* }
            }
        }

        impl PayloadClass {
            /// The settings of the class before overrides.
            pub fn tuning(self) -> Tuning {
                match self {
                    PayloadClass::Small => Tuning { $($name: $small,)* },
                    PayloadClass::Medium => Tuning { $($name: $medium,)* },
                    PayloadClass::Large => Tuning { $($name: $large,)* },
                    PayloadClass::Huge => Tuning { $($name: $huge,)* },
                }
            }
        }
    };
}

settings_table!(tuning_types {});

#[cfg(test)]
mod tests {
    use super::*;

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
    fn overrides_replace_only_what_they_set() {
        let o = TuningOverrides { heartbeat_ms: Some(200), ..Default::default() };
        let t = o.apply(PayloadClass::Medium.tuning());
        assert_eq!((t.heartbeat_ms, t.election_min_ms), (200, 1_000));
        assert_eq!(TuningOverrides::default().apply(Tuning::default()), Tuning::default());
    }
}
