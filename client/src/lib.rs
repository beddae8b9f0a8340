//! A typed client for Confman nodes, for the operator and for services in the cluster.
//!
//! It talks to any member: reads are linearizable by default (the node checks with the leader),
//! writes and membership changes are forwarded to the leader by the node itself. The client adds
//! what a node cannot: it retries `503 Service Unavailable` (no leader yet, an election, an
//! install in progress) with backoff until a deadline, and fails over to the next endpoint when
//! one cannot be reached.
//!
//! A request that may have reached the leader but got no answer (the connection dropped, the
//! node timed out) has an unknown outcome. Every entry write (put, conditional put, delete)
//! carries an `Idempotency-Key` generated once per call and sent unchanged on every attempt:
//! the cluster applies a keyed write once and answers a repeat with the first answer, so these
//! are retried on the next endpoint, and a repeat never overwrites what another writer wrote in
//! between. Reads and namespace upserts are retried too; membership changes return
//! [`Error::OutcomeUnknown`] instead, because repeating them could report a failure for a
//! change that was in fact made.
//!
//! ```no_run
//! # async fn demo() -> Result<(), confman_client::Error> {
//! let client = confman_client::Client::builder(["http://confman:8080"], "my-api-key").build()?;
//! client.put("payments", "db/url", b"postgres://db:5432/pay".to_vec(), None).await?;
//! let entry = client.get("payments", "db/url").await?;
//! # Ok(()) }
//! ```

mod credential;
mod error;
mod types;
mod watch;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;

/// The HTTP client setup shared with the node: for tests and tools that build their own
/// `reqwest::Client` to talk to nodes directly.
pub use confman_http::{build_http, http_builder, install_crypto_provider};
use credential::Credential;
pub use error::{Error, Problem};
pub use types::{ClusterStatus, Entry, EntryMeta, Member, Page, WriteResult};
pub use watch::{Watch, WatchEvent};

/// Builder of a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    endpoints: Vec<String>,
    credential: Credential,
    retry_for: Duration,
    request_timeout: Duration,
    resolve: Vec<(String, IpAddr)>,
    trusted_cas: Vec<Vec<u8>>,
}

/// Where the documented pod spec projects the ServiceAccount token for Confman (audience
/// `confman`); see [`ClientBuilder::in_cluster`].
pub const IN_CLUSTER_TOKEN_FILE: &str = "/var/run/secrets/confman/token";
/// Where the documented pod spec puts the cluster's CA certificate when the cluster serves TLS.
pub const IN_CLUSTER_CA_FILE: &str = "/var/run/secrets/confman/ca.crt";

impl ClientBuilder {
    /// A client of the ConfmanCluster `cluster` in Kubernetes namespace `namespace`, for a pod
    /// of the same Kubernetes cluster: it calls the cluster's client Service
    /// (`<cluster>.<namespace>.svc`, port 8080) with the ServiceAccount token projected at
    /// [`IN_CLUSTER_TOKEN_FILE`] (re-read as the kubelet rotates it), over https trusting the
    /// CA at [`IN_CLUSTER_CA_FILE`] when that file exists (a cluster with `spec.tls`: mount its
    /// `ca.crt` there, e.g. from a ConfigMap copy in the workload's namespace), else over plain
    /// http, with a warning (the token then travels unencrypted inside the Kubernetes
    /// network). The token's ServiceAccount must be named in the cluster's
    /// `spec.auth.serviceAccounts`.
    pub fn in_cluster(cluster: &str, namespace: &str) -> Result<ClientBuilder, Error> {
        Self::in_cluster_with(cluster, namespace, Path::new(IN_CLUSTER_TOKEN_FILE), Path::new(IN_CLUSTER_CA_FILE))
    }

    /// [`ClientBuilder::in_cluster`] with the token and CA files elsewhere.
    pub fn in_cluster_with(
        cluster: &str,
        namespace: &str,
        token_file: &Path,
        ca_file: &Path,
    ) -> Result<ClientBuilder, Error> {
        let ca = match std::fs::read(ca_file) {
            Ok(pem) => Some(pem),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::Credential { path: ca_file.display().to_string(), reason: e.to_string() }),
        };
        let scheme = if ca.is_some() { "https" } else { "http" };
        if ca.is_none() {
            tracing::warn!(
                ca = %ca_file.display(),
                "no CA file: calling {cluster}.{namespace} over plain http, the ServiceAccount token unencrypted \
                 (right only for a cluster without spec.tls)"
            );
        }
        let mut builder =
            Client::builder([format!("{scheme}://{cluster}.{namespace}.svc:8080")], "").token_file(token_file);
        if let Some(pem) = ca {
            builder = builder.trust_ca_pem(pem);
        }
        Ok(builder)
    }

    /// Presents the token in `path` instead of a fixed key, read again as it changes (a
    /// projected ServiceAccount token).
    pub fn token_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.credential = Credential::file(&path.into());
        self
    }

    /// Trusts the CA certificates in `pem` (a PEM bundle) for https:// endpoints — only these,
    /// instead of the system's roots (cluster certificates come from a private CA).
    pub fn trust_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.trusted_cas.push(pem.into());
        self
    }

    /// How long to keep retrying 503s and unreachable endpoints (default 30 s).
    pub fn retry_for(mut self, d: Duration) -> Self {
        self.retry_for = d;
        self
    }

    /// Timeout of one HTTP request (default 60 s; adding a learner waits for its catch-up).
    pub fn request_timeout(mut self, d: Duration) -> Self {
        self.request_timeout = d;
        self
    }

    /// Fixed addresses for host names (like curl's `--resolve`; the URL's port is kept).
    pub fn resolve(mut self, host: impl Into<String>, ip: IpAddr) -> Self {
        self.resolve.push((host.into(), ip));
        self
    }

    /// Builds the client; fails without endpoints or when a trusted CA is not valid PEM.
    pub fn build(self) -> Result<Client, Error> {
        if self.endpoints.is_empty() {
            return Err(Error::NoEndpoints);
        }
        let mut cas = Vec::new();
        for pem in &self.trusted_cas {
            cas.extend(reqwest::Certificate::from_pem_bundle(pem).map_err(Error::Transport)?);
        }
        let configure = || {
            let mut b = http_builder().tcp_nodelay(true);
            for (host, ip) in &self.resolve {
                b = b.resolve(host, SocketAddr::new(*ip, 0));
            }
            b
        };
        // A connect timeout of its own: a dead endpoint must show as "never connected" (safe to
        // repeat anywhere), not as a total timeout with an unknown outcome.
        let http =
            build_http(|| configure().timeout(self.request_timeout).connect_timeout(Duration::from_secs(5)), &cas)
                .map_err(Error::Transport)?;
        // Watches are long-lived: no total timeout, only a connect timeout.
        let watch_http =
            build_http(|| configure().connect_timeout(Duration::from_secs(5)), &cas).map_err(Error::Transport)?;
        Ok(Client {
            http,
            watch_http,
            endpoints: self.endpoints.into_iter().map(|e| e.trim_end_matches('/').to_string()).collect(),
            credential: self.credential,
            retry_for: self.retry_for,
            next: AtomicUsize::new(0),
            retries: RetryCounters::default(),
        })
    }
}

/// A client for one Confman cluster (any of its members' URLs).
#[derive(Debug)]
pub struct Client {
    http: reqwest::Client,
    watch_http: reqwest::Client,
    endpoints: Vec<String>,
    credential: Credential,
    retry_for: Duration,
    next: AtomicUsize,
    retries: RetryCounters,
}

/// How often a client's calls had to be repeated, by reason. Retrying hides unavailability from
/// the caller; these counts make it visible (to tests asserting that a steady cluster needed
/// none, and to services that export them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryStats {
    /// Attempts answered `503 Service Unavailable` (no leader, an election, a node joining).
    pub unavailable: u64,
    /// Attempts that never connected (the endpoint was down or unknown).
    pub unreachable: u64,
    /// Attempts sent but unanswered, then repeated on another endpoint (reads and idempotent
    /// writes only).
    pub unanswered: u64,
}

impl RetryStats {
    /// All repeated attempts, whatever the reason (tests expect 0 in steady phases).
    pub fn total(&self) -> u64 {
        self.unavailable + self.unreachable + self.unanswered
    }
}

#[derive(Debug, Default)]
struct RetryCounters {
    unavailable: AtomicU64,
    unreachable: AtomicU64,
    unanswered: AtomicU64,
}

/// The header carrying a write's idempotency key.
const HEADER_IDEMPOTENCY_KEY: &str = "idempotency-key";

/// A new idempotency key: 128 bits, as 32 hex digits. The bits come from std's randomly seeded
/// hasher (seeded from the OS once per thread, then stepped per hasher) over the process id,
/// the time and a process-wide counter, so keys never repeat within or across processes.
fn new_idempotency_key() -> String {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let mut key = String::with_capacity(32);
    for half in 0..2u8 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(n);
        h.write_u128(nanos);
        h.write_u32(std::process::id());
        h.write_u8(half);
        key.push_str(&format!("{:016x}", h.finish()));
    }
    key
}

/// Percent-encodes a path segment (keys may contain `/`, which stays a separator).
fn encode_key(key: &str) -> String {
    key.split('/').map(encode_segment).collect::<Vec<_>>().join("/")
}

pub(crate) fn encode_segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Client {
    /// Attempts this client repeated so far, by reason (see [`RetryStats`]).
    pub fn retries(&self) -> RetryStats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RetryStats {
            unavailable: g(&self.retries.unavailable),
            unreachable: g(&self.retries.unreachable),
            unanswered: g(&self.retries.unanswered),
        }
    }

    /// A builder for a client of `endpoints` authenticating with `credential` (an API key, or
    /// the cluster token for administration).
    pub fn builder<I, S>(endpoints: I, credential: impl Into<String>) -> ClientBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ClientBuilder {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            credential: Credential::fixed(credential),
            retry_for: Duration::from_secs(30),
            request_timeout: Duration::from_secs(60),
            resolve: Vec::new(),
            trusted_cas: Vec::new(),
        }
    }

    /// Sends a request built by `make` (given a base URL), retrying 503 and unreachable
    /// endpoints with backoff until the retry deadline; `replay` says whether an attempt with an
    /// unknown outcome may be repeated.
    async fn send<F>(&self, replay: Replay, make: F) -> Result<reqwest::Response, Error>
    where
        F: Fn(&str) -> RequestBuilder,
    {
        let deadline = Instant::now() + self.retry_for;
        let mut delay = Duration::from_millis(50);
        loop {
            let i = self.next.load(Ordering::Relaxed) % self.endpoints.len();
            let base = &self.endpoints[i];
            let result = make(base).bearer_auth(&*self.credential.current()?).send().await;
            let retry = match result {
                Ok(resp) if resp.status() == StatusCode::SERVICE_UNAVAILABLE => {
                    let problem = Problem::read(resp).await;
                    if problem.outcome_unknown() && replay == Replay::Unsafe {
                        return Err(Error::OutcomeUnknown(problem.detail));
                    }
                    // Another member may do better (this one may have no leader, be joining,
                    // or have lost its data): the next attempt goes to the next endpoint.
                    tracing::debug!(endpoint = %base, detail = %problem.detail, "503, trying the next endpoint");
                    self.next.fetch_add(1, Ordering::Relaxed);
                    Error::Unavailable(problem)
                }
                Ok(resp) if resp.status().is_success() => return Ok(resp),
                Ok(resp) => {
                    if resp.status() == StatusCode::UNAUTHORIZED {
                        // A token file may have been rotated since it was read: the next call
                        // reads it again.
                        self.credential.refresh();
                    }
                    return Err(Error::Api(Problem::read(resp).await));
                }
                // Never connected: the request cannot have reached a node.
                Err(e) if e.is_connect() => {
                    tracing::debug!(endpoint = %base, error = %e, "endpoint unreachable, trying the next");
                    self.next.fetch_add(1, Ordering::Relaxed);
                    Error::Transport(e)
                }
                // Sent, but no answer: the node may or may not have acted on it.
                Err(e) if e.is_timeout() || e.is_request() || e.is_body() => {
                    if replay == Replay::Unsafe {
                        return Err(Error::OutcomeUnknown(format!("{base}: {e}")));
                    }
                    tracing::debug!(endpoint = %base, error = %e, "no answer, repeating on the next endpoint");
                    self.next.fetch_add(1, Ordering::Relaxed);
                    Error::Transport(e)
                }
                Err(e) => return Err(Error::Transport(e)),
            };
            if Instant::now() + delay > deadline {
                return Err(retry);
            }
            let counter = match &retry {
                Error::Unavailable(_) => &self.retries.unavailable,
                Error::Transport(e) if e.is_connect() => &self.retries.unreachable,
                _ => &self.retries.unanswered,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(1));
        }
    }

    async fn json<T: DeserializeOwned, F>(&self, replay: Replay, make: F) -> Result<T, Error>
    where
        F: Fn(&str) -> RequestBuilder,
    {
        let resp = self.send(replay, make).await?;
        resp.json().await.map_err(Error::Decode)
    }

    fn req(&self, method: Method, base: &str, path: &str) -> RequestBuilder {
        self.http.request(method, format!("{base}{path}"))
    }

    /// Reads an entry (linearizable); `None` when absent.
    pub async fn get(&self, ns: &str, key: &str) -> Result<Option<Entry>, Error> {
        let path = format!("/api/v1/namespaces/{}/config/{}", encode_segment(ns), encode_key(key));
        let result = self
            .send(Replay::Safe, |b| self.req(Method::GET, b, &path).header("accept", "application/octet-stream"))
            .await;
        let resp = match result {
            Err(Error::Api(p)) if p.status == 404 => return Ok(None),
            other => other?,
        };
        let version = resp
            .headers()
            .get("x-confman-version")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let revision = resp
            .headers()
            .get("x-confman-revision")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mod_revision = resp
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim_matches('"').strip_prefix('r')?.parse().ok())
            .unwrap_or(0);
        let value = resp.bytes().await.map_err(Error::Transport)?;
        Ok(Some(Entry { value, version, mod_revision, revision }))
    }

    /// Writes an entry; with `if_revision`, only if the entry's last change is at that revision
    /// (compare-and-set against [`Entry::mod_revision`] or [`WriteResult::revision`], the ETag;
    /// `Some(0)` means "only if absent"). Revisions are never reused, so a key deleted and
    /// created again never matches an older read.
    ///
    /// Every attempt carries the same `Idempotency-Key`: the write applies at most once, and an
    /// attempt repeated after an unknown outcome gets the first application's answer (its
    /// precondition was checked once, then), so conditional puts are repeated as well.
    pub async fn put(
        &self,
        ns: &str,
        key: &str,
        value: Vec<u8>,
        if_revision: Option<u64>,
    ) -> Result<WriteResult, Error> {
        let path = format!("/api/v1/namespaces/{}/config/{}", encode_segment(ns), encode_key(key));
        let value = bytes::Bytes::from(value);
        // One key for all attempts: a repeat is answered from the first application's record.
        let idempotency_key = new_idempotency_key();
        self.json(Replay::Safe, |b| {
            let r = self
                .req(Method::PUT, b, &path)
                .header("content-type", "application/octet-stream")
                .header(HEADER_IDEMPOTENCY_KEY, &idempotency_key)
                .body(value.clone());
            match if_revision {
                Some(0) => r.header("if-none-match", "*"),
                Some(rev) => r.header("if-match", format!("\"r{rev}\"")),
                None => r,
            }
        })
        .await
    }

    /// Deletes an entry; `false` when it did not exist. Every attempt carries the same
    /// `Idempotency-Key`, so a repeated attempt gets the first one's answer and never deletes a
    /// key that another writer created in between.
    pub async fn delete(&self, ns: &str, key: &str) -> Result<bool, Error> {
        let path = format!("/api/v1/namespaces/{}/config/{}", encode_segment(ns), encode_key(key));
        let idempotency_key = new_idempotency_key();
        let make = |b: &str| self.req(Method::DELETE, b, &path).header(HEADER_IDEMPOTENCY_KEY, &idempotency_key);
        match self.send(Replay::Safe, make).await {
            Ok(_) => Ok(true),
            Err(Error::Api(p)) if p.status == 404 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Lists entries under `prefix` (metadata only), one page.
    pub async fn list(&self, ns: &str, prefix: &str, continue_token: Option<&str>) -> Result<Page, Error> {
        let mut path = format!("/api/v1/namespaces/{}/config?prefix={}", encode_segment(ns), encode_segment(prefix));
        if let Some(c) = continue_token {
            path.push_str(&format!("&continue={}", encode_segment(c)));
        }
        self.json(Replay::Safe, |b| self.req(Method::GET, b, &path)).await
    }

    /// Superseded versions of an entry, newest first.
    pub async fn history(&self, ns: &str, key: &str) -> Result<serde_json::Value, Error> {
        let path = format!("/api/v1/namespaces/{}/config/{}/history", encode_segment(ns), encode_key(key));
        self.json(Replay::Safe, |b| self.req(Method::GET, b, &path)).await
    }

    /// Watches a namespace: every change after `from_revision` (None: from now), in order,
    /// resuming on another endpoint if the connection drops.
    pub async fn watch(&self, ns: &str, from_revision: Option<u64>) -> Result<Watch, Error> {
        let after = match from_revision {
            Some(r) => Some(r),
            None => self.cluster().await?.applied_index,
        };
        let mut w = Watch {
            http: self.watch_http.clone(),
            endpoints: self.endpoints.clone(),
            credential: self.credential.clone(),
            ns: ns.to_string(),
            next_endpoint: self.next.load(Ordering::Relaxed),
            after,
            retry_for: self.retry_for,
            body: None,
            buf: String::new(),
            partial: None,
            skip: 0,
            reconnects: 0,
            retries: RetryStats::default(),
        };
        w.connect().await?;
        Ok(w)
    }

    /// Creates or updates a namespace.
    pub async fn put_namespace(&self, ns: &str, description: &str, owner: &str) -> Result<(), Error> {
        let path = format!("/api/v1/namespaces/{}", encode_segment(ns));
        let body = serde_json::json!({ "description": description, "owner": owner });
        self.send(Replay::Safe, |b| self.req(Method::PUT, b, &path).json(&body)).await.map(drop)
    }

    /// Cluster status as seen by the first reachable endpoint.
    pub async fn cluster(&self) -> Result<ClusterStatus, Error> {
        self.json(Replay::Safe, |b| self.req(Method::GET, b, "/api/v1/cluster")).await
    }

    /// One GET of `path` on the node at `endpoint` specifically (no retry, no failover).
    async fn get_from<T: DeserializeOwned>(&self, endpoint: &str, path: &str) -> Result<T, Error> {
        let resp = self
            .req(Method::GET, endpoint.trim_end_matches('/'), path)
            .bearer_auth(&*self.credential.current()?)
            .send()
            .await
            .map_err(Error::Transport)?;
        if !resp.status().is_success() {
            return Err(Error::Api(Problem::read(resp).await));
        }
        resp.json().await.map_err(Error::Decode)
    }

    /// Cluster status of the node at `endpoint` specifically (no failover; one attempt).
    pub async fn cluster_of(&self, endpoint: &str) -> Result<ClusterStatus, Error> {
        self.get_from(endpoint, "/api/v1/cluster").await
    }

    /// Whether the node at `endpoint` reports ready (`/health/ready`).
    pub async fn is_ready(&self, endpoint: &str) -> bool {
        let url = format!("{}/health/ready", endpoint.trim_end_matches('/'));
        matches!(self.http.get(url).send().await, Ok(r) if r.status().is_success())
    }

    /// Adds node `id` at `address` as a learner; returns when it has caught up.
    pub async fn add_learner(&self, id: u64, address: &str) -> Result<ClusterStatus, Error> {
        let body = serde_json::json!({ "id": id, "address": address });
        self.json(Replay::Unsafe, |b| self.req(Method::POST, b, "/api/v1/cluster/members").json(&body)).await
    }

    /// Promotes learner `id` to voter.
    pub async fn promote(&self, id: u64) -> Result<ClusterStatus, Error> {
        let path = format!("/api/v1/cluster/members/{id}");
        self.json(Replay::Unsafe, |b| self.req(Method::POST, b, &path)).await
    }

    /// Removes member `id` (voter or learner); returns once the change is committed.
    pub async fn remove(&self, id: u64) -> Result<ClusterStatus, Error> {
        let path = format!("/api/v1/cluster/members/{id}");
        self.json(Replay::Unsafe, |b| self.req(Method::DELETE, b, &path)).await
    }

    /// Hands leadership to `to` (or any other voter) and waits until it moved.
    pub async fn transfer_leader(&self, to: Option<u64>) -> Result<Option<u64>, Error> {
        let body = serde_json::json!({ "to": to });
        let v: serde_json::Value =
            self.json(Replay::Unsafe, |b| self.req(Method::POST, b, "/api/v1/cluster/leader").json(&body)).await?;
        Ok(v.get("transferredTo").and_then(serde_json::Value::as_u64))
    }

    /// State digest of the node at `endpoint` (SHA-256 of its state and the applied index).
    pub async fn digest_of(&self, endpoint: &str) -> Result<serde_json::Value, Error> {
        self.get_from(endpoint, "/api/v1/cluster/digest").await
    }
}

/// Whether an attempt whose outcome is unknown may be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replay {
    /// Repeating it leaves the same state.
    Safe,
    /// Repeating it could fail or act twice although the first attempt succeeded.
    Unsafe,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_cluster_targets_the_client_service_over_https_when_the_ca_is_mounted()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let token = dir.path().join("token");
        std::fs::write(&token, "projected")?;
        let plain = ClientBuilder::in_cluster_with("config", "apps", &token, &dir.path().join("ca.crt"))?;
        assert_eq!(plain.endpoints, ["http://config.apps.svc:8080"]);
        assert!(plain.trusted_cas.is_empty());
        let ca = dir.path().join("ca.crt");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n")?;
        let tls = ClientBuilder::in_cluster_with("config", "apps", &token, &ca)?;
        assert_eq!(tls.endpoints, ["https://config.apps.svc:8080"]);
        assert_eq!(tls.trusted_cas.len(), 1);
        assert_eq!(&*tls.credential.current()?, "projected");
        Ok(())
    }

    #[test]
    fn keys_keep_slashes_and_escape_the_rest() {
        assert_eq!(encode_key("db/url"), "db/url");
        assert_eq!(encode_key("a b/c?d"), "a%20b/c%3Fd");
        assert_eq!(encode_segment("x/y"), "x%2Fy");
    }

    #[test]
    fn idempotency_keys_are_128_bit_hex_and_differ() {
        let keys: std::collections::HashSet<String> = (0..1000).map(|_| new_idempotency_key()).collect();
        assert_eq!(keys.len(), 1000);
        assert!(keys.iter().all(|k| k.len() == 32 && k.bytes().all(|b| b.is_ascii_hexdigit())));
    }

    /// A fake node: answers the first request with `first` and every other one with `then`
    /// (closing each connection), and returns each request's `Idempotency-Key`.
    async fn fake_node(
        first: &'static str,
        then: &'static str,
        requests: usize,
    ) -> std::io::Result<(String, tokio::task::JoinHandle<std::io::Result<Vec<Option<String>>>>)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let task = tokio::spawn(async move {
            let mut keys = Vec::new();
            for i in 0..requests {
                let (mut sock, _) = listener.accept().await?;
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    let n = sock.read(&mut chunk).await?;
                    if n == 0 {
                        return Err(std::io::Error::other("request cut short"));
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break p + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                let header = |name: &str| {
                    head.lines()
                        .find_map(|l| l.strip_prefix(name).map(|v| v.trim_start_matches(':').trim().to_string()))
                };
                let length: usize = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
                while buf.len() < head_end + length {
                    let n = sock.read(&mut chunk).await?;
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                keys.push(header("idempotency-key"));
                let (status, body) = if i == 0 { ("503 Service Unavailable", first) } else { ("200 OK", then) };
                let resp = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                sock.write_all(resp.as_bytes()).await?;
                sock.shutdown().await?;
            }
            Ok(keys)
        });
        Ok((url, task))
    }

    const TIMED_OUT: &str =
        r#"{"type":"https://confman.dev/problems/timeout","status":503,"detail":"outcome unknown"}"#;

    /// After an unknown outcome (the node timed out), confman-client repeats a write with the
    /// same idempotency key, so the cluster applies it once; conditional puts included.
    #[tokio::test]
    async fn a_write_repeated_after_an_unknown_outcome_sends_the_same_idempotency_key()
    -> Result<(), Box<dyn std::error::Error>> {
        for conditional in [None, Some(7)] {
            let (url, node) = fake_node(TIMED_OUT, r#"{"version":2,"revision":9}"#, 2).await?;
            let client = Client::builder([url], "k").retry_for(Duration::from_secs(10)).build()?;
            let r = client.put("ns", "k", b"v".to_vec(), conditional).await?;
            assert_eq!(r, WriteResult { version: 2, revision: 9 });
            let keys = node.await??;
            assert_eq!(keys.len(), 2);
            assert!(keys[0].as_ref().is_some_and(|k| k.len() == 32), "{keys:?}");
            assert_eq!(keys[0], keys[1], "{conditional:?}: the repeat carries the first attempt's key");
        }
        let (url, node) = fake_node(TIMED_OUT, r#"{"deletedVersion":2,"revision":9}"#, 2).await?;
        let client = Client::builder([url], "k").retry_for(Duration::from_secs(10)).build()?;
        assert!(client.delete("ns", "k").await?);
        let keys = node.await??;
        assert!(keys[0].is_some(), "{keys:?}");
        assert_eq!(keys[0], keys[1]);
        Ok(())
    }

    #[test]
    fn a_client_needs_an_endpoint() {
        assert!(matches!(Client::builder(Vec::<String>::new(), "k").build(), Err(Error::NoEndpoints)));
    }
}
