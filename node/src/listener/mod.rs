//! The node's one listener — client API and Raft RPC share the port — with the limits a
//! server facing untrusted clients needs (what Go's `http.Server` calls `ReadHeaderTimeout`
//! and `IdleTimeout`, plus a connection cap):
//!
//! - **Accept never waits.** A task accepts TCP connections and gives each a connection slot
//!   (see `admission`) or closes it at once; it never stops accepting because slots or
//!   handshakes are in short supply, so the kernel's accept queue cannot fill up with peers
//!   stuck behind clients.
//! - **TLS handshakes run in their own tasks**, each bounded by `tls-handshake-timeout-ms`; a
//!   handshake holds the connection's slot, so the number in progress is bounded by the
//!   connection caps.
//! - **Timeouts on every connection** (see `conn`): the first request header must be complete
//!   within `header-read-timeout-ms` of the accept (or handshake), a later one within that time
//!   of its first byte, and a connection with no request for `idle-timeout-ms` is closed.
//!   Nothing times out while a request is in progress (watch streams stay open).
//! - **Peers are never starved by clients**: client connections are capped at
//!   `max-client-connections`; connections shown to be peers (an authenticated `/raft/*`
//!   request) use `max-peer-connections` slots of their own, which are also how a new
//!   connection gets in while every client slot is taken (see `admission`).
//!
//! What this does not stop: a flood of unauthenticated connections larger than both pools can
//! still delay *new* peer connections, for at most the handshake/header timeout each flood
//! connection lives; established peer connections are unaffected. Below that, the network
//! (policies, a firewall) has to keep strangers off the port.

mod admission;
mod conn;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::connect_info::{Connected, IntoMakeServiceWithConnectInfo};
use axum::serve::IncomingStream;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

use crate::cluster_token::ClusterToken;
pub use conn::{Conn, ConnHandle};
use conn::{ConnState, Timeouts, Transport};

/// Connection limits and timeouts of the listener (settings `max-client-connections`,
/// `max-peer-connections`, `header-read-timeout-ms`, `idle-timeout-ms`,
/// `tls-handshake-timeout-ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once for clients (including ones still in their TLS handshake).
    pub max_client_connections: usize,
    /// Connection slots of Raft peers, on top of the client ones.
    pub max_peer_connections: usize,
    /// Time to send a complete request header.
    pub header_read_timeout: Duration,
    /// Time a connection may wait between requests.
    pub idle_timeout: Duration,
    /// Time to complete the TLS handshake.
    pub tls_handshake_timeout: Duration,
}

impl Default for Limits {
    /// 1024 client connections (each costs a file descriptor: the cap must stay well below the
    /// process's open-file limit, which RocksDB and the peers share; container runtimes set it
    /// far higher); 64 peer slots (a few HTTP/1.1 connections per peer for parallel RPCs,
    /// heartbeats and snapshots, and room for probation); 10 s for a request header and for a
    /// TLS handshake (the values Go servers and etcd deployments commonly use); 90 s idle —
    /// above the 60 s for which peers and forwarding nodes keep a pooled connection, so the
    /// node rarely closes a connection the other side is about to reuse.
    fn default() -> Limits {
        Limits {
            max_client_connections: 1024,
            max_peer_connections: 64,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(90),
            tls_handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Connections ready for HTTP, handed from the accept task to the server, at most this many
/// waiting.
const READY_QUEUE: usize = 64;

/// A listener that yields connections ready for HTTP (TLS done), each holding a connection
/// slot and carrying its timeouts.
pub struct Listener {
    local_addr: SocketAddr,
    ready: mpsc::Receiver<(Conn, SocketAddr)>,
    accept_task: tokio::task::JoinHandle<()>,
    pools: Arc<admission::Pools>,
}

impl Listener {
    /// Starts accepting on a bound TCP listener; TLS when `tls` is given.
    pub fn new(tcp: TcpListener, tls: Option<Arc<rustls::ServerConfig>>, limits: Limits) -> io::Result<Listener> {
        let local_addr = tcp.local_addr()?;
        let pools = Arc::new(admission::Pools::new(limits.max_client_connections, limits.max_peer_connections));
        let (tx, ready) = mpsc::channel(READY_QUEUE);
        let accept_task = tokio::spawn(accept_loop(tcp, tls.map(TlsAcceptor::from), limits, pools.clone(), tx));
        Ok(Listener { local_addr, ready, accept_task, pools })
    }

    /// `router` as this listener serves it: every request passes the gate that classifies it
    /// for the connection pools and tracks it for the idle clock. `peer_token` is the cluster
    /// token peers present on `/raft/*` (`None` where no Raft RPC is served).
    pub fn make_service(
        &self,
        router: Router,
        peer_token: Option<Arc<ClusterToken>>,
    ) -> IntoMakeServiceWithConnectInfo<Router, ConnHandle> {
        let gate = Arc::new(admission::Gate { token: peer_token, pools: self.pools.clone() });
        router
            .layer(axum::middleware::from_fn_with_state(gate, admission::gate))
            .into_make_service_with_connect_info::<ConnHandle>()
    }
}

/// Accepts connections until the listener is dropped (which aborts this task).
async fn accept_loop(
    tcp: TcpListener,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    pools: Arc<admission::Pools>,
    tx: mpsc::Sender<(Conn, SocketAddr)>,
) {
    let timeouts = Timeouts { header_read: limits.header_read_timeout, idle: limits.idle_timeout };
    loop {
        let (stream, remote) = match tcp.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(slot) = pools.admit() else {
            // Closed at once: the client learns now instead of after a timeout.
            pools.refused(remote, "connection refused: every client and peer connection slot is in use");
            drop(stream);
            continue;
        };
        // TCP_NODELAY: small Raft replies and API responses must not wait for delayed ACKs.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!("TCP_NODELAY: {e}");
        }
        let state = Arc::new(ConnState::new(remote, timeouts, slot));
        match &tls {
            None => {
                if tx.send((Conn::new(Transport::Plain(stream), state), remote)).await.is_err() {
                    return; // the server stopped accepting
                }
            }
            Some(acceptor) => {
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(limits.tls_handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((Conn::new(Transport::Tls(Box::new(tls)), state), remote)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%remote, "TLS handshake failed: {e}"),
                        Err(_) => {
                            tracing::debug!(%remote, "TLS handshake not done within tls-handshake-timeout-ms; closed")
                        }
                    }
                });
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl axum::serve::Listener for Listener {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept task only ends when aborted (on drop); nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

impl Connected<IncomingStream<'_, Listener>> for ConnHandle {
    fn connect_info(stream: IncomingStream<'_, Listener>) -> Self {
        stream.io().handle()
    }
}
