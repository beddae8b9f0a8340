//! The second guard against a member rejoining on a lost volume under its old id (which would
//! forget its vote and the entries it acknowledged, so a majority could lose a committed
//! write). The first guard is the `admitted` list of the members file, but under Kubernetes
//! it reaches a pod through a ConfigMap volume that the kubelet refreshes up to a minute or
//! more after the operator writes it: a disk lost in that window rejoined unnoticed on a real
//! cluster. So a node starting on an empty data directory also asks its peers: if the leader
//! holds entries this id acknowledged, and no admin allowed a rejoin
//! (`POST /api/v1/cluster/members/{id}/rejoin`), the node refuses to start (`data-lost`).
//!
//! What it cannot see: a leader elected while this node was away has no progress for it yet
//! (it answers "nothing acknowledged"), and an unreachable group tells nothing; then only the
//! members file guards.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::raft::NodeId;
use crate::raft::wire::{MemberProgress, PATH_MEMBER_PROGRESS};

/// How long one peer may take to answer.
const PEER_TIMEOUT: Duration = Duration::from_secs(3);

/// Asks every peer but `node_id` itself; returns the leader and the index it knows `node_id`
/// acknowledged, when that proves the id held data.
pub async fn acknowledged_elsewhere(
    http: &reqwest::Client,
    token: &str,
    node_id: NodeId,
    peers: &BTreeMap<NodeId, String>,
) -> Option<(NodeId, u64)> {
    for (peer, url) in peers.iter().filter(|(id, _)| **id != node_id) {
        let endpoint = format!("{}{PATH_MEMBER_PROGRESS}/{node_id}", url.trim_end_matches('/'));
        let answer = http.get(&endpoint).bearer_auth(token).timeout(PEER_TIMEOUT).send().await;
        let progress = match answer {
            Ok(resp) if resp.status().is_success() => resp.json::<MemberProgress>().await,
            Ok(resp) => {
                tracing::debug!(peer, status = %resp.status(), "peer did not report member progress");
                continue;
            }
            Err(e) => {
                tracing::debug!(peer, error = %e, "peer unreachable while checking for a lost volume");
                continue;
            }
        };
        match progress {
            Ok(p) if p.leader => {
                return match p.matched {
                    Some(index) if index > 0 && !p.rejoin_allowed => Some((*peer, index)),
                    _ => None,
                };
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(peer, error = %e, "unreadable member progress"),
        }
    }
    None
}
