//! A pod simulator: the StatefulSet controller and kubelet for the fake API server. For each
//! StatefulSet it keeps pods `0..replicas` (objects in the store and a real `confman-node`
//! process each, with the template's args and env, ConfigMap/Secret volumes written to files and
//! one persistent volume directory per ordinal), restarts exited processes, recreates deleted
//! pods on the current template revision, removes pods above `replicas` (and their volumes when
//! the retention policy says Delete), deletes a volume whose PVC object is deleted, and reports
//! readiness from `/health/ready` into pod and StatefulSet status.
//!
//! Pod host names (`{pod}.{service}.{ns}.svc`) map to their own loopback addresses
//! (`127.B.C.{ordinal+1}`), passed to the nodes and the operator as `--resolve` overrides.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::process::{Child, Command};

use super::api::{ObjectKey, Store};

const CORE: &str = "/api/v1";
const APPS: &str = "/apis/apps/v1";
/// Port of the pods (the operator's node port).
const POD_PORT: u16 = 8080;

struct PodProc {
    child: Child,
    revision: String,
    ip: IpAddr,
    /// `http` or `https`, from the readiness probe's `httpGet.scheme`.
    scheme: &'static str,
}

/// What the simulator did, in order (for assertions on ordering).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SimEvent {
    /// A pod object was created (name, revision).
    Created(String, String),
    /// A pod was removed by a scale-down.
    ScaledAway(String),
    /// A deleted pod's process was stopped (recreation follows).
    Deleted(String),
    /// A volume directory was removed (PVC name).
    VolumeDeleted(String),
    /// A process exited on its own and was restarted.
    Restarted(String),
    /// A pod's volume was emptied while its process was down (a replaced disk).
    VolumeLost(String),
}

/// The simulator; dropping it stops every process.
pub struct PodSim {
    store: Store,
    binary: PathBuf,
    root: PathBuf,
    block: u8,
    procs: Mutex<BTreeMap<String, PodProc>>,
    /// Pods whose volume is emptied before their next restart.
    losing: Mutex<std::collections::BTreeSet<String>>,
    log: Mutex<Vec<SimEvent>>,
    http: reqwest::Client,
}

fn key(prefix: &str, ns: &str, plural: &str, name: &str) -> ObjectKey {
    ObjectKey { prefix: prefix.into(), namespace: ns.into(), plural: plural.into(), name: name.into() }
}

/// `$(VAR)` expansion as the kubelet does for env values.
fn expand(value: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = value.to_string();
    for (k, v) in env {
        out = out.replace(&format!("$({k})"), v);
    }
    out
}

impl PodSim {
    /// A simulator running `binary` for pods, with files under `root`; `block` (1–250) picks
    /// the loopback range `127.block.x.y`, unique per concurrently running test.
    pub fn new(store: Store, binary: &Path, root: &Path, block: u8) -> Arc<PodSim> {
        Arc::new(PodSim {
            store,
            binary: binary.to_path_buf(),
            root: root.to_path_buf(),
            block,
            procs: Mutex::default(),
            losing: Mutex::default(),
            log: Mutex::default(),
            // Like the kubelet's HTTPS probes: the certificate is not verified.
            http: confman_client::http_builder()
                .timeout(Duration::from_millis(800))
                .tls_danger_accept_invalid_certs(true)
                .build()
                .unwrap_or_default(),
        })
    }

    /// Loopback address of ordinal `ordinal` of StatefulSet number `set` (by name order).
    pub fn ip(&self, set: u8, ordinal: u32) -> IpAddr {
        IpAddr::from([127, self.block, set, u8::try_from(ordinal + 1).unwrap_or(255)])
    }

    /// Host-name overrides for a StatefulSet's pods (ordinals 0..9), for nodes and clients.
    pub fn resolve(&self, ns: &str, sts: &str, service: &str) -> Vec<(String, IpAddr)> {
        (0..9).map(|o| (format!("{sts}-{o}.{service}.{ns}.svc"), self.ip(1, o))).collect()
    }

    /// What happened so far.
    pub fn events(&self) -> Vec<SimEvent> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    fn record(&self, e: SimEvent) {
        if let Ok(mut l) = self.log.lock() {
            l.push(e);
        }
    }

    /// Node log of a pod.
    pub fn pod_log(&self, pod: &str) -> String {
        std::fs::read_to_string(self.root.join("pods").join(pod).join("node.log")).unwrap_or_default()
    }

    /// Volume directory of a pod's PVC.
    pub fn volume(&self, pod: &str) -> PathBuf {
        self.root.join("volumes").join(format!("data-{pod}"))
    }

    /// Kills a pod's process with SIGKILL (a crash); the simulator restarts it.
    pub fn crash(&self, pod: &str) {
        if let Some(proc_) = self.procs.lock().ok().as_mut().and_then(|p| p.get_mut(pod)) {
            let _ = proc_.child.start_kill();
        }
    }

    /// Crashes a pod and empties its volume before the restart, as when a node's disk is
    /// replaced: the pod comes back with the same name and claim and no data.
    pub fn lose_volume(&self, pod: &str) {
        if let Ok(mut l) = self.losing.lock() {
            l.insert(pod.to_string());
        }
        self.crash(pod);
    }

    /// Runs the control loop until the returned handle is aborted or the simulator dropped.
    pub fn start(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let sim = self.clone();
        tokio::spawn(async move {
            let mut rx = sim.store.subscribe();
            loop {
                sim.step().await;
                // React to changes at once; otherwise re-probe readiness a few times a second.
                let _ = tokio::time::timeout(Duration::from_millis(250), rx.changed()).await;
            }
        })
    }

    async fn step(&self) {
        for sts in self.store.list(APPS, "statefulsets", None, None) {
            self.sync_set(&sts).await;
        }
        self.sync_volumes();
    }

    fn sync_volumes(&self) {
        let Ok(entries) = std::fs::read_dir(self.root.join("volumes")) else { return };
        let running: Vec<String> = self.procs.lock().map(|p| p.keys().cloned().collect()).unwrap_or_default();
        for e in entries.flatten() {
            let pvc = e.file_name().to_string_lossy().to_string();
            let pod = pvc.trim_start_matches("data-").to_string();
            let exists = self
                .store
                .list(CORE, "persistentvolumeclaims", None, None)
                .iter()
                .any(|p| p["metadata"]["name"] == json!(pvc));
            if !exists && !running.contains(&pod) {
                let _ = std::fs::remove_dir_all(e.path());
                self.record(SimEvent::VolumeDeleted(pvc));
            }
        }
    }

    async fn sync_set(&self, sts: &Value) {
        let ns = sts["metadata"]["namespace"].as_str().unwrap_or_default().to_string();
        let name = sts["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let replicas = sts["spec"]["replicas"].as_u64().unwrap_or(1) as u32;
        let template = &sts["spec"]["template"];
        let revision = format!("{name}-{}", &hex::encode(Sha256::digest(template.to_string().as_bytes()))[..10]);
        let when_scaled =
            sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenScaled"].as_str().unwrap_or("Retain");

        // Pods above replicas: stop, delete, apply the retention policy.
        let pods = self.store.list(CORE, "pods", Some(&ns), None);
        for p in &pods {
            let pod = p["metadata"]["name"].as_str().unwrap_or_default().to_string();
            let Some(ord) = pod.strip_prefix(&format!("{name}-")).and_then(|o| o.parse::<u32>().ok()) else { continue };
            if ord >= replicas {
                self.stop(&pod, false).await;
                self.store.delete(&key(CORE, &ns, "pods", &pod));
                self.record(SimEvent::ScaledAway(pod.clone()));
                if when_scaled == "Delete" {
                    self.store.delete(&key(CORE, &ns, "persistentvolumeclaims", &format!("data-{pod}")));
                }
            }
        }
        // Ordinals 0..replicas: a pod object and a running process each.
        let mut ready = 0;
        let mut updated = 0;
        let mut existing = 0;
        for ord in 0..replicas {
            let pod = format!("{name}-{ord}");
            let pkey = key(CORE, &ns, "pods", &pod);
            let obj = self.store.get(&pkey);
            let running_rev = self.procs.lock().ok().and_then(|p| p.get(&pod).map(|x| x.revision.clone()));
            match (&obj, running_rev) {
                (None, Some(_)) => {
                    // Deleted (operator upgrade step or a test): stop, then recreate below.
                    self.stop(&pod, true).await;
                    self.record(SimEvent::Deleted(pod.clone()));
                    continue;
                }
                (None, None) => {
                    self.create_pod(sts, &ns, &name, ord, &revision).await;
                    continue;
                }
                (Some(o), None) => {
                    let rev =
                        o["metadata"]["labels"]["controller-revision-hash"].as_str().unwrap_or_default().to_string();
                    self.spawn(sts, &ns, &name, ord, &rev);
                }
                (Some(_), Some(_)) => self.restart_if_exited(sts, &ns, &name, ord),
            }
            existing += 1;
            let Some(o) = self.store.get(&pkey) else { continue };
            let rev = o["metadata"]["labels"]["controller-revision-hash"].as_str().unwrap_or_default();
            if rev == revision {
                updated += 1;
            }
            let is_ready = self.probe(&pod).await;
            if is_ready {
                ready += 1;
            }
            let was_ready = o["status"]["conditions"][0]["status"] == json!("True");
            if was_ready != is_ready {
                let st = json!({"phase": "Running", "podIP": self.ip(1, ord).to_string(),
                    "conditions": [{"type": "Ready", "status": if is_ready { "True" } else { "False" }}]});
                self.store.set_status(&pkey, st);
            }
        }
        let current_revision = if updated == existing { revision.clone() } else { format!("{name}-previous") };
        let status = json!({
            "observedGeneration": sts["metadata"]["generation"],
            "replicas": existing, "readyReplicas": ready, "updatedReplicas": updated, "currentReplicas": updated,
            "currentRevision": current_revision, "updateRevision": revision,
        });
        if sts.get("status") != Some(&status) {
            self.store.set_status(&key(APPS, &ns, "statefulsets", &name), status);
        }
    }

    async fn probe(&self, pod: &str) -> bool {
        let target = self.procs.lock().ok().and_then(|p| p.get(pod).map(|x| (x.scheme, x.ip)));
        let Some((scheme, ip)) = target else { return false };
        let url = format!("{scheme}://{ip}:{POD_PORT}/health/ready");
        matches!(self.http.get(url).send().await, Ok(r) if r.status().is_success())
    }

    async fn create_pod(&self, sts: &Value, ns: &str, name: &str, ord: u32, revision: &str) {
        let pod = format!("{name}-{ord}");
        let mut labels = sts["spec"]["template"]["metadata"]["labels"].clone();
        labels["controller-revision-hash"] = json!(revision);
        labels["statefulset.kubernetes.io/pod-name"] = json!(pod);
        let obj = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod, "namespace": ns, "labels": labels,
                "annotations": sts["spec"]["template"]["metadata"]["annotations"]},
            "spec": sts["spec"]["template"]["spec"]});
        let pvc = format!("data-{pod}");
        if self.store.get(&key(CORE, ns, "persistentvolumeclaims", &pvc)).is_none() {
            // A new claim is a new, empty volume (the old one went with its deleted claim).
            let _ = std::fs::remove_dir_all(self.volume(&pod));
            let claim = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": pvc, "namespace": ns, "labels": sts["spec"]["selector"]["matchLabels"]},
                "spec": sts["spec"]["volumeClaimTemplates"][0]["spec"]});
            self.store.put(key(CORE, ns, "persistentvolumeclaims", &pvc), claim);
        }
        self.store.put(key(CORE, ns, "pods", &pod), obj);
        self.record(SimEvent::Created(pod.clone(), revision.to_string()));
        self.spawn(sts, ns, name, ord, revision);
    }

    fn restart_if_exited(&self, sts: &Value, ns: &str, name: &str, ord: u32) {
        let pod = format!("{name}-{ord}");
        let exited = self
            .procs
            .lock()
            .ok()
            .and_then(|mut p| p.get_mut(&pod).map(|x| matches!(x.child.try_wait(), Ok(Some(_)))))
            .unwrap_or(false);
        if exited {
            let rev = self.procs.lock().ok().and_then(|mut p| p.remove(&pod).map(|x| x.revision)).unwrap_or_default();
            if self.losing.lock().is_ok_and(|mut l| l.remove(&pod)) {
                let volume = self.volume(&pod);
                let _ = std::fs::remove_dir_all(&volume);
                let _ = std::fs::create_dir_all(&volume);
                self.record(SimEvent::VolumeLost(pod.clone()));
            }
            self.record(SimEvent::Restarted(pod));
            self.spawn(sts, ns, name, ord, &rev);
        }
    }

    /// Stops a pod's process: SIGTERM and up to 30 s to exit (`graceful`), else SIGKILL.
    async fn stop(&self, pod: &str, graceful: bool) {
        let proc_ = self.procs.lock().ok().and_then(|mut p| p.remove(pod));
        let Some(mut proc_) = proc_ else { return };
        if graceful {
            if let Some(pid) = proc_.child.id() {
                let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
            }
            if tokio::time::timeout(Duration::from_secs(30), proc_.child.wait()).await.is_ok() {
                return;
            }
        }
        let _ = proc_.child.kill().await;
    }

    /// Starts the node process of a pod from the StatefulSet template.
    fn spawn(&self, sts: &Value, ns: &str, name: &str, ord: u32, revision: &str) {
        let pod = format!("{name}-{ord}");
        let ip = self.ip(1, ord);
        let pod_dir = self.root.join("pods").join(&pod);
        let spec = &sts["spec"]["template"]["spec"];
        let container = &spec["containers"][0];
        let service = sts["spec"]["serviceName"].as_str().unwrap_or_default();
        let volumes = spec["volumes"].as_array().cloned().unwrap_or_default();

        // Volumes: ConfigMaps and Secrets as files, emptyDirs, the PVC as a persistent dir.
        let mut mounts: Vec<(String, PathBuf)> = Vec::new();
        for m in container["volumeMounts"].as_array().into_iter().flatten() {
            let (vname, path) = (m["name"].as_str().unwrap_or_default(), m["mountPath"].as_str().unwrap_or_default());
            let host = match volumes.iter().find(|v| v["name"] == json!(vname)) {
                Some(v) if v.get("configMap").is_some() => {
                    let dir = pod_dir.join(vname);
                    let cm = self.store.get(&key(
                        CORE,
                        ns,
                        "configmaps",
                        v["configMap"]["name"].as_str().unwrap_or_default(),
                    ));
                    let _ = std::fs::create_dir_all(&dir);
                    for (k, val) in cm.as_ref().and_then(|c| c["data"].as_object()).into_iter().flatten() {
                        let _ = std::fs::write(dir.join(k), val.as_str().unwrap_or_default());
                    }
                    dir
                }
                Some(v) if v.get("secret").is_some() => {
                    let dir = pod_dir.join(vname);
                    let s = self.store.get(&key(
                        CORE,
                        ns,
                        "secrets",
                        v["secret"]["secretName"].as_str().unwrap_or_default(),
                    ));
                    let _ = std::fs::create_dir_all(&dir);
                    for (k, val) in s.as_ref().and_then(|c| c["data"].as_object()).into_iter().flatten() {
                        let bytes = base64::engine::general_purpose::STANDARD
                            .decode(val.as_str().unwrap_or_default())
                            .unwrap_or_default();
                        let _ = std::fs::write(dir.join(k), bytes);
                    }
                    dir
                }
                Some(_) => pod_dir.join(vname),
                None => self.volume(&pod),
            };
            let _ = std::fs::create_dir_all(&host);
            mounts.push((path.to_string(), host));
        }
        // Config files refer to mount paths: point them at the host directories, and listen on
        // the pod's own address.
        for (_, host) in &mounts {
            for f in std::fs::read_dir(host).into_iter().flatten().flatten() {
                if f.path().extension().is_some_and(|e| e == "toml") {
                    let text = std::fs::read_to_string(f.path()).unwrap_or_default();
                    let _ = std::fs::write(f.path(), rewrite_paths(&text, &mounts, ip));
                }
            }
        }
        let map_path = |arg: &str| {
            mounts
                .iter()
                .find_map(|(p, h)| arg.strip_prefix(p.as_str()).map(|rest| format!("{}{rest}", h.display())))
                .unwrap_or_else(|| arg.to_string())
        };
        let args: Vec<String> =
            container["args"].as_array().into_iter().flatten().filter_map(Value::as_str).map(map_path).collect();
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        for e in container["env"].as_array().into_iter().flatten() {
            let n = e["name"].as_str().unwrap_or_default().to_string();
            let v = if e["valueFrom"]["fieldRef"]["fieldPath"] == json!("metadata.name") {
                pod.clone()
            } else {
                expand(e["value"].as_str().unwrap_or_default(), &env)
            };
            env.insert(n, v);
        }
        let resolve =
            self.resolve(ns, name, service).iter().map(|(h, ip)| format!("{h}={ip}")).collect::<Vec<_>>().join(",");
        env.insert("CONFMAN_RESOLVE".into(), resolve);
        env.insert("RUST_LOG".into(), "info,openraft=warn".into());
        let log = std::fs::OpenOptions::new().create(true).append(true).open(pod_dir.join("node.log"));
        let stderr = log.map(Stdio::from).unwrap_or_else(|_| Stdio::null());
        let child = Command::new(&self.binary)
            .args(&args)
            .envs(&env)
            .current_dir(&pod_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn();
        match child {
            Ok(child) => {
                if let Ok(mut p) = self.procs.lock() {
                    let scheme = if container["readinessProbe"]["httpGet"]["scheme"] == json!("HTTPS") {
                        "https"
                    } else {
                        "http"
                    };
                    p.insert(pod, PodProc { child, revision: revision.to_string(), ip, scheme });
                }
            }
            Err(e) => tracing_free_log(&pod_dir, &format!("spawn failed: {e}")),
        }
    }
}

/// Rewrites quoted values that start with a mount path (longest match, once) to the host
/// directory, and `0.0.0.0:` listen addresses to the pod's address.
fn rewrite_paths(text: &str, mounts: &[(String, PathBuf)], ip: IpAddr) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let rewritten = match line.split_once("= \"") {
            Some((k, rest)) => {
                let value = rest.trim_end_matches('"');
                let best = mounts
                    .iter()
                    .filter(|(p, _)| value == p || value.starts_with(&format!("{p}/")))
                    .max_by_key(|(p, _)| p.len());
                let value = match best {
                    Some((p, h)) => format!("{}{}", h.display(), &value[p.len()..]),
                    None => value.replacen("0.0.0.0:", &format!("{ip}:"), 1),
                };
                format!("{k}= \"{value}\"")
            }
            None => line.to_string(),
        };
        out.push_str(&rewritten);
        out.push('\n');
    }
    out
}

fn tracing_free_log(dir: &Path, line: &str) {
    let _ = std::fs::write(dir.join("sim-error.log"), line);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_rewritten_once_by_longest_mount() {
        let mounts = vec![
            ("/tmp".to_string(), PathBuf::from("/x/pods/p/tmp")),
            ("/etc/confman/members".to_string(), PathBuf::from("/x/pods/p/members")),
        ];
        let text = "listen = \"0.0.0.0:8080\"\nmembers_file = \"/etc/confman/members/members.toml\"\nn = 5\n";
        let out = rewrite_paths(text, &mounts, IpAddr::from([127, 1, 1, 1]));
        assert_eq!(out, "listen = \"127.1.1.1:8080\"\nmembers_file = \"/x/pods/p/members/members.toml\"\nn = 5\n");
    }

    #[test]
    fn env_expansion() {
        let env = BTreeMap::from([("POD".to_string(), "c-1".to_string())]);
        assert_eq!(expand("http://$(POD).svc:8080", &env), "http://c-1.svc:8080");
    }
}
