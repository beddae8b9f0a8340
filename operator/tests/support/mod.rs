//! A stateful stand-in for the Kubernetes API server behind a `tower-test` mock service: it
//! keeps objects by path, answers GET (404 Status when absent), server-side apply PATCH (on the
//! object or its `/status`), and Event POSTs, and records every request for assertions.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::{Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// HTTP method.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Query string.
    pub query: String,
    /// JSON body (Null when empty).
    pub body: Value,
}

/// Shared state of the fake.
#[derive(Default)]
pub struct State {
    /// Objects by path.
    pub objects: BTreeMap<String, Value>,
    /// Every request, in order.
    pub requests: Vec<Recorded>,
    /// Paths whose PATCH answers 500 (to exercise the failure path).
    pub failing: Vec<String>,

    next_version: u64,
}

/// Handle on the fake: seed objects, inspect requests.
#[derive(Clone, Default)]
pub struct FakeApi(pub Arc<Mutex<State>>);

fn status(code: StatusCode, reason: &str, message: String) -> Response<Body> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "reason": reason, "message": message, "code": code.as_u16()});
    respond(code, &body)
}

fn respond(code: StatusCode, body: &Value) -> Response<Body> {
    let mut r = Response::new(Body::from(body.to_string().into_bytes()));
    *r.status_mut() = code;
    r.headers_mut().insert("content-type", http::HeaderValue::from_static("application/json"));
    r
}

impl FakeApi {
    /// A kube client talking to a new fake (the serving task runs until the client is dropped).
    pub fn start() -> (kube::Client, FakeApi) {
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let fake = FakeApi::default();
        let state = fake.clone();
        tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                let resp = state.handle(req).await;
                send.send_response(resp);
            }
        });
        (kube::Client::new(svc, "default"), fake)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores an object at `path`.
    pub fn seed(&self, path: &str, obj: Value) {
        self.lock().objects.insert(path.to_string(), obj);
    }

    /// The object at `path`.
    pub fn get(&self, path: &str) -> Option<Value> {
        self.lock().objects.get(path).cloned()
    }

    /// Makes PATCHes of `path` fail with 500.
    pub fn fail(&self, path: &str) {
        self.lock().failing.push(path.to_string());
    }

    /// Requests received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().requests.clone()
    }

    /// PATCH requests (server-side applies) received so far.
    pub fn patches(&self) -> Vec<Recorded> {
        self.requests().into_iter().filter(|r| r.method == "PATCH").collect()
    }

    /// Reasons of the Events posted so far.
    pub fn event_reasons(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == "POST" && r.path.ends_with("/events"))
            .filter_map(|r| r.body.get("reason").and_then(Value::as_str).map(str::to_string))
            .collect()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        self.lock().requests.clear();
    }

    async fn handle(&self, req: Request<Body>) -> Response<Body> {
        let method = req.method().to_string();
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or_default().to_string();
        let bytes = match req.into_body().collect_bytes().await {
            Ok(b) => b,
            Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()),
        };
        let body: Value =
            if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
        let mut st = self.lock();
        st.requests.push(Recorded { method: method.clone(), path: path.clone(), query, body: body.clone() });
        match method.as_str() {
            "GET" => match st.objects.get(&path) {
                Some(obj) => respond(StatusCode::OK, obj),
                // A collection (plural resource name): list what is stored under it.
                None if path.ends_with('s')
                    && !path.rsplit('/').nth(1).is_some_and(|p| p.ends_with('s') && p != "namespaces") =>
                {
                    let prefix = format!("{path}/");
                    let items: Vec<Value> =
                        st.objects.iter().filter(|(k, _)| k.starts_with(&prefix)).map(|(_, v)| v.clone()).collect();
                    respond(
                        StatusCode::OK,
                        &json!({"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": items}),
                    )
                }
                None => status(StatusCode::NOT_FOUND, "NotFound", format!("{path} not found")),
            },
            "POST" if path.ends_with("/events") => respond(StatusCode::CREATED, &body),
            "PATCH" if st.failing.contains(&path) => {
                status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", "injected failure".into())
            }
            "PATCH" => {
                st.next_version += 1;
                let version = st.next_version.to_string();
                if let Some(object_path) = path.strip_suffix("/status") {
                    let Some(obj) = st.objects.get_mut(object_path) else {
                        return status(StatusCode::NOT_FOUND, "NotFound", format!("{object_path} not found"));
                    };
                    obj["status"] = body.get("status").cloned().unwrap_or(Value::Null);
                    obj["metadata"]["resourceVersion"] = json!(version);
                    return respond(StatusCode::OK, obj);
                }
                let mut obj = body;
                let (uid, kept_status, generation) = match st.objects.get(&path) {
                    Some(old) => (
                        old["metadata"]["uid"].clone(),
                        old.get("status").cloned(),
                        old["metadata"]["generation"].as_i64().unwrap_or(1),
                    ),
                    None => (json!(format!("uid-{version}")), None, 1),
                };
                obj["metadata"]["uid"] = uid;
                obj["metadata"]["resourceVersion"] = json!(version);
                obj["metadata"]["generation"] = json!(generation);
                if let Some(s) = kept_status {
                    obj["status"] = s;
                }
                st.objects.insert(path, obj.clone());
                respond(StatusCode::OK, &obj)
            }
            _ => status(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", format!("{method} {path}")),
        }
    }
}
