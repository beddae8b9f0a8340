//! What the Raft layer gets from the resolved settings. The tuning goes over as the contract's
//! `Tuning` (milliseconds and bytes, as openraft's own config takes them); durations are made
//! only where the Raft layer waits.

use super::Settings;
use crate::raft::RaftSettings;

impl Settings {
    /// The Raft part of the settings.
    pub fn raft(&self) -> RaftSettings {
        RaftSettings {
            node_id: self.node_id,
            advertise: self.advertise.clone(),
            peers: self.peers.clone(),
            join: self.join,
            outgoing: crate::raft::network::Outgoing { resolve: self.resolve.clone(), trusted_cas: Vec::new() },
            tuning: self.tuning,
            history_depth: self.history_depth,
        }
    }
}
