//! `GET /api/v1/namespaces/{ns}/watch?fromRevision=N`: server-sent events of every change in a
//! namespace after revision N, read from the audit log (written in the same batch as the change,
//! so a watcher sees exactly what was applied, in order, once).
//!
//! - Resumable: each event's SSE `id` is its revision, set on the last event of a revision only,
//!   so `Last-Event-ID` (sent by EventSource clients on reconnect) or `fromRevision` resumes
//!   after whole revisions and never skips part of one.
//! - Bounded: events are read from RocksDB a page at a time, only when the client has taken the
//!   previous page; a slow client holds one page, not a growing queue.
//! - Without `fromRevision`, the stream starts at the node's applied revision (new changes only).
//! - A comment line every 15 s keeps idle connections open through proxies; the stream ends
//!   when the node shuts down.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use serde::Deserialize;
use tokio::sync::watch;

use super::namespaces::{AuditView, check_name};
use super::problem::Problem;
use super::{Ctx, Q};
use crate::auth::Role;
use crate::changes::Subscription;
use crate::model::AuditEvent;
use crate::store::{RocksDb, request_blocking, state};

/// Events read from storage per page.
const PAGE: usize = 256;

/// Query of a watch.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WatchQuery {
    from_revision: Option<String>,
}

fn parse_revision(raw: &str, what: &str) -> Result<u64, Problem> {
    raw.trim().parse().map_err(|_| {
        Problem::bad_request(
            "invalid-parameter",
            format!("{what} must be a revision (an unsigned integer), got {raw:?}"),
        )
    })
}

struct Cursor {
    db: Arc<RocksDb>,
    ns: String,
    after: u64,
    pending: VecDeque<AuditEvent>,
    changes: Subscription,
    shutdown: watch::Receiver<bool>,
    /// Storage reads made by all watches of this node (the metric
    /// `confman_watch_storage_reads_total`).
    reads: Arc<AtomicU64>,
    /// Set after the final (error) event.
    ended: bool,
    /// When the caller's credential must be checked again (a ServiceAccount token): the stream
    /// ends then, and the client reconnects from its last revision with a credential that is
    /// checked anew, so a deleted account's watch does not go on streaming.
    recheck_at: Option<tokio::time::Instant>,
}

fn event(e: AuditEvent, last_of_revision: bool) -> Event {
    let revision = e.revision;
    let action = e.action.as_str();
    let data = serde_json::to_string(&AuditView::from(e)).unwrap_or_default();
    let ev = Event::default().event(action).data(data);
    if last_of_revision { ev.id(revision.to_string()) } else { ev }
}

/// The event stream: pages from storage, then waits until the namespace changes.
///
/// The watch waits on its own namespace's notifications (and whole-state replacements), not
/// on every applied entry: changes elsewhere cost it nothing. Notifications are marked seen
/// *before* each storage read, so a change applied during the read wakes the next wait, and a
/// read that finds nothing is always followed by a wait, never by another read.
fn stream(cursor: Cursor) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(cursor, |mut c| async move {
        loop {
            if c.ended || c.recheck_at.is_some_and(|at| at <= tokio::time::Instant::now()) {
                return None;
            }
            if let Some(e) = c.pending.pop_front() {
                let last = c.pending.front().is_none_or(|n| n.revision != e.revision);
                return Some((Ok(event(e, last)), c));
            }
            c.changes.namespace.borrow_and_update();
            c.changes.all.borrow_and_update();
            let (db, ns, after) = (c.db.clone(), c.ns.clone(), c.after);
            c.reads.fetch_add(1, Ordering::Relaxed);
            match request_blocking(move || state::audit_after(&db, &ns, after, PAGE)).await {
                Ok(Err(trimmed)) => {
                    // A slow watcher fell behind the audit retention: say so and end, rather
                    // than skip what was dropped (a client reconnecting gets the 410).
                    tracing::info!(ns = %c.ns, after = c.after, trimmed.trimmed_upto, "watch fell behind the audit retention");
                    let problem = serde_json::json!({
                        "type": "https://confman.dev/problems/compacted",
                        "title": "Gone",
                        "status": 410,
                        "detail": format!("events up to revision {} were dropped by the audit retention", trimmed.trimmed_upto),
                        "compactedRevision": trimmed.trimmed_upto,
                    });
                    c.ended = true;
                    return Some((Ok(Event::default().event("error").data(problem.to_string())), c));
                }
                Ok(Ok(page)) if !page.is_empty() => {
                    c.after = page.last().map_or(c.after, |e| e.revision);
                    c.pending.extend(page);
                    continue;
                }
                Ok(Ok(_)) => {}
                Err(e) => {
                    tracing::warn!(ns = %c.ns, "watch stopped: {e}");
                    return None;
                }
            }
            let recheck = async {
                match c.recheck_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = c.changes.namespace.changed() => if r.is_err() { return None },
                r = c.changes.all.changed() => if r.is_err() { return None },
                _ = c.shutdown.wait_for(|s| *s) => return None,
                () = recheck => return None,
            }
        }
    })
}

/// `GET /api/v1/namespaces/{ns}/watch`.
pub async fn watch(
    ctx: Ctx,
    Path(ns): Path<String>,
    headers: HeaderMap,
    Q(q): Q<WatchQuery>,
) -> Result<Response, Problem> {
    let caller = ctx.authorize(&headers, Role::Viewer, Some(&ns)).await?;
    check_name(&ns)?;
    let resume = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    let after = match (resume, q.from_revision.as_deref()) {
        (Some(id), _) => parse_revision(id, "Last-Event-ID")?,
        (None, Some(from)) => parse_revision(from, "fromRevision")?,
        (None, None) => ctx.node.applied_revision(),
    };
    let (db, n) = (ctx.node.db().clone(), ns.clone());
    let trimmed_upto = request_blocking(move || crate::store::audit_retention::trimmed_upto(&db, &n)).await?;
    if after < trimmed_upto {
        return Err(Problem::new(
            StatusCode::GONE,
            "compacted",
            "Gone",
            format!(
                "events of namespace {ns:?} up to revision {} were dropped by the audit retention; resume from revision {} or later (list the current state first)",
                trimmed_upto, trimmed_upto
            ),
        )
        .with("compactedRevision", trimmed_upto));
    }
    // Subscribed before the first read: nothing applied from here on can be missed.
    let changes = ctx.node.changes().subscribe(&ns);
    let cursor = Cursor {
        db: ctx.node.db().clone(),
        ns,
        after,
        pending: VecDeque::new(),
        changes,
        shutdown: ctx.shutdown.clone(),
        reads: ctx.metrics.watch_reads(),
        ended: false,
        recheck_at: caller.valid_until.map(tokio::time::Instant::from_std),
    };
    Ok(Sse::new(stream(cursor)).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response())
}
