//! Starts real `confman-node` processes on loopback ports and drives them over HTTP. Waits are
//! polls of an observable condition with an overall deadline (never fixed sleeps), so tests
//! stop by themselves when something is wrong.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::Value;

/// Keys written to the keys file of every test cluster.
pub const ADMIN_KEY: &str = "test-admin-key";
/// Editor key.
pub const EDITOR_KEY: &str = "test-editor-key";
/// Viewer key.
pub const VIEWER_KEY: &str = "test-viewer-key";
/// Editor limited to namespaces `team-a.*`.
pub const SCOPED_EDITOR_KEY: &str = "test-scoped-editor-key";
/// Admin limited to namespaces `team-a.*`.
pub const SCOPED_ADMIN_KEY: &str = "test-scoped-admin-key";
/// The cluster token.
pub const CLUSTER_TOKEN: &str = "test-cluster-token-0123456789";

const KEYS_FILE: &str = r#"keys:
  - name: admin
    key: "test-admin-key"
    roles: [admin]
  - name: editor
    key: "test-editor-key"
    roles: [editor]
  - name: viewer
    key: "test-viewer-key"
    roles: [viewer]
  - name: scoped-editor
    key: "test-scoped-editor-key"
    roles: [editor]
    namespaces: ["team-a.*"]
  - name: scoped-admin
    key: "test-scoped-admin-key"
    roles: [admin]
    namespaces: ["team-a.*"]
"#;

/// Harness errors.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// A file or process operation failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// An HTTP call failed.
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
    /// A condition was not reached in time.
    #[error("timed out waiting for {0}")]
    Timeout(String),
    /// Test certificates could not be made.
    #[error(transparent)]
    Certs(#[from] crate::certs::CertError),
    /// Something unexpected.
    #[error("{0}")]
    Unexpected(String),
}

/// Result type of the harness.
pub type Result<T> = std::result::Result<T, HarnessError>;

/// Timing used by test clusters: fast elections, consistent with the node's rules.
pub const TEST_TIMING: &[&str] = &[
    "--heartbeat-ms",
    "50",
    "--election-min-ms",
    "400",
    "--election-max-ms",
    "800",
    "--request-timeout-ms",
    "5000",
    "--append-timeout-ms",
    "2000",
    "--snapshot-timeout-ms",
    "10000",
];

/// One node process.
pub struct NodeProc {
    /// Raft id.
    pub id: u64,
    /// Base URL.
    pub url: String,
    /// Listen address.
    pub addr: String,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Captured stderr (the node log).
    pub log_path: PathBuf,
    child: Option<Child>,
    restarts: u32,
}

/// A cluster of node processes sharing a keys file and a cluster token.
pub struct Cluster {
    /// The nodes by id.
    pub nodes: BTreeMap<u64, NodeProc>,
    binary: PathBuf,
    /// Deleted on drop unless `CONFMAN_TEST_KEEP` is set (then logs and data stay for a look).
    _tmp: Option<tempfile::TempDir>,
    root: PathBuf,
    peers: String,
    extra_args: Vec<String>,
    /// HTTP client for tests (trusts the test CA when TLS is on).
    pub http: reqwest::Client,
    /// The certificates, when the nodes serve TLS.
    pub tls: Option<crate::certs::TestCerts>,
}

/// Picks a free loopback port (bound and released; the node binds it right after).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Cluster {
    /// Starts `n` nodes (ids 1..=n) with the test timing plus `extra_args`.
    pub async fn start(binary: &Path, n: u64, extra_args: &[&str]) -> Result<Cluster> {
        let mut args: Vec<&str> = TEST_TIMING.to_vec();
        args.extend_from_slice(extra_args);
        Self::start_with(binary, n, &args).await
    }

    /// Starts `n` nodes (ids 1..=n) with exactly `extra_args` (node defaults otherwise).
    pub async fn start_with(binary: &Path, n: u64, extra_args: &[&str]) -> Result<Cluster> {
        Self::start_opts(binary, n, extra_args, false).await
    }

    /// Like `start`, with every node serving TLS (a test CA generated for this cluster; the
    /// certificate names `localhost` and `127.0.0.1`; peers and the harness trust the CA).
    pub async fn start_tls(binary: &Path, n: u64, extra_args: &[&str]) -> Result<Cluster> {
        let mut args: Vec<&str> = TEST_TIMING.to_vec();
        args.extend_from_slice(extra_args);
        Self::start_opts(binary, n, &args, true).await
    }

    async fn start_opts(binary: &Path, n: u64, extra_args: &[&str], tls: bool) -> Result<Cluster> {
        let tmp = tempfile::tempdir()?;
        let root = tmp.path().to_path_buf();
        let tmp = if std::env::var_os("CONFMAN_TEST_KEEP").is_some() {
            eprintln!("cluster files kept in {}", tmp.keep().display());
            None
        } else {
            Some(tmp)
        };
        std::fs::write(root.join("keys.yaml"), KEYS_FILE)?;
        std::fs::write(root.join("cluster.token"), CLUSTER_TOKEN)?;
        let mut ports = BTreeMap::new();
        for id in 1..=n {
            ports.insert(id, free_port()?);
        }
        let mut extra: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        let certs =
            if tls { Some(crate::certs::generate(&root.join("certs"), &["localhost", "127.0.0.1"])?) } else { None };
        let mut http = confman_client::http_builder().timeout(Duration::from_secs(30));
        if let Some(c) = &certs {
            for (flag, path) in [("--tls-cert-file", &c.cert), ("--tls-key-file", &c.key), ("--tls-ca-file", &c.ca)] {
                extra.extend([flag.to_string(), path.display().to_string()]);
            }
            http = http.add_root_certificate(reqwest::Certificate::from_pem(c.ca_pem.as_bytes())?);
        }
        let scheme = if tls { "https" } else { "http" };
        let peers = ports.iter().map(|(id, p)| format!("{id}={scheme}://127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
        let mut nodes = BTreeMap::new();
        for (id, port) in ports {
            let data_dir = root.join(format!("node{id}"));
            nodes.insert(
                id,
                NodeProc {
                    id,
                    url: format!("{scheme}://127.0.0.1:{port}"),
                    addr: format!("127.0.0.1:{port}"),
                    log_path: root.join(format!("node{id}.log")),
                    data_dir,
                    child: None,
                    restarts: 0,
                },
            );
        }
        let mut c = Cluster {
            nodes,
            binary: binary.to_path_buf(),
            _tmp: tmp,
            root,
            peers,
            extra_args: extra,
            http: http.build()?,
            tls: certs,
        };
        let ids: Vec<u64> = c.nodes.keys().copied().collect();
        for id in &ids {
            c.spawn(*id)?;
        }
        c.wait_all_ready(&ids).await?;
        Ok(c)
    }

    fn node(&self, id: u64) -> Result<&NodeProc> {
        self.nodes.get(&id).ok_or_else(|| HarnessError::Unexpected(format!("no node {id}")))
    }

    /// Base URL of a node.
    pub fn url(&self, id: u64) -> Result<String> {
        Ok(self.node(id)?.url.clone())
    }

    /// Starts (or restarts) node `id` with its existing data directory.
    pub fn spawn(&mut self, id: u64) -> Result<()> {
        self.spawn_env(id, &[])
    }

    /// Like `spawn`, with extra environment variables (e.g. fault injection).
    pub fn spawn_env(&mut self, id: u64, env: &[(&str, &str)]) -> Result<()> {
        let (binary, root, peers, extra) =
            (self.binary.clone(), self.root.clone(), self.peers.clone(), self.extra_args.clone());
        let node = self.nodes.get_mut(&id).ok_or_else(|| HarnessError::Unexpected(format!("no node {id}")))?;
        node.restarts += 1;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&node.log_path)?;
        let child = Command::new(&binary)
            .args(["--node-id", &id.to_string(), "--listen", &node.addr, "--advertise", &node.url])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(["--peers", &peers])
            .arg("--api-keys-file")
            .arg(root.join("keys.yaml"))
            .arg("--cluster-token-file")
            .arg(root.join("cluster.token"))
            .args(&extra)
            .env("RUST_LOG", "info,openraft=warn")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        node.child = Some(child);
        Ok(())
    }

    /// Kills node `id` with SIGKILL (a crash) and waits for the process to be gone.
    pub fn kill(&mut self, id: u64) -> Result<()> {
        let node = self.nodes.get_mut(&id).ok_or_else(|| HarnessError::Unexpected(format!("no node {id}")))?;
        if let Some(mut c) = node.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    /// Sends SIGTERM to node `id` and waits for it to exit (bounded).
    pub async fn terminate(&mut self, id: u64, within: Duration) -> Result<ExitStatus> {
        let node = self.nodes.get_mut(&id).ok_or_else(|| HarnessError::Unexpected(format!("no node {id}")))?;
        let mut child = node.child.take().ok_or_else(|| HarnessError::Unexpected(format!("node {id} not running")))?;
        let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status()?;
        if !status.success() {
            return Err(HarnessError::Unexpected("kill -TERM failed".into()));
        }
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = child.try_wait()? {
                return Ok(st);
            }
            if Instant::now() > deadline {
                child.kill()?;
                return Err(HarnessError::Timeout(format!("node {id} to exit after SIGTERM")));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (bounded) until node `id`'s process exits on its own.
    pub async fn wait_exit(&mut self, id: u64, within: Duration) -> Result<ExitStatus> {
        let node = self.nodes.get_mut(&id).ok_or_else(|| HarnessError::Unexpected(format!("no node {id}")))?;
        let mut child = node.child.take().ok_or_else(|| HarnessError::Unexpected(format!("node {id} not running")))?;
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = child.try_wait()? {
                return Ok(st);
            }
            if Instant::now() > deadline {
                child.kill()?;
                return Err(HarnessError::Timeout(format!("node {id} to exit")));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Process ids of the running nodes.
    pub fn pids(&self) -> Vec<u32> {
        self.nodes.values().filter_map(|n| n.child.as_ref().map(Child::id)).collect()
    }

    /// Process id of node `id`, when running.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.nodes.get(&id).and_then(|n| n.child.as_ref()).map(Child::id)
    }

    /// Peak resident set size (VmHWM, KiB) of node `id`'s process, from /proc.
    pub fn peak_rss_kib(&self, id: u64) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid(id)?)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// Data directory of node `id`.
    pub fn data_dir(&self, id: u64) -> Result<PathBuf> {
        Ok(self.node(id)?.data_dir.clone())
    }

    /// `GET /api/v1/cluster/digest` of node `id`.
    pub async fn digest(&self, id: u64) -> Result<Value> {
        let (st, v) = self.call(id, Method::GET, "/api/v1/cluster/digest", ADMIN_KEY, None).await?;
        if !st.is_success() {
            return Err(HarnessError::Unexpected(format!("digest of node {id}: {st} {v}")));
        }
        Ok(v)
    }

    /// Waits until every listed node has applied the same index and has the same state
    /// digest; returns the digest. Call when writes have stopped.
    pub async fn wait_converged(&self, ids: &[u64], within: Duration) -> Result<Value> {
        let deadline = Instant::now() + within;
        loop {
            // A node still starting refuses connections: that is "not converged yet".
            let mut digests = Vec::new();
            for id in ids {
                digests.push(self.digest(*id).await.unwrap_or(Value::Null));
            }
            let Some(first) = digests.first() else {
                return Err(HarnessError::Unexpected("no nodes to compare".into()));
            };
            if first["appliedIndex"].as_u64().unwrap_or(0) > 0
                && digests.iter().all(|d| d["appliedIndex"] == first["appliedIndex"] && d["sha256"] == first["sha256"])
            {
                return Ok(first.clone());
            }
            if Instant::now() > deadline {
                return Err(HarnessError::Timeout(format!("nodes {ids:?} to converge; digests: {digests:?}")));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Writes raw bytes through node `id`; returns the status.
    pub async fn put_bytes(&self, id: u64, ns: &str, key: &str, value: Vec<u8>) -> Result<StatusCode> {
        let resp = self
            .request(id, Method::PUT, &format!("/api/v1/namespaces/{ns}/config/{key}"))?
            .bearer_auth(EDITOR_KEY)
            .header("content-type", "application/octet-stream")
            .body(value)
            .send()
            .await?;
        Ok(resp.status())
    }

    /// Triggers a snapshot on node `id` and waits for it.
    pub async fn snapshot(&self, id: u64) -> Result<()> {
        let (st, v) = self.call(id, Method::POST, "/api/v1/cluster/snapshot", ADMIN_KEY, None).await?;
        if !st.is_success() {
            return Err(HarnessError::Unexpected(format!("snapshot on node {id}: {st} {v}")));
        }
        Ok(())
    }

    /// The log (stderr) of node `id` so far.
    pub fn log(&self, id: u64) -> Result<String> {
        Ok(std::fs::read_to_string(&self.node(id)?.log_path)?)
    }

    /// Deletes node `id`'s data directory (it must be stopped).
    pub fn wipe(&mut self, id: u64) -> Result<()> {
        let dir = self.node(id)?.data_dir.clone();
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        Ok(())
    }

    /// Polls `/health/ready` of the given nodes until all answer 200.
    pub async fn wait_all_ready(&self, ids: &[u64]) -> Result<()> {
        for id in ids {
            let url = format!("{}/health/ready", self.url(*id)?);
            self.poll(&format!("node {id} ready"), Duration::from_secs(60), || {
                let http = self.http.clone();
                let url = url.clone();
                async move { Ok(http.get(&url).send().await.ok().is_some_and(|r| r.status() == StatusCode::OK)) }
            })
            .await?;
        }
        Ok(())
    }

    /// Polls `check` every 25 ms until it returns true, failing after `within`.
    pub async fn poll<F, Fut>(&self, what: &str, within: Duration, mut check: F) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<bool>>,
    {
        let deadline = Instant::now() + within;
        loop {
            if check().await? {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(HarnessError::Timeout(what.to_string()));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// `GET /api/v1/cluster` of one node.
    pub async fn cluster_info(&self, id: u64) -> Result<Value> {
        let r = self.call(id, Method::GET, "/api/v1/cluster", ADMIN_KEY, None).await?;
        Ok(r.1)
    }

    /// Waits until every listed node reports the same leader, among `candidates`, and returns it.
    pub async fn wait_leader(&self, ids: &[u64], candidates: &[u64]) -> Result<u64> {
        let mut found = 0;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut leaders = Vec::new();
            for id in ids {
                let l = self.cluster_info(*id).await.ok().and_then(|v| v["leaderId"].as_u64());
                leaders.push(l);
            }
            if let Some(Some(l)) = leaders.first()
                && leaders.iter().all(|x| *x == Some(*l))
                && candidates.contains(l)
            {
                found = *l;
            }
            if found != 0 {
                return Ok(found);
            }
            if Instant::now() > deadline {
                return Err(HarnessError::Timeout(format!("an agreed leader among {candidates:?}, saw {leaders:?}")));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Sends a request with an API key and an optional JSON body; returns status and JSON
    /// (or `Null` for a non-JSON body).
    pub async fn call(
        &self,
        id: u64,
        method: Method,
        path: &str,
        key: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, Value)> {
        let mut req = self.http.request(method, format!("{}{path}", self.url(id)?)).bearer_auth(key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let bytes = resp.bytes().await?;
        Ok((status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
    }

    /// Sends a raw request and returns the response.
    pub fn request(&self, id: u64, method: Method, path: &str) -> Result<reqwest::RequestBuilder> {
        Ok(self.http.request(method, format!("{}{path}", self.url(id)?)))
    }

    /// Creates a namespace through node `id`.
    pub async fn create_namespace(&self, id: u64, ns: &str) -> Result<()> {
        // A 503 (no leader known right now, e.g. just after an election) is retried for up to
        // 10 s, as a client would.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (st, v) = self
                .call(
                    id,
                    Method::PUT,
                    &format!("/api/v1/namespaces/{ns}"),
                    ADMIN_KEY,
                    Some(serde_json::json!({"description": "test"})),
                )
                .await?;
            if st.is_success() {
                return Ok(());
            }
            if st != StatusCode::SERVICE_UNAVAILABLE || Instant::now() > deadline {
                return Err(HarnessError::Unexpected(format!("create namespace {ns}: {st} {v}")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Writes a text value through node `id`; returns status and body. A 503 (no leader right
    /// now: the API's "retry shortly") is retried for up to 10 s, as a client would.
    pub async fn put_text(&self, id: u64, ns: &str, key: &str, value: &str) -> Result<(StatusCode, Value)> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let resp = self
                .request(id, Method::PUT, &format!("/api/v1/namespaces/{ns}/config/{key}"))?
                .bearer_auth(EDITOR_KEY)
                .header("content-type", "text/plain")
                .body(value.to_string())
                .send()
                .await?;
            let status = resp.status();
            let bytes = resp.bytes().await?;
            let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            if status != StatusCode::SERVICE_UNAVAILABLE || Instant::now() > deadline {
                return Ok((status, body));
            }
            eprintln!("PUT {ns}/{key} via node {id}: 503 {body}; retrying");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Reads an entry through node `id` (linearizable unless `stale`); `None` on 404. A 503 is
    /// retried for up to 10 s, as a client would.
    pub async fn get(&self, id: u64, ns: &str, key: &str, stale: bool) -> Result<Option<Value>> {
        let q = if stale { "?consistency=stale" } else { "" };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let path = format!("/api/v1/namespaces/{ns}/config/{key}{q}");
            let (st, v) = self.call(id, Method::GET, &path, VIEWER_KEY, None).await?;
            match st {
                StatusCode::OK => return Ok(Some(v)),
                StatusCode::NOT_FOUND => return Ok(None),
                StatusCode::SERVICE_UNAVAILABLE if Instant::now() < deadline => {
                    eprintln!("GET {ns}/{key} on node {id}: 503 {v}; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => return Err(HarnessError::Unexpected(format!("GET {ns}/{key} on node {id}: {other} {v}"))),
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in self.nodes.values_mut() {
            if let Some(mut c) = node.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// Peak resident set size (VmHWM, KiB) of a process, from /proc.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Resets a process's peak RSS to its current RSS (`clear_refs` 5), so a later VmHWM reading
/// is the peak of what happened in between. Returns false where the kernel refuses.
pub fn reset_peak_rss(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}
