//! The reconcile loop for one ConfmanCluster: dereference (read what exists) → validate →
//! build (pure) → apply (server-side apply, one field manager) → status and Events.
//! An invalid or paused spec changes no child.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Mutex;

use crate::builders::{self, BuildError};
use crate::crd::{ConfmanCluster, ConfmanClusterStatus};
use crate::members::{Ledger, LedgerError};
use crate::metrics::Metrics;
use crate::status::{self, Observed, Outcome};
use crate::validate::validate;

/// Field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "confman-operator";
/// How often a healthy cluster is re-checked without any watch event.
const RESYNC: Duration = Duration::from_secs(300);
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
    /// The status could not be serialised.
    #[error("status: {0}")]
    Json(#[from] serde_json::Error),
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
}

impl Context {
    /// A context over `client`, publishing Events as `reporter`.
    pub fn new(client: kube::Client, reporter: kube::runtime::events::Reporter, metrics: Arc<Metrics>) -> Context {
        Context { recorder: Recorder::new(client.clone(), reporter), client, metrics, failures: Mutex::default() }
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

async fn apply<K>(client: &kube::Client, obj: &K) -> Result<K, Error>
where
    K: Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Serialize + Debug,
    K::DynamicType: Default,
{
    let ns = obj.meta().namespace.clone().unwrap_or_default();
    let name = obj.meta().name.clone().unwrap_or_default();
    let params = PatchParams::apply(FIELD_MANAGER).force();
    Ok(Api::<K>::namespaced(client.clone(), &ns).patch(&name, &params, &Patch::Apply(obj)).await?)
}

async fn publish(ctx: &Context, c: &ConfmanCluster, type_: EventType, reason: &str, note: String, action: &str) {
    let event = Event { type_, reason: reason.into(), note: Some(note), action: action.into(), secondary: None };
    if let Err(e) = ctx.recorder.publish(&event, &c.object_ref(&())).await {
        tracing::warn!(cluster = %key(c), error = %e, "cannot publish event");
    }
}

/// Patches the status (server-side apply on the status subresource) and publishes an Event
/// for every condition that changed.
async fn write_status(ctx: &Context, c: &ConfmanCluster, new: ConfmanClusterStatus) -> Result<(), Error> {
    let api = Api::<ConfmanCluster>::namespaced(ctx.client.clone(), &c.namespace().unwrap_or_default());
    let body = serde_json::json!({
        "apiVersion": ConfmanCluster::api_version(&()),
        "kind": ConfmanCluster::kind(&()),
        "status": new,
    });
    api.patch_status(&c.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body)).await?;
    for cond in status::transitions(c.status.as_ref(), &new) {
        let type_ = if status::is_warning(cond) { EventType::Warning } else { EventType::Normal };
        let note =
            if cond.message.is_empty() { format!("{} is {}", cond.type_, cond.status) } else { cond.message.clone() };
        publish(ctx, c, type_, &cond.reason, note, &format!("{}{}", cond.type_, cond.status)).await;
    }
    Ok(())
}

/// Builds and applies every child; returns what the StatefulSet reports and whether a shrink
/// was held back.
async fn apply_children(
    ctx: &Context,
    c: &ConfmanCluster,
    tuning: &confman_tuning::Tuning,
    sts: Option<&StatefulSet>,
) -> Result<(Observed, Option<i32>), Error> {
    let ns = c.namespace().unwrap_or_default();
    let client = &ctx.client;

    // The token is created once; an existing Secret is never rewritten (no accidental rotation).
    if get_opt::<Secret>(client, &ns, &builders::token_name(c)).await?.is_none() {
        apply(client, &builders::token_secret(c, &builders::generate_token())?).await?;
        publish(ctx, c, EventType::Normal, "TokenCreated", "generated the cluster token Secret".into(), "Create").await;
    }

    // Until membership changes are driven by the operator, never shrink below the pods that
    // exist: removing a pod without removing its Raft member would leave a dead voter.
    let current = sts.and_then(|s| s.spec.replicas).unwrap_or(0);
    let held = (current > c.spec.replicas).then_some(current);
    let replicas = held.unwrap_or(c.spec.replicas);

    let stored = get_opt::<ConfigMap>(client, &ns, &builders::members_name(c)).await?;
    let mut ledger = match &stored {
        Some(cm) => Ledger::parse(cm)?,
        None => Ledger::bootstrap(c, u32::try_from(replicas).unwrap_or(0)),
    };
    let added = ledger.allocate(c, u32::try_from(replicas).unwrap_or(0));
    apply(client, &ledger.config_map(c)?).await?;
    if stored.is_none() {
        let note = format!("bootstrap members: {}", ledger.bootstrap_peers);
        publish(ctx, c, EventType::Normal, "MembersAllocated", note, "Bootstrap").await;
    } else if !added.is_empty() {
        let note = format!("allocated node ids for {}", added.join(", "));
        publish(ctx, c, EventType::Normal, "MembersAllocated", note, "Allocate").await;
    }

    let config = builders::config_map(c, tuning)?;
    let hash = builders::config_hash(&config);
    apply(client, &config).await?;
    apply(client, &builders::headless_service(c)?).await?;
    apply(client, &builders::client_service(c)?).await?;
    let mut desired = builders::statefulset(c, tuning, &hash)?;
    desired.spec.replicas = Some(replicas);
    let old_hash = sts.and_then(|s| {
        s.spec.template.metadata.as_ref()?.annotations.as_ref()?.get(builders::CONFIG_HASH_ANNOTATION).cloned()
    });
    let applied = apply(client, &desired).await?;
    if old_hash.is_some_and(|h| h != hash) {
        publish(
            ctx,
            c,
            EventType::Normal,
            "ConfigChanged",
            format!("node config changed (hash {hash}); rolling the members"),
            "Update",
        )
        .await;
    }
    apply(client, &builders::pod_disruption_budget(c)?).await?;
    Ok((Observed::of(Some(&applied)), held))
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
    let sts = get_opt::<StatefulSet>(&ctx.client, &ns, &builders::client_name(c)).await?;
    let now = Time(jiff::Timestamp::now());

    if c.spec.paused {
        tracing::info!(cluster = %key(c), "paused: nothing is changed");
        write_status(ctx, c, status::next_status(c, &Outcome::Paused, Observed::of(sts.as_ref()), now)).await?;
        return Ok(Action::await_change());
    }
    let tuning = match validate(&c.spec) {
        Ok(t) => t,
        Err(invalid) => {
            ctx.metrics.invalid_spec();
            tracing::warn!(cluster = %key(c), reason = invalid.reason, message = %invalid.message, "invalid spec");
            let outcome = Outcome::InvalidSpec { reason: invalid.reason, message: invalid.message };
            write_status(ctx, c, status::next_status(c, &outcome, Observed::of(sts.as_ref()), now)).await?;
            return Ok(Action::await_change());
        }
    };
    match apply_children(ctx, c, &tuning, sts.as_ref()).await {
        Ok((observed, held)) => {
            let outcome = Outcome::Applied { tuning: tuning.into(), scale_down_held: held };
            let new = status::next_status(c, &outcome, observed, now);
            let settled = new.phase.as_deref() == Some("Running") && held.is_none();
            write_status(ctx, c, new).await?;
            Ok(Action::requeue(if settled { RESYNC } else { CONVERGING }))
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
