//! The membership state machine (pure): from what the StatefulSet, the pods, the member ledger
//! and the Raft group report, the one next step towards `spec.replicas` voters — or the one next
//! pod to replace for an upgrade. One change per reconcile; every gate is explicit:
//!
//! - scale up: grow the StatefulSet by one → the new pod's node answers → add it as a learner
//!   (the node returns once it caught up) → promote it;
//! - scale down: move leadership off the highest ordinal → remove it from the group (the call
//!   returns once the change committed) → shrink the StatefulSet and drop the pod's ledger entry,
//!   so the ordinal comes back later under a fresh id;
//! - a pod that is missing or unready while its ordinal is wanted is waited for, never treated
//!   as a scale-down, and blocks upgrades;
//! - a pod whose volume was lost (its node refuses to start on an empty directory under an id
//!   that held a place in the group) is replaced: the old id is removed from the group, then
//!   the ordinal restarts under a fresh id and joins like a new member;
//! - upgrades (pods on an old template revision): followers one at a time, the leader last after
//!   a transfer, only while every member is healthy.

use std::collections::BTreeMap;

/// What is known about one pod (ordinal) of the StatefulSet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    /// Ordinal.
    pub ordinal: u32,
    /// Pod name.
    pub name: String,
    /// The pod object exists (and is not being deleted).
    pub exists: bool,
    /// The pod is Ready (its node serves linearizable reads).
    pub ready: bool,
    /// Its node answers the admin API (it may still be waiting to join).
    pub alive: bool,
    /// The pod runs the StatefulSet's newest template revision (`status.updateRevision`).
    pub updated: bool,
    /// The node's applied index, when alive.
    pub applied: Option<u64>,
    /// The node's id when it reports itself a member of its group (it has persisted Raft
    /// state under that id).
    pub member_id: Option<u64>,
    /// The node refuses to start because the volume of this id was lost (the id it names).
    pub data_lost: Option<u64>,
    /// The node answered 401 to the token the operator presents (a token rotation edited out
    /// of order): it is running, but the operator cannot see or steer it.
    pub refuses_token: bool,
}

/// The Raft group as the leader reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RaftView {
    /// Leader id.
    pub leader: Option<u64>,
    /// Members: id → voter?
    pub members: BTreeMap<u64, bool>,
    /// The leader's commit index.
    pub commit_index: u64,
    /// Each member's advertised URL (a pod's peer address), as the leader reports it.
    pub addresses: BTreeMap<u64, String>,
}

/// Everything the decision needs.
#[derive(Debug, Clone)]
pub struct Observation<'a> {
    /// `spec.replicas`.
    pub desired: u32,
    /// Current `StatefulSet.spec.replicas` (None: no StatefulSet yet).
    pub sts_replicas: Option<u32>,
    /// Node id of each pod.
    pub ids: &'a BTreeMap<String, u64>,
    /// Pods by ordinal (0..max(desired, sts_replicas)).
    pub pods: &'a [PodView],
    /// The group, when a leader answered.
    pub raft: Option<&'a RaftView>,
    /// How far behind the commit index a learner may be to be promoted.
    pub max_lag: u64,
}

/// The one next step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Create the StatefulSet with the bootstrap members.
    Bootstrap {
        /// Initial replicas.
        replicas: u32,
    },
    /// Nothing to do: membership equals the spec and every pod is current.
    Settled,
    /// Waiting for something outside the operator's control (named).
    Wait(String),
    /// Grow the StatefulSet by one (a fresh id is allocated for the new ordinal).
    Grow {
        /// New replicas.
        replicas: u32,
    },
    /// Add the node of `pod` as a learner.
    AddLearner {
        /// Pod.
        pod: String,
        /// Its node id.
        id: u64,
    },
    /// Promote learner `id` (of `pod`) to voter.
    Promote {
        /// Pod.
        pod: String,
        /// Node id.
        id: u64,
    },
    /// Move leadership away from `from` (to any healthy voter).
    TransferLeader {
        /// Current leader id.
        from: u64,
        /// The healthy voter to hand over to (lowest ordinal that stays and is up to date);
        /// None lets the leader pick.
        to: Option<u64>,
        /// Why.
        reason: String,
    },
    /// Remove member `id` (of `pod`) from the group.
    Remove {
        /// Pod.
        pod: String,
        /// Node id.
        id: u64,
    },
    /// Shrink the StatefulSet to `replicas`, forgetting `pod`'s id (never reused).
    Shrink {
        /// New replicas.
        replicas: u32,
        /// The removed pod.
        pod: String,
    },
    /// Remove member `id`, whose volume was lost (its pod refuses to run under it).
    RemoveLost {
        /// Pod.
        pod: String,
        /// The lost node id.
        id: u64,
    },
    /// Give `pod` a fresh id in place of `lost` (no longer a member) and delete the pod, so it
    /// starts on its empty volume under the new id and joins as a learner.
    ReplaceLost {
        /// Pod.
        pod: String,
        /// The lost node id.
        lost: u64,
    },
    /// Delete `pod` so the StatefulSet recreates it on the current revision (upgrade).
    Replace {
        /// Pod.
        pod: String,
    },
}

/// Decides the next step.
pub fn next_step(o: &Observation<'_>) -> Step {
    let Some(current) = o.sts_replicas else {
        return Step::Bootstrap { replicas: o.desired };
    };
    let pod = |ordinal: u32| o.pods.iter().find(|p| p.ordinal == ordinal);
    let id_of = |name: &str| o.ids.get(name).copied();
    let Some(raft) = o.raft.filter(|r| r.leader.is_some()) else {
        return Step::Wait("no Raft leader answers yet".into());
    };
    let leader = raft.leader.unwrap_or_default();

    // Members of ordinals the StatefulSet runs, in ordinal order.
    for ordinal in 0..current.min(o.desired) {
        let Some(p) = pod(ordinal) else {
            return Step::Wait(format!("pod of ordinal {ordinal} is not listed yet"));
        };
        let Some(id) = id_of(&p.name) else {
            return Step::Wait(format!("no node id allocated for {}", p.name));
        };
        // A lost volume: the old id leaves the group, then the ordinal restarts under a new one.
        if let Some(lost) = p.data_lost.map(|l| if l == 0 { id } else { l }) {
            return if raft.members.contains_key(&lost) {
                Step::RemoveLost { pod: p.name.clone(), id: lost }
            } else {
                Step::ReplaceLost { pod: p.name.clone(), lost }
            };
        }
        match raft.members.get(&id) {
            Some(true) => {}
            Some(false) => {
                let caught_up = p.applied.is_some_and(|a| a + o.max_lag >= raft.commit_index);
                return if caught_up {
                    Step::Promote { pod: p.name.clone(), id }
                } else {
                    Step::Wait(format!("learner {} (node {id}) is catching up", p.name))
                };
            }
            None if p.exists && p.alive => return Step::AddLearner { pod: p.name.clone(), id },
            None => return Step::Wait(format!("{} (node {id}) is starting", p.name)),
        }
    }

    // A member that belongs to no ordinal the StatefulSet runs (e.g. left behind by an earlier
    // operator crash) is a dead voter: remove it. Ordinals are named even when their pod is
    // missing, so a restarting pod is never mistaken for one.
    // Hand-over target: a Ready, updated voter of an ordinal that stays, lowest ordinal first.
    let target = (0..current.min(o.desired))
        .filter_map(&pod)
        .filter(|p| p.exists && p.ready && p.updated)
        .filter_map(|p| id_of(&p.name))
        .find(|id| *id != leader && raft.members.get(id) == Some(&true));
    let wanted: Vec<u64> = (0..current).filter_map(|o| pod(o).and_then(|p| id_of(&p.name))).collect();
    if let Some(stray) = raft.members.keys().copied().find(|id| !wanted.contains(id)) {
        return if stray == leader {
            Step::TransferLeader { from: stray, to: target, reason: format!("node {stray} belongs to no pod") }
        } else if let Some(why) = removal_blocker(o, raft, stray) {
            Step::Wait(format!("removing stray node {stray} waits: {why}"))
        } else {
            Step::Remove { pod: String::new(), id: stray }
        };
    }

    // Scale down: the highest ordinal leaves the group first, then the StatefulSet shrinks.
    if current > o.desired {
        let victim = current - 1;
        let name = pod(victim).map(|p| p.name.clone()).unwrap_or_default();
        return match id_of(&name) {
            Some(id) if raft.members.contains_key(&id) => {
                if let Some(why) = removal_blocker(o, raft, id) {
                    Step::Wait(format!("removing {name} (node {id}) waits: {why}"))
                } else if leader == id {
                    Step::TransferLeader { from: id, to: target, reason: format!("{name} is leaving the group") }
                } else {
                    Step::Remove { pod: name, id }
                }
            }
            _ => Step::Shrink { replicas: victim, pod: name },
        };
    }
    // Scale up: one new ordinal at a time, after the previous one became a voter (loop above).
    if current < o.desired {
        return Step::Grow { replicas: current + 1 };
    }

    // Upgrades: only with every member healthy; followers first, the leader last.
    if let Some(unready) = o.pods.iter().find(|p| p.ordinal < current && !(p.exists && p.ready)) {
        return if o.pods.iter().any(|p| !p.updated) {
            Step::Wait(format!("{} is not ready; upgrades wait until every member is healthy", unready.name))
        } else {
            Step::Wait(format!("{} is not ready", unready.name))
        };
    }
    let outdated: Vec<&PodView> = o.pods.iter().filter(|p| p.ordinal < current && !p.updated).collect();
    let is_leader = |p: &PodView| id_of(&p.name) == Some(leader);
    if let Some(follower) = outdated.iter().rev().find(|p| !is_leader(p)) {
        return Step::Replace { pod: follower.name.clone() };
    }
    if let Some(p) = outdated.first() {
        return Step::TransferLeader {
            from: leader,
            to: target,
            reason: format!("{} (the leader) is upgraded last", p.name),
        };
    }
    Step::Settled
}

/// Why removing member `leaving` must wait, if it must. A voter's removal goes through a joint
/// configuration that needs a majority of the new group as well as of the old one; a majority
/// that is not there stalls the change and every write behind it until dead members come back
/// (3 → 1 with config-1 down: removing config-2 leaves {config-0, config-1}, which needs both).
/// So: every voter that stays for good (ordinals below `spec.replicas`) must be Ready and caught
/// up, and the healthy voters must be a majority of the group after the removal. Voters that
/// leave later in the same scale-down may be down as long as that majority holds (5 → 3 with
/// config-3 dead: removing config-4 leaves 3 healthy of 4). A learner's removal needs no joint
/// configuration and never waits.
fn removal_blocker(o: &Observation<'_>, raft: &RaftView, leaving: u64) -> Option<String> {
    if raft.members.get(&leaving) != Some(&true) {
        return None;
    }
    let pod_of = |id: u64| {
        let name = o.ids.iter().find(|(_, i)| **i == id).map(|(name, _)| name)?;
        o.pods.iter().find(|p| &p.name == name)
    };
    // Why voter `id` cannot be counted on, if it cannot.
    let unhealthy = |id: u64| -> Option<String> {
        let Some(p) = pod_of(id) else { return Some(format!("node {id} runs in no listed pod")) };
        let name = &p.name;
        if !(p.exists && p.ready) {
            return Some(format!("{name} (node {id}) is not ready"));
        }
        if p.applied.is_none_or(|a| a + o.max_lag < raft.commit_index) {
            let applied = p.applied.map_or_else(|| "unknown".to_string(), |a| a.to_string());
            return Some(format!("{name} (node {id}) is behind (applied {applied}, commit {})", raft.commit_index));
        }
        None
    };
    let after: Vec<u64> =
        raft.members.iter().filter(|(id, voter)| **voter && **id != leaving).map(|(id, _)| *id).collect();
    for ordinal in 0..o.desired {
        let Some(p) = o.pods.iter().find(|p| p.ordinal == ordinal) else { continue };
        let Some(id) = o.ids.get(&p.name).copied().filter(|id| after.contains(id)) else { continue };
        if let Some(why) = unhealthy(id) {
            return Some(format!("{why}, and it stays"));
        }
    }
    let down: Vec<String> = after.iter().filter_map(|id| unhealthy(*id)).collect();
    let healthy = after.len() - down.len();
    if healthy * 2 <= after.len() {
        return Some(format!(
            "the group after it needs a majority of {} healthy voters, and only {healthy} are: {}",
            after.len(),
            down.join("; ")
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods(n: u32) -> Vec<PodView> {
        (0..n)
            .map(|o| PodView {
                ordinal: o,
                name: format!("c-{o}"),
                exists: true,
                ready: true,
                alive: true,
                updated: true,
                applied: Some(100),
                member_id: None,
                data_lost: None,
                refuses_token: false,
            })
            .collect()
    }

    fn ids(n: u32) -> BTreeMap<String, u64> {
        (0..n).map(|o| (format!("c-{o}"), u64::from(o) + 1)).collect()
    }

    fn raft(voters: &[u64], learners: &[u64], leader: u64) -> RaftView {
        let mut members: BTreeMap<u64, bool> = voters.iter().map(|v| (*v, true)).collect();
        members.extend(learners.iter().map(|l| (*l, false)));
        RaftView { leader: Some(leader), members, commit_index: 100, addresses: BTreeMap::new() }
    }

    fn step(desired: u32, sts: u32, ids: &BTreeMap<String, u64>, pods: &[PodView], r: &RaftView) -> Step {
        next_step(&Observation { desired, sts_replicas: Some(sts), ids, pods, raft: Some(r), max_lag: 10 })
    }

    #[test]
    fn a_new_cluster_is_bootstrapped_with_all_replicas() {
        let o = Observation { desired: 3, sts_replicas: None, ids: &ids(0), pods: &[], raft: None, max_lag: 10 };
        assert_eq!(next_step(&o), Step::Bootstrap { replicas: 3 });
    }

    #[test]
    fn scale_up_grows_adds_then_promotes_one_at_a_time() {
        let r3 = raft(&[1, 2, 3], &[], 1);
        assert_eq!(step(5, 3, &ids(3), &pods(3), &r3), Step::Grow { replicas: 4 });
        // The new pod is starting: wait.
        let mut p = pods(4);
        p[3].alive = false;
        assert!(matches!(step(5, 4, &ids(4), &p, &r3), Step::Wait(_)));
        // It answers (waiting to join, not Ready): add it as a learner.
        p[3].alive = true;
        p[3].ready = false;
        assert_eq!(step(5, 4, &ids(4), &p, &r3), Step::AddLearner { pod: "c-3".into(), id: 4 });
        // Learner behind: wait; caught up: promote.
        let r = raft(&[1, 2, 3], &[4], 1);
        p[3].applied = Some(20);
        assert!(matches!(step(5, 4, &ids(4), &p, &r), Step::Wait(w) if w.contains("catching up")));
        p[3].applied = Some(95);
        assert_eq!(step(5, 4, &ids(4), &p, &r), Step::Promote { pod: "c-3".into(), id: 4 });
        // Voter: grow again.
        let r4 = raft(&[1, 2, 3, 4], &[], 1);
        assert_eq!(step(5, 4, &ids(4), &pods(4), &r4), Step::Grow { replicas: 5 });
    }

    #[test]
    fn scale_down_moves_leadership_removes_then_shrinks() {
        let r5 = raft(&[1, 2, 3, 4, 5], &[], 5);
        assert!(matches!(step(3, 5, &ids(5), &pods(5), &r5), Step::TransferLeader { from: 5, to: Some(1), .. }));
        let r5 = raft(&[1, 2, 3, 4, 5], &[], 1);
        assert_eq!(step(3, 5, &ids(5), &pods(5), &r5), Step::Remove { pod: "c-4".into(), id: 5 });
        let r4 = raft(&[1, 2, 3, 4], &[], 1);
        assert_eq!(step(3, 5, &ids(5), &pods(5), &r4), Step::Shrink { replicas: 4, pod: "c-4".into() });
        let mut ids4 = ids(4);
        assert_eq!(step(3, 4, &ids4, &pods(4), &r4), Step::Remove { pod: "c-3".into(), id: 4 });
        ids4.remove("c-3");
        let r3 = raft(&[1, 2, 3], &[], 1);
        assert_eq!(step(3, 4, &ids4, &pods(4), &r3), Step::Shrink { replicas: 3, pod: "c-3".into() });
        assert_eq!(step(3, 3, &ids(3), &pods(3), &r3), Step::Settled);
    }

    #[test]
    fn a_restarting_pod_is_not_a_scale_down() {
        let r3 = raft(&[1, 2, 3], &[], 1);
        let mut p = pods(3);
        p[2].exists = false;
        p[2].ready = false;
        p[2].alive = false;
        let s = step(3, 3, &ids(3), &p, &r3);
        assert!(matches!(&s, Step::Wait(w) if w.contains("c-2")), "{s:?}");
        // Even a voter that is down stays a member: no Remove, no Shrink.
        p.truncate(2);
        assert!(matches!(step(3, 3, &ids(3), &p, &r3), Step::Wait(_)));
    }

    #[test]
    fn upgrades_replace_followers_first_and_the_leader_last() {
        let r3 = raft(&[1, 2, 3], &[], 2);
        let mut p = pods(3);
        for x in &mut p {
            x.updated = false;
        }
        assert_eq!(step(3, 3, &ids(3), &p, &r3), Step::Replace { pod: "c-2".into() });
        p[2].updated = true;
        assert_eq!(step(3, 3, &ids(3), &p, &r3), Step::Replace { pod: "c-0".into() });
        p[0].updated = true;
        assert!(matches!(step(3, 3, &ids(3), &p, &r3), Step::TransferLeader { from: 2, to: Some(1), .. }));
        let r3 = raft(&[1, 2, 3], &[], 1);
        assert_eq!(step(3, 3, &ids(3), &p, &r3), Step::Replace { pod: "c-1".into() });
    }

    #[test]
    fn upgrades_wait_while_a_member_is_unhealthy() {
        let r3 = raft(&[1, 2, 3], &[], 1);
        let mut p = pods(3);
        p[0].updated = false;
        p[1].ready = false;
        assert!(matches!(step(3, 3, &ids(3), &p, &r3), Step::Wait(w) if w.contains("c-1")));
    }

    /// 3 → 1 with config-1 down: removing config-2 would leave a joint configuration needing
    /// config-1, and writes stalled. No voter is removed until every voter that stays is Ready
    /// and caught up; the wait names the member.
    #[test]
    fn scale_down_never_removes_a_voter_while_a_staying_voter_is_down() {
        let r3 = raft(&[1, 2, 3], &[], 1);
        let mut p = pods(3);
        p[1].ready = false;
        let s = step(1, 3, &ids(3), &p, &r3);
        assert!(matches!(&s, Step::Wait(w) if w.contains("only 1 are: c-1 (node 2) is not ready")), "{s:?}");
        // Behind instead of down: still waits.
        p[1].ready = true;
        p[1].applied = Some(10);
        let s = step(1, 3, &ids(3), &p, &r3);
        assert!(matches!(&s, Step::Wait(w) if w.contains("is behind")), "{s:?}");
        // 5 → 3 with config-1 (which stays for good) down: waits even with a majority left.
        let r5 = raft(&[1, 2, 3, 4, 5], &[], 1);
        let mut p5 = pods(5);
        p5[1].ready = false;
        let s = step(3, 5, &ids(5), &p5, &r5);
        assert!(matches!(&s, Step::Wait(w) if w.contains("c-1 (node 2) is not ready, and it stays")), "{s:?}");
        // The leader leaving is not handed over either while a staying voter is down.
        p[1].applied = Some(100);
        p[1].ready = false;
        let r3 = raft(&[1, 2, 3], &[], 3);
        assert!(matches!(step(1, 3, &ids(3), &p, &r3), Step::Wait(_)));
        // Healthy again: the removal goes ahead.
        p[1].ready = true;
        let r3 = raft(&[1, 2, 3], &[], 1);
        assert_eq!(step(1, 3, &ids(3), &p, &r3), Step::Remove { pod: "c-2".into(), id: 3 });
        // The member being removed may itself be down.
        p[2].ready = false;
        assert_eq!(step(1, 3, &ids(3), &p, &r3), Step::Remove { pod: "c-2".into(), id: 3 });
    }

    /// 5 → 3 with config-3 (leaving too) dead: removing config-4 is safe (0, 1, 2 are a
    /// majority of both groups) and must not wait for config-3; a learner is removed at once.
    #[test]
    fn members_that_leave_anyway_do_not_block_a_scale_down() {
        let r5 = raft(&[1, 2, 3, 4, 5], &[], 1);
        let mut p = pods(5);
        p[3].ready = false;
        p[3].alive = false;
        assert_eq!(step(3, 5, &ids(5), &p, &r5), Step::Remove { pod: "c-4".into(), id: 5 });
        let r = raft(&[1, 2, 3, 4], &[5], 1);
        p[1].ready = false;
        assert_eq!(step(3, 5, &ids(5), &p, &r), Step::Remove { pod: "c-4".into(), id: 5 }, "a learner leaves at once");
    }

    #[test]
    fn a_stray_is_not_removed_while_a_member_that_stays_is_down() {
        let r = raft(&[1, 2, 3, 9], &[], 1);
        let mut p = pods(3);
        p[2].ready = false;
        assert!(matches!(step(3, 3, &ids(3), &p, &r), Step::Wait(w) if w.contains("stray node 9")));
    }

    #[test]
    fn a_member_of_no_ordinal_is_removed() {
        let r = raft(&[1, 2, 3, 9], &[], 1);
        assert_eq!(step(3, 3, &ids(3), &pods(3), &r), Step::Remove { pod: String::new(), id: 9 });
    }

    #[test]
    fn a_lost_volume_leaves_the_group_then_rejoins_under_a_fresh_id() {
        let mut p = pods(3);
        p[1].alive = false;
        p[1].ready = false;
        p[1].data_lost = Some(2);
        // Node 2 is still a voter: it leaves the group first (never re-added under id 2).
        let r3 = raft(&[1, 2, 3], &[], 1);
        assert_eq!(step(3, 3, &ids(3), &p, &r3), Step::RemoveLost { pod: "c-1".into(), id: 2 });
        // Gone from the group: the ordinal is given a new id and restarted.
        let r2 = raft(&[1, 3], &[], 1);
        assert_eq!(step(3, 3, &ids(3), &p, &r2), Step::ReplaceLost { pod: "c-1".into(), lost: 2 });
        // The pod still runs the old assignment after the ledger moved on: restart it again.
        let mut moved = ids(3);
        moved.insert("c-1".into(), 4);
        assert_eq!(step(3, 3, &moved, &p, &r2), Step::ReplaceLost { pod: "c-1".into(), lost: 2 });
        // Restarted under id 4 and waiting to join: added like any new member, never as node 2.
        p[1].data_lost = None;
        p[1].alive = true;
        assert_eq!(step(3, 3, &moved, &p, &r2), Step::AddLearner { pod: "c-1".into(), id: 4 });
    }

    #[test]
    fn nothing_happens_without_a_leader() {
        let o =
            Observation { desired: 5, sts_replicas: Some(3), ids: &ids(3), pods: &pods(3), raft: None, max_lag: 10 };
        assert!(matches!(next_step(&o), Step::Wait(_)));
    }
}
