//! The server half of the Raft network: axum routes under `/raft/*`. They require the cluster
//! token (constant-time compare), never accept a client API key, and have no body-size limit:
//! a snapshot or a large append must never meet a limit meant for clients
//! (`docs/large-values.md`). Snapshot bodies stream to a staging file, are verified, and only
//! then handed to openraft.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::{ReadPolicy, Snapshot};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;

use super::snapshot::{Manifest, SnapshotFile, SnapshotStats, SnapshotStore};
use super::types::{Raft, Vote};
use super::wire;
use crate::cluster_token::ClusterToken;
use crate::disk_space::DiskSpace;

/// State shared by the Raft RPC handlers.
#[derive(Clone)]
pub struct RpcState {
    raft: Raft,
    token: Arc<ClusterToken>,
    snapshots: Arc<SnapshotStore>,
    stats: Arc<SnapshotStats>,
    inbound_snapshot: Arc<Semaphore>,
    snapshot_idle: Duration,
    contact: Arc<super::LeaderContact>,
    rejoins: Arc<super::RejoinAllowances>,
    disk: Arc<DiskSpace>,
}

/// Builds the `/raft/*` router. `snapshot_idle` bounds how long an inbound snapshot body may
/// stall before it is abandoned.
pub fn router(
    raft: Raft,
    token: Arc<ClusterToken>,
    snapshots: Arc<SnapshotStore>,
    snapshot_idle: Duration,
    contact: Arc<super::LeaderContact>,
    rejoins: Arc<super::RejoinAllowances>,
    disk: Arc<DiskSpace>,
) -> Router {
    let stats = snapshots.stats();
    let inbound_snapshot = Arc::new(Semaphore::new(1));
    let state = RpcState { raft, token, snapshots, stats, inbound_snapshot, snapshot_idle, contact, rejoins, disk };
    Router::new()
        .route(wire::PATH_APPEND, post(append))
        .route(wire::PATH_VOTE, post(vote))
        .route(wire::PATH_PRE_VOTE, post(pre_vote))
        .route(wire::PATH_TRANSFER_LEADER, post(transfer_leader))
        .route(wire::PATH_SNAPSHOT, post(snapshot))
        .route(wire::PATH_READ_INDEX, post(read_index))
        .route(&format!("{}/{{id}}", wire::PATH_MEMBER_PROGRESS), get(member_progress))
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn_with_state(state.clone(), require_cluster_token))
        .with_state(state)
}

/// What this node knows of member `id`'s log (see `crate::lost_member`).
async fn member_progress(State(s): State<RpcState>, Path(id): Path<u64>) -> Response {
    let (leader, matched) = {
        let m = s.raft.metrics();
        let m = m.borrow_watched();
        let leader = m.state == openraft::ServerState::Leader;
        let matched = m.replication.as_ref().and_then(|r| r.get(&id).cloned().flatten()).map(|l| l.index);
        (leader, matched)
    };
    let rejoin_allowed = leader && s.rejoins.take(id);
    axum::Json(wire::MemberProgress { leader, matched, rejoin_allowed }).into_response()
}

async fn require_cluster_token(State(s): State<RpcState>, req: Request, next: Next) -> Response {
    let presented =
        req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(t) if s.token.accepts(t) => next.run(req).await,
        _ => unauthorized(),
    }
}

/// The 401 of `/raft/*`, shaped like the client API's problem responses (RFC 7807) so a
/// misconfigured peer or a probing client reads the same kind of error everywhere.
fn unauthorized() -> Response {
    let body = serde_json::json!({
        "type": "https://confman.dev/problems/unauthenticated",
        "title": "Authentication required",
        "status": StatusCode::UNAUTHORIZED.as_u16(),
        "detail": "a valid cluster token is required on /raft/*",
    });
    (StatusCode::UNAUTHORIZED, [(header::CONTENT_TYPE, "application/problem+json")], body.to_string()).into_response()
}

/// Encodes `Result<T, String>` as a postcard reply.
fn reply<T: Serialize>(r: Result<T, String>) -> Response {
    match wire::encode(&r) {
        Ok(b) => ([(header::CONTENT_TYPE, wire::CONTENT_TYPE)], b).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Decodes a request body; bodies over 1 MiB are decoded on a blocking thread.
async fn decode_body<T: DeserializeOwned + Send + 'static>(body: Bytes) -> Result<T, Response> {
    let r = if body.len() > (1 << 20) {
        tokio::task::spawn_blocking(move || wire::decode::<T>(&body))
            .await
            .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response())?
    } else {
        wire::decode::<T>(&body)
    };
    r.map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()).into_response())
}

async fn append(State(s): State<RpcState>, body: Bytes) -> Response {
    type Response = openraft::raft::AppendEntriesResponse<super::types::TypeConfig>;
    match decode_body::<openraft::raft::AppendEntriesRequest<super::types::TypeConfig>>(body).await {
        Ok(mut req) => {
            // Below the disk reserve no new client command of the sender's term is written (a
            // failed log write would stop Raft): the entries before it are taken and reported
            // as a partial success, the leader sends the rest again later and learns from the
            // refusal that this member has no room. Heartbeats still count, so this follower
            // calls no election while it waits for room. Blank and membership entries (a few
            // bytes, inside the reserve) and a former leader's uncommitted commands (a bounded
            // backlog, which a new leader sends ahead of its blank entry) are taken, so a new
            // leader can commit its term and serve reads when every member is low.
            let last = s.raft.metrics().borrow_watched().last_log_index;
            let mut cut = None;
            if let Some(at) = first_new_command(&req.entries, last, req.vote.leader_id.term)
                && s.disk.check()
            {
                if at == 0 {
                    return reply::<Response>(Err(format!(
                        "{}{}",
                        super::peer_room::REFUSED_PREFIX,
                        s.disk.describe()
                    )));
                }
                req.entries.truncate(at);
                cut = req.entries.last().map(|e| e.log_id);
            }
            let result = s.raft.append_entries(req).await;
            // Accepted from the leader of our term (a higher vote means the sender is not it).
            if result.as_ref().is_ok_and(|r| !matches!(r, Response::HigherVote(_))) {
                s.contact.touch();
            }
            let result = match (result, cut) {
                (Ok(Response::Success), Some(taken)) => Ok(Response::PartialSuccess(Some(taken))),
                (r, _) => r,
            };
            reply(result.map_err(|e| e.to_string()))
        }
        Err(r) => r,
    }
}

/// The position in `entries` of the first client command of the sender's `term` past `last`,
/// this log's last index: the first entry that takes new space a full disk must not give.
/// Commands at or below `last` are already here, or replace a former leader's uncommitted
/// ones; commands of a former term are that leader's uncommitted backlog. Both are bounded,
/// and refusing them would keep the new leader's blank entry, behind them, from committing.
fn first_new_command(entries: &[super::types::Entry], last: Option<u64>, term: u64) -> Option<usize> {
    entries.iter().position(|e| {
        matches!(e.payload, openraft::EntryPayload::Normal(_))
            && e.log_id.leader_id.term == term
            && last.is_none_or(|l| e.log_id.index > l)
    })
}

async fn vote(State(s): State<RpcState>, body: Bytes) -> Response {
    match decode_body(body).await {
        Ok(req) => reply(s.raft.vote(req).await.map_err(|e| e.to_string())),
        Err(r) => r,
    }
}

async fn pre_vote(State(s): State<RpcState>, body: Bytes) -> Response {
    match decode_body(body).await {
        Ok(req) => reply(s.raft.pre_vote(req).await.map_err(|e| e.to_string())),
        Err(r) => r,
    }
}

async fn transfer_leader(State(s): State<RpcState>, body: Bytes) -> Response {
    match decode_body(body).await {
        Ok(req) => reply(s.raft.handle_transfer_leader(req).await.map_err(|e| e.to_string())),
        Err(r) => r,
    }
}

/// Leader side of a follower's linearizable read: confirms leadership with a quorum and
/// returns the index the follower must apply before reading.
async fn read_index(State(s): State<RpcState>) -> Response {
    match s.raft.get_read_log_id(ReadPolicy::ReadIndex).await {
        Ok((read_log_id, _applied)) => reply(Ok::<_, String>(wire::ReadIndex { index: read_log_id.index() })),
        Err(e) => reply::<wire::ReadIndex>(Err(e.to_string())),
    }
}

fn header_value<T: DeserializeOwned>(headers: &HeaderMap, name: &'static str) -> Result<T, String> {
    let v = headers.get(name).and_then(|v| v.to_str().ok()).ok_or_else(|| format!("missing header {name}"))?;
    wire::header_decode(name, v).map_err(|e| e.to_string())
}

async fn snapshot(State(s): State<RpcState>, headers: HeaderMap, body: Body) -> Response {
    let Ok(permit) = s.inbound_snapshot.clone().try_acquire_owned() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "another snapshot is being received").into_response();
    };

    let vote: Vote = match header_value(&headers, wire::HEADER_VOTE) {
        Ok(v) => v,
        Err(e) => return (StatusCode::BAD_REQUEST, e).into_response(),
    };
    let manifest: Manifest = match header_value(&headers, wire::HEADER_MANIFEST) {
        Ok(v) => v,
        Err(e) => return (StatusCode::BAD_REQUEST, e).into_response(),
    };
    // The snapshot is written beside the current state and snapshot: it must fit above the
    // reserve, or receiving it could fill the disk under Raft's own writes.
    let low = s.disk.check();
    if low || s.disk.free() < s.disk.reserve().saturating_add(manifest.data_size) {
        return (
            StatusCode::INSUFFICIENT_STORAGE,
            format!(
                "{}a snapshot of {} bytes does not fit: {} bytes free, reserve {} (disk-reserve-bytes)",
                super::peer_room::REFUSED_PREFIX,
                manifest.data_size,
                s.disk.free(),
                s.disk.reserve()
            ),
        )
            .into_response();
    }
    // Refuse, before downloading, what openraft would reject by panicking.
    let (committed, current_vote) = {
        let m = s.raft.metrics();
        let m = m.borrow_watched();
        (m.local_committed, m.vote)
    };
    if let Some(snap_last) = &manifest.meta.last_log_id {
        if snap_last.leader_id.term > vote.leader_id.term {
            s.stats.record_rejected();
            return reply::<()>(Err(format!("snapshot at {snap_last} is beyond the sender's vote {vote}")));
        }
        if committed.as_ref().is_some_and(|c| snap_last.index <= c.index) {
            tracing::info!(%snap_last, "snapshot not newer than the local committed log; not installing");
            return reply(Ok::<_, String>(openraft::raft::SnapshotResponse::<super::types::TypeConfig>::new(
                current_vote,
            )));
        }
    }
    let staging = match s.snapshots.staging_dir() {
        Ok(d) => d,
        Err(e) => return reply::<()>(Err(format!("cannot stage snapshot: {e}"))),
    };
    // Receiving and installing run in a task of their own that holds the one inbound permit
    // until the install is over: if the sender goes away (this handler is dropped), no second
    // snapshot can start receiving while openraft still installs this one.
    let task = tokio::spawn(async move {
        let result = receive(&s, &staging, vote, manifest, body).await;
        if result.is_err() {
            s.stats.record_rejected();
        }
        // An installed snapshot was renamed into place; whatever is still staged (refused, or
        // not installed by openraft because it was no longer needed) is removed.
        if tokio::fs::try_exists(&staging).await.unwrap_or(true)
            && let Err(e) = tokio::fs::remove_dir_all(&staging).await
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %staging.display(), "could not remove staging dir: {e}");
        }
        drop(permit);
        result
    });
    match task.await {
        Ok(result) => reply(result),
        Err(e) => reply::<()>(Err(format!("snapshot receive task failed: {e}"))),
    }
}

/// Streams the body into the staging directory, checks size and CRC, then installs.
async fn receive(
    s: &RpcState,
    staging: &std::path::Path,
    vote: Vote,
    manifest: Manifest,
    body: Body,
) -> Result<openraft::raft::SnapshotResponse<super::types::TypeConfig>, String> {
    let started = Instant::now();
    let path = SnapshotStore::staged_data_path(staging);
    let mut hasher = crc32fast::Hasher::new();
    let mut size = 0u64;
    let mut file = tokio::fs::File::create(&path).await.map_err(|e| e.to_string())?;
    let mut stream = body.into_data_stream();
    loop {
        let next = tokio::time::timeout(s.snapshot_idle, stream.next())
            .await
            .map_err(|_| format!("snapshot body stalled for {:?}", s.snapshot_idle))?;
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(|e| format!("snapshot body interrupted: {e}"))?;
        hasher.update(&chunk);
        size += chunk.len() as u64;
        file.write_all(&chunk).await.map_err(|e| e.to_string())?;
    }
    file.sync_all().await.map_err(|e| e.to_string())?;
    drop(file);
    let crc = hasher.finalize();
    if size != manifest.data_size || (size > 0 && crc != manifest.data_crc32) {
        tracing::warn!(
            size,
            expected_size = manifest.data_size,
            crc,
            expected_crc = manifest.data_crc32,
            "snapshot rejected: checksum mismatch"
        );
        s.stats.record_checksum_mismatch();
        return Err(format!(
            "snapshot rejected: received {size} bytes with crc32 {crc:08x}, manifest says {} bytes with crc32 {:08x}",
            manifest.data_size, manifest.data_crc32
        ));
    }
    s.stats.record_receive(size, started);
    if size == 0 {
        tokio::fs::remove_file(&path).await.map_err(|e| e.to_string())?;
    }
    let snapshot =
        Snapshot { meta: manifest.meta.clone(), snapshot: SnapshotFile { dir: staging.to_path_buf(), manifest } };
    s.raft.install_full_snapshot(vote, snapshot).await.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use openraft::EntryPayload;
    use openraft::testing::{blank_ent, log_id};

    use super::*;
    use crate::command::{Command, Operation};
    use crate::raft::types::{Entry, TypeConfig};

    fn command(index: u64) -> Entry {
        let op = Operation::DeleteNamespace { name: format!("ns{index}") };
        Entry {
            log_id: log_id::<TypeConfig>(2, 1, index),
            payload: EntryPayload::Normal(Command { actor: "test".into(), at_ms: 0, op }),
        }
    }

    /// A new leader resends commands a full follower already holds, and a former leader's
    /// uncommitted ones, ahead of its blank entry; refusing them would keep every member from
    /// committing the new term (no reads while all disks are low). Its own new commands are cut
    /// off where they start.
    #[test]
    fn a_full_follower_takes_all_but_new_commands_of_the_senders_term() {
        let resent = vec![command(7), command(8), blank_ent::<TypeConfig>(3, 2, 9)];
        assert_eq!(first_new_command(&resent, Some(8), 3), None, "7 and 8 are already in the log");
        assert_eq!(first_new_command(&resent, Some(6), 3), None, "7 and 8 are a former term's backlog");
        assert_eq!(first_new_command(&resent, Some(7), 2), Some(1), "8 is new, of the sender's term");
        assert_eq!(first_new_command(&resent, None, 2), Some(0), "an empty log holds nothing");
        let mut own = vec![blank_ent::<TypeConfig>(3, 2, 9), command(10)];
        own[1].log_id = log_id::<TypeConfig>(3, 2, 10);
        assert_eq!(first_new_command(&own, Some(8), 3), Some(1), "the blank entry goes, the command waits");
        assert_eq!(first_new_command(&[blank_ent::<TypeConfig>(3, 2, 9)], Some(1), 3), None, "a blank entry is taken");
        assert_eq!(first_new_command(&[], Some(1), 3), None, "a heartbeat is taken");
    }
}
