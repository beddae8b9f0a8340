//! End to end: the real operator controller (watches, reconcile loop, membership state machine)
//! against the in-process Kubernetes stand-in, with a pod simulator running one real
//! `confman-node` process per StatefulSet pod. Assertions are on store state, operator status,
//! Events, simulator events and data read back through confman-client — never on elapsed time.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use confman_client::Client;
use confman_operator::controller::run_controller;
use confman_operator::metrics::Metrics;
use confman_operator::reconcile::{Context, FIELD_MANAGER};
use confman_tests::kube::api::{FakeApiServer, ObjectKey, Store};
use confman_tests::kube::sim::{PodSim, SimEvent};
use kube::runtime::events::Reporter;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_confman-node");
const NS: &str = "e2e";
/// Generous bound for a step that involves starting processes and Raft changes.
const STEP: Duration = Duration::from_secs(120);

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn key(prefix: &str, plural: &str, name: &str) -> ObjectKey {
    ObjectKey { prefix: prefix.into(), namespace: NS.into(), plural: plural.into(), name: name.into() }
}

fn cmc_key() -> ObjectKey {
    key("/apis/confman.io/v1alpha1", "confmanclusters", "config")
}

fn sts_key() -> ObjectKey {
    key("/apis/apps/v1", "statefulsets", "config")
}

struct Env {
    api: FakeApiServer,
    sim: Arc<PodSim>,
    metrics: Arc<Metrics>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The test CA (PEM) when the cluster serves TLS.
    ca: Option<String>,
    /// Deleted on drop unless `CONFMAN_TEST_KEEP` is set (pod logs and volumes stay for a look).
    _root: Option<tempfile::TempDir>,
}

impl Drop for Env {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Env {
    async fn start(block: u8) -> Result<Env> {
        let tmp = tempfile::tempdir()?;
        let root_path = tmp.path().to_path_buf();
        let root = if std::env::var_os("CONFMAN_TEST_KEEP").is_some() {
            eprintln!("e2e files kept in {}", tmp.keep().display());
            None
        } else {
            Some(tmp)
        };
        let api = FakeApiServer::start().await?;
        let sim = PodSim::new(api.store.clone(), Path::new(BIN), &root_path, block);
        let metrics = Arc::new(Metrics::default());
        let client = api.client()?;
        let reporter = Reporter { controller: FIELD_MANAGER.into(), instance: Some("e2e".into()) };
        let mut ctx = Context::new(client.clone(), reporter, metrics.clone());
        ctx.resolve = sim.resolve(NS, "config", "config-peers");
        ctx.converging = Duration::from_millis(500);
        let ctx = Arc::new(ctx);
        let controller = tokio::spawn(run_controller(client, Some(NS), ctx, std::future::pending()));
        let tasks = vec![sim.start(), controller];
        Ok(Env { api, sim, metrics, tasks, ca: None, _root: root })
    }

    fn store(&self) -> &Store {
        &self.api.store
    }

    fn create(&self, replicas: u32) {
        self.create_with(replicas, json!({"size": "1Gi"}));
    }

    fn create_with(&self, replicas: u32, storage: Value) {
        let cmc = json!({"apiVersion": "confman.io/v1alpha1", "kind": "ConfmanCluster",
            "metadata": {"name": "config", "namespace": NS},
            "spec": {"replicas": replicas, "image": "confman-node:1", "payloadClass": "small", "storage": storage}});
        self.store().put(cmc_key(), cmc);
    }

    fn patch_spec(&self, patch: Value) {
        self.store().patch(&cmc_key(), &json!({ "spec": patch }), false);
    }

    fn status(&self) -> Value {
        self.store().get(&cmc_key()).map(|c| c["status"].clone()).unwrap_or(Value::Null)
    }

    /// Waits until the cluster is Running with exactly `ids` as voters and a leader.
    async fn wait_members(&self, ids: &[u64]) -> Result<Value> {
        let want: Vec<u64> = ids.to_vec();
        let got = self
            .store()
            .wait_for(&format!("voters {want:?}, Running"), STEP, |s| {
                let st = s.get(&cmc_key())?["status"].clone();
                let members = st["members"].as_array()?;
                let mut voters: Vec<u64> =
                    members.iter().filter(|m| m["role"] == json!("voter")).filter_map(|m| m["id"].as_u64()).collect();
                voters.sort_unstable();
                let ok = voters == want
                    && members.len() == want.len()
                    && members.iter().all(|m| m["healthy"] == json!(true))
                    && st["phase"] == json!("Running")
                    && st["leader"].is_string()
                    && condition(&st, "Progressing") == Some("False");
                ok.then_some(st)
            })
            .await
            .map_err(|e| self.explain(e))?;
        Ok(got)
    }

    /// A failure message with what the operator, the StatefulSet and the simulator report.
    fn explain(&self, e: String) -> String {
        let sts = self.store().get(&sts_key()).map(|s| s["status"].clone()).unwrap_or(Value::Null);
        let logs: Vec<String> = (0..5)
            .map(|o| format!("config-{o}"))
            .map(|p| {
                let log = self.sim.pod_log(&p);
                let tail: Vec<&str> = log.lines().rev().take(4).collect();
                format!("{p}: {}", tail.into_iter().rev().collect::<Vec<_>>().join(" | "))
            })
            .collect();
        format!(
            "{e}\nstatus: {}\nstatefulset: {sts}\nsim: {:?}\nlogs:\n{}",
            self.status(),
            self.sim.events().iter().rev().take(20).collect::<Vec<_>>(),
            logs.join("\n")
        )
    }

    fn token(&self) -> Result<String> {
        let s = self.store().get(&key("/api/v1", "secrets", "config-token")).ok_or("no token Secret")?;
        let b64 = s["data"]["token"].as_str().ok_or("no token")?;
        Ok(String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64)?)?)
    }

    fn url(&self, pod: &str) -> String {
        let scheme = if self.ca.is_some() { "https" } else { "http" };
        format!("{scheme}://{pod}.config-peers.{NS}.svc:8080")
    }

    /// A client over pods `0..n` with the cluster token.
    fn client(&self, n: u32) -> Result<Client> {
        let mut b = Client::builder((0..n).map(|o| self.url(&format!("config-{o}"))), self.token()?)
            .retry_for(Duration::from_secs(60));
        if let Some(ca) = &self.ca {
            b = b.trust_ca_pem(ca.clone());
        }
        for (h, ip) in self.sim.resolve(NS, "config", "config-peers") {
            b = b.resolve(h, ip);
        }
        Ok(b.build()?)
    }

    fn event_reasons(&self) -> Vec<String> {
        self.store()
            .list("/apis/events.k8s.io/v1", "events", Some(NS), None)
            .iter()
            .filter_map(|e| e["reason"].as_str().map(str::to_string))
            .collect()
    }
}

fn condition<'a>(status: &'a Value, t: &str) -> Option<&'a str> {
    status["conditions"].as_array()?.iter().find(|c| c["type"] == json!(t))?["status"].as_str()
}

fn ids_of(status: &Value) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = status["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| Some((m["pod"].as_str()?.to_string(), m["id"].as_u64()?)))
        .collect();
    v.sort();
    v
}

/// All `n` pods report the same state digest at the same applied index.
async fn wait_digests_equal(env: &Env, client: &Client, n: u32) -> Result<Value> {
    for _ in 0..600 {
        let mut digests = Vec::new();
        for o in 0..n {
            digests.push(client.digest_of(&env.url(&format!("config-{o}"))).await?);
        }
        if digests.windows(2).all(|w| w[0] == w[1]) {
            return Ok(digests[0].clone());
        }
        // Followers apply asynchronously: re-check once they had a moment (bounded loop).
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err("digests never converged".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn create_scale_up_scale_down_and_pod_loss() -> Result<()> {
    let env = Env::start(101).await?;

    // 1. A 3-replica cluster: 3 voters, a leader, Available; writes and linearizable reads work.
    env.create(3);
    let st = env.wait_members(&[1, 2, 3]).await?;
    assert_eq!(condition(&st, "Available"), Some("True"));
    let client = env.client(3)?;
    client.put_namespace("app", "e2e", "tests").await?;
    let mut acked = Vec::new();
    for i in 0..20 {
        client.put("app", &format!("k{i}"), format!("v{i}").into_bytes(), None).await?;
        acked.push(i);
    }
    assert_eq!(client.get("app", "k7").await?.map(|e| e.value.to_vec()), Some(b"v7".to_vec()));

    // 2. Scale 3 → 5: every member a voter; the new members' digests equal the leader's.
    env.patch_spec(json!({"replicas": 5}));
    let st = env.wait_members(&[1, 2, 3, 4, 5]).await?;
    assert_eq!(ids_of(&st)[3..], [("config-3".to_string(), 4), ("config-4".to_string(), 5)]);
    let client5 = env.client(5)?;
    for i in 20..30 {
        client5.put("app", &format!("k{i}"), format!("v{i}").into_bytes(), None).await?;
        acked.push(i);
    }
    wait_digests_equal(&env, &client5, 5).await?;
    let reasons = env.event_reasons();
    for r in ["MembersAllocated", "ScalingUp"] {
        assert!(reasons.iter().any(|x| x == r), "no {r} event in {reasons:?}");
    }

    // 3. Scale 5 → 3 while writing: the removed ordinals leave the group, their volumes go
    //    (retention Delete), nothing acknowledged is lost. The highest ordinal leads when the
    //    scale-down starts, so the operator must move leadership off it first.
    assert_eq!(client5.transfer_leader(Some(5)).await?, Some(5));
    env.patch_spec(json!({"replicas": 3}));
    let writer = {
        let c = env.client(3)?;
        tokio::spawn(async move {
            let mut ok = Vec::new();
            for i in 30..60 {
                if c.put("app", &format!("k{i}"), format!("v{i}").into_bytes(), None).await.is_ok() {
                    ok.push(i);
                }
            }
            ok
        })
    };
    let st = env.wait_members(&[1, 2, 3]).await?;
    acked.extend(writer.await?);
    assert!(env.event_reasons().iter().any(|r| r == "MovingLeader"), "leadership moved off config-4 first");
    assert!(st["leader"].as_str().is_some_and(|l| ["config-0", "config-1", "config-2"].contains(&l)));
    assert_eq!(st["readyReplicas"], json!(3));
    let sts = env.store().get(&sts_key()).ok_or("no statefulset")?;
    assert_eq!(sts["spec"]["replicas"], json!(3));
    env.store()
        .wait_for("volumes of config-3 and config-4 deleted", STEP, |_| {
            let ev = env.sim.events();
            (ev.contains(&SimEvent::VolumeDeleted("data-config-3".into()))
                && ev.contains(&SimEvent::VolumeDeleted("data-config-4".into())))
            .then_some(())
        })
        .await?;
    assert!(!env.sim.volume("config-4").exists());
    for i in &acked {
        let got = client.get("app", &format!("k{i}")).await?;
        assert_eq!(got.map(|e| e.value.to_vec()), Some(format!("v{i}").into_bytes()), "acknowledged write k{i} lost");
    }

    // 4. A pod crashes: it is restarted and rejoins as the same member; membership never shrinks.
    let before = ids_of(&env.status());
    env.sim.crash("config-1");
    let mut smallest = usize::MAX;
    env.store()
        .wait_for("config-1 restarted and Ready", STEP, |s| {
            let st = s.get(&cmc_key())?["status"].clone();
            smallest = smallest.min(st["members"].as_array().map_or(0, Vec::len));
            let restarted = env.sim.events().contains(&SimEvent::Restarted("config-1".into()));
            let healthy = st["members"].as_array()?.iter().all(|m| m["healthy"] == json!(true));
            (restarted && healthy && st["phase"] == json!("Running")).then_some(())
        })
        .await?;
    assert_eq!(ids_of(&env.status()), before, "same members, same ids");
    assert!(smallest >= 3, "membership shrank to {smallest} while a pod was down");
    // Deleting the pod object (kubectl delete pod) recreates it under the same id too.
    env.store().delete(&key("/api/v1", "pods", "config-2"));
    env.store()
        .wait_for("config-2 recreated", STEP, |_| {
            env.sim.events().contains(&SimEvent::Deleted("config-2".into())).then_some(())
        })
        .await?;
    env.wait_members(&[1, 2, 3]).await?;
    assert_eq!(ids_of(&env.status()), before);

    // An ordinal that comes back after a scale-down joins under a fresh id (never reused).
    env.patch_spec(json!({"replicas": 5}));
    let st = env.wait_members(&[1, 2, 3, 6, 7]).await?;
    assert_eq!(ids_of(&st)[3..], [("config-3".to_string(), 6), ("config-4".to_string(), 7)]);
    assert!(env.metrics.render().contains("confman_operator_reconciles_total"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_image_change_replaces_followers_first_and_the_leader_last() -> Result<()> {
    let env = Env::start(102).await?;
    env.create(3);
    let st = env.wait_members(&[1, 2, 3]).await?;
    let leader = st["leader"].as_str().ok_or("no leader")?.to_string();
    let client = env.client(3)?;
    client.put_namespace("app", "e2e", "tests").await?;

    let stop = Arc::new(tokio::sync::Notify::new());
    let writer = {
        let (c, stop) = (env.client(3)?, stop.clone());
        tokio::spawn(async move {
            let (mut ok, mut failed) = (Vec::new(), 0u32);
            let mut i = 0u32;
            loop {
                let k = format!("w{i}");
                tokio::select! {
                    _ = stop.notified() => return (ok, failed),
                    r = c.put("app", &k, i.to_string().into_bytes(), None) => {
                        if r.is_ok() { ok.push(i) } else { failed += 1 }
                    }
                }
                i += 1;
            }
        })
    };

    let before = env.sim.events().len();
    let old_revision = env.store().get(&sts_key()).map(|s| s["status"]["updateRevision"].clone()).unwrap_or_default();
    env.patch_spec(json!({"image": "confman-node:2"}));
    env.store()
        .wait_for("every pod replaced and the cluster Running", STEP, |s| {
            let sts = s.get(&sts_key())?;
            let cmc = s.get(&cmc_key())?;
            let st = &cmc["status"];
            let done = sts["status"]["updateRevision"] != old_revision
                && sts["status"]["currentRevision"] == sts["status"]["updateRevision"]
                && sts["status"]["updatedReplicas"] == json!(3)
                && sts["status"]["readyReplicas"] == json!(3)
                && st["observedGeneration"] == cmc["metadata"]["generation"]
                && st["phase"] == json!("Running")
                && condition(st, "Progressing") == Some("False");
            done.then_some(())
        })
        .await?;
    stop.notify_one();
    let (acked, failed) = writer.await?;

    let replaced: Vec<String> = env.sim.events()[before..]
        .iter()
        .filter_map(|e| if let SimEvent::Deleted(p) = e { Some(p.clone()) } else { None })
        .collect();
    assert_eq!(replaced.len(), 3, "each pod replaced once: {replaced:?}");
    // One at a time: every replaced pod is back (created again) before the next one goes.
    let steps: Vec<(bool, String)> = env.sim.events()[before..]
        .iter()
        .filter_map(|e| match e {
            SimEvent::Deleted(p) => Some((false, p.clone())),
            SimEvent::Created(p, _) => Some((true, p.clone())),
            _ => None,
        })
        .collect();
    for pair in steps.chunks(2) {
        assert!(matches!(pair, [(false, a), (true, b)] if a == b), "pods were not replaced one at a time: {steps:?}");
    }
    assert_eq!(replaced.last(), Some(&leader), "the leader goes last: {replaced:?}");
    assert!(env.event_reasons().iter().any(|r| r == "MovingLeader"), "leadership moved before the leader's turn");
    assert!(!acked.is_empty());
    for i in &acked {
        assert!(client.get("app", &format!("w{i}")).await?.is_some(), "acknowledged write w{i} lost");
    }
    // The client retries 503s; a failure here would mean an outage longer than its 60 s budget.
    assert_eq!(failed, 0, "writes failed during the upgrade");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_invalid_spec_and_pausing_change_nothing() -> Result<()> {
    let env = Env::start(103).await?;
    env.create(3);
    env.wait_members(&[1, 2, 3]).await?;
    let sts_before = env.store().get(&sts_key()).ok_or("no statefulset")?;
    let cfg_key = key("/api/v1", "configmaps", "config-config");
    let cfg_before = env.store().get(&cfg_key).ok_or("no config")?;

    // 6. An invalid change: InvalidSpec names the rule; StatefulSet and config stay as they were.
    env.patch_spec(json!({"tuning": {"heartbeatMs": 5000}, "replicas": 5}));
    let st = env
        .store()
        .wait_for("InvalidSpec", STEP, |s| {
            let st = s.get(&cmc_key())?["status"].clone();
            (condition(&st, "InvalidSpec") == Some("True")).then_some(st)
        })
        .await?;
    let msg = st["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == json!("InvalidSpec"))
        .and_then(|c| c["message"].as_str())
        .unwrap_or_default()
        .to_string();
    assert!(msg.contains("heartbeat-below-election-min"), "{msg}");
    assert_eq!(env.store().get(&sts_key()).map(|s| s["spec"].clone()), Some(sts_before["spec"].clone()));
    assert_eq!(env.store().get(&cfg_key).map(|c| c["data"].clone()), Some(cfg_before["data"].clone()));
    // Fixing it resumes: the scale-up to 5 proceeds.
    env.patch_spec(json!({"tuning": null}));
    env.wait_members(&[1, 2, 3, 4, 5]).await?;

    // 7. Paused: a scale-down is not acted on while paused; resuming carries it out.
    env.patch_spec(json!({"paused": true, "replicas": 3}));
    env.store()
        .wait_for("phase Paused", STEP, |s| (s.get(&cmc_key())?["status"]["phase"] == json!("Paused")).then_some(()))
        .await?;
    // Touch the cluster twice; each edit triggers a reconcile, which (paused) only rewrites the
    // status: wait for that status write, visible as a newer resourceVersion than the edit's.
    let rv = |v: &Value| v["metadata"]["resourceVersion"].as_str().and_then(|r| r.parse::<u64>().ok()).unwrap_or(0);
    for n in 0..2 {
        let touched = env
            .store()
            .patch(&cmc_key(), &json!({"metadata": {"annotations": {"touch": n.to_string()}}}), false)
            .ok_or("cluster gone")?;
        let after = rv(&touched);
        env.store()
            .wait_for("a paused reconcile after the edit", STEP, |s| {
                let c = s.get(&cmc_key())?;
                (rv(&c) > after && c["status"]["phase"] == json!("Paused")).then_some(())
            })
            .await?;
    }
    assert_eq!(env.store().get(&sts_key()).map(|s| s["spec"]["replicas"].clone()), Some(json!(5)));
    assert_eq!(ids_of(&env.status()).len(), 5, "no membership change while paused");
    env.patch_spec(json!({"paused": false}));
    env.wait_members(&[1, 2, 3]).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retained_volume_never_rejoins_under_a_new_id() -> Result<()> {
    let env = Env::start(104).await?;
    env.create_with(3, json!({"size": "1Gi", "retainOnScaleDown": true}));
    env.wait_members(&[1, 2, 3]).await?;
    env.patch_spec(json!({"replicas": 5}));
    env.wait_members(&[1, 2, 3, 4, 5]).await?;
    env.patch_spec(json!({"replicas": 3}));
    env.wait_members(&[1, 2, 3]).await?;
    // Retain: the claims and their data stay after the scale-down.
    let pvc = key("/api/v1", "persistentvolumeclaims", "data-config-4");
    assert!(env.store().get(&pvc).is_some(), "claim retained");
    assert!(env.sim.volume("config-4").join("node-id").exists(), "data retained");
    let old_id = std::fs::read_to_string(env.sim.volume("config-4").join("node-id"))?;
    assert_eq!(old_id.trim(), "5");

    // Scaling up again: the operator deletes the stale claims first, so ordinals 3 and 4 join
    // with fresh volumes under new ids instead of rejoining with old data.
    env.patch_spec(json!({"replicas": 5}));
    let st = env.wait_members(&[1, 2, 3, 6, 7]).await?;
    assert_eq!(ids_of(&st)[3..], [("config-3".to_string(), 6), ("config-4".to_string(), 7)]);
    assert!(env.event_reasons().iter().any(|r| r == "StaleVolumeDeleted"), "{:?}", env.event_reasons());
    let new_id = std::fs::read_to_string(env.sim.volume("config-4").join("node-id"))?;
    assert_eq!(new_id.trim(), "7", "config-4 runs on a fresh volume");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_volume_is_replaced_under_a_fresh_id_and_no_write_is_lost() -> Result<()> {
    let env = Env::start(105).await?;
    env.create(3);
    env.wait_members(&[1, 2, 3]).await?;
    // Every member reported itself a member once: the ledger admits their ids.
    let ledger = key("/api/v1", "configmaps", "config-members");
    env.store()
        .wait_for("ids 1-3 admitted in the ledger", STEP, |s| {
            s.get(&ledger)?["data"]["members.toml"].as_str()?.contains("admitted = [1, 2, 3]").then_some(())
        })
        .await
        .map_err(|e| env.explain(e))?;
    let client = env.client(3)?;
    client.put_namespace("app", "lost volume test", "e2e").await?;
    for i in 0..20 {
        client.put("app", &format!("k{i}"), format!("v{i}").into_bytes(), None).await?;
    }

    // config-0's disk is replaced while its process is down: same pod, same claim, no data.
    // (Ordinal 0 is the operator's first endpoint: its 503s must send calls to the others.)
    env.sim.lose_volume("config-0");
    // Its node refuses to run as node 1 on an empty volume; the operator removes node 1 from
    // the group and restarts the ordinal under a fresh id, which joins and is promoted.
    let st = env.wait_members(&[2, 3, 4]).await?;
    assert_eq!(ids_of(&st), [("config-0".to_string(), 4), ("config-1".to_string(), 2), ("config-2".to_string(), 3)]);
    assert!(env.sim.events().contains(&SimEvent::VolumeLost("config-0".into())));
    let log = env.sim.pod_log("config-0");
    assert!(log.contains("node 1 was a member of the cluster but data-dir"), "{log}");
    let reasons = env.event_reasons();
    assert!(reasons.iter().any(|r| r == "MemberLost"), "{reasons:?}");
    assert!(reasons.iter().any(|r| r == "ReplacingLostMember"), "{reasons:?}");
    let id = std::fs::read_to_string(env.sim.volume("config-0").join("node-id"))?;
    assert_eq!(id.trim(), "4", "config-0 runs on its (emptied) volume as node 4");

    // Nothing acknowledged was lost, and the new member holds the same state as the others.
    for i in 0..20 {
        let got = client.get("app", &format!("k{i}")).await?;
        assert_eq!(got.map(|e| e.value.to_vec()), Some(format!("v{i}").into_bytes()), "k{i}");
    }
    wait_digests_equal(&env, &client, 3).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tls_cluster_bootstraps_scales_and_serves_only_https() -> Result<()> {
    let mut env = Env::start(106).await?;
    // A cert-manager-like Secret: certificate for the members' DNS names, key, and CA.
    let dir = tempfile::tempdir()?;
    let members_dns = format!("*.config-peers.{NS}.svc");
    let certs = confman_tests::certs::generate(dir.path(), &[&members_dns, &format!("config.{NS}.svc")])?;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    env.store().put(
        key("/api/v1", "secrets", "config-tls"),
        json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": "config-tls", "namespace": NS},
            "data": {"tls.crt": b64(&certs.cert_pem), "tls.key": b64(&certs.key_pem), "ca.crt": b64(&certs.ca_pem)}}),
    );
    env.ca = Some(certs.ca_pem.clone());
    let cmc = json!({"apiVersion": "confman.io/v1alpha1", "kind": "ConfmanCluster",
        "metadata": {"name": "config", "namespace": NS},
        "spec": {"replicas": 3, "image": "confman-node:1", "payloadClass": "small", "storage": {"size": "1Gi"},
                 "tls": {"clientSecret": "config-tls"}}});
    env.store().put(cmc_key(), cmc);

    // Bootstrap over TLS: the operator's admin calls, Raft RPC and readiness all use https.
    env.wait_members(&[1, 2, 3]).await?;
    let client = env.client(3)?;
    client.put_namespace("app", "tls e2e", "e2e").await?;
    for i in 0..10 {
        client.put("app", &format!("k{i}"), format!("v{i}").into_bytes(), None).await?;
    }
    let group = client.cluster().await?;
    assert!(
        group.members.iter().all(|m| m.address.starts_with("https://")),
        "members advertise https: {:?}",
        group.members
    );
    // A client without the CA gets nowhere.
    let untrusting = Client::builder([env.url("config-0")], env.token()?)
        .retry_for(Duration::ZERO)
        .resolve(format!("config-0.config-peers.{NS}.svc"), env.sim.ip(1, 0))
        .build()?;
    assert!(untrusting.get("app", "k0").await.is_err(), "a client that does not trust the CA was answered");

    // Scale-up over TLS: learners catch up from https peers and are promoted.
    env.patch_spec(json!({"replicas": 5}));
    env.wait_members(&[1, 2, 3, 4, 5]).await?;
    let client5 = env.client(5)?;
    wait_digests_equal(&env, &client5, 5).await?;
    assert_eq!(client5.get("app", "k9").await?.map(|e| e.value.to_vec()), Some(b"v9".to_vec()));

    // CA rotation, step one: the Secret's ca.crt becomes a bundle of the old and a new CA. The
    // nodes read it at start, so the operator rolls them (one at a time) to trust both.
    let next_ca = confman_tests::certs::TestCa::new()?;
    let bundle = format!("{}{}", certs.ca_pem, next_ca.pem);
    let secret = key("/api/v1", "secrets", "config-tls");
    env.store().patch(&secret, &json!({"data": {"ca.crt": b64(&bundle)}}), false);
    let before = env.sim.events().len();
    let old_revision = env.store().get(&sts_key()).map(|s| s["status"]["updateRevision"].clone()).unwrap_or_default();
    // The operator does not watch Secrets (no list/watch RBAC on them): it sees the change on its
    // next reconcile, which an edit of the cluster object brings forward (like `kubectl annotate`).
    env.store().patch(&cmc_key(), &json!({"metadata": {"annotations": {"rotate": "1"}}}), false);
    env.store()
        .wait_for("every pod restarted trusting the bundle", STEP, |s| {
            let sts = s.get(&sts_key())?;
            let st = s.get(&cmc_key())?["status"].clone();
            let done = sts["status"]["updateRevision"] != old_revision
                && sts["status"]["currentRevision"] == sts["status"]["updateRevision"]
                && sts["status"]["readyReplicas"] == json!(5)
                && st["phase"] == json!("Running")
                && condition(&st, "Progressing") == Some("False");
            done.then_some(())
        })
        .await
        .map_err(|e| env.explain(e))?;
    let replaced = env.sim.events()[before..].iter().filter(|e| matches!(e, SimEvent::Deleted(_))).count();
    assert_eq!(replaced, 5, "each member restarted once");
    assert!(env.event_reasons().iter().any(|r| r == "TrustChanged"), "{:?}", env.event_reasons());
    let sts = env.store().get(&sts_key()).ok_or("no StatefulSet")?;
    assert!(sts["spec"]["template"]["metadata"]["annotations"]["confman.io/ca-hash"].is_string());
    env.wait_members(&[1, 2, 3, 4, 5]).await?;
    assert_eq!(client5.get("app", "k0").await?.map(|e| e.value.to_vec()), Some(b"v0".to_vec()));

    // A lost volume under TLS: the refusing node still answers over https (503 data-lost), so
    // the operator sees it and replaces node 3 with node 6.
    env.sim.lose_volume("config-2");
    let st = env.wait_members(&[1, 2, 4, 5, 6]).await?;
    assert!(ids_of(&st).contains(&("config-2".to_string(), 6)), "{st}");
    assert!(env.sim.pod_log("config-2").contains("node 3 was a member of the cluster but data-dir"));
    wait_digests_equal(&env, &client5, 5).await?;
    Ok(())
}
