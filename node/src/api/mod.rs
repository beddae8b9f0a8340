//! The HTTP API (SPEC §2.2): client routes under `/api/v1`, health, metrics, and the internal
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

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use serde::Deserialize;

use self::problem::Problem;
use crate::auth::{KeyRing, Principal, Role, authorize};
use crate::metrics::Metrics;
use crate::raft::RaftNode;
use crate::tuning::Tuning;

/// Header carrying the applied revision a response reflects.
pub const HEADER_REVISION: &str = "x-confman-revision";
/// Header carrying an entry's version.
pub const HEADER_VERSION: &str = "x-confman-version";

/// Everything a handler needs.
pub struct AppContext {
    /// The Raft node and its storage.
    pub node: Arc<RaftNode>,
    /// Accepted API keys.
    pub keys: KeyRing,
    /// Effective tuning (limits come from here).
    pub tuning: Tuning,
    /// Superseded versions kept per key.
    pub history_depth: u64,
    /// Request metrics.
    pub metrics: Arc<Metrics>,
    /// HTTP client used to forward writes to the leader.
    pub forward_client: reqwest::Client,
    /// Becomes true when the node shuts down (ends long-lived watch streams).
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

/// Shared handler state.
pub type Ctx = State<Arc<AppContext>>;

impl AppContext {
    /// Authenticates the request and checks role and namespace.
    pub fn authorize(&self, headers: &HeaderMap, role: Role, ns: Option<&str>) -> Result<Principal, Problem> {
        let p = self.keys.authenticate(presented_key(headers))?;
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

/// Builds the complete router.
pub fn router(ctx: Arc<AppContext>) -> Router {
    let api = Router::new()
        .route("/api/v1/namespaces", get(namespaces::list))
        .route("/api/v1/namespaces/{ns}", get(namespaces::get).put(namespaces::put).delete(namespaces::delete))
        .route("/api/v1/namespaces/{ns}/config", get(entries::list))
        .route("/api/v1/namespaces/{ns}/config/{*key}", get(entries::get).put(entries::put).delete(entries::delete))
        .route("/api/v1/namespaces/{ns}/audit", get(namespaces::audit))
        .route("/api/v1/namespaces/{ns}/watch", get(watch::watch))
        .route("/api/v1/cluster", get(cluster::info))
        .route("/api/v1/cluster/members", post(cluster::add_learner))
        .route("/api/v1/cluster/members/{id}", post(cluster::promote).delete(cluster::remove))
        .route("/api/v1/cluster/members/{id}/rejoin", post(cluster::allow_rejoin))
        .route("/api/v1/cluster/leader", post(cluster::transfer_leader))
        .route("/api/v1/cluster/snapshot", post(cluster::snapshot))
        .route("/api/v1/cluster/digest", get(cluster::digest))
        .route("/health", get(health::live))
        .route("/health/ready", get(health::ready))
        .route("/metrics", get(health::metrics))
        .route("/api/v1/openapi.json", get(openapi))
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
    let route = req.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_string();
    let method = req.method().to_string();
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
    /// Every client route is described in the OpenAPI document, and the document is JSON.
    #[test]
    fn openapi_lists_every_route() -> Result<(), serde_json::Error> {
        let doc: serde_json::Value = serde_json::from_str(super::OPENAPI)?;
        let paths = doc["paths"].as_object().map(|p| p.keys().cloned().collect::<Vec<_>>()).unwrap_or_default();
        for route in [
            "/api/v1/namespaces",
            "/api/v1/namespaces/{ns}",
            "/api/v1/namespaces/{ns}/config",
            "/api/v1/namespaces/{ns}/config/{key}",
            "/api/v1/namespaces/{ns}/config/{key}/history",
            "/api/v1/namespaces/{ns}/audit",
            "/api/v1/namespaces/{ns}/watch",
            "/api/v1/cluster",
            "/api/v1/cluster/digest",
            "/api/v1/cluster/members",
            "/api/v1/cluster/members/{id}",
            "/api/v1/cluster/members/{id}/rejoin",
            "/api/v1/cluster/leader",
            "/api/v1/cluster/snapshot",
            "/health",
            "/health/ready",
            "/metrics",
        ] {
            assert!(paths.iter().any(|p| p == route), "{route} missing from openapi.json");
        }
        assert_eq!(doc["openapi"], "3.0.3");
        Ok(())
    }
}
