//! What a leader does about disk space (`crate::disk_space`): it refuses writes that it or a
//! majority cannot store, and when its own disk runs low it hands leadership to a caught-up
//! follower with room, which can take them.

use std::sync::Weak;
use std::time::Instant;

use openraft::async_runtime::watch::WatchReceiver;

use super::RaftNode;
use crate::disk_space::POLL_INTERVAL;
use crate::raft::error::RaftNodeError;
use crate::raft::peer_room::majority_has_room;
use crate::raft::types::NodeId;

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
            let Some(to) = node.successor_with_room() else {
                tracing::warn!("below the disk reserve; no caught-up follower with room to hand leadership to");
                continue;
            };
            match node.transfer_leader(Some(to)).await {
                Ok(_) => tracing::warn!(to, "below the disk reserve: leadership handed over"),
                Err(e) => tracing::warn!(to, "below the disk reserve; leadership not handed over: {e}"),
            }
        }
    }

    /// 507 unless this node and a majority of the voters have room for a write.
    pub(super) fn check_room(&self) -> Result<(), RaftNodeError> {
        let low = self.disk.check();
        if low {
            return Err(RaftNodeError::NoSpace(self.disk.describe()));
        }
        let voters: Vec<NodeId> = self.status().members.iter().filter(|m| m.role == "voter").map(|m| m.id).collect();
        if !majority_has_room(&voters, self.id, low, &self.peer_room) {
            let full: Vec<NodeId> = voters.iter().copied().filter(|v| self.peer_room.is_full(*v)).collect();
            return Err(RaftNodeError::NoSpace(format!(
                "voters {full:?} are below their free-space reserve (disk-reserve-bytes) and refuse new entries, \
                 so no majority can store a write; writes are refused until space is freed, reads go on"
            )));
        }
        Ok(())
    }

    /// A voter that can take over at once and store writes: it has every entry of this
    /// leader's log (openraft ignores a transfer to a follower behind it, and the leader would
    /// meanwhile refuse reads and writes) and has not refused entries for want of space.
    fn successor_with_room(&self) -> Option<NodeId> {
        let (last, matched) = {
            let m = self.raft.metrics();
            let m = m.borrow_watched();
            (m.last_log_index, m.replication.clone().unwrap_or_default())
        };
        self.status()
            .members
            .iter()
            .filter(|m| m.role == "voter" && m.id != self.id && !self.peer_room.is_full(m.id))
            .find(|m| matched.get(&m.id).cloned().flatten().map(|l| l.index) == last)
            .map(|m| m.id)
    }
}
