//! Namespace endpoints: list, get, create/update, delete (cascading, audited), and audit.

use axum::Json;
use axum::body::Body;
use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::entries::read_json_body;
use super::problem::Problem;
use super::{Ctx, HEADER_REVISION, Q, ReadQuery};
use crate::auth::Role;
use crate::command::{Command, CommandOutcome, Operation};
use crate::model::{AuditEvent, Namespace, format_time_ms, now_ms, validate_namespace};
use crate::store::{request_blocking, state};

/// Namespace as shown by the API.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceView {
    name: String,
    description: String,
    owner: String,
    created_at: String,
    created_by: String,
    updated_at: String,
    updated_by: String,
    revision: u64,
}

impl From<Namespace> for NamespaceView {
    fn from(n: Namespace) -> Self {
        Self {
            name: n.name,
            description: n.description,
            owner: n.owner,
            created_at: format_time_ms(n.created_at_ms),
            created_by: n.created_by,
            updated_at: format_time_ms(n.updated_at_ms),
            updated_by: n.updated_by,
            revision: n.revision,
        }
    }
}

/// Body of a namespace PUT.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceBody {
    #[serde(default)]
    description: String,
    #[serde(default)]
    owner: String,
}

/// Refuses an invalid namespace name with a 400 problem naming the rule.
pub fn check_name(ns: &str) -> Result<(), Problem> {
    validate_namespace(ns).map_err(|e| Problem::bad_request("invalid-name", e.to_string()))
}

/// `GET /api/v1/namespaces`: the namespaces this key may see.
pub async fn list(ctx: Ctx, headers: HeaderMap, Q(q): Q<ReadQuery>) -> Result<Response, Problem> {
    let p = ctx.authorize(&headers, Role::Viewer, None).await?;
    ctx.read_barrier(q.consistency.as_deref()).await?;
    let db = ctx.node.db().clone();
    let all = request_blocking(move || state::list_namespaces(&db)).await?;
    let items: Vec<NamespaceView> = all.into_iter().filter(|n| p.covers(&n.name)).map(Into::into).collect();
    Ok(Json(serde_json::json!({ "items": items })).into_response())
}

/// `GET /api/v1/namespaces/{ns}`.
pub async fn get(
    ctx: Ctx,
    Path(ns): Path<String>,
    headers: HeaderMap,
    Q(q): Q<ReadQuery>,
) -> Result<Response, Problem> {
    ctx.authorize(&headers, Role::Viewer, Some(&ns)).await?;
    check_name(&ns)?;
    ctx.read_barrier(q.consistency.as_deref()).await?;
    let db = ctx.node.db().clone();
    let name = ns.clone();
    match request_blocking(move || state::get_namespace(&db, &name)).await? {
        Some(n) => Ok(Json(NamespaceView::from(n)).into_response()),
        None => Err(Problem::not_found("namespace-not-found", format!("namespace {ns:?} does not exist"))),
    }
}

/// `PUT /api/v1/namespaces/{ns}`: create (201) or update (200).
pub async fn put(ctx: Ctx, Path(ns): Path<String>, headers: HeaderMap, body: Body) -> Result<Response, Problem> {
    let p = ctx.authorize(&headers, Role::Admin, Some(&ns)).await?;
    check_name(&ns)?;
    let b: NamespaceBody = read_json_body(&ctx, &headers, body, true).await?.unwrap_or_default();
    let cmd = Command {
        actor: p.name,
        at_ms: now_ms(),
        op: Operation::PutNamespace { name: ns, description: b.description, owner: b.owner },
    };
    match ctx.node.write(cmd).await? {
        (CommandOutcome::NamespaceWritten { created, namespace }, rev) => {
            let status = if created { StatusCode::CREATED } else { StatusCode::OK };
            Ok((status, [(HEADER_REVISION, rev.to_string())], Json(NamespaceView::from(namespace))).into_response())
        }
        (other, _) => Err(Problem::internal(format!("unexpected outcome {other:?}"))),
    }
}

/// `DELETE /api/v1/namespaces/{ns}`: removes it and all its entries (each audited).
pub async fn delete(ctx: Ctx, Path(ns): Path<String>, headers: HeaderMap) -> Result<Response, Problem> {
    let p = ctx.authorize(&headers, Role::Admin, Some(&ns)).await?;
    check_name(&ns)?;
    let cmd = Command { actor: p.name, at_ms: now_ms(), op: Operation::DeleteNamespace { name: ns.clone() } };
    match ctx.node.write(cmd).await? {
        (CommandOutcome::NamespaceDeleted { entries_deleted }, rev) => Ok((
            [(HEADER_REVISION, rev.to_string())],
            Json(serde_json::json!({ "namespace": ns, "entriesDeleted": entries_deleted, "revision": rev })),
        )
            .into_response()),
        (CommandOutcome::NamespaceNotFound, _) => {
            Err(Problem::not_found("namespace-not-found", format!("namespace {ns:?} does not exist")))
        }
        (other, _) => Err(Problem::internal(format!("unexpected outcome {other:?}"))),
    }
}

/// Query of the audit endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    limit: Option<String>,
    consistency: Option<String>,
}

/// Audit event as shown by the API (audit listing and watch events).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditView {
    action: &'static str,
    actor: String,
    namespace: String,
    key: Option<String>,
    old_version: Option<u64>,
    new_version: Option<u64>,
    revision: u64,
    timestamp: String,
}

impl From<AuditEvent> for AuditView {
    fn from(e: AuditEvent) -> Self {
        Self {
            action: e.action.as_str(),
            actor: e.actor,
            namespace: e.namespace,
            key: e.key,
            old_version: e.old_version,
            new_version: e.new_version,
            revision: e.revision,
            timestamp: format_time_ms(e.at_ms),
        }
    }
}

/// Parses a `limit` parameter within `1..=max`.
pub fn parse_limit(raw: Option<&str>, default: usize, max: usize) -> Result<usize, Problem> {
    let Some(raw) = raw else { return Ok(default) };
    match raw.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(Problem::bad_request(
            "invalid-parameter",
            format!("limit must be an integer from 1 to {max}, got {raw:?}"),
        )),
    }
}

/// `GET /api/v1/namespaces/{ns}/audit?limit=`: newest first.
pub async fn audit(
    ctx: Ctx,
    Path(ns): Path<String>,
    headers: HeaderMap,
    Q(q): Q<AuditQuery>,
) -> Result<Response, Problem> {
    ctx.authorize(&headers, Role::Viewer, Some(&ns)).await?;
    check_name(&ns)?;
    let limit = parse_limit(q.limit.as_deref(), 100, 1000)?;
    ctx.read_barrier(q.consistency.as_deref()).await?;
    let db = ctx.node.db().clone();
    let events = request_blocking(move || state::audit(&db, &ns, limit)).await?;
    let items: Vec<AuditView> = events.into_iter().map(Into::into).collect();
    Ok(Json(serde_json::json!({ "items": items })).into_response())
}
