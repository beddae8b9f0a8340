//! The reconcile loop for one ConfmanCluster: dereference (read what exists) → validate →
//! build (pure) → apply (server-side apply, one field manager) → status and Events.
//! An invalid or paused spec changes no child.

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Mutex;

use crate::builders::{self, BuildError, Pdb};
use crate::capabilities::Capabilities;
use crate::crd::{ConfmanCluster, ConfmanClusterStatus, MemberStatus};
use crate::members::{Ledger, LedgerError, NEXT_ID_ANNOTATION};
use crate::membership::{Observation, PodView, RaftView, Step, next_step};
use crate::metrics::Metrics;
use crate::nodes;
use crate::status::{self, Observed, Outcome};
use crate::validate::{self, Applied, AppliedStorage, validate};

/// Field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "confman-operator";
/// How often a healthy cluster is re-checked without any watch event.
const RESYNC: Duration = Duration::from_secs(300);
/// Resync of a settled TLS cluster: the operator has no watch on Secrets, so this bounds how long
/// a new `ca.crt` goes unnoticed (one Secret read per cluster per minute).
const TLS_RESYNC: Duration = Duration::from_secs(60);
/// How soon a cluster that is still converging is looked at again.
const CONVERGING: Duration = Duration::from_secs(10);

/// Why a reconcile failed (it is retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("kubernetes api: {0}")]
    Kube(#[from] kube::Error),
    /// A child object could not be built.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The member ledger is unreadable.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// A node refused or failed an admin call.
    #[error("node admin api: {0}")]
    Node(String),
    /// The status could not be serialised.
    #[error("status: {0}")]
    Json(#[from] serde_json::Error),
    /// The member ledger ConfigMap is gone while the StatefulSet runs and the group as its
    /// leader reports it does not account for every member, so it cannot be rebuilt without
    /// guessing.
    #[error(
        "member ledger ConfigMap {name} is missing and cannot be rebuilt from the nodes: {reason}; \
         membership changes wait until every member reports its id"
    )]
    LedgerLost {
        #[allow(missing_docs)]
        name: String,
        /// Why the group as reported does not suffice.
        reason: String,
    },
    /// A same-named object exists that this cluster does not own.
    #[error("{kind} {name} exists and is not owned by this ConfmanCluster; refusing to take it over ({conflict})")]
    #[allow(missing_docs)]
    NotOurs {
        kind: String,
        name: String,
        /// Who it belongs to instead.
        conflict: String,
    },
    /// The cluster token Secret is gone while the cluster has members.
    #[error(
        "cluster token Secret {name} is missing while the cluster has members: a new token would split \
         them (running members keep the old one, restarted ones would get the new one); restore the \
         Secret with the token the members use (confman-node reads it from its --cluster-token-file)"
    )]
    #[allow(missing_docs)]
    TokenLost { name: String },
    /// The cluster token Secret's value is not a token list the node accepts: members could
    /// not start with it.
    #[error(
        "cluster token Secret {name} {reason} (its value lists at most 4 tokens one per line, the presented one first)"
    )]
    TokenInvalid {
        /// Secret name.
        name: String,
        /// What is wrong with the value.
        reason: confman_contract::cluster_token::TokenListError,
    },
    /// The API keys Secret named by `spec.auth.apiKeysSecret` is missing or incomplete.
    #[error("API keys Secret {secret} (spec.auth.apiKeysSecret): {reason}")]
    ApiKeysSecret {
        /// Secret name.
        secret: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The TLS Secret named by `spec.tls.clientSecret` is missing or incomplete.
    #[error("TLS Secret {secret} (spec.tls.clientSecret): {reason}")]
    TlsSecret {
        /// Secret name.
        secret: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Shared state of the controller.
pub struct Context {
    /// API client.
    pub client: kube::Client,
    /// Event recorder.
    pub recorder: Recorder,
    /// Counters exported on `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Consecutive failures per cluster (`namespace/name`), for backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// Fixed addresses for pod host names (tests without cluster DNS); empty in a cluster.
    pub resolve: Vec<(String, std::net::IpAddr)>,
    /// How far behind the commit index a learner may be to be promoted.
    pub max_learner_lag: u64,
    /// How soon a cluster that is still converging is looked at again.
    pub converging: Duration,
    /// What the API server supports (discovered at start-up; a recent server by default).
    pub capabilities: Capabilities,
    /// Clusters (by uid) already told which of their settings this server does not honour.
    told_unavailable: Mutex<HashSet<String>>,
}

impl Context {
    /// A context over `client`, publishing Events as `reporter`.
    pub fn new(client: kube::Client, reporter: kube::runtime::events::Reporter, metrics: Arc<Metrics>) -> Context {
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            failures: Mutex::default(),
            resolve: Vec::new(),
            max_learner_lag: 64,
            converging: CONVERGING,
            capabilities: Capabilities::RECENT,
            told_unavailable: Mutex::default(),
        }
    }
}

fn key(c: &ConfmanCluster) -> String {
    format!("{}/{}", c.namespace().unwrap_or_default(), c.name_any())
}

async fn get_opt<K>(client: &kube::Client, ns: &str, name: &str) -> Result<Option<K>, Error>
where
    K: Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
    K::DynamicType: Default,
{
    Ok(Api::<K>::namespaced(client.clone(), ns).get_opt(name).await?)
}

/// Server-side apply of a child (forced: the operator owns every field it sets, and drift is
/// corrected). An existing object of that name is applied over only when it is ours — its
/// controller reference is this cluster, or only this operator ever managed it (an orphaned
/// child, adopted) — never a same-named object someone else created.
async fn apply<K>(client: &kube::Client, obj: &K) -> Result<K, Error>
where
    K: Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Serialize + Debug,
    K::DynamicType: Default,
{
    let ns = obj.meta().namespace.clone().unwrap_or_default();
    let name = obj.meta().name.clone().unwrap_or_default();
    let api = Api::<K>::namespaced(client.clone(), &ns);
    if let Some(existing) = api.get_opt(&name).await? {
        refuse_unless_ours(existing.meta(), obj.meta(), &K::kind(&K::DynamicType::default()))?;
    }
    let params = PatchParams::apply(FIELD_MANAGER).force();
    Ok(api.patch(&name, &params, &Patch::Apply(obj)).await?)
}

/// [`Error::NotOurs`] unless `existing` is this cluster's (see [`apply`]).
fn refuse_unless_ours(
    existing: &kube::api::ObjectMeta,
    desired: &kube::api::ObjectMeta,
    kind: &str,
) -> Result<(), Error> {
    let controller = |m: &kube::api::ObjectMeta| {
        m.owner_references.as_ref()?.iter().find(|r| r.controller == Some(true)).map(|r| r.uid.clone())
    };
    if controller(desired).is_some_and(|uid| controller(existing) == Some(uid)) {
        return Ok(());
    }
    let managers: Vec<String> = existing.managed_fields.iter().flatten().filter_map(|f| f.manager.clone()).collect();
    let owner = controller(existing);
    if owner.is_none() && !managers.is_empty() && managers.iter().all(|m| m == FIELD_MANAGER) {
        return Ok(());
    }
    Err(Error::NotOurs {
        kind: kind.to_string(),
        name: existing.name.clone().unwrap_or_default(),
        conflict: match owner {
            Some(uid) => format!("its controller is another object (uid {uid})"),
            None => format!(
                "it was created by {}",
                if managers.is_empty() { "someone else".into() } else { managers.join(", ") }
            ),
        },
    })
}

/// [`apply`] for a type k8s-openapi does not have (an older API version of a kind).
async fn apply_dynamic(client: &kube::Client, obj: &DynamicObject, ar: &ApiResource) -> Result<(), Error> {
    let ns = obj.metadata.namespace.clone().unwrap_or_default();
    let name = obj.metadata.name.clone().unwrap_or_default();
    let api = Api::<DynamicObject>::namespaced_with(client.clone(), &ns, ar);
    if let Some(existing) = api.get_opt(&name).await? {
        refuse_unless_ours(&existing.metadata, &obj.metadata, &ar.kind)?;
    }
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(&name, &params, &Patch::Apply(obj)).await?;
    Ok(())
}

/// Applies the PodDisruptionBudget in the API version the server serves.
async fn apply_pdb(client: &kube::Client, pdb: &Pdb) -> Result<(), Error> {
    match pdb {
        Pdb::V1(p) => apply(client, p).await.map(|_| ()),
        Pdb::V1beta1(d) => apply_dynamic(client, d, &builders::pdb_v1beta1_resource()).await,
    }
}

async fn publish(ctx: &Context, c: &ConfmanCluster, type_: EventType, reason: &str, note: String, action: &str) {
    let event = Event {
        type_,
        reason: status::event_reason(reason),
        note: Some(status::event_note(&note)),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &c.object_ref(&())).await {
        tracing::warn!(cluster = %key(c), error = %e, "cannot publish event");
    }
}

/// Patches the status (server-side apply on the status subresource) and publishes an Event
/// for every condition that changed.
async fn write_status(ctx: &Context, c: &ConfmanCluster, new: ConfmanClusterStatus) -> Result<(), Error> {
    let api = Api::<ConfmanCluster>::namespaced(ctx.client.clone(), &c.namespace().unwrap_or_default());
    let body = status::status_apply_body(&new)?;
    api.patch_status(&c.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body)).await?;
    for cond in status::transitions(c.status.as_ref(), &new) {
        let type_ = if status::is_warning(cond) { EventType::Warning } else { EventType::Normal };
        let note =
            if cond.message.is_empty() { format!("{} is {}", cond.type_, cond.status) } else { cond.message.clone() };
        publish(ctx, c, type_, &cond.reason, note, &format!("{}{}", cond.type_, cond.status)).await;
    }
    Ok(())
}

/// Tells a cluster's owner, once per cluster (by uid) and operator run, which of its settings this
/// server does not honour (see [`Capabilities::unavailable_note`]).
async fn tell_unavailable(ctx: &Context, c: &ConfmanCluster) {
    let Some(note) = ctx.capabilities.unavailable_note(&c.spec) else { return };
    let uid = c.uid().unwrap_or_else(|| key(c));
    if !ctx.told_unavailable.lock().await.insert(uid) {
        return;
    }
    publish(ctx, c, EventType::Warning, "FeatureUnavailable", note, "Reconcile").await;
}

/// Reads the token, creating the Secret once if it does not exist (never rewritten). A
/// cluster that has members (`has_members`) never gets a new token: that would split them.
async fn ensure_token(ctx: &Context, c: &ConfmanCluster, has_members: bool) -> Result<String, Error> {
    let ns = c.namespace().unwrap_or_default();
    let existing = get_opt::<Secret>(&ctx.client, &ns, &builders::token_name(c)).await?;
    if let Some(t) = existing.as_ref().and_then(|s| s.data.as_ref()?.get(builders::TOKEN_KEY)) {
        return Ok(String::from_utf8_lossy(&t.0).trim().to_string());
    }
    if has_members {
        return Err(Error::TokenLost { name: builders::token_name(c) });
    }
    let token = builders::generate_token();
    apply(&ctx.client, &builders::token_secret(c, &token)?).await?;
    publish(ctx, c, EventType::Normal, "TokenCreated", "generated the cluster token Secret".into(), "Create").await;
    Ok(token)
}

/// What the members authenticate with, as far as the operator needs it.
struct Credentials {
    /// The token the operator presents to the members (the first of the Secret's lines).
    presented: String,
    /// [`builders::credentials_hash`] of the token Secret's value and the API keys file; None
    /// when the API keys Secret of a running cluster is unreadable (`keys_problem`): the
    /// running pods keep the files they mounted, so the template keeps its hash.
    hash: Option<String>,
    /// Why the API keys Secret of a running cluster cannot be read.
    keys_problem: Option<String>,
}

/// Reads (or, for a new cluster, creates) the token and reads the API keys file.
async fn credentials(ctx: &Context, c: &ConfmanCluster, has_members: bool) -> Result<Credentials, Error> {
    let value = ensure_token(ctx, c, has_members).await?;
    let presented = builders::presented_token(&value)
        .map_err(|reason| Error::TokenInvalid { name: builders::token_name(c), reason })?
        .to_string();
    match api_keys(ctx, c).await {
        Ok(keys) => Ok(Credentials {
            presented,
            hash: Some(builders::credentials_hash(value.as_bytes(), keys.as_deref())),
            keys_problem: None,
        }),
        // Running members need nothing from it until they restart: the rest of the reconcile
        // (dead members, lost volumes, scaling, status) goes on, and Degraded says what is wrong.
        Err(e @ Error::ApiKeysSecret { .. }) if has_members => {
            Ok(Credentials { presented, hash: None, keys_problem: Some(e.to_string()) })
        }
        Err(e) => Err(e),
    }
}

/// The API keys file of `spec.auth` (only its hash reaches the pod template); None without
/// `spec.auth`. A missing Secret or key is an error: the pods could not start either.
async fn api_keys(ctx: &Context, c: &ConfmanCluster) -> Result<Option<Vec<u8>>, Error> {
    let Some(auth) = &c.spec.auth else { return Ok(None) };
    let ns = c.namespace().unwrap_or_default();
    let fail = |reason: String| Error::ApiKeysSecret { secret: auth.api_keys_secret.clone(), reason };
    let secret = get_opt::<Secret>(&ctx.client, &ns, &auth.api_keys_secret)
        .await?
        .ok_or_else(|| fail(format!("does not exist in namespace {ns}")))?;
    let mut data = secret.data.unwrap_or_default();
    let keys = data.remove(builders::KEYS_FILE).ok_or_else(|| fail(format!("has no {} key", builders::KEYS_FILE)))?;
    Ok(Some(keys.0))
}

/// The CA the members' certificates are signed by (`ca.crt` of the TLS Secret), so the
/// operator's admin calls verify them; None without TLS. A missing Secret or key is an error
/// (the pods could not start either).
async fn tls_ca(ctx: &Context, c: &ConfmanCluster) -> Result<Option<String>, Error> {
    let Some(tls) = &c.spec.tls else { return Ok(None) };
    let ns = c.namespace().unwrap_or_default();
    let fail = |reason: String| Error::TlsSecret { secret: tls.client_secret.clone(), reason };
    let secret = get_opt::<Secret>(&ctx.client, &ns, &tls.client_secret)
        .await?
        .ok_or_else(|| fail(format!("does not exist in namespace {ns}")))?;
    let data = secret.data.unwrap_or_default();
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

/// What the membership step decided, in terms of children and calls.
struct Plan {
    step: Step,
    replicas: u32,
}

/// Reads the pods and asks their nodes (nothing before the StatefulSet exists).
async fn observe(
    ctx: &Context,
    c: &ConfmanCluster,
    sts: Option<&StatefulSet>,
    node_client: &confman_client::Client,
) -> Result<(Vec<PodView>, Option<RaftView>), Error> {
    let desired = u32::try_from(c.spec.replicas).unwrap_or(0);
    let Some(current) = sts.and_then(|s| s.spec.replicas).and_then(|r| u32::try_from(r).ok()) else {
        return Ok((Vec::new(), None));
    };
    let ns = c.namespace().unwrap_or_default();
    let selector = builders::selector_labels(c).iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), &ns).list(&ListParams::default().labels(&selector)).await?;
    // Until the StatefulSet controller has seen the latest template, its updateRevision is the
    // previous one: no pod is judged outdated (none is replaced) before then.
    let update_revision = sts.and_then(status::trusted_update_revision).map(str::to_string);
    Ok(nodes::observe(c, node_client, current.max(desired), &pods.items, update_revision.as_deref()).await)
}

/// Decides the next membership step from what was observed.
fn plan(
    ctx: &Context,
    c: &ConfmanCluster,
    sts: Option<&StatefulSet>,
    ledger: &Ledger,
    views: &[PodView],
    raft: Option<&RaftView>,
) -> Plan {
    let desired = u32::try_from(c.spec.replicas).unwrap_or(0);
    let current = sts.and_then(|s| s.spec.replicas).and_then(|r| u32::try_from(r).ok());
    let step = next_step(&Observation {
        desired,
        sts_replicas: current,
        ids: &ledger.file.ids,
        pods: views,
        raft,
        max_lag: ctx.max_learner_lag,
    });
    let replicas = match &step {
        Step::Bootstrap { replicas } | Step::Grow { replicas } | Step::Shrink { replicas, .. } => *replicas,
        _ => current.unwrap_or(desired),
    };
    Plan { step, replicas }
}

/// The member ledger: the stored one; a new one before the StatefulSet exists; or, when the
/// ConfigMap was lost under a running StatefulSet, one rebuilt from the nodes' reports.
async fn ledger(
    ctx: &Context,
    c: &ConfmanCluster,
    stored: Option<&ConfigMap>,
    sts: Option<&StatefulSet>,
    raft: Option<&RaftView>,
) -> Result<Ledger, Error> {
    if let Some(cm) = stored {
        return Ok(Ledger::parse(cm)?);
    }
    let Some(sts) = sts else {
        return Ok(Ledger::bootstrap(c, u32::try_from(c.spec.replicas).unwrap_or(0)));
    };
    let replicas = sts.spec.replicas.and_then(|r| u32::try_from(r).ok()).unwrap_or(0);
    let floor = sts.metadata.annotations.as_ref().and_then(|a| a.get(NEXT_ID_ANNOTATION)?.parse().ok());
    let rebuilt = Ledger::rebuild(c, replicas, raft, floor)
        .map_err(|reason| Error::LedgerLost { name: builders::members_name(c), reason })?;
    let ids = rebuilt.file.ids.iter().map(|(pod, id)| format!("{pod}={id}")).collect::<Vec<_>>().join(", ");
    let note =
        format!("member ledger {} was missing; rebuilt from the members' reports: {ids}", builders::members_name(c));
    publish(ctx, c, EventType::Warning, "MemberLedgerRebuilt", note, "Rebuild").await;
    Ok(rebuilt)
}

/// Carries out a Raft or pod step (children were applied before); returns the Progressing
/// reason and message, or None when settled.
async fn execute(
    ctx: &Context,
    c: &ConfmanCluster,
    step: &Step,
    node_client: &confman_client::Client,
) -> Result<Option<(&'static str, String)>, Error> {
    let ns = c.namespace().unwrap_or_default();
    let node = |e: confman_client::Error| Error::Node(e.to_string());
    let (reason, note, event): (&'static str, String, bool) = match step {
        Step::Settled => return Ok(None),
        Step::Bootstrap { replicas } => ("Bootstrapping", format!("bootstrapping {replicas} members"), false),
        Step::Wait(why) => ("WaitingForMembers", why.clone(), false),
        Step::Grow { replicas } => ("ScalingUp", format!("starting member {} of {}", replicas, c.spec.replicas), true),
        Step::Shrink { replicas, pod } => {
            ("ScalingDown", format!("{pod} left the group; StatefulSet shrunk to {replicas}"), true)
        }
        Step::AddLearner { pod, id } => {
            node_client.add_learner(*id, &builders::pod_url(c, pod)).await.map_err(node)?;
            ("ScalingUp", format!("added {pod} (node {id}) as a learner; it caught up"), true)
        }
        Step::Promote { pod, id } => {
            node_client.promote(*id).await.map_err(node)?;
            ("ScalingUp", format!("promoted {pod} (node {id}) to voter"), true)
        }
        Step::TransferLeader { from, to, reason } => {
            let to = node_client.transfer_leader(*to).await.map_err(node)?;
            ("MovingLeader", format!("moved leadership from node {from} to {to:?}: {reason}"), true)
        }
        Step::Remove { pod, id } => {
            node_client.remove(*id).await.map_err(node)?;
            (
                "ScalingDown",
                format!(
                    "removed {} (node {id}) from the group; the change is committed",
                    if pod.is_empty() { "a stray member" } else { pod }
                ),
                true,
            )
        }
        Step::RemoveLost { pod, id } => {
            node_client.remove(*id).await.map_err(node)?;
            let note = format!("{pod} lost its volume: removed node {id} from the group (it never rejoins as {id})");
            publish(ctx, c, EventType::Warning, "MemberLost", note.clone(), "Membership").await;
            ("ReplacingLostMember", note, false)
        }
        Step::ReplaceLost { pod, lost } => {
            Api::<Pod>::namespaced(ctx.client.clone(), &ns).delete(pod, &DeleteParams::default()).await?;
            (
                "ReplacingLostMember",
                format!("restarting {pod} under a fresh node id in place of lost node {lost}"),
                true,
            )
        }
        Step::Replace { pod } => {
            Api::<Pod>::namespaced(ctx.client.clone(), &ns).delete(pod, &DeleteParams::default()).await?;
            ("Upgrading", format!("replacing {pod} with the current revision (followers first, leader last)"), true)
        }
    };
    if event {
        tracing::info!(cluster = %key(c), reason, %note, "membership step");
        publish(ctx, c, EventType::Normal, reason, note.clone(), "Membership").await;
    }
    Ok(Some((reason, note)))
}

/// Deletes the claims of `ordinals` left by earlier members; returns the ones still present
/// (being deleted). A claim without this cluster's labels is not ours: refused, never deleted.
async fn clear_stale_claims(
    ctx: &Context,
    c: &ConfmanCluster,
    ordinals: impl Iterator<Item = u32>,
) -> Result<Vec<String>, Error> {
    let ns = c.namespace().unwrap_or_default();
    let api = Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &ns);
    let ours = builders::selector_labels(c);
    let mut pending = Vec::new();
    for ordinal in ordinals {
        let pod = builders::pod_name(c, ordinal);
        let name = format!("data-{pod}");
        let Some(claim) = api.get_opt(&name).await? else { continue };
        let labels = claim.metadata.labels.clone().unwrap_or_default();
        if !ours.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            return Err(Error::NotOurs {
                kind: "PersistentVolumeClaim".into(),
                name,
                conflict: format!("it lacks the labels {ours:?} of this cluster's volumes and is in the way of {pod}"),
            });
        }
        if claim.metadata.deletion_timestamp.is_none() {
            api.delete(&name, &DeleteParams::default()).await?;
            let note = format!("deleted {name}: it holds an earlier member's data and {pod} starts under a new id");
            publish(ctx, c, EventType::Normal, "StaleVolumeDeleted", note, "Delete").await;
        }
        // Deleted (or being deleted): gone only once a read no longer finds it.
        if api.get_opt(&name).await?.is_some() {
            pending.push(name);
        }
    }
    Ok(pending)
}

/// What applying the children came to, for the status.
struct ChildrenApplied {
    /// What the StatefulSet reports.
    observed: Observed,
    /// The membership step under way (Progressing), None when settled.
    progress: Option<(&'static str, String)>,
    /// Members for `status.members` (empty: keep the last ones).
    members: Vec<MemberStatus>,
    /// The leader's pod.
    leader: Option<String>,
    /// A part of the spec held back (Degraded).
    held: Option<(&'static str, String)>,
}

/// The storage the running StatefulSet's volume claim template asks for.
fn applied_storage(sts: &StatefulSet) -> Option<AppliedStorage> {
    let claim = sts.spec.volume_claim_templates.as_ref()?.first()?;
    let spec = claim.spec.as_ref()?;
    let size = spec.resources.as_ref()?.requests.as_ref()?.get("storage")?.0.clone();
    Some(AppliedStorage { size, storage_class_name: spec.storage_class_name.clone() })
}

/// Builds and applies every child, then takes one membership step.
async fn apply_children(
    ctx: &Context,
    c: &ConfmanCluster,
    tuning: &confman_contract::Tuning,
    sts: Option<&StatefulSet>,
    stored: Option<ConfigMap>,
) -> Result<ChildrenApplied, Error> {
    let client = &ctx.client;
    let sts_replicas = sts.and_then(|s| s.spec.replicas).and_then(|r| u32::try_from(r).ok());
    let credentials = credentials(ctx, c, sts.is_some() || stored.is_some()).await?;

    let current = sts_replicas.unwrap_or(0);
    let ca = tls_ca(ctx, c).await?;
    let ordinals = current.max(u32::try_from(c.spec.replicas).unwrap_or(0));
    let node_client = nodes::client(c, ordinals, &credentials.presented, &ctx.resolve, ca.as_deref())
        .map_err(|e| Error::Node(e.to_string()))?;
    let (views, raft) = observe(ctx, c, sts, &node_client).await?;
    let mut ledger = ledger(ctx, c, stored.as_ref(), sts, raft.as_ref()).await?;
    let plan = plan(ctx, c, sts, &ledger, &views, raft.as_ref());

    // Ledger: ids for every ordinal the StatefulSet will run; a removed ordinal is forgotten, and
    // so is the id of a lost volume. Nodes that report themselves members are admitted (their
    // id never starts again on an empty volume).
    let admitted = ledger.admit(views.iter().filter_map(|v| Some((v.name.clone(), v.member_id?))));
    // A lost volume's pod keeps its claim (empty, that is why it is replaced, and mounted).
    match &plan.step {
        Step::Shrink { pod, .. } => ledger.forget(pod),
        Step::ReplaceLost { pod, lost } if ledger.file.ids.get(pod) == Some(lost) => ledger.forget(pod),
        _ => {}
    }
    let added = ledger.allocate(c, plan.replicas);
    apply(client, &ledger.config_map(c)?).await?;
    if stored.is_none() && sts.is_none() {
        let note = format!("bootstrap members: {}", ledger.file.bootstrap_peers);
        publish(ctx, c, EventType::Normal, "MembersAllocated", note, "Bootstrap").await;
    } else if !added.is_empty() {
        let note = format!("allocated node ids for {}", added.join(", "));
        publish(ctx, c, EventType::Normal, "MembersAllocated", note, "Allocate").await;
    }
    if !admitted.is_empty() {
        tracing::info!(cluster = %key(c), ?admitted, "members admitted: their ids never start on an empty volume");
    }

    let config = builders::config_map(c, tuning)?;
    let hash = builders::config_hash(&config);
    apply(client, &config).await?;
    apply(client, &builders::headless_service(c)?).await?;
    apply(client, &builders::client_service(c)?).await?;

    // A pod about to start on an ordinal must not find an earlier member's volume: its claim is
    // deleted, and the start waits until the claim is really gone (the pvc-protection finalizer
    // keeps a deleted claim while a pod still uses it; the StatefulSet would otherwise bind the
    // new pod to the old volume).
    // Only ordinals under an id no node ever ran as a member: a bootstrap with the ledger kept
    // (the StatefulSet deleted, orphaned or not) must find its members' volumes intact.
    let starting: Vec<u32> = match &plan.step {
        Step::Bootstrap { replicas } => (0..*replicas).collect(),
        Step::Grow { replicas } => vec![replicas.saturating_sub(1)],
        _ => Vec::new(),
    };
    let fresh = starting.into_iter().filter(|o| {
        let pod = builders::pod_name(c, *o);
        let live = views.iter().any(|v| v.name == pod && v.exists);
        !live && ledger.file.ids.get(&pod).is_some_and(|id| !ledger.file.admitted.contains(id))
    });
    let pending = clear_stale_claims(ctx, c, fresh).await?;
    if !pending.is_empty() {
        let note = format!("waiting for {} to be deleted before a member starts on its ordinal", pending.join(", "));
        let progress = Some(("WaitingForVolumes", note));
        return Ok(ChildrenApplied {
            observed: Observed::of(sts),
            progress,
            members: Vec::new(),
            leader: None,
            held: None,
        });
    }
    let mut desired = builders::statefulset(c, tuning, &hash, &ctx.capabilities)?;
    desired.spec.replicas = Some(i32::try_from(plan.replicas).unwrap_or(i32::MAX));
    desired.metadata.annotations.get_or_insert_default().insert(NEXT_ID_ANNOTATION.into(), ledger.next_id.to_string());
    let ca_hash = ca.as_deref().map(|ca| builders::with_trusted_ca(&mut desired, ca));
    let old = |annotation: &str| {
        sts.and_then(|s| s.spec.template.metadata.as_ref()?.annotations.as_ref()?.get(annotation).cloned())
    };
    if let Some(hash) = credentials.hash.clone().or_else(|| old(builders::CREDENTIALS_HASH_ANNOTATION)) {
        builders::with_credentials_hash(&mut desired, &hash);
    }
    let (old_hash, old_ca_hash) = (old(builders::CONFIG_HASH_ANNOTATION), old(builders::CA_HASH_ANNOTATION));
    let old_credentials = old(builders::CREDENTIALS_HASH_ANNOTATION);
    // The volume claim template cannot change (the API server refuses the whole StatefulSet):
    // a changed size or class is held back — the running template is kept — and reported, while
    // everything else (image, config, scaling, lost-member replacement) goes on.
    let was = Applied { tls: None, storage: sts.and_then(applied_storage) };
    let held = match validate::storage_unchanged(&c.spec, &was) {
        Ok(()) => None,
        Err(refused) => {
            if let Some(running) = sts {
                desired.spec.volume_claim_templates = running.spec.volume_claim_templates.clone();
            }
            Some((refused.reason, refused.message))
        }
    };
    let applied = apply(client, &desired).await?;
    if old_hash.is_some_and(|h| h != hash) {
        let note = format!("node config changed (hash {hash}); members are replaced one at a time, leader last");
        publish(ctx, c, EventType::Normal, "ConfigChanged", note, "Update").await;
    }
    if let (Some(old), Some(new)) = (&old_ca_hash, &ca_hash)
        && old != new
    {
        let note = "ca.crt of the TLS Secret changed; members restart one at a time, leader last, to trust it \
                    (keep the old CA in the bundle until every certificate is reissued)"
            .to_string();
        publish(ctx, c, EventType::Normal, "TrustChanged", note, "Update").await;
    }
    let held = held.or_else(|| credentials.keys_problem.clone().map(|m| ("ApiKeysSecretUnreadable", m)));
    let refusing: Vec<&str> = views.iter().filter(|v| v.refuses_token).map(|v| v.name.as_str()).collect();
    let held = held.or_else(|| {
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
    });
    if let (Some(old), Some(new)) = (&old_credentials, &credentials.hash)
        && old != new
    {
        let note = "the cluster token or API keys Secret changed; members restart one at a time, leader last, \
                    to read it (rotating the token takes three edits, each after the previous one rolled out: see README)"
            .to_string();
        publish(ctx, c, EventType::Normal, "CredentialsChanged", note, "Update").await;
    }
    let group = raft.as_ref().map(|r| {
        let voters = r.members.values().filter(|v| **v).count();
        // The pod being removed still runs between its removal from the group and the shrink.
        (i32::try_from(voters).unwrap_or(0), i32::try_from(plan.replicas.max(current)).unwrap_or(0))
    });
    apply_pdb(client, &builders::pod_disruption_budget(c, group, &ctx.capabilities)?).await?;

    let progress = execute(ctx, c, &plan.step, &node_client).await?;
    let members = raft
        .as_ref()
        .map(|r| {
            r.members
                .iter()
                .map(|(id, voter)| {
                    let pod =
                        ledger.file.ids.iter().find(|(_, i)| *i == id).map(|(p, _)| p.clone()).unwrap_or_default();
                    let view = views.iter().find(|v| v.name == pod);
                    MemberStatus {
                        id: *id,
                        pod,
                        role: if *voter { "voter" } else { "learner" }.into(),
                        healthy: view.is_some_and(|v| v.ready),
                        // Only while it lags: a caught-up member's index moves with every
                        // write, and a status that changes with every write re-triggers the
                        // reconcile for ever.
                        applied_index: view
                            .and_then(|v| v.applied)
                            .filter(|a| a + ctx.max_learner_lag < r.commit_index),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let leader = raft
        .as_ref()
        .and_then(|r| r.leader)
        .and_then(|l| ledger.file.ids.iter().find(|(_, i)| **i == l).map(|(p, _)| p.clone()));
    Ok(ChildrenApplied { observed: Observed::of(Some(&applied)), progress, members, leader, held })
}

/// Reconciles one ConfmanCluster.
pub async fn reconcile(c: Arc<ConfmanCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_inner(&c, &ctx).await;
    ctx.metrics.observe_reconcile(started.elapsed(), result.is_ok());
    if result.is_ok() {
        ctx.failures.lock().await.remove(&key(&c));
    }
    result
}

async fn reconcile_inner(c: &ConfmanCluster, ctx: &Context) -> Result<Action, Error> {
    let ns = c.namespace().ok_or(BuildError::MissingMetadata("namespace"))?;
    if c.meta().deletion_timestamp.is_some() {
        // The garbage collector is removing the children (foreground deletion waits for it):
        // re-applying them would fight it. Nothing is done for a cluster being deleted.
        tracing::info!(cluster = %key(c), "being deleted: nothing is applied");
        return Ok(Action::await_change());
    }
    let sts = get_opt::<StatefulSet>(&ctx.client, &ns, &builders::client_name(c)).await?;
    let now = Time(jiff::Timestamp::now());

    if c.spec.paused {
        tracing::info!(cluster = %key(c), "paused: nothing is changed");
        write_status(ctx, c, status::next_status(c, &Outcome::Paused, Observed::of(sts.as_ref()), now)).await?;
        return Ok(Action::await_change());
    }
    // The ledger records whether the group was created with TLS: the stand-in for CEL's
    // `oldSelf` in the "tls cannot be added or removed" rule (not enforced before 1.25). An
    // unreadable ledger tells nothing here; apply_children reports it.
    let stored = get_opt::<ConfigMap>(&ctx.client, &ns, &builders::members_name(c)).await?;
    // The storage rule's twin is applied later, against the running StatefulSet (held back,
    // not refused: see `apply_children`).
    let tls = stored.as_ref().and_then(|cm| Ledger::parse(cm).ok()).and_then(|l| l.tls());
    let applied = Applied { tls, storage: None };
    let tuning = match validate(&c.spec, &applied) {
        Ok(t) => t,
        Err(invalid) => {
            ctx.metrics.invalid_spec();
            tracing::warn!(cluster = %key(c), reason = invalid.reason, message = %invalid.message, "invalid spec");
            let outcome = Outcome::InvalidSpec { reason: invalid.reason, message: invalid.message };
            write_status(ctx, c, status::next_status(c, &outcome, Observed::of(sts.as_ref()), now)).await?;
            return Ok(Action::await_change());
        }
    };
    tell_unavailable(ctx, c).await;
    match apply_children(ctx, c, &tuning, sts.as_ref(), stored).await {
        Ok(ChildrenApplied { observed, progress, members, leader, held }) => {
            // A held-back change waits for the person, not for the cluster: no fast requeue.
            let holding = held.is_some();
            let outcome = Outcome::Applied { tuning, progress: progress.clone(), held };
            let mut new = status::next_status(c, &outcome, observed, now);
            if !members.is_empty() {
                new.members = members;
                new.leader = leader;
            }
            let settled = progress.is_none() && (holding || new.phase.as_deref() == Some("Running"));
            write_status(ctx, c, new).await?;
            let resync = if c.spec.tls.is_some() { TLS_RESYNC } else { RESYNC };
            Ok(Action::requeue(if settled { resync } else { ctx.converging }))
        }
        Err(e) => {
            let outcome = Outcome::Failed { message: e.to_string() };
            let new = status::next_status(c, &outcome, Observed::of(sts.as_ref()), now);
            if let Err(status_err) = write_status(ctx, c, new).await {
                tracing::warn!(cluster = %key(c), error = %status_err, "cannot record the failure in status");
            }
            Err(e)
        }
    }
}

/// Backoff after the `n`-th consecutive failure: 5 s doubling, at most 5 minutes.
pub fn backoff(n: u32) -> Duration {
    Duration::from_secs(5u64.saturating_mul(1 << n.min(6)).min(300))
}

/// Error policy: log, count, and retry with per-cluster exponential backoff.
pub fn error_policy(c: Arc<ConfmanCluster>, err: &Error, ctx: Arc<Context>) -> Action {
    let n = {
        // try_lock: the policy is synchronous; contention only delays the count by one failure.
        match ctx.failures.try_lock() {
            Ok(mut f) => {
                let n = f.entry(key(&c)).or_insert(0);
                *n += 1;
                *n - 1
            }
            Err(_) => 0,
        }
    };
    let delay = backoff(n);
    tracing::warn!(cluster = %key(&c), error = %err, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// The stateful API-server fake of the operator's integration tests, reused for the wiring of
/// capabilities and the ledger-based TLS check (it answers whatever path it is asked).
#[cfg(test)]
#[allow(dead_code)]
#[path = "../tests/support/mod.rs"]
mod fake_api;

#[cfg(test)]
mod wiring_tests {
    use std::sync::Arc;

    use kube::runtime::events::Reporter;
    use serde_json::json;

    use super::fake_api::FakeApi;
    use super::*;
    use crate::crd::{ConfmanClusterSpec, PayloadClass, TlsSpec};

    const CMC: &str = "/apis/confman.io/v1alpha1/namespaces/platform/confmanclusters/config";
    const STS: &str = "/apis/apps/v1/namespaces/platform/statefulsets/config";
    const MEMBERS: &str = "/api/v1/namespaces/platform/configmaps/config-members";

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn cluster() -> ConfmanCluster {
        let mut c = ConfmanCluster::new(
            "config",
            ConfmanClusterSpec {
                payload_class: PayloadClass::Small,
                ..ConfmanClusterSpec::minimal(3, "confman:1", "10Gi")
            },
        );
        c.metadata.namespace = Some("platform".into());
        c.metadata.uid = Some("cmc-uid".into());
        c.metadata.generation = Some(1);
        c
    }

    fn setup(c: &ConfmanCluster, caps: Capabilities) -> Result<(Arc<Context>, FakeApi), serde_json::Error> {
        let (client, fake) = FakeApi::start();
        fake.seed(CMC, serde_json::to_value(c)?);
        let reporter = Reporter { controller: FIELD_MANAGER.into(), instance: Some("test".into()) };
        let mut ctx = Context::new(client, reporter, Arc::new(Metrics::default()));
        ctx.capabilities = caps;
        Ok((Arc::new(ctx), fake))
    }

    #[tokio::test]
    async fn a_kubernetes_1_20_server_gets_objects_it_accepts_and_the_owner_is_told_once() -> TestResult {
        let c = cluster();
        let (ctx, fake) = setup(&c, Capabilities::of_version(1, 20))?;
        reconcile(Arc::new(c.clone()), ctx.clone()).await?;
        let paths: Vec<String> = fake.patches().into_iter().map(|p| p.path).collect();
        let v1beta1 = "/apis/policy/v1beta1/namespaces/platform/poddisruptionbudgets/config";
        assert!(paths.iter().any(|p| p == v1beta1), "{paths:?}");
        assert!(!paths.iter().any(|p| p.starts_with("/apis/policy/v1/")), "{paths:?}");
        let pdb = fake.get(v1beta1).ok_or("no PDB")?;
        assert_eq!((&pdb["apiVersion"], &pdb["spec"]["minAvailable"]), (&json!("policy/v1beta1"), &json!(2)));
        let sts = fake.get(STS).ok_or("no StatefulSet")?;
        assert!(sts["spec"].get("persistentVolumeClaimRetentionPolicy").is_none(), "{}", sts["spec"]);
        assert_eq!(sts["spec"]["updateStrategy"]["type"], json!("OnDelete"));

        // Reconciled again (the StatefulSet gone, so no member is asked): no second Event.
        fake.0.lock().map_err(|e| e.to_string())?.objects.remove(STS);
        reconcile(Arc::new(c), ctx).await?;
        let told = fake.event_reasons().iter().filter(|r| *r == "FeatureUnavailable").count();
        assert_eq!(told, 1, "{:?}", fake.event_reasons());
        Ok(())
    }

    #[tokio::test]
    async fn a_recent_server_gets_policy_v1_and_the_retention_policy_without_a_warning() -> TestResult {
        let c = cluster();
        let (ctx, fake) = setup(&c, Capabilities::RECENT)?;
        reconcile(Arc::new(c), ctx).await?;
        assert!(fake.get("/apis/policy/v1/namespaces/platform/poddisruptionbudgets/config").is_some());
        let sts = fake.get(STS).ok_or("no StatefulSet")?;
        assert_eq!(sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"], json!("Delete"));
        assert!(!fake.event_reasons().iter().any(|r| r == "FeatureUnavailable"));
        Ok(())
    }

    /// Without CEL (Kubernetes < 1.25) the API server takes a spec that adds TLS to a cluster
    /// created without it; the operator refuses it by the scheme recorded in the ledger.
    #[tokio::test]
    async fn adding_tls_to_a_running_cluster_is_refused_and_changes_no_child() -> TestResult {
        let plain = cluster();
        let ledger = Ledger::bootstrap(&plain, 3).config_map(&plain)?;
        let mut c = plain;
        c.spec.tls = Some(TlsSpec { client_secret: "tls".into(), peer_secret: None });
        let (ctx, fake) = setup(&c, Capabilities::of_version(1, 20))?;
        fake.seed(MEMBERS, serde_json::to_value(&ledger)?);
        reconcile(Arc::new(c), ctx).await?;
        let children: Vec<String> =
            fake.patches().into_iter().map(|p| p.path).filter(|p| !p.starts_with(CMC)).collect();
        assert!(children.is_empty(), "{children:?}");
        let stored: ConfmanCluster = serde_json::from_value(fake.get(CMC).ok_or("cluster gone")?)?;
        let inv = stored
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|x| x.type_ == status::INVALID_SPEC))
            .ok_or("no InvalidSpec")?;
        assert_eq!((inv.status.as_str(), inv.reason.as_str()), ("True", "InvalidTLS"));
        assert!(inv.message.contains("tls cannot be added or removed"), "{}", inv.message);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::backoff;
    use std::time::Duration;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let d: Vec<_> = (0..9).map(backoff).collect();
        assert_eq!(d[0], Duration::from_secs(5));
        assert_eq!(d[1], Duration::from_secs(10));
        assert_eq!(d[5], Duration::from_secs(160));
        assert_eq!(d[6], Duration::from_secs(300));
        assert_eq!(d[8], Duration::from_secs(300));
    }
}
