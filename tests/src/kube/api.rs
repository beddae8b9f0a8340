//! A stateful stand-in for the Kubernetes API server, in process, on a loopback port: enough
//! of the REST API for the operator binary — get, list (label selectors), watch
//! (JSON lines, replayed from a resourceVersion), server-side apply and merge patch (objects and
//! `/status`), create, delete — for any namespaced kind, with resourceVersion, generation
//! (bumped on spec changes), uid and creationTimestamp, and field managers: an apply that would
//! change another manager's field without `force` gets 409 Conflict (what Lease-based leader
//! election relies on). A test can also make it misbehave ([`Fault`]: answer matching requests
//! with an error, or hold them unanswered) and read which requests arrived
//! ([`Store::requests`]). Not a validator: it trusts its callers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::watch;

/// Where an object lives: `{prefix}/namespaces/{ns}/{plural}/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObjectKey {
    /// `/api/v1` or `/apis/{group}/{version}`.
    pub prefix: String,
    /// Namespace.
    pub namespace: String,
    /// Resource (plural).
    pub plural: String,
    /// Name.
    pub name: String,
}

impl ObjectKey {
    /// The object's URL path.
    pub fn path(&self) -> String {
        format!("{}/namespaces/{}/{}/{}", self.prefix, self.namespace, self.plural, self.name)
    }
}

/// One change, as a watch event.
#[derive(Debug, Clone)]
pub struct Change {
    /// resourceVersion after the change.
    pub rv: u64,
    /// ADDED, MODIFIED or DELETED.
    pub kind: &'static str,
    /// The object's key.
    pub key: ObjectKey,
    /// The object (as of the change).
    pub object: Value,
}

/// What the stand-in does with the requests a [`Fault`] matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultAction {
    /// Answer with this status code (and a Status body), as an overloaded or broken server does.
    Fail(u16),
    /// Give no answer while the fault is in place (a request in flight); then serve it.
    Hold,
}

/// A rule for misbehaving: requests that match every field that is set get `action`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// HTTP method (`GET`, `PATCH`, …); any when None.
    pub method: Option<String>,
    /// Resource plural (`leases`, `statefulsets`, …); any when None.
    pub plural: Option<String>,
    /// Only list calls (GET of a collection, not a watch).
    pub lists_only: bool,
    /// What to do.
    pub action: FaultAction,
}

impl Fault {
    /// Every request gets `action`.
    pub fn all(action: FaultAction) -> Fault {
        Fault { method: None, plural: None, lists_only: false, action }
    }

    fn matches(&self, method: &Method, plural: &str, list: bool) -> bool {
        self.method.as_deref().is_none_or(|m| m.eq_ignore_ascii_case(method.as_str()))
            && self.plural.as_deref().is_none_or(|p| p == plural)
            && (!self.lists_only || list)
    }
}

/// One request the stand-in received.
#[derive(Debug, Clone)]
pub struct Request {
    /// HTTP method.
    pub method: String,
    /// URL path.
    pub path: String,
    /// Whether a [`FaultAction::Hold`] is keeping it unanswered (cleared once it is served).
    pub held: bool,
}

#[derive(Default)]
struct Inner {
    objects: BTreeMap<ObjectKey, Value>,
    log: Vec<Change>,
    rv: u64,
    /// Field managers: who set each leaf field of each object (see `managed`).
    owners: BTreeMap<ObjectKey, super::managed::Owners>,
    faults: Vec<Fault>,
    requests: Vec<Request>,
}

/// The object store behind the fake API server; also used directly by tests (reads, waits,
/// edits).
#[derive(Clone)]
pub struct Store {
    inner: Arc<Mutex<Inner>>,
    changed: watch::Sender<u64>,
    /// Bumped whenever the faults change: held requests re-check them, open watches end.
    faults_changed: watch::Sender<u64>,
}

impl Default for Store {
    fn default() -> Self {
        Store { inner: Arc::default(), changed: watch::channel(0).0, faults_changed: watch::channel(0).0 }
    }
}

/// Parsed request path.
struct Target {
    prefix: String,
    namespace: Option<String>,
    plural: String,
    name: Option<String>,
    status: bool,
}

fn parse(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (prefix, rest) = match *parts.first()? {
        "api" => (format!("/api/{}", parts.get(1)?), &parts[2..]),
        "apis" => (format!("/apis/{}/{}", parts.get(1)?, parts.get(2)?), &parts[3..]),
        _ => return None,
    };
    match rest {
        ["namespaces", ns, plural] => Some(Target {
            prefix,
            namespace: Some(ns.to_string()),
            plural: plural.to_string(),
            name: None,
            status: false,
        }),
        ["namespaces", ns, plural, name] => Some(Target {
            prefix,
            namespace: Some(ns.to_string()),
            plural: plural.to_string(),
            name: Some(name.to_string()),
            status: false,
        }),
        ["namespaces", ns, plural, name, "status"] => Some(Target {
            prefix,
            namespace: Some(ns.to_string()),
            plural: plural.to_string(),
            name: Some(name.to_string()),
            status: true,
        }),
        [plural] => Some(Target { prefix, namespace: None, plural: plural.to_string(), name: None, status: false }),
        _ => None,
    }
}

fn labels_match(obj: &Value, selector: Option<&str>) -> bool {
    let Some(sel) = selector.filter(|s| !s.is_empty()) else { return true };
    sel.split(',').all(|term| match term.split_once('=') {
        Some((k, v)) => obj["metadata"]["labels"][k.trim()].as_str() == Some(v.trim_start_matches('=').trim()),
        None => !obj["metadata"]["labels"][term.trim()].is_null(),
    })
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            if let Value::Object(t) = target {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

impl Store {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Current resourceVersion.
    pub fn revision(&self) -> u64 {
        self.lock().rv
    }

    /// A receiver that changes on every write (to await conditions without polling).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Records a new version of `key` (None: deleted) and notifies watchers.
    fn commit(&self, inner: &mut Inner, key: ObjectKey, obj: Option<Value>) -> Option<Value> {
        inner.rv += 1;
        let rv = inner.rv;
        let (kind, object) = match obj {
            Some(mut o) => {
                o["metadata"]["resourceVersion"] = json!(rv.to_string());
                let kind = if inner.objects.contains_key(&key) { "MODIFIED" } else { "ADDED" };
                inner.objects.insert(key.clone(), o.clone());
                (kind, o)
            }
            None => {
                let mut o = inner.objects.remove(&key)?;
                o["metadata"]["resourceVersion"] = json!(rv.to_string());
                ("DELETED", o)
            }
        };
        inner.log.push(Change { rv, kind, key, object: object.clone() });
        self.changed.send_replace(rv);
        Some(object)
    }

    /// The object at `key`.
    pub fn get(&self, key: &ObjectKey) -> Option<Value> {
        self.lock().objects.get(key).cloned()
    }

    /// Objects of a kind (`prefix`, `plural`), optionally in one namespace and matching labels.
    pub fn list(&self, prefix: &str, plural: &str, namespace: Option<&str>, selector: Option<&str>) -> Vec<Value> {
        self.lock()
            .objects
            .iter()
            .filter(|(k, v)| {
                k.prefix == prefix
                    && k.plural == plural
                    && namespace.is_none_or(|n| k.namespace == n)
                    && labels_match(v, selector)
            })
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Creates or replaces an object wholesale (keeps uid, creationTimestamp and status, bumps
    /// generation when `spec` changed).
    pub fn put(&self, key: ObjectKey, obj: Value) -> Value {
        let mut inner = self.lock();
        self.put_locked(&mut inner, key, obj)
    }

    fn put_locked(&self, inner: &mut Inner, key: ObjectKey, mut obj: Value) -> Value {
        let old = inner.objects.get(&key).cloned();
        match &old {
            Some(old) => {
                obj["metadata"]["uid"] = old["metadata"]["uid"].clone();
                obj["metadata"]["creationTimestamp"] = old["metadata"]["creationTimestamp"].clone();
                let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
                obj["metadata"]["generation"] =
                    json!(if old.get("spec") != obj.get("spec") { generation + 1 } else { generation });
                if let (None, Some(s)) = (obj.get("status"), old.get("status")) {
                    obj["status"] = s.clone();
                }
            }
            None => {
                obj["metadata"]["uid"] = json!(format!("uid-{}-{}", key.name, inner.rv + 1));
                obj["metadata"]["creationTimestamp"] = json!(jiff_now());
                obj["metadata"]["generation"] = json!(1);
            }
        }
        obj["metadata"]["name"] = json!(key.name);
        obj["metadata"]["namespace"] = json!(key.namespace);
        self.commit(inner, key, Some(obj)).unwrap_or(Value::Null)
    }

    /// Server-side apply of `body` by `manager`, atomically: refused with the conflicting field
    /// paths when it would change a field another manager set (unless `force`); otherwise the
    /// applied configuration replaces the object and `manager` owns its fields.
    pub fn apply(&self, key: ObjectKey, body: Value, manager: &str, force: bool) -> Result<Value, Vec<String>> {
        let mut inner = self.lock();
        let owners = inner.owners.get(&key).cloned().unwrap_or_default();
        if !force && let Some(old) = inner.objects.get(&key) {
            let conflicts = super::managed::conflicts(old, &body, &owners, manager);
            if !conflicts.is_empty() {
                return Err(conflicts);
            }
        }
        let owners = super::managed::take(owners, &body, manager);
        inner.owners.insert(key.clone(), owners);
        Ok(self.put_locked(&mut inner, key, body))
    }

    /// Applies a JSON merge patch to an object (or to its status); None when absent.
    pub fn patch(&self, key: &ObjectKey, patch: &Value, status_only: bool) -> Option<Value> {
        self.patch_as(key, patch, status_only, None)
    }

    /// A merge patch by `manager` (who then owns the fields it set), atomically: read, merge,
    /// write and ownership under one lock, as concurrent writers (two leader-election replicas)
    /// need.
    pub fn patch_as(&self, key: &ObjectKey, patch: &Value, status_only: bool, manager: Option<&str>) -> Option<Value> {
        let mut inner = self.lock();
        let old = inner.objects.get(key)?.clone();
        let mut new = old.clone();
        if status_only {
            let mut st = old.get("status").cloned().unwrap_or(json!({}));
            merge_patch(&mut st, patch.get("status").unwrap_or(&Value::Null));
            new["status"] = st;
            return self.commit(&mut inner, key.clone(), Some(new));
        }
        merge_patch(&mut new, patch);
        if let Some(m) = manager {
            let owners = inner.owners.remove(key).unwrap_or_default();
            inner.owners.insert(key.clone(), super::managed::take(owners, patch, m));
        }
        Some(self.put_locked(&mut inner, key.clone(), new))
    }

    /// Sets an object's status wholesale (what a status server-side apply by its only manager does).
    pub fn set_status(&self, key: &ObjectKey, status: Value) -> Option<Value> {
        let mut new = self.get(key)?;
        new["status"] = status;
        let mut inner = self.lock();
        self.commit(&mut inner, key.clone(), Some(new))
    }

    /// Deletes an object; returns it.
    pub fn delete(&self, key: &ObjectKey) -> Option<Value> {
        let mut inner = self.lock();
        inner.owners.remove(key);
        self.commit(&mut inner, key.clone(), None)
    }

    /// Changes after `rv` for a kind (and namespace), matching labels.
    fn changes_since(
        &self,
        rv: u64,
        prefix: &str,
        plural: &str,
        ns: Option<&str>,
        sel: Option<&str>,
    ) -> (Vec<Change>, u64) {
        let inner = self.lock();
        let start = inner.log.partition_point(|c| c.rv <= rv);
        let out = inner.log[start..]
            .iter()
            .filter(|c| {
                c.key.prefix == prefix
                    && c.key.plural == plural
                    && ns.is_none_or(|n| c.key.namespace == n)
                    && labels_match(&c.object, sel)
            })
            .cloned()
            .collect();
        (out, inner.rv)
    }

    /// Replaces the faults in place. Open watches end (as when an API server restarts), so
    /// watching clients come back and meet the new rules.
    pub fn set_faults(&self, faults: Vec<Fault>) {
        self.lock().faults = faults;
        self.faults_changed.send_modify(|n| *n += 1);
    }

    /// The requests received so far, in order of arrival.
    pub fn requests(&self) -> Vec<Request> {
        self.lock().requests.clone()
    }

    /// Records a request; returns its index in [`Store::requests`].
    fn record(&self, method: &Method, path: &str, held: bool) -> usize {
        let mut inner = self.lock();
        inner.requests.push(Request { method: method.to_string(), path: path.to_string(), held });
        let index = inner.requests.len() - 1;
        drop(inner);
        // Wakes `wait_for` callers waiting on requests (watch streams re-check and find nothing).
        self.changed.send_modify(|_| {});
        index
    }

    fn fault_for(&self, method: &Method, plural: &str, list: bool) -> Option<FaultAction> {
        self.lock().faults.iter().find(|f| f.matches(method, plural, list)).map(|f| f.action)
    }

    /// Waits until `check` holds (re-evaluated on every change), at most `within`.
    pub async fn wait_for<T>(
        &self,
        what: &str,
        within: Duration,
        mut check: impl FnMut(&Store) -> Option<T>,
    ) -> Result<T, String> {
        let mut rx = self.subscribe();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(v) = check(self) {
                return Ok(v);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(format!("store closed while waiting for {what}")),
                Err(_) => return Err(format!("timed out after {within:?} waiting for {what}")),
            }
        }
    }
}

fn jiff_now() -> String {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    // RFC 3339 in UTC from the Unix time, without a date library.
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, dd) = civil_from_days(i64::try_from(days).unwrap_or(0));
    format!("{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Days since 1970-01-01 → (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn status_body(code: StatusCode, reason: &str, message: String) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "reason": reason, "message": message, "code": code.as_u16()});
    (code, [("content-type", "application/json")], body.to_string()).into_response()
}

fn ok_json(v: &Value) -> Response {
    (StatusCode::OK, [("content-type", "application/json")], v.to_string()).into_response()
}

async fn handle(
    State(store): State<Store>,
    method: Method,
    uri: Uri,
    Query(q): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(t) = parse(uri.path()) else {
        return status_body(StatusCode::NOT_FOUND, "NotFound", format!("no route {}", uri.path()));
    };
    let watching = q.get("watch").is_some_and(|w| w == "true" || w == "1");
    let list = method == Method::GET && t.name.is_none() && !watching;
    let mut faults = store.faults_changed.subscribe();
    let mut held = None;
    loop {
        match store.fault_for(&method, &t.plural, list) {
            Some(FaultAction::Fail(code)) => {
                store.record(&method, uri.path(), false);
                let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                return status_body(code, "InternalError", format!("fault injected for {}", uri.path()));
            }
            Some(FaultAction::Hold) => {
                if held.is_none() {
                    held = Some(store.record(&method, uri.path(), true));
                }
                if faults.changed().await.is_err() {
                    return status_body(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", "shutting down".into());
                }
            }
            None => break,
        }
    }
    match held {
        Some(i) => {
            if let Some(r) = store.lock().requests.get_mut(i) {
                r.held = false;
            }
        }
        None => {
            store.record(&method, uri.path(), false);
        }
    }
    let selector = q.get("labelSelector").map(String::as_str);
    let key = |name: &str| ObjectKey {
        prefix: t.prefix.clone(),
        namespace: t.namespace.clone().unwrap_or_default(),
        plural: t.plural.clone(),
        name: name.to_string(),
    };
    let body_json: Value =
        if body.is_empty() { Value::Null } else { serde_json::from_slice(&body).unwrap_or(Value::Null) };
    match (method, t.name.as_deref()) {
        (Method::GET, None) if watching => {
            let from: u64 = q.get("resourceVersion").and_then(|r| r.parse().ok()).unwrap_or(0);
            let timeout = q.get("timeoutSeconds").and_then(|s| s.parse().ok()).unwrap_or(290u64);
            watch_stream(store, t, selector.map(str::to_string), from, Duration::from_secs(timeout.min(290)))
        }
        (Method::GET, None) => {
            let items = store.list(&t.prefix, &t.plural, t.namespace.as_deref(), selector);
            ok_json(&json!({"apiVersion": "v1", "kind": "List",
                "metadata": {"resourceVersion": store.revision().to_string()}, "items": items}))
        }
        (Method::GET, Some(name)) => match store.get(&key(name)) {
            Some(o) => ok_json(&o),
            None => status_body(StatusCode::NOT_FOUND, "NotFound", format!("{} {name} not found", t.plural)),
        },
        (Method::POST, None) => {
            let name = body_json["metadata"]["name"].as_str().map(str::to_string).unwrap_or_else(|| {
                format!("{}{}", body_json["metadata"]["generateName"].as_str().unwrap_or("obj-"), store.revision() + 1)
            });
            if store.get(&key(&name)).is_some() {
                return status_body(StatusCode::CONFLICT, "AlreadyExists", format!("{name} exists"));
            }
            let o = store.put(key(&name), body_json);
            (StatusCode::CREATED, [("content-type", "application/json")], o.to_string()).into_response()
        }
        (Method::PATCH, Some(name)) => {
            let ct = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
            let manager = q.get("fieldManager").map_or("unknown", String::as_str);
            let k = key(name);
            if ct.starts_with("application/apply-patch") {
                // Server-side apply by the only manager of these fields: the applied
                // configuration replaces the object's (or its status).
                if t.status {
                    return match store.set_status(&k, body_json.get("status").cloned().unwrap_or(Value::Null)) {
                        Some(o) => ok_json(&o),
                        None => status_body(StatusCode::NOT_FOUND, "NotFound", format!("{name} not found")),
                    };
                }
                let force = q.get("force").is_some_and(|f| f == "true");
                return match store.apply(k, body_json, manager, force) {
                    Ok(o) => ok_json(&o),
                    Err(fields) => status_body(
                        StatusCode::CONFLICT,
                        "Conflict",
                        format!("Apply failed with {} conflict(s): {}", fields.len(), fields.join(", ")),
                    ),
                };
            }
            match store.patch_as(&k, &body_json, t.status, Some(manager)) {
                Some(o) => ok_json(&o),
                None => status_body(StatusCode::NOT_FOUND, "NotFound", format!("{name} not found")),
            }
        }
        (Method::PUT, Some(name)) => ok_json(&store.put(key(name), body_json)),
        (Method::DELETE, Some(name)) => match store.delete(&key(name)) {
            Some(o) => ok_json(&o),
            None => status_body(StatusCode::NOT_FOUND, "NotFound", format!("{name} not found")),
        },
        (m, _) => status_body(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", format!("{m} {}", uri.path())),
    }
}

fn watch_stream(store: Store, t: Target, selector: Option<String>, from: u64, timeout: Duration) -> Response {
    let deadline = tokio::time::Instant::now() + timeout;
    let rx = store.subscribe();
    let mut faults = store.faults_changed.subscribe();
    faults.mark_unchanged();
    let state = (store, rx, from, std::collections::VecDeque::<Change>::new());
    let stream = futures::stream::unfold(state, move |(store, mut rx, mut cursor, mut pending)| {
        let mut faults = faults.clone();
        let (prefix, plural, ns, sel) = (t.prefix.clone(), t.plural.clone(), t.namespace.clone(), selector.clone());
        async move {
            loop {
                if let Some(c) = pending.pop_front() {
                    let line = json!({"type": c.kind, "object": c.object}).to_string() + "\n";
                    return Some((Ok::<_, std::io::Error>(Bytes::from(line)), (store, rx, cursor, pending)));
                }
                let (changes, now) = store.changes_since(cursor, &prefix, &plural, ns.as_deref(), sel.as_deref());
                cursor = now;
                if !changes.is_empty() {
                    pending.extend(changes);
                    continue;
                }
                tokio::select! {
                    r = tokio::time::timeout_at(deadline, rx.changed()) => match r {
                        Ok(Ok(())) => {}
                        _ => return None,
                    },
                    _ = faults.changed() => return None,
                }
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| status_body(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", "watch".into()))
}

/// A running fake API server.
pub struct FakeApiServer {
    /// Its object store.
    pub store: Store,
    /// Base URL (`http://127.0.0.1:PORT`).
    pub url: String,
    task: tokio::task::JoinHandle<()>,
}

impl FakeApiServer {
    /// Starts the server on a free loopback port.
    pub async fn start() -> std::io::Result<FakeApiServer> {
        let store = Store::default();
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let url = format!("http://{}", listener.local_addr()?);
        let app = Router::new().fallback(handle).with_state(store.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FakeApiServer { store, url, task })
    }

    /// A kube client for this server.
    pub fn client(&self) -> Result<kube::Client, kube::Error> {
        let url: Uri = self.url.parse().map_err(|e| kube::Error::Service(Box::new(e)))?;
        let mut config = kube::Config::new(url);
        config.default_namespace = "default".into();
        kube::Client::try_from(config)
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse() {
        let t = parse("/apis/apps/v1/namespaces/ns/statefulsets/web/status").map(|t| (t.prefix, t.name, t.status));
        assert_eq!(t, Some(("/apis/apps/v1".into(), Some("web".into()), true)));
        let t = parse("/apis/confman.io/v1alpha1/confmanclusters").map(|t| (t.plural, t.namespace));
        assert_eq!(t, Some(("confmanclusters".into(), None)));
    }

    #[test]
    fn merge_patch_follows_rfc7386() {
        let mut v = json!({"a": {"b": 1, "c": 2}, "d": [1]});
        merge_patch(&mut v, &json!({"a": {"b": null, "e": 3}, "d": [2]}));
        assert_eq!(v, json!({"a": {"c": 2, "e": 3}, "d": [2]}));
    }

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_418), (2025, 11, 26));
    }
}
