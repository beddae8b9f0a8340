//! Liveness, readiness and Prometheus metrics (no authentication, as probes and scrapers
//! expect).

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::Ctx;

/// `GET /health`: the process is up.
pub async fn live() -> Response {
    Json(serde_json::json!({ "status": "ok" })).into_response()
}

/// `GET /health/ready`: 200 when a leader is known and this node applied all it knows to be
/// committed; 503 otherwise. The body carries role, leader, term and indexes either way.
pub async fn ready(ctx: Ctx) -> Response {
    let status = ctx.node.status();
    let code = if ctx.node.is_ready() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(status)).into_response()
}

/// `GET /metrics`.
pub async fn metrics(ctx: Ctx) -> Response {
    let body = ctx.metrics.render(&ctx.node.status(), &ctx.write_budget, ctx.node.disk());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}
