//! Membership and leadership changes, made on the leader for the admin API and the operator.

use std::cmp::Reverse;
use std::collections::BTreeSet;

use openraft::async_runtime::watch::WatchReceiver;
use openraft::{BasicNode, ChangeMembers};

use super::RaftNode;
use crate::raft::error::{RaftNodeError, from_write_error, stopped};
use crate::raft::types::NodeId;

impl RaftNode {
    pub(super) fn not_leader(&self) -> RaftNodeError {
        match self.leader() {
            Some((leader_id, leader_addr)) if leader_id != self.id => {
                RaftNodeError::NotLeader { leader_id, leader_addr }
            }
            _ => RaftNodeError::NoLeader,
        }
    }

    fn require_leader(&self) -> Result<(), RaftNodeError> {
        if self.raft.is_leader() { Ok(()) } else { Err(self.not_leader()) }
    }

    /// Adds a learner and waits until it has caught up with the log.
    pub async fn add_learner(&self, id: NodeId, addr: String) -> Result<(), RaftNodeError> {
        self.require_leader()?;
        self.raft.add_learner(id, BasicNode::new(addr), true).await.map_err(|e| from_write_error(self.id, e))?;
        Ok(())
    }

    /// Promotes a learner to voter (joint consensus, committed when this returns).
    pub async fn promote(&self, id: NodeId) -> Result<(), RaftNodeError> {
        self.require_leader()?;
        let ids = BTreeSet::from([id]);
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(ids), false)
            .await
            .map_err(|e| from_write_error(self.id, e))?;
        Ok(())
    }

    /// Removes a voter or learner from the membership (committed when this returns).
    pub async fn remove(&self, id: NodeId) -> Result<(), RaftNodeError> {
        self.require_leader()?;
        let status = self.status();
        let Some(member) = status.members.iter().find(|m| m.id == id) else {
            return Err(RaftNodeError::Membership(format!("node {id} is not a member")));
        };
        let ids = BTreeSet::from([id]);
        let change =
            if member.role == "voter" { ChangeMembers::RemoveVoters(ids) } else { ChangeMembers::RemoveNodes(ids) };
        self.raft.change_membership(change, false).await.map_err(|e| from_write_error(self.id, e))?;
        Ok(())
    }

    /// Hands leadership to `to` (or to another voter) and waits until this node is no longer
    /// the leader.
    pub async fn transfer_leader(&self, to: Option<NodeId>) -> Result<NodeId, RaftNodeError> {
        self.require_leader()?;
        let status = self.status();
        let target = match to {
            Some(t) => t,
            None => self.best_successor(&status)?,
        };
        if !status.members.iter().any(|m| m.id == target && m.role == "voter") {
            return Err(RaftNodeError::Membership(format!("node {target} is not a voter")));
        }
        if target == self.id {
            return Ok(target);
        }
        self.raft.trigger().transfer_leader(target).await.map_err(stopped)?;
        let me = self.id;
        self.raft
            .wait(Some(self.request_timeout))
            .metrics(|m| m.current_leader.is_some_and(|l| l != me), "leadership transferred")
            .await
            .map_err(|_| RaftNodeError::Timeout(self.request_timeout))?;
        Ok(target)
    }

    /// The most caught-up other voter: it can take over at once, and one that is down or
    /// lagging (a pod being replaced) is not picked while a better one exists.
    fn best_successor(&self, status: &crate::raft::ClusterStatus) -> Result<NodeId, RaftNodeError> {
        use openraft::Instant as _;
        let (matched, acked) = {
            let m = self.raft.metrics();
            let m = m.borrow_watched();
            (m.replication.clone().unwrap_or_default(), m.heartbeat.clone().unwrap_or_default())
        };
        // Answering heartbeats now (acked within half the minimum election timeout).
        let live =
            |id: &NodeId| acked.get(id).cloned().flatten().is_some_and(|at| at.elapsed() < self.election_min / 2);
        status
            .members
            .iter()
            .filter(|m| m.role == "voter" && m.id != self.id)
            .max_by_key(|m| (live(&m.id), matched.get(&m.id).cloned().flatten().map(|l| l.index), Reverse(m.id)))
            .map(|m| m.id)
            .ok_or_else(|| RaftNodeError::Membership("no other voter to transfer leadership to".into()))
    }

    /// Lets node `id`, whose data was lost, rejoin under the same id: the leader resets
    /// replication to it once instead of treating its empty log as a fatal reversion. Call on
    /// the leader after stopping the node and before restarting it with empty data.
    pub async fn allow_rejoin(&self, id: NodeId) -> Result<(), RaftNodeError> {
        self.require_leader()?;
        self.raft
            .trigger()
            .allow_next_revert(&id, true)
            .await
            .map_err(stopped)?
            .map_err(|e| RaftNodeError::Membership(e.to_string()))?;
        self.rejoins.allow(id);
        Ok(())
    }
}
