//! What a node serves when it refused to start because its volume was lost (an id that held a
//! place in the group, an empty data directory): no Raft, no data, only an explanation. Every
//! API call answers 503 `data-lost` naming the node id, so the operator (and a human with curl)
//! can tell it from a node that is merely starting; `/health` stays 200 so the kubelet does not
//! restart the pod in a loop while the operator replaces the member.

use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};

use super::problem::Problem;
use crate::raft::NodeId;

/// Problem type slug the operator looks for.
pub const SLUG: &str = "data-lost";

/// The router of a node in the data-lost state.
pub fn router(node_id: NodeId, detail: String) -> Router {
    let live = Json(serde_json::json!({ "status": SLUG, "nodeId": node_id }));
    Router::new().route("/health", get(move || async move { live.clone().into_response() })).fallback(move || {
        let p =
            Problem::new(StatusCode::SERVICE_UNAVAILABLE, SLUG, "Data lost", detail.clone()).with("nodeId", node_id);
        async move { p.into_response() }
    })
}
