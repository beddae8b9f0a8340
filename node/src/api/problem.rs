//! RFC 7807 `application/problem+json` errors with stable `type` URIs, used for every 4xx/5xx.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::auth::AuthError;
use crate::raft::RaftNodeError;
use crate::store::StoreError;

/// Base of the problem type URIs.
const TYPE_BASE: &str = "https://confman.dev/problems/";

/// An HTTP problem response.
#[derive(Debug, Clone)]
pub struct Problem {
    status: StatusCode,
    slug: &'static str,
    title: &'static str,
    detail: String,
    extra: Map<String, Value>,
    retry_after: Option<u64>,
}

impl Problem {
    /// A problem with status, stable slug, title and detail.
    pub fn new(status: StatusCode, slug: &'static str, title: &'static str, detail: impl Into<String>) -> Self {
        Self { status, slug, title, detail: detail.into(), extra: Map::new(), retry_after: None }
    }

    /// Adds an extension member (e.g. `limit`).
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.to_string(), value.into());
        self
    }

    /// Sets `Retry-After` (seconds).
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// 400 with a reason.
    pub fn bad_request(slug: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, slug, "Bad request", detail)
    }

    /// 401.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", "Authentication required", detail)
    }

    /// 404.
    pub fn not_found(slug: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, slug, "Not found", detail)
    }

    /// 413 naming the limit.
    pub fn too_large(what: &str, limit: u64) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            "Payload too large",
            format!("the {what} exceeds the limit of {limit} bytes"),
        )
        .with("limit", limit)
    }

    /// 412 with the current version and ETag (the revision of the key's last change).
    pub fn precondition_failed(version: Option<u64>, revision: Option<u64>) -> Self {
        let detail = match (version, revision) {
            (Some(v), Some(r)) => {
                format!("the precondition does not hold: the key is at version {v}, ETag \"r{r}\"")
            }
            _ => "the precondition does not hold: the key does not exist".to_string(),
        };
        Self::new(StatusCode::PRECONDITION_FAILED, "precondition-failed", "Precondition failed", detail)
            .with("currentVersion", version)
            .with("currentRevision", revision)
    }

    /// 507: the node's disk is below its reserve; the write was not proposed.
    pub fn insufficient_storage(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::INSUFFICIENT_STORAGE, "insufficient-storage", "Insufficient storage", detail)
            .retry_after(5)
    }

    /// 503 with `Retry-After`.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Service unavailable", detail).retry_after(1)
    }

    /// 503 of type `timeout`: the request may or may not have taken effect (clients must not
    /// blindly repeat a conditional write after it).
    pub fn outcome_unknown(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "timeout", "Timed out", detail).retry_after(1)
    }

    /// 500 (details go to the log, not the client).
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!("internal error: {detail}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            "an internal error occurred; see the node log",
        )
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut body = json!({
            "type": format!("{TYPE_BASE}{}", self.slug),
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        if let Value::Object(m) = &mut body {
            m.extend(self.extra);
        }
        let mut resp = (self.status, axum::Json(body)).into_response();
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if let Some(s) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

impl From<AuthError> for Problem {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Unauthenticated(m) => Problem::unauthorized(m),
            AuthError::BadToken(m) => Problem::unauthorized(m),
            AuthError::Forbidden(m) => Problem::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden", m),
            AuthError::Unavailable(m) => {
                Problem::new(StatusCode::SERVICE_UNAVAILABLE, "auth-unavailable", "Authentication unavailable", m)
                    .retry_after(1)
            }
        }
    }
}

impl From<StoreError> for Problem {
    fn from(e: StoreError) -> Self {
        Problem::internal(e)
    }
}

impl From<RaftNodeError> for Problem {
    fn from(e: RaftNodeError) -> Self {
        match e {
            RaftNodeError::NoLeader | RaftNodeError::NotLeader { .. } | RaftNodeError::Network(_) => {
                Problem::unavailable(format!("no leader is reachable right now ({e}); retry shortly"))
            }
            RaftNodeError::OutcomeUnknown(_) => {
                Problem::outcome_unknown(format!("{e}; read the entry before repeating a conditional write"))
            }
            RaftNodeError::Timeout(_) => Problem::outcome_unknown(format!(
                "the cluster did not answer in time ({e}); the outcome of a write is unknown, retry with a precondition"
            )),
            RaftNodeError::Membership(m) => {
                Problem::new(StatusCode::CONFLICT, "membership", "Membership change refused", m)
            }
            RaftNodeError::Stopped(m) => Problem::unavailable(format!("the node is shutting down or stopped: {m}")),
            RaftNodeError::Store(e) => Problem::internal(e),
            RaftNodeError::Config(m) => Problem::internal(m),
            RaftNodeError::NoSpace(m) => Problem::insufficient_storage(m),
        }
    }
}
