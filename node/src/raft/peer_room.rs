//! Which peers said they have no room for new log entries (below their disk reserve, see
//! `crate::disk_space`), as the leader learns it from their refusals. The leader answers 507
//! itself when a majority of voters cannot store a write, instead of proposing one that cannot
//! commit (a client would wait the whole request timeout for an unknown outcome), and hands
//! leadership only to a follower with room.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::types::NodeId;

/// Prefix of a follower's refusal of entries for want of disk space (`rpc_server`).
pub const REFUSED_PREFIX: &str = "entries refused: ";

/// How long a refusal counts without a newer one: the leader retries a refusing follower within
/// openraft's backoff (well under this), and one that took entries again is cleared at once.
const FRESH: Duration = Duration::from_secs(10);

/// Peers last seen refusing entries, with when.
#[derive(Debug, Default)]
pub struct PeerRoom {
    refused: Mutex<BTreeMap<NodeId, Instant>>,
}

impl PeerRoom {
    /// `peer` refused entries for want of space.
    pub fn refused(&self, peer: NodeId) {
        if let Ok(mut m) = self.refused.lock() {
            m.insert(peer, Instant::now());
        }
    }

    /// `peer` took entries.
    pub fn took(&self, peer: NodeId) {
        if let Ok(mut m) = self.refused.lock() {
            m.remove(&peer);
        }
    }

    /// Whether `peer` refused entries recently and took none since.
    pub fn is_full(&self, peer: NodeId) -> bool {
        self.refused.lock().is_ok_and(|m| m.get(&peer).is_some_and(|at| at.elapsed() < FRESH))
    }
}

/// Whether a write can commit: at least a majority of `voters` (this node included, unless it
/// is itself low) have room.
pub fn majority_has_room(voters: &[NodeId], me: NodeId, me_low: bool, room: &PeerRoom) -> bool {
    let with_room = voters.iter().filter(|v| if **v == me { !me_low } else { !room.is_full(**v) }).count();
    with_room > voters.len() / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_needs_a_majority_of_voters_with_room() {
        let room = PeerRoom::default();
        assert!(majority_has_room(&[1, 2, 3], 1, false, &room));
        room.refused(2);
        assert!(room.is_full(2));
        assert!(majority_has_room(&[1, 2, 3], 1, false, &room), "leader and node 3");
        room.refused(3);
        assert!(!majority_has_room(&[1, 2, 3], 1, false, &room), "only the leader has room");
        room.took(3);
        assert!(majority_has_room(&[1, 2, 3], 1, false, &room));
        assert!(!majority_has_room(
            &[1, 2, 3],
            1,
            true,
            &PeerRoom { refused: Mutex::new([(2, Instant::now())].into()) }
        ));
        assert!(majority_has_room(&[1], 1, false, &room));
        assert!(!majority_has_room(&[1], 1, true, &room));
    }
}
