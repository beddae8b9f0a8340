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
        Ok(self.wait_members_after(ids, 0).await?.0)
    }

    /// Like [`Env::wait_members`], but only a status written after resourceVersion `after`
    /// counts (not one the operator wrote before an event the caller saw); returns it with the
    /// cluster object's resourceVersion.
    async fn wait_members_after(&self, ids: &[u64], after: u64) -> Result<(Value, u64)> {
        let want: Vec<u64> = ids.to_vec();
        let got = self
            .store()
            .wait_for(&format!("voters {want:?}, Running, in a status after rv {after}"), STEP, |s| {
                let cmc = s.get(&cmc_key())?;
                let rv = rv_of(&cmc);
                let st = cmc["status"].clone();
                let members = st["members"].as_array()?;
                let mut voters: Vec<u64> =
                    members.iter().filter(|m| m["role"] == json!("voter")).filter_map(|m| m["id"].as_u64()).collect();
                voters.sort_unstable();
                let ok = voters == want
                    && members.len() == want.len()
                    && members.iter().all(|m| m["healthy"] == json!(true))
                    && st["phase"] == json!("Running")
                    && st["leader"].is_string()
                    && condition(&st, "Progressing") == Some("False")
                    && rv > after;
                ok.then_some((st, rv))
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

/// An object's resourceVersion (0 when missing, which no "after" comparison accepts).
fn rv_of(obj: &Value) -> u64 {
    obj["metadata"]["resourceVersion"].as_str().and_then(|r| r.parse().ok()).unwrap_or(0)
}

fn pod_key(pod: &str) -> ObjectKey {
    key("/api/v1", "pods", pod)
}

fn pod_ready(pod: &Value) -> bool {
    pod["status"]["conditions"][0]["status"] == json!("True")
}

/// Every version of pod `pod` written after resourceVersion `after`, as (resourceVersion,
/// Ready), read from the API server's watch: its history keeps each write, so a not-ready
/// state is seen however briefly it lasted (a poll of the current object could miss it).
async fn pod_ready_history(env: &Env, pod: &str, after: u64) -> Result<Vec<(u64, bool)>> {
    // The watch sends the history, then idles until its timeout ends the stream.
    let url =
        format!("{}/api/v1/namespaces/{NS}/pods?watch=true&resourceVersion={after}&timeoutSeconds=1", env.api.url);
    let body = reqwest::get(url).await?.error_for_status()?.text().await?;
    let mut history = Vec::new();
    for line in body.lines().filter(|l| !l.trim().is_empty()) {
        let event: Value = serde_json::from_str(line)?;
        let object = &event["object"];
        if object["metadata"]["name"] == json!(pod) && event["type"] != json!("DELETED") {
            history.push((rv_of(object), pod_ready(object)));
        }
    }
    Ok(history)
}

/// Waits until every node in `pods` reports `leader` as the leader (after a transfer, the
/// followers learn it from the new leader's first append; until then they forward writes to the
/// old one). Nodes push no event for it, so their cluster status is polled (bounded loop).
async fn wait_leader_known(env: &Env, client: &Client, pods: std::ops::Range<u32>, leader: u64) -> Result<()> {
    for _ in 0..600 {
        let mut known = true;
        for o in pods.clone() {
            known &= client.cluster_of(&env.url(&format!("config-{o}"))).await?.leader_id == Some(leader);
        }
        if known {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("pods {pods:?} never all reported leader {leader}").into())
}

/// One write of a background writer: its outcome, and where it fell in the store's history
/// (the store's resourceVersion read before it was sent and after it was answered, and the
/// member ids the operator's status listed when it was sent), which places it against the
/// operator's status writes without any clock.
#[derive(Debug, Clone)]
struct Write {
    i: u32,
    sent_rv: u64,
    /// Member ids in the cluster status read just before sending.
    sent_ids: Vec<u64>,
    acked_rv: u64,
    /// The client's total retry count just before this write was sent.
    retries_before: u64,
    outcome: std::result::Result<(), String>,
}

/// Writes `k{i}` = `v{i}` for i = `first`, `first + 1`, ... until `stop`, recording every outcome.
fn spawn_writer(
    store: Store,
    client: Arc<Client>,
    first: u32,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> (tokio::task::JoinHandle<()>, tokio::sync::watch::Receiver<Vec<Write>>) {
    let (tx, rx) = tokio::sync::watch::channel(Vec::new());
    let task = tokio::spawn(async move {
        let mut i = first;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            let sent_rv = store.revision();
            let sent_ids = store.get(&cmc_key()).map(|c| ids_of(&c["status"])).unwrap_or_default();
            let sent_ids = sent_ids.into_iter().map(|(_, id)| id).collect();
            let retries_before = client.retries().total();
            let r = client.put("app", &format!("k{i}"), format!("v{i}").into_bytes(), None).await;
            let acked_rv = store.revision();
            let outcome = r.map(drop).map_err(|e| e.to_string());
            tx.send_modify(|w| w.push(Write { i, sent_rv, sent_ids, acked_rv, retries_before, outcome }));
            i += 1;
        }
    });
    (task, rx)
}

/// Waits until the writer's record satisfies `done`.
async fn wait_writes(
    rx: &mut tokio::sync::watch::Receiver<Vec<Write>>,
    what: &str,
    done: impl FnMut(&Vec<Write>) -> bool,
) -> Result<()> {
    match tokio::time::timeout(STEP, rx.wait_for(done)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(_)) => Err(format!("the writer stopped before {what}").into()),
        Err(_) => Err(format!("timed out after {STEP:?} waiting for {what}").into()),
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
    //    The cluster is settled: no call may need a retry (the client's 60 s retry budget would
    //    otherwise hide an unavailable node).
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
    assert_eq!(client.retries().total(), 0, "retries on the settled 3-member cluster: {:?}", client.retries());

    // 2. Scale 3 → 5: every member a voter; the new members' digests equal the leader's. Once
    //    Running with 5 voters the cluster is settled again: no retries.
    env.patch_spec(json!({"replicas": 5}));
    let st = env.wait_members(&[1, 2, 3, 4, 5]).await?;
    assert_eq!(ids_of(&st)[3..], [("config-3".to_string(), 4), ("config-4".to_string(), 5)]);
    let client5 = env.client(5)?;
    for i in 20..30 {
        client5.put("app", &format!("k{i}"), format!("v{i}").into_bytes(), None).await?;
        acked.push(i);
    }
    wait_digests_equal(&env, &client5, 5).await?;
    assert_eq!(client5.retries().total(), 0, "retries on the settled 5-member cluster: {:?}", client5.retries());
    let reasons = env.event_reasons();
    for r in ["MembersAllocated", "ScalingUp"] {
        assert!(reasons.iter().any(|x| x == r), "no {r} event in {reasons:?}");
    }

    // 3. Scale 5 → 3 while writing: the removed ordinals leave the group, their volumes go
    //    (retention Delete), nothing acknowledged is lost. The highest ordinal leads when the
    //    scale-down starts, so the operator must move leadership off it first.
    assert_eq!(client5.transfer_leader(Some(5)).await?, Some(5));
    wait_leader_known(&env, &client5, 0..3, 5).await?;
    // A writer runs through three windows, told apart by the store's resourceVersion:
    //   steady before: from its start to the spec edit — no retries;
    //   the scale-down: from the spec edit to the status with voters [1, 2, 3] — retries
    //   allowed (leader moves, members leave) and reported;
    //   steady after: writes sent after that status — no retries.
    // Every write must succeed, and some must fall inside the membership change.
    let writer_client = Arc::new(env.client(3)?);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (writer, mut progress) = spawn_writer(env.store().clone(), writer_client.clone(), 30, stop.clone());
    wait_writes(&mut progress, "10 writes before the scale-down", |w| w.len() >= 10).await?;
    let steady_before = writer_client.retries();
    assert_eq!(steady_before.total(), 0, "retries in the steady window before the scale-down: {steady_before:?}");
    let patched =
        env.store().patch(&cmc_key(), &json!({"spec": {"replicas": 3}}), false).ok_or("the cluster object is gone")?;
    let rv_edit = rv_of(&patched);
    let (st, rv_done) = env.wait_members_after(&[1, 2, 3], rv_edit).await?;
    let in_change = writer_client.retries();
    wait_writes(&mut progress, "10 writes after the scale-down settled", |w| {
        w.iter().filter(|x| x.sent_rv >= rv_done).count() >= 10
    })
    .await?;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.await?;
    let writes = progress.borrow().clone();
    let after_total = writer_client.retries().total();

    let failed: Vec<(u32, &str)> =
        writes.iter().filter_map(|w| w.outcome.as_ref().err().map(|e| (w.i, e.as_str()))).collect();
    assert!(failed.is_empty(), "{} of {} writes failed around the scale-down: {failed:?}", failed.len(), writes.len());
    // The membership change proper: node 5 leaves the group (the operator lists the group
    // without it once the removal committed), then node 4. A write sent when the status no
    // longer listed node 5 and answered before the settled status overlapped it.
    let inside = |w: &&Write| w.sent_rv >= rv_edit && w.acked_rv < rv_done;
    let in_window = writes.iter().filter(inside).count();
    let during_membership =
        writes.iter().filter(inside).filter(|w| !w.sent_ids.is_empty() && !w.sent_ids.contains(&5)).count();
    eprintln!(
        "scale-down window (spec edit rv {rv_edit} → voters [1, 2, 3] Running rv {rv_done}): {in_window} writes \
         sent and answered inside it, {during_membership} of them after node 5 had left the group; writer client \
         retries in the window: {} ({:?} at its end, {:?} at its start)",
        in_change.total() - steady_before.total(),
        in_change,
        steady_before,
    );
    assert!(
        during_membership > 0,
        "no write was sent after node 5 left the group and answered before the scale-down settled (rv {rv_done}): \
         the writes did not overlap the membership change"
    );
    let first_after = writes.iter().find(|w| w.sent_rv >= rv_done).ok_or("no write after the scale-down")?;
    assert_eq!(
        after_total,
        first_after.retries_before,
        "retries in the steady window after the scale-down settled (rv {rv_done}); {} during the change",
        in_change.total() - steady_before.total()
    );
    acked.extend(writes.iter().filter(|w| w.outcome.is_ok()).map(|w| w.i));

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
    // Settled: reading everything back needs no retry either.
    let before_reads = client.retries();
    for i in &acked {
        let got = client.get("app", &format!("k{i}")).await?;
        assert_eq!(got.map(|e| e.value.to_vec()), Some(format!("v{i}").into_bytes()), "acknowledged write k{i} lost");
    }
    assert_eq!(client.retries(), before_reads, "retries reading back {} keys on the settled cluster", acked.len());

    // 4. A pod crashes: its process is restarted in place and rejoins as the same member;
    //    membership never shrinks. Evidence that the crash happened and the pod came back: the
    //    simulator restarted the process, and the pod object went not-ready and Ready again
    //    (both seen in the pod's history after the crash). Only a cluster status written after
    //    that counts.
    let before = ids_of(&env.status());
    let pod1 = env.store().get(&pod_key("config-1")).ok_or("no pod config-1")?;
    let (events_before, rv_crash) = (env.sim.events().len(), env.store().revision());
    assert!(pod_ready(&pod1), "config-1 is Ready before the crash");
    env.sim.crash("config-1");
    let mut smallest = usize::MAX;
    let mut track = |s: &Store| {
        let n = s.get(&cmc_key()).and_then(|c| c["status"]["members"].as_array().map(Vec::len)).unwrap_or(0);
        smallest = smallest.min(n);
    };
    let rv_back = env
        .store()
        .wait_for("config-1 restarted and Ready again", STEP, |s| {
            track(s);
            let restarted = env.sim.events()[events_before..].contains(&SimEvent::Restarted("config-1".into()));
            let pod = s.get(&pod_key("config-1"))?;
            (restarted && rv_of(&pod) > rv_crash && pod_ready(&pod)).then_some(rv_of(&pod))
        })
        .await
        .map_err(|e| env.explain(e))?;
    let history = pod_ready_history(&env, "config-1", rv_crash).await?;
    let not_ready = history.iter().find(|(rv, ready)| !ready && *rv < rv_back);
    assert!(not_ready.is_some(), "config-1 was never seen not-ready between the crash and rv {rv_back}: {history:?}");
    assert_eq!(history.iter().find(|(rv, _)| *rv == rv_back), Some(&(rv_back, true)), "{history:?}");
    let pod1_after = env.store().get(&pod_key("config-1")).ok_or("no pod config-1")?;
    assert_eq!(pod1_after["metadata"]["uid"], pod1["metadata"]["uid"], "a crash restarts the process, not the pod");
    env.store()
        .wait_for("a Running status with every member healthy, written after config-1 was Ready again", STEP, |s| {
            track(s);
            let cmc = s.get(&cmc_key())?;
            let st = &cmc["status"];
            let healthy = st["members"].as_array()?.iter().all(|m| m["healthy"] == json!(true));
            (rv_of(&cmc) > rv_back && healthy && st["phase"] == json!("Running")).then_some(())
        })
        .await
        .map_err(|e| env.explain(e))?;
    assert_eq!(ids_of(&env.status()), before, "same members, same ids");
    assert!(smallest >= 3, "membership shrank to {smallest} while a pod was down");

    // Deleting the pod object (kubectl delete pod) recreates it under the same id too: the old
    // process is stopped, a new pod object (new uid) is created and becomes Ready, and only a
    // status written after that counts.
    let old_uid = env.store().get(&pod_key("config-2")).ok_or("no pod config-2")?["metadata"]["uid"].clone();
    let events_before = env.sim.events().len();
    env.store().delete(&pod_key("config-2"));
    let rv_ready = env
        .store()
        .wait_for("config-2 deleted, recreated and Ready", STEP, |s| {
            let ev = env.sim.events()[events_before..].to_vec();
            let deleted = ev.iter().position(|e| *e == SimEvent::Deleted("config-2".into()))?;
            ev[deleted..].iter().find(|e| matches!(e, SimEvent::Created(p, _) if p == "config-2"))?;
            let pod = s.get(&pod_key("config-2"))?;
            (pod["metadata"]["uid"] != old_uid && pod_ready(&pod)).then_some(rv_of(&pod))
        })
        .await
        .map_err(|e| env.explain(e))?;
    env.wait_members_after(&[1, 2, 3], rv_ready).await?;
    assert_eq!(ids_of(&env.status()), before);
    // Recovered and settled: a read needs no retry.
    let before_read = client.retries();
    assert_eq!(client.get("app", "k7").await?.map(|e| e.value.to_vec()), Some(b"v7".to_vec()));
    assert_eq!(client.retries(), before_read, "retries reading from the recovered cluster");

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
    assert_eq!(
        client.retries().total(),
        0,
        "retries on the settled cluster before the upgrade: {:?}",
        client.retries()
    );

    let stop = Arc::new(tokio::sync::Notify::new());
    let writer = {
        let (c, stop) = (env.client(3)?, stop.clone());
        tokio::spawn(async move {
            let (mut ok, mut failed) = (Vec::new(), 0u32);
            let mut i = 0u32;
            loop {
                let k = format!("w{i}");
                tokio::select! {
                    _ = stop.notified() => return (ok, failed, c.retries()),
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
    let (acked, failed, retried) = writer.await?;
    // Retries are allowed while pods are replaced; make them visible.
    eprintln!("upgrade window (image edit → every pod replaced, Running): writer client retries {retried:?}");

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
    // The upgrade is over: reading back needs no retry.
    let before_reads = client.retries();
    for i in &acked {
        assert!(client.get("app", &format!("w{i}")).await?.is_some(), "acknowledged write w{i} lost");
    }
    assert_eq!(client.retries(), before_reads, "retries reading back on the upgraded cluster");
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
    assert_eq!(client.retries().total(), 0, "retries on the settled cluster before the loss: {:?}", client.retries());

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
    // The replacement is over (the client was idle meanwhile): reading back needs no retry.
    let before_reads = client.retries();
    for i in 0..20 {
        let got = client.get("app", &format!("k{i}")).await?;
        assert_eq!(got.map(|e| e.value.to_vec()), Some(format!("v{i}").into_bytes()), "k{i}");
    }
    assert_eq!(client.retries(), before_reads, "retries reading back after config-0 was replaced");
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
    // Once Running the cluster is settled: no call may need a retry (the client's 60 s retry
    // budget would otherwise hide an unavailable node or a failing handshake).
    env.wait_members(&[1, 2, 3]).await?;
    let client = env.client(3)?;
    let before_bootstrap = client.retries();
    client.put_namespace("app", "tls e2e", "e2e").await?;
    for i in 0..10 {
        client.put("app", &format!("k{i}"), format!("v{i}").into_bytes(), None).await?;
    }
    let group = client.cluster().await?;
    assert_eq!(client.retries(), before_bootstrap, "retries on the settled 3-member TLS cluster");
    assert!(
        group.members.iter().all(|m| m.address.starts_with("https://")),
        "members advertise https: {:?}",
        group.members
    );
    // A client without the CA gets nowhere: the handshake fails certificate verification
    // because the issuer is unknown to it (not for any other reason, such as a dead pod).
    use confman_tests::certs::certificate_error;
    let untrusting = Client::builder([env.url("config-0")], env.token()?)
        .retry_for(Duration::ZERO)
        .resolve(format!("config-0.config-peers.{NS}.svc"), env.sim.ip(1, 0))
        .build()?;
    let refused = untrusting.get("app", "k0").await;
    let cause = match &refused {
        Err(confman_client::Error::Transport(e)) => certificate_error(e),
        _ => None,
    };
    assert!(
        matches!(cause, Some(rustls::CertificateError::UnknownIssuer)),
        "expected an unknown-issuer verification failure: {refused:?}"
    );

    // Scale-up over TLS: learners catch up from https peers and are promoted.
    env.patch_spec(json!({"replicas": 5}));
    env.wait_members(&[1, 2, 3, 4, 5]).await?;
    let client5 = env.client(5)?;
    let before_scaled = client5.retries();
    wait_digests_equal(&env, &client5, 5).await?;
    assert_eq!(client5.get("app", "k9").await?.map(|e| e.value.to_vec()), Some(b"v9".to_vec()));
    client5.put("app", "scaled", b"5".to_vec(), None).await?;
    assert_eq!(client5.retries(), before_scaled, "retries on the settled 5-member TLS cluster");

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
    let st = env.wait_members(&[1, 2, 3, 4, 5]).await?;
    // The rolling restart may have moved leadership: settled means every member also knows the
    // leader the status names (a follower that does not yet would answer a forwarded write 503).
    let leader_pod = st["leader"].as_str().ok_or("no leader after the rotation")?;
    let leader_id = ids_of(&st).into_iter().find(|(p, _)| p == leader_pod).map(|(_, id)| id).ok_or("leader unknown")?;
    wait_leader_known(&env, &client5, 0..5, leader_id).await?;
    // Settled after the rotation: every member serves again, no call needs a retry.
    let before_rotated = client5.retries();
    assert_eq!(client5.get("app", "k0").await?.map(|e| e.value.to_vec()), Some(b"v0".to_vec()));
    client5.put("app", "rotated", b"1".to_vec(), None).await?;
    assert_eq!(client5.get("app", "scaled").await?.map(|e| e.value.to_vec()), Some(b"5".to_vec()));
    assert_eq!(client5.retries(), before_rotated, "retries on the TLS cluster settled after the CA rotation");

    // A lost volume under TLS: the refusing node still answers over https (503 data-lost), so
    // the operator sees it and replaces node 3 with node 6.
    env.sim.lose_volume("config-2");
    let st = env.wait_members(&[1, 2, 4, 5, 6]).await?;
    assert!(ids_of(&st).contains(&("config-2".to_string(), 6)), "{st}");
    assert!(env.sim.pod_log("config-2").contains("node 3 was a member of the cluster but data-dir"));
    wait_digests_equal(&env, &client5, 5).await?;
    Ok(())
}
