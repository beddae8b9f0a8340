//! What a node needs to run Raft, and the openraft configuration derived from it.

use std::collections::BTreeMap;

use confman_contract::Tuning;
use openraft::SnapshotPolicy;

use super::error::RaftNodeError;
use super::network::Outgoing;
use super::types::NodeId;

/// Raft settings of a node (from `config::Settings`, already validated against the tuning
/// invariants, so the timing relations between these hold).
#[derive(Debug, Clone)]
pub struct RaftSettings {
    /// This node's id; fixed for the life of its data directory.
    pub node_id: NodeId,
    /// Base URL peers and clients use to reach this node; recorded in the membership.
    pub advertise: String,
    /// Initial members for bootstrap (empty: a single-node cluster of this node).
    pub peers: BTreeMap<NodeId, String>,
    /// Never initialise a cluster; wait to be added through the admin API.
    pub join: bool,
    /// How peers are reached (host overrides, trusted CAs).
    pub outgoing: Outgoing,
    /// Timing and sizes, in the contract's milliseconds and bytes: openraft's configuration
    /// takes them as they are; `Duration`s are made where the node itself waits.
    pub tuning: Tuning,
    /// Superseded versions kept per key, proposed when this node is the first leader to take
    /// a client write in a cluster that has none yet (afterwards the cluster's value rules;
    /// see `Operation::SetHistoryDepth`).
    pub history_depth: u64,
}

impl RaftSettings {
    /// The openraft configuration. Snapshots and log purges are not left to openraft's
    /// count-based policies: large values make entry counts a poor measure of log size.
    pub(super) fn openraft_config(&self) -> Result<openraft::Config, RaftNodeError> {
        let t = &self.tuning;
        openraft::Config {
            cluster_name: "confman".into(),
            heartbeat_interval: t.heartbeat_ms,
            election_timeout_min: t.election_min_ms,
            election_timeout_max: t.election_max_ms,
            install_snapshot_timeout: t.snapshot_timeout_ms,
            max_payload_entries: t.max_append_entries,
            // Compaction is decided by `LogBytes` (bytes, entries and state size), not by count.
            snapshot_policy: SnapshotPolicy::Never,
            // The kept tail is trimmed by `compaction::trim_log_tail` alone (entries and bytes):
            // two writers of openraft's purge point could move it backwards.
            max_in_snapshot_log_to_keep: u64::MAX,
            replication_lag_threshold: t.compaction_entries.saturating_mul(2),
            purge_batch_size: 16,
            enable_pre_vote: Some(true),
            ..Default::default()
        }
        .validate()
        .map_err(|e| RaftNodeError::Config(e.to_string()))
    }
}
