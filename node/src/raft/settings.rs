//! What a node needs to run Raft, and the openraft configuration derived from it.

use std::collections::BTreeMap;
use std::time::Duration;

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
    /// How often the leader sends heartbeats, which keep followers from starting elections.
    pub heartbeat: Duration,
    /// Election timeout range: a follower that hears no leader for a random time within
    /// `election_min..election_max` starts an election.
    pub election_min: Duration,
    /// Upper bound of the election timeout; also the leader lease followers honour.
    pub election_max: Duration,
    /// Deadline of a client request inside the node (commit wait, read wait, forwarding).
    pub request_timeout: Duration,
    /// Deadline of an AppendEntries carrying entries.
    pub append_timeout: Duration,
    /// Base allowance of a snapshot transfer.
    pub snapshot_timeout: Duration,
    /// Byte cap of one AppendEntries payload.
    pub max_append_bytes: u64,
    /// Entry cap of one AppendEntries payload.
    pub max_append_entries: u64,
    /// Snapshot after this many log bytes since the last snapshot.
    pub compaction_bytes: u64,
    /// Snapshot after this many log entries since the last snapshot.
    pub compaction_entries: u64,
    /// Log entries kept after a snapshot for lagging followers.
    pub logs_to_keep: u64,
    /// Superseded versions kept per key, proposed when this node is the first leader to take
    /// a client write in a cluster that has none yet (afterwards the cluster's value rules;
    /// see `Operation::SetHistoryDepth`).
    pub history_depth: u64,
}

impl RaftSettings {
    /// The openraft configuration. Snapshots and log purges are not left to openraft's
    /// count-based policies: large values make entry counts a poor measure of log size.
    pub(super) fn openraft_config(&self) -> Result<openraft::Config, RaftNodeError> {
        openraft::Config {
            cluster_name: "confman".into(),
            heartbeat_interval: self.heartbeat.as_millis() as u64,
            election_timeout_min: self.election_min.as_millis() as u64,
            election_timeout_max: self.election_max.as_millis() as u64,
            install_snapshot_timeout: self.snapshot_timeout.as_millis() as u64,
            max_payload_entries: self.max_append_entries,
            // Compaction is decided by `LogBytes` (bytes, entries and state size), not by count.
            snapshot_policy: SnapshotPolicy::Never,
            // The kept tail is trimmed by `compaction::trim_log_tail` alone (entries and bytes):
            // two writers of openraft's purge point could move it backwards.
            max_in_snapshot_log_to_keep: u64::MAX,
            replication_lag_threshold: self.compaction_entries.saturating_mul(2),
            purge_batch_size: 16,
            enable_pre_vote: Some(true),
            ..Default::default()
        }
        .validate()
        .map_err(|e| RaftNodeError::Config(e.to_string()))
    }
}
