//! The client half of the Raft network (`RaftNetworkV2`) over HTTP. Heartbeats, appends and
//! snapshots each use their own `reqwest::Client` (own connection pool), so a multi-MB append
//! or a snapshot body never delays a heartbeat behind it (a starved heartbeat means a spurious
//! election; `docs/large-values.md`, lesson 6).
//!
//! A heartbeat that meets a conflict (the peer lost entries it acknowledged: a member rejoining
//! on a wiped volume) is held back from openraft for a grace period; see [`HeartbeatConflicts`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::Stream;

use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, OptionalSend, RaftNetworkFactory, RaftNetworkV2};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::peer_room::{PeerRoom, REFUSED_PREFIX};
use super::snapshot::{SnapshotFile, SnapshotStats};
use super::types::{FileSnapshot, Node, NodeId, TypeConfig, Vote};
use super::wire;

/// Timeouts of the Raft network, derived from the node's timing settings.
#[derive(Debug, Clone, Copy)]
pub struct NetworkTimeouts {
    /// Deadline of one AppendEntries carrying entries (replication connection).
    pub append: Duration,
    /// A snapshot transfer fails when no body byte moves for this long, and the receiver's
    /// install (after the last byte) may take this long. No total deadline: a snapshot grows
    /// with the data, and a deadline that fits today's would abort tomorrow's.
    pub snapshot_idle: Duration,
}

/// Creates per-peer clients for openraft.
pub struct NetworkFactory {
    token: Arc<str>,
    replication: reqwest::Client,
    heartbeat: reqwest::Client,
    snapshot: reqwest::Client,
    timeouts: NetworkTimeouts,
    stats: Arc<SnapshotStats>,
    room: Arc<PeerRoom>,
}

/// Which connection pool a peer client uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Channel {
    Replication,
    Heartbeat,
    Snapshot,
}

/// A connection to one peer.
pub struct PeerClient {
    target: NodeId,
    base: String,
    token: Arc<str>,
    client: reqwest::Client,
    channel: Channel,
    timeouts: NetworkTimeouts,
    stats: Arc<SnapshotStats>,
    /// Heartbeat channel only: how long the peer has been answering heartbeats with a conflict.
    conflicts: HeartbeatConflicts,
    /// Which peers refused entries for want of disk space.
    room: Arc<PeerRoom>,
}

/// Holds back a conflict answered to a heartbeat until the replication stream had time to meet
/// it itself.
///
/// A heartbeat carries the peer's matched log id as its `prev_log_id`, so a conflict answer means
/// the peer lost entries it acknowledged (a member rejoining on a wiped volume, after the admin's
/// `allow_next_revert`). openraft (0.10.0-alpha.37) then resets the peer's progress *without an
/// inflight id* (`progress::entry::update::Updater::update_conflicting`): `matching` becomes
/// `None` and a pipelined `LogsSince` inflight is dropped, but the replication task keeps running
/// the session of that inflight. Dropping it releases the purge guard
/// (`ReplicationHandler::try_purge_log`, which checks only the inflight), so a purge that was
/// waiting on this peer (the kept-tail purge after a snapshot) runs at once, and the still
/// running session then reads entries that were just purged: the log reader returns the range
/// from the first entry left (the purged prefix is skipped, as the reader contract allows),
/// `StreamState::next_request` panics on its `debug_assert` that `prev_log_id` is right before
/// the first entry (release builds would send that non-contiguous AppendEntries instead), the
/// panic ends the replication task, and nothing restarts it: no log entry reaches that peer
/// again until the leader changes, while heartbeats still succeed.
///
/// The replication stream meets the same conflict when it sends its next request (at the latest
/// after its backoff or one append timeout), and its conflict carries the inflight id: openraft
/// then resets the progress *and* ends the session, so no stale session outlives the purge
/// guard. So a heartbeat conflict is reported as a transport error for `grace`; if the peer still
/// answers conflicts after that, the stream is idle (the peer had every entry, and nothing was
/// written since), no purge can be pending below its matched index, and the conflict goes
/// through so that an idle group still notices the lost entries.
///
/// A held-back conflict is reported to openraft as a successful heartbeat: openraft counts a
/// conflicting heartbeat as an acknowledgement of the leader too (the peer answered in this
/// term), and an error would let the leader lease lapse while the peer rejoins. A heartbeat's
/// success moves no replication progress. The workaround can go once openraft clears the
/// replication session together with the progress (filed upstream: not yet).
#[derive(Debug, Default)]
struct HeartbeatConflicts {
    /// First and latest conflict of the current run.
    run: Option<(Instant, Instant)>,
}

impl HeartbeatConflicts {
    /// Whether this heartbeat conflict may reach openraft: `grace` after the first conflict of
    /// a run. A run ends with any other answer, or when no conflict came for `grace` (the peer
    /// was unreachable meanwhile, e.g. restarting again, so its stream may be busy once more).
    fn pass(&mut self, conflict: bool, now: Instant, grace: Duration) -> bool {
        if !conflict {
            self.run = None;
            return true;
        }
        let first = match self.run {
            Some((first, last)) if now.duration_since(last) <= grace => first,
            _ => now,
        };
        self.run = Some((first, now));
        now.duration_since(first) >= grace
    }

    /// Whether the conflict just recorded started a run.
    fn run_started(&self) -> bool {
        matches!(self.run, Some((first, last)) if first == last)
    }
}

impl NetworkTimeouts {
    /// How long a heartbeat conflict is held back ([`HeartbeatConflicts`]): two append
    /// deadlines, longer than the replication stream takes to send its next request (a pending
    /// append finishes or times out, then a backoff of a fraction of a second).
    fn heartbeat_conflict_grace(&self) -> Duration {
        self.append * 2
    }
}

/// How this node reaches its peers: fixed addresses for host names (`--resolve`) and the CAs
/// trusted for https:// peers (`--tls-ca-file`; none: the system's roots).
#[derive(Debug, Clone, Default)]
pub struct Outgoing {
    /// Fixed addresses for host names, used instead of DNS (`--resolve`, like curl's).
    pub resolve: Vec<(String, std::net::IpAddr)>,
    /// Extra trusted CA certificates.
    pub trusted_cas: Vec<reqwest::Certificate>,
}

/// Builds an HTTP client for intra-cluster traffic (no proxies, TCP_NODELAY) as `out` says.
pub fn http_client(out: &Outgoing) -> Result<reqwest::Client, reqwest::Error> {
    let base = || {
        let mut b = confman_http::http_builder();
        for (host, ip) in &out.resolve {
            b = b.resolve(host, std::net::SocketAddr::new(*ip, 0));
        }
        b.tcp_nodelay(true).connect_timeout(Duration::from_secs(2)).pool_idle_timeout(Duration::from_secs(60))
    };
    confman_http::build_http(base, &out.trusted_cas)
}

impl NetworkFactory {
    /// A factory authenticating with `token`.
    pub fn new(
        token: Arc<str>,
        timeouts: NetworkTimeouts,
        stats: Arc<SnapshotStats>,
        room: Arc<PeerRoom>,
        out: &Outgoing,
    ) -> Result<Self, reqwest::Error> {
        Ok(Self {
            token,
            replication: http_client(out)?,
            heartbeat: http_client(out)?,
            snapshot: http_client(out)?,
            timeouts,
            stats,
            room,
        })
    }

    fn client(&self, target: NodeId, node: &Node, channel: Channel) -> PeerClient {
        let client = match channel {
            Channel::Replication => self.replication.clone(),
            Channel::Heartbeat => self.heartbeat.clone(),
            Channel::Snapshot => self.snapshot.clone(),
        };
        PeerClient {
            target,
            base: node.addr.trim_end_matches('/').to_string(),
            token: self.token.clone(),
            client,
            channel,
            timeouts: self.timeouts,
            stats: self.stats.clone(),
            conflicts: HeartbeatConflicts::default(),
            room: self.room.clone(),
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> PeerClient {
        self.client(target, node, Channel::Replication)
    }

    async fn new_heartbeat_client(&mut self, target: NodeId, node: &Node) -> PeerClient {
        self.client(target, node, Channel::Heartbeat)
    }

    async fn new_snapshot_client(&mut self, target: NodeId, node: &Node) -> PeerClient {
        self.client(target, node, Channel::Snapshot)
    }
}

/// Why an RPC failed below the Raft layer.
#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error("peer unreachable: {0}")]
    Unreachable(reqwest::Error),
    #[error("transport: {0}")]
    Transport(String),
    #[error("peer refused: {0}")]
    Remote(String),
}

impl CallError {
    fn into_rpc(self) -> RPCError<TypeConfig> {
        match self {
            CallError::Unreachable(e) => RPCError::Unreachable(Unreachable::new(&e)),
            // A remote error here means the peer's Raft has stopped: back off like unreachable.
            CallError::Remote(m) => RPCError::Unreachable(Unreachable::new(&AnyError::error(m))),
            CallError::Transport(m) => RPCError::Network(NetworkError::new(&AnyError::error(m))),
        }
    }

    fn into_streaming(self) -> StreamingError<TypeConfig> {
        match self {
            CallError::Unreachable(e) => StreamingError::Unreachable(Unreachable::new(&e)),
            CallError::Remote(m) => StreamingError::Unreachable(Unreachable::new(&AnyError::error(m))),
            CallError::Transport(m) => StreamingError::Network(NetworkError::new(&AnyError::error(m))),
        }
    }
}

fn classify(e: reqwest::Error) -> CallError {
    if e.is_connect() || e.is_timeout() { CallError::Unreachable(e) } else { CallError::Transport(e.to_string()) }
}

/// Reads a postcard `Result<T, String>` reply.
async fn read_reply<T: DeserializeOwned>(resp: reqwest::Response) -> Result<T, CallError> {
    let status = resp.status();
    let body = resp.bytes().await.map_err(classify)?;
    if !status.is_success() {
        return Err(CallError::Remote(format!("HTTP {status}: {}", String::from_utf8_lossy(&body))));
    }
    let reply: Result<T, String> = wire::decode(&body).map_err(|e| CallError::Transport(e.to_string()))?;
    reply.map_err(CallError::Remote)
}

impl PeerClient {
    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        path: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        let body = wire::encode(req).map_err(|e| CallError::Transport(e.to_string()))?;
        let resp = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(&*self.token)
            .header(reqwest::header::CONTENT_TYPE, wire::CONTENT_TYPE)
            .timeout(timeout)
            .body(body)
            .send()
            .await
            .map_err(classify)?;
        read_reply(resp).await.inspect_err(|e| tracing::debug!(peer = self.target, path, "raft rpc failed: {e}"))
    }

    /// Heartbeats and votes must answer within openraft's TTL; appends carrying entries get
    /// the configured append timeout instead, so a large batch is not cut off and resent.
    fn append_timeout(&self, option: &RPCOption) -> Duration {
        match self.channel {
            Channel::Heartbeat => option.hard_ttl(),
            _ => self.timeouts.append.max(option.hard_ttl()),
        }
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = SnapshotFile;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let timeout = self.append_timeout(&option);
        let carries_entries = !rpc.entries.is_empty();
        let resp: AppendEntriesResponse<TypeConfig> = match self.call(wire::PATH_APPEND, &rpc, timeout).await {
            Ok(resp) => resp,
            Err(e) => {
                if matches!(&e, CallError::Remote(m) if m.starts_with(REFUSED_PREFIX)) {
                    self.room.refused(self.target);
                }
                return Err(e.into_rpc());
            }
        };
        match resp {
            AppendEntriesResponse::Success if carries_entries => self.room.took(self.target),
            // Only a follower below its disk reserve takes part of a batch (`rpc_server`).
            AppendEntriesResponse::PartialSuccess(_) => self.room.refused(self.target),
            _ => {}
        }
        if self.channel == Channel::Heartbeat {
            let conflict = matches!(resp, AppendEntriesResponse::Conflict);
            let grace = self.timeouts.heartbeat_conflict_grace();
            if !self.conflicts.pass(conflict, Instant::now(), grace) {
                if self.conflicts.run_started() {
                    let prev = rpc.prev_log_id.map(|l| l.index);
                    tracing::info!(peer = self.target, ?prev, ?grace, "heartbeat conflict held back");
                }
                return Ok(AppendEntriesResponse::Success);
            }
        }
        Ok(resp)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(wire::PATH_VOTE, &rpc, option.hard_ttl()).await.map_err(CallError::into_rpc)
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(wire::PATH_PRE_VOTE, &rpc, option.hard_ttl()).await.map_err(CallError::into_rpc)
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(wire::PATH_TRANSFER_LEADER, &req, option.hard_ttl()).await.map_err(CallError::into_rpc)
    }

    /// Streams the snapshot file as the request body (memory O(chunk)); fails when no byte
    /// moves for the idle timeout or the receiver's install outlasts it; stops when openraft
    /// cancels the replication.
    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: FileSnapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let file = snapshot.snapshot;
        let size = file.manifest.data_size;
        let started = Instant::now();
        let progress = Arc::new(Progress::new());
        let send = async {
            let body = if size > 0 {
                let f = tokio::fs::File::open(file.data_path())
                    .await
                    .map_err(|e| CallError::Transport(format!("open snapshot: {e}")))?;
                let chunks = tokio_util::io::ReaderStream::with_capacity(f, 1 << 20);
                reqwest::Body::wrap_stream(ProgressStream { inner: chunks, progress: progress.clone() })
            } else {
                reqwest::Body::from(Vec::new())
            };
            let vote_h =
                wire::header_encode(wire::HEADER_VOTE, &vote).map_err(|e| CallError::Transport(e.to_string()))?;
            let manifest_h = wire::header_encode(wire::HEADER_MANIFEST, &file.manifest)
                .map_err(|e| CallError::Transport(e.to_string()))?;
            let resp = self
                .client
                .post(format!("{}{}", self.base, wire::PATH_SNAPSHOT))
                .bearer_auth(&*self.token)
                .header(wire::HEADER_VOTE, vote_h)
                .header(wire::HEADER_MANIFEST, manifest_h)
                .header(reqwest::header::CONTENT_LENGTH, size)
                .body(body)
                .send()
                .await
                .map_err(classify)?;
            read_reply::<SnapshotResponse<TypeConfig>>(resp).await
        };
        let idle = self.timeouts.snapshot_idle;
        let result = tokio::select! {
            r = send => r.map_err(CallError::into_streaming),
            () = progress.stalled(idle) => Err(CallError::Transport(format!(
                "snapshot transfer to node {} stalled for {idle:?}", self.target
            )).into_streaming()),
            closed = cancel => Err(StreamingError::Closed(closed)),
        };
        if result.is_ok() {
            self.stats.record_send(size, started);
        }
        result
    }
}

/// Progress of a streamed body: when the last chunk moved.
struct Progress {
    started: Instant,
    last_ms: AtomicU64,
}

impl Progress {
    fn new() -> Self {
        Self { started: Instant::now(), last_ms: AtomicU64::new(0) }
    }

    fn touch(&self) {
        self.last_ms.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Resolves once nothing moved for `idle` (while streaming), or the reply has not come
    /// `idle` after the last byte (the receiver's verify + install).
    async fn stalled(&self, idle: Duration) {
        let tick = (idle / 4).max(Duration::from_millis(50));
        loop {
            tokio::time::sleep(tick).await;
            let since =
                self.started.elapsed().saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)));
            if since >= idle {
                return;
            }
        }
    }
}

/// Wraps the file stream to record progress per chunk.
struct ProgressStream<S> {
    inner: S,
    progress: Arc<Progress>,
}

impl<S> Stream for ProgressStream<S>
where
    S: Stream<Item = std::io::Result<Bytes>> + Unpin,
{
    type Item = std::io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let r = Pin::new(&mut self.inner).poll_next(cx);
        match &r {
            Poll::Ready(_) => self.progress.touch(),
            Poll::Pending => {}
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_conflict_is_held_back_for_the_grace_then_passes_until_a_success() {
        let grace = Duration::from_secs(10);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut c = HeartbeatConflicts::default();
        assert!(c.pass(false, at(0), grace), "a success passes");
        assert!(!c.pass(true, at(1), grace), "the first conflict is held back");
        assert!(!c.pass(true, at(10), grace), "still within the grace");
        assert!(c.pass(true, at(11), grace), "the grace is over: the conflict goes through");
        assert!(c.pass(true, at(12), grace), "and the next ones too");
        assert!(c.pass(false, at(13), grace), "a success ends the run");
        assert!(!c.pass(true, at(14), grace), "a new run of conflicts is held back again");
        assert!(c.run_started(), "and says so once");
        assert!(!c.pass(true, at(15), grace), "held back");
        assert!(!c.run_started());
    }

    #[test]
    fn a_conflict_after_a_silence_longer_than_the_grace_starts_a_new_run() {
        let grace = Duration::from_secs(10);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut c = HeartbeatConflicts::default();
        assert!(!c.pass(true, at(0), grace), "held back");
        // The peer is unreachable from 1 s to 30 s (failed calls do not reach `pass`).
        assert!(!c.pass(true, at(30), grace), "a fresh run: its stream may be busy again");
        assert!(!c.pass(true, at(39), grace));
        assert!(c.pass(true, at(40), grace), "the new run's grace is over");
    }
}
