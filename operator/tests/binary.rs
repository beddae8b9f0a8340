//! The `confman-operator run` binary against the in-process API stand-in (through a kubeconfig,
//! as in a cluster): it takes the leader Lease, serves /health and /metrics, reconciles a
//! ConfmanCluster, releases the Lease and exits 0 on SIGTERM.

use std::process::Stdio;
use std::time::Duration;

use confman_tests::kube::api::{FakeApiServer, ObjectKey};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_confman-operator");

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_takes_the_lease_reconciles_and_stops_cleanly() -> Result<()> {
    let api = FakeApiServer::start().await?;
    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\nusers:\n- name: u\n  user: {{}}\ncontexts:\n- name: c\n  context:\n    cluster: fake\n    user: u\n    namespace: ops\ncurrent-context: c\n",
            api.url
        ),
    )?;
    let port = free_port()?;
    let mut child = tokio::process::Command::new(BIN)
        .args(["run", "--leader-election", "--listen", &format!("127.0.0.1:{port}")])
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAME", "operator-a")
        .env("POD_NAMESPACE", "ops")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;

    // The Lease is created and held by this replica.
    let lease = ObjectKey {
        prefix: "/apis/coordination.k8s.io/v1".into(),
        namespace: "ops".into(),
        plural: "leases".into(),
        name: "confman-operator".into(),
    };
    api.store
        .wait_for("the lease held by operator-a", Duration::from_secs(60), |s| {
            (s.get(&lease)?["spec"]["holderIdentity"] == json!("operator-a")).then_some(())
        })
        .await?;

    // It reconciles: a new cluster gets its children and a status.
    let cmc = ObjectKey {
        prefix: "/apis/confman.io/v1alpha1".into(),
        namespace: "apps".into(),
        plural: "confmanclusters".into(),
        name: "config".into(),
    };
    api.store.put(
        cmc.clone(),
        json!({"apiVersion": "confman.io/v1alpha1", "kind": "ConfmanCluster", "metadata": {"name": "config", "namespace": "apps"},
            "spec": {"replicas": 3, "image": "confman-node:1", "storage": {"size": "1Gi"}}}),
    );
    let sts = ObjectKey {
        prefix: "/apis/apps/v1".into(),
        namespace: "apps".into(),
        plural: "statefulsets".into(),
        name: "config".into(),
    };
    api.store
        .wait_for("children and status", Duration::from_secs(60), |s| {
            let phase = s.get(&cmc)?["status"]["phase"].clone();
            (s.get(&sts).is_some() && phase == json!("Creating")).then_some(())
        })
        .await?;

    // /health and /metrics answer; this replica reports itself as leader.
    let http = confman_client::http_builder().build()?;
    let health = http.get(format!("http://127.0.0.1:{port}/health")).send().await?;
    assert!(health.status().is_success());
    let metrics = http.get(format!("http://127.0.0.1:{port}/metrics")).send().await?.text().await?;
    assert!(metrics.contains("confman_operator_leader 1\n"), "{metrics}");
    // (The reconcile counter is bumped after the status write the wait above saw, so it is not
    // asserted here: the children and status in the store are the proof of reconciliation.)
    assert!(metrics.contains("# TYPE confman_operator_reconciles_total counter\n"), "{metrics}");

    // SIGTERM: exits 0 and releases the Lease for the next replica.
    let pid = child.id().ok_or("operator exited early")?;
    std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status()?;
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait()).await??;
    assert!(status.success(), "exit status {status:?}");
    let holder = api.store.get(&lease).map(|l| l["spec"]["holderIdentity"].clone()).unwrap_or_default();
    assert_ne!(holder, json!("operator-a"), "the lease is released on shutdown");
    Ok(())
}
