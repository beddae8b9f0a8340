//! Who gets a connection: two pools of connection slots and the request gate that moves a
//! connection between them.
//!
//! Clients and Raft peers share one port and a peer is only recognisable once it sends a
//! request (`/raft/*` with the cluster token), so the slots are split in two:
//!
//! - **client slots** (`max-client-connections`): every connection takes one at accept while
//!   any is free;
//! - **peer slots** (`max-peer-connections`): a connection that proves to be a peer moves here,
//!   freeing its client slot; and while every client slot is taken, a new connection is
//!   admitted on a peer slot *on probation*: its first request must be a peer RPC (then it stays)
//!   or a health probe (answered, then closed); anything else gets `503 too-many-connections`
//!   and the connection is closed.
//!
//! So however many clients hold connections — idle, slow or busy — a peer still gets in, and a
//! client beyond the cap gets a quick, explicit 503 (or, with every slot of both pools taken, a
//! closed connection at once) instead of waiting in the accept queue. Unidentified connections
//! on either pool are evicted by the header-read (and TLS handshake) timeout.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::{Body, HttpBody};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, Version, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::Stream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::conn::{ConnHandle, RequestGuard};
use crate::api::problem::Problem;
use crate::cluster_token::ClusterToken;

/// Paths a health probe may use on a probation connection (kubelet probes must not fail just
/// because clients fill the node).
const PROBES: &[&str] = &["/health", "/health/ready"];

/// At most one warning per this interval about refused connections (a flood must not flood the
/// log too).
const WARN_EVERY: Duration = Duration::from_secs(10);

/// What a connection holds a slot as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// A client slot.
    Client,
    /// A peer slot, taken while the client slots were full; not yet shown to be a peer.
    Probation,
    /// A peer slot of a connection that carried an authenticated Raft RPC.
    Peer,
}

/// A connection's slot; the permit returns to its pool when the connection is closed.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) class: Class,
    _permit: OwnedSemaphorePermit,
}

/// The two pools of connection slots of one listener.
#[derive(Debug)]
pub(crate) struct Pools {
    clients: Arc<Semaphore>,
    peers: Arc<Semaphore>,
    max_clients: usize,
    max_peers: usize,
    refused: AtomicU64,
    warned: Mutex<Option<Instant>>,
}

impl Pools {
    pub(crate) fn new(max_clients: usize, max_peers: usize) -> Pools {
        Pools {
            clients: Arc::new(Semaphore::new(max_clients)),
            peers: Arc::new(Semaphore::new(max_peers)),
            max_clients,
            max_peers,
            refused: AtomicU64::new(0),
            warned: Mutex::new(None),
        }
    }

    /// A slot for a just-accepted connection: a client slot, else a peer slot on probation;
    /// `None` when both pools are full (the connection is closed at once).
    pub(crate) fn admit(&self) -> Option<Slot> {
        if let Ok(p) = self.clients.clone().try_acquire_owned() {
            return Some(Slot { class: Class::Client, _permit: p });
        }
        if let Ok(p) = self.peers.clone().try_acquire_owned() {
            return Some(Slot { class: Class::Probation, _permit: p });
        }
        None
    }

    /// Moves a connection that carried a peer RPC to the peer pool (a client connection only if
    /// a peer slot is free; otherwise it stays a client, still served).
    fn promote(&self, slot: &mut Slot) {
        match slot.class {
            Class::Peer => {}
            Class::Probation => slot.class = Class::Peer,
            Class::Client => {
                if let Ok(p) = self.peers.clone().try_acquire_owned() {
                    *slot = Slot { class: Class::Peer, _permit: p };
                }
            }
        }
    }

    /// Counts a refusal and logs it, at most once per [`WARN_EVERY`].
    pub(crate) fn refused(&self, remote: SocketAddr, what: &str) {
        let total = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        let mut warned = self.warned.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if warned.is_none_or(|t| now.duration_since(t) >= WARN_EVERY) {
            *warned = Some(now);
            tracing::warn!(
                %remote,
                refused_total = total,
                max_client_connections = self.max_clients,
                max_peer_connections = self.max_peers,
                "{what}"
            );
        }
    }
}

/// The request gate's state: the cluster token that identifies peers (`None` where no Raft
/// RPC is served) and the listener's pools.
#[derive(Debug, Clone)]
pub(crate) struct Gate {
    pub(crate) token: Option<Arc<ClusterToken>>,
    pub(crate) pools: Arc<Pools>,
}

/// What a request is, as far as connection slots are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Peer,
    Probe,
    Client,
}

/// What the gate does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Serve,
    /// Answer it, then close the connection (a probe on a probation connection).
    ServeThenClose,
    /// Answer 503 and close the connection.
    Refuse,
}

fn classify(req: &Request, token: Option<&ClusterToken>) -> Kind {
    let path = req.uri().path();
    if path.starts_with("/raft/")
        && let Some(token) = token
        && let Some(presented) = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        && token.accepts(presented)
    {
        return Kind::Peer;
    }
    if matches!(*req.method(), Method::GET | Method::HEAD) && PROBES.contains(&path) {
        return Kind::Probe;
    }
    Kind::Client
}

fn decide(pools: &Pools, slot: &mut Slot, kind: Kind) -> Verdict {
    match (slot.class, kind) {
        (_, Kind::Peer) => {
            pools.promote(slot);
            Verdict::Serve
        }
        (Class::Probation, Kind::Probe) => Verdict::ServeThenClose,
        (Class::Probation, Kind::Client) => Verdict::Refuse,
        (Class::Client | Class::Peer, _) => Verdict::Serve,
    }
}

/// Middleware on the whole router: classifies each request for the connection pools, refuses
/// clients on probation connections, and marks when the request starts and its response has
/// been sent (the connection's idle clock only runs outside requests).
pub(crate) async fn gate(State(gate): State<Arc<Gate>>, req: Request, next: Next) -> Response {
    let Some(ConnectInfo(ConnHandle(conn))) = req.extensions().get::<ConnectInfo<ConnHandle>>().cloned() else {
        // Not served through the node's listener (in-process tests): nothing to account.
        return next.run(req).await;
    };
    let guard = conn.request_started();
    let kind = classify(&req, gate.token.as_deref());
    let verdict = {
        let mut slot = conn.slot.lock().unwrap_or_else(PoisonError::into_inner);
        decide(&gate.pools, &mut slot, kind)
    };
    let http1 = req.version() <= Version::HTTP_11;
    let mut resp = match verdict {
        Verdict::Serve | Verdict::ServeThenClose => next.run(req).await,
        Verdict::Refuse => {
            gate.pools.refused(conn.remote, "client connection limit reached: new client connections get 503");
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too-many-connections",
                "Too many connections",
                format!(
                    "this node serves at most {} client connections (max-client-connections) and all are in use; retry, or use another node",
                    gate.pools.max_clients
                ),
            )
            .retry_after(1)
            .into_response()
        }
    };
    if verdict != Verdict::Serve {
        conn.close_when_idle();
        if http1 {
            resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
    }
    hold_until_sent(resp, guard)
}

/// Keeps `guard` (the request in progress) until the response body has been sent: a watch
/// stream is a request in progress for as long as it is open, so it is never idle.
fn hold_until_sent(resp: Response, guard: RequestGuard) -> Response {
    let (mut parts, body) = resp.into_parts();
    if body.is_end_stream() {
        return Response::from_parts(parts, body);
    }
    // The stream wrapper loses the exact size hyper derives Content-Length from: state it.
    if let Some(len) = body.size_hint().exact()
        && !parts.headers.contains_key(header::CONTENT_LENGTH)
        && !parts.headers.contains_key(header::TRANSFER_ENCODING)
    {
        parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    let body = Body::from_stream(Guarded { inner: body.into_data_stream(), guard: Some(guard) });
    Response::from_parts(parts, body)
}

/// A body stream that ends its request (drops the guard) when it ends or is dropped.
struct Guarded<S> {
    inner: S,
    guard: Option<RequestGuard>,
}

impl<S: Stream + Unpin> Stream for Guarded<S> {
    type Item = S::Item;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<S::Item>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_next(cx);
        if matches!(r, std::task::Poll::Ready(None)) {
            self.guard = None;
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, path: &str, bearer: Option<&str>) -> Result<Request, axum::http::Error> {
        let mut b = Request::builder().method(method).uri(path);
        if let Some(t) = bearer {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        b.body(Body::empty())
    }

    #[test]
    fn peers_are_known_by_the_cluster_token_on_raft_paths_only() -> Result<(), axum::http::Error> {
        let token = ClusterToken::single("tok");
        let t = Some(&token);
        assert_eq!(classify(&request(Method::POST, "/raft/append", Some("tok"))?, t), Kind::Peer);
        assert_eq!(classify(&request(Method::POST, "/raft/append", Some("nope"))?, t), Kind::Client);
        assert_eq!(classify(&request(Method::POST, "/raft/append", None)?, t), Kind::Client);
        assert_eq!(classify(&request(Method::POST, "/raft/append", Some("tok"))?, None), Kind::Client);
        assert_eq!(classify(&request(Method::GET, "/api/v1/cluster", Some("tok"))?, t), Kind::Client);
        assert_eq!(classify(&request(Method::GET, "/health/ready", None)?, t), Kind::Probe);
        assert_eq!(classify(&request(Method::POST, "/health", None)?, t), Kind::Client);
        Ok(())
    }

    #[test]
    fn a_full_client_pool_leaves_peers_a_way_in() -> Result<(), &'static str> {
        let pools = Pools::new(2, 2);
        let mut clients: Vec<Slot> = (0..2).filter_map(|_| pools.admit()).collect();
        assert!(clients.len() == 2 && clients.iter().all(|s| s.class == Class::Client));
        // Full: the next connections are on probation, then closed at once.
        let mut peer = pools.admit().ok_or("a probation slot")?;
        let mut client = pools.admit().ok_or("a probation slot")?;
        assert_eq!((peer.class, client.class), (Class::Probation, Class::Probation));
        assert!(pools.admit().is_none(), "both pools full");
        assert_eq!(decide(&pools, &mut peer, Kind::Peer), Verdict::Serve);
        assert_eq!(peer.class, Class::Peer);
        assert_eq!(decide(&pools, &mut client, Kind::Probe), Verdict::ServeThenClose);
        assert_eq!(decide(&pools, &mut client, Kind::Client), Verdict::Refuse);
        // A client connection that carries a peer RPC moves to the peer pool when it can,
        // freeing its client slot.
        drop(client);
        assert_eq!(decide(&pools, &mut clients[0], Kind::Peer), Verdict::Serve);
        assert_eq!(clients[0].class, Class::Peer);
        let newcomer = pools.admit().ok_or("the freed client slot")?;
        assert_eq!(newcomer.class, Class::Client);
        assert_eq!(decide(&pools, &mut clients[1], Kind::Peer), Verdict::Serve);
        assert_eq!(clients[1].class, Class::Client, "no peer slot left: it stays a client, still served");
        Ok(())
    }
}
