//! Node startup and ordered shutdown (storage is never closed under a pending apply:
//! `docs/large-values.md`, lesson 9). Startup: data dir → RocksDB → keys and cluster token →
//! HTTP clients and the bound listener → Raft (nothing fallible after it). Shutdown: a leader
//! hands leadership away first (followers' forwarded writes keep working), then the node stops
//! accepting, drains in-flight requests (they still need Raft to commit), stops Raft (pending
//! applies finish), fsyncs and closes RocksDB.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::api::{self, AppContext};
use crate::auth::token_review::{ServiceAccountAuth, ServiceAccountsFileError};
use crate::auth::{Authenticator, KeyRing, KeysFileError};
use crate::cluster_token::{ClusterToken, TokenFileError};
use crate::config::Settings;
use crate::files;
use crate::listener;
use crate::metrics::Metrics;
use crate::raft::{RaftNode, RaftNodeError};
use crate::store::{self, StoreError};
use crate::tls::{self, TlsError};

/// Why the node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Storage could not be opened.
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    /// Raft could not start.
    #[error("raft: {0}")]
    Raft(#[from] RaftNodeError),
    /// The API keys file is invalid.
    #[error(transparent)]
    Keys(#[from] KeysFileError),
    /// The ServiceAccounts file is invalid.
    #[error(transparent)]
    ServiceAccounts(#[from] ServiceAccountsFileError),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    File {
        /// The file, so the message names what to fix.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The cluster token file is empty or malformed.
    #[error(transparent)]
    Token(#[from] TokenFileError),
    /// The listener could not be bound.
    #[error("listen on {addr}: {source}")]
    Bind {
        /// The `--listen` address that could not be bound.
        addr: SocketAddr,
        /// The bind error (typically the port is taken, or not allowed).
        source: std::io::Error,
    },
    /// The serve loop ended with an error, or its task failed.
    #[error("serve: {0}")]
    Serve(std::io::Error),
    /// The data directory belongs to another Raft node id (ids are never reused, so old data
    /// under a new id is refused instead of rejoining).
    #[error(
        "data-dir {dir} holds the data of node {stored}, not node-id {configured}; a member's data never rejoins under another id (empty the directory to join afresh)"
    )]
    ForeignData {
        /// The data directory (`--data-dir`).
        dir: String,
        /// Id recorded in the directory.
        stored: u64,
        /// Id this node was started with.
        configured: u64,
    },
    /// This node id held a place in the group (the operator's ledger says so) but its data
    /// directory is empty: the volume was lost. Starting would forget its vote and its log, so
    /// it does not; `serve_data_lost` explains the state until the member is replaced.
    #[error(
        "node {node_id} was a member of the cluster but data-dir {dir} is empty: its volume was lost. It must not rejoin under the same id (it would forget its vote and log); the operator replaces it with a fresh id. Outside Kubernetes: remove node {node_id} from the cluster and start this node with a new --node-id"
    )]
    DataLost {
        /// The id that lost its data; it must not rejoin under it.
        node_id: u64,
        /// The empty data directory (`--data-dir`).
        dir: String,
    },
    /// The TLS files are unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The HTTP client could not be built.
    #[error("http client: {0}")]
    Http(#[from] reqwest::Error),
}

/// A started node, ready to serve.
pub struct Running {
    /// The address actually bound (with `--listen` port 0, the port the OS chose).
    pub local_addr: SocketAddr,
    /// The generated development admin key, when no keys file was configured.
    pub dev_admin_key: Option<String>,
    node: Arc<RaftNode>,
    listener: Bound,
    router: axum::Router,
    /// The cluster token: it identifies peer connections to the listener's connection pools.
    token: Arc<ClusterToken>,
    drain_timeout: Duration,
    /// Tells long-lived responses (watch streams) to end when shutdown begins.
    shutdown_tx: tokio::sync::watch::Sender<bool>,
    /// The leader's handover when its disk runs low (`RaftNode::guard_disk`).
    disk_guard: tokio::task::JoinHandle<()>,
}

fn file_err(path: &Path) -> impl FnOnce(std::io::Error) -> ServerError + '_ {
    move |source| ServerError::File { path: path.display().to_string(), source }
}

/// The cluster token from `--cluster-token-file` (one token per line, see `cluster_token`), or
/// a generated one kept in the data directory (a single node, or a local trial).
fn cluster_token(path: Option<&Path>, dir: &Path) -> Result<ClusterToken, ServerError> {
    match path {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(file_err(p))?;
            Ok(ClusterToken::parse(&text, &p.display().to_string())?)
        }
        None => Ok(ClusterToken::single(&secret(&dir.join("cluster.token"))?.0)),
    }
}

/// Reads the secret kept in `fallback` (in the data dir), creating it with a random value.
fn secret(fallback: &Path) -> Result<(String, bool), ServerError> {
    if let Ok(s) = std::fs::read_to_string(fallback) {
        let s = s.trim().to_string();
        if !s.is_empty() {
            if files::make_private(fallback).map_err(file_err(fallback))? {
                tracing::warn!(path = %fallback.display(), "secret file was readable by others; now 0600");
            }
            return Ok((s, true));
        }
    }
    let s = hex::encode(rand::random::<[u8; 24]>());
    files::write_durably(fallback, s.as_bytes(), files::PRIVATE).map_err(file_err(fallback))?;
    Ok((s, true))
}

/// Records the node id in `data-dir/node-id` on first start and refuses a directory written by
/// another id.
fn claim_data_dir(dir: &Path, node_id: u64) -> Result<(), ServerError> {
    let path = dir.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(s) => match s.trim().parse::<u64>() {
            Ok(stored) if stored == node_id => Ok(()),
            Ok(stored) => Err(ServerError::ForeignData { dir: dir.display().to_string(), stored, configured: node_id }),
            Err(_) => Err(ServerError::File {
                path: path.display().to_string(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not a node id: {s:?}")),
            }),
        },
        // Synced before Raft starts: after a power loss on first boot the file is complete or
        // absent, never empty.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            files::write_durably(&path, format!("{node_id}\n").as_bytes(), 0o644).map_err(file_err(&path))
        }
        Err(e) => Err(ServerError::File { path: path.display().to_string(), source: e }),
    }
}

/// Refuses an empty data directory for a node id that has been a member (see
/// [`ServerError::DataLost`]). The `node-id` file is written before Raft starts, so a member's
/// directory always has one.
fn check_not_lost(dir: &Path, node_id: u64, was_member: bool) -> Result<(), ServerError> {
    if was_member && !dir.join("node-id").exists() {
        return Err(ServerError::DataLost { node_id, dir: dir.display().to_string() });
    }
    Ok(())
}

/// Opens storage, starts Raft and binds the listener.
pub async fn start(settings: &Settings) -> Result<Running, ServerError> {
    let dir = settings.data_dir.clone();
    std::fs::create_dir_all(&dir).map_err(file_err(&dir))?;
    check_not_lost(&dir, settings.node_id, settings.was_member)?;
    let fresh = !dir.join("node-id").exists();

    let (keys, dev_admin_key) = match &settings.api_keys_file {
        Some(p) => (KeyRing::load(p)?, None),
        None => {
            let (key, _) = secret(&dir.join("dev-admin.key"))?;
            (KeyRing::single_admin("dev-admin", &key), Some(key))
        }
    };
    let token = Arc::new(cluster_token(settings.cluster_token_file.as_deref(), &dir)?);
    let keys = keys.with_cluster_token(&token);
    let service_accounts = settings.service_accounts_file.as_deref().map(ServiceAccountAuth::load).transpose()?;
    if let Some(sa) = &service_accounts {
        tracing::info!(cache_seconds = sa.cache_period().as_secs(), "ServiceAccount tokens are accepted (TokenReview)");
    }

    // Everything that can fail happens before Raft starts: a started Raft must be shut down,
    // not dropped (its log syncer is joined on drop).
    let mut raft = settings.raft();
    if let Some(ca) = &settings.tls_ca_file {
        raft.outgoing.trusted_cas = tls::trusted_cas(ca)?;
    }
    let forward_client = crate::raft::network::http_client(&raft.outgoing)?;
    // An empty directory for an id the leader holds acknowledged entries of: a lost volume
    // whose loss the members file does not show yet (see `lost_member`).
    if fresh
        && let Some((leader, index)) = crate::lost_member::acknowledged_elsewhere(
            &forward_client,
            token.presented(),
            settings.node_id,
            &raft.peers,
        )
        .await
    {
        tracing::error!(leader, index, node_id = settings.node_id, "the leader holds entries this node acknowledged");
        return Err(ServerError::DataLost { node_id: settings.node_id, dir: dir.display().to_string() });
    }
    claim_data_dir(&dir, settings.node_id)?;
    let db = {
        let dir = dir.clone();
        store::blocking(move || store::open(&dir)).await?
    };
    let disk = Arc::new(crate::disk_space::DiskSpace::new(&dir, settings.disk_reserve_bytes).map_err(file_err(&dir))?);
    let (listener, local_addr) = bind(settings)?;
    let node = RaftNode::start(&raft, db, &dir, token.clone(), disk).await?;
    let disk_guard = tokio::spawn(RaftNode::guard_disk(Arc::downgrade(&node)));
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let ctx = Arc::new(AppContext {
        node: node.clone(),
        auth: Authenticator { keys, service_accounts },
        tuning: settings.tuning,
        metrics: Arc::new(Metrics::default()),
        forward_client,
        shutdown: shutdown_rx,
        // Half the request timeout to wait for room leaves the other half for the write.
        write_budget: api::write_budget::WriteBudget::new(
            settings.write_budget_bytes,
            Duration::from_millis(settings.tuning.request_timeout_ms / 2),
            Duration::from_millis(settings.tuning.request_timeout_ms),
        ),
    });
    let router = api::router(ctx);
    tracing::info!(node_id = settings.node_id, %local_addr, advertise = %settings.advertise, "confman node listening");
    Ok(Running {
        local_addr,
        dev_admin_key,
        node,
        listener,
        router,
        token,
        drain_timeout: Duration::from_millis(settings.tuning.request_timeout_ms) + Duration::from_secs(5),
        shutdown_tx,
        disk_guard,
    })
}

/// The node's listener, with the TLS certificate reloader and its interval when TLS is on.
struct Bound {
    listener: listener::Listener,
    reload: Option<(Arc<tls::CertReloader>, Duration)>,
}

/// Binds the listen address, with TLS when configured; returns the listener and its address.
fn bind(settings: &Settings) -> Result<(Bound, SocketAddr), ServerError> {
    let bind_err = |source| ServerError::Bind { addr: settings.listen, source };
    let std_listener = std::net::TcpListener::bind(settings.listen).map_err(bind_err)?;
    std_listener.set_nonblocking(true).map_err(bind_err)?;
    let local_addr = std_listener.local_addr().map_err(bind_err)?;
    let tcp = tokio::net::TcpListener::from_std(std_listener).map_err(bind_err)?;
    let (config, reload) = match &settings.tls {
        Some(files) => {
            let reloader = tls::CertReloader::load(&files.cert, &files.key)?;
            (Some(tls::server_config(reloader.clone())?), Some((reloader, settings.tls_reload)))
        }
        None => (None, None),
    };
    let listener = listener::Listener::new(tcp, config, settings.limits).map_err(bind_err)?;
    Ok((Bound { listener, reload }, local_addr))
}

/// Serves `router` on `bound` until `stop` resolves (a task, so the caller can wait on it).
/// `peer_token` identifies Raft peers' connections (`None` where no Raft RPC is served).
fn spawn_server<F>(
    bound: Bound,
    router: axum::Router,
    peer_token: Option<Arc<ClusterToken>>,
    stop: F,
) -> tokio::task::JoinHandle<std::io::Result<()>>
where
    F: Future<Output = ()> + Send + 'static,
{
    let reload = bound.reload.map(|(reloader, every)| tokio::spawn(reloader.watch(every)));
    let service = bound.listener.make_service(router, peer_token);
    let server = axum::serve(bound.listener, service).with_graceful_shutdown(stop);
    tokio::spawn(async move {
        let r = server.await;
        if let Some(reload) = reload {
            reload.abort();
        }
        r
    })
}

/// Serves the data-lost explanation (`api::data_lost`) on the node's address until `shutdown`
/// resolves; nothing is written to the data directory.
pub async fn serve_data_lost<F>(settings: &Settings, why: &ServerError, shutdown: F) -> Result<(), ServerError>
where
    F: Future<Output = ()> + Send + 'static,
{
    // Same listener as a healthy node (TLS included), so the operator and probes reach it.
    let (listener, _) = bind(settings)?;
    let router = api::data_lost::router(settings.node_id, why.to_string());
    match spawn_server(listener, router, None, shutdown).await {
        Ok(r) => r.map_err(ServerError::Serve),
        Err(e) => Err(ServerError::Serve(std::io::Error::other(e))),
    }
}

impl Running {
    /// Serves until `shutdown` resolves, then shuts down in order.
    pub async fn serve<F>(self, shutdown: F) -> Result<(), ServerError>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let stopped = async move {
            let _ = stop_rx.await;
        };
        let mut server = spawn_server(self.listener, self.router, Some(self.token), stopped);
        tokio::select! {
            r = &mut server => {
                // The server stopped on its own (an I/O error): Raft is stopped in order anyway.
                let served = match r {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(ServerError::Serve(e)),
                    Err(e) => Err(ServerError::Serve(std::io::Error::other(e))),
                };
                self.shutdown_tx.send_replace(true);
                self.disk_guard.abort();
                self.node.shutdown().await?;
                return served;
            }
            () = shutdown => {}
        }
        self.disk_guard.abort();
        // A leader hands over first, while it still serves: followers keep forwarding writes to
        // it until they learn the new leader, and those must not meet a closed listener.
        if self.node.is_leader() && self.node.status().members.iter().filter(|m| m.role == "voter").count() > 1 {
            match self.node.transfer_leader(None).await {
                Ok(to) => tracing::info!(to, "leadership handed over before shutdown"),
                Err(e) => tracing::info!("leadership not handed over before shutdown: {e}"),
            }
        }
        tracing::info!("shutting down: draining in-flight requests");
        self.shutdown_tx.send_replace(true);
        let _ = stop_tx.send(());
        match tokio::time::timeout(self.drain_timeout, &mut server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!("server stopped with an error while draining: {e}"),
            Ok(Err(e)) => tracing::warn!("server task failed while draining: {e}"),
            Err(_) => {
                tracing::warn!("in-flight requests did not finish within {:?}; closing them", self.drain_timeout);
                server.abort();
            }
        }
        self.node.shutdown().await?;
        tracing::info!("shutdown complete");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `node-id` was written in place without a sync: a power cut on first boot could leave it
    /// empty, and the node then refused its own directory ("not a node id"). It is written to a
    /// temporary file, synced and renamed now, so the states a cut can leave are: nothing, or a
    /// temporary file of any length beside no `node-id`. Each must start as a first boot.
    #[test]
    fn every_state_a_power_cut_on_first_boot_leaves_starts_cleanly() -> Result<(), Box<dyn std::error::Error>> {
        for leftover in [None, Some(&b""[..]), Some(&b"1"[..]), Some(&b"12\n"[..])] {
            let dir = tempfile::tempdir()?;
            if let Some(partial) = leftover {
                std::fs::write(dir.path().join(".node-id.tmp"), partial)?;
            }
            claim_data_dir(dir.path(), 12)?;
            assert_eq!(std::fs::read_to_string(dir.path().join("node-id"))?, "12\n", "{leftover:?}");
            assert!(!dir.path().join(".node-id.tmp").exists(), "{leftover:?}: the temporary file was renamed");
            claim_data_dir(dir.path(), 12)?;
        }
        Ok(())
    }

    #[test]
    fn a_data_dir_belongs_to_one_node_id() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        claim_data_dir(dir.path(), 4)?;
        claim_data_dir(dir.path(), 4)?;
        let err = claim_data_dir(dir.path(), 7).err().ok_or("a foreign id must be refused")?;
        assert!(matches!(err, ServerError::ForeignData { stored: 4, configured: 7, .. }), "{err}");
        assert!(err.to_string().contains("data-dir"), "{err}");
        Ok(())
    }

    #[test]
    fn an_admitted_id_never_starts_on_an_empty_data_dir() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        check_not_lost(dir.path(), 2, false)?;
        let err = check_not_lost(dir.path(), 2, true).err().ok_or("an empty dir of a member must be refused")?;
        assert!(matches!(err, ServerError::DataLost { node_id: 2, .. }), "{err}");
        claim_data_dir(dir.path(), 2)?;
        check_not_lost(dir.path(), 2, true)?;
        Ok(())
    }
}
