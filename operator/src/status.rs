//! Status computation (pure): conditions `Available`, `Progressing`, `Degraded`, `InvalidSpec`
//! and the phase, from the outcome of a reconcile and the observed StatefulSet. A condition's
//! `lastTransitionTime` moves only when its status changes; [`transitions`] lists the changes so
//! the reconciler can publish an Event for each.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::{ConfmanCluster, ConfmanClusterStatus, EffectiveTuning};

/// Condition types.
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
        tuning: EffectiveTuning,
        /// Progressing reason and message of the membership step, None when settled.
        progress: Option<(&'static str, String)>,
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
    /// Pods at the current template revision.
    pub updated: i32,
    /// The StatefulSet controller has seen its latest spec.
    pub settled: bool,
}

impl Observed {
    /// Reads a StatefulSet's status (absent: nothing observed yet).
    pub fn of(sts: Option<&StatefulSet>) -> Observed {
        let Some(sts) = sts else { return Observed::default() };
        let st = sts.status.clone().unwrap_or_default();
        let revisions_equal = st.current_revision.is_some() && st.current_revision == st.update_revision;
        Observed {
            replicas: st.replicas,
            ready: st.ready_replicas.unwrap_or(0),
            updated: st.updated_replicas.unwrap_or(0),
            settled: st.observed_generation.is_some()
                && st.observed_generation == sts.metadata.generation
                && revisions_equal,
        }
    }
}

fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    Condition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
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
            condition(INVALID_SPEC, false, "Valid", String::new(), generation, &now),
            condition(PROGRESSING, false, "Paused", "spec.paused is true: nothing is changed".into(), generation, &now),
            condition(DEGRADED, false, "Paused", String::new(), generation, &now),
            "Paused",
        ),
        Outcome::Failed { message } => (
            condition(INVALID_SPEC, false, "Valid", String::new(), generation, &now),
            condition(PROGRESSING, true, "Retrying", "applying the children failed; retrying".into(), generation, &now),
            condition(DEGRADED, true, "ApplyFailed", message.clone(), generation, &now),
            "Degraded",
        ),
        Outcome::Applied { progress, .. } => {
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
            (
                condition(INVALID_SPEC, false, "Valid", String::new(), generation, &now),
                condition(PROGRESSING, prog, reason, msg, generation, &now),
                condition(
                    DEGRADED,
                    unready,
                    if unready { "MembersUnready" } else { "AllMembersReady" },
                    ready_msg,
                    generation,
                    &now,
                ),
                if bootstrapping {
                    "Creating"
                } else if unready {
                    "Degraded"
                } else {
                    "Running"
                },
            )
        }
    };
    conditions.extend([progressing, degraded, invalid]);
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
    }
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
    use crate::builders::fixtures::cluster;
    use crate::crd::PayloadClassSpec;

    fn at(secs: i64) -> Time {
        Time(jiff::Timestamp::from_second(secs).unwrap_or_default())
    }

    fn get<'a>(s: &'a ConfmanClusterStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap_or_else(|| panic!("no {t} condition"))
    }

    fn applied() -> Outcome {
        Outcome::Applied { tuning: PayloadClassSpec::Small.into_tuning().into(), progress: None }
    }

    fn ready(n: i32) -> Observed {
        Observed { replicas: 3, ready: n, updated: 3, settled: true }
    }

    #[test]
    fn a_new_cluster_is_creating_then_available_then_degraded() {
        let mut c = cluster(3, PayloadClassSpec::Small);
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
        assert_eq!(changed, vec![AVAILABLE, PROGRESSING]);
        c.status = Some(s2);

        let s3 = next_status(&c, &applied(), ready(2), at(300));
        assert_eq!((s3.phase.as_deref(), get(&s3, DEGRADED).reason.as_str()), (Some("Degraded"), "MembersUnready"));
        assert_eq!(get(&s3, AVAILABLE).status, "True", "2 of 3 is a quorum");
        assert_eq!(get(&s3, AVAILABLE).last_transition_time, at(200));
        assert!(transitions(c.status.as_ref(), &s3).iter().all(|c| c.type_ == DEGRADED));
    }

    #[test]
    fn invalid_spec_keeps_the_rolled_out_tuning_and_warns() {
        let mut c = cluster(3, PayloadClassSpec::Small);
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
        let mut c = cluster(3, PayloadClassSpec::Small);
        c.status = Some(next_status(&c, &applied(), ready(3), at(100)));
        c.metadata.generation = Some(5);
        let s = next_status(&c, &Outcome::Paused, ready(3), at(200));
        assert_eq!((s.phase.as_deref(), s.observed_generation), (Some("Paused"), Some(1)));
        assert_eq!(get(&s, PROGRESSING).reason, "Paused");
    }

    #[test]
    fn a_rollout_and_a_membership_step_are_progress() {
        let mut c = cluster(3, PayloadClassSpec::Small);
        c.status = Some(next_status(&c, &applied(), ready(3), at(100)));
        let rolling = Observed { updated: 1, ..ready(3) };
        assert_eq!(get(&next_status(&c, &applied(), rolling, at(200)), PROGRESSING).reason, "RollingOut");
        let step = Outcome::Applied {
            tuning: PayloadClassSpec::Small.into_tuning().into(),
            progress: Some(("ScalingDown", "removed config-4".into())),
        };
        let s = next_status(&c, &step, ready(3), at(200));
        let p = get(&s, PROGRESSING);
        assert_eq!(
            (p.status.as_str(), p.reason.as_str(), p.message.as_str()),
            ("True", "ScalingDown", "removed config-4")
        );
    }
}
