//! The reconcile loop against a mocked API server (tower-test + a stateful fake): children are
//! server-side applied with owner references and the field manager, status is patched, an
//! invalid or paused spec changes no child, the token is never rewritten, a shrink is held, a
//! failed apply is reported and requeued with a growing backoff until a retry succeeds.

mod support;

use std::sync::Arc;
use std::time::Duration;

use confman_operator::crd::{ConfmanCluster, PayloadClass, TuningOverrides};
use confman_operator::fixtures;
use confman_operator::metrics::Metrics;
use confman_operator::reconcile::{Context, FIELD_MANAGER, error_policy, reconcile};
use kube::runtime::controller::Action;
use kube::runtime::events::Reporter;
use serde_json::{Value, json};
use support::FakeApi;

const NS: &str = "platform";
const CMC: &str = "/apis/confman.io/v1alpha1/namespaces/platform/confmanclusters/config";
const STS: &str = "/apis/apps/v1/namespaces/platform/statefulsets/config";
const TOKEN: &str = "/api/v1/namespaces/platform/secrets/config-token";
const MEMBERS: &str = "/api/v1/namespaces/platform/configmaps/config-members";

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn cluster(replicas: i32) -> ConfmanCluster {
    fixtures::cluster(replicas, PayloadClass::Small)
}

fn setup(c: &ConfmanCluster) -> Result<(Arc<Context>, FakeApi), serde_json::Error> {
    let (client, fake) = FakeApi::start();
    fake.seed(CMC, serde_json::to_value(c)?);
    let reporter = Reporter { controller: FIELD_MANAGER.into(), instance: Some("test".into()) };
    let mut ctx = Context::new(client, reporter, Arc::new(Metrics::default()));
    // No node runs here: pod names resolve to a loopback address where nothing listens.
    ctx.resolve = (0..9)
        .map(|o| (format!("config-{o}.config-peers.platform.svc"), std::net::IpAddr::from([127, 255, 255, 254])))
        .collect();
    Ok((Arc::new(ctx), fake))
}

/// The cluster as stored by the fake (with the status the operator wrote).
fn stored(fake: &FakeApi) -> Result<ConfmanCluster, Box<dyn std::error::Error>> {
    Ok(serde_json::from_value(fake.get(CMC).ok_or("cluster gone")?)?)
}

fn condition<'a>(
    c: &'a ConfmanCluster,
    t: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    c.status.as_ref()?.conditions.iter().find(|x| x.type_ == t)
}

fn child_patches(fake: &FakeApi) -> Vec<String> {
    fake.patches().into_iter().filter(|p| !p.path.starts_with(CMC)).map(|p| p.path).collect()
}

#[tokio::test]
async fn a_new_cluster_gets_every_child_applied_owned_and_by_the_field_manager() -> TestResult {
    let c = cluster(3);
    let (ctx, fake) = setup(&c)?;
    reconcile(Arc::new(c), ctx).await?;

    let mut paths = child_patches(&fake);
    paths.sort();
    assert_eq!(
        paths,
        vec![
            "/api/v1/namespaces/platform/configmaps/config-config",
            MEMBERS,
            "/api/v1/namespaces/platform/secrets/config-admin",
            TOKEN,
            "/api/v1/namespaces/platform/services/config",
            "/api/v1/namespaces/platform/services/config-peers",
            STS,
            "/apis/policy/v1/namespaces/platform/poddisruptionbudgets/config",
        ]
    );
    for p in fake.patches() {
        assert!(p.query.contains(&format!("fieldManager={FIELD_MANAGER}")), "{} {}", p.path, p.query);
        assert!(p.query.contains("force=true"), "{} {}", p.path, p.query);
        if p.path.starts_with(CMC) {
            continue;
        }
        let owner = &p.body["metadata"]["ownerReferences"][0];
        assert_eq!(
            (&owner["kind"], &owner["name"], &owner["uid"], &owner["controller"]),
            (&json!("ConfmanCluster"), &json!("config"), &json!("cmc-uid"), &json!(true)),
            "{}",
            p.path
        );
    }
    let sts = fake.get(STS).ok_or("no statefulset")?;
    assert_eq!(sts["spec"]["replicas"], json!(3));
    let ledger = fake.get(MEMBERS).ok_or("no ledger")?;
    let members = ledger["data"]["members.toml"].as_str().unwrap_or_default();
    assert!(members.contains("\nconfig-2 = 3\n"), "{members}");
    assert_eq!(ledger["data"]["next-node-id"], json!("4"));

    let after = stored(&fake)?;
    let status = after.status.as_ref().ok_or("no status")?;
    assert_eq!((status.phase.as_deref(), status.observed_generation), (Some("Creating"), Some(1)));
    assert_eq!(status.effective_tuning.map(|t| t.heartbeat_ms), Some(PayloadClass::Small.tuning().heartbeat_ms));
    assert_eq!(condition(&after, "Progressing").map(|c| c.reason.as_str()), Some("Bootstrapping"));
    assert_eq!(condition(&after, "InvalidSpec").map(|c| c.status.as_str()), Some("False"));
    let events = fake.event_reasons();
    assert!(
        events.contains(&"TokenCreated".to_string()) && events.contains(&"MembersAllocated".to_string()),
        "{events:?}"
    );
    Ok(())
}

#[tokio::test]
async fn an_existing_token_and_ledger_are_kept() -> TestResult {
    let c = cluster(5);
    let (ctx, fake) = setup(&c)?;
    fake.seed(
        TOKEN,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "config-token", "namespace": NS},
        "data": {"token": "c2VjcmV0"}}),
    );
    // A ledger where config-2 was removed earlier and ids went up to 6.
    fake.seed(MEMBERS, json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "config-members", "namespace": NS,
        "ownerReferences": owned_by_config()},
        "data": {"members.toml": "bootstrap_peers = \"1=http://a:1\"\n[ids]\nconfig-0 = 1\nconfig-1 = 2\n", "next-node-id": "7"}}));
    reconcile(Arc::new(c), ctx).await?;
    assert!(!child_patches(&fake).contains(&TOKEN.to_string()), "the token Secret must not be rewritten");
    assert_eq!(fake.get(TOKEN).ok_or("token gone")?["data"]["token"], json!("c2VjcmV0"));
    let ledger = fake.get(MEMBERS).ok_or("no ledger")?;
    let members = ledger["data"]["members.toml"].as_str().unwrap_or_default();
    for line in ["\nconfig-0 = 1\n", "\nconfig-1 = 2\n", "\nconfig-2 = 7\n", "\nconfig-3 = 8\n", "\nconfig-4 = 9\n"] {
        assert!(members.contains(line), "{line} missing from {members}");
    }
    assert!(members.contains("bootstrap_peers = \"1=http://a:1\""), "bootstrap members are history: {members}");
    assert_eq!(ledger["data"]["next-node-id"], json!("10"));
    Ok(())
}

#[tokio::test]
async fn an_invalid_spec_changes_no_child_and_sets_invalid_spec() -> TestResult {
    let mut c = cluster(3);
    c.spec.tuning = Some(TuningOverrides { heartbeat_ms: Some(5000), ..TuningOverrides::default() });
    let (ctx, fake) = setup(&c)?;
    reconcile(Arc::new(c), ctx).await?;
    assert!(child_patches(&fake).is_empty(), "{:?}", child_patches(&fake));
    let after = stored(&fake)?;
    let inv = condition(&after, "InvalidSpec").ok_or("no InvalidSpec")?;
    assert_eq!((inv.status.as_str(), inv.reason.as_str()), ("True", "InvalidTuning"));
    assert!(inv.message.contains("spec.tuning.heartbeatMs violates heartbeat-below-election-min"), "{}", inv.message);
    assert!(inv.message.contains("5000"), "{}", inv.message);
    assert_eq!(after.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Invalid"));
    assert!(fake.event_reasons().contains(&"InvalidTuning".to_string()), "{:?}", fake.event_reasons());
    Ok(())
}

#[tokio::test]
async fn paused_changes_no_child() -> TestResult {
    let mut c = cluster(3);
    c.spec.paused = true;
    let (ctx, fake) = setup(&c)?;
    reconcile(Arc::new(c), ctx).await?;
    assert!(child_patches(&fake).is_empty(), "{:?}", child_patches(&fake));
    let after = stored(&fake)?;
    assert_eq!(after.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Paused"));
    assert_eq!(condition(&after, "Progressing").map(|c| c.reason.as_str()), Some("Paused"));
    Ok(())
}

/// What a running cluster has beside its StatefulSet: the token Secret and the member ledger
/// (without them the operator refuses to guess: `TokenLost`, `LedgerLost`).
fn seed_running(fake: &FakeApi, c: &ConfmanCluster, replicas: u32) -> TestResult {
    fake.seed(
        TOKEN,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "config-token", "namespace": NS},
        "data": {"token": "c2VjcmV0"}}),
    );
    let ledger = confman_operator::ledger::Ledger::bootstrap(c, replicas).config_map(c)?;
    fake.seed(MEMBERS, serde_json::to_value(&ledger)?);
    Ok(())
}

/// The controller reference the operator puts on every child of the cluster `config`.
fn owned_by_config() -> Value {
    json!([{"apiVersion": "confman.io/v1alpha1", "kind": "ConfmanCluster", "name": "config", "uid": "cmc-uid",
        "controller": true, "blockOwnerDeletion": true}])
}

fn ready_statefulset(replicas: i32, ready: i32) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "config", "namespace": NS, "generation": 1, "uid": "sts-uid", "ownerReferences": owned_by_config()},
        "spec": {"replicas": replicas, "serviceName": "config-peers", "selector": {}, "template": {}},
        "status": {"replicas": replicas, "readyReplicas": ready, "updatedReplicas": replicas,
            "currentRevision": "r1", "updateRevision": "r1", "observedGeneration": 1}})
}

#[tokio::test]
async fn ready_members_make_it_available_and_unchanged_conditions_keep_their_time() -> TestResult {
    let c = cluster(3);
    let (ctx, fake) = setup(&c)?;
    fake.seed(STS, ready_statefulset(3, 3));
    seed_running(&fake, &c, 3)?;
    reconcile(Arc::new(c), ctx.clone()).await?;
    let first = stored(&fake)?;
    let avail = condition(&first, "Available").ok_or("no Available")?.clone();
    assert_eq!((avail.status.as_str(), avail.reason.as_str()), ("True", "QuorumReady"));
    assert_eq!(first.status.as_ref().map(|s| (s.ready_replicas, s.phase.clone())), Some((3, Some("Running".into()))));

    fake.clear_requests();
    reconcile(Arc::new(first), ctx).await?;
    let second = stored(&fake)?;
    assert_eq!(condition(&second, "Available").map(|c| &c.last_transition_time), Some(&avail.last_transition_time));
    assert!(fake.event_reasons().iter().all(|r| r != "QuorumReady"), "no event without a transition");
    Ok(())
}

#[tokio::test]
async fn a_shrink_waits_for_the_raft_group() -> TestResult {
    let c = cluster(3);
    let (ctx, fake) = setup(&c)?;
    fake.seed(STS, ready_statefulset(5, 5));
    seed_running(&fake, &c, 5)?;
    reconcile(Arc::new(c), ctx).await?;
    assert_eq!(fake.get(STS).ok_or("no sts")?["spec"]["replicas"], json!(5), "no member leaves before Raft agrees");
    let after = stored(&fake)?;
    let p = condition(&after, "Progressing").ok_or("no Progressing")?;
    assert_eq!((p.status.as_str(), p.reason.as_str()), ("True", "WaitingForMembers"));
    assert!(p.message.contains("no Raft leader"), "{}", p.message);
    Ok(())
}

/// A failed apply is reported (Degraded, the error returned) and retried: the controller's
/// error policy requeues with a backoff that grows with each consecutive failure, a reconcile
/// after the fault is cleared applies the child and clears Degraded, and a success resets the
/// backoff.
#[tokio::test]
async fn an_api_failure_is_reported_as_degraded_and_retried_with_backoff() -> TestResult {
    let c = cluster(3);
    let (ctx, fake) = setup(&c)?;
    fake.fail(STS);
    let err =
        reconcile(Arc::new(c.clone()), ctx.clone()).await.err().ok_or("the failure must reach the error policy")?;
    assert!(err.to_string().contains("injected failure"), "{err}");
    let after = stored(&fake)?;
    let d = condition(&after, "Degraded").ok_or("no Degraded")?;
    assert_eq!((d.status.as_str(), d.reason.as_str()), ("True", "ApplyFailed"));
    assert!(d.message.contains("injected failure"), "{}", d.message);
    let p = condition(&after, "Progressing").ok_or("no Progressing")?;
    assert_eq!((p.status.as_str(), p.reason.as_str()), ("True", "Retrying"));
    assert!(ctx.metrics.render().contains("confman_operator_reconcile_failures_total 1\n"));
    // What the controller does with the error: requeue after the first backoff step.
    assert_eq!(error_policy(Arc::new(after.clone()), &err, ctx.clone()), Action::requeue(Duration::from_secs(5)));

    // Still failing: the next attempt fails again and waits longer.
    let err = reconcile(Arc::new(after.clone()), ctx.clone()).await.err().ok_or("the fault is still injected")?;
    assert!(ctx.metrics.render().contains("confman_operator_reconcile_failures_total 2\n"));
    assert_eq!(error_policy(Arc::new(after.clone()), &err, ctx.clone()), Action::requeue(Duration::from_secs(10)));
    assert!(fake.get(STS).is_none(), "no StatefulSet while its apply fails");

    // The fault clears: the retry applies the StatefulSet and the status recovers.
    fake.0.lock().map_err(|e| e.to_string())?.failing.clear();
    reconcile(Arc::new(after), ctx.clone()).await?;
    assert_eq!(fake.get(STS).ok_or("the retry did not apply the StatefulSet")?["spec"]["replicas"], json!(3));
    let recovered = stored(&fake)?;
    let d = condition(&recovered, "Degraded").ok_or("no Degraded")?;
    assert_eq!(d.status.as_str(), "False", "Degraded after a successful retry: {d:?}");
    let p = condition(&recovered, "Progressing").ok_or("no Progressing")?;
    assert_eq!(p.reason.as_str(), "Bootstrapping");
    assert_eq!(recovered.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Creating"));
    assert!(ctx.metrics.render().contains("confman_operator_reconcile_failures_total 2\n"), "no new failure");

    // A success resets the backoff: the next failure waits the first step again.
    fake.fail(STS);
    let err = reconcile(Arc::new(recovered.clone()), ctx.clone()).await.err().ok_or("the fault is injected again")?;
    assert_eq!(error_policy(Arc::new(recovered), &err, ctx), Action::requeue(Duration::from_secs(5)));
    Ok(())
}

const CLIENT_SVC: &str = "/api/v1/namespaces/platform/services/config";

fn service(owner_uid: Option<&str>, manager: &str) -> Value {
    let mut svc = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "config", "namespace": NS, "uid": "svc-uid",
            "managedFields": [{"manager": manager, "operation": "Update", "apiVersion": "v1"}]},
        "spec": {"ports": [{"port": 80}]}});
    if let Some(uid) = owner_uid {
        svc["metadata"]["ownerReferences"] = json!([{"apiVersion": "confman.io/v1alpha1", "kind": "ConfmanCluster",
            "name": "config", "uid": uid, "controller": true}]);
    }
    svc
}

/// Issue 19, defect 7: forced server-side apply took over a same-named object someone else
/// created. Such an object is refused (Degraded) and never applied over.
#[tokio::test]
async fn a_same_named_object_of_someone_else_is_not_taken_over() -> TestResult {
    let c = cluster(3);
    let (ctx, fake) = setup(&c)?;
    fake.seed(CLIENT_SVC, service(None, "kubectl-create"));
    let err = reconcile(Arc::new(c), ctx).await.err().ok_or("the take-over must be refused")?;
    assert!(err.to_string().contains("Service config exists and is not owned by this ConfmanCluster"), "{err}");
    assert!(err.to_string().contains("created by kubectl-create"), "{err}");
    assert!(!child_patches(&fake).contains(&CLIENT_SVC.to_string()), "never applied over someone else's object");
    assert!(fake.get(CLIENT_SVC).is_some_and(|s| s["metadata"].get("ownerReferences").is_none()), "left as it was");
    let degraded = stored(&fake)?;
    let d = condition(&degraded, "Degraded").ok_or("no Degraded")?;
    assert_eq!(d.status, "True");
    assert!(d.message.contains("not owned"), "{}", d.message);

    // Another controller's object is refused too.
    let c = cluster(3);
    let (ctx, fake) = setup(&c)?;
    fake.seed(CLIENT_SVC, service(Some("someone-elses-uid"), "confman-operator"));
    let err = reconcile(Arc::new(c), ctx).await.err().ok_or("another owner's object must be refused")?;
    assert!(err.to_string().contains("its controller is another object"), "{err}");
    Ok(())
}

/// Children of this cluster are applied over (forced: drift corrected), and so is an orphaned
/// child that only this operator ever managed (adopted, e.g. after `--cascade=orphan`).
#[tokio::test]
async fn owned_and_orphaned_children_of_ours_are_applied() -> TestResult {
    for seeded in [service(Some("cmc-uid"), "kubectl-edit"), service(None, "confman-operator")] {
        let c = cluster(3);
        let (ctx, fake) = setup(&c)?;
        fake.seed(CLIENT_SVC, seeded);
        reconcile(Arc::new(c), ctx).await?;
        let forced = fake.patches().into_iter().any(|p| p.path == CLIENT_SVC && p.query.contains("force=true"));
        assert!(forced, "the child was applied");
        let owner = fake.get(CLIENT_SVC).map(|s| s["metadata"]["ownerReferences"][0]["uid"].clone());
        assert_eq!(owner, Some(json!("cmc-uid")));
    }
    Ok(())
}

/// Issue 19, defect 6: during foreground deletion the operator re-applied the children the
/// garbage collector was removing. A cluster being deleted gets no request that changes
/// anything.
#[tokio::test]
async fn a_cluster_being_deleted_changes_nothing() -> TestResult {
    let mut c = cluster(3);
    c.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()));
    c.metadata.finalizers = Some(vec!["foregroundDeletion".into()]);
    let (ctx, fake) = setup(&c)?;
    fake.seed(STS, ready_statefulset(3, 3));
    let action = reconcile(Arc::new(c), ctx).await?;
    assert_eq!(action, Action::await_change());
    assert!(fake.patches().is_empty(), "{:?}", fake.patches().iter().map(|p| &p.path).collect::<Vec<_>>());
    Ok(())
}

/// Issue 19, defect 8: a missing token Secret was generated again while members ran with the
/// old token. With a StatefulSet (members exist) it is reported, never regenerated.
#[tokio::test]
async fn a_lost_token_secret_is_not_regenerated() -> TestResult {
    let c = cluster(3);
    let (ctx, fake) = setup(&c)?;
    fake.seed(STS, ready_statefulset(3, 3));
    let ledger = confman_operator::ledger::Ledger::bootstrap(&c, 3).config_map(&c)?;
    fake.seed(MEMBERS, serde_json::to_value(&ledger)?);
    let err = reconcile(Arc::new(c), ctx).await.err().ok_or("a lost token must be reported")?;
    assert!(err.to_string().contains("cluster token Secret config-token is missing"), "{err}");
    assert!(fake.get(TOKEN).is_none(), "no new token");
    assert!(child_patches(&fake).is_empty(), "nothing applied: {:?}", child_patches(&fake));
    Ok(())
}

/// Issue 19, defect 5: a lost member ledger was re-bootstrapped (ids 1..n handed out again).
/// With no node reporting (nothing runs here), it cannot be rebuilt: Degraded, and no ledger
/// is written.
#[tokio::test]
async fn a_lost_ledger_that_the_nodes_cannot_account_for_is_not_guessed() -> TestResult {
    let c = cluster(3);
    let (ctx, fake) = setup(&c)?;
    fake.seed(STS, ready_statefulset(3, 3));
    fake.seed(
        TOKEN,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "config-token", "namespace": NS},
        "data": {"token": "c2VjcmV0"}}),
    );
    let err = reconcile(Arc::new(c), ctx).await.err().ok_or("a lost ledger must be reported")?;
    assert!(err.to_string().contains("cannot be rebuilt from the nodes"), "{err}");
    assert!(fake.get(MEMBERS).is_none(), "no guessed ledger");
    let d = stored(&fake)?;
    let degraded = condition(&d, "Degraded").ok_or("no Degraded")?;
    assert!(degraded.message.contains("config-members"), "{}", degraded.message);
    Ok(())
}

/// Issue 19, defect 2: a changed `spec.storage.size` made every StatefulSet apply fail (422,
/// immutable volume claim template) before the budget and the membership step. The running
/// template is kept, the rest is applied, and Degraded names the field.
#[tokio::test]
async fn a_changed_storage_size_is_held_back_and_everything_else_applied() -> TestResult {
    let mut c = cluster(3);
    c.spec.image = "confman:2".into();
    let (ctx, fake) = setup(&c)?;
    let mut sts = ready_statefulset(3, 3);
    sts["spec"]["volumeClaimTemplates"] = json!([{"metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "5Gi"}}}}]);
    fake.seed(STS, sts);
    seed_running(&fake, &c, 3)?;
    reconcile(Arc::new(c), ctx).await?;
    let applied = fake.get(STS).ok_or("no sts")?;
    assert_eq!(applied["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"], json!("5Gi"));
    assert_eq!(applied["spec"]["template"]["spec"]["containers"][0]["image"], json!("confman:2"), "the rest applied");
    let after = stored(&fake)?;
    let d = condition(&after, "Degraded").ok_or("no Degraded")?;
    assert_eq!((d.status.as_str(), d.reason.as_str()), ("True", "StorageImmutable"));
    assert!(
        d.message.contains("spec.storage.size is 10Gi but the members' volumes were created with 5Gi"),
        "{}",
        d.message
    );
    assert!(child_patches(&fake).iter().any(|p| p.contains("poddisruptionbudgets")), "the budget is applied too");
    Ok(())
}

/// Review of issue 19: with the StatefulSet gone (deleted, or orphaned) but the ledger kept, the
/// bootstrap must not delete the members' claims — only claims on ordinals under ids no node
/// ever ran as a member are stale.
#[tokio::test]
async fn a_bootstrap_with_the_ledger_kept_deletes_no_claim() -> TestResult {
    let c = cluster(3);
    let (ctx, fake) = setup(&c)?;
    seed_running(&fake, &c, 3)?;
    let mut ledger = confman_operator::ledger::Ledger::bootstrap(&c, 3);
    ledger.admit((0..3u32).map(|o| (format!("config-{o}"), u64::from(o) + 1)));
    fake.seed(MEMBERS, serde_json::to_value(ledger.config_map(&c)?)?);
    for o in 0..3 {
        fake.seed(
            &format!("/api/v1/namespaces/platform/persistentvolumeclaims/data-config-{o}"),
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": format!("data-config-{o}"), "namespace": NS,
                    "labels": {"app.kubernetes.io/name": "confman", "app.kubernetes.io/instance": "config"}}}),
        );
    }
    reconcile(Arc::new(c), ctx).await?;
    let deletes: Vec<String> = fake.requests().into_iter().filter(|r| r.method == "DELETE").map(|r| r.path).collect();
    assert!(deletes.is_empty(), "no member's claim is deleted: {deletes:?}");
    assert!(fake.get(STS).is_some(), "the StatefulSet is created again");
    Ok(())
}

/// The credentials hash of the StatefulSet's pod template as the fake holds it.
fn credentials_hash(fake: &FakeApi) -> Result<String, Box<dyn std::error::Error>> {
    let sts = fake.get(STS).ok_or("no sts")?;
    let hash = &sts["spec"]["template"]["metadata"]["annotations"]["confman.io/credentials-hash"];
    Ok(hash.as_str().ok_or("no credentials hash in the pod template")?.to_string())
}

fn secret(name: &str, key: &str, value: &str) -> Value {
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::Secret;
    let mut s = Secret::default();
    s.metadata.name = Some(name.into());
    s.metadata.namespace = Some(NS.into());
    s.data = Some([(key.to_string(), ByteString(value.as_bytes().to_vec()))].into());
    let mut v = serde_json::to_value(&s).unwrap_or_default();
    v["apiVersion"] = json!("v1");
    v["kind"] = json!("Secret");
    v
}

/// Issue 19, defect 8b: the token and the API keys were not in the pod template hash, so a
/// deliberate rotation reached only the pods that happened to restart. Each edit of either
/// Secret now changes the template (the members are replaced one at a time through the safe
/// path) and says so in an Event; the operator never rewrites the token Secret itself.
#[tokio::test]
async fn a_token_or_api_keys_rotation_rolls_the_members() -> TestResult {
    const KEYS: &str = "/api/v1/namespaces/platform/secrets/confman-keys";
    let mut c = cluster(3);
    c.spec.auth =
        Some(confman_operator::crd::AuthSpec { api_keys_secret: Some("confman-keys".into()), ..Default::default() });
    let (ctx, fake) = setup(&c)?;
    fake.seed(STS, ready_statefulset(3, 3));
    seed_running(&fake, &c, 3)?;
    fake.seed(KEYS, secret("confman-keys", "keys.yaml", "keys: []\n"));
    let c = Arc::new(c);
    reconcile(c.clone(), ctx.clone()).await?;
    let first = credentials_hash(&fake)?;
    reconcile(c.clone(), ctx.clone()).await?;
    assert_eq!(credentials_hash(&fake)?, first, "unchanged Secrets keep the template");
    assert!(!fake.event_reasons().contains(&"CredentialsChanged".to_string()), "{:?}", fake.event_reasons());

    // Step one of a token rotation: the new token is added as accepted.
    fake.seed(TOKEN, secret("config-token", "token", "secret\nnew-secret\n"));
    reconcile(c.clone(), ctx.clone()).await?;
    let second = credentials_hash(&fake)?;
    assert_ne!(second, first, "a token edit changes the pod template");
    assert!(fake.event_reasons().contains(&"CredentialsChanged".to_string()), "{:?}", fake.event_reasons());
    assert!(!child_patches(&fake).contains(&TOKEN.to_string()), "the token Secret is never rewritten");

    // New API keys.
    fake.seed(KEYS, secret("confman-keys", "keys.yaml", "keys: [other]\n"));
    reconcile(c.clone(), ctx.clone()).await?;
    assert!(![first.as_str(), second.as_str()].contains(&credentials_hash(&fake)?.as_str()), "an API keys edit too");
    Ok(())
}

/// A blank token value would keep every member from starting: Degraded names the Secret, and
/// nothing is applied. A missing API keys Secret stops a new cluster the same way; a running
/// one keeps its pod template (no roll) while the rest is reconciled, and Degraded names it.
#[tokio::test]
async fn a_blank_token_or_a_missing_keys_secret_is_reported() -> TestResult {
    let mut c = cluster(3);
    let (ctx, fake) = setup(&c)?;
    fake.seed(STS, ready_statefulset(3, 3));
    seed_running(&fake, &c, 3)?;
    fake.seed(TOKEN, secret("config-token", "token", " \n"));
    let err = reconcile(Arc::new(c.clone()), ctx).await.err().ok_or("a blank token must be reported")?;
    assert!(err.to_string().contains("config-token holds no token"), "{err}");
    assert!(child_patches(&fake).is_empty(), "nothing applied: {:?}", child_patches(&fake));

    c.spec.auth =
        Some(confman_operator::crd::AuthSpec { api_keys_secret: Some("confman-keys".into()), ..Default::default() });
    let (ctx, fake) = setup(&c)?;
    let err = reconcile(Arc::new(c.clone()), ctx).await.err().ok_or("a missing keys Secret must be reported")?;
    assert!(err.to_string().contains("API keys Secret confman-keys: does not exist"), "{err}");
    let d = stored(&fake)?;
    assert!(condition(&d, "Degraded").is_some_and(|d| d.message.contains("confman-keys")), "{:?}", d.status);
    assert!(fake.get(STS).is_none(), "no StatefulSet whose pods could not start");

    let (ctx, fake) = setup(&c)?;
    let mut running = ready_statefulset(3, 3);
    running["spec"]["template"] = json!({"metadata": {"annotations": {"confman.io/credentials-hash": "running"}}});
    fake.seed(STS, running);
    seed_running(&fake, &c, 3)?;
    reconcile(Arc::new(c), ctx).await?;
    assert_eq!(credentials_hash(&fake)?, "running", "the running template's hash is kept: no roll");
    let after = stored(&fake)?;
    let d = condition(&after, "Degraded").ok_or("no Degraded")?;
    assert_eq!((d.status.as_str(), d.reason.as_str()), ("True", "ApiKeysSecretUnreadable"));
    assert!(d.message.contains("confman-keys"), "{}", d.message);
    assert!(child_patches(&fake).iter().any(|p| p.contains("poddisruptionbudgets")), "the rest is applied");
    Ok(())
}

/// Review of 8b: a rotation step made out of order leaves members that refuse the token the
/// operator presents; they used to look merely silent ("no Raft leader answers yet"). Members
/// answering 401 are named in Degraded with the way back. The members here are a listener that
/// answers every request with 401 (what a node says to an unknown token; the real node's answer
/// is tested in node/tests/cluster.rs).
#[tokio::test]
async fn members_refusing_the_presented_token_are_named() -> TestResult {
    let ip = std::net::Ipv4Addr::new(127, 83, rand_octet(), rand_octet());
    let listener = tokio::net::TcpListener::bind((ip, 8080)).await?;
    let refusing = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let body = r#"{"type":"about:blank","title":"Unauthorized","status":401,"detail":"the API key is not valid"}"#;
        let answer = format!(
            "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        while let Ok((mut conn, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf).await;
            let _ = conn.write_all(answer.as_bytes()).await;
        }
    });
    let c = cluster(3);
    let (client, fake) = FakeApi::start();
    fake.seed(CMC, serde_json::to_value(&c)?);
    let reporter = Reporter { controller: FIELD_MANAGER.into(), instance: Some("test".into()) };
    let mut ctx = Context::new(client, reporter, Arc::new(Metrics::default()));
    ctx.resolve =
        (0..3).map(|o| (format!("config-{o}.config-peers.platform.svc"), std::net::IpAddr::from(ip))).collect();
    fake.seed(STS, ready_statefulset(3, 3));
    seed_running(&fake, &c, 3)?;
    for o in 0..3 {
        fake.seed(
            &format!("/api/v1/namespaces/platform/pods/config-{o}"),
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("config-{o}"), "namespace": NS,
                "labels": {"app.kubernetes.io/name": "confman", "app.kubernetes.io/instance": "config"}}}),
        );
    }
    reconcile(Arc::new(c), Arc::new(ctx)).await?;
    refusing.abort();
    let after = stored(&fake)?;
    let d = condition(&after, "Degraded").ok_or("no Degraded")?;
    assert_eq!((d.status.as_str(), d.reason.as_str()), ("True", "TokenRefused"), "{}", d.message);
    assert!(d.message.contains("config-0, config-1, config-2 refuse the token"), "{}", d.message);
    assert!(d.message.contains("Secret config-token"), "{}", d.message);
    Ok(())
}

fn rand_octet() -> u8 {
    let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(7);
    (n % 250) as u8 + 1
}
