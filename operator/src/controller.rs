//! The controller process: watches ConfmanClusters and the children it owns, runs the reconcile
//! loop, serves `/health` and `/metrics`, and — with leader election on — reconciles only while
//! holding the `confman-operator` Lease (a replica that loses it stops and exits, so a restart
//! re-contends cleanly).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Api;
use kube::api::DynamicObject;
use kube::runtime::Controller;
use kube::runtime::events::Reporter;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube_lease_manager::LeaseManagerBuilder;

use crate::builders::pdb_v1beta1_resource;
use crate::capabilities::discover;
use crate::crd::ConfmanCluster;
use crate::metrics::Metrics;
use crate::reconcile::{Context, FIELD_MANAGER, error_policy, reconcile};

/// Name of the leader-election Lease.
pub const LEASE_NAME: &str = "confman-operator";
/// Lease duration (client-go's leader-election default): a crashed leader is replaced within
/// this, a standby notices a released Lease within it.
pub const LEASE_SECONDS: u64 = 15;
/// The holder renews this long before the Lease would expire.
pub const LEASE_GRACE_SECONDS: u64 = 5;

/// How the controller runs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Watch only this namespace (all namespaces when unset).
    pub namespace: Option<String>,
    /// Address of the `/health` and `/metrics` listener.
    pub listen: SocketAddr,
    /// Reconcile only while holding the Lease (for more than one replica).
    pub leader_election: bool,
    /// Namespace of the Lease (the operator's own).
    pub lease_namespace: String,
    /// This replica's identity (its pod name).
    pub identity: String,
}

/// Why the controller stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// No usable Kubernetes configuration or client.
    #[error("kubernetes client: {0}")]
    Client(#[from] kube::Error),
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
    /// The Lease was lost while reconciling.
    #[error("lost the leader lease; exiting so this replica can re-contend")]
    LeaseLost,
}

async fn serve_http(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) {
    let app = axum::Router::new().route("/health", axum::routing::get(|| async { "ok" })).route(
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

/// Runs the controller (watches and reconcile loop) with `ctx` until `stop` resolves or a
/// signal arrives. Used by `run` and by end-to-end tests against a stand-in API server. The
/// PodDisruptionBudgets are watched in the API version `ctx.capabilities` says is served: a
/// watch on `policy/v1` fails on a server older than 1.21.
pub async fn run_controller(
    client: kube::Client,
    namespace: Option<&str>,
    ctx: Arc<Context>,
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
    let controller = Controller::new(api::<ConfmanCluster>(&client, ns), watcher::Config::default())
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
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(cluster = %obj.name, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile error"),
            }
        })
        .await;
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

/// Runs the operator until SIGTERM/SIGINT (or until the Lease is lost).
pub async fn run(opts: RunOptions) -> Result<(), RunError> {
    let client = kube::Client::try_default().await?;
    let metrics = Arc::new(Metrics::default());
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|source| RunError::Listen { addr: opts.listen, source })?;
    tokio::spawn(serve_http(listener, metrics.clone()));

    let reporter = Reporter { controller: FIELD_MANAGER.into(), instance: Some(opts.identity.clone()) };
    let mut ctx = Context::new(client.clone(), reporter, metrics.clone());
    ctx.capabilities = discover(&client).await?;
    let ctx = Arc::new(ctx);
    let ns = opts.namespace.clone();
    if !opts.leader_election {
        metrics.set_leader(true);
        run_controller(client, ns.as_deref(), ctx, std::future::pending()).await;
        return Ok(());
    }

    let manager = LeaseManagerBuilder::new(client.clone(), LEASE_NAME)
        .with_namespace(opts.lease_namespace.clone())
        .with_identity(opts.identity.clone())
        .with_duration(LEASE_SECONDS)
        .with_grace(LEASE_GRACE_SECONDS)
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
    let mut lost_watch = leading.clone();
    run_controller(client, ns.as_deref(), ctx, async move {
        // Lost, or the lease manager stopped: either way this replica must stop reconciling.
        let _ = lost_watch.wait_for(|l| !*l).await;
    })
    .await;
    metrics.set_leader(false);
    let lost = !*leading.borrow();
    // Closing the channel stops the lease manager's task, which hands the manager back.
    drop(leading);
    match lease_task.await {
        Ok(Ok(manager)) if !lost => {
            if let Err(e) = manager.release().await {
                tracing::warn!(error = %e, "cannot release the lease");
            }
        }
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(RunError::Lease(e)),
        Err(e) => tracing::warn!(error = %e, "lease task panicked"),
    }
    if lost { Err(RunError::LeaseLost) } else { Ok(()) }
}
