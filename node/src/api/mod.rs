//! The HTTP API: client routes under `/api/v1`, health, metrics, and the internal
//! `/raft/*` routes from the raft module. Cross-cutting concerns are middleware: request
//! metrics, the `X-Confman-Revision` header, and transparent forwarding of writes to the
//! leader.

pub mod cluster;
pub mod data_lost;
pub mod entries;
pub mod forward;
pub mod health;
pub mod namespaces;
pub mod problem;
pub mod watch;
pub mod write_budget;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::handler::Handler;
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{MethodFilter, on};
use serde::Deserialize;

use self::problem::Problem;
use crate::auth::{Authenticator, Principal, Role, authorize};
use crate::metrics::Metrics;
use crate::raft::RaftNode;
use confman_contract::Tuning;

/// Header carrying the applied revision a response reflects.
pub const HEADER_REVISION: &str = "x-confman-revision";
/// Header carrying an entry's version.
pub const HEADER_VERSION: &str = "x-confman-version";

/// Everything a handler needs.
pub struct AppContext {
    /// The Raft node and its storage.
    pub node: Arc<RaftNode>,
    /// The API keys, the cluster token and the ServiceAccount rules every request is
    /// authenticated against.
    pub auth: Authenticator,
    /// Effective tuning (limits come from here).
    pub tuning: Tuning,
    /// Request counters and latencies for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// HTTP client used to forward writes to the leader.
    pub forward_client: reqwest::Client,
    /// Becomes true when the node shuts down (ends long-lived watch streams).
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// Bytes of client write bodies this node holds at once.
    pub write_budget: write_budget::WriteBudget,
}

/// How handlers receive the `AppContext` (axum state).
pub type Ctx = State<Arc<AppContext>>;

impl AppContext {
    /// Authenticates the request and checks role and namespace.
    pub async fn authorize(&self, headers: &HeaderMap, role: Role, ns: Option<&str>) -> Result<Principal, Problem> {
        let p = self.auth.authenticate(presented_key(headers)).await?;
        authorize(&p, role, ns)?;
        Ok(p)
    }

    /// Makes the read linearizable unless the client asked for stale reads.
    pub async fn read_barrier(&self, consistency: Option<&str>) -> Result<(), Problem> {
        match consistency {
            None | Some("linearizable") => {
                self.node.linearizable_barrier().await?;
                Ok(())
            }
            Some("stale") => Ok(()),
            Some(other) => Err(Problem::bad_request(
                "invalid-parameter",
                format!("consistency must be 'linearizable' or 'stale', got {other:?}"),
            )),
        }
    }
}

/// The API key from `Authorization: Bearer` or `X-Api-Key`.
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        return v.strip_prefix("Bearer ").map(str::trim);
    }
    headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::trim)
}

/// Query parameter shared by reads.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadQuery {
    /// `linearizable` (default) or `stale`.
    pub consistency: Option<String>,
}

/// Builds the client routes one (method, path) at a time and records each, so the list of what
/// is routed comes from the router itself (the OpenAPI test checks the document against it).
struct RouteTable {
    router: Router<Arc<AppContext>>,
    routes: Vec<(Method, &'static str)>,
}

impl RouteTable {
    fn on<H, T>(mut self, method: Method, filter: MethodFilter, path: &'static str, handler: H) -> Self
    where
        H: Handler<T, Arc<AppContext>>,
        T: 'static,
    {
        // Axum merges the method routers of repeated registrations of one path.
        self.router = self.router.route(path, on(filter, handler));
        self.routes.push((method, path));
        self
    }

    fn get<H: Handler<T, Arc<AppContext>>, T: 'static>(self, path: &'static str, handler: H) -> Self {
        self.on(Method::GET, MethodFilter::GET, path, handler)
    }

    fn put<H: Handler<T, Arc<AppContext>>, T: 'static>(self, path: &'static str, handler: H) -> Self {
        self.on(Method::PUT, MethodFilter::PUT, path, handler)
    }

    fn post<H: Handler<T, Arc<AppContext>>, T: 'static>(self, path: &'static str, handler: H) -> Self {
        self.on(Method::POST, MethodFilter::POST, path, handler)
    }

    fn delete<H: Handler<T, Arc<AppContext>>, T: 'static>(self, path: &'static str, handler: H) -> Self {
        self.on(Method::DELETE, MethodFilter::DELETE, path, handler)
    }
}

/// The client API, health and metrics routes (no state, fallback or middleware yet), with the
/// (method, path) of each as registered.
pub(crate) fn client_routes() -> (Router<Arc<AppContext>>, Vec<(Method, &'static str)>) {
    let t = RouteTable { router: Router::new(), routes: Vec::new() }
        .get("/api/v1/namespaces", namespaces::list)
        .get("/api/v1/namespaces/{ns}", namespaces::get)
        .put("/api/v1/namespaces/{ns}", namespaces::put)
        .delete("/api/v1/namespaces/{ns}", namespaces::delete)
        .get("/api/v1/namespaces/{ns}/config", entries::list)
        .get("/api/v1/namespaces/{ns}/config/{*key}", entries::get)
        .put("/api/v1/namespaces/{ns}/config/{*key}", entries::put)
        .delete("/api/v1/namespaces/{ns}/config/{*key}", entries::delete)
        .get("/api/v1/namespaces/{ns}/audit", namespaces::audit)
        .get("/api/v1/namespaces/{ns}/watch", watch::watch)
        .get("/api/v1/cluster", cluster::info)
        .post("/api/v1/cluster/members", cluster::add_learner)
        .post("/api/v1/cluster/members/{id}", cluster::promote)
        .delete("/api/v1/cluster/members/{id}", cluster::remove)
        .post("/api/v1/cluster/members/{id}/rejoin", cluster::allow_rejoin)
        .post("/api/v1/cluster/leader", cluster::transfer_leader)
        .post("/api/v1/cluster/snapshot", cluster::snapshot)
        .get("/api/v1/cluster/settings", cluster::get_settings)
        .put("/api/v1/cluster/settings", cluster::put_settings)
        .get("/api/v1/cluster/digest", cluster::digest)
        .get("/health", health::live)
        .get("/health/ready", health::ready)
        .get("/metrics", health::metrics)
        .get("/api/v1/openapi.json", openapi);
    (t.router, t.routes)
}

/// Builds the complete router.
pub fn router(ctx: Arc<AppContext>) -> Router {
    let (routes, _) = client_routes();
    let api = routes
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(ctx.clone(), forward::forward_writes_to_leader))
        .layer(middleware::from_fn_with_state(ctx.clone(), revision_header))
        .layer(middleware::from_fn_with_state(ctx.clone(), record_metrics))
        .with_state(ctx.clone());
    ctx.node.router().merge(api)
}

/// The OpenAPI 3 description of the client API (hand-maintained beside the routes above).
pub const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> Response {
    use axum::response::IntoResponse;
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn not_found() -> Problem {
    Problem::not_found("no-route", "no such endpoint")
}

async fn revision_header(State(ctx): Ctx, req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    if !resp.headers().contains_key(HEADER_REVISION) {
        resp.headers_mut().insert(HEADER_REVISION, HeaderValue::from(ctx.node.applied_revision()));
    }
    resp
}

async fn record_metrics(State(ctx): Ctx, req: Request, next: Next) -> Response {
    // Label values come from fixed sets (route templates, known methods), never from what an
    // unauthenticated client sends: `XYZ123 /health` is counted as method "other".
    let route = req.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_string();
    let method = crate::metrics::method_label(req.method()).to_string();
    let started = Instant::now();
    let resp = next.run(req).await;
    ctx.metrics.observe(&route, &method, resp.status().as_u16(), started.elapsed());
    resp
}

/// Query-string extractor whose rejection is a problem+json 400 naming the parameter.
pub struct Q<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for Q<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, Problem> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Q(q.0))
            .map_err(|e| Problem::bad_request("invalid-parameter", e.body_text()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// Whether a router path pattern matches a concrete (documented) path: `{x}` matches one
    /// segment, a trailing `{*x}` one or more.
    fn pattern_matches(pattern: &str, path: &str) -> bool {
        let (pat, segs): (Vec<&str>, Vec<&str>) = (pattern.split('/').collect(), path.split('/').collect());
        for (i, p) in pat.iter().enumerate() {
            if p.starts_with("{*") {
                return i == pat.len() - 1 && segs.len() > i;
            }
            match segs.get(i) {
                Some(s) if (p.starts_with('{') && !s.is_empty()) || p == s => {}
                _ => return false,
            }
        }
        pat.len() == segs.len()
    }

    /// The OpenAPI document describes exactly the routed client API: every (method, path) the
    /// router registers is documented with that method, and every documented operation is
    /// served by a route with that method (no stale or invented paths). The document is JSON.
    #[test]
    fn openapi_documents_exactly_the_routes() -> Result<(), serde_json::Error> {
        let doc: serde_json::Value = serde_json::from_str(super::OPENAPI)?;
        assert_eq!(doc["openapi"], "3.0.3");
        const METHODS: [&str; 8] = ["get", "put", "post", "delete", "patch", "head", "options", "trace"];
        let mut documented = BTreeSet::new();
        for (path, ops) in doc["paths"].as_object().into_iter().flatten() {
            for method in ops.as_object().into_iter().flat_map(|o| o.keys()).filter(|m| METHODS.contains(&m.as_str())) {
                documented.insert((method.clone(), path.clone()));
            }
        }
        let (_, routes) = super::client_routes();
        let routed: BTreeSet<(String, String)> =
            routes.iter().map(|(m, p)| (m.as_str().to_ascii_lowercase(), p.to_string())).collect();
        for (method, path) in &routed {
            // OpenAPI has no catch-all parameters: `{*key}` is documented as `{key}`.
            let doc_path = path.replace("{*", "{");
            assert!(
                documented.contains(&(method.clone(), doc_path.clone())),
                "{} {doc_path} is routed but not documented in openapi.json",
                method.to_uppercase()
            );
        }
        for (method, path) in &documented {
            assert!(
                routed.iter().any(|(m, p)| m == method && pattern_matches(p, path)),
                "{} {path} is documented in openapi.json but no route serves it",
                method.to_uppercase()
            );
        }
        Ok(())
    }

    #[test]
    fn route_patterns_match_documented_paths() {
        assert!(pattern_matches("/api/v1/namespaces/{ns}", "/api/v1/namespaces/{ns}"));
        assert!(pattern_matches("/a/{*key}", "/a/{key}/history"));
        assert!(!pattern_matches("/a/{*key}", "/a"));
        assert!(!pattern_matches("/a/{ns}", "/a/{ns}/watch"));
        assert!(!pattern_matches("/a/b", "/a/c"));
    }
}
