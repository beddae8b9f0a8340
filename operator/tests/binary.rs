//! The `confman-operator run` binary against the in-process API stand-in (through a kubeconfig,
//! as in a cluster): it takes the leader Lease, serves /health and /metrics, reconciles a
//! ConfmanCluster, releases the Lease and exits 0 on SIGTERM; with two replicas only the Lease
//! holder reconciles, and the other takes over when the holder shuts down.

use std::process::Stdio;
use std::time::Duration;

use confman_tests::kube::api::{FakeApiServer, ObjectKey};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_confman-operator");

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A kubeconfig pointing at the stand-in, default namespace `ops`.
fn kubeconfig(dir: &std::path::Path, server: &str) -> Result<std::path::PathBuf> {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {server}\nusers:\n- name: u\n  user: {{}}\ncontexts:\n- name: c\n  context:\n    cluster: fake\n    user: u\n    namespace: ops\ncurrent-context: c\n"
        ),
    )?;
    Ok(path)
}

/// Starts one operator replica with leader election (`identity` is its pod name).
fn replica(kubeconfig: &std::path::Path, identity: &str, port: u16) -> Result<tokio::process::Child> {
    Ok(tokio::process::Command::new(BIN)
        .args(["run", "--leader-election", "--listen", &format!("127.0.0.1:{port}")])
        .env("KUBECONFIG", kubeconfig)
        .env("POD_NAME", identity)
        .env("POD_NAMESPACE", "ops")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(kubeconfig.with_file_name(format!("{identity}.log")))?)
        .kill_on_drop(true)
        .spawn()?)
}

fn lease_key() -> ObjectKey {
    ObjectKey {
        prefix: "/apis/coordination.k8s.io/v1".into(),
        namespace: "ops".into(),
        plural: "leases".into(),
        name: "confman-operator".into(),
    }
}

fn cmc_key() -> ObjectKey {
    ObjectKey {
        prefix: "/apis/confman.io/v1alpha1".into(),
        namespace: "apps".into(),
        plural: "confmanclusters".into(),
        name: "config".into(),
    }
}

fn sts_key() -> ObjectKey {
    ObjectKey {
        prefix: "/apis/apps/v1".into(),
        namespace: "apps".into(),
        plural: "statefulsets".into(),
        name: "config".into(),
    }
}

fn new_cluster() -> serde_json::Value {
    json!({"apiVersion": "confman.io/v1alpha1", "kind": "ConfmanCluster", "metadata": {"name": "config", "namespace": "apps"},
        "spec": {"replicas": 3, "image": "confman-node:1", "storage": {"size": "1Gi"}}})
}

/// `/metrics` of the replica on `port`, once it answers (bounded poll: no event marks the
/// listener being up).
async fn metrics(port: u16) -> Result<String> {
    let http = confman_client::http_builder().build()?;
    for _ in 0..300 {
        if let Ok(r) = http.get(format!("http://127.0.0.1:{port}/metrics")).send().await {
            return Ok(r.text().await?);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("no /metrics on port {port}").into())
}

/// SIGTERM, then the exit status (bounded).
async fn terminate(child: &mut tokio::process::Child) -> Result<std::process::ExitStatus> {
    let pid = child.id().ok_or("operator exited early")?;
    std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status()?;
    Ok(tokio::time::timeout(Duration::from_secs(60), child.wait()).await??)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_takes_the_lease_reconciles_and_stops_cleanly() -> Result<()> {
    let api = FakeApiServer::start().await?;
    let dir = tempfile::tempdir()?;
    let kubeconfig = kubeconfig(dir.path(), &api.url)?;
    let port = free_port()?;
    let mut child = replica(&kubeconfig, "operator-a", port)?;

    // The Lease is created and held by this replica.
    let lease = lease_key();
    api.store
        .wait_for("the lease held by operator-a", Duration::from_secs(60), |s| {
            (s.get(&lease)?["spec"]["holderIdentity"] == json!("operator-a")).then_some(())
        })
        .await?;

    // It reconciles: a new cluster gets its children and a status.
    let (cmc, sts) = (cmc_key(), sts_key());
    api.store.put(cmc.clone(), new_cluster());
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
    let metrics = metrics(port).await?;
    assert!(metrics.contains("confman_operator_leader 1\n"), "{metrics}");
    // (The reconcile counter is bumped after the status write the wait above saw, so it is not
    // asserted here: the children and status in the store are the proof of reconciliation.)
    assert!(metrics.contains("# TYPE confman_operator_reconciles_total counter\n"), "{metrics}");

    // SIGTERM: exits 0 and releases the Lease for the next replica.
    let status = terminate(&mut child).await?;
    assert!(status.success(), "exit status {status:?}");
    let holder = api.store.get(&lease).map(|l| l["spec"]["holderIdentity"].clone()).unwrap_or_default();
    assert_ne!(holder, json!("operator-a"), "the lease is released on shutdown");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_replicas_only_the_lease_holder_reconciles_and_the_other_takes_over() -> Result<()> {
    let api = FakeApiServer::start().await?;
    let dir = tempfile::tempdir()?;
    let kubeconfig = kubeconfig(dir.path(), &api.url)?;
    let ports = [free_port()?, free_port()?];
    let mut replicas = [replica(&kubeconfig, "operator-a", ports[0])?, replica(&kubeconfig, "operator-b", ports[1])?];

    // Both contend; the API refuses the second apply of the holder field (field-manager conflict).
    let lease = lease_key();
    let holder = api
        .store
        .wait_for("a lease holder", Duration::from_secs(60), |s| {
            s.get(&lease)?["spec"]["holderIdentity"].as_str().map(str::to_string)
        })
        .await?;
    let (lead, other) = if holder == "operator-a" { (0, 1) } else { (1, 0) };
    let (cmc, sts) = (cmc_key(), sts_key());
    api.store.put(cmc.clone(), new_cluster());
    api.store
        .wait_for("children and status", Duration::from_secs(60), |s| {
            (s.get(&sts).is_some() && s.get(&cmc)?["status"]["observedGeneration"] == json!(1)).then_some(())
        })
        .await?;
    // Exactly one leader; the other replica reconciled nothing.
    let (m_lead, m_other) = (metrics(ports[lead]).await?, metrics(ports[other]).await?);
    assert!(m_lead.contains("confman_operator_leader 1\n"), "{m_lead}");
    assert!(m_other.contains("confman_operator_leader 0\n"), "{m_other}");
    assert!(m_other.contains("confman_operator_reconciles_total 0\n"), "{m_other}");
    assert_eq!(api.store.get(&lease).map(|l| l["spec"]["holderIdentity"].clone()), Some(json!(holder)));

    // The holder shuts down and releases the Lease: the other replica takes it and reconciles
    // the next change.
    let status = terminate(&mut replicas[lead]).await?;
    assert!(status.success(), "exit status {status:?}");
    let next = if lead == 0 { "operator-b" } else { "operator-a" };
    api.store
        .wait_for("the other replica holds the lease", Duration::from_secs(120), |s| {
            (s.get(&lease)?["spec"]["holderIdentity"] == json!(next)).then_some(())
        })
        .await?;
    api.store.patch(&cmc, &json!({"spec": {"paused": true}}), false);
    api.store
        .wait_for("the new leader reconciled the edit", Duration::from_secs(60), |s| {
            (s.get(&cmc)?["status"]["phase"] == json!("Paused")).then_some(())
        })
        .await?;
    assert!(metrics(ports[other]).await?.contains("confman_operator_leader 1\n"));
    let status = terminate(&mut replicas[other]).await?;
    assert!(status.success(), "exit status {status:?}");
    Ok(())
}
