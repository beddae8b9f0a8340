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

/// The API keys of one test cluster. Every cluster gets its own keys and cluster token (and its
/// own loopback address), so a request or a peer call that reaches another test's node is
/// refused instead of silently accepted.
#[derive(Debug, Clone)]
pub struct TestKeys {
    /// Admin of every namespace.
    pub admin: String,
    /// Editor of every namespace.
    pub editor: String,
    /// Viewer of every namespace.
    pub viewer: String,
    /// Editor limited to namespaces `team-a.*`.
    pub scoped_editor: String,
    /// Admin limited to namespaces `team-a.*`.
    pub scoped_admin: String,
    /// The cluster token (Raft RPC and unscoped administration).
    pub token: String,
}

impl TestKeys {
    /// Fresh random keys.
    pub fn generate() -> TestKeys {
        let tag = format!("{:016x}", rand::random::<u64>());
        TestKeys {
            admin: format!("admin-{tag}"),
            editor: format!("editor-{tag}"),
            viewer: format!("viewer-{tag}"),
            scoped_editor: format!("scoped-editor-{tag}"),
            scoped_admin: format!("scoped-admin-{tag}"),
            token: format!("cluster-token-{tag}-{:016x}", rand::random::<u64>()),
        }
    }

    /// The keys file the nodes load.
    pub fn keys_file(&self) -> String {
        format!(
            r#"keys:
  - name: admin
    key: "{}"
    roles: [admin]
  - name: editor
    key: "{}"
    roles: [editor]
  - name: viewer
    key: "{}"
    roles: [viewer]
  - name: scoped-editor
    key: "{}"
    roles: [editor]
    namespaces: ["team-a.*"]
  - name: scoped-admin
    key: "{}"
    roles: [admin]
    namespaces: ["team-a.*"]
"#,
            self.admin, self.editor, self.viewer, self.scoped_editor, self.scoped_admin
        )
    }
}

/// A 503 seen by a harness helper, with where it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable {
    /// The failover window it was retried in (`None`: outside any window, a failure).
    pub window: Option<String>,
    /// The call that got it.
    pub call: String,
}

/// Which 503 answers the harness helpers retry. A test names the moments when the cluster may
/// legitimately be without a leader (a crash, a restart, a membership change); outside such a
/// window a 503 is returned to the test as it came, and is recorded, so intermittent
/// unavailability fails the test instead of passing as a slow success.
#[derive(Debug, Default)]
struct Windows {
    /// The open window: its id and name.
    open: Option<(u64, String)>,
    next_id: u64,
    /// Every 503 seen, with the id of the window it was retried in.
    seen: Vec<(Option<u64>, Unavailable)>,
}

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
    /// A node answered 503 outside a failover window, or for longer than a window allows.
    #[error("{call}: 503 {}: {body}", match window {
        Some(w) => format!("for 10 s inside the failover window {w:?}"),
        None => "outside a failover window".to_string(),
    })]
    Unavailable {
        /// The call.
        call: String,
        /// The window it was retried in, if any.
        window: Option<String>,
        /// The problem the node answered.
        body: Value,
    },
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

/// [`TEST_TIMING`] without the flags `extra_args` sets, then `extra_args`.
fn with_test_timing<'a>(extra_args: &[&'a str]) -> Vec<&'a str> {
    let mut args: Vec<&str> =
        TEST_TIMING.chunks(2).filter(|pair| !extra_args.contains(&pair[0])).flatten().copied().collect();
    args.extend_from_slice(extra_args);
    args
}

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
    /// Small filesystems under the data directories (`start_faulty`); unmounted before the
    /// temporary directory goes (fields drop in order).
    disks: Option<crate::small_disk::SmallDisks>,
    /// Whether nodes get a fault-injection file for slow fsyncs (`set_fsync_delay`).
    fsync_hook: bool,
    /// Deleted on drop unless `CONFMAN_TEST_KEEP` is set (then logs and data stay for a look).
    _tmp: Option<tempfile::TempDir>,
    root: PathBuf,
    peers: String,
    extra_args: Vec<String>,
    /// Environment variables every node of this cluster gets.
    extra_env: Vec<(String, String)>,
    /// HTTP client for tests (trusts the test CA when TLS is on).
    pub http: reqwest::Client,
    /// The certificates, when the nodes serve TLS.
    pub tls: Option<crate::certs::TestCerts>,
    /// This cluster's API keys and token.
    pub keys: TestKeys,
    /// The loopback address every node of this cluster listens on (its own, per cluster).
    pub ip: std::net::Ipv4Addr,
    windows: std::sync::Mutex<Windows>,
    /// Each node in a network namespace of its own (`start_isolated`), so links can be cut.
    /// Dropped after the nodes (fields drop after `Drop::drop`).
    pub network: Option<crate::netns::Network>,
}

/// A loopback address of its own for one cluster: `127.x.y.z` chosen at random (not
/// 127.0.0.1). Ports picked on it are free by the time the nodes bind them, because nothing
/// else in the test run listens on or connects from that address.
pub fn private_loopback() -> std::net::Ipv4Addr {
    loop {
        let [a, b, c]: [u8; 3] = rand::random();
        if a != 0 && c != 0 && c != 255 {
            return std::net::Ipv4Addr::new(127, a, b, c);
        }
    }
}

/// `n` distinct free ports on `ip`: all bound at once (so none is picked twice), then released.
pub fn free_ports(ip: std::net::Ipv4Addr, n: usize) -> Result<Vec<u16>> {
    let listeners =
        (0..n).map(|_| TcpListener::bind((ip, 0))).collect::<std::result::Result<Vec<_>, std::io::Error>>()?;
    listeners.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

/// What a cluster for fault injection needs (`Cluster::start_faulty`).
#[derive(Debug, Clone, Copy, Default)]
pub struct FaultSetup {
    /// Each node in a network namespace of its own (`crate::netns`), for partitions.
    pub isolated: bool,
    /// Each data directory on a tmpfs of this size (`crate::small_disk`), for a full disk.
    pub small_disk_bytes: Option<u64>,
    /// Each node with a fault-injection file for slow fsyncs (`Cluster::set_fsync_delay`).
    pub fsync_hook: bool,
}

impl Cluster {
    /// Starts `n` nodes (ids 1..=n) with the test timing plus `extra_args` (a flag given in
    /// `extra_args` replaces the test timing's value: the node accepts a flag once).
    pub async fn start(binary: &Path, n: u64, extra_args: &[&str]) -> Result<Cluster> {
        Self::start_with(binary, n, &with_test_timing(extra_args)).await
    }

    /// Starts `n` nodes (ids 1..=n) with exactly `extra_args` (node defaults otherwise).
    pub async fn start_with(binary: &Path, n: u64, extra_args: &[&str]) -> Result<Cluster> {
        Self::start_opts(binary, n, extra_args, false, &[], FaultSetup::default()).await
    }

    /// Like `start`, with every node in a network namespace of its own on a private bridge
    /// (`crate::netns`), so a test can partition them. Needs root.
    pub async fn start_isolated(binary: &Path, n: u64, extra_args: &[&str]) -> Result<Cluster> {
        let setup = FaultSetup { isolated: true, ..FaultSetup::default() };
        Self::start_opts(binary, n, &with_test_timing(extra_args), false, &[], setup).await
    }

    /// Like `start`, prepared for the faults `setup` asks for (root needed for namespaces and
    /// small disks).
    pub async fn start_faulty(binary: &Path, n: u64, extra_args: &[&str], setup: FaultSetup) -> Result<Cluster> {
        Self::start_opts(binary, n, &with_test_timing(extra_args), false, &[], setup).await
    }

    /// Like `start`, with every node serving TLS (a test CA generated for this cluster; the
    /// certificate names `localhost` and `127.0.0.1`; peers and the harness trust the CA).
    pub async fn start_tls(binary: &Path, n: u64, extra_args: &[&str]) -> Result<Cluster> {
        Self::start_opts(binary, n, &with_test_timing(extra_args), true, &[], FaultSetup::default()).await
    }

    /// Like `start_with`, with environment variables for every node (e.g. a benchmark's
    /// baseline switch).
    pub async fn start_with_env(binary: &Path, n: u64, extra_args: &[&str], env: &[(&str, &str)]) -> Result<Cluster> {
        Self::start_opts(binary, n, extra_args, false, env, FaultSetup::default()).await
    }

    async fn start_opts(
        binary: &Path,
        n: u64,
        extra_args: &[&str],
        tls: bool,
        env: &[(&str, &str)],
        setup: FaultSetup,
    ) -> Result<Cluster> {
        let tmp = tempfile::tempdir()?;
        let root = tmp.path().to_path_buf();
        let tmp = if std::env::var_os("CONFMAN_TEST_KEEP").is_some() {
            eprintln!("cluster files kept in {}", tmp.keep().display());
            None
        } else {
            Some(tmp)
        };
        let keys = TestKeys::generate();
        std::fs::write(root.join("keys.yaml"), keys.keys_file())?;
        std::fs::write(root.join("cluster.token"), &keys.token)?;
        let network =
            if setup.isolated { Some(crate::netns::Network::create(&(1..=n).collect::<Vec<_>>())?) } else { None };
        let ip = private_loopback();
        // In namespaces of their own every node has the whole port range to itself.
        let ports: BTreeMap<u64, u16> = match &network {
            Some(_) => (1..=n).map(|id| (id, 7100)).collect(),
            None => (1..=n).zip(free_ports(ip, n as usize)?).collect(),
        };
        let host = |id: u64| network.as_ref().map_or(ip, |net| net.ip(id));
        let mut extra: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        let ip_name = ip.to_string();
        let certs = if tls {
            Some(crate::certs::generate(&root.join("certs"), &["localhost", "127.0.0.1", &ip_name])?)
        } else {
            None
        };
        let mut http = confman_client::http_builder().timeout(Duration::from_secs(30));
        if let Some(c) = &certs {
            for (flag, path) in [("--tls-cert-file", &c.cert), ("--tls-key-file", &c.key), ("--tls-ca-file", &c.ca)] {
                extra.extend([flag.to_string(), path.display().to_string()]);
            }
            http = http.add_root_certificate(reqwest::Certificate::from_pem(c.ca_pem.as_bytes())?);
        }
        let scheme = if tls { "https" } else { "http" };
        let peers =
            ports.iter().map(|(id, p)| format!("{id}={scheme}://{}:{p}", host(*id))).collect::<Vec<_>>().join(",");
        let mut nodes = BTreeMap::new();
        for (id, port) in ports {
            let data_dir = root.join(format!("node{id}"));
            nodes.insert(
                id,
                NodeProc {
                    id,
                    url: format!("{scheme}://{}:{port}", host(id)),
                    addr: format!("{}:{port}", host(id)),
                    log_path: root.join(format!("node{id}.log")),
                    data_dir,
                    child: None,
                    restarts: 0,
                },
            );
        }
        let disks = match setup.small_disk_bytes {
            Some(bytes) => {
                let dirs: Vec<PathBuf> = nodes.values().map(|n| n.data_dir.clone()).collect();
                Some(crate::small_disk::SmallDisks::mount(&dirs, bytes)?)
            }
            None => None,
        };
        let mut c = Cluster {
            nodes,
            binary: binary.to_path_buf(),
            disks,
            fsync_hook: setup.fsync_hook,
            _tmp: tmp,
            root,
            peers,
            extra_args: extra,
            extra_env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            http: http.build()?,
            tls: certs,
            keys,
            ip,
            windows: std::sync::Mutex::new(Windows::default()),
            network,
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
        self.spawn_with(id, &[], env)
    }

    /// Like `spawn`, with `--flag value` pairs for this node only (replacing the cluster's
    /// value of the same flag) and environment variables.
    pub fn spawn_with(&mut self, id: u64, args: &[&str], env: &[(&str, &str)]) -> Result<()> {
        let (binary, root, peers) = (self.binary.clone(), self.root.clone(), self.peers.clone());
        let mut extra = Vec::new();
        let mut cluster_args = self.extra_args.iter();
        while let Some(a) = cluster_args.next() {
            if a.starts_with("--") && args.contains(&a.as_str()) {
                cluster_args.next(); // its value
            } else {
                extra.push(a.clone());
            }
        }
        extra.extend(args.iter().map(|a| a.to_string()));
        let node = self.nodes.get_mut(&id).ok_or_else(|| HarnessError::Unexpected(format!("no node {id}")))?;
        node.restarts += 1;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&node.log_path)?;
        let mut command = match &self.network {
            Some(net) => net.command(id, &binary)?,
            None => Command::new(&binary),
        };
        let child = command
            .args(["--node-id", &id.to_string(), "--listen", &node.addr, "--advertise", &node.url])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(["--peers", &peers])
            .arg("--api-keys-file")
            .arg(root.join("keys.yaml"))
            .arg("--cluster-token-file")
            .arg(root.join("cluster.token"))
            .args(&extra)
            // JSON lines, so tests can check levels and messages exactly (no colour codes).
            .args(["--log-format", "json"])
            .env("RUST_LOG", "info,openraft=warn")
            .envs(self.extra_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(self.fsync_hook.then(|| ("CONFMAN_FAULT_FSYNC_DELAY_FILE", fsync_delay_file(&root, id))))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        node.child = Some(child);
        Ok(())
    }

    /// Makes every log fsync of node `id` take `ms` longer (`"250"`, or `"50-500"` drawn per
    /// fsync), or normal again with `None`. Needs a cluster from `start_faulty` with
    /// `fsync_hook`.
    pub fn set_fsync_delay(&self, id: u64, ms: Option<&str>) -> Result<()> {
        if !self.fsync_hook {
            return Err(HarnessError::Unexpected("the cluster was started without the fsync hook".into()));
        }
        let file = fsync_delay_file(&self.root, id);
        match ms {
            Some(ms) => std::fs::write(&file, ms)?,
            None => match std::fs::remove_file(&file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            },
        }
        Ok(())
    }

    /// Whether the data directories are on small disks of their own (`start_faulty`).
    pub fn has_small_disks(&self) -> bool {
        self.disks.is_some()
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

    /// Nodes whose process exited on its own (not through `kill`/`terminate`), with how.
    pub fn exited(&mut self) -> Result<Vec<(u64, ExitStatus)>> {
        let mut out = Vec::new();
        for (id, node) in self.nodes.iter_mut() {
            if let Some(child) = node.child.as_mut()
                && let Some(st) = child.try_wait()?
            {
                out.push((*id, st));
            }
        }
        Ok(out)
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

    /// Rewrites the cluster token file every node reads at its next start (one token per
    /// line: the first is presented, all are accepted).
    pub fn write_token_file(&self, text: &str) -> Result<()> {
        Ok(std::fs::write(self.root.join("cluster.token"), text)?)
    }

    /// Data directory of node `id`.
    pub fn data_dir(&self, id: u64) -> Result<PathBuf> {
        Ok(self.node(id)?.data_dir.clone())
    }

    /// `GET /api/v1/cluster/digest` of node `id`.
    pub async fn digest(&self, id: u64) -> Result<Value> {
        let (st, v) = self.call(id, Method::GET, "/api/v1/cluster/digest", &self.keys.admin, None).await?;
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

    /// Writes raw bytes through node `id`; returns the status (a 503 is an error: see
    /// [`Cluster::open_failover_window`]).
    pub async fn put_bytes(&self, id: u64, ns: &str, key: &str, value: Vec<u8>) -> Result<StatusCode> {
        let what = format!("PUT {ns}/{key} ({} bytes) via node {id}", value.len());
        let (st, v) = self
            .retrying_in_window(&what, || async {
                let resp = self
                    .request(id, Method::PUT, &format!("/api/v1/namespaces/{ns}/config/{key}"))?
                    .bearer_auth(&self.keys.editor)
                    .header("content-type", "application/octet-stream")
                    .body(value.clone())
                    .send()
                    .await?;
                let status = resp.status();
                let body = resp.bytes().await?;
                Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
            })
            .await?;
        if st == StatusCode::SERVICE_UNAVAILABLE {
            return Err(self.unavailable_error(what, v));
        }
        Ok(st)
    }

    /// Triggers a snapshot on node `id` and waits for it.
    pub async fn snapshot(&self, id: u64) -> Result<()> {
        // A build of a few GiB on a loaded machine outlasts the harness's 30 s request timeout;
        // the node bounds the wait itself (its snapshot timeout) and answers a problem past it.
        let resp = self
            .request(id, Method::POST, "/api/v1/cluster/snapshot")?
            .bearer_auth(&self.keys.admin)
            .timeout(Duration::from_secs(600))
            .send()
            .await?;
        let st = resp.status();
        let v: Value = serde_json::from_slice(&resp.bytes().await?).unwrap_or(Value::Null);
        if !st.is_success() {
            return Err(HarnessError::Unexpected(format!("snapshot on node {id}: {st} {v}")));
        }
        Ok(())
    }

    /// The log (stderr) of node `id` so far: JSON lines (`--log-format json`).
    pub fn log(&self, id: u64) -> Result<String> {
        Ok(std::fs::read_to_string(&self.node(id)?.log_path)?)
    }

    /// The log records of node `id` so far. A line that is not a JSON record (a panic message,
    /// an abort) is returned as `{"level": "UNSTRUCTURED", "line": ...}` so checks see it.
    pub fn log_records(&self, id: u64) -> Result<Vec<Value>> {
        Ok(parse_log(&self.log(id)?))
    }

    /// Records of node `id`'s log at `level` (`ERROR`, `WARN`, …), plus any unstructured line.
    pub fn log_records_at(&self, id: u64, level: &str) -> Result<Vec<Value>> {
        Ok(self
            .log_records(id)?
            .into_iter()
            .filter(|r| r["level"].as_str().is_some_and(|l| l == level || l == "UNSTRUCTURED"))
            .collect())
    }

    /// Whether node `id` logged a record whose message is exactly `message`.
    pub fn logged(&self, id: u64, message: &str) -> Result<bool> {
        Ok(self.log_records(id)?.iter().any(|r| r["fields"]["message"].as_str() == Some(message)))
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
        let r = self.call(id, Method::GET, "/api/v1/cluster", &self.keys.admin, None).await?;
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

    /// Opens a failover window: until [`Cluster::close_failover_window`], the helpers
    /// `create_namespace`, `put_text`, `put_bytes` and `get` retry a 503 (for up to 10 s per
    /// call), as a client would while a new leader is elected. `why` names the event (it shows
    /// in [`Cluster::unavailable`] and in failures). Windows do not nest: opening one while
    /// another is open is a test bug and panics.
    pub fn open_failover_window(&self, why: &str) {
        let mut w = self.windows.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        assert!(w.open.is_none(), "failover window {:?} opened while {:?} is open", why, w.open);
        w.next_id += 1;
        w.open = Some((w.next_id, why.to_string()));
    }

    /// Closes the failover window; returns how many 503s were retried in it (0 when none was
    /// open).
    pub fn close_failover_window(&self) -> usize {
        let mut w = self.windows.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some((id, _)) = w.open.take() else { return 0 };
        w.seen.iter().filter(|(window, _)| *window == Some(id)).count()
    }

    /// Every 503 a helper saw so far, in or outside a failover window.
    pub fn unavailable(&self) -> Vec<Unavailable> {
        let w = self.windows.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        w.seen.iter().map(|(_, u)| u.clone()).collect()
    }

    /// Records a 503 and says whether to retry it (only inside an open window).
    fn record_unavailable(&self, call: String) -> bool {
        let mut w = self.windows.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let open = w.open.clone();
        let retry = open.is_some();
        w.seen.push((open.as_ref().map(|(id, _)| *id), Unavailable { window: open.map(|(_, why)| why), call }));
        retry
    }

    /// The error for a 503 a helper gives up on.
    fn unavailable_error(&self, call: String, body: Value) -> HarnessError {
        let w = self.windows.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        HarnessError::Unavailable { call, window: w.open.as_ref().map(|(_, why)| why.clone()), body }
    }

    /// Runs `attempt` once, and again after each 503 while a failover window is open (for up to
    /// 10 s). Outside a window a 503 is recorded and returned as it came.
    async fn retrying_in_window<F, Fut>(&self, what: &str, mut attempt: F) -> Result<(StatusCode, Value)>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(StatusCode, Value)>>,
    {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (st, v) = attempt().await?;
            if st != StatusCode::SERVICE_UNAVAILABLE {
                return Ok((st, v));
            }
            if !self.record_unavailable(what.to_string()) || Instant::now() > deadline {
                return Ok((st, v));
            }
            eprintln!("{what}: 503 {v}; retrying inside the failover window");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Creates a namespace through node `id`.
    pub async fn create_namespace(&self, id: u64, ns: &str) -> Result<()> {
        let what = format!("PUT namespace {ns} via node {id}");
        let body = serde_json::json!({"description": "test"});
        let path = format!("/api/v1/namespaces/{ns}");
        let (st, v) = self
            .retrying_in_window(&what, || self.call(id, Method::PUT, &path, &self.keys.admin, Some(body.clone())))
            .await?;
        match st {
            s if s.is_success() => Ok(()),
            StatusCode::SERVICE_UNAVAILABLE => Err(self.unavailable_error(what, v)),
            _ => Err(HarnessError::Unexpected(format!("{what}: {st} {v}"))),
        }
    }

    /// Writes a text value through node `id` with the editor key; returns status and body (a
    /// 503 is an error: see [`Cluster::open_failover_window`]).
    pub async fn put_text(&self, id: u64, ns: &str, key: &str, value: &str) -> Result<(StatusCode, Value)> {
        let what = format!("PUT {ns}/{key} via node {id}");
        let (st, v) = self
            .retrying_in_window(&what, || async {
                let resp = self
                    .request(id, Method::PUT, &format!("/api/v1/namespaces/{ns}/config/{key}"))?
                    .bearer_auth(&self.keys.editor)
                    .header("content-type", "text/plain")
                    .body(value.to_string())
                    .send()
                    .await?;
                let status = resp.status();
                let bytes = resp.bytes().await?;
                Ok((status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
            })
            .await?;
        if st == StatusCode::SERVICE_UNAVAILABLE {
            return Err(self.unavailable_error(what, v));
        }
        Ok((st, v))
    }

    /// Reads an entry through node `id` (linearizable unless `stale`); `None` on 404.
    pub async fn get(&self, id: u64, ns: &str, key: &str, stale: bool) -> Result<Option<Value>> {
        let q = if stale { "?consistency=stale" } else { "" };
        let path = format!("/api/v1/namespaces/{ns}/config/{key}{q}");
        let what = format!("GET {ns}/{key} on node {id}");
        let (st, v) =
            self.retrying_in_window(&what, || self.call(id, Method::GET, &path, &self.keys.viewer, None)).await?;
        match st {
            StatusCode::OK => Ok(Some(v)),
            StatusCode::NOT_FOUND => Ok(None),
            StatusCode::SERVICE_UNAVAILABLE => Err(self.unavailable_error(what, v)),
            other => Err(HarnessError::Unexpected(format!("{what}: {other} {v}"))),
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

/// The fault-injection file of node `id`'s fsyncs (see the node's log store).
fn fsync_delay_file(root: &Path, id: u64) -> PathBuf {
    root.join(format!("node{id}.fsync-delay"))
}

/// Default headers that authenticate every request of a benchmark's HTTP client with `key`.
pub fn bearer_headers(key: &str) -> Result<reqwest::header::HeaderMap> {
    let mut h = reqwest::header::HeaderMap::new();
    let v = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}"))
        .map_err(|e| HarnessError::Unexpected(format!("bad key: {e}")))?;
    h.insert(reqwest::header::AUTHORIZATION, v);
    Ok(h)
}

/// Parses a JSON-lines node log; see [`Cluster::log_records`].
pub fn parse_log(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| serde_json::json!({"level": "UNSTRUCTURED", "line": l})))
        .collect()
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
