//! The `confman-operator run` binary against the in-process API stand-in (through a kubeconfig,
//! as in a cluster): it takes the leader Lease, serves /health, /readyz, /livez and /metrics,
//! reconciles a ConfmanCluster, releases the Lease and exits 0 on SIGTERM; with two replicas
//! only the Lease holder reconciles, and the other takes over when the holder shuts down. A
//! holder that loses the Lease, or cannot renew it, stops at once, before anyone else may lead
//! (issue 19, "two operators at once"); readiness follows the watches and the API's answers
//! (issue 19, "ready while blind").

use std::process::Stdio;
use std::time::{Duration, SystemTime};

use confman_tests::kube::api::{FakeApiServer, Fault, FaultAction, ObjectKey};
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
    start(kubeconfig, identity, port, true)
}

/// Starts one operator replica, its log in `{identity}.log` beside the kubeconfig.
fn start(
    kubeconfig: &std::path::Path,
    identity: &str,
    port: u16,
    leader_election: bool,
) -> Result<tokio::process::Child> {
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec!["run", "--listen", &listen];
    if leader_election {
        args.push("--leader-election");
    }
    Ok(tokio::process::Command::new(BIN)
        .args(args)
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

/// Status and body of `GET path` on the replica's listener, once it answers (bounded poll, as
/// for [`metrics`]).
async fn probe(port: u16, path: &str) -> Result<(u16, String)> {
    let http = confman_client::http_builder().build()?;
    for _ in 0..300 {
        if let Ok(r) = http.get(format!("http://127.0.0.1:{port}{path}")).send().await {
            let status = r.status().as_u16();
            return Ok((status, r.text().await?));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("no {path} on port {port}").into())
}

/// Polls `path` until `done` holds for its answer, checking `every` on each answer on the way
/// (bounded: probes are answered from state no event announces).
async fn probe_until(
    port: u16,
    path: &str,
    what: &str,
    every: impl Fn(u16, &str) -> bool,
    done: impl Fn(u16, &str) -> bool,
) -> Result<()> {
    let mut last = (0, String::new());
    for _ in 0..1200 {
        let (status, body) = probe(port, path).await?;
        if !every(status, &body) {
            return Err(format!("{path} answered {status} {body:?} while waiting for {what}").into());
        }
        if done(status, &body) {
            return Ok(());
        }
        last = (status, body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("{path} never showed {what}; last answer {} {:?}", last.0, last.1).into())
}

/// The exit status of a replica expected to stop by itself (bounded).
async fn exited(child: &mut tokio::process::Child) -> Result<std::process::ExitStatus> {
    Ok(tokio::time::timeout(Duration::from_secs(60), child.wait()).await??)
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
    probe_until(port, "/readyz", "ready", |_, _| true, |s, _| s == 200).await?;
    assert_eq!(probe(port, "/livez").await?.0, 200);
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
    // The standby serves nothing but metrics: it is Ready (as controller-runtime's standbys
    // are), so a rolling update can replace the holder.
    let (ready, why) = probe(ports[other], "/readyz").await?;
    assert_eq!(ready, 200, "standby readiness: {why}");
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

/// Waits until `identity` holds the Lease.
async fn lease_held_by(api: &FakeApiServer, identity: &str) -> Result<()> {
    let lease = lease_key();
    api.store
        .wait_for(&format!("the lease held by {identity}"), Duration::from_secs(60), |s| {
            (s.get(&lease)?["spec"]["holderIdentity"] == json!(identity)).then_some(())
        })
        .await?;
    Ok(())
}

fn log_of(kubeconfig: &std::path::Path, identity: &str) -> String {
    std::fs::read_to_string(kubeconfig.with_file_name(format!("{identity}.log"))).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_operators_at_once_a_lost_lease_cancels_the_reconcile_in_flight() -> Result<()> {
    let api = FakeApiServer::start().await?;
    let dir = tempfile::tempdir()?;
    let kubeconfig = kubeconfig(dir.path(), &api.url)?;
    // The StatefulSet write of the first reconcile stays in flight.
    api.store.set_faults(vec![Fault {
        method: Some("PATCH".into()),
        plural: Some("statefulsets".into()),
        lists_only: false,
        action: FaultAction::Hold,
    }]);
    let mut child = replica(&kubeconfig, "operator-a", free_port()?)?;
    lease_held_by(&api, "operator-a").await?;
    api.store.put(cmc_key(), new_cluster());
    let sts_path = sts_key().path();
    api.store
        .wait_for("the reconcile's StatefulSet write in flight", Duration::from_secs(60), |s| {
            s.requests().iter().any(|r| r.held && r.path == sts_path).then_some(())
        })
        .await?;

    // Another replica takes the Lease (as after an expiry this one missed). The holder must stop
    // without waiting for its reconcile: graceful shutdown would wait for the held write forever.
    let usurped = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "confman-operator", "namespace": "ops"},
        "spec": {"holderIdentity": "operator-b", "leaseDurationSeconds": 15}});
    api.store.apply(lease_key(), usurped, "operator-b", true).map_err(|f| format!("usurp: {f:?}"))?;
    let status = exited(&mut child).await?;
    assert!(!status.success(), "exit status {status:?}");
    let log = log_of(&kubeconfig, "operator-a");
    assert!(log.contains("held by operator-b"), "{log}");
    // It exited with its write still unanswered: nothing of that reconcile can follow.
    assert!(api.store.requests().iter().any(|r| r.held && r.path == sts_path));
    assert!(api.store.get(&cmc_key()).is_some_and(|c| c["status"].is_null()), "no status written");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_operators_at_once_failing_renewals_stop_the_leader_before_the_lease_expires() -> Result<()> {
    let api = FakeApiServer::start().await?;
    let dir = tempfile::tempdir()?;
    let kubeconfig = kubeconfig(dir.path(), &api.url)?;
    let mut child = replica(&kubeconfig, "operator-a", free_port()?)?;
    lease_held_by(&api, "operator-a").await?;
    let (cmc, sts) = (cmc_key(), sts_key());
    api.store.put(cmc.clone(), new_cluster());
    api.store
        .wait_for("children and status", Duration::from_secs(60), |s| {
            (s.get(&sts).is_some() && s.get(&cmc)?["status"]["phase"] == json!("Creating")).then_some(())
        })
        .await?;

    // Every renewal fails from now on; the API answers everything else. kube-lease-manager
    // alone would go on leading until the server answered again.
    api.store.set_faults(vec![Fault {
        method: Some("PATCH".into()),
        plural: Some("leases".into()),
        lists_only: false,
        action: FaultAction::Fail(503),
    }]);
    let status = exited(&mut child).await?;
    let stopped_at = SystemTime::now();
    assert!(!status.success(), "exit status {status:?}");
    let lease = api.store.get(&lease_key()).ok_or("no lease")?;
    let renewed: jiff::Timestamp = lease["spec"]["renewTime"].as_str().ok_or("no renewTime")?.parse()?;
    let seconds = lease["spec"]["leaseDurationSeconds"].as_u64().ok_or("no leaseDurationSeconds")?;
    let expires = SystemTime::from(renewed) + Duration::from_secs(seconds);
    assert!(
        stopped_at < expires,
        "the leader stopped {:?} after its lease expired",
        stopped_at.duration_since(expires).unwrap_or_default()
    );
    let log = log_of(&kubeconfig, "operator-a");
    assert!(log.contains("renew deadline"), "{log}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_while_blind_readyz_waits_for_the_initial_lists_and_an_answering_api() -> Result<()> {
    let api = FakeApiServer::start().await?;
    let dir = tempfile::tempdir()?;
    let kubeconfig = kubeconfig(dir.path(), &api.url)?;
    let hold_cluster_list = Fault {
        method: Some("GET".into()),
        plural: Some("confmanclusters".into()),
        lists_only: true,
        action: FaultAction::Hold,
    };
    api.store.set_faults(vec![hold_cluster_list]);
    let port = free_port()?;
    let mut child = start(&kubeconfig, "operator-a", port, false)?;

    // Not Ready until the ConfmanCluster watch has its initial list; alive all the while.
    probe_until(
        port,
        "/readyz",
        "the missing ConfmanCluster list as the reason",
        |s, _| s == 503,
        |_, body| body.contains("initial list of confmanclusters"),
    )
    .await?;
    assert_eq!(probe(port, "/livez").await?.0, 200);
    assert_eq!(probe(port, "/health").await?.0, 200, "/health still answers");
    api.store.set_faults(vec![]);
    probe_until(port, "/readyz", "ready once listed", |_, _| true, |s, _| s == 200).await?;

    // The API stops answering (watches drop, every call fails; 500 because kube's client
    // retries a 503 for minutes before its caller sees it): not Ready, with the error.
    api.store.set_faults(vec![Fault::all(FaultAction::Fail(500))]);
    let blind = probe_until(
        port,
        "/readyz",
        "failing API calls as the reason",
        |_, _| true,
        |s, body| s == 503 && body.contains("API calls failed"),
    )
    .await;
    if let Err(e) = blind {
        let requests: Vec<String> = api.store.requests().iter().map(|r| format!("{} {}", r.method, r.path)).collect();
        return Err(format!("{e}\nrequests: {requests:#?}\nlog: {}", log_of(&kubeconfig, "operator-a")).into());
    }
    assert_eq!(probe(port, "/livez").await?.0, 200, "a blind replica is alive: restarting it does not help");
    api.store.set_faults(vec![]);
    probe_until(port, "/readyz", "ready again", |_, _| true, |s, _| s == 200).await?;

    let status = terminate(&mut child).await?;
    assert!(status.success(), "exit status {status:?}");
    Ok(())
}
