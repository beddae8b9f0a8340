//! Permission for a member that lost its data to rejoin under its old id.

use std::collections::BTreeSet;
use std::sync::Mutex;

use super::types::NodeId;

/// Ids an admin let rejoin with empty data (`allow_rejoin`), until the returning node asks
/// (`/raft/member-progress`): without one, a node that starts on an empty data directory while
/// the leader holds entries it acknowledged refuses to start (`crate::lost_member`).
#[derive(Debug, Default)]
pub struct RejoinAllowances(Mutex<BTreeSet<NodeId>>);

impl RejoinAllowances {
    pub(super) fn allow(&self, id: NodeId) {
        if let Ok(mut ids) = self.0.lock() {
            ids.insert(id);
        }
    }

    /// Whether `id` may rejoin; the allowance is used up.
    pub fn take(&self, id: NodeId) -> bool {
        self.0.lock().map(|mut ids| ids.remove(&id)).unwrap_or(false)
    }
}
