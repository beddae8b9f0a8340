//! A node's view of the cluster, as `/api/v1/cluster`, `/health/ready` and the metrics show it.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::Serialize;

use super::snapshot::SnapshotStatsView;
use super::types::{NodeId, TypeConfig};

/// Node and cluster state. The API adds the cluster settings to it (`api::cluster`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    /// This node's id.
    pub node_id: NodeId,
    /// leader, follower, candidate, learner or shutdown.
    pub role: String,
    /// Current leader, if known.
    pub leader_id: Option<NodeId>,
    /// Current leader's URL, if known.
    pub leader_addr: Option<String>,
    /// Current term.
    pub term: u64,
    /// Last log index on this node.
    pub last_log_index: Option<u64>,
    /// Committed index known to this node.
    pub commit_index: Option<u64>,
    /// Applied index of this node.
    pub applied_index: Option<u64>,
    /// Index covered by this node's last snapshot.
    pub snapshot_index: Option<u64>,
    /// Highest purged log index.
    pub purged_index: Option<u64>,
    /// Log bytes appended since the last snapshot (compaction starts at a threshold of these).
    pub log_bytes_since_snapshot: u64,
    /// Members of the effective membership.
    pub members: Vec<MemberStatus>,
    /// Times this node saw a new leader (including the first one after start); a count that
    /// keeps rising shows an unstable cluster.
    pub leader_changes: u64,
    /// Snapshot build, transfer and install figures.
    pub snapshots: SnapshotStatsView,
}

/// One member of the cluster.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    /// Node id.
    pub id: NodeId,
    /// Advertised base URL.
    pub address: String,
    /// `voter` or `learner`.
    pub role: &'static str,
    /// On the leader: milliseconds since this member last acknowledged a heartbeat (absent on
    /// followers, for the leader itself, and for a member that never answered).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_ack_ms: Option<u64>,
}

/// The figures openraft does not know, which the node adds to its metrics.
pub(super) struct LocalFigures {
    /// The applied revision as the state machine reports it (may run ahead of the metrics).
    pub applied_revision: u64,
    pub log_bytes_since_snapshot: u64,
    pub leader_changes: u64,
    pub snapshots: SnapshotStatsView,
    /// Time since this node last heard from a leader.
    pub since_leader_contact: Duration,
}

/// The leader this node knows of: a leader names itself only while a quorum has acknowledged
/// it within `lease` (etcd's CheckQuorum, as a report), and a follower names its leader only
/// while it heard from it within two leases (`since_contact`; by then its watchdog has started
/// a pre-vote, where etcd forgets its leader). openraft takes the leader from the persisted
/// vote: a restarted former leader is restored as leader, a leader cut off from its followers
/// stays one, and a follower keeps naming a leader it cannot reach; all of them reported a
/// leader and readiness for as long as that lasted, and clients that believed it waited out
/// request timeouts.
pub(crate) fn known_leader(
    m: &openraft::RaftMetrics<TypeConfig>,
    lease: Duration,
    since_contact: Duration,
) -> Option<NodeId> {
    use openraft::Instant as _;
    let leader = m.current_leader?;
    if leader != m.id {
        return (since_contact <= lease * 2).then_some(leader);
    }
    let alone = m.membership_config.membership().voter_ids().all(|id| id == m.id);
    let acked = m.last_quorum_acked.as_ref().is_some_and(|at| at.elapsed() <= lease);
    (m.state == openraft::ServerState::Leader && (alone || acked)).then_some(leader)
}

/// Builds the status of node `me` from openraft's metrics.
pub(super) fn from_metrics(
    me: NodeId,
    m: &openraft::RaftMetrics<TypeConfig>,
    lease: Duration,
    local: LocalFigures,
) -> ClusterStatus {
    use openraft::Instant as _;
    use openraft::ServerState;

    let membership = m.membership_config.membership();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let members = membership
        .nodes()
        .map(|(id, node)| MemberStatus {
            id: *id,
            address: node.addr.clone(),
            role: if voters.contains(id) { "voter" } else { "learner" },
            last_heartbeat_ack_ms: m
                .heartbeat
                .as_ref()
                .filter(|_| *id != me)
                .and_then(|h| h.get(id).cloned().flatten())
                .map(|at| at.elapsed().as_millis() as u64),
        })
        .collect();
    let role = match m.state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    };
    let leader = known_leader(m, lease, local.since_leader_contact);
    let leader_addr = leader.and_then(|l| membership.get_node(&l).map(|n| n.addr.clone()));
    ClusterStatus {
        node_id: me,
        role: role.to_string(),
        leader_id: leader,
        leader_addr,
        term: m.current_term,
        last_log_index: m.last_log_index,
        commit_index: m.local_committed.as_ref().map(|l| l.index),
        applied_index: m.last_applied.as_ref().map(|l| l.index.max(local.applied_revision)),
        snapshot_index: m.snapshot.as_ref().map(|l| l.index),
        purged_index: m.purged.as_ref().map(|l| l.index),
        log_bytes_since_snapshot: local.log_bytes_since_snapshot,
        members,
        leader_changes: local.leader_changes,
        snapshots: local.snapshots,
    }
}
