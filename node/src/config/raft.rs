//! The projection of the settings onto the Raft layer's: the tuning's milliseconds become the
//! `Duration`s `RaftSettings` takes.

use std::time::Duration;

use super::Settings;
use crate::raft::RaftSettings;

impl Settings {
    /// The Raft part of the settings.
    pub fn raft(&self) -> RaftSettings {
        let t = &self.tuning;
        RaftSettings {
            node_id: self.node_id,
            advertise: self.advertise.clone(),
            peers: self.peers.clone(),
            join: self.join,
            outgoing: crate::raft::network::Outgoing { resolve: self.resolve.clone(), trusted_cas: Vec::new() },
            heartbeat: Duration::from_millis(t.heartbeat_ms),
            election_min: Duration::from_millis(t.election_min_ms),
            election_max: Duration::from_millis(t.election_max_ms),
            request_timeout: Duration::from_millis(t.request_timeout_ms),
            append_timeout: Duration::from_millis(t.append_timeout_ms),
            snapshot_timeout: Duration::from_millis(t.snapshot_timeout_ms),
            max_append_bytes: t.max_append_bytes,
            max_append_entries: t.max_append_entries,
            compaction_bytes: t.compaction_bytes,
            compaction_entries: t.compaction_entries,
            logs_to_keep: t.logs_to_keep,
            history_depth: self.history_depth,
        }
    }
}
