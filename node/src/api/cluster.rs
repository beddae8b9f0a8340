//! Cluster endpoints: status (members, leader, term, indexes, snapshot, tuning), cluster-wide
//! settings, and the admin operations the operator uses: add learner, promote, remove,
//! transfer leadership, snapshot.

use axum::Json;
use axum::body::Body;
use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::entries::read_json_body;
use super::problem::Problem;
use super::{AppContext, Ctx};
use crate::auth::{Principal, Role};
use crate::command::{Command, CommandOutcome, Operation};
use crate::model::now_ms;
use crate::raft::{ClusterStatus, NodeId};
use crate::store::{apply, audit_retention, request_blocking};
use confman_contract::Tuning;

/// The highest history depth an admin may set (every key may then keep this many versions).
pub const MAX_HISTORY_DEPTH: u64 = 1000;

/// The highest audit retention an admin may set (events per namespace).
pub const MAX_AUDIT_RETENTION: u64 = 10_000_000;

/// Cluster administration needs an admin key that is not limited to some namespaces.
async fn admin(ctx: &AppContext, headers: &HeaderMap) -> Result<Principal, Problem> {
    let p = ctx.authorize(headers, Role::Admin, None).await?;
    if !p.is_unscoped() {
        return Err(crate::auth::AuthError::Forbidden(format!(
            "{:?} is limited to some namespaces or roles; cluster administration needs admin over namespaces [\"*\"]",
            p.name
        ))
        .into());
    }
    Ok(p)
}

fn parse_id(raw: &str) -> Result<NodeId, Problem> {
    raw.parse()
        .map_err(|_| Problem::bad_request("invalid-parameter", format!("node id must be an integer, got {raw:?}")))
}

/// The body of `GET /api/v1/cluster`: the node's view of the Raft group, plus the settings
/// it runs with, so an operator or a dashboard gets both in one call.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterInfo {
    /// Members, leader, term, indexes and snapshot figures (the fields sit at the top level).
    #[serde(flatten)]
    pub status: ClusterStatus,
    /// The tuning this node runs with (limits and timeouts).
    pub tuning: Tuning,
    /// The history depth this node applies writes with.
    pub history_depth: u64,
}

/// `GET /api/v1/cluster`.
pub async fn info(ctx: Ctx, headers: HeaderMap) -> Result<Response, Problem> {
    ctx.authorize(&headers, Role::Viewer, None).await?;
    let status = ctx.node.status();
    let history_depth = cluster_history_depth(&ctx).await?;
    Ok(Json(ClusterInfo { status, tuning: ctx.tuning, history_depth }).into_response())
}

/// The history depth this node applies writes with (the cluster's, as applied here).
pub async fn cluster_history_depth(ctx: &AppContext) -> Result<u64, Problem> {
    let db = ctx.node.db().clone();
    Ok(request_blocking(move || apply::history_depth(&db)).await?)
}

/// Body of a settings change.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SettingsBody {
    history_depth: Option<u64>,
    audit_retention: Option<u64>,
}

/// The cluster-wide settings as this node applied them.
async fn settings_view(ctx: &AppContext) -> Result<serde_json::Value, Problem> {
    let db = ctx.node.db().clone();
    let (depth, retention) =
        request_blocking(move || Ok((apply::history_depth(&db)?, audit_retention::audit_retention(&db)?))).await?;
    Ok(serde_json::json!({ "historyDepth": depth, "auditRetention": retention }))
}

/// `GET /api/v1/cluster/settings`: the cluster-wide settings.
pub async fn get_settings(ctx: Ctx, headers: HeaderMap) -> Result<Response, Problem> {
    ctx.authorize(&headers, Role::Viewer, None).await?;
    Ok(Json(settings_view(&ctx).await?).into_response())
}

/// `PUT /api/v1/cluster/settings` `{"historyDepth": N, "auditRetention": M}`: changes
/// cluster-wide settings through the log, so every replica applies them at the same index. A
/// lower depth trims each key's history on its next write; a lower retention trims a
/// namespace's audit log on its next change.
pub async fn put_settings(ctx: Ctx, headers: HeaderMap, body: Body) -> Result<Response, Problem> {
    let p = admin(&ctx, &headers).await?;
    let Some(b): Option<SettingsBody> = read_json_body(&ctx, &headers, body, false).await? else {
        return Err(Problem::bad_request("malformed-json", "a body {\"historyDepth\": N} is required"));
    };
    if b.history_depth.is_none() && b.audit_retention.is_none() {
        return Err(Problem::bad_request("invalid-setting", "nothing to change: send historyDepth or auditRetention"));
    }
    if let Some(depth) = b.history_depth
        && depth > MAX_HISTORY_DEPTH
    {
        return Err(Problem::bad_request(
            "invalid-setting",
            format!("historyDepth must be at most {MAX_HISTORY_DEPTH}, got {depth}"),
        ));
    }
    if let Some(events) = b.audit_retention
        && !(audit_retention::MIN_AUDIT_RETENTION..=MAX_AUDIT_RETENTION).contains(&events)
    {
        return Err(Problem::bad_request(
            "invalid-setting",
            format!(
                "auditRetention must be {}..={MAX_AUDIT_RETENTION} events per namespace, got {events}",
                audit_retention::MIN_AUDIT_RETENTION
            ),
        ));
    }
    let op = Operation::SetSettings { history_depth: b.history_depth, audit_retention: b.audit_retention };
    let rev = match ctx.node.write(Command { actor: p.name, at_ms: now_ms(), op }).await? {
        (CommandOutcome::SettingApplied { .. }, rev) => rev,
        (other, _) => return Err(Problem::internal(format!("unexpected outcome {other:?}"))),
    };
    let mut body = settings_view(&ctx).await?;
    body["revision"] = rev.into();
    Ok(([(super::HEADER_REVISION, rev.to_string())], Json(body)).into_response())
}

/// Body of an add-learner request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    id: NodeId,
    address: String,
}

/// `POST /api/v1/cluster/members` `{id, address}`: add a learner; returns once it caught up.
pub async fn add_learner(ctx: Ctx, headers: HeaderMap, body: Body) -> Result<Response, Problem> {
    admin(&ctx, &headers).await?;
    let Some(m): Option<AddMember> = read_json_body(&ctx, &headers, body, false).await? else {
        return Err(Problem::bad_request("malformed-json", "a body {\"id\": N, \"address\": URL} is required"));
    };
    if !(m.address.starts_with("http://") || m.address.starts_with("https://")) {
        return Err(Problem::bad_request(
            "invalid-address",
            format!("address must be an http(s) URL, got {:?}", m.address),
        ));
    }
    if ctx.node.status().members.iter().any(|x| x.id == m.id) {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "member-exists",
            "Member exists",
            format!("node {} is already a member", m.id),
        ));
    }
    ctx.node.add_learner(m.id, m.address.trim_end_matches('/').to_string()).await?;
    Ok((StatusCode::CREATED, Json(ctx.node.status())).into_response())
}

/// `POST /api/v1/cluster/members/{id}`: promote a learner to voter.
pub async fn promote(ctx: Ctx, Path(id): Path<String>, headers: HeaderMap) -> Result<Response, Problem> {
    admin(&ctx, &headers).await?;
    let id = parse_id(&id)?;
    if !ctx.node.status().members.iter().any(|x| x.id == id) {
        return Err(Problem::not_found(
            "member-not-found",
            format!("node {id} is not a member; add it as a learner first"),
        ));
    }
    ctx.node.promote(id).await?;
    Ok(Json(ctx.node.status()).into_response())
}

/// `DELETE /api/v1/cluster/members/{id}`: remove a voter or learner.
pub async fn remove(ctx: Ctx, Path(id): Path<String>, headers: HeaderMap) -> Result<Response, Problem> {
    admin(&ctx, &headers).await?;
    let id = parse_id(&id)?;
    if !ctx.node.status().members.iter().any(|x| x.id == id) {
        return Err(Problem::not_found("member-not-found", format!("node {id} is not a member")));
    }
    ctx.node.remove(id).await?;
    Ok(Json(ctx.node.status()).into_response())
}

/// `POST /api/v1/cluster/members/{id}/rejoin`: after node `id` lost its data (disk
/// replaced), let it rejoin under the same id; the leader resets replication to it once.
pub async fn allow_rejoin(ctx: Ctx, Path(id): Path<String>, headers: HeaderMap) -> Result<Response, Problem> {
    admin(&ctx, &headers).await?;
    let id = parse_id(&id)?;
    if !ctx.node.status().members.iter().any(|x| x.id == id) {
        return Err(Problem::not_found("member-not-found", format!("node {id} is not a member")));
    }
    ctx.node.allow_rejoin(id).await?;
    Ok(Json(serde_json::json!({ "node": id, "rejoinAllowed": true })).into_response())
}

/// Body of a leadership transfer.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferLeader {
    to: Option<NodeId>,
}

/// `POST /api/v1/cluster/leader` `{to?}`: hand leadership over and wait until it moved.
pub async fn transfer_leader(ctx: Ctx, headers: HeaderMap, body: Body) -> Result<Response, Problem> {
    admin(&ctx, &headers).await?;
    let req: TransferLeader = read_json_body(&ctx, &headers, body, true).await?.unwrap_or_default();
    let to = ctx.node.transfer_leader(req.to).await?;
    Ok(Json(serde_json::json!({ "transferredTo": to })).into_response())
}

/// `POST /api/v1/cluster/snapshot`: build a snapshot on this node now.
pub async fn snapshot(ctx: Ctx, headers: HeaderMap) -> Result<Response, Problem> {
    admin(&ctx, &headers).await?;
    let index = ctx.node.snapshot_now().await?;
    Ok(Json(serde_json::json!({ "snapshotIndex": index })).into_response())
}

/// The one running digest's permit, or 429 while another holds it.
fn one_digest_at_a_time(running: &tokio::sync::Semaphore) -> Result<tokio::sync::SemaphorePermit<'_>, Problem> {
    running.try_acquire().map_err(|_| {
        Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "busy",
            "Too many requests",
            "a digest is already being computed on this node; retry shortly",
        )
        .retry_after(1)
    })
}

/// `GET /api/v1/cluster/digest`: SHA-256 of this node's full state and the applied index it
/// reflects; equal digests at equal indexes prove replicas identical.
///
/// It reads the whole state, so it is cluster administration (unscoped admin), and one runs at
/// a time per node; another call meanwhile gets 429 with `Retry-After`.
pub async fn digest(ctx: Ctx, headers: HeaderMap) -> Result<Response, Problem> {
    admin(&ctx, &headers).await?;
    static RUNNING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);
    let one = one_digest_at_a_time(&RUNNING)?;
    // A task of its own holds the permit until the scan ends, even if the caller goes away.
    let node = ctx.node.clone();
    let digest = tokio::spawn(async move {
        let _one = one;
        node.state_digest().await
    });
    let digest = digest.await.map_err(Problem::internal)??;
    Ok(Json(digest).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A digest scans the whole state: a second one while the first runs is refused with 429
    /// and `Retry-After`, and one may start again once the first ends.
    #[test]
    fn a_second_digest_while_one_runs_gets_429_with_retry_after() {
        let running = tokio::sync::Semaphore::new(1);
        let first = one_digest_at_a_time(&running);
        assert!(first.is_ok());
        let refused = one_digest_at_a_time(&running).err().map(|p| p.into_response());
        assert_eq!(refused.as_ref().map(|r| r.status()), Some(StatusCode::TOO_MANY_REQUESTS));
        assert!(refused.is_some_and(|r| r.headers().contains_key(axum::http::header::RETRY_AFTER)));
        drop(first);
        assert!(one_digest_at_a_time(&running).is_ok(), "free again once the first ends");
    }
}
