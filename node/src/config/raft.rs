//! The projection of the settings onto the Raft layer's.

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
