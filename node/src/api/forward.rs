//! Transparent forwarding: a write that reaches a follower is proxied, body streamed, to the
//! leader, and the leader's answer is streamed back, so clients can talk to any member (a
//! Service that load-balances across pods). A hop header prevents loops.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::Ctx;
use super::problem::Problem;

/// Marks a request already forwarded once.
pub const HEADER_FORWARDED: &str = "x-confman-forwarded-by";

/// Whether the request changes state and must run on the leader.
fn must_run_on_leader(req: &Request) -> bool {
    let path = req.uri().path();
    let write = matches!(*req.method(), Method::PUT | Method::POST | Method::DELETE | Method::PATCH);
    write
        && (path.starts_with("/api/v1/namespaces")
            || path.starts_with("/api/v1/cluster/members")
            || path == "/api/v1/cluster/leader"
            || path == "/api/v1/cluster/settings")
}

/// Whether the request is a linearizable read of the data (not a watch): a node below its
/// disk reserve takes no new entries, so its state lags and such reads go to the leader.
fn is_linearizable_read(req: &Request) -> bool {
    let path = req.uri().path();
    let stale = req.uri().query().is_some_and(|q| q.split('&').any(|p| p == "consistency=stale"));
    *req.method() == Method::GET && path.starts_with("/api/v1/namespaces") && !path.ends_with("/watch") && !stale
}

/// Hop-by-hop headers never copied across the proxy.
fn is_hop_header(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "upgrade" | "te" | "trailer" | "host"
    )
}

/// Middleware: runs writes locally on the leader, proxies them from a follower (and
/// linearizable reads from a follower below its disk reserve, `crate::disk_space`).
pub async fn forward_writes_to_leader(State(ctx): Ctx, req: Request, next: Next) -> Response {
    let to_leader = must_run_on_leader(&req) || (is_linearizable_read(&req) && ctx.node.disk().is_low());
    if !to_leader || req.headers().contains_key(HEADER_FORWARDED) || ctx.node.is_leader() {
        return next.run(req).await;
    }
    match ctx.node.leader_or_wait().await {
        None => Problem::unavailable("no leader is known right now; retry shortly").into_response(),
        Some((id, _)) if id == ctx.node.id() => next.run(req).await,
        Some((_, addr)) => proxy(&ctx, &addr, req).await.unwrap_or_else(|p| p.into_response()),
    }
}

async fn proxy(ctx: &super::AppContext, leader: &str, req: Request) -> Result<Response, Problem> {
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let url = format!("{}{path}", leader.trim_end_matches('/'));
    let (parts, body) = req.into_parts();
    let mut out = ctx
        .forward_client
        .request(parts.method.clone(), &url)
        .timeout(std::time::Duration::from_millis(ctx.tuning.request_timeout_ms))
        .header(HEADER_FORWARDED, ctx.node.id().to_string());
    for (name, value) in parts.headers.iter() {
        if !is_hop_header(name) {
            out = out.header(name, value);
        }
    }
    let out = out.body(reqwest::Body::wrap_stream(body.into_data_stream()));
    let resp = out.send().await.map_err(|e| {
        if e.is_connect() {
            Problem::unavailable(format!("the leader at {leader} could not be reached: {e}"))
        } else {
            // The leader may have received it: say so, so the caller does not repeat it blindly.
            Problem::outcome_unknown(format!("the leader at {leader} did not answer a forwarded request: {e}"))
        }
    })?;
    let mut builder = Response::builder().status(resp.status());
    for (name, value) in resp.headers().iter() {
        if !is_hop_header(name) && name != header::CONTENT_LENGTH {
            builder = builder.header(name, value);
        }
    }
    builder.body(Body::from_stream(resp.bytes_stream())).map_err(Problem::internal)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, uri: &str) -> Result<Request, axum::http::Error> {
        Request::builder().method(method).uri(uri).body(Body::empty())
    }

    #[test]
    fn only_linearizable_data_reads_count_as_reads_for_the_leader() -> Result<(), axum::http::Error> {
        assert!(is_linearizable_read(&request(Method::GET, "/api/v1/namespaces/a/config/k")?));
        assert!(is_linearizable_read(&request(Method::GET, "/api/v1/namespaces/a/config?limit=5")?));
        assert!(!is_linearizable_read(&request(Method::GET, "/api/v1/namespaces/a/config/k?consistency=stale")?));
        assert!(!is_linearizable_read(&request(Method::GET, "/api/v1/namespaces/a/watch")?));
        assert!(!is_linearizable_read(&request(Method::GET, "/api/v1/cluster")?));
        assert!(!is_linearizable_read(&request(Method::PUT, "/api/v1/namespaces/a/config/k")?));
        Ok(())
    }
}
