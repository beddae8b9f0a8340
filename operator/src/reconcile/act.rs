//! Act: the changes a [`Plan`] calls for — server-side applies, deletions and the nodes' admin
//! calls — in the order that keeps the members safe: the ledger before the StatefulSet whose
//! pods read it, an earlier member's volume gone before a pod starts on its ordinal, and the
//! membership step last, with the children in place. Nothing is decided here beyond whether an
//! object is this cluster's to change.

use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::decide::Plan;
use super::report::{self, Notice};
use super::{Context, Error, FIELD_MANAGER, key};
use crate::builders::{self, Children, Pdb};
use crate::crd::ConfmanCluster;
use crate::membership_step::Step;
use crate::status::Observed;

/// What carrying out a plan came to.
#[derive(Debug, Clone)]
pub enum Done {
    /// Every child applied and the step taken.
    Applied {
        /// What the StatefulSet as applied reports.
        observed: Observed,
        /// The membership step under way (Progressing reason and message), None when settled.
        progress: Option<(&'static str, String)>,
    },
    /// The StatefulSet and the step wait until earlier members' claims are gone (the note).
    WaitingForVolumes(String),
}

/// Applies the children of `plan`, then takes its membership step through `nodes`.
pub async fn carry_out(
    ctx: &Context,
    c: &ConfmanCluster,
    plan: &Plan,
    nodes: &confman_client::Client,
) -> Result<Done, Error> {
    let Children {
        token,
        admin_keys,
        service_account,
        token_review_binding,
        ledger,
        config,
        headless,
        client,
        statefulset,
        pdb,
    } = &plan.children;
    let kube = &ctx.client;
    // Each generated Secret is announced at once: a later failure would leave it in place, and
    // the next reconcile, finding it, would have nothing to announce.
    if let Some(token) = token {
        apply(kube, token).await?;
        let created = Notice::normal("TokenCreated", "generated the cluster token Secret".into(), "Create");
        report::announce(ctx, c, std::slice::from_ref(&created)).await;
    }
    if let Some(admin_keys) = admin_keys {
        apply(kube, admin_keys).await?;
        let note = format!(
            "generated the admin API key Secret {} (no spec.auth.apiKeysSecret): key {}",
            admin_keys.name_any(),
            builders::ADMIN_KEY
        );
        let created = Notice::normal("AdminKeyCreated", note, "Create");
        report::announce(ctx, c, std::slice::from_ref(&created)).await;
    }
    if let Some(account) = service_account {
        apply(kube, account).await?;
    }
    match token_review_binding {
        Some(binding) => {
            // The finalizer first: a cluster deleted in between still gets its binding removed.
            hold_token_review_finalizer(ctx, c).await?;
            apply_with(Api::all(kube.clone()), binding, "ClusterRoleBinding").await?;
        }
        None if holds_token_review_finalizer(c) => release_token_review(ctx, c).await?,
        None => {}
    }
    apply(kube, ledger).await?;
    report::announce(ctx, c, &plan.on_ledger).await;
    if !plan.admitted.is_empty() {
        tracing::info!(cluster = %key(c), admitted = ?plan.admitted, "members admitted: their ids never start on an empty volume");
    }
    apply(kube, config).await?;
    apply(kube, headless).await?;
    apply(kube, client).await?;
    // The start waits until a stale claim is really gone: the pvc-protection finalizer keeps a
    // deleted claim while a pod still uses it, and the StatefulSet would bind the new pod to it.
    let pending = clear_stale_claims(ctx, c, &plan.fresh).await?;
    if !pending.is_empty() {
        let note = format!("waiting for {} to be deleted before a member starts on its ordinal", pending.join(", "));
        return Ok(Done::WaitingForVolumes(note));
    }
    let statefulset = apply(kube, statefulset).await?;
    report::announce(ctx, c, &plan.on_rollout).await;
    match pdb {
        Pdb::V1(p) => {
            apply(kube, p).await?;
        }
        Pdb::V1beta1(d) => {
            let ar = builders::pdb_v1beta1_resource();
            let api = Api::namespaced_with(kube.clone(), &d.namespace().unwrap_or_default(), &ar);
            apply_with(api, d, &ar.kind).await?;
        }
    }
    let progress = take_step(ctx, c, &plan.step, nodes).await?;
    Ok(Done::Applied { observed: Observed::of(Some(&statefulset)), progress })
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
    let api = Api::namespaced(client.clone(), &obj.namespace().unwrap_or_default());
    apply_with(api, obj, &K::kind(&K::DynamicType::default())).await
}

/// [`apply`] through `api` (also for a type k8s-openapi does not have: an older API version).
async fn apply_with<K>(api: Api<K>, obj: &K, kind: &str) -> Result<K, Error>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug,
{
    let name = obj.name_any();
    if let Some(existing) = api.get_opt(&name).await? {
        refuse_unless_ours(existing.meta(), obj.meta(), kind)?;
    }
    Ok(api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(obj)).await?)
}

/// Whether the cluster holds [`builders::TOKEN_REVIEW_FINALIZER`] (its binding may exist).
pub fn holds_token_review_finalizer(c: &ConfmanCluster) -> bool {
    c.finalizers().iter().any(|f| f == builders::TOKEN_REVIEW_FINALIZER)
}

async fn hold_token_review_finalizer(ctx: &Context, c: &ConfmanCluster) -> Result<(), Error> {
    if holds_token_review_finalizer(c) {
        return Ok(());
    }
    let mut finalizers = c.finalizers().to_vec();
    finalizers.push(builders::TOKEN_REVIEW_FINALIZER.into());
    patch_finalizers(ctx, c, finalizers).await
}

/// Removes the cluster's TokenReview binding (cluster-scoped: the garbage collector does not),
/// then the finalizer that waited for it. Called when the cluster is deleted or stops mapping
/// ServiceAccounts.
pub async fn release_token_review(ctx: &Context, c: &ConfmanCluster) -> Result<(), Error> {
    let bindings = Api::<ClusterRoleBinding>::all(ctx.client.clone());
    let name = builders::token_review_binding_name(c);
    if let Some(existing) = bindings.get_opt(&name).await? {
        let labels = existing.metadata.labels.clone().unwrap_or_default();
        let ours = builders::binding_labels(c).iter().all(|(k, v)| labels.get(k) == Some(v));
        if ours {
            // Only the object just read: a same-named one made meanwhile is left alone.
            let only_it = DeleteParams {
                preconditions: Some(kube::api::Preconditions {
                    uid: existing.metadata.uid.clone(),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match bindings.delete(&name, &only_it).await {
                Ok(_) => tracing::info!(cluster = %key(c), binding = %name, "removed the TokenReview binding"),
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        } else {
            tracing::warn!(cluster = %key(c), binding = %name, "a ClusterRoleBinding of this name is not this cluster's: left in place");
        }
    }
    let finalizers = c.finalizers().iter().filter(|f| *f != builders::TOKEN_REVIEW_FINALIZER).cloned().collect();
    patch_finalizers(ctx, c, finalizers).await
}

/// Sets the cluster's finalizers, failing (and so retrying) if the object changed meanwhile.
async fn patch_finalizers(ctx: &Context, c: &ConfmanCluster, finalizers: Vec<String>) -> Result<(), Error> {
    let api = Api::<ConfmanCluster>::namespaced(ctx.client.clone(), &c.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "metadata": { "finalizers": finalizers, "resourceVersion": c.resource_version() }
    });
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..PatchParams::default() };
    api.patch(&c.name_any(), &params, &Patch::Merge(&patch)).await?;
    Ok(())
}

/// [`Error::NotOurs`] unless `existing` is this cluster's (see [`apply`]).
fn refuse_unless_ours(existing: &ObjectMeta, desired: &ObjectMeta, kind: &str) -> Result<(), Error> {
    let controller = |m: &ObjectMeta| {
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

/// Deletes the claims of `ordinals` left by earlier members; returns the ones still present
/// (being deleted). A claim without this cluster's labels is not ours: refused, never deleted.
async fn clear_stale_claims(ctx: &Context, c: &ConfmanCluster, ordinals: &[u32]) -> Result<Vec<String>, Error> {
    let api = Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &c.namespace().unwrap_or_default());
    let ours = builders::selector_labels(c);
    let mut pending = Vec::new();
    for ordinal in ordinals {
        let pod = builders::pod_name(c, *ordinal);
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
            report::announce(ctx, c, &[Notice::normal("StaleVolumeDeleted", note, "Delete")]).await;
        }
        // Deleted (or being deleted): gone only once a read no longer finds it.
        if api.get_opt(&name).await?.is_some() {
            pending.push(name);
        }
    }
    Ok(pending)
}

/// Carries out a Raft or pod step (children were applied before); returns the Progressing
/// reason and message, or None when settled.
async fn take_step(
    ctx: &Context,
    c: &ConfmanCluster,
    step: &Step,
    nodes: &confman_client::Client,
) -> Result<Option<(&'static str, String)>, Error> {
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), &c.namespace().unwrap_or_default());
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
            nodes.add_learner(*id, &builders::pod_url(c, pod)).await.map_err(node)?;
            ("ScalingUp", format!("added {pod} (node {id}) as a learner; it caught up"), true)
        }
        Step::Promote { pod, id } => {
            nodes.promote(*id).await.map_err(node)?;
            ("ScalingUp", format!("promoted {pod} (node {id}) to voter"), true)
        }
        Step::TransferLeader { from, to, reason } => {
            let to = nodes.transfer_leader(*to).await.map_err(node)?;
            ("MovingLeader", format!("moved leadership from node {from} to {to:?}: {reason}"), true)
        }
        Step::Remove { pod, id } => {
            nodes.remove(*id).await.map_err(node)?;
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
            nodes.remove(*id).await.map_err(node)?;
            let note = format!("{pod} lost its volume: removed node {id} from the group (it never rejoins as {id})");
            let lost = Notice { warning: true, ..Notice::normal("MemberLost", note.clone(), "Membership") };
            report::announce(ctx, c, &[lost]).await;
            ("ReplacingLostMember", note, false)
        }
        Step::ReplaceLost { pod, lost } => {
            pods.delete(pod, &DeleteParams::default()).await?;
            (
                "ReplacingLostMember",
                format!("restarting {pod} under a fresh node id in place of lost node {lost}"),
                true,
            )
        }
        Step::Replace { pod } => {
            pods.delete(pod, &DeleteParams::default()).await?;
            ("Upgrading", format!("replacing {pod} with the current revision (followers first, leader last)"), true)
        }
    };
    if event {
        tracing::info!(cluster = %key(c), reason, %note, "membership step");
        report::announce(ctx, c, &[Notice::normal(reason, note.clone(), "Membership")]).await;
    }
    Ok(Some((reason, note)))
}
