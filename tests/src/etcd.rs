//! A 3-node etcd 3.4 cluster on a loopback address of its own (Debian's `etcd-server`), the
//! reference system of the comparison benchmark. Request-size and quota limits are raised so
//! 1 MiB values are allowed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cluster::{HarnessError, Result, free_ports, private_loopback};

/// A running etcd cluster; processes are killed on drop.
pub struct EtcdCluster {
    children: Vec<Child>,
    /// Client URLs of the members.
    pub endpoints: Vec<String>,
    /// Data directories of the members.
    pub data_dirs: Vec<PathBuf>,
}

impl EtcdCluster {
    /// Starts three members under `root` and waits until they serve requests.
    pub async fn start(binary: &Path, root: &Path) -> Result<EtcdCluster> {
        // An address of its own (etcd listens on any loopback address): nothing else in the
        // run binds its ports, all picked at once, between their release and etcd binding them.
        let ip = private_loopback();
        let picked = free_ports(ip, 2 * 3)?;
        let ports: Vec<(u16, u16)> = picked.chunks_exact(2).map(|p| (p[0], p[1])).collect();
        let initial = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("e{}=http://{ip}:{peer}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = EtcdCluster { children: Vec::new(), endpoints: Vec::new(), data_dirs: Vec::new() };
        for (i, (client, peer)) in ports.iter().enumerate() {
            let name = format!("e{}", i + 1);
            let dir = root.join(&name);
            std::fs::create_dir_all(&dir)?;
            let log = std::fs::File::create(root.join(format!("{name}.log")))?;
            let child = Command::new(binary)
                .args(["--name", &name])
                .arg("--data-dir")
                .arg(&dir)
                .args(["--listen-client-urls", &format!("http://{ip}:{client}")])
                .args(["--advertise-client-urls", &format!("http://{ip}:{client}")])
                .args(["--listen-peer-urls", &format!("http://{ip}:{peer}")])
                .args(["--initial-advertise-peer-urls", &format!("http://{ip}:{peer}")])
                .args(["--initial-cluster", &initial, "--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", "confman-bench"])
                // Allow multi-MB values and a large database, as the benchmark needs.
                .args(["--max-request-bytes", "33554432", "--quota-backend-bytes", "8589934592"])
                .args(["--logger", "zap", "--log-level", "warn"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()?;
            c.children.push(child);
            c.endpoints.push(format!("http://{ip}:{client}"));
            c.data_dirs.push(dir);
        }
        c.wait_ready().await?;
        Ok(c)
    }

    async fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(mut client) = etcd_client::Client::connect(self.endpoints.clone(), None).await
                && client.put("bench-ready", "1", None).await.is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(HarnessError::Timeout("etcd cluster to accept writes".into()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Process ids of the members.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
