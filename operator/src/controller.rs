//! The controller process: watches ConfmanClusters and the children it owns, runs the reconcile
//! loop, serves `/health`, `/readyz`, `/livez` and `/metrics`, and — with leader election on —
//! reconciles only while holding the `confman-operator` Lease. A replica that loses the Lease,
//! or cannot renew it within [`RENEW_DEADLINE`], drops its controller at once (in-flight
//! reconciles are cancelled, not awaited) and exits, so a restart re-contends cleanly and no
//! two replicas act on the same cluster.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Api;
use kube::api::DynamicObject;
use kube::runtime::Controller;
use kube::runtime::WatchStreamExt;
use kube::runtime::events::Reporter;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::{Predicate, PredicateConfig, predicates};
use kube_lease_manager::LeaseManagerBuilder;

use crate::builders::pdb_v1beta1_resource;
use crate::capabilities::discover;
use crate::crd::ConfmanCluster;
use crate::metrics::{Health, Metrics, Role};
use crate::reconcile::{Context, FIELD_MANAGER, error_policy, reconcile};

/// Name of the leader-election Lease.
pub const LEASE_NAME: &str = "confman-operator";
/// Lease duration (client-go's leader-election default): a standby takes over this long after
/// the holder's last renewal, so a crashed leader is replaced within it.
pub const LEASE_SECONDS: u64 = 15;
/// How often the holder renews (client-go's retryPeriod): several renewals fit in
/// [`RENEW_DEADLINE`], so one failed attempt does not cost the leadership.
pub const RENEW_PERIOD_SECONDS: u64 = 2;
/// The holder gives up leading when none of its renewals has succeeded for this long
/// (client-go's renewDeadline). It is shorter than the Lease so that the holder has stopped
/// reconciling before a standby may take over: kube-lease-manager itself keeps believing it
/// leads for as long as the API server does not answer.
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);

/// Resources the controller watches (plural names): Ready waits for the initial list of each.
pub const WATCHED: [&str; 6] =
    ["confmanclusters", "statefulsets", "services", "configmaps", "poddisruptionbudgets", "pods"];

/// How the controller runs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Watch only this namespace (all namespaces when unset).
    pub namespace: Option<String>,
    /// Address of the `/health`, `/readyz`, `/livez` and `/metrics` listener.
    pub listen: SocketAddr,
    /// Reconcile only while holding the Lease (for more than one replica).
    pub leader_election: bool,
    /// Namespace of the Lease (the operator's own).
    pub lease_namespace: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// The ClusterRole the members' ServiceAccount is bound to for TokenReview.
    pub token_review_role: String,
}

/// Why the controller stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// No usable Kubernetes configuration or client.
    #[error("kubernetes client: {0}")]
    Client(#[from] kube::Error),
    /// No Kubernetes configuration (in-cluster or kubeconfig) was found.
    #[error("kubernetes configuration: {0}")]
    Config(#[from] kube::config::InferConfigError),
    /// The health/metrics listener could not be bound.
    #[error("listen on {addr}: {source}")]
    Listen {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// Leader election failed.
    #[error("leader election: {0}")]
    Lease(#[from] kube_lease_manager::LeaseManagerError),
    /// The API server's capabilities could not be discovered at start-up.
    #[error(transparent)]
    Discovery(#[from] crate::capabilities::DiscoveryError),
    /// The Lease was lost (or could not be renewed in time) while reconciling.
    #[error("lost the leader lease ({0}); exiting so this replica can re-contend")]
    LeaseLost(String),
}

/// A probe's answer: 200 with what is fine, or 503 with why not.
fn probe(result: Result<String, String>) -> (http::StatusCode, String) {
    match result {
        Ok(what) => (http::StatusCode::OK, what + "\n"),
        Err(why) => (http::StatusCode::SERVICE_UNAVAILABLE, why + "\n"),
    }
}

async fn serve_http(listener: tokio::net::TcpListener, metrics: Arc<Metrics>, health: Arc<Health>) {
    let (ready, live) = (health.clone(), health);
    let app = axum::Router::new()
        // Kept for probes written against earlier charts: says only that the process serves.
        .route("/health", axum::routing::get(|| async { "ok" }))
        .route("/readyz", axum::routing::get(move || std::future::ready(probe(ready.readiness()))))
        .route("/livez", axum::routing::get(move || std::future::ready(probe(live.liveness()))))
        .route(
            "/metrics",
            axum::routing::get(move || {
                let m = metrics.clone();
                async move { ([("content-type", "text/plain; version=0.0.4")], m.render()) }
            }),
        );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "health/metrics server stopped");
    }
}

/// The resource a request lists (its plural name), when it is a list rather than a watch or a
/// call on one object.
fn listed_resource(method: &http::Method, uri: &http::Uri) -> Option<String> {
    if method != http::Method::GET {
        return None;
    }
    let watching = uri.query().unwrap_or_default().split('&').any(|kv| kv == "watch=true" || kv == "watch=1");
    if watching {
        return None;
    }
    let parts: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    let rest = match *parts.first()? {
        "api" => parts.get(2..)?,
        "apis" => parts.get(3..)?,
        _ => return None,
    };
    match rest {
        [plural] | ["namespaces", _, plural] => Some((*plural).to_string()),
        _ => None,
    }
}

/// API client middleware feeding [`Health`] with the outcome of every call, so that readiness
/// reflects whether the API server answers (not only whether this process listens). It wraps
/// kube's whole stack, so a 429/503/504 that kube's client retries counts once its retries are
/// exhausted; connection errors (`client error (Connect)`) and other 5xx count at once.
#[derive(Clone)]
struct HealthLayer(Arc<Health>);

impl<S> tower::Layer<S> for HealthLayer {
    type Service = HealthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HealthService { inner, health: self.0.clone() }
    }
}

#[derive(Clone)]
struct HealthService<S> {
    inner: S,
    health: Arc<Health>,
}

impl<S, ReqB, ResB> tower::Service<http::Request<ReqB>> for HealthService<S>
where
    S: tower::Service<http::Request<ReqB>, Response = http::Response<ResB>>,
    S::Future: Send + 'static,
    S::Error: std::fmt::Display + Send + 'static,
    ResB: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqB>) -> Self::Future {
        let listed = listed_resource(req.method(), req.uri());
        let what = format!("{} {}", req.method(), req.uri().path());
        let health = self.health.clone();
        let call = self.inner.call(req);
        Box::pin(async move {
            let res = call.await;
            match &res {
                Ok(r) if r.status().is_server_error() || r.status() == http::StatusCode::TOO_MANY_REQUESTS => {
                    health.api_failed(format!("{what}: {}", r.status()));
                }
                Ok(r) => health.api_answered(listed.as_deref().filter(|_| r.status().is_success())),
                Err(e) => health.api_failed(format!("{what}: {e}")),
            }
            res
        })
    }
}

/// Runs the controller (watches and reconcile loop) with `ctx` until `stop` resolves or a
/// signal arrives. Used by `run` and by end-to-end tests against a stand-in API server. The
/// PodDisruptionBudgets are watched in the API version `ctx.capabilities` says is served: a
/// watch on `policy/v1` fails on a server older than 1.21.
pub async fn run_controller(
    client: kube::Client,
    namespace: Option<&str>,
    ctx: Arc<Context>,
    health: Arc<Health>,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
) {
    fn api<K>(client: &kube::Client, ns: Option<&str>) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let ns = namespace;
    let owned = watcher::Config::default().labels("app.kubernetes.io/managed-by=confman-operator");
    tracing::info!(namespace = ns.unwrap_or("<all>"), "controller started");
    health.require_lists(WATCHED);
    health.set_role(Role::Leading);
    let in_flight = health.clone();
    // Only a new generation (a spec change, or deletion) or changed annotations (a person's
    // nudge: `kubectl annotate cmc <name> confman.io/reconcile=$(date +%s)`) trigger a reconcile
    // from the cluster watch; status writes do not, so a status that moves can never set off
    // the next reconcile at once. Children, pods and explicit requeues drive everything else.
    let (clusters, writer) = reflector::store::<ConfmanCluster>();
    let changed = watcher(api::<ConfmanCluster>(&client, ns), watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(predicates::generation.combine(predicates::annotations), PredicateConfig::default());
    let controller = Controller::for_stream(changed, clusters)
        .owns(api::<StatefulSet>(&client, ns), owned.clone())
        .owns(api::<Service>(&client, ns), owned.clone())
        .owns(api::<ConfigMap>(&client, ns), owned.clone());
    let controller = if ctx.capabilities.pdb_v1 {
        controller.owns(api::<PodDisruptionBudget>(&client, ns), owned)
    } else {
        let ar = pdb_v1beta1_resource();
        let pdbs = match ns {
            Some(ns) => Api::<DynamicObject>::namespaced_with(client.clone(), ns, &ar),
            None => Api::<DynamicObject>::all_with(client.clone(), &ar),
        };
        controller.owns_with(pdbs, ar, owned)
    };
    controller
        // Pods belong to the StatefulSet, not to the cluster: map them back by their instance
        // label, so readiness changes drive the membership steps without waiting for a requeue.
        .watches(api::<Pod>(&client, ns), watcher::Config::default().labels("app.kubernetes.io/name=confman"), |pod| {
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            pod.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("app.kubernetes.io/instance").cloned())
                .map(|name| ObjectRef::<ConfmanCluster>::new(&name).within(&ns))
        })
        .shutdown_on_signal()
        .graceful_shutdown_on(stop)
        .run(
            move |obj, ctx| {
                let health = in_flight.clone();
                async move {
                    let _running = health.reconcile_started();
                    reconcile(obj, ctx).await
                }
            },
            error_policy,
            ctx,
        )
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(cluster = %obj.name, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile error"),
            }
        })
        .await;
    health.set_role(Role::Stopped);
    tracing::info!("controller stopped");
}

async fn terminated() {
    #[cfg(unix)]
    {
        if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Resolves, with the reason, when this replica must stop acting as leader: the Lease names
/// another holder, kube-lease-manager reports the loss, or no renewal of ours has been seen for
/// [`RENEW_DEADLINE`] (kube-lease-manager only notices a loss after the API server answers
/// again, by which time a standby may already lead). Renewals are observed by watching the
/// Lease: its `renewTime` is written with this process's clock, so it is compared with it.
async fn leadership_lost(
    client: kube::Client,
    namespace: &str,
    identity: &str,
    mut leading: tokio::sync::watch::Receiver<bool>,
) -> String {
    let api: Api<Lease> = Api::namespaced(client, namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={LEASE_NAME}"));
    let mut leases = watcher(api, config).default_backoff().applied_objects().boxed();
    // Acquisition wrote a renewTime no later than now.
    let mut renewed = SystemTime::now();
    loop {
        let left = (renewed + RENEW_DEADLINE).duration_since(SystemTime::now()).unwrap_or(Duration::ZERO);
        tokio::select! {
            _ = tokio::time::sleep(left) => {
                return format!("no renewal succeeded within the {}s renew deadline", RENEW_DEADLINE.as_secs());
            }
            r = leading.wait_for(|l| !*l) => {
                return match r {
                    Ok(_) => "the lease manager reports the lease lost".into(),
                    Err(_) => "the lease manager stopped".into(),
                };
            }
            event = leases.next() => match event {
                Some(Ok(lease)) if lease.metadata.name.as_deref() == Some(LEASE_NAME) => {
                    let spec = lease.spec.unwrap_or_default();
                    match spec.holder_identity.as_deref() {
                        Some(holder) if holder == identity => {
                            if let Some(at) = spec.renew_time {
                                renewed = SystemTime::from(at.0);
                            }
                        }
                        other => return format!("the lease is held by {}", other.unwrap_or("nobody")),
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => tracing::warn!(error = %e, "watching the leader lease"),
                None => return "the lease watch ended".into(),
            },
        }
    }
}

/// Runs the operator until SIGTERM/SIGINT (or until the Lease is lost).
pub async fn run(opts: RunOptions) -> Result<(), RunError> {
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health::default());
    let config = kube::Config::infer().await?;
    let client = kube::client::ClientBuilder::try_from(config)?.with_layer(&HealthLayer(health.clone())).build();
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|source| RunError::Listen { addr: opts.listen, source })?;
    tokio::spawn(serve_http(listener, metrics.clone(), health.clone()));

    let reporter = Reporter { controller: FIELD_MANAGER.into(), instance: Some(opts.identity.clone()) };
    let mut ctx = Context::new(client.clone(), reporter, metrics.clone());
    ctx.capabilities = discover(&client).await?;
    ctx.token_review_role = opts.token_review_role.clone();
    let ctx = Arc::new(ctx);
    let ns = opts.namespace.clone();
    if !opts.leader_election {
        metrics.set_leader(true);
        run_controller(client, ns.as_deref(), ctx, health, std::future::pending()).await;
        return Ok(());
    }

    health.set_role(Role::Standby);
    let manager = LeaseManagerBuilder::new(client.clone(), LEASE_NAME)
        .with_namespace(opts.lease_namespace.clone())
        .with_identity(opts.identity.clone())
        .with_duration(LEASE_SECONDS)
        .with_grace(LEASE_SECONDS - RENEW_PERIOD_SECONDS)
        .build()
        .await?;
    let (mut leading, lease_task) = manager.watch().await;
    tracing::info!(identity = %opts.identity, lease = LEASE_NAME, "waiting for the leader lease");
    let acquired = tokio::select! {
        r = leading.wait_for(|l| *l) => r.is_ok(),
        _ = terminated() => false,
    };
    if !acquired {
        drop(leading);
        let _ = lease_task.await;
        return Ok(());
    }
    tracing::info!(identity = %opts.identity, "acquired the leader lease");
    metrics.set_leader(true);
    let lost = leadership_lost(client.clone(), &opts.lease_namespace, &opts.identity, leading.clone());
    let controller = run_controller(client, ns.as_deref(), ctx, health.clone(), std::future::pending());
    tokio::select! {
        // SIGTERM: the controller finished its in-flight reconciles while still holding the
        // Lease (shutdown_on_signal); release it for the next replica.
        () = controller => {}
        why = lost => {
            // Dropping the controller future here cancels every reconcile in flight: they must
            // not go on writing once another replica may lead. The lease task is not asked to
            // release a Lease that may be someone else's.
            metrics.set_leader(false);
            health.set_role(Role::Stopped);
            lease_task.abort();
            tracing::error!(identity = %opts.identity, reason = %why, "lost the leader lease; reconciling stopped");
            return Err(RunError::LeaseLost(why));
        }
    }
    metrics.set_leader(false);
    // Closing the channel stops the lease manager's task, which releases the Lease.
    drop(leading);
    match lease_task.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(RunError::Lease(e)),
        Err(e) => {
            tracing::warn!(error = %e, "lease task panicked");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(method: http::Method, uri: &str) -> Option<String> {
        listed_resource(&method, &uri.parse().unwrap_or_default())
    }

    #[test]
    fn lists_are_told_from_watches_and_single_objects() {
        assert_eq!(listed(http::Method::GET, "/api/v1/pods?labelSelector=a%3Db").as_deref(), Some("pods"));
        let namespaced = "/apis/confman.io/v1alpha1/namespaces/apps/confmanclusters";
        assert_eq!(listed(http::Method::GET, namespaced).as_deref(), Some("confmanclusters"));
        assert_eq!(listed(http::Method::GET, "/api/v1/pods?watch=true&resourceVersion=5"), None);
        assert_eq!(listed(http::Method::GET, "/apis/coordination.k8s.io/v1/namespaces/ops/leases/x"), None);
        assert_eq!(listed(http::Method::PATCH, "/apis/apps/v1/statefulsets"), None);
        assert_eq!(listed(http::Method::GET, "/version"), None);
    }
}
