//! What a leader does when its disk runs low (`crate::disk_space`): it can no longer take
//! writes, so it hands leadership to the most caught-up follower, which can.

use std::sync::Weak;
use std::time::Instant;

use super::RaftNode;
use crate::disk_space::POLL_INTERVAL;

/// Handovers are at most this many leader leases apart: when every member is low, leadership
/// would otherwise move round the cluster without end.
const HANDOVER_EVERY_LEASES: u32 = 10;

impl RaftNode {
    /// Reads the free space every [`POLL_INTERVAL`] and, while this node is low and leads
    /// other voters, hands leadership over. Ends when the node is dropped.
    pub async fn guard_disk(node: Weak<RaftNode>) {
        let mut last_handover: Option<Instant> = None;
        loop {
            tokio::time::sleep(POLL_INTERVAL).await;
            let Some(node) = node.upgrade() else { return };
            let low = node.disk.check();
            let due = last_handover.is_none_or(|at| at.elapsed() >= node.leader_lease * HANDOVER_EVERY_LEASES);
            let voters = node.status().members.iter().filter(|m| m.role == "voter").count();
            if !(low && due && voters > 1 && node.is_leader()) {
                continue;
            }
            last_handover = Some(Instant::now());
            match node.transfer_leader(None).await {
                Ok(to) => tracing::warn!(to, "below the disk reserve: leadership handed over"),
                Err(e) => tracing::warn!("below the disk reserve; leadership not handed over: {e}"),
            }
        }
    }
}
