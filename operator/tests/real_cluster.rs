//! Scenarios on a real Kubernetes 1.20 cluster: kube-apiserver, kube-controller-manager (the
//! real StatefulSet, garbage-collector, PV and disruption controllers), kube-scheduler, a kubelet
//! running the node image as pods on containerd, kube-proxy and cluster DNS. The operator runs
//! as the Helm chart's Deployment from its image, with its ServiceAccount and the chart's RBAC.
//!
//! Run them with `./scripts/k8s-e2e` (part of `./scripts/test`): it starts the cluster
//! (`scripts/k8s-cluster up`), loads the images, installs the chart and runs this file with
//! `--ignored --test-threads 1`. Without a cluster they are skipped (ignored), never faked.

mod k8s;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use confman_operator::crd::ConfmanCluster;
use futures::StreamExt;
use k8s::*;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use kube::runtime::watcher::{self, watcher};

const NEEDS_CLUSTER: &str = "needs the real cluster: ./scripts/k8s-e2e";

#[tokio::test]
#[ignore = "needs the real cluster: ./scripts/k8s-e2e"]
async fn small_3_from_the_example_runs_three_ready_members_and_serves_through_the_client_service() -> TestResult {
    let _ = NEEDS_CLUSTER;
    let (image, _) = images()?;
    let s = Scenario::new("create").await?;
    s.create_from_example(3, &image).await?;
    let c = s.settled("config", 3).await?;

    let status = c.status.clone().ok_or("no status")?;
    let ids: BTreeSet<u64> = status.members.iter().map(|m| m.id).collect();
    assert_eq!(ids, BTreeSet::from([1, 2, 3]), "members {:?}", status.members);
    assert!(status.leader.is_some(), "the status names the leader");
    for cond in &status.conditions {
        assert!(!cond.message.is_empty(), "condition {} has a message", cond.type_);
    }
    let pods = s.pods_of("config").await?;
    assert_eq!(pods.len(), 3);
    assert!(pods.iter().all(pod_ready), "all three pods Ready");

    // Events are recorded against the cluster (what `kubectl describe cmc` shows).
    let events = Api::<k8s_openapi::api::core::v1::Event>::namespaced(s.client.clone(), &s.ns)
        .list(&ListParams::default().fields("involvedObject.name=config"))
        .await?;
    let reasons: BTreeSet<String> = events.items.iter().filter_map(|e| e.reason.clone()).collect();
    assert!(reasons.contains("MembersAllocated"), "events: {reasons:?}");

    // Writes and linearizable reads through the client Service.
    let client = s.node_client("config").await?;
    client.put_namespace("app", "e2e", "e2e").await?;
    for i in 0..20 {
        client.put("app", &format!("k{i}"), format!("v{i}").into_bytes(), None).await?;
    }
    for i in 0..20 {
        let e = client.get("app", &format!("k{i}")).await?.ok_or("written key missing")?;
        assert_eq!(e.value, format!("v{i}").into_bytes());
    }
    s.cleanup().await
}

/// Replacement of the members for a new image: one at a time, the leader's pod last, and a
/// writer through the client Service sees no failed write.
#[tokio::test]
#[ignore = "needs the real cluster: ./scripts/k8s-e2e"]
async fn an_image_change_replaces_members_one_at_a_time_leader_last_without_a_failed_write() -> TestResult {
    let (image, next) = images()?;
    let s = Scenario::new("upgrade").await?;
    s.create_from_example(3, &image).await?;
    let c = s.settled("config", 3).await?;
    let leader = c.status.and_then(|st| st.leader).ok_or("no leader")?;
    let client = Arc::new(s.node_client("config").await?);
    client.put_namespace("app", "e2e", "e2e").await?;

    // Timeline of the pods: when each pod name got a new uid, and how many of the three were
    // not Ready at once.
    let replaced = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let max_down = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let watch = {
        let pods = s.pods();
        let (replaced, max_down, stop) = (replaced.clone(), max_down.clone(), stop.clone());
        let initial: BTreeMap<String, String> =
            s.pods_of("config").await?.iter().map(|p| (p.name_any(), p.uid().unwrap_or_default())).collect();
        tokio::spawn(async move {
            let cfg = watcher::Config::default().labels("app.kubernetes.io/instance=config");
            let mut stream = std::pin::pin!(watcher(pods, cfg));
            let mut seen: BTreeMap<String, (String, bool)> =
                initial.iter().map(|(n, u)| (n.clone(), (u.clone(), true))).collect();
            while !stop.load(Ordering::SeqCst) {
                let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(500), stream.next()).await else {
                    continue;
                };
                let Ok(ev) = ev else { continue };
                let (pod, gone): (Pod, bool) = match ev {
                    watcher::Event::Apply(p) | watcher::Event::InitApply(p) => (p, false),
                    watcher::Event::Delete(p) => (p, true),
                    _ => continue,
                };
                let name = pod.name_any();
                let uid = pod.uid().unwrap_or_default();
                let ready = !gone && pod.metadata.deletion_timestamp.is_none() && pod_ready(&pod);
                let entry = seen.entry(name.clone()).or_insert((uid.clone(), ready));
                if entry.0 != uid && !gone {
                    if let Ok(mut r) = replaced.lock()
                        && !r.contains(&name)
                    {
                        r.push(name.clone());
                    }
                    entry.0 = uid;
                }
                entry.1 = ready;
                let down = seen.values().filter(|(_, r)| !r).count() as u64;
                max_down.fetch_max(down, Ordering::SeqCst);
            }
        })
    };
    let failures = Arc::new(AtomicU64::new(0));
    let writes = Arc::new(AtomicU64::new(0));
    let writer = {
        let (client, failures, writes, stop) = (client.clone(), failures.clone(), writes.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            let mut errors = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                match client.put("app", &format!("w{}", i % 50), i.to_string().into_bytes(), None).await {
                    Ok(_) => writes.fetch_add(1, Ordering::SeqCst),
                    Err(e) => {
                        errors.push(e.to_string());
                        failures.fetch_add(1, Ordering::SeqCst)
                    }
                };
                i += 1;
            }
            errors
        })
    };

    s.patch_spec("config", serde_json::json!({ "image": next })).await?;
    // Settled again, every pod on the new image.
    let what = "every pod runs the new image and the cluster is settled";
    deadline(SLOW, what, async {
        loop {
            let c = s.settled("config", 3).await?;
            let pods = s.pods_of("config").await?;
            if pods.len() == 3 && pods.iter().all(|p| pod_image(p).as_deref() == Some(next.as_str()) && pod_ready(p)) {
                return Ok::<_, BoxError>(c);
            }
            // Not yet: wait for the next change of any pod.
            let mut stream = std::pin::pin!(watcher(
                s.pods(),
                watcher::Config::default().labels("app.kubernetes.io/instance=config")
            ));
            let _ = tokio::time::timeout(Duration::from_secs(5), stream.next()).await;
        }
    })
    .await??;
    stop.store(true, Ordering::SeqCst);
    let errors = writer.await?;
    watch.await?;

    let order = replaced.lock().map(|r| r.clone()).unwrap_or_default();
    assert_eq!(order.len(), 3, "each pod was replaced once: {order:?}");
    assert_eq!(order.last(), Some(&leader), "the leader's pod {leader} went last: {order:?}");
    assert!(max_down.load(Ordering::SeqCst) <= 1, "at most one member down at a time");
    assert!(writes.load(Ordering::SeqCst) > 0, "the writer wrote");
    assert_eq!(failures.load(Ordering::SeqCst), 0, "no write failed: {errors:?}");
    s.cleanup().await
}

/// `kubectl scale cmc` (the scale subresource) 3 → 5 → 3: members join as learners and are
/// promoted, then two leave the group before their pods go.
#[tokio::test]
#[ignore = "needs the real cluster: ./scripts/k8s-e2e"]
async fn scaling_3_to_5_to_3_through_the_scale_subresource() -> TestResult {
    let (image, _) = images()?;
    let s = Scenario::new("scale").await?;
    s.create_from_example(3, &image).await?;
    s.settled("config", 3).await?;
    let client = s.node_client("config").await?;
    client.put_namespace("app", "e2e", "e2e").await?;
    client.put("app", "before", b"1".to_vec(), None).await?;

    let scale = |n: i32| serde_json::json!({ "spec": { "replicas": n } });
    let params = kube::api::PatchParams::default();
    s.clusters().patch_scale("config", &params, &kube::api::Patch::Merge(scale(5))).await?;
    let c = s.settled("config", 5).await?;
    let ids: BTreeSet<u64> = c.status.iter().flat_map(|st| st.members.iter().map(|m| m.id)).collect();
    assert_eq!(ids.len(), 5, "five distinct members: {ids:?}");
    let sts = Api::<StatefulSet>::namespaced(s.client.clone(), &s.ns).get("config").await?;
    assert_eq!(sts.spec.replicas, Some(5));

    s.clusters().patch_scale("config", &params, &kube::api::Patch::Merge(scale(3))).await?;
    let c = s.settled("config", 3).await?;
    let pods: Vec<String> = c.status.iter().flat_map(|st| st.members.iter().map(|m| m.pod.clone())).collect();
    assert_eq!(
        pods.iter().cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from(["config-0".into(), "config-1".into(), "config-2".into()])
    );
    let e = client.get("app", "before").await?.ok_or("key written before scaling is gone")?;
    assert_eq!(e.value.as_ref(), b"1");

    // Up again: ordinals 3 and 4 come back under fresh ids; the volumes their earlier members
    // left (a 1.20 StatefulSet keeps claims on scale-down) are deleted first, never rejoined.
    s.clusters().patch_scale("config", &params, &kube::api::Patch::Merge(scale(5))).await?;
    let again = member_ids(&s.settled("config", 5).await?);
    let first_max = ids.iter().max().copied().unwrap_or(0);
    for pod in ["config-3", "config-4"] {
        assert!(again.get(pod).is_some_and(|id| *id > first_max), "{pod} has a fresh id: {again:?}");
    }
    // The operator's recorder folds repeated reasons into an event series (events.k8s.io/v1).
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(s.client.clone(), &s.ns)
        .list(&ListParams::default())
        .await?;
    let stale: i32 = events
        .items
        .iter()
        .filter(|e| e.reason.as_deref() == Some("StaleVolumeDeleted"))
        .map(|e| e.series.as_ref().map_or(1, |series| series.count))
        .sum();
    assert_eq!(stale, 2, "the earlier members' volumes were deleted before the ordinals rejoined");
    s.cleanup().await
}

/// A deleted pod and a killed container come back under the same member id; the group keeps
/// every member.
#[tokio::test]
#[ignore = "needs the real cluster: ./scripts/k8s-e2e"]
async fn a_deleted_pod_and_a_killed_container_come_back_as_the_same_member() -> TestResult {
    let (image, _) = images()?;
    let s = Scenario::new("restart").await?;
    s.create_from_example(3, &image).await?;
    let before = member_ids(&s.settled("config", 3).await?);
    let pods = s.pods();

    let old_uid = pods.get("config-1").await?.uid().unwrap_or_default();
    pods.delete("config-1", &kube::api::DeleteParams::default()).await?;
    pod_condition(&pods, "config-1", "config-1 recreated and Ready", move |p: Option<&Pod>| {
        p.is_some_and(|p| p.uid().unwrap_or_default() != old_uid && pod_ready(p))
    })
    .await?;
    assert_eq!(member_ids(&s.settled("config", 3).await?), before, "same ids after a pod delete");

    container_task(&pods, "config-2", &["kill", "-s", "SIGKILL"]).await?;
    pod_condition(&pods, "config-2", "config-2 restarted and Ready", |p: Option<&Pod>| {
        let restarts = p
            .and_then(|p| p.status.as_ref()?.container_statuses.as_ref()?.first().map(|c| c.restart_count))
            .unwrap_or(0);
        p.is_some_and(|p| restarts >= 1 && pod_ready(p))
    })
    .await?;
    assert_eq!(member_ids(&s.settled("config", 3).await?), before, "same ids after a container crash");
    s.cleanup().await
}

/// A member whose volume is lost (emptied under it) is removed from the group and its ordinal
/// rejoins under a fresh id; the old id never comes back.
#[tokio::test]
#[ignore = "needs the real cluster: ./scripts/k8s-e2e"]
async fn a_lost_volume_rejoins_under_a_fresh_id() -> TestResult {
    let (image, _) = images()?;
    let s = Scenario::new("lost-volume").await?;
    s.create_from_example(3, &image).await?;
    let c = s.settled("config", 3).await?;
    let before = member_ids(&c);
    let leader = c.status.and_then(|st| st.leader).ok_or("no leader")?;
    // A follower's disk is replaced: its directory is emptied, then its process dies.
    let victim = ["config-0", "config-1", "config-2"].into_iter().find(|p| *p != leader).ok_or("no follower")?;
    let dir = volume_dir(&s.client, &s.ns, &format!("data-{victim}")).await?;
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.is_dir() { std::fs::remove_dir_all(&path)? } else { std::fs::remove_file(&path)? }
    }
    container_task(&s.pods(), victim, &["kill", "-s", "SIGKILL"]).await?;

    let what = format!("{victim} rejoined under a fresh id");
    let old = before.get(victim).copied().ok_or("victim had no id")?;
    let after = deadline(SLOW, &what, async {
        kube::runtime::wait::await_condition(s.clusters(), "config", move |c: Option<&ConfmanCluster>| {
            c.is_some_and(|c| {
                let ids = member_ids(c);
                is_settled(c, 3) && ids.get(victim).is_some_and(|id| *id != old)
            })
        })
        .await
    })
    .await??
    .ok_or("cluster deleted")?;
    let ids = member_ids(&after);
    assert!(ids[victim] > *before.values().max().unwrap_or(&0), "fresh ids are never reused: {ids:?}");
    for (pod, id) in &before {
        if pod != victim {
            assert_eq!(ids.get(pod), Some(id), "the other members keep their ids");
        }
    }
    s.cleanup().await
}

/// `spec.paused` stops every change; a spec the operator refuses (even replicas — a CEL rule
/// that a 1.20 server does not enforce) gets `InvalidSpec` and changes no child.
#[tokio::test]
#[ignore = "needs the real cluster: ./scripts/k8s-e2e"]
async fn paused_and_invalid_specs_change_nothing() -> TestResult {
    let (image, next) = images()?;
    let s = Scenario::new("paused").await?;
    s.create_from_example(3, &image).await?;
    s.settled("config", 3).await?;
    let sts_api = Api::<StatefulSet>::namespaced(s.client.clone(), &s.ns);
    let template_image =
        |sts: &StatefulSet| sts.spec.template.spec.as_ref().and_then(|p| p.containers.first()?.image.clone());

    s.patch_spec("config", serde_json::json!({ "paused": true, "image": next })).await?;
    observed_generation(&s).await?;
    let sts = sts_api.get("config").await?;
    assert_eq!(template_image(&sts).as_deref(), Some(image.as_str()), "paused: the image change is not rolled out");

    s.patch_spec("config", serde_json::json!({ "paused": false, "image": image, "replicas": 4 })).await?;
    let c = observed_generation(&s).await?;
    assert!(condition_true(&c, "InvalidSpec"), "even replicas are refused: {:?}", c.status);
    let message = c
        .status
        .iter()
        .flat_map(|st| st.conditions.iter())
        .find(|x| x.type_ == "InvalidSpec")
        .map(|x| x.message.clone())
        .unwrap_or_default();
    assert!(message.contains("odd"), "the message names the rule: {message}");
    let sts = sts_api.get("config").await?;
    assert_eq!(sts.spec.replicas, Some(3), "an invalid spec changes no child");

    s.patch_spec("config", serde_json::json!({ "replicas": 3 })).await?;
    s.settled("config", 3).await?;
    s.cleanup().await
}

/// Waits until the operator has assessed the cluster's latest generation: every condition
/// carries it (`status.observedGeneration` itself names the last generation rolled out, which a
/// paused or refused spec is not).
async fn observed_generation(s: &Scenario) -> Result<ConfmanCluster, BoxError> {
    let c = s.clusters().get("config").await?;
    let generation = c.metadata.generation;
    let found = deadline(SLOW, "conditions for the latest generation", async {
        kube::runtime::wait::await_condition(s.clusters(), "config", move |c: Option<&ConfmanCluster>| {
            c.is_some_and(|c| {
                c.status.as_ref().is_some_and(|st| {
                    !st.conditions.is_empty() && st.conditions.iter().all(|x| x.observed_generation == generation)
                })
            })
        })
        .await
    })
    .await??;
    found.ok_or_else(|| "cluster deleted".into())
}

/// With one member down, the disruption budget refuses the eviction of a second (what
/// `kubectl drain` meets); with all up, one eviction is allowed.
#[tokio::test]
#[ignore = "needs the real cluster: ./scripts/k8s-e2e"]
async fn evicting_a_second_member_while_one_is_down_is_refused() -> TestResult {
    let (image, _) = images()?;
    let s = Scenario::new("evict").await?;
    s.create_from_example(3, &image).await?;
    s.settled("config", 3).await?;
    let pods = s.pods();
    // One member down: its process stopped (SIGSTOP) until the readiness probe fails.
    signal_container(&pods, "config-0", "STOP").await?;
    let frozen =
        pod_condition(&pods, "config-0", "config-0 not Ready", |p: Option<&Pod>| p.is_some_and(|p| !pod_ready(p)))
            .await;
    let refused = match frozen {
        Ok(_) => wait_disruptions_allowed(&s, 0).await.and(evict(&s.ns, "config-1").await),
        Err(e) => Err(e),
    };
    signal_container(&pods, "config-0", "CONT").await?;
    assert_eq!(refused?, 429, "the budget refuses a second member's eviction");

    s.settled("config", 3).await?;
    wait_disruptions_allowed(&s, 1).await?;
    assert_eq!(evict(&s.ns, "config-2").await?, 201, "one eviction is allowed when all are up");
    s.settled("config", 3).await?;
    s.cleanup().await
}

/// Waits until the disruption controller reports `n` allowed disruptions for the cluster's
/// budget (policy/v1beta1 on 1.20).
async fn wait_disruptions_allowed(s: &Scenario, n: i64) -> Result<(), BoxError> {
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
    let gvk = GroupVersionKind::gvk("policy", "v1beta1", "PodDisruptionBudget");
    let api = Api::<DynamicObject>::namespaced_with(s.client.clone(), &s.ns, &ApiResource::from_gvk(&gvk));
    deadline(SLOW, &format!("the budget allows {n} disruptions"), async {
        kube::runtime::wait::await_condition(api, "config", move |p: Option<&DynamicObject>| {
            p.and_then(|p| p.data.get("status")?.get("disruptionsAllowed")?.as_i64()) == Some(n)
        })
        .await
    })
    .await??;
    Ok(())
}

/// The operator's pod is deleted in the middle of a scale-up; the Deployment's new pod picks
/// up where it stopped and finishes it.
#[tokio::test]
#[ignore = "needs the real cluster: ./scripts/k8s-e2e"]
async fn a_new_operator_pod_finishes_a_scale_up_its_predecessor_started() -> TestResult {
    let (image, _) = images()?;
    let s = Scenario::new("operator-restart").await?;
    s.create_from_example(3, &image).await?;
    s.settled("config", 3).await?;
    s.patch_spec("config", serde_json::json!({ "replicas": 5 })).await?;
    deadline(SLOW, "scale-up under way (a fourth member)", async {
        kube::runtime::wait::await_condition(s.clusters(), "config", |c: Option<&ConfmanCluster>| {
            c.is_some_and(|c| c.status.as_ref().is_some_and(|st| st.members.len() >= 4))
        })
        .await
    })
    .await??;
    let operators = Api::<Pod>::namespaced(s.client.clone(), "confman-system");
    let lp = ListParams::default().labels("app.kubernetes.io/name=confman-operator");
    for p in operators.list(&lp).await?.items {
        operators.delete(&p.name_any(), &kube::api::DeleteParams::default()).await?;
    }
    let c = s.settled("config", 5).await?;
    assert_eq!(member_ids(&c).len(), 5);
    s.cleanup().await
}

/// `kubectl delete cmc`: the garbage collector removes every child the cluster owns. PVCs stay
/// on 1.20 (no StatefulSet retention policy there; the operator says so with an Event).
#[tokio::test]
#[ignore = "needs the real cluster: ./scripts/k8s-e2e"]
async fn deleting_the_cluster_garbage_collects_its_children() -> TestResult {
    use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service};
    let (image, _) = images()?;
    let s = Scenario::new("delete").await?;
    s.create_from_example(3, &image).await?;
    s.settled("config", 3).await?;
    let sts = Api::<StatefulSet>::namespaced(s.client.clone(), &s.ns);
    s.clusters().delete("config", &kube::api::DeleteParams::foreground()).await?;
    deadline(SLOW, "StatefulSet garbage-collected", async {
        kube::runtime::wait::await_condition(sts.clone(), "config", |x: Option<&StatefulSet>| x.is_none()).await
    })
    .await??;
    deadline(SLOW, "cluster gone", async {
        kube::runtime::wait::await_condition(s.clusters(), "config", |x: Option<&ConfmanCluster>| x.is_none()).await
    })
    .await??;
    let owned = "app.kubernetes.io/instance=config";
    let lp = ListParams::default().labels(owned);
    let services = Api::<Service>::namespaced(s.client.clone(), &s.ns).list(&lp).await?.items.len();
    let maps = Api::<ConfigMap>::namespaced(s.client.clone(), &s.ns).list(&lp).await?.items.len();
    let secrets = Api::<Secret>::namespaced(s.client.clone(), &s.ns).list(&lp).await?.items.len();
    assert_eq!((services, maps, secrets), (0, 0, 0), "children left behind");
    let claims = Api::<PersistentVolumeClaim>::namespaced(s.client.clone(), &s.ns).list(&lp).await?.items.len();
    assert_eq!(claims, 3, "a 1.20 StatefulSet keeps its claims");
    s.cleanup().await
}

/// A TLS cluster (a cert-manager-like `kubernetes.io/tls` Secret): members bootstrap over
/// https with the real cluster DNS names in their certificates, the operator pod verifies them
/// against `ca.crt`, and the client Service serves only https.
#[tokio::test]
#[ignore = "needs the real cluster: ./scripts/k8s-e2e"]
async fn a_tls_cluster_bootstraps_and_serves_only_https() -> TestResult {
    use k8s_openapi::api::core::v1::{Secret, Service};
    use kube::api::PostParams;
    let (image, _) = images()?;
    let s = Scenario::new("tls").await?;
    let dir = tempfile::tempdir()?;
    let service_dns = format!("config.{}.svc", s.ns);
    let certs = confman_tests::certs::generate(dir.path(), &[&format!("*.config-peers.{}.svc", s.ns), &service_dns])?;
    let mut secret = Secret::default();
    secret.metadata.name = Some("config-tls".into());
    secret.type_ = Some("kubernetes.io/tls".into());
    secret.string_data = Some(BTreeMap::from([
        ("tls.crt".to_string(), certs.cert_pem.clone()),
        ("tls.key".to_string(), certs.key_pem.clone()),
        ("ca.crt".to_string(), certs.ca_pem.clone()),
    ]));
    Api::<Secret>::namespaced(s.client.clone(), &s.ns).create(&PostParams::default(), &secret).await?;
    let mut c = s.example(3, &image)?;
    c.spec.tls = Some(confman_operator::crd::TlsSpec { client_secret: "config-tls".into(), peer_secret: None });
    s.clusters().create(&PostParams::default(), &c).await?;
    s.settled("config", 3).await?;

    let svc = Api::<Service>::namespaced(s.client.clone(), &s.ns).get("config").await?;
    let ip: std::net::IpAddr = svc.spec.and_then(|sp| sp.cluster_ip).ok_or("no ClusterIP")?.parse()?;
    let url = format!("https://{service_dns}:8080");
    let client = confman_client::Client::builder([url.clone()], s.admin_key.clone())
        .trust_ca_pem(certs.ca_pem.clone())
        .resolve(service_dns.clone(), ip)
        .build()?;
    client.put_namespace("app", "e2e", "e2e").await?;
    client.put("app", "k", b"v".to_vec(), None).await?;
    assert_eq!(client.get("app", "k").await?.map(|e| e.value.to_vec()), Some(b"v".to_vec()));
    let group = client.cluster().await?;
    assert!(group.members.iter().all(|m| m.address.starts_with("https://")), "{:?}", group.members);

    let untrusting = confman_client::Client::builder([url], s.admin_key.clone())
        .retry_for(Duration::ZERO)
        .resolve(service_dns, ip)
        .build()?;
    let refused = untrusting.get("app", "k").await;
    let cause = match &refused {
        Err(confman_client::Error::Transport(e)) => confman_tests::certs::certificate_error(e),
        _ => None,
    };
    // The handshake fails verification because the issuer is unknown to it (not because a
    // pod is down).
    assert_eq!(
        cause.map(|c| format!("{c:?}")).as_deref(),
        Some("UnknownIssuer"),
        "a client without the CA fails verification: {refused:?}"
    );

    // CA rotation, step one: ca.crt becomes a bundle of the old and a new CA. Nodes read it at
    // start, so the operator restarts them one at a time (leader last) to trust both. The
    // operator does not watch Secrets; an edit of the cluster brings its next look forward.
    let next_ca = confman_tests::certs::TestCa::new()?;
    let bundle = format!("{}{}", certs.ca_pem, next_ca.pem);
    let secrets = Api::<Secret>::namespaced(s.client.clone(), &s.ns);
    let patch = serde_json::json!({ "stringData": { "ca.crt": bundle } });
    secrets.patch("config-tls", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await?;
    let before: BTreeMap<String, String> =
        s.pods_of("config").await?.iter().map(|p| (p.name_any(), p.uid().unwrap_or_default())).collect();
    let annotate = serde_json::json!({ "metadata": { "annotations": { "e2e/rotate": "1" } } });
    s.clusters().patch("config", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&annotate)).await?;
    deadline(SLOW, "every member restarted trusting the bundle", async {
        loop {
            s.settled("config", 3).await?;
            let pods = s.pods_of("config").await?;
            if pods.len() == 3 && pods.iter().all(|p| pod_ready(p) && before.get(&p.name_any()) != p.uid().as_ref()) {
                return Ok::<_, BoxError>(());
            }
            let mut stream = std::pin::pin!(watcher(
                s.pods(),
                watcher::Config::default().labels("app.kubernetes.io/instance=config")
            ));
            let _ = tokio::time::timeout(Duration::from_secs(5), stream.next()).await;
        }
    })
    .await??;
    let sts = Api::<StatefulSet>::namespaced(s.client.clone(), &s.ns).get("config").await?;
    let annotations = sts.spec.template.metadata.and_then(|m| m.annotations).unwrap_or_default();
    assert!(annotations.contains_key("confman.io/ca-hash"), "{annotations:?}");
    client.put("app", "rotated", b"1".to_vec(), None).await?;
    assert_eq!(client.get("app", "k").await?.map(|e| e.value.to_vec()), Some(b"v".to_vec()));
    s.cleanup().await
}
