//! Config entry endpoints: get (JSON or raw bytes), put (raw or JSON body, with `If-Match` /
//! `If-None-Match` compare-and-set), delete, list with paging, and history. Keys may contain
//! `/`; `GET …/config/{key}/history` reads history (a key whose last segment is literally
//! `history` is addressed with `%2F`).

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{OriginalUri, Path};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::namespaces::parse_limit;
use super::problem::Problem;
use super::{AppContext, Ctx, HEADER_REVISION, HEADER_VERSION, Q, write_budget};
use crate::auth::Role;
use crate::command::{Command, CommandOutcome, Operation, Precondition};
use crate::model::{format_time_ms, now_ms, validate_key, validate_namespace};
use crate::store::state::EntryMeta;
use crate::store::{request_blocking, state};

/// Reads the whole request body inside the node's write budget (`write_budget`), refusing more
/// than the configured body limit with 413. Keep the reservation until the write is answered.
pub async fn read_body(
    ctx: &AppContext,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Bytes, write_budget::Reservation), Problem> {
    let limit = ctx.tuning.body_limit_bytes;
    let declared = declared_length(headers);
    if declared.is_some_and(|n| n > limit) {
        return Err(Problem::too_large("request body", limit));
    }
    ctx.write_budget.read(body, declared, limit, || Problem::too_large("request body", limit)).await
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok())
}

fn content_type(headers: &HeaderMap) -> Option<String> {
    headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(|s| s.trim().to_string())
}

fn is_json(ct: &str) -> bool {
    let essence = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || essence.ends_with("+json")
}

/// The most a JSON body of the namespace and cluster endpoints may carry. They are read
/// outside the write budget so that administration (the operator's membership calls among
/// them) never queues behind large values; this cap bounds them instead.
pub const JSON_BODY_LIMIT: u64 = 1024 * 1024;

/// Reads a JSON body (`Content-Type: application/json`, unknown fields refused) of at most
/// [`JSON_BODY_LIMIT`]. An empty body gives `None` when `allow_empty`.
pub async fn read_json_body<T: DeserializeOwned>(
    ctx: &AppContext,
    headers: &HeaderMap,
    body: Body,
    allow_empty: bool,
) -> Result<Option<T>, Problem> {
    let limit = JSON_BODY_LIMIT.min(ctx.tuning.body_limit_bytes);
    if declared_length(headers).is_some_and(|n| n > limit) {
        return Err(Problem::too_large("request body", limit));
    }
    let bytes =
        axum::body::to_bytes(body, limit as usize).await.map_err(|_| Problem::too_large("request body", limit))?;
    if bytes.is_empty() && allow_empty {
        return Ok(None);
    }
    match content_type(headers) {
        Some(ct) if is_json(&ct) => {}
        other => {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
                format!("expected Content-Type: application/json, got {}", other.as_deref().unwrap_or("none")),
            ));
        }
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| Problem::bad_request("malformed-json", format!("invalid JSON body: {e}")))
}

/// JSON form of a PUT body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct EntryBody {
    value: serde_json::Value,
    content_type: Option<String>,
    encoding: Option<String>,
}

/// Decodes a PUT body into value bytes and content type.
fn decode_value(headers: &HeaderMap, bytes: Bytes) -> Result<(Vec<u8>, String), Problem> {
    let ct = content_type(headers).unwrap_or_default();
    let essence = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if is_json(&ct) {
        let b: EntryBody = serde_json::from_slice(&bytes)
            .map_err(|e| Problem::bad_request("malformed-json", format!("invalid JSON body: {e}")))?;
        return match (b.value, b.encoding.as_deref()) {
            (serde_json::Value::String(s), Some("base64")) => {
                let v = STANDARD
                    .decode(s.as_bytes())
                    .map_err(|e| Problem::bad_request("invalid-value", format!("value is not valid base64: {e}")))?;
                Ok((v, b.content_type.unwrap_or_else(|| "application/octet-stream".into())))
            }
            (serde_json::Value::String(s), None | Some("utf-8")) => {
                Ok((s.into_bytes(), b.content_type.unwrap_or_else(|| "text/plain; charset=utf-8".into())))
            }
            (_, Some(enc)) if enc != "base64" && enc != "utf-8" => {
                Err(Problem::bad_request("invalid-value", format!("encoding must be 'base64' or 'utf-8', got {enc:?}")))
            }
            (serde_json::Value::String(_), Some(_)) => {
                Err(Problem::bad_request("invalid-value", "unsupported encoding"))
            }
            (other, None) => {
                let v = serde_json::to_vec(&other).map_err(Problem::internal)?;
                Ok((v, b.content_type.unwrap_or_else(|| "application/json".into())))
            }
            (_, Some(_)) => Err(Problem::bad_request("invalid-value", "encoding applies only to a string value")),
        };
    }
    if essence == "application/octet-stream" || essence.starts_with("text/") {
        // Takes over the body's buffer when nothing else holds it (no copy of the value).
        return Ok((Vec::from(bytes), ct));
    }
    Err(Problem::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported-media-type",
        "Unsupported media type",
        format!(
            "PUT a raw value as application/octet-stream or text/*, or JSON {{\"value\": ...}} as application/json; got {}",
            if ct.is_empty() { "no Content-Type" } else { ct.as_str() }
        ),
    ))
}

/// Parses `If-Match` / `If-None-Match` into a precondition.
fn precondition(headers: &HeaderMap) -> Result<Precondition, Problem> {
    let get = |h| headers.get(h).map(|v: &HeaderValue| v.to_str().unwrap_or("\u{0}").trim().to_string());
    match (get(header::IF_MATCH), get(header::IF_NONE_MATCH)) {
        (Some(_), Some(_)) => {
            Err(Problem::bad_request("invalid-precondition", "send If-Match or If-None-Match, not both"))
        }
        (None, Some(v)) if v == "*" => Ok(Precondition::Absent),
        (None, Some(v)) => {
            Err(Problem::bad_request("invalid-precondition", format!("If-None-Match supports only *, got {v:?}")))
        }
        (Some(v), None) if v == "*" => Ok(Precondition::Exists),
        (Some(v), None) if v.starts_with("W/") => Err(Problem::bad_request(
            "invalid-precondition",
            format!("a weak ETag never satisfies If-Match (RFC 9110), got {v:?}"),
        )),
        (Some(v), None) => v
            .strip_prefix("\"r")
            .and_then(|r| r.strip_suffix('"'))
            .and_then(|r| r.parse::<u64>().ok())
            .map(Precondition::Revision)
            .ok_or_else(|| {
                Problem::bad_request(
                    "invalid-precondition",
                    format!("If-Match must be * or an ETag this API returned, like \"r42\", got {v:?}"),
                )
            }),
        (None, None) => Ok(Precondition::None),
    }
}

/// The request header carrying a client's idempotency key.
pub const HEADER_IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Set on the answer to a keyed write that had been applied before: the first answer, again.
pub const HEADER_IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";
/// Longest idempotency key accepted.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;

/// Parses `Idempotency-Key`: 1–128 characters of `A-Z a-z 0-9 - _ . :`.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(v) = headers.get(HEADER_IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let ok = |k: &str| {
        !k.is_empty()
            && k.len() <= MAX_IDEMPOTENCY_KEY_LEN
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    };
    match v.to_str() {
        Ok(k) if ok(k) => Ok(Some(k.to_string())),
        _ => Err(Problem::bad_request(
            "invalid-idempotency-key",
            format!(
                "the Idempotency-Key header must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} characters of A-Z, a-z, 0-9, '-', '_', '.', ':'"
            ),
        )),
    }
}

/// `op`, carrying the client's idempotency key when it sent one.
fn keyed(op: Operation, key: Option<String>) -> Operation {
    match key {
        Some(idempotency_key) => Operation::Keyed { idempotency_key, op: Box::new(op) },
        None => op,
    }
}

/// Unwraps a replayed outcome; 422 when the key was used for a different write.
fn unwrap_replay(outcome: CommandOutcome) -> Result<(CommandOutcome, bool), Problem> {
    match outcome {
        CommandOutcome::Replayed(first) => Ok((*first, true)),
        CommandOutcome::IdempotencyKeyReused => Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency-key-reused",
            "Unprocessable Content",
            "this Idempotency-Key was already used for a different request; use a new key per write",
        )),
        other => Ok((other, false)),
    }
}

/// The answer, marked `Idempotent-Replayed: true` when it repeats a first answer.
fn mark_replayed(result: Result<Response, Problem>, replayed: bool) -> Result<Response, Problem> {
    if !replayed {
        return result;
    }
    let mut resp = result.unwrap_or_else(IntoResponse::into_response);
    resp.headers_mut().insert(HEADER_IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    Ok(resp)
}

fn check_names(ns: &str, key: &str) -> Result<(), Problem> {
    validate_namespace(ns).map_err(|e| Problem::bad_request("invalid-name", e.to_string()))?;
    validate_key(key).map_err(|e| Problem::bad_request("invalid-key", e.to_string()))
}

/// An entry's ETag: the revision of its last change (unique across delete and re-create, unlike
/// the version), as `"r<revision>"` so that a bare version number from an older client can
/// never be taken for one.
fn etag(revision: u64) -> String {
    format!("\"r{revision}\"")
}

/// Entry as shown by the API.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct EntryView {
    namespace: String,
    key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    encoding: Option<&'static str>,
    content_type: String,
    version: u64,
    revision: u64,
    size: u64,
    updated_at: String,
    updated_by: String,
}

impl EntryView {
    fn new(ns: &str, key: &str, meta: &EntryMeta, value: Option<Vec<u8>>) -> Self {
        let (value, encoding) = match value {
            None => (None, None),
            Some(v) => match String::from_utf8(v) {
                Ok(s) => (Some(s), None),
                Err(e) => (Some(STANDARD.encode(e.as_bytes())), Some("base64")),
            },
        };
        Self {
            namespace: ns.to_string(),
            key: key.to_string(),
            value,
            encoding,
            content_type: meta.content_type.clone(),
            version: meta.version,
            revision: meta.revision,
            size: meta.size,
            updated_at: format_time_ms(meta.updated_at_ms),
            updated_by: meta.updated_by.clone(),
        }
    }
}

/// Query of an entry GET.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetQuery {
    consistency: Option<String>,
    limit: Option<String>,
    #[serde(rename = "continue")]
    continue_token: Option<String>,
}

/// `GET …/config/{key}` (or `…/{key}/history`).
pub async fn get(
    ctx: Ctx,
    Path((ns, key)): Path<(String, String)>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    Q(q): Q<GetQuery>,
) -> Result<Response, Problem> {
    ctx.authorize(&headers, Role::Viewer, Some(&ns)).await?;
    if uri.path().ends_with("/history")
        && let Some(base) = key.strip_suffix("/history")
    {
        return history(&ctx, ns, base.to_string(), q).await;
    }
    if q.limit.is_some() || q.continue_token.is_some() {
        return Err(Problem::bad_request("invalid-parameter", "limit and continue apply only to history"));
    }
    check_names(&ns, &key)?;
    ctx.read_barrier(q.consistency.as_deref()).await?;
    let db = ctx.node.db().clone();
    let (n, k) = (ns.clone(), key.clone());
    let Some((meta, value)) = request_blocking(move || state::get_entry(&db, &n, &k)).await? else {
        return Err(Problem::not_found("key-not-found", format!("key {key:?} does not exist in namespace {ns:?}")));
    };
    let raw = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/octet-stream"));
    let common = [(header::ETAG.as_str(), etag(meta.revision)), (HEADER_VERSION, meta.version.to_string())];
    if raw {
        let ct =
            HeaderValue::from_str(&meta.content_type).unwrap_or(HeaderValue::from_static("application/octet-stream"));
        let mut resp = (common, value).into_response();
        resp.headers_mut().insert(header::CONTENT_TYPE, ct);
        return Ok(resp);
    }
    Ok((common, Json(EntryView::new(&ns, &key, &meta, Some(value)))).into_response())
}

async fn history(ctx: &AppContext, ns: String, key: String, q: GetQuery) -> Result<Response, Problem> {
    check_names(&ns, &key)?;
    let max = super::cluster::cluster_history_depth(ctx).await? as usize + 1;
    let limit = parse_limit(q.limit.as_deref(), max, max)?;
    let below = match q.continue_token.as_deref() {
        None => None,
        Some(t) => {
            let cursor = t
                .split_once('.')
                .and_then(|(v, r)| Some(state::HistoryCursor { version: v.parse().ok()?, revision: r.parse().ok()? }));
            Some(cursor.ok_or_else(|| {
                Problem::bad_request("invalid-continue", "the continue token is not one this API issued")
            })?)
        }
    };
    ctx.read_barrier(q.consistency.as_deref()).await?;
    let db = ctx.node.db().clone();
    let (n, k) = (ns.clone(), key.clone());
    let page = request_blocking(move || state::history(&db, &n, &k, limit, below, HISTORY_PAGE_VALUE_BYTES)).await?;
    if page.items.is_empty() && below.is_none() {
        return Err(Problem::not_found("key-not-found", format!("key {key:?} does not exist in namespace {ns:?}")));
    }
    if page.replaced {
        return Err(Problem::new(
            StatusCode::GONE,
            "history-replaced",
            "Gone",
            format!("key {key:?} was deleted since the previous page; list its history again from the start"),
        ));
    }
    let items: Vec<EntryView> = page
        .items
        .into_iter()
        .map(|r| {
            let meta = EntryMeta {
                version: r.version,
                revision: r.revision,
                content_type: r.content_type,
                updated_at_ms: r.updated_at_ms,
                updated_by: r.updated_by,
                size: r.value.len() as u64,
            };
            EntryView::new(&ns, &key, &meta, Some(r.value))
        })
        .collect();
    let next = page.next_below.map(|c| format!("{}.{}", c.version, c.revision));
    Ok(Json(serde_json::json!({ "items": items, "continue": next })).into_response())
}

/// `PUT …/config/{key}`: 201 on create, 200 on update; 412 when the precondition fails.
pub async fn put(
    ctx: Ctx,
    Path((ns, key)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let p = ctx.authorize(&headers, Role::Editor, Some(&ns)).await?;
    check_names(&ns, &key)?;
    let pre = precondition(&headers)?;
    let idem = idempotency_key(&headers)?;
    let (bytes, reservation) = read_body(&ctx, &headers, body).await?;
    let (value, content_type) = decode_value(&headers, bytes)?;
    let max = ctx.tuning.max_value_bytes;
    if value.len() as u64 > max {
        return Err(Problem::too_large("value", max));
    }
    let cmd = Command {
        actor: p.name,
        at_ms: now_ms(),
        op: keyed(
            Operation::PutEntry { namespace: ns.clone(), key: key.clone(), content_type, value, precondition: pre },
            idem,
        ),
    };
    let waited = reservation.waited();
    let (outcome, replayed) = unwrap_replay(ctx.node.write_holding(cmd, reservation, waited).await?.0)?;
    let result = match outcome {
        CommandOutcome::EntryWritten { created, version, revision } => {
            let status = if created { StatusCode::CREATED } else { StatusCode::OK };
            let body = serde_json::json!({ "namespace": ns, "key": key, "version": version, "revision": revision });
            Ok((
                status,
                [
                    (header::ETAG.as_str(), etag(revision)),
                    (HEADER_VERSION, version.to_string()),
                    (HEADER_REVISION, revision.to_string()),
                ],
                Json(body),
            )
                .into_response())
        }
        CommandOutcome::PreconditionFailed { current_version, current_revision } => {
            Err(Problem::precondition_failed(current_version, current_revision))
        }
        CommandOutcome::NamespaceNotFound => {
            Err(Problem::not_found("namespace-not-found", format!("namespace {ns:?} does not exist")))
        }
        other => Err(Problem::internal(format!("unexpected outcome {other:?}"))),
    };
    mark_replayed(result, replayed)
}

/// `DELETE …/config/{key}`.
pub async fn delete(
    ctx: Ctx,
    Path((ns, key)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let p = ctx.authorize(&headers, Role::Editor, Some(&ns)).await?;
    check_names(&ns, &key)?;
    let pre = precondition(&headers)?;
    if pre == Precondition::Absent {
        return Err(Problem::bad_request(
            "invalid-precondition",
            "If-None-Match: * asks to delete a key only if it does not exist; send If-Match or nothing",
        ));
    }
    let idem = idempotency_key(&headers)?;
    let cmd = Command {
        actor: p.name,
        at_ms: now_ms(),
        op: keyed(Operation::DeleteEntry { namespace: ns.clone(), key: key.clone(), precondition: pre }, idem),
    };
    let (outcome, replayed) = unwrap_replay(ctx.node.write(cmd).await?.0)?;
    let result = match outcome {
        CommandOutcome::EntryDeleted { version, revision } => Ok((
            [(HEADER_REVISION, revision.to_string())],
            Json(serde_json::json!({ "namespace": ns, "key": key, "deletedVersion": version, "revision": revision })),
        )
            .into_response()),
        CommandOutcome::PreconditionFailed { current_version, current_revision } => {
            Err(Problem::precondition_failed(current_version, current_revision))
        }
        CommandOutcome::EntryNotFound => {
            Err(Problem::not_found("key-not-found", format!("key {key:?} does not exist in namespace {ns:?}")))
        }
        CommandOutcome::NamespaceNotFound => {
            Err(Problem::not_found("namespace-not-found", format!("namespace {ns:?} does not exist")))
        }
        other => Err(Problem::internal(format!("unexpected outcome {other:?}"))),
    };
    mark_replayed(result, replayed)
}

/// Query of a listing.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ListQuery {
    prefix: Option<String>,
    limit: Option<String>,
    #[serde(rename = "continue")]
    continue_token: Option<String>,
    include_values: Option<bool>,
    consistency: Option<String>,
}

/// Values per history page, at most (one larger version still makes a page of one).
pub const HISTORY_PAGE_VALUE_BYTES: u64 = 8 << 20;

/// Values per list page, at most (one larger value still makes a page of one): a page of 1000
/// entries of 16 MiB each must not be held in memory, and copied, at once.
pub const LIST_PAGE_VALUE_BYTES: u64 = 8 << 20;

/// `GET …/config?prefix=&limit=&continue=&includeValues=`.
pub async fn list(
    ctx: Ctx,
    Path(ns): Path<String>,
    headers: HeaderMap,
    Q(q): Q<ListQuery>,
) -> Result<Response, Problem> {
    ctx.authorize(&headers, Role::Viewer, Some(&ns)).await?;
    validate_namespace(&ns).map_err(|e| Problem::bad_request("invalid-name", e.to_string()))?;
    let limit = parse_limit(q.limit.as_deref(), 100, 1000)?;
    let prefix = q.prefix.unwrap_or_default();
    if prefix.bytes().any(|b| b == 0) || prefix.len() > crate::model::MAX_KEY_LEN {
        return Err(Problem::bad_request("invalid-parameter", "prefix must be at most 256 characters without NUL"));
    }
    let after = match q.continue_token {
        None => None,
        Some(t) => {
            let invalid = || Problem::bad_request("invalid-continue", "the continue token is not one this API issued");
            let bytes = URL_SAFE_NO_PAD.decode(t.as_bytes()).map_err(|_| invalid())?;
            let key = String::from_utf8(bytes).map_err(|_| invalid())?;
            validate_key(&key).map_err(|_| invalid())?;
            Some(key)
        }
    };
    ctx.read_barrier(q.consistency.as_deref()).await?;
    let include = q.include_values.unwrap_or(false);
    let db = ctx.node.db().clone();
    let n = ns.clone();
    let page = request_blocking(move || {
        if state::get_namespace(&db, &n)?.is_none() {
            return Ok(None);
        }
        state::list_entries(&db, &n, &prefix, after.as_deref(), limit, include, LIST_PAGE_VALUE_BYTES).map(Some)
    })
    .await?
    .ok_or_else(|| Problem::not_found("namespace-not-found", format!("namespace {ns:?} does not exist")))?;
    let items: Vec<EntryView> = page.items.into_iter().map(|(k, m, v)| EntryView::new(&ns, &k, &m, v)).collect();
    let next = page.next_after.map(|k| URL_SAFE_NO_PAD.encode(k.as_bytes()));
    Ok(Json(serde_json::json!({ "items": items, "continue": next })).into_response())
}
