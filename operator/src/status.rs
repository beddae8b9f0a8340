//! Status computation (pure): conditions `Ready`, `Available`, `Progressing`, `Degraded`,
//! `InvalidSpec`, the phase and the pods' selector, from the outcome of a reconcile and the
//! observed StatefulSet; the members from the group's report ([`members`]). A condition's
//! `lastTransitionTime` moves only when its status changes; [`transitions`] lists the changes so
//! the reconciler can publish an Event for each. Every condition carries a non-empty message:
//! kube-apiserver 1.20's server-side apply of a custom resource's status turns an empty
//! `message` into null and then refuses it (`must be of type string`, 422).

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::Resource;

use std::collections::BTreeMap;

use crate::crd::{ConfmanCluster, ConfmanClusterStatus, MemberStatus, Tuning};
use crate::membership_step::{PodView, RaftView};

/// Condition type GitOps tools (Argo CD, Flux) and `kubectl wait --for=condition=Ready` wait
/// for: True when the cluster serves (`Available`), the latest spec is observed and fully
/// rolled out (not `Progressing`), every member is Ready (not `Degraded`) and the spec is valid.
pub const READY: &str = "Ready";
/// Condition type: a quorum of members is Ready, so the cluster serves reads and writes.
pub const AVAILABLE: &str = "Available";
/// Condition types.
pub const PROGRESSING: &str = "Progressing";
/// Condition types.
pub const DEGRADED: &str = "Degraded";
/// Condition types.
pub const INVALID_SPEC: &str = "InvalidSpec";

/// What this reconcile did.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Children applied with this tuning; `progress` names the membership step under way.
    Applied {
        /// Tuning rolled out.
        tuning: Tuning,
        /// Progressing reason and message of the membership step, None when settled.
        progress: Option<(&'static str, String)>,
        /// A part of the spec held back (Degraded reason and message) while the rest was
        /// applied: a change Kubernetes refuses, such as the volume claim template.
        held: Option<(&'static str, String)>,
    },
    /// The spec was refused; nothing was changed.
    InvalidSpec {
        /// Machine-readable reason.
        reason: &'static str,
        /// What is wrong, naming the rule and values.
        message: String,
    },
    /// `spec.paused`: nothing was changed.
    Paused,
    /// Applying the children failed.
    Failed {
        /// The error.
        message: String,
    },
}

/// What the StatefulSet reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Observed {
    /// Pods that exist.
    pub replicas: i32,
    /// Pods that are Ready.
    pub ready: i32,
    /// Pods at the latest template revision (`status.updateRevision`).
    pub updated: i32,
    /// The StatefulSet controller has seen its latest spec.
    pub settled: bool,
}

/// `status.updateRevision` of a StatefulSet, only once its controller has observed the latest
/// spec (`status.observedGeneration == metadata.generation`): until then it names the previous
/// template, and pods still on that template would pass for updated. None when not yet trusted.
pub fn trusted_update_revision(sts: &StatefulSet) -> Option<&str> {
    let st = sts.status.as_ref()?;
    let seen = st.observed_generation.is_some() && st.observed_generation == sts.metadata.generation;
    if seen { st.update_revision.as_deref() } else { None }
}

/// Longest Event note the API accepts (events.k8s.io/v1 `note`: 1 KiB).
pub const MAX_NOTE_BYTES: usize = 1024;
/// Longest Event reason the API accepts.
pub const MAX_REASON_CHARS: usize = 128;

/// An Event note the API server accepts: at most [`MAX_NOTE_BYTES`] bytes, cut on a character
/// boundary and ended with `…` when shortened (an over-long note makes the whole Event be
/// refused, and cutting inside a UTF-8 character would not be a string).
pub fn event_note(note: &str) -> String {
    if note.len() <= MAX_NOTE_BYTES {
        return note.to_string();
    }
    const ELLIPSIS: char = '…';
    let mut end = MAX_NOTE_BYTES - ELLIPSIS.len_utf8();
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{ELLIPSIS}", note[..end].trim_end())
}

/// An Event reason: UpperCamelCase ASCII (`kubectl get events` shows it as a word), at most
/// [`MAX_REASON_CHARS`] characters; words split at anything else are joined capitalised, and
/// nothing left gives `Unknown`.
pub fn event_reason(reason: &str) -> String {
    let mut out = String::new();
    for word in reason.split(|ch: char| !ch.is_ascii_alphanumeric()).filter(|w| !w.is_empty()) {
        let mut chars = word.chars();
        out.extend(chars.next().map(|f| f.to_ascii_uppercase()));
        out.extend(chars);
    }
    out.truncate(MAX_REASON_CHARS);
    if out.is_empty() { "Unknown".to_string() } else { out }
}

impl Observed {
    /// Reads a StatefulSet's status (absent: nothing observed yet). Whether the pods are current
    /// is judged by `updatedReplicas` alone, never by `currentRevision == updateRevision`: with
    /// the `OnDelete` strategy the StatefulSet controller never advances `currentRevision`
    /// (kubernetes/kubernetes#73492), so that comparison would report a rollout forever.
    /// `updatedReplicas` counts pods at `updateRevision`, which is the latest template's only
    /// once the controller observed the latest generation: before that no pod counts as updated.
    pub fn of(sts: Option<&StatefulSet>) -> Observed {
        let Some(sts) = sts else { return Observed::default() };
        let st = sts.status.clone().unwrap_or_default();
        let settled = st.observed_generation.is_some() && st.observed_generation == sts.metadata.generation;
        Observed {
            replicas: st.replicas,
            ready: st.ready_replicas.unwrap_or(0),
            updated: if settled { st.updated_replicas.unwrap_or(0) } else { 0 },
            settled,
        }
    }
}

/// `status.members` and `status.leader` from the group as its leader reports it (`raft`): each
/// member's pod by the ledger's `ids`, its health by the pod. Empty without a leader's report.
pub fn members(
    raft: Option<&RaftView>,
    ids: &BTreeMap<String, u64>,
    pods: &[PodView],
    max_lag: u64,
) -> (Vec<MemberStatus>, Option<String>) {
    let Some(r) = raft else { return (Vec::new(), None) };
    let pod_of = |id: u64| ids.iter().find(|(_, i)| **i == id).map(|(p, _)| p.clone());
    let members = r
        .members
        .iter()
        .map(|(id, voter)| {
            let pod = pod_of(*id).unwrap_or_default();
            let view = pods.iter().find(|v| v.name == pod);
            MemberStatus {
                id: *id,
                pod,
                role: if *voter { "voter" } else { "learner" }.into(),
                healthy: view.is_some_and(|v| v.ready),
                // Only while it lags: a caught-up member's index moves with every write, and a
                // status that changes with every write re-triggers the reconcile for ever.
                applied_index: view.and_then(|v| v.applied).filter(|a| a + max_lag < r.commit_index),
            }
        })
        .collect();
    (members, r.leader.and_then(pod_of))
}

/// A condition; an empty `message` is replaced by `"<type> is <status>: <reason>"` so none is
/// ever sent empty (see the module docs).
fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let status = if status { "True" } else { "False" };
    let message = if message.trim().is_empty() { format!("{type_} is {status}: {reason}") } else { message };
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: now.clone(),
    }
}

/// Keeps the old `lastTransitionTime` where the status did not change.
fn carry_transition_times(old: &[Condition], new: &mut [Condition]) {
    for n in new.iter_mut() {
        if let Some(o) = old.iter().find(|o| o.type_ == n.type_ && o.status == n.status) {
            n.last_transition_time = o.last_transition_time.clone();
        }
    }
}

/// Message of `InvalidSpec=False`.
const SPEC_VALID: &str = "the spec passed validation";

/// The status after a reconcile.
pub fn next_status(c: &ConfmanCluster, outcome: &Outcome, observed: Observed, now: Time) -> ConfmanClusterStatus {
    let old = c.status.clone().unwrap_or_default();
    let generation = c.metadata.generation;
    let desired = c.spec.replicas;
    let quorum = desired / 2 + 1;
    let was_available = old.phase.as_deref().is_some_and(|p| p != "Creating" && p != "Invalid")
        || old.conditions.iter().any(|x| x.type_ == AVAILABLE && x.status == "True");

    let available = observed.ready >= quorum;
    let ready_msg = format!("{} of {desired} members ready (quorum {quorum})", observed.ready);
    let mut conditions = vec![condition(
        AVAILABLE,
        available,
        if available { "QuorumReady" } else { "QuorumNotReady" },
        ready_msg.clone(),
        generation,
        &now,
    )];
    let (invalid, progressing, degraded, phase) = match outcome {
        Outcome::InvalidSpec { reason, message } => (
            condition(INVALID_SPEC, true, reason, message.clone(), generation, &now),
            condition(PROGRESSING, false, "InvalidSpec", "fix the spec to resume".into(), generation, &now),
            condition(DEGRADED, false, "InvalidSpec", "the last valid spec keeps running".into(), generation, &now),
            "Invalid",
        ),
        Outcome::Paused => (
            condition(INVALID_SPEC, false, "Valid", SPEC_VALID.into(), generation, &now),
            condition(PROGRESSING, false, "Paused", "spec.paused is true: nothing is changed".into(), generation, &now),
            condition(DEGRADED, false, "Paused", format!("not assessed while paused; {ready_msg}"), generation, &now),
            "Paused",
        ),
        Outcome::Failed { message } => (
            condition(INVALID_SPEC, false, "Valid", SPEC_VALID.into(), generation, &now),
            condition(PROGRESSING, true, "Retrying", "applying the children failed; retrying".into(), generation, &now),
            condition(DEGRADED, true, "ApplyFailed", message.clone(), generation, &now),
            "Degraded",
        ),
        Outcome::Applied { progress, held, .. } => {
            let (prog, reason, msg) = if !was_available && !available {
                (true, "Bootstrapping", ready_msg.clone())
            } else if let Some((reason, message)) = progress {
                (true, *reason, message.clone())
            } else if !observed.settled || observed.replicas != desired || observed.updated < desired {
                (true, "RollingOut", format!("{} of {desired} members updated", observed.updated))
            } else {
                (false, "Stable", ready_msg.clone())
            };
            let bootstrapping = reason == "Bootstrapping";
            let unready = observed.ready < desired && !bootstrapping;
            let degraded = match held {
                Some((reason, message)) => condition(DEGRADED, true, reason, message.clone(), generation, &now),
                None => condition(
                    DEGRADED,
                    unready,
                    if unready { "MembersUnready" } else { "AllMembersReady" },
                    ready_msg,
                    generation,
                    &now,
                ),
            };
            (
                condition(INVALID_SPEC, false, "Valid", SPEC_VALID.into(), generation, &now),
                condition(PROGRESSING, prog, reason, msg, generation, &now),
                degraded,
                if bootstrapping {
                    "Creating"
                } else if unready || held.is_some() {
                    "Degraded"
                } else {
                    "Running"
                },
            )
        }
    };
    conditions.extend([progressing, degraded, invalid]);
    let paused_behind = matches!(outcome, Outcome::Paused) && old.observed_generation != generation;
    let ready = ready_condition(&conditions, paused_behind, generation, &now);
    conditions.insert(0, ready);
    carry_transition_times(&old.conditions, &mut conditions);

    let (observed_generation, effective_tuning) = match outcome {
        Outcome::Applied { tuning, .. } => (generation, Some(*tuning)),
        Outcome::InvalidSpec { .. } | Outcome::Failed { .. } => (generation, old.effective_tuning),
        Outcome::Paused => (old.observed_generation, old.effective_tuning),
    };
    ConfmanClusterStatus {
        observed_generation,
        ready_replicas: observed.ready,
        members: old.members,
        leader: old.leader,
        effective_tuning,
        conditions,
        phase: Some(phase.into()),
        selector: Some(crate::builders::selector_string(c)),
    }
}

/// `Ready`: True only when nothing holds it back; otherwise False naming the first thing that
/// does (in the order a user would fix them) with that condition's message.
/// `paused_behind`: paused with a spec generation that was never rolled out.
fn ready_condition(others: &[Condition], paused_behind: bool, generation: Option<i64>, now: &Time) -> Condition {
    let get = |t: &str| others.iter().find(|x| x.type_ == t);
    let holding = |t: &str, status: &str| get(t).filter(|x| x.status == status).map(|x| x.message.clone());
    let blocked = holding(INVALID_SPEC, "True")
        .map(|m| ("InvalidSpec", m))
        .or_else(|| holding(AVAILABLE, "False").map(|m| ("NotAvailable", m)))
        .or_else(|| {
            paused_behind.then(|| ("Paused", "spec.paused is true and the latest spec is not rolled out".to_string()))
        })
        .or_else(|| holding(DEGRADED, "True").map(|m| ("Degraded", m)))
        .or_else(|| holding(PROGRESSING, "True").map(|m| ("Progressing", m)));
    match blocked {
        Some((reason, message)) => condition(READY, false, reason, message, generation, now),
        None => {
            let message = get(AVAILABLE).map(|a| a.message.clone()).unwrap_or_default();
            condition(READY, true, "Ready", message, generation, now)
        }
    }
}

/// The body of the server-side apply on the status subresource that writes `status`.
pub fn status_apply_body(status: &ConfmanClusterStatus) -> Result<serde_json::Value, serde_json::Error> {
    Ok(serde_json::json!({
        "apiVersion": ConfmanCluster::api_version(&()),
        "kind": ConfmanCluster::kind(&()),
        "status": serde_json::to_value(status)?,
    }))
}

/// Conditions whose status changed between `old` and `new` (new value), for Events.
pub fn transitions<'a>(old: Option<&ConfmanClusterStatus>, new: &'a ConfmanClusterStatus) -> Vec<&'a Condition> {
    new.conditions
        .iter()
        .filter(|n| {
            let before = old.and_then(|o| o.conditions.iter().find(|x| x.type_ == n.type_));
            match before {
                Some(b) => b.status != n.status,
                // First status: report only what is noteworthy.
                None => n.status == "True" && n.type_ != DEGRADED,
            }
        })
        .collect()
}

/// Whether a condition going to this status deserves a Warning rather than a Normal event.
pub fn is_warning(c: &Condition) -> bool {
    matches!((c.type_.as_str(), c.status.as_str()), (DEGRADED, "True") | (INVALID_SPEC, "True") | (AVAILABLE, "False"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::PayloadClass;
    use crate::fixtures::cluster;

    fn at(secs: i64) -> Time {
        Time(jiff::Timestamp::from_second(secs).unwrap_or_default())
    }

    fn get<'a>(s: &'a ConfmanClusterStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap_or_else(|| panic!("no {t} condition"))
    }

    fn applied() -> Outcome {
        Outcome::Applied { tuning: PayloadClass::Small.tuning(), progress: None, held: None }
    }

    fn ready(n: i32) -> Observed {
        Observed { replicas: 3, ready: n, updated: 3, settled: true }
    }

    #[test]
    fn a_new_cluster_is_creating_then_available_then_degraded() {
        let mut c = cluster(3, PayloadClass::Small);
        let s1 = next_status(&c, &applied(), ready(0), at(100));
        assert_eq!(s1.phase.as_deref(), Some("Creating"));
        assert_eq!(
            (get(&s1, AVAILABLE).status.as_str(), get(&s1, PROGRESSING).reason.as_str()),
            ("False", "Bootstrapping")
        );
        assert_eq!(get(&s1, DEGRADED).status, "False", "bootstrapping is not degraded");
        c.status = Some(s1.clone());

        let s2 = next_status(&c, &applied(), ready(3), at(200));
        assert_eq!(s2.phase.as_deref(), Some("Running"));
        assert_eq!(get(&s2, AVAILABLE).status, "True");
        assert_eq!(get(&s2, AVAILABLE).last_transition_time, at(200));
        assert_eq!(get(&s2, INVALID_SPEC).last_transition_time, at(100), "unchanged status keeps its time");
        let changed: Vec<_> = transitions(Some(&s1), &s2).iter().map(|c| c.type_.clone()).collect();
        assert_eq!(changed, vec![READY, AVAILABLE, PROGRESSING]);
        c.status = Some(s2);

        let s3 = next_status(&c, &applied(), ready(2), at(300));
        assert_eq!((s3.phase.as_deref(), get(&s3, DEGRADED).reason.as_str()), (Some("Degraded"), "MembersUnready"));
        assert_eq!(get(&s3, AVAILABLE).status, "True", "2 of 3 is a quorum");
        assert_eq!(get(&s3, AVAILABLE).last_transition_time, at(200));
        let changed: Vec<_> = transitions(c.status.as_ref(), &s3).iter().map(|c| c.type_.clone()).collect();
        assert_eq!(changed, vec![READY, DEGRADED]);
    }

    #[test]
    fn invalid_spec_keeps_the_rolled_out_tuning_and_warns() {
        let mut c = cluster(3, PayloadClass::Small);
        c.status = Some(next_status(&c, &applied(), ready(3), at(100)));
        c.metadata.generation = Some(2);
        let s = next_status(
            &c,
            &Outcome::InvalidSpec { reason: "InvalidTuning", message: "spec.tuning.heartbeatMs violates x".into() },
            ready(3),
            at(200),
        );
        let inv = get(&s, INVALID_SPEC);
        assert_eq!((inv.status.as_str(), inv.reason.as_str()), ("True", "InvalidTuning"));
        assert!(inv.message.contains("heartbeatMs"));
        assert!(is_warning(inv));
        assert_eq!(s.effective_tuning, c.status.as_ref().and_then(|s| s.effective_tuning));
        assert_eq!(s.observed_generation, Some(2));
    }

    #[test]
    fn paused_keeps_the_observed_generation() {
        let mut c = cluster(3, PayloadClass::Small);
        c.status = Some(next_status(&c, &applied(), ready(3), at(100)));
        c.metadata.generation = Some(5);
        let s = next_status(&c, &Outcome::Paused, ready(3), at(200));
        assert_eq!((s.phase.as_deref(), s.observed_generation), (Some("Paused"), Some(1)));
        assert_eq!(get(&s, PROGRESSING).reason, "Paused");
    }

    #[test]
    fn a_rollout_and_a_membership_step_are_progress() {
        let mut c = cluster(3, PayloadClass::Small);
        c.status = Some(next_status(&c, &applied(), ready(3), at(100)));
        let rolling = Observed { updated: 1, ..ready(3) };
        assert_eq!(get(&next_status(&c, &applied(), rolling, at(200)), PROGRESSING).reason, "RollingOut");
        let step = Outcome::Applied {
            tuning: PayloadClass::Small.tuning(),
            progress: Some(("ScalingDown", "removed config-4".into())),
            held: None,
        };
        let s = next_status(&c, &step, ready(3), at(200));
        let p = get(&s, PROGRESSING);
        assert_eq!(
            (p.status.as_str(), p.reason.as_str(), p.message.as_str()),
            ("True", "ScalingDown", "removed config-4")
        );
    }

    /// One outcome of every variant (the `match` stops compiling when a variant is added, the
    /// count check when one is left out), plus the cases whose message could come out empty.
    fn every_outcome() -> Vec<Outcome> {
        let tuning: Tuning = PayloadClass::Small.tuning();
        let all = vec![
            Outcome::Applied { tuning, progress: None, held: None },
            Outcome::Applied {
                tuning,
                progress: Some(("ScalingUp", "added config-3 as a learner".into())),
                held: None,
            },
            Outcome::Applied { tuning, progress: Some(("WaitingForMembers", String::new())), held: None },
            Outcome::InvalidSpec { reason: "InvalidReplicas", message: "spec.replicas is 4".into() },
            Outcome::InvalidSpec { reason: "InvalidReplicas", message: " ".into() },
            Outcome::Paused,
            Outcome::Failed { message: "kubernetes api: 500".into() },
            Outcome::Failed { message: String::new() },
        ];
        let variants: std::collections::BTreeSet<u8> = all
            .iter()
            .map(|o| match o {
                Outcome::Applied { .. } => 0,
                Outcome::InvalidSpec { .. } => 1,
                Outcome::Paused => 2,
                Outcome::Failed { .. } => 3,
            })
            .collect();
        assert_eq!(variants.len(), 4, "every Outcome variant is exercised");
        all
    }

    #[test]
    fn every_condition_of_every_outcome_is_sent_with_a_message() -> Result<(), serde_json::Error> {
        let fresh = cluster(3, PayloadClass::Small);
        let mut running = fresh.clone();
        running.status = Some(next_status(&running, &applied(), ready(3), at(100)));
        let observations = [ready(0), ready(2), ready(3), Observed { updated: 1, settled: false, ..ready(3) }];
        for outcome in every_outcome() {
            for c in [&fresh, &running] {
                for observed in observations {
                    let body = status_apply_body(&next_status(c, &outcome, observed, at(200)))?;
                    assert_eq!(body["kind"], "ConfmanCluster");
                    let conditions = body["status"]["conditions"].as_array().cloned().unwrap_or_default();
                    let types: Vec<&str> = conditions.iter().filter_map(|c| c["type"].as_str()).collect();
                    assert_eq!(types, [READY, AVAILABLE, PROGRESSING, DEGRADED, INVALID_SPEC], "{outcome:?}");
                    for cond in &conditions {
                        let message = cond["message"].as_str();
                        assert!(
                            message.is_some_and(|m| !m.trim().is_empty()),
                            "{outcome:?} / {observed:?}: {} has message {}",
                            cond["type"],
                            cond["message"]
                        );
                        assert!(cond["reason"].as_str().is_some_and(|r| !r.is_empty()), "{cond}");
                    }
                }
            }
        }
        Ok(())
    }

    #[test]
    fn an_empty_message_names_the_condition_and_its_reason() {
        let c = cluster(3, PayloadClass::Small);
        let s = next_status(&c, &Outcome::Failed { message: String::new() }, ready(3), at(100));
        assert_eq!(get(&s, DEGRADED).message, "Degraded is True: ApplyFailed");
        assert_eq!(get(&s, INVALID_SPEC).message, SPEC_VALID);
    }

    #[test]
    fn status_conventions_ready_condition_beside_available() {
        let mut c = cluster(3, PayloadClass::Small);
        let creating = next_status(&c, &applied(), ready(0), at(100));
        assert_eq!(
            (get(&creating, READY).status.as_str(), get(&creating, READY).reason.as_str()),
            ("False", "NotAvailable")
        );
        c.status = Some(creating);
        let running = next_status(&c, &applied(), ready(3), at(200));
        let r = get(&running, READY);
        assert_eq!((r.status.as_str(), r.reason.as_str()), ("True", "Ready"));
        assert_eq!(r.observed_generation, Some(1));
        c.status = Some(running);
        // Available but not Ready: a rollout, an unready member, a refused spec.
        let rolling = next_status(&c, &applied(), Observed { updated: 1, ..ready(3) }, at(300));
        assert_eq!((get(&rolling, AVAILABLE).status.as_str(), get(&rolling, READY).status.as_str()), ("True", "False"));
        assert_eq!(get(&rolling, READY).reason, "Progressing");
        let degraded = next_status(&c, &applied(), ready(2), at(300));
        assert_eq!(
            (get(&degraded, AVAILABLE).status.as_str(), get(&degraded, READY).reason.as_str()),
            ("True", "Degraded")
        );
        let invalid = Outcome::InvalidSpec { reason: "InvalidReplicas", message: "spec.replicas is 4".into() };
        let refused = next_status(&c, &invalid, ready(3), at(300));
        assert_eq!(
            (
                get(&refused, READY).status.as_str(),
                get(&refused, READY).reason.as_str(),
                get(&refused, READY).message.as_str()
            ),
            ("False", "InvalidSpec", "spec.replicas is 4")
        );
        // Paused: Ready while the latest spec is the one running, not once a new one waits.
        assert_eq!(get(&next_status(&c, &Outcome::Paused, ready(3), at(300)), READY).status, "True");
        c.metadata.generation = Some(2);
        let behind = next_status(&c, &Outcome::Paused, ready(3), at(300));
        assert_eq!((get(&behind, READY).status.as_str(), get(&behind, READY).reason.as_str()), ("False", "Paused"));
    }

    #[test]
    fn status_conventions_selector_names_the_pods_for_the_scale_subresource() {
        let c = cluster(3, PayloadClass::Small);
        let s = next_status(&c, &applied(), ready(3), at(100));
        assert_eq!(s.selector.as_deref(), Some("app.kubernetes.io/instance=config,app.kubernetes.io/name=confman"));
        let body = status_apply_body(&s).unwrap_or_default();
        assert_eq!(body["status"]["selector"], s.selector.as_deref().unwrap_or_default());
    }

    #[test]
    fn status_conventions_event_notes_fit_in_1_kib_and_reasons_are_words() {
        assert_eq!(event_note("short"), "short");
        let exact = "a".repeat(MAX_NOTE_BYTES);
        assert_eq!(event_note(&exact), exact);
        // Multi-byte characters straddling the limit: cut before them, never inside.
        for long in ["é".repeat(700), format!("x{}", "日本".repeat(400)), "🦀".repeat(300)] {
            let note = event_note(&long);
            assert!(note.len() <= MAX_NOTE_BYTES, "{} bytes", note.len());
            assert!(note.ends_with('…'), "{note}");
            let kept = note.trim_end_matches('…');
            assert!(long.starts_with(kept), "a prefix of the original");
            assert!(note.len() > MAX_NOTE_BYTES - 8, "not cut shorter than needed: {}", note.len());
        }
        assert_eq!(event_reason("QuorumReady"), "QuorumReady");
        assert_eq!(event_reason("scaling down: config-4"), "ScalingDownConfig4");
        assert_eq!(event_reason(" - "), "Unknown");
        assert_eq!(event_reason(&"Long".repeat(100)).len(), MAX_REASON_CHARS);
    }

    #[test]
    fn status_conventions_update_revision_is_trusted_only_once_observed() {
        use k8s_openapi::api::apps::v1::StatefulSetStatus;
        let sts = |generation: i64, observed: Option<i64>| StatefulSet {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                generation: Some(generation),
                ..Default::default()
            },
            status: Some(StatefulSetStatus {
                observed_generation: observed,
                replicas: 3,
                ready_replicas: Some(3),
                updated_replicas: Some(3),
                update_revision: Some("config-6d9f".into()),
                ..StatefulSetStatus::default()
            }),
            ..StatefulSet::default()
        };
        assert_eq!(trusted_update_revision(&sts(2, Some(2))), Some("config-6d9f"));
        // A new template (generation 3) not yet seen: updateRevision still names the old one.
        for stale in [sts(3, Some(2)), sts(3, None)] {
            assert_eq!(trusted_update_revision(&stale), None);
            let o = Observed::of(Some(&stale));
            assert_eq!((o.settled, o.updated), (false, 0), "updatedReplicas counts the old template");
        }
        let mut c = cluster(3, PayloadClass::Small);
        c.status = Some(next_status(&c, &applied(), ready(3), at(100)));
        let s = next_status(&c, &applied(), Observed::of(Some(&sts(3, Some(2)))), at(200));
        assert_eq!((get(&s, PROGRESSING).reason.as_str(), get(&s, READY).status.as_str()), ("RollingOut", "False"));
    }

    #[test]
    fn an_on_delete_rollout_is_done_when_every_pod_runs_the_update_revision() {
        use k8s_openapi::api::apps::v1::StatefulSetStatus;
        // What a real StatefulSet with `OnDelete` reports after its pods were all replaced:
        // `currentRevision` stays at the old revision.
        let sts = |updated: i32| StatefulSet {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                generation: Some(2),
                ..Default::default()
            },
            status: Some(StatefulSetStatus {
                observed_generation: Some(2),
                replicas: 3,
                ready_replicas: Some(3),
                updated_replicas: Some(updated),
                current_revision: Some("config-6d9f".into()),
                update_revision: Some("config-7c4b".into()),
                ..StatefulSetStatus::default()
            }),
            ..StatefulSet::default()
        };
        let mut c = cluster(3, PayloadClass::Small);
        c.status = Some(next_status(&c, &applied(), ready(3), at(100)));
        let done = next_status(&c, &applied(), Observed::of(Some(&sts(3))), at(200));
        assert_eq!((done.phase.as_deref(), get(&done, PROGRESSING).reason.as_str()), (Some("Running"), "Stable"));
        let partway = next_status(&c, &applied(), Observed::of(Some(&sts(2))), at(200));
        assert_eq!(get(&partway, PROGRESSING).reason, "RollingOut");
        // A spec the StatefulSet controller has not seen yet is not settled either.
        let mut unseen = sts(3);
        unseen.metadata.generation = Some(3);
        assert!(!Observed::of(Some(&unseen)).settled);
    }
}
