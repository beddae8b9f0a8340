//! Decide: from a [`Snapshot`], all that a reconcile will do — the credentials, the member
//! ledger, the children, the one membership step, the Events and the status — without I/O.
//! What is wrong with the spec, the credentials or the ledger is found here, before anything
//! is changed (only ownership conflicts surface while applying), and every decision can be
//! tested on a hand-made snapshot.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use super::Error;
use super::act::Done;
use super::observe::Snapshot;
use super::report::Notice;
use crate::builders::{self, Children, Inputs, template_annotation};
use crate::capabilities::Capabilities;
use crate::crd::{ConfmanCluster, ConfmanClusterStatus, MemberStatus, Tuning};
use crate::ledger::{Ledger, NEXT_ID_ANNOTATION};
use crate::membership_step::{Observation, Step, next_step};
use crate::status::{self, Observed, Outcome};
use crate::validate::{self, Applied, AppliedStorage, Invalid};

/// The spec checked against what the cluster already is. The ledger records whether the group
/// was created with TLS: the stand-in for CEL's `oldSelf` in the "tls cannot be added or
/// removed" rule (not enforced before 1.25); an unreadable ledger tells nothing here ([`plan`]
/// reports it). The storage rule's twin is applied in [`plan`], against the running
/// StatefulSet (held back, not refused).
pub fn validate(c: &ConfmanCluster, seen: &Snapshot) -> Result<Tuning, Invalid> {
    let tls = seen.ledger.as_ref().and_then(|cm| Ledger::parse(cm).ok()).and_then(|l| l.tls());
    validate::validate(&c.spec, &Applied { tls, storage: None })
}

/// What the operator presents to the members and trusts them by, from the Secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// The token presented to the members (the first of the token Secret's lines).
    pub presented: String,
    /// The value of a token Secret to create (a new cluster); None when it exists.
    pub new_token: Option<String>,
    /// The key of an admin key Secret to create (no `spec.auth` and no such Secret); None
    /// otherwise.
    pub new_admin_key: Option<String>,
    /// [`builders::credentials_hash`] of the token Secret's value and the API keys file; None
    /// when the API keys Secret of a running cluster is unreadable (`keys_problem`): the
    /// running pods keep the files they mounted, so the template keeps its hash.
    pub hash: Option<String>,
    /// Why the API keys Secret of a running cluster cannot be read.
    pub keys_problem: Option<String>,
    /// The CA the members' certificates are signed by (`ca.crt` of the TLS Secret), so the
    /// admin calls verify them; None without TLS.
    pub ca: Option<String>,
}

/// Decides [`Access`]. A cluster that has members (a StatefulSet or a ledger) never gets a new
/// token: running members would keep the old one and restarted ones get the new one.
pub fn access(c: &ConfmanCluster, seen: &Snapshot) -> Result<Access, Error> {
    let has_members = seen.statefulset.is_some() || seen.ledger.is_some();
    let (value, new_token) = match seen.token.as_ref().and_then(|s| s.data.as_ref()?.get(builders::TOKEN_KEY)) {
        Some(t) => (String::from_utf8_lossy(&t.0).trim().to_string(), None),
        None if has_members => return Err(Error::TokenLost { name: builders::token_name(c) }),
        None => match &seen.fresh_token {
            Some(token) => (token.clone(), Some(token.clone())),
            None => return Err(Error::TokenLost { name: builders::token_name(c) }),
        },
    };
    let presented = builders::presented_token(&value)
        .map_err(|reason| Error::TokenInvalid { name: builders::token_name(c), reason })?
        .to_string();
    let (keys, new_admin_key) = match (builders::user_keys_secret(c), &seen.api_keys, &seen.fresh_admin_key) {
        // No `spec.auth`: the generated admin key Secret, created when missing. A deleted one is
        // generated anew (the members roll to the new key): a person deletes it to rotate the key.
        (None, None, Some(key)) => (Ok(builders::admin_keys_file(key).into_bytes()), Some(key.clone())),
        _ => (api_keys(c, seen.api_keys.as_ref()), None),
    };
    let (hash, keys_problem) = match keys {
        Ok(keys) => (Some(builders::credentials_hash(value.as_bytes(), Some(&keys))), None),
        // Running members need nothing from it until they restart: the rest of the reconcile
        // (dead members, lost volumes, scaling, status) goes on, and Degraded says what is wrong.
        Err(e) if has_members => (None, Some(e.to_string())),
        Err(e) => return Err(e),
    };
    Ok(Access { presented, new_token, new_admin_key, hash, keys_problem, ca: tls_ca(c, seen.tls.as_ref())? })
}

/// The data of a Secret the spec names; `fail` says it is missing.
fn named_secret(
    c: &ConfmanCluster,
    secret: Option<&Secret>,
    fail: impl Fn(String) -> Error,
) -> Result<BTreeMap<String, ByteString>, Error> {
    let ns = c.namespace().unwrap_or_default();
    Ok(secret.ok_or_else(|| fail(format!("does not exist in namespace {ns}")))?.data.clone().unwrap_or_default())
}

/// The keys file the members mount (only its hash reaches the pod template), from `spec.auth`'s
/// Secret or the generated admin key Secret. A missing Secret or key is an error: the pods
/// could not start either.
fn api_keys(c: &ConfmanCluster, secret: Option<&Secret>) -> Result<Vec<u8>, Error> {
    let fail = |reason: String| Error::ApiKeysSecret { secret: builders::keys_secret_name(c), reason };
    let mut data = named_secret(c, secret, fail)?;
    let keys = data.remove(builders::KEYS_FILE).ok_or_else(|| fail(format!("has no {} key", builders::KEYS_FILE)))?;
    Ok(keys.0)
}

/// `ca.crt` of the TLS Secret; None without TLS. A missing Secret or key is an error (the pods
/// could not start either).
fn tls_ca(c: &ConfmanCluster, secret: Option<&Secret>) -> Result<Option<String>, Error> {
    let Some(tls) = &c.spec.tls else { return Ok(None) };
    let fail = |reason: String| Error::TlsSecret { secret: tls.client_secret.clone(), reason };
    let data = named_secret(c, secret, fail)?;
    if let Some(missing) = builders::TLS_KEYS.iter().find(|k| !data.contains_key(**k)) {
        return Err(fail(format!("has no {missing} key (needs {})", builders::TLS_KEYS.join(", "))));
    }
    let ca = data.get("ca.crt").map(|b| String::from_utf8_lossy(&b.0).into_owned()).unwrap_or_default();
    // An empty or non-PEM bundle would quietly mean "trust the system's roots" to a client and
    // a refusal to start to the node: name it instead.
    if !ca.contains("-----BEGIN CERTIFICATE-----") {
        return Err(fail("ca.crt holds no PEM certificate".into()));
    }
    Ok(Some(ca))
}

/// The member ledger: the stored one; a new one before the StatefulSet exists; or, when the
/// ConfigMap was lost under a running StatefulSet, one rebuilt from the nodes' reports.
fn ledger(c: &ConfmanCluster, seen: &Snapshot, notices: &mut Vec<Notice>) -> Result<Ledger, Error> {
    if let Some(cm) = &seen.ledger {
        return Ok(Ledger::parse(cm)?);
    }
    let Some(sts) = &seen.statefulset else {
        return Ok(Ledger::bootstrap(c, u32::try_from(c.spec.replicas).unwrap_or(0)));
    };
    let floor = sts.metadata.annotations.as_ref().and_then(|a| a.get(NEXT_ID_ANNOTATION)?.parse().ok());
    let rebuilt = Ledger::rebuild(c, seen.sts_replicas().unwrap_or(0), seen.raft.as_ref(), floor)
        .map_err(|reason| Error::LedgerLost { name: builders::members_name(c), reason })?;
    let ids = rebuilt.file.ids.iter().map(|(pod, id)| format!("{pod}={id}")).collect::<Vec<_>>().join(", ");
    let note =
        format!("member ledger {} was missing; rebuilt from the members' reports: {ids}", builders::members_name(c));
    notices.push(Notice { warning: true, ..Notice::normal("MemberLedgerRebuilt", note, "Rebuild") });
    Ok(rebuilt)
}

/// Everything a reconcile will change, decided before anything is.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The children to apply.
    pub children: Children,
    /// The one membership step, taken once the children are applied.
    pub step: Step,
    /// Ordinals about to start under an id no node ever ran as a member: a claim left there by
    /// an earlier member must be gone before the StatefulSet starts the pod.
    pub fresh: Vec<u32>,
    /// Ids whose node reported itself a member for the first time (never again started on an
    /// empty volume).
    pub admitted: Vec<u64>,
    /// Events published once the token and the ledger are written.
    pub on_ledger: Vec<Notice>,
    /// Events published once the StatefulSet is applied.
    pub on_rollout: Vec<Notice>,
    /// A part of the spec held back (Degraded reason and message).
    pub held: Option<(&'static str, String)>,
    /// Members for `status.members` (empty: keep the last ones).
    pub members: Vec<MemberStatus>,
    /// The leader's pod.
    pub leader: Option<String>,
}

/// Decides the children, the ledger and the membership step from what was observed.
pub fn plan(
    c: &ConfmanCluster,
    tuning: &Tuning,
    seen: &Snapshot,
    access: &Access,
    caps: &Capabilities,
    max_lag: u64,
    token_review_role: &str,
) -> Result<Plan, Error> {
    let (sts, raft, views) = (seen.statefulset.as_ref(), seen.raft.as_ref(), &seen.members);
    let wanted = u32::try_from(c.spec.replicas).unwrap_or(0);
    let current = seen.sts_replicas();
    let mut on_ledger = Vec::new();
    let mut ledger = ledger(c, seen, &mut on_ledger)?;
    let step = next_step(&Observation {
        desired: wanted,
        sts_replicas: current,
        ids: &ledger.file.ids,
        pods: views,
        raft,
        max_lag,
    });
    let replicas = match &step {
        Step::Bootstrap { replicas } | Step::Grow { replicas } | Step::Shrink { replicas, .. } => *replicas,
        _ => current.unwrap_or(wanted),
    };

    // Ledger: ids for every ordinal the StatefulSet will run; a removed ordinal is forgotten, and
    // so is the id of a lost volume. Nodes that report themselves members are admitted (their
    // id never starts again on an empty volume).
    let admitted = ledger.admit(views.iter().filter_map(|v| Some((v.name.clone(), v.member_id?))));
    // A lost volume's pod keeps its claim (empty, that is why it is replaced, and mounted).
    match &step {
        Step::Shrink { pod, .. } => ledger.forget(pod),
        Step::ReplaceLost { pod, lost } if ledger.file.ids.get(pod) == Some(lost) => ledger.forget(pod),
        _ => {}
    }
    let added = ledger.allocate(c, replicas);
    if seen.ledger.is_none() && sts.is_none() {
        let note = format!("bootstrap members: {}", ledger.file.bootstrap_peers);
        on_ledger.push(Notice::normal("MembersAllocated", note, "Bootstrap"));
    } else if !added.is_empty() {
        let note = format!("allocated node ids for {}", added.join(", "));
        on_ledger.push(Notice::normal("MembersAllocated", note, "Allocate"));
    }

    // A pod about to start on an ordinal must not find an earlier member's volume. Only ordinals
    // under an id no node ever ran as a member: a bootstrap with the ledger kept (the
    // StatefulSet deleted, orphaned or not) must find its members' volumes intact.
    let starting: Vec<u32> = match &step {
        Step::Bootstrap { replicas } => (0..*replicas).collect(),
        Step::Grow { replicas } => vec![replicas.saturating_sub(1)],
        _ => Vec::new(),
    };
    let fresh = starting
        .into_iter()
        .filter(|o| {
            let pod = builders::pod_name(c, *o);
            let live = views.iter().any(|v| v.name == pod && v.exists);
            !live && ledger.file.ids.get(&pod).is_some_and(|id| !ledger.file.admitted.contains(id))
        })
        .collect();

    let group = raft.map(|r| {
        let voters = r.members.values().filter(|v| **v).count();
        // The pod being removed still runs between its removal from the group and the shrink.
        (i32::try_from(voters).unwrap_or(0), i32::try_from(replicas.max(current.unwrap_or(0))).unwrap_or(0))
    });
    let running_credentials = sts.and_then(|s| template_annotation(s, builders::CREDENTIALS_HASH_ANNOTATION));
    let inputs = Inputs {
        tuning,
        ledger: &ledger,
        new_token: access.new_token.as_deref(),
        new_admin_key: access.new_admin_key.as_deref(),
        replicas,
        trusted_ca: access.ca.as_deref(),
        credentials_hash: access.hash.as_deref().or(running_credentials.as_deref()),
        group,
        caps,
        token_review_role,
    };
    let mut children = builders::desired(c, &inputs)?;
    let held = hold_back(c, sts, &mut children.statefulset)
        .or_else(|| access.keys_problem.clone().map(|m| ("ApiKeysSecretUnreadable", m)))
        .or_else(|| token_refused(c, seen));
    let (members, leader) = status::members(raft, &ledger.file.ids, views, max_lag);
    Ok(Plan {
        on_rollout: rollout_notices(sts, &children.statefulset),
        children,
        step,
        fresh,
        admitted,
        on_ledger,
        held,
        members,
        leader,
    })
}

/// The storage the running StatefulSet's volume claim template asks for.
fn applied_storage(sts: &StatefulSet) -> Option<AppliedStorage> {
    let claim = sts.spec.volume_claim_templates.as_ref()?.first()?;
    let spec = claim.spec.as_ref()?;
    let size = spec.resources.as_ref()?.requests.as_ref()?.get("storage")?.0.clone();
    Some(AppliedStorage { size, storage_class_name: spec.storage_class_name.clone() })
}

/// The volume claim template cannot change (the API server refuses the whole StatefulSet): a
/// changed size or class is held back — `desired` keeps the running template — and reported,
/// while everything else (image, config, scaling, lost-member replacement) goes on.
fn hold_back(
    c: &ConfmanCluster,
    running: Option<&StatefulSet>,
    desired: &mut StatefulSet,
) -> Option<(&'static str, String)> {
    let refused =
        validate::storage_unchanged(&c.spec, &Applied { tls: None, storage: running.and_then(applied_storage) })
            .err()?;
    if let Some(running) = running {
        desired.spec.volume_claim_templates = running.spec.volume_claim_templates.clone();
    }
    Some((refused.reason, refused.message))
}

/// Members that refuse the token the operator presents, named with the way back.
fn token_refused(c: &ConfmanCluster, seen: &Snapshot) -> Option<(&'static str, String)> {
    let refusing: Vec<&str> = seen.members.iter().filter(|v| v.refuses_token).map(|v| v.name.as_str()).collect();
    (!refusing.is_empty()).then(|| {
        let note = format!(
            "{} refuse the token the operator presents (the first line of Secret {}): a rotation step was \
             skipped or made before the previous one rolled out; put the token the members use back on the \
             first line (README: rotating credentials)",
            refusing.join(", "),
            builders::token_name(c)
        );
        ("TokenRefused", note)
    })
}

/// Events for each cause of a pod template change that rolls the members.
fn rollout_notices(running: Option<&StatefulSet>, desired: &StatefulSet) -> Vec<Notice> {
    let changed = |key: &str| {
        let (old, new) = (template_annotation(running?, key)?, template_annotation(desired, key)?);
        (old != new).then_some(new)
    };
    let mut notices = Vec::new();
    if let Some(hash) = changed(builders::CONFIG_HASH_ANNOTATION) {
        let note = format!("node config changed (hash {hash}); members are replaced one at a time, leader last");
        notices.push(Notice::normal("ConfigChanged", note, "Update"));
    }
    if changed(builders::CA_HASH_ANNOTATION).is_some() {
        let note = "ca.crt of the TLS Secret changed; members restart one at a time, leader last, to trust it \
                    (keep the old CA in the bundle until every certificate is reissued)";
        notices.push(Notice::normal("TrustChanged", note.into(), "Update"));
    }
    if changed(builders::CREDENTIALS_HASH_ANNOTATION).is_some() {
        let note = "the cluster token or API keys Secret changed; members restart one at a time, leader last, \
                    to read it (rotating the token takes three edits, each after the previous one rolled out: see README)";
        notices.push(Notice::normal("CredentialsChanged", note.into(), "Update"));
    }
    notices
}

/// The status once the plan was carried out (`done`; `before`: what the StatefulSet reported
/// before), and whether the cluster is settled (looked at again only at the resync).
pub fn status(
    c: &ConfmanCluster,
    tuning: Tuning,
    plan: Plan,
    done: Done,
    before: Observed,
    now: Time,
) -> (ConfmanClusterStatus, bool) {
    let (observed, progress, held, members) = match done {
        Done::Applied { observed, progress } => (observed, progress, plan.held, Some((plan.members, plan.leader))),
        Done::WaitingForVolumes(note) => (before, Some(("WaitingForVolumes", note)), None, None),
    };
    // A held-back change waits for the person, not for the cluster: no fast requeue.
    let holding = held.is_some();
    let stepping = progress.is_some();
    let mut new = status::next_status(c, &Outcome::Applied { tuning, progress, held }, observed, now);
    if let Some((members, leader)) = members.filter(|(m, _)| !m.is_empty()) {
        new.members = members;
        new.leader = leader;
    }
    let settled = !stepping && (holding || new.phase.as_deref() == Some("Running"));
    (new, settled)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    use serde::Deserialize;

    use super::*;
    use crate::builders::Pdb;
    use crate::crd::PayloadClass;
    use crate::fixtures::cluster;
    use crate::membership_step::{PodView, RaftView};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// What the reconcile decides for `c` as `seen` shows it.
    fn decide(c: &ConfmanCluster, seen: &Snapshot) -> Result<Plan, Box<dyn std::error::Error>> {
        let tuning = validate(c, seen).map_err(|i| i.message)?;
        Ok(plan(c, &tuning, seen, &access(c, seen)?, &Capabilities::RECENT, 64, builders::DEFAULT_TOKEN_REVIEW_ROLE)?)
    }

    /// The three members of a cluster created by [`decide`], healthy and led by node 1, under a
    /// spec asking for `replicas`.
    fn running(replicas: i32) -> Result<(ConfmanCluster, Snapshot), Box<dyn std::error::Error>> {
        let first = decide(&cluster(3, PayloadClass::Small), &new_cluster())?.children;
        let c = cluster(replicas, PayloadClass::Small);
        let up = |o: u32| o < 3;
        let members = (0..u32::try_from(replicas)?)
            .map(|o| PodView {
                ordinal: o,
                name: builders::pod_name(&c, o),
                exists: up(o),
                ready: up(o),
                alive: up(o),
                updated: true,
                applied: up(o).then_some(10),
                member_id: up(o).then_some(u64::from(o) + 1),
                data_lost: None,
                refuses_token: false,
            })
            .collect();
        let raft = RaftView {
            leader: Some(1),
            members: (1..=3).map(|id| (id, true)).collect(),
            commit_index: 10,
            ..RaftView::default()
        };
        let seen = Snapshot {
            statefulset: Some(first.statefulset),
            ledger: Some(first.ledger),
            token: first.token,
            api_keys: first.admin_keys,
            members,
            raft: Some(raft),
            ..Snapshot::default()
        };
        Ok((c, seen))
    }

    /// What observe reads for a cluster that has nothing yet.
    fn new_cluster() -> Snapshot {
        Snapshot {
            fresh_token: Some("fresh-token".into()),
            fresh_admin_key: Some("fresh-admin-key".into()),
            ..Snapshot::default()
        }
    }

    fn kinds_and_names(yaml: &str) -> Result<BTreeSet<(String, String)>, serde_yaml_ng::Error> {
        serde_yaml_ng::Deserializer::from_str(yaml)
            .map(|doc| {
                let v = serde_yaml_ng::Value::deserialize(doc)?;
                let text = |v: &serde_yaml_ng::Value| v.as_str().unwrap_or_default().to_string();
                Ok((text(&v["kind"]), text(&v["metadata"]["name"])))
            })
            .collect()
    }

    #[test]
    fn a_new_cluster_gets_a_token_every_child_and_a_bootstrap() -> TestResult {
        let c = cluster(3, PayloadClass::Small);
        let p = decide(&c, &new_cluster())?;
        assert_eq!(p.step, Step::Bootstrap { replicas: 3 });
        assert_eq!(p.children.statefulset.spec.replicas, Some(3));
        let token = p.children.token.as_ref().and_then(|s| s.data.as_ref()?.get(builders::TOKEN_KEY).cloned());
        assert_eq!(token.map(|t| t.0), Some(b"fresh-token".to_vec()), "the token observe generated");
        assert_eq!(p.fresh, [0, 1, 2], "no member ran yet: a claim on these ordinals is stale");
        let announced: Vec<&str> = p.on_ledger.iter().map(|n| n.reason).collect();
        assert_eq!(announced, ["MembersAllocated"], "TokenCreated is announced right after its apply");
        assert!(p.on_rollout.is_empty() && p.held.is_none() && p.members.is_empty());
        Ok(())
    }

    #[test]
    fn render_shows_the_children_the_reconcile_applies() -> TestResult {
        let c = cluster(3, PayloadClass::Small);
        let reconciled = kinds_and_names(&decide(&c, &new_cluster())?.children.to_yaml()?)?;
        let rendered = kinds_and_names(&crate::render::render(&serde_yaml_ng::to_string(&c)?)?)?;
        assert_eq!(reconciled, rendered);
        assert_eq!(reconciled.len(), 8, "{reconciled:?}");
        Ok(())
    }

    #[test]
    fn a_scale_up_grows_by_one_fresh_id_with_a_budget_for_the_live_group() -> TestResult {
        let (c, seen) = running(5)?;
        let p = decide(&c, &seen)?;
        assert_eq!(p.step, Step::Grow { replicas: 4 });
        assert_eq!(p.children.statefulset.spec.replicas, Some(4));
        assert_eq!(p.fresh, [3]);
        assert_eq!(p.admitted, [1, 2, 3]);
        assert_eq!(
            p.on_ledger,
            [Notice::normal("MembersAllocated", "allocated node ids for config-3".into(), "Allocate")]
        );
        assert!(p.children.token.is_none(), "an existing token is never rewritten");
        let Pdb::V1(pdb) = &p.children.pdb else { return Err("a policy/v1 budget".into()) };
        // 3 voters and 4 pods: the one voter that may go leaves 3 of 4.
        assert_eq!(pdb.spec.as_ref().and_then(|s| s.min_available.clone()), Some(IntOrString::Int(3)));
        assert_eq!((p.members.len(), p.leader.as_deref()), (3, Some("config-0")));
        Ok(())
    }

    /// Issue 17: without `spec.auth` every pod generated a development key of its own, so a
    /// client behind the Service got 401 from all but one. The cluster gets one admin key
    /// Secret, created once and mounted by every member.
    #[test]
    fn a_cluster_without_spec_auth_gets_one_admin_key_secret_that_every_member_mounts() -> TestResult {
        let c = cluster(3, PayloadClass::Small);
        let p = decide(&c, &new_cluster())?;
        let secret = p.children.admin_keys.as_ref().ok_or("no admin key Secret for a new cluster")?;
        assert_eq!(secret.metadata.name.as_deref(), Some("config-admin"));
        let data = secret.data.clone().unwrap_or_default();
        assert_eq!(data.get(builders::ADMIN_KEY).map(|k| k.0.clone()), Some(b"fresh-admin-key".to_vec()));
        let file = data.get(builders::KEYS_FILE).ok_or("no keys file")?;
        assert_eq!(String::from_utf8_lossy(&file.0), builders::admin_keys_file("fresh-admin-key"));
        let pod = p.children.statefulset.spec.template.spec.clone().unwrap_or_default();
        let keys = pod.volumes.unwrap_or_default().into_iter().find(|v| v.name == "keys").and_then(|v| v.secret);
        assert_eq!(keys.and_then(|s| s.secret_name).as_deref(), Some("config-admin"), "every pod has it");
        // ... and mounts it where node.toml's api_keys_file points (a volume alone is not read).
        let mounts = pod.containers.into_iter().flat_map(|c| c.volume_mounts.unwrap_or_default());
        assert!(mounts.into_iter().any(|m| m.name == "keys" && m.mount_path == "/etc/confman/keys"), "keys mounted");

        // Once it exists it is never rewritten, edited or not.
        let (c, mut seen) = running(3)?;
        assert!(decide(&c, &seen)?.children.admin_keys.is_none(), "an existing Secret is kept");
        seen.fresh_admin_key = Some("another".into());
        assert!(decide(&c, &seen)?.children.admin_keys.is_none(), "observe's spare key is not used");
        // Deleted: a new key, and the members roll to it.
        seen.api_keys = None;
        let p = decide(&c, &seen)?;
        assert!(p.children.admin_keys.is_some(), "a deleted admin key Secret is generated anew");
        let reasons: Vec<&str> = p.on_rollout.iter().map(|n| n.reason).collect();
        assert_eq!(reasons, ["CredentialsChanged"]);

        // With spec.auth the named Secret is mounted and nothing is generated.
        let mut c = cluster(3, PayloadClass::Small);
        c.spec.auth = Some(crate::crd::AuthSpec { api_keys_secret: Some("team-keys".into()), ..Default::default() });
        let mut seen = new_cluster();
        seen.api_keys = Some(Secret {
            data: Some([(builders::KEYS_FILE.to_string(), ByteString(b"keys: []".to_vec()))].into()),
            ..Secret::default()
        });
        let p = decide(&c, &seen)?;
        assert!(p.children.admin_keys.is_none(), "spec.auth's Secret is used as it is");
        let volumes = p.children.statefulset.spec.template.spec.and_then(|s| s.volumes).unwrap_or_default();
        let keys = volumes.iter().find(|v| v.name == "keys").and_then(|v| v.secret.clone());
        assert_eq!(keys.and_then(|s| s.secret_name).as_deref(), Some("team-keys"));
        Ok(())
    }

    #[test]
    fn a_token_edit_rolls_the_members_and_is_announced() -> TestResult {
        let (c, mut seen) = running(3)?;
        assert_eq!(decide(&c, &seen)?.step, Step::Settled);
        assert!(decide(&c, &seen)?.on_rollout.is_empty(), "nothing changed");
        seen.token = Some(builders::token_secret(&c, "secret\nnew-secret\n")?);
        let p = decide(&c, &seen)?;
        let reasons: Vec<&str> = p.on_rollout.iter().map(|n| n.reason).collect();
        assert_eq!(reasons, ["CredentialsChanged"]);
        Ok(())
    }

    #[test]
    fn a_running_cluster_without_a_usable_token_is_refused_before_any_change() -> TestResult {
        let (c, mut seen) = running(3)?;
        seen.token = None;
        assert!(matches!(access(&c, &seen), Err(Error::TokenLost { .. })));
        seen.token = Some(builders::token_secret(&c, " \n")?);
        assert!(matches!(access(&c, &seen), Err(Error::TokenInvalid { .. })));
        Ok(())
    }

    #[test]
    fn the_status_says_what_was_done() -> TestResult {
        let (c, seen) = running(3)?;
        let (tuning, p) = (validate(&c, &seen).map_err(|i| i.message)?, decide(&c, &seen)?);
        let now = Time(jiff::Timestamp::now());
        let all = Observed { replicas: 3, ready: 3, updated: 3, settled: true };
        let done = Done::Applied { observed: all, progress: None };
        let (new, settled) = status(&c, tuning, p.clone(), done, Observed::default(), now.clone());
        assert_eq!((new.phase.as_deref(), settled, new.members.len()), (Some("Running"), true, 3));

        let waiting = Done::WaitingForVolumes("waiting for data-config-3".into());
        let (new, settled) = status(&c, tuning, p, waiting, all, now);
        let progressing = new.conditions.iter().find(|x| x.type_ == status::PROGRESSING).ok_or("no Progressing")?;
        assert_eq!((progressing.reason.as_str(), settled), ("WaitingForVolumes", false));
        assert!(new.members.is_empty(), "the last members are kept");
        Ok(())
    }
}
