//! The reconcile of one ConfmanCluster, as a pipeline whose stages each have one job:
//! `observe` reads the cluster and asks its nodes, `decide` works out (without I/O) the
//! children, the membership step and the status, `act` applies and calls, and `report`
//! writes the status and Events. An invalid or paused spec stops before anything is decided,
//! so it changes no child; a cluster being deleted is left to the garbage collector, but for
//! its cluster-scoped TokenReview binding, which the operator removes.

mod act;
mod decide;
mod observe;
mod report;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use kube::runtime::events::Recorder;
use kube::{Resource, ResourceExt};
use tokio::sync::Mutex;

use crate::builders::{self, BuildError};
use crate::capabilities::Capabilities;
use crate::crd::ConfmanCluster;
use crate::ledger::LedgerError;
use crate::metrics::Metrics;
use crate::status::{self, Observed, Outcome};

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
    /// The API keys Secret (named by `spec.auth.apiKeysSecret`, or the generated admin key
    /// Secret) is missing or incomplete.
    #[error("API keys Secret {secret}: {reason}")]
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
    /// The ClusterRole (allowing `create` on tokenreviews) the members' ServiceAccount is bound
    /// to when they accept ServiceAccount tokens.
    pub token_review_role: String,
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
            token_review_role: builders::DEFAULT_TOKEN_REVIEW_ROLE.into(),
        }
    }
}

fn key(c: &ConfmanCluster) -> String {
    format!("{}/{}", c.namespace().unwrap_or_default(), c.name_any())
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
    c.namespace().ok_or(BuildError::MissingMetadata("namespace"))?;
    if c.meta().deletion_timestamp.is_some() {
        // The garbage collector is removing the children (foreground deletion waits for it):
        // re-applying them would fight it. Only the cluster-scoped TokenReview binding, which
        // the collector cannot remove, is the operator's to delete.
        if act::holds_token_review_finalizer(c) {
            act::release_token_review(ctx, c).await?;
        }
        tracing::info!(cluster = %key(c), "being deleted: nothing is applied");
        return Ok(Action::await_change());
    }
    let mut seen = observe::read(ctx, c).await?;
    let before = Observed::of(seen.statefulset.as_ref());
    let now = Time(jiff::Timestamp::now());
    if c.spec.paused {
        tracing::info!(cluster = %key(c), "paused: nothing is changed");
        report::write_status(ctx, c, status::next_status(c, &Outcome::Paused, before, now)).await?;
        return Ok(Action::await_change());
    }
    let tuning = match decide::validate(c, &seen) {
        Ok(t) => t,
        Err(invalid) => {
            ctx.metrics.invalid_spec();
            tracing::warn!(cluster = %key(c), reason = invalid.reason, message = %invalid.message, "invalid spec");
            let outcome = Outcome::InvalidSpec { reason: invalid.reason, message: invalid.message };
            report::write_status(ctx, c, status::next_status(c, &outcome, before, now)).await?;
            return Ok(Action::await_change());
        }
    };
    report::tell_unavailable(ctx, c).await;
    let carried_out = async {
        seen.read_secrets(ctx, c).await?;
        let access = decide::access(c, &seen)?;
        let nodes = seen.ask_nodes(ctx, c, &access).await?;
        let plan =
            decide::plan(c, &tuning, &seen, &access, &ctx.capabilities, ctx.max_learner_lag, &ctx.token_review_role)?;
        let done = act::carry_out(ctx, c, &plan, &nodes).await?;
        Ok::<_, Error>((plan, done))
    };
    match carried_out.await {
        Ok((plan, done)) => {
            let (new, settled) = decide::status(c, tuning, plan, done, before, now);
            report::write_status(ctx, c, new).await?;
            let resync = if c.spec.tls.is_some() { TLS_RESYNC } else { RESYNC };
            Ok(Action::requeue(if settled { resync } else { ctx.converging }))
        }
        Err(e) => {
            let new = status::next_status(c, &Outcome::Failed { message: e.to_string() }, before, now);
            if let Err(status_err) = report::write_status(ctx, c, new).await {
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
#[path = "../../tests/support/mod.rs"]
mod fake_api;

#[cfg(test)]
mod wiring_tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use kube::runtime::events::Reporter;
    use serde::Deserialize;
    use serde_json::json;

    use super::fake_api::FakeApi;
    use super::*;
    use crate::crd::{PayloadClass, TlsSpec};
    use crate::ledger::Ledger;

    const CMC: &str = "/apis/confman.io/v1alpha1/namespaces/platform/confmanclusters/config";
    const STS: &str = "/apis/apps/v1/namespaces/platform/statefulsets/config";
    const MEMBERS: &str = "/api/v1/namespaces/platform/configmaps/config-members";

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn cluster() -> ConfmanCluster {
        crate::fixtures::cluster(3, PayloadClass::Small)
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

    /// `render` and the reconcile share one list of children: what a first reconcile applies is
    /// what `render` shows.
    #[tokio::test]
    async fn a_first_reconcile_applies_the_children_render_shows() -> TestResult {
        let c = cluster();
        let (ctx, fake) = setup(&c, Capabilities::RECENT)?;
        reconcile(Arc::new(c.clone()), ctx).await?;
        let name = |v: &serde_json::Value| (v["kind"].to_string(), v["metadata"]["name"].to_string());
        let applied: BTreeSet<_> =
            fake.patches().iter().filter(|p| !p.path.starts_with(CMC)).map(|p| name(&p.body)).collect();
        let yaml = crate::render::render(&serde_yaml_ng::to_string(&c)?)?;
        let mut rendered = BTreeSet::new();
        for doc in serde_yaml_ng::Deserializer::from_str(&yaml) {
            rendered.insert(name(&serde_json::Value::deserialize(doc)?));
        }
        assert_eq!(applied, rendered);
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
