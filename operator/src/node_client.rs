//! Talking to the members: what each pod's node reports (alive, applied index, its view of the
//! group) and the admin calls that carry out a membership step. Uses `confman-client` with the
//! cluster token (an unscoped admin credential on every node).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use confman_client::{Client, ClusterStatus};
use k8s_openapi::api::core::v1::Pod;

use crate::builders::pod_url;
use crate::crd::ConfmanCluster;
use crate::membership_step::{PodView, RaftView};

/// How long one node gets to answer a status query.
const STATUS_TIMEOUT: Duration = Duration::from_secs(3);

/// A client for the members of `c` (pods `0..ordinals`), trusting `ca` (PEM) when the members
/// serve TLS.
pub fn client(
    c: &ConfmanCluster,
    ordinals: u32,
    token: &str,
    resolve: &[(String, IpAddr)],
    ca: Option<&str>,
) -> Result<Client, confman_client::Error> {
    let endpoints: Vec<String> = (0..ordinals.max(1)).map(|o| pod_url(c, &crate::builders::pod_name(c, o))).collect();
    let mut b =
        Client::builder(endpoints, token).retry_for(Duration::from_secs(10)).request_timeout(Duration::from_secs(120));
    for (host, ip) in resolve {
        b = b.resolve(host.clone(), *ip);
    }
    if let Some(ca) = ca {
        b = b.trust_ca_pem(ca);
    }
    b.build()
}

fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// What one pod's node said.
enum Answer {
    /// Its cluster status.
    Status(Box<ClusterStatus>),
    /// It refuses to run: the volume of this (member) id was lost.
    DataLost(Option<u64>),
    /// It refuses the token the operator presents.
    Refused,
    /// Nothing (no pod, not listening yet, timed out).
    Silent,
}

/// Views of ordinals `0..ordinals` from the pod objects and their nodes' answers, plus the
/// group as the leader reports it.
pub async fn observe(
    c: &ConfmanCluster,
    client: &Client,
    ordinals: u32,
    pods: &[Pod],
    update_revision: Option<&str>,
) -> (Vec<PodView>, Option<RaftView>) {
    let by_name: BTreeMap<String, &Pod> =
        pods.iter().map(|p| (p.metadata.name.clone().unwrap_or_default(), p)).collect();
    // Every pod's node is asked at once: one unreachable pod costs one timeout, not one each.
    let names: Vec<String> = (0..ordinals).map(|o| crate::builders::pod_name(c, o)).collect();
    let answers = futures::future::join_all(names.iter().map(|name| {
        let exists = by_name.get(name).is_some_and(|p| p.metadata.deletion_timestamp.is_none());
        let url = pod_url(c, name);
        async move {
            if !exists {
                return Answer::Silent;
            }
            match tokio::time::timeout(STATUS_TIMEOUT, client.cluster_of(&url)).await {
                Ok(Ok(status)) => Answer::Status(Box::new(status)),
                Ok(Err(confman_client::Error::Api(p))) if p.data_lost() => Answer::DataLost(p.node_id),
                Ok(Err(e)) if e.status() == Some(401) => Answer::Refused,
                _ => Answer::Silent,
            }
        }
    }))
    .await;
    let mut views = Vec::new();
    let mut statuses: Vec<ClusterStatus> = Vec::new();
    for ((ordinal, name), answer) in (0..ordinals).zip(names).zip(answers) {
        let refuses_token = matches!(answer, Answer::Refused);
        let (status, data_lost) = match answer {
            Answer::Status(s) => (Some(*s), None),
            Answer::DataLost(id) => (None, Some(id.unwrap_or_default())),
            Answer::Refused | Answer::Silent => (None, None),
        };
        // The node reports itself in its group's membership: its id has persisted Raft state.
        let member_id = status.as_ref().filter(|s| s.members.iter().any(|m| m.id == s.node_id)).map(|s| s.node_id);
        let pod = by_name.get(&name).filter(|p| p.metadata.deletion_timestamp.is_none());
        let revision = pod.and_then(|p| p.metadata.labels.as_ref()?.get("controller-revision-hash").cloned());
        views.push(PodView {
            ordinal,
            name,
            exists: pod.is_some(),
            ready: pod.is_some_and(|p| pod_ready(p)),
            alive: status.is_some(),
            // Outdated means "not at `status.updateRevision`" (the newest template). With the
            // `OnDelete` strategy a pod keeps its old hash until the operator deletes it, and
            // `currentRevision` is never advanced, so it must not be the reference.
            updated: match (revision.as_deref(), update_revision) {
                (Some(r), Some(u)) => r == u,
                _ => true,
            },
            applied: status.as_ref().and_then(|s| s.applied_index),
            member_id,
            data_lost,
            refuses_token,
        });
        statuses.extend(status);
    }
    // The leader is the node that names itself: a leader outside its quorum lease keeps the
    // role but no longer names itself, and its view may be stale.
    let raft = statuses.iter().find(|s| s.leader_id == Some(s.node_id)).map(|s| RaftView {
        leader: Some(s.node_id),
        members: s.members.iter().map(|m| (m.id, m.role == "voter")).collect(),
        commit_index: s.commit_index.unwrap_or(0),
        addresses: s.members.iter().map(|m| (m.id, m.address.clone())).collect(),
    });
    (views, raft)
}
