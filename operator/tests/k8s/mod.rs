//! Helpers for the scenarios on a real Kubernetes cluster (`scripts/k8s-e2e` starts it, loads
//! the images and installs the operator from the Helm chart as a user would).
//!
//! Every wait is on an event from the API (a watch through `await_condition` or a watcher
//! stream), bounded by a deadline that only turns a hang into a failure with a message.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use confman_operator::crd::{AuthSpec, ConfmanCluster};
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition as StatusCondition;
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::wait::{Condition, await_condition};
use kube::runtime::watcher::{self, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

pub type TestResult = Result<(), Box<dyn std::error::Error>>;
pub type BoxError = Box<dyn std::error::Error>;

/// The variable that overrides [`SLOW`].
const STEP_SECS_VAR: &str = "CONFMAN_E2E_STEP_SECS";

/// How long the cluster may take for a step that starts or replaces pods: 300 s, or
/// `CONFMAN_E2E_STEP_SECS` (a bound that turns a hang into a failure, not a speed target). A
/// value that is not a whole number of seconds is a mistake in the test's configuration and
/// panics, naming the variable.
pub static SLOW: std::sync::LazyLock<Duration> = std::sync::LazyLock::new(|| {
    let secs = match std::env::var(STEP_SECS_VAR) {
        Err(std::env::VarError::NotPresent) => 300,
        Err(e) => panic!("{STEP_SECS_VAR}: {e}"),
        Ok(s) => s.trim().parse::<u64>().unwrap_or_else(|e| panic!("{STEP_SECS_VAR}={s:?} is not whole seconds: {e}")),
    };
    Duration::from_secs(secs)
});

/// The node image under test and a second tag of it (an image change without a rebuild).
pub fn images() -> Result<(String, String), BoxError> {
    let image = std::env::var("CONFMAN_E2E_NODE_IMAGE").map_err(|_| "CONFMAN_E2E_NODE_IMAGE is not set")?;
    let next = std::env::var("CONFMAN_E2E_NODE_IMAGE_NEXT").map_err(|_| "CONFMAN_E2E_NODE_IMAGE_NEXT is not set")?;
    Ok((image, next))
}

/// Prefix of every scenario's namespace.
const NS_PREFIX: &str = "e2e-";

/// The namespace the chart installs the operator into (`scripts/k8s-e2e`).
pub const OPERATOR_NS: &str = "confman-system";

/// A namespace of its own for one scenario, with the API keys Secret the cluster uses.
pub struct Scenario {
    pub client: Client,
    pub ns: String,
    pub admin_key: String,
}

impl Scenario {
    /// Runs `body` in a fresh namespace `e2e-<name>`, then deletes the namespace and waits until
    /// it is gone, whatever the outcome: an error, a failed assertion (a panic, resumed after the
    /// cleanup) or success. When the body failed, the cluster's state is printed first (the
    /// namespace does not outlive the scenario).
    pub async fn run(name: &str, body: impl AsyncFnOnce(&Scenario) -> TestResult) -> TestResult {
        let s = Scenario::new(name).await?;
        let outcome = AssertUnwindSafe(body(&s)).catch_unwind().await;
        if !matches!(outcome, Ok(Ok(()))) {
            s.dump().await;
        }
        let cleaned = s.cleanup().await;
        match outcome {
            Err(panic) => {
                if let Err(e) = cleaned {
                    eprintln!("cleanup after the failure failed too: {e}");
                }
                std::panic::resume_unwind(panic)
            }
            Ok(Err(e)) => {
                if let Err(c) = cleaned {
                    eprintln!("cleanup after the failure failed too: {c}");
                }
                Err(e)
            }
            Ok(Ok(())) => cleaned,
        }
    }

    /// A fresh namespace `e2e-<name>`. Every namespace named `e2e-*` left behind (a run killed
    /// before its cleanup) is deleted first, and awaited: its pods would otherwise keep running
    /// next to this scenario's.
    pub async fn new(name: &str) -> Result<Scenario, BoxError> {
        let client = Client::try_default().await?;
        let ns = format!("{NS_PREFIX}{name}");
        let namespaces = Api::<Namespace>::all(client.clone());
        let leftovers: Vec<String> = namespaces
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .map(ResourceExt::name_any)
            .filter(|n| n.starts_with(NS_PREFIX))
            .collect();
        for n in &leftovers {
            eprintln!("deleting namespace {n}, left behind by an earlier run");
            delete_namespace(&namespaces, n).await?;
        }
        for n in &leftovers {
            namespace_gone(&namespaces, n).await?;
        }
        let mut n = Namespace::default();
        n.metadata.name = Some(ns.clone());
        namespaces.create(&PostParams::default(), &n).await?;
        let admin_key = format!("e2e-admin-{}", rand_suffix());
        let keys = format!("keys:\n  - name: e2e-admin\n    key: \"{admin_key}\"\n    roles: [admin]\n");
        let mut secret = Secret::default();
        secret.metadata.name = Some("confman-keys".into());
        secret.string_data = Some(BTreeMap::from([("keys.yaml".to_string(), keys)]));
        Api::<Secret>::namespaced(client.clone(), &ns).create(&PostParams::default(), &secret).await?;
        Ok(Scenario { client, ns, admin_key })
    }

    pub fn clusters(&self) -> Api<ConfmanCluster> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Any namespaced kind in this scenario's namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// `examples/kubernetes/small-3.yaml` as a user would apply it, in this scenario's
    /// namespace, with the image under test, a small volume and the keys Secret.
    pub async fn create_from_example(&self, replicas: i32, image: &str) -> Result<ConfmanCluster, BoxError> {
        let c = self.example(replicas, image)?;
        Ok(self.clusters().create(&PostParams::default(), &c).await?)
    }

    /// The example's object, not yet created, with the scenario's keys Secret as `spec.auth`.
    pub fn example(&self, replicas: i32, image: &str) -> Result<ConfmanCluster, BoxError> {
        let mut c = self.example_as_written(replicas, image)?;
        c.spec.auth = Some(AuthSpec { api_keys_secret: Some("confman-keys".into()), ..AuthSpec::default() });
        Ok(c)
    }

    /// The example's object as a user applies it (no `spec.auth`: the operator generates the
    /// admin key), with the image under test and a small volume.
    pub fn example_as_written(&self, replicas: i32, image: &str) -> Result<ConfmanCluster, BoxError> {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/kubernetes/small-3.yaml"))?;
        let mut c: ConfmanCluster = serde_yaml_ng::from_str(&text)?;
        c.metadata.namespace = Some(self.ns.clone());
        c.spec.replicas = replicas;
        c.spec.image = image.to_string();
        c.spec.storage.size = "1Gi".into();
        Ok(c)
    }

    /// Merge-patches the cluster's spec.
    pub async fn patch_spec(&self, name: &str, spec: serde_json::Value) -> Result<(), BoxError> {
        let patch = serde_json::json!({ "spec": spec });
        self.clusters().patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        Ok(())
    }

    /// Waits until the cluster reports, for its latest generation, `replicas` healthy voters,
    /// Available and not Progressing (see [`is_settled`]).
    pub async fn settled(&self, name: &str, replicas: usize) -> Result<ConfmanCluster, BoxError> {
        let what = format!("{}/{name} settled with {replicas} healthy voters", self.ns);
        self.cluster_where(name, &what, move |c| is_settled(c, replicas)).await
    }

    /// Waits (a watch on it, bounded by `SLOW`) until the cluster `name` satisfies `cond`.
    pub async fn cluster_where(
        &self,
        name: &str,
        what: &str,
        cond: impl Fn(&ConfmanCluster) -> bool + Send + 'static,
    ) -> Result<ConfmanCluster, BoxError> {
        let found = deadline(*SLOW, what, async {
            await_condition(self.clusters(), name, move |c: Option<&ConfmanCluster>| c.is_some_and(&cond)).await
        })
        .await??;
        found.ok_or_else(|| format!("{what}: the cluster was deleted").into())
    }

    /// A client for the cluster's client Service (its ClusterIP, reached through kube-proxy).
    pub async fn node_client(&self, name: &str) -> Result<confman_client::Client, BoxError> {
        self.node_client_with(name, &self.admin_key).await
    }

    /// The admin key the operator generated for cluster `name` (no `spec.auth`), read as
    /// README tells a person to: `.data.admin-key` of the Secret `<name>-admin`.
    pub async fn generated_admin_key(&self, name: &str) -> Result<String, BoxError> {
        let secret = Api::<Secret>::namespaced(self.client.clone(), &self.ns).get(&format!("{name}-admin")).await?;
        let key = secret.data.unwrap_or_default().remove("admin-key").ok_or("the admin Secret has no admin-key")?;
        Ok(String::from_utf8(key.0)?)
    }

    /// A client for the cluster's client Service presenting `key`.
    pub async fn node_client_with(&self, name: &str, key: &str) -> Result<confman_client::Client, BoxError> {
        let svc = Api::<Service>::namespaced(self.client.clone(), &self.ns).get(name).await?;
        let spec = svc.spec.ok_or("client Service has no spec")?;
        let ip = spec.cluster_ip.ok_or("client Service has no ClusterIP")?;
        let port = spec.ports.unwrap_or_default().first().map(|p| p.port).ok_or("client Service has no port")?;
        Ok(confman_client::Client::builder([format!("http://{ip}:{port}")], key.to_string())
            .retry_for(Duration::from_secs(30))
            .build()?)
    }

    /// The cluster's pods, by name.
    pub async fn pods_of(&self, name: &str) -> Result<Vec<Pod>, BoxError> {
        let lp = ListParams::default().labels(&format!("app.kubernetes.io/instance={name}"));
        let mut pods = self.pods().list(&lp).await?.items;
        pods.sort_by_key(|p| p.name_any());
        Ok(pods)
    }

    /// Deletes the namespace (and with it everything in it) and waits until it is gone.
    pub async fn cleanup(self) -> Result<(), BoxError> {
        let namespaces = Api::<Namespace>::all(self.client.clone());
        delete_namespace(&namespaces, &self.ns).await?;
        namespace_gone(&namespaces, &self.ns).await
    }

    /// Prints what a failure needs explaining: the clusters' status, the pods, the Events of
    /// the namespace and the end of the operator's log.
    async fn dump(&self) {
        eprintln!("--- state of namespace {} after the failure", self.ns);
        if let Ok(list) = self.clusters().list(&ListParams::default()).await {
            for c in list.items {
                let status = serde_json::to_string_pretty(&c.status).unwrap_or_default();
                eprintln!("cluster {} generation {:?}: {status}", c.name_any(), c.metadata.generation);
            }
        }
        if let Ok(list) = self.pods().list(&ListParams::default()).await {
            for p in list.items {
                let restarts: i32 = p
                    .status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .map_or(0, |cs| cs.iter().map(|c| c.restart_count).sum());
                eprintln!(
                    "pod {} uid {} ready {} image {:?} restarts {restarts} deleting {}",
                    p.name_any(),
                    p.uid().unwrap_or_default(),
                    pod_ready(&p),
                    pod_image(&p),
                    p.metadata.deletion_timestamp.is_some()
                );
            }
        }
        if let Ok(list) = self.api::<k8s_openapi::api::core::v1::Event>().list(&ListParams::default()).await {
            for e in list.items {
                eprintln!(
                    "event {} {} x{} from {:?}: {}",
                    e.involved_object.name.unwrap_or_default(),
                    e.reason.unwrap_or_default(),
                    e.count.unwrap_or(1),
                    e.source.and_then(|s| s.component),
                    e.message.unwrap_or_default()
                );
            }
        }
        let operators = Api::<Pod>::namespaced(self.client.clone(), OPERATOR_NS);
        if let Ok(list) = operators.list(&ListParams::default().labels(OPERATOR_LABELS)).await {
            for p in list.items {
                let lp = LogParams { tail_lines: Some(40), ..LogParams::default() };
                if let Ok(log) = operators.logs(&p.name_any(), &lp).await {
                    eprintln!("--- operator {} log (last 40 lines)\n{log}", p.name_any());
                }
            }
        }
    }
}

/// Labels of the operator's pods (the chart's Deployment).
pub const OPERATOR_LABELS: &str = "app.kubernetes.io/name=confman-operator";

/// Deletes a namespace; one already gone is fine.
async fn delete_namespace(namespaces: &Api<Namespace>, name: &str) -> Result<(), BoxError> {
    match namespaces.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.is_not_found() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Waits until a namespace is gone (its finalizer ran: everything in it was deleted).
async fn namespace_gone(namespaces: &Api<Namespace>, name: &str) -> Result<(), BoxError> {
    deadline(*SLOW, &format!("namespace {name} deleted"), async {
        await_condition(namespaces.clone(), name, |n: Option<&Namespace>| n.is_none()).await
    })
    .await??;
    Ok(())
}

/// The cluster's condition of `type_`.
pub fn condition<'a>(c: &'a ConfmanCluster, type_: &str) -> Option<&'a StatusCondition> {
    c.status.as_ref()?.conditions.iter().find(|x| x.type_ == type_)
}

pub fn condition_true(c: &ConfmanCluster, type_: &str) -> bool {
    condition(c, type_).is_some_and(|x| x.status == "True")
}

/// The operator has acted on the cluster's latest generation (`status.observedGeneration`, which
/// an applied or a refused spec sets and a paused one does not), the spec is valid, `replicas`
/// healthy voters, Available and not Progressing. A status written for an earlier spec never
/// qualifies, so waiting for this right after a patch cannot return the pre-patch state.
pub fn is_settled(c: &ConfmanCluster, replicas: usize) -> bool {
    let Some(s) = c.status.as_ref() else { return false };
    s.observed_generation.is_some()
        && s.observed_generation == c.metadata.generation
        && !condition_true(c, "InvalidSpec")
        && s.members.len() == replicas
        && s.members.iter().all(|m| m.healthy && m.role == "voter")
        && condition_true(c, "Available")
        && !condition_true(c, "Progressing")
        && c.spec.replicas == i32::try_from(replicas).unwrap_or(-1)
}

pub fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

pub fn pod_image(p: &Pod) -> Option<String> {
    p.spec.as_ref()?.containers.first()?.image.clone()
}

/// Awaits `f`, failing with `what` after `limit`.
pub async fn deadline<T>(limit: Duration, what: &str, f: impl Future<Output = T>) -> Result<T, BoxError> {
    tokio::time::timeout(limit, f).await.map_err(|_| format!("timed out after {limit:?} waiting for: {what}").into())
}

/// Waits for any condition on a pod (a watch on it).
pub async fn pod_condition(
    pods: &Api<Pod>,
    name: &str,
    what: &str,
    cond: impl Condition<Pod>,
) -> Result<Option<Pod>, BoxError> {
    Ok(deadline(*SLOW, what, await_condition(pods.clone(), name, cond)).await??)
}

/// Waits until `check` holds: it runs now and again after every event of one watch on `api`
/// (objects matching `labels`), created once before the first check so no change between a
/// check and the next wait is missed. For a condition on more than one object or kind, where
/// `await_condition` (one object) does not fit.
pub async fn wait_until<K, T>(
    api: Api<K>,
    labels: &str,
    what: &str,
    mut check: impl AsyncFnMut() -> Result<Option<T>, BoxError>,
) -> Result<T, BoxError>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let mut changes = std::pin::pin!(watcher(api, watcher::Config::default().labels(labels)).default_backoff());
    deadline(*SLOW, what, async {
        loop {
            if let Some(found) = check().await? {
                return Ok(found);
            }
            // Errors are retried by the watcher (with backoff); the next check re-reads anyway.
            if changes.next().await.is_none() {
                return Err::<T, BoxError>(format!("the watch for {what} ended").into());
            }
        }
    })
    .await?
}

fn rand_suffix() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let n = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{:x}{:x}", n, std::process::id())
}

/// The containerd id of `pod`'s (first) container and the socket of the test cluster's
/// containerd.
async fn container_of(pods: &Api<Pod>, pod: &str) -> Result<(String, String), BoxError> {
    let p = pods.get(pod).await?;
    let id = p
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref()?.first()?.container_id.clone())
        .ok_or_else(|| format!("{pod} has no running container"))?;
    let id = id.trim_start_matches("containerd://").to_string();
    let dir = std::env::var("CONFMAN_K8S_DIR").unwrap_or_else(|_| "/tmp/confman-k8s".into());
    Ok((id, format!("{dir}/containerd/containerd.sock")))
}

/// Runs `ctr` against the test cluster's containerd on the container of `pod` (`kill -s
/// SIGKILL`, `pause`, `resume`): faults the API cannot inject, done to the real runtime.
pub async fn container_task(pods: &Api<Pod>, pod: &str, args: &[&str]) -> Result<(), BoxError> {
    let (id, sock) = container_of(pods, pod).await?;
    let (verb, rest) = args.split_first().ok_or("no ctr task verb")?;
    let out = tokio::process::Command::new("ctr")
        .args(["--address", &sock, "-n", "k8s.io", "tasks", verb])
        .args(rest)
        .arg(&id)
        .output()
        .await?;
    if !out.status.success() {
        return Err(format!("ctr tasks {verb} {pod}: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(())
}

/// Runs `cmd` in `pod`'s (first) container through containerd (`ctr tasks exec`) and returns
/// its standard output: what a process in the pod sees (a projected token, say).
pub async fn container_output(pods: &Api<Pod>, pod: &str, cmd: &[&str]) -> Result<String, BoxError> {
    let (id, sock) = container_of(pods, pod).await?;
    let exec_id = format!("e2e-{}", rand_suffix());
    let out = tokio::process::Command::new("ctr")
        .args(["--address", &sock, "-n", "k8s.io", "tasks", "exec", "--exec-id", &exec_id, &id])
        .args(cmd)
        .output()
        .await?;
    if !out.status.success() {
        return Err(format!("ctr tasks exec {pod} {cmd:?}: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// Sends `signal` (e.g. `STOP`, `CONT`) to the main process of `pod`'s container, found
/// through containerd (`ctr tasks ls`): a member that hangs without exiting.
pub async fn signal_container(pods: &Api<Pod>, pod: &str, signal: &str) -> Result<(), BoxError> {
    let (id, sock) = container_of(pods, pod).await?;
    let out =
        tokio::process::Command::new("ctr").args(["--address", &sock, "-n", "k8s.io", "tasks", "ls"]).output().await?;
    let listing = String::from_utf8_lossy(&out.stdout);
    let pid = listing
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some(id.as_str())).then(|| f.next().map(str::to_string)).flatten()
        })
        .ok_or_else(|| format!("no containerd task for {pod}"))?;
    let status = tokio::process::Command::new("kill").arg(format!("-{signal}")).arg(&pid).status().await?;
    if !status.success() {
        return Err(format!("kill -{signal} {pid} ({pod}) failed").into());
    }
    Ok(())
}

/// The directory on this machine backing the volume of `claim` (a hostPath PV).
pub async fn volume_dir(client: &Client, ns: &str, claim: &str) -> Result<std::path::PathBuf, BoxError> {
    use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
    let pvc = Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns).get(claim).await?;
    let pv_name = pvc.spec.and_then(|s| s.volume_name).ok_or("claim is not bound")?;
    let pv = Api::<PersistentVolume>::all(client.clone()).get(&pv_name).await?;
    let path = pv.spec.and_then(|s| s.host_path).map(|h| h.path).ok_or("volume is not a hostPath")?;
    Ok(path.into())
}

/// Member id by pod name, from the cluster's status.
pub fn member_ids(c: &ConfmanCluster) -> BTreeMap<String, u64> {
    c.status.iter().flat_map(|s| s.members.iter().map(|m| (m.pod.clone(), m.id))).collect()
}

/// Asks the eviction API (policy/v1beta1 on 1.20, as `kubectl drain` does) to evict `pod`;
/// returns the HTTP status. Sent with a plain HTTP client: kube's client retries a 429 until it
/// succeeds, and the refusal is what this asks about.
pub async fn evict(ns: &str, pod: &str) -> Result<u16, BoxError> {
    let config = kube::Config::infer().await?;
    let path = std::env::var("KUBECONFIG").map_err(|_| "KUBECONFIG is not set")?;
    let kubeconfig: serde_json::Value = serde_yaml_ng::from_str(&std::fs::read_to_string(path)?)?;
    let token = kubeconfig["users"][0]["user"]["token"].as_str().ok_or("the kubeconfig has no token")?.to_string();
    confman_client::install_crypto_provider();
    let mut http = reqwest::Client::builder();
    for der in config.root_cert.unwrap_or_default() {
        http = http.add_root_certificate(reqwest::Certificate::from_der(&der)?);
    }
    let body = serde_json::json!({
        "apiVersion": "policy/v1beta1",
        "kind": "Eviction",
        "metadata": { "name": pod, "namespace": ns },
    });
    let url = format!("{}api/v1/namespaces/{ns}/pods/{pod}/eviction", config.cluster_url);
    let resp = http.build()?.post(url).bearer_auth(token).json(&body).send().await?;
    Ok(resp.status().as_u16())
}
