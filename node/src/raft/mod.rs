//! Everything that touches openraft lives under this module, so a library upgrade stays local.
//! The rest of the node sees `RaftNode`: propose a command, wait for a linearizable read
//! point, inspect and change the cluster, and the `/raft/*` router.
//!
//! Roles are split like openraft's examples: `log_store` (log + group commit),
//! `state_machine` (apply), `snapshot` (file snapshots), `network` / `rpc_server` (HTTP
//! transport, both halves), `types` (type configuration).

pub mod log_store;
pub mod network;
pub mod rpc_server;
pub mod snapshot;
pub mod state_machine;
pub mod types;
pub mod wire;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::async_runtime::watch::WatchReceiver;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, ReadPolicy, ServerState, SnapshotPolicy};
use serde::Serialize;
use tokio::sync::watch;

use self::log_store::{LogBytes, LogStore, SyncerHandle};
use self::network::{NetworkFactory, NetworkTimeouts};
use self::snapshot::SnapshotStore;
use self::state_machine::StateMachine;
pub use self::types::NodeId;
use self::types::{Raft, TypeConfig};
use crate::cluster_token::ClusterToken;
use crate::command::{Command, CommandOutcome};
use crate::store::{RocksDb, StoreError, blocking};

/// Raft settings of a node (from `config::Settings`, already validated).
#[derive(Debug, Clone)]
pub struct RaftSettings {
    /// This node's id.
    pub node_id: NodeId,
    /// URL peers and clients use to reach this node.
    pub advertise: String,
    /// Initial members for bootstrap (empty: a single-node cluster of this node).
    pub peers: BTreeMap<NodeId, String>,
    /// Never initialise a cluster; wait to be added through the admin API.
    pub join: bool,
    /// How peers are reached (host overrides, trusted CAs).
    pub outgoing: network::Outgoing,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Election timeout lower bound.
    pub election_min: Duration,
    /// Election timeout upper bound.
    pub election_max: Duration,
    /// Deadline of a client request inside the node (commit wait, read wait, forwarding).
    pub request_timeout: Duration,
    /// Deadline of an AppendEntries carrying entries.
    pub append_timeout: Duration,
    /// Base allowance of a snapshot transfer.
    pub snapshot_timeout: Duration,
    /// Byte cap of one AppendEntries payload.
    pub max_append_bytes: u64,
    /// Entry cap of one AppendEntries payload.
    pub max_append_entries: u64,
    /// Snapshot after this many log bytes since the last snapshot.
    pub compaction_bytes: u64,
    /// Snapshot after this many log entries since the last snapshot.
    pub compaction_entries: u64,
    /// Log entries kept after a snapshot for lagging followers.
    pub logs_to_keep: u64,
    /// Superseded versions kept per key, proposed when this node is the first leader to take
    /// a client write in a cluster that has none yet (afterwards the cluster's value rules;
    /// see `Operation::SetHistoryDepth`).
    pub history_depth: u64,
}

/// Errors of Raft operations, mapped to HTTP statuses by the API layer.
#[derive(Debug, thiserror::Error)]
pub enum RaftNodeError {
    /// No leader is known right now (election in progress or quorum lost).
    #[error("no leader is currently known")]
    NoLeader,
    /// Another node leads; the request belongs there.
    #[error("node {leader_id} at {leader_addr} is the leader")]
    NotLeader {
        /// Leader id.
        leader_id: NodeId,
        /// Leader's advertised URL.
        leader_addr: String,
    },
    /// The operation did not finish in time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// A proposal was lost track of after it may have been replicated (discarded by a leader
    /// change or a snapshot install, or Raft stopped): it may or may not be applied.
    #[error("the outcome of the write is unknown: {0}")]
    OutcomeUnknown(String),
    /// The request is invalid for the current membership.
    #[error("membership change refused: {0}")]
    Membership(String),
    /// Raft has stopped (shutdown or fatal storage error).
    #[error("raft has stopped: {0}")]
    Stopped(String),
    /// Talking to the leader failed.
    #[error("could not reach the leader: {0}")]
    Network(String),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The settings are unusable.
    #[error("invalid raft settings: {0}")]
    Config(String),
}

/// Node and cluster state for `/api/v1/cluster` and `/health/ready`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    /// This node's id.
    pub node_id: NodeId,
    /// leader, follower, candidate, learner or shutdown.
    pub role: String,
    /// Current leader, if known.
    pub leader_id: Option<NodeId>,
    /// Current leader's URL, if known.
    pub leader_addr: Option<String>,
    /// Current term.
    pub term: u64,
    /// Last log index on this node.
    pub last_log_index: Option<u64>,
    /// Committed index known to this node.
    pub commit_index: Option<u64>,
    /// Applied index of this node.
    pub applied_index: Option<u64>,
    /// Index covered by this node's last snapshot.
    pub snapshot_index: Option<u64>,
    /// Highest purged log index.
    pub purged_index: Option<u64>,
    /// Log bytes appended since the last snapshot.
    pub log_bytes_since_snapshot: u64,
    /// Members of the effective membership.
    pub members: Vec<MemberStatus>,
    /// Times this node saw a new leader (including the first one after start).
    pub leader_changes: u64,
    /// Snapshot build, transfer and install figures.
    pub snapshots: snapshot::SnapshotStatsView,
}

/// One member of the cluster.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    /// Node id.
    pub id: NodeId,
    /// Advertised URL.
    pub address: String,
    /// `voter` or `learner`.
    pub role: &'static str,
    /// On the leader: milliseconds since this member last acknowledged a heartbeat (absent on
    /// followers, for the leader itself, and for a member that never answered).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_ack_ms: Option<u64>,
}

/// When this node last heard from a leader (an AppendEntries, heartbeats included).
#[derive(Debug)]
pub struct LeaderContact {
    started: std::time::Instant,
    last_ms: AtomicU64,
}

impl LeaderContact {
    fn new() -> Self {
        Self { started: std::time::Instant::now(), last_ms: AtomicU64::new(0) }
    }

    /// Records contact from the current leader now.
    pub fn touch(&self) {
        self.last_ms.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn since(&self) -> Duration {
        self.started.elapsed().saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// Starts an election as soon as the dead leader's lease has run out on every follower.
///
/// openraft's followers honour a leader lease of `election_max` after the last heartbeat and
/// refuse votes meanwhile; their election timers fire within `election_min..election_max`, so
/// the first round after a leader dies is always refused and the next one comes a whole timeout
/// later (measured: a new leader 4.2 s after a `kill -9` with a 1–2 s timeout). A voter that has
/// not heard from a leader for `election_max` plus a random share of `election_min / 5` starts
/// a Pre-Vote round at once (refused while any quorum still hears a leader, so a healthy leader
/// is never disturbed), which puts failover at about the lease plus one round trip.
async fn failover_watchdog(
    enabled: bool,
    raft: Raft,
    me: NodeId,
    contact: Arc<LeaderContact>,
    heartbeat: Duration,
    election_min: Duration,
    election_max: Duration,
) {
    if !enabled {
        return;
    }
    // Checked often enough that the lease's end is noticed within a few percent of it.
    let mut tick = tokio::time::interval(heartbeat.min(election_min / 20).max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let jitter = || election_min.mul_f64(rand::random::<f64>() / 5.0);
    let mut wait = election_max + jitter();
    let mut last_round: Option<std::time::Instant> = None;
    loop {
        tick.tick().await;
        let is_voting_follower = {
            let m = raft.metrics();
            let m = m.borrow_watched();
            m.state == ServerState::Follower && m.membership_config.membership().voter_ids().any(|id| id == me)
        };
        if !is_voting_follower || contact.since() < wait {
            continue;
        }
        if last_round.is_some_and(|t| t.elapsed() < election_min) {
            continue;
        }
        last_round = Some(std::time::Instant::now());
        wait = election_max + jitter();
        tracing::info!(
            silent_ms = contact.since().as_millis() as u64,
            "no leader heard past its lease; starting a pre-vote"
        );
        if raft.trigger().elect(true).await.is_err() {
            return;
        }
    }
}

/// How far apply may trail the commit index on a ready node (see [`RaftNode::is_ready`]): a
/// node catching up after a restart is further behind than this for as long as it matters.
pub const READY_APPLY_LAG: u64 = 64;

/// Ids an admin let rejoin with empty data (`allow_rejoin`), until the returning node asks
/// (`/raft/member-progress`): without one, a node that starts on an empty data directory while
/// the leader holds entries it acknowledged refuses to start (`crate::lost_member`).
#[derive(Debug, Default)]
pub struct RejoinAllowances(Mutex<BTreeSet<NodeId>>);

impl RejoinAllowances {
    fn allow(&self, id: NodeId) {
        if let Ok(mut ids) = self.0.lock() {
            ids.insert(id);
        }
    }

    /// Whether `id` may rejoin; the allowance is used up.
    pub fn take(&self, id: NodeId) -> bool {
        self.0.lock().map(|mut ids| ids.remove(&id)).unwrap_or(false)
    }
}

/// A running Raft node with its storage.
pub struct RaftNode {
    raft: Raft,
    id: NodeId,
    db: Arc<RocksDb>,
    snapshots: Arc<SnapshotStore>,
    token: Arc<ClusterToken>,
    http: reqwest::Client,
    applied_rx: watch::Receiver<u64>,
    changes: Arc<crate::changes::ChangeFeed>,
    log_bytes: Arc<LogBytes>,
    syncer: Mutex<Option<SyncerHandle>>,
    compaction: tokio::task::JoinHandle<()>,
    tail_trim: tokio::task::JoinHandle<()>,
    leader_watch: tokio::task::JoinHandle<()>,
    failover: tokio::task::JoinHandle<()>,
    contact: Arc<LeaderContact>,
    leader_changes: Arc<AtomicU64>,
    rejoins: Arc<RejoinAllowances>,
    /// The history depth this node proposes when the cluster has none yet.
    initial_history_depth: u64,
    /// Set once the cluster's settings are known to be in the state (checked before the first
    /// client write a leader proposes, so no write is applied under the default by accident).
    settings_recorded: std::sync::atomic::AtomicBool,
    snapshot_timeout: Duration,
    request_timeout: Duration,
    election_min: Duration,
}

/// Byte bound of the log tail kept after a snapshot for lagging followers: a quarter of the
/// compaction threshold. A follower further behind than that is cheaper to send the snapshot
/// than the log (a snapshot is the state, the log is every superseded value too); with large
/// values the count bound (`logs_to_keep`) alone would keep hundreds of MiB.
fn kept_tail_bytes(compaction_bytes: u64) -> u64 {
    compaction_bytes / 4
}

/// After each snapshot (built or installed), purges the log beyond the kept tail's bounds
/// (`logs_to_keep` entries and `max_bytes`). openraft holds a purge back while a replication
/// stream still reads the entries, and never purges past its snapshot.
async fn trim_log_tail(raft: Raft, db: Arc<RocksDb>, max_entries: u64, max_bytes: u64) {
    let mut metrics = raft.metrics();
    let mut trimmed_for = None;
    loop {
        let snapshot = metrics.borrow_watched().snapshot.map(|s| s.index);
        if let Some(index) = snapshot
            && trimmed_for != Some(index)
        {
            let db = db.clone();
            match blocking(move || log_store::tail_purge_point(&db, index, max_entries, max_bytes)).await {
                Ok(Some(upto)) => {
                    trimmed_for = Some(index);
                    tracing::debug!(upto, snapshot = index, "purging the log tail beyond its bounds");
                    if raft.trigger().purge_log(upto).await.is_err() {
                        return;
                    }
                }
                Ok(None) => trimmed_for = Some(index),
                // Retried on the next metrics change.
                Err(e) => tracing::warn!("could not size the log tail after snapshot {index}: {e}"),
            }
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

fn stopped<E: std::fmt::Display>(e: E) -> RaftNodeError {
    RaftNodeError::Stopped(e.to_string())
}

/// What `RaftNode::start` built before wrapping it.
struct Parts {
    raft: Raft,
    db: Arc<RocksDb>,
    snapshots: Arc<SnapshotStore>,
    token: Arc<ClusterToken>,
    http: reqwest::Client,
    applied_rx: watch::Receiver<u64>,
    changes: Arc<crate::changes::ChangeFeed>,
    log_bytes: Arc<LogBytes>,
    syncer: SyncerHandle,
}

impl RaftNode {
    /// Opens storage, starts Raft and, on a pristine data directory, bootstraps the cluster
    /// (SPEC §2.4: the lowest listed id initialises it; the others wait to be contacted).
    pub async fn start(
        settings: &RaftSettings,
        db: Arc<RocksDb>,
        data_dir: &Path,
        token: Arc<ClusterToken>,
    ) -> Result<Arc<Self>, RaftNodeError> {
        let config = openraft::Config {
            cluster_name: "confman".into(),
            heartbeat_interval: settings.heartbeat.as_millis() as u64,
            election_timeout_min: settings.election_min.as_millis() as u64,
            election_timeout_max: settings.election_max.as_millis() as u64,
            install_snapshot_timeout: settings.snapshot_timeout.as_millis() as u64,
            max_payload_entries: settings.max_append_entries,
            // Compaction is decided by `LogBytes` (bytes, entries and state size), not by count.
            snapshot_policy: SnapshotPolicy::Never,
            // The kept tail is trimmed by `trim_log_tail` alone (entries and bytes): two writers
            // of openraft's purge point could move it backwards.
            max_in_snapshot_log_to_keep: u64::MAX,
            replication_lag_threshold: settings.compaction_entries.saturating_mul(2),
            purge_batch_size: 16,
            enable_pre_vote: Some(true),
            ..Default::default()
        }
        .validate()
        .map_err(|e| RaftNodeError::Config(e.to_string()))?;

        let snapshots = SnapshotStore::open(data_dir)?;
        let log_bytes = Arc::new(LogBytes::new(settings.compaction_bytes, settings.compaction_entries));
        if let Some(current) = snapshots.current()? {
            log_bytes.reset(current.manifest.data_size);
        }
        // Everything that can fail comes before the log store's syncer thread starts, or is
        // followed by a Raft shutdown: the syncer is joined on drop and only exits once the
        // log store (inside Raft) is gone.
        let http = network::http_client(&settings.outgoing).map_err(|e| RaftNodeError::Network(e.to_string()))?;
        let timeouts = NetworkTimeouts { append: settings.append_timeout, snapshot_idle: settings.snapshot_timeout };
        let network =
            NetworkFactory::new(Arc::from(token.presented()), timeouts, snapshots.stats(), &settings.outgoing)
                .map_err(|e| RaftNodeError::Network(e.to_string()))?;
        let (applied_tx, applied_rx) = watch::channel(0u64);
        let changes = Arc::new(crate::changes::ChangeFeed::default());
        let sm =
            StateMachine::new(db.clone(), snapshots.clone(), log_bytes.clone(), Arc::new(applied_tx), changes.clone())?;
        let (log_store, syncer) =
            LogStore::new(db.clone(), settings.max_append_bytes, settings.max_append_entries, log_bytes.clone())?;
        let raft = Raft::new(settings.node_id, Arc::new(config), network, log_store, sm).await.map_err(stopped)?;
        if let Err(e) = Self::bootstrap(&raft, settings).await {
            if let Err(stop) = raft.shutdown().await {
                tracing::warn!("raft did not shut down cleanly after a failed start: {stop}");
            }
            return Err(e);
        }
        let parts = Parts { raft, db, snapshots, token, http, applied_rx, changes, log_bytes, syncer };
        Ok(Self::assemble(parts, settings))
    }

    /// Initialises the group on a fresh node that is its first member (or a single node).
    async fn bootstrap(raft: &Raft, settings: &RaftSettings) -> Result<(), RaftNodeError> {
        if !raft.is_initialized().await.map_err(stopped)? && !settings.join {
            let lowest = settings.peers.keys().next().copied().unwrap_or(settings.node_id);
            if settings.peers.is_empty() {
                let mut members = BTreeMap::new();
                members.insert(settings.node_id, BasicNode::new(&settings.advertise));
                tracing::info!(node_id = settings.node_id, "initialising a single-node cluster");
                raft.initialize(members).await.map_err(|e| RaftNodeError::Membership(e.to_string()))?;
            } else if lowest == settings.node_id {
                let members: BTreeMap<NodeId, BasicNode> =
                    settings.peers.iter().map(|(id, url)| (*id, BasicNode::new(url))).collect();
                tracing::info!(?members, "initialising the cluster with the listed peers");
                raft.initialize(members).await.map_err(|e| RaftNodeError::Membership(e.to_string()))?;
            } else {
                tracing::info!(lowest, "waiting for node {lowest} to initialise the cluster");
            }
        }
        Ok(())
    }

    /// Wraps a started Raft: leader tracking and the compaction trigger.
    fn assemble(parts: Parts, settings: &RaftSettings) -> Arc<Self> {
        let Parts { raft, db, snapshots, token, http, applied_rx, changes, log_bytes, syncer } = parts;
        let leader_changes = Arc::new(AtomicU64::new(0));
        let contact = Arc::new(LeaderContact::new());
        let leader_watch = {
            let (mut rx, counter, contact) = (raft.metrics(), leader_changes.clone(), contact.clone());
            tokio::spawn(async move {
                let mut last = rx.borrow_watched().current_leader;
                while rx.changed().await.is_ok() {
                    let now = rx.borrow_watched().current_leader;
                    if now != last {
                        if now.is_some() {
                            counter.fetch_add(1, Ordering::Relaxed);
                            // A new leader (this node stepping down included) counts as contact:
                            // the failover watchdog waits a full lease from here.
                            contact.touch();
                        }
                        last = now;
                    }
                }
            })
        };

        // The benchmark's baseline switch (openraft's own timers only); never set in production.
        let watchdog = std::env::var_os("CONFMAN_BENCH_NO_FAILOVER_WATCHDOG").is_none();
        let failover = tokio::spawn(failover_watchdog(
            watchdog,
            raft.clone(),
            settings.node_id,
            contact.clone(),
            settings.heartbeat,
            settings.election_min,
            settings.election_max,
        ));

        let compaction = {
            let (raft, log_bytes) = (raft.clone(), log_bytes.clone());
            tokio::spawn(async move {
                loop {
                    log_bytes.wait_due().await;
                    tracing::info!(bytes = log_bytes.current(), "log compaction due; building a snapshot");
                    if raft.trigger().snapshot().await.is_err() {
                        break;
                    }
                }
            })
        };

        let tail_trim = tokio::spawn(trim_log_tail(
            raft.clone(),
            db.clone(),
            settings.logs_to_keep,
            kept_tail_bytes(settings.compaction_bytes),
        ));

        Arc::new(Self {
            raft,
            id: settings.node_id,
            db,
            snapshots,
            token,
            http,
            applied_rx,
            changes,
            log_bytes,
            syncer: Mutex::new(Some(syncer)),
            compaction,
            tail_trim,
            leader_watch,
            failover,
            contact,
            leader_changes,
            rejoins: Arc::default(),
            initial_history_depth: settings.history_depth,
            settings_recorded: std::sync::atomic::AtomicBool::new(false),
            snapshot_timeout: settings.snapshot_timeout,
            request_timeout: settings.request_timeout,
            election_min: settings.election_min,
        })
    }

    /// The internal `/raft/*` routes.
    pub fn router(&self) -> axum::Router {
        rpc_server::router(
            self.raft.clone(),
            self.token.clone(),
            self.snapshots.clone(),
            self.snapshot_timeout,
            self.contact.clone(),
            self.rejoins.clone(),
        )
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The node database (for state reads).
    pub fn db(&self) -> &Arc<RocksDb> {
        &self.db
    }

    /// Whether this node currently believes it is the leader.
    pub fn is_leader(&self) -> bool {
        self.raft.is_leader()
    }

    /// The current leader and its URL, if known.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        let id = m.current_leader?;
        let addr = m.membership_config.membership().get_node(&id).map(|n| n.addr.clone())?;
        Some((id, addr))
    }

    /// The current leader, waiting (up to half the request timeout) while none is known, so a
    /// short leaderless window (an election) delays a request instead of failing it.
    pub async fn leader_or_wait(&self) -> Option<(NodeId, String)> {
        if let Some(l) = self.leader() {
            return Some(l);
        }
        let wait = self.request_timeout / 2;
        let me = self.id;
        let _ = self
            .raft
            .wait(Some(wait))
            .metrics(
                |m| {
                    m.current_leader.is_some_and(|l| l == me || m.membership_config.membership().get_node(&l).is_some())
                },
                "leader known",
            )
            .await;
        self.leader()
    }

    /// A receiver of this node's applied revision (changes after every applied entry); watchers
    /// wait on it instead of polling.
    pub fn applied_watch(&self) -> watch::Receiver<u64> {
        self.applied_rx.clone()
    }

    /// Per-namespace change notifications (for watches).
    pub fn changes(&self) -> &Arc<crate::changes::ChangeFeed> {
        &self.changes
    }

    /// The last applied revision.
    pub fn applied_revision(&self) -> u64 {
        *self.applied_rx.borrow()
    }

    fn not_leader(&self) -> RaftNodeError {
        match self.leader() {
            Some((leader_id, leader_addr)) if leader_id != self.id => {
                RaftNodeError::NotLeader { leader_id, leader_addr }
            }
            _ => RaftNodeError::NoLeader,
        }
    }

    /// Proposes a command on this node, which must be the leader; returns the outcome and the
    /// revision (log index) it was applied at.
    pub async fn write(&self, cmd: Command) -> Result<(CommandOutcome, u64), RaftNodeError> {
        if !self.settings_recorded.load(Ordering::Acquire) {
            self.record_initial_settings().await?;
        }
        let fut = self.raft.client_write(cmd);
        match tokio::time::timeout(self.request_timeout, fut).await {
            Err(_) => Err(RaftNodeError::Timeout(self.request_timeout)),
            Ok(Ok(resp)) => Ok((resp.data, resp.log_id.index)),
            Ok(Err(e)) => Err(self.map_write_error(e)),
        }
    }

    /// Makes sure the cluster settings are in the log before this leader's first client write:
    /// the first leader of a new cluster proposes its own (conditionally, `if_unset`).
    async fn record_initial_settings(&self) -> Result<(), RaftNodeError> {
        let db = self.db.clone();
        let stored = blocking(move || crate::store::apply::stored_history_depth(&db)).await?;
        if let Some(d) = stored
            && d != self.initial_history_depth
        {
            tracing::warn!(
                cluster = d,
                flag = self.initial_history_depth,
                "--history-depth differs from the cluster's setting, which applies (change it with PUT /api/v1/cluster/settings)"
            );
        }
        if stored.is_none() {
            let cmd = Command {
                actor: "cluster-bootstrap".into(),
                at_ms: crate::model::now_ms(),
                op: crate::command::Operation::SetHistoryDepth { depth: self.initial_history_depth, if_unset: true },
            };
            match tokio::time::timeout(self.request_timeout, self.raft.client_write(cmd)).await {
                Err(_) => return Err(RaftNodeError::Timeout(self.request_timeout)),
                Ok(Err(e)) => return Err(self.map_write_error(e)),
                Ok(Ok(r)) => tracing::info!(outcome = ?r.data, "cluster settings recorded"),
            }
        }
        self.settings_recorded.store(true, Ordering::Release);
        Ok(())
    }

    fn map_write_error(&self, e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> RaftNodeError {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => match (f.leader_id, f.leader_node) {
                (Some(id), Some(node)) if id != self.id => {
                    RaftNodeError::NotLeader { leader_id: id, leader_addr: node.addr }
                }
                _ => RaftNodeError::NoLeader,
            },
            RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => RaftNodeError::Membership(e.to_string()),
            RaftError::APIError(ClientWriteError::PreconditionFailed(e)) => RaftNodeError::Membership(e.to_string()),
            // openraft discards a pending proposal when a new leader overwrote it, but also when
            // a snapshot install purged it — then it may have been committed: outcome unknown.
            RaftError::APIError(ClientWriteError::LogEntryDiscarded(e)) => {
                tracing::info!("proposal discarded (leader change or snapshot install): {e}");
                RaftNodeError::OutcomeUnknown(e.to_string())
            }
            // Raft stopped with the proposal in flight: it may have been replicated.
            RaftError::Fatal(f) => RaftNodeError::OutcomeUnknown(format!("raft stopped: {f}")),
        }
    }

    /// Waits until this node may serve a linearizable read: the leader confirms its leadership
    /// with a quorum (read index); a follower asks the leader for the read index and waits
    /// until it has applied it. Returns the applied revision the read will see at least.
    pub async fn linearizable_barrier(&self) -> Result<u64, RaftNodeError> {
        let index = if self.raft.is_leader() {
            let fut = self.raft.ensure_linearizable(ReadPolicy::ReadIndex);
            match tokio::time::timeout(self.request_timeout, fut).await {
                Err(_) => return Err(RaftNodeError::Timeout(self.request_timeout)),
                Ok(Ok(read_log_id)) => read_log_id.index(),
                Ok(Err(RaftError::APIError(e))) => {
                    tracing::debug!("read index refused: {e}");
                    return Err(self.not_leader());
                }
                Ok(Err(RaftError::Fatal(f))) => return Err(stopped(f)),
            }
        } else {
            self.remote_read_index().await?
        };
        let mut rx = self.applied_rx.clone();
        let wait = rx.wait_for(|applied| *applied >= index);
        match tokio::time::timeout(self.request_timeout, wait).await {
            Err(_) => Err(RaftNodeError::Timeout(self.request_timeout)),
            Ok(Err(_)) => Err(RaftNodeError::Stopped("state machine closed".into())),
            Ok(Ok(applied)) => Ok(*applied),
        }
    }

    async fn remote_read_index(&self) -> Result<u64, RaftNodeError> {
        let Some((leader_id, addr)) = self.leader_or_wait().await else {
            return Err(RaftNodeError::NoLeader);
        };
        if leader_id == self.id {
            return Err(RaftNodeError::NoLeader);
        }
        let resp = self
            .http
            .post(format!("{}{}", addr.trim_end_matches('/'), wire::PATH_READ_INDEX))
            .bearer_auth(self.token.presented())
            .timeout(self.request_timeout)
            .send()
            .await
            .map_err(|e| RaftNodeError::Network(e.to_string()))?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| RaftNodeError::Network(e.to_string()))?;
        if !status.is_success() {
            return Err(RaftNodeError::Network(format!("read index: HTTP {status}")));
        }
        let reply: Result<wire::ReadIndex, String> =
            wire::decode(&body).map_err(|e| RaftNodeError::Network(e.to_string()))?;
        // The leader may have lost leadership meanwhile: report no leader, clients retry.
        reply.map(|r| r.index).map_err(|_| RaftNodeError::NoLeader)
    }

    /// A snapshot of this node's view of the cluster.
    pub fn status(&self) -> ClusterStatus {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| MemberStatus {
                id: *id,
                address: node.addr.clone(),
                role: if voters.contains(id) { "voter" } else { "learner" },
                last_heartbeat_ack_ms: m
                    .heartbeat
                    .as_ref()
                    .filter(|_| *id != self.id)
                    .and_then(|h| h.get(id).cloned().flatten())
                    .map(|at| {
                        use openraft::Instant as _;
                        at.elapsed().as_millis() as u64
                    }),
            })
            .collect();
        let role = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        let leader_addr = m.current_leader.and_then(|l| membership.get_node(&l).map(|n| n.addr.clone()));
        ClusterStatus {
            node_id: self.id,
            role: role.to_string(),
            leader_id: m.current_leader,
            leader_addr,
            term: m.current_term,
            last_log_index: m.last_log_index,
            commit_index: m.local_committed.as_ref().map(|l| l.index),
            applied_index: m.last_applied.as_ref().map(|l| l.index.max(self.applied_revision())),
            snapshot_index: m.snapshot.as_ref().map(|l| l.index),
            purged_index: m.purged.as_ref().map(|l| l.index),
            log_bytes_since_snapshot: self.log_bytes.current(),
            members,
            leader_changes: self.leader_changes.load(Ordering::Relaxed),
            snapshots: self.snapshots.stats().view(),
        }
    }

    fn require_leader(&self) -> Result<(), RaftNodeError> {
        if self.raft.is_leader() { Ok(()) } else { Err(self.not_leader()) }
    }

    /// Adds a learner and waits until it has caught up with the log.
    pub async fn add_learner(&self, id: NodeId, addr: String) -> Result<(), RaftNodeError> {
        self.require_leader()?;
        self.raft.add_learner(id, BasicNode::new(addr), true).await.map_err(|e| self.map_write_error(e))?;
        Ok(())
    }

    /// Promotes a learner to voter (joint consensus, committed when this returns).
    pub async fn promote(&self, id: NodeId) -> Result<(), RaftNodeError> {
        self.require_leader()?;
        let ids = BTreeSet::from([id]);
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(ids), false)
            .await
            .map_err(|e| self.map_write_error(e))?;
        Ok(())
    }

    /// Removes a voter or learner from the membership (committed when this returns).
    pub async fn remove(&self, id: NodeId) -> Result<(), RaftNodeError> {
        self.require_leader()?;
        let status = self.status();
        let Some(member) = status.members.iter().find(|m| m.id == id) else {
            return Err(RaftNodeError::Membership(format!("node {id} is not a member")));
        };
        let ids = BTreeSet::from([id]);
        let change =
            if member.role == "voter" { ChangeMembers::RemoveVoters(ids) } else { ChangeMembers::RemoveNodes(ids) };
        self.raft.change_membership(change, false).await.map_err(|e| self.map_write_error(e))?;
        Ok(())
    }

    /// Hands leadership to `to` (or to another voter) and waits until this node is no longer
    /// the leader.
    pub async fn transfer_leader(&self, to: Option<NodeId>) -> Result<NodeId, RaftNodeError> {
        self.require_leader()?;
        let status = self.status();
        let target = match to {
            Some(t) => t,
            // The most caught-up other voter: it can take over at once, and one that is down or
            // lagging (a pod being replaced) is not picked while a better one exists.
            None => {
                use openraft::Instant as _;
                let (matched, acked) = {
                    let m = self.raft.metrics();
                    let m = m.borrow_watched();
                    (m.replication.clone().unwrap_or_default(), m.heartbeat.clone().unwrap_or_default())
                };
                // Answering heartbeats now (acked within half the minimum election timeout).
                let live = |id: &NodeId| {
                    acked.get(id).cloned().flatten().is_some_and(|at| at.elapsed() < self.election_min / 2)
                };
                status
                    .members
                    .iter()
                    .filter(|m| m.role == "voter" && m.id != self.id)
                    .max_by_key(|m| {
                        (live(&m.id), matched.get(&m.id).cloned().flatten().map(|l| l.index), std::cmp::Reverse(m.id))
                    })
                    .map(|m| m.id)
                    .ok_or_else(|| RaftNodeError::Membership("no other voter to transfer leadership to".into()))?
            }
        };
        if !status.members.iter().any(|m| m.id == target && m.role == "voter") {
            return Err(RaftNodeError::Membership(format!("node {target} is not a voter")));
        }
        if target == self.id {
            return Ok(target);
        }
        self.raft.trigger().transfer_leader(target).await.map_err(stopped)?;
        let me = self.id;
        self.raft
            .wait(Some(self.request_timeout))
            .metrics(|m| m.current_leader.is_some_and(|l| l != me), "leadership transferred")
            .await
            .map_err(|_| RaftNodeError::Timeout(self.request_timeout))?;
        Ok(target)
    }

    /// Builds a snapshot now and waits until it covers what was applied when asked. A
    /// trigger that arrives while another build runs is dropped by openraft, so it is repeated
    /// until a snapshot covers the target.
    pub async fn snapshot_now(&self) -> Result<u64, RaftNodeError> {
        let target = self.applied_revision();
        let deadline = tokio::time::Instant::now() + self.snapshot_timeout.max(self.request_timeout);
        loop {
            self.raft.trigger().snapshot().await.map_err(stopped)?;
            let covered = self
                .raft
                .wait(Some(Duration::from_secs(1)))
                .metrics(|m| m.snapshot.as_ref().is_some_and(|s| s.index >= target), "snapshot built")
                .await;
            if let Ok(m) = covered {
                return Ok(m.snapshot.map_or(0, |s| s.index));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(RaftNodeError::Timeout(self.snapshot_timeout));
            }
        }
    }

    /// Lets node `id`, whose data was lost, rejoin under the same id: the leader resets
    /// replication to it once instead of treating its empty log as a fatal reversion. Call on
    /// the leader after stopping the node and before restarting it with empty data.
    pub async fn allow_rejoin(&self, id: NodeId) -> Result<(), RaftNodeError> {
        self.require_leader()?;
        self.raft
            .trigger()
            .allow_next_revert(&id, true)
            .await
            .map_err(stopped)?
            .map_err(|e| RaftNodeError::Membership(e.to_string()))?;
        self.rejoins.allow(id);
        Ok(())
    }

    /// Digest of the full state with the applied index it reflects (for convergence checks).
    pub async fn state_digest(&self) -> Result<snapshot::StateDigest, RaftNodeError> {
        let db = self.db.clone();
        Ok(blocking(move || snapshot::state_digest(&db)).await?)
    }

    /// Waits until a leader is known (used at startup and by tests).
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<NodeId, RaftNodeError> {
        let m = self
            .raft
            .wait(Some(timeout))
            .metrics(|m| m.current_leader.is_some(), "leader known")
            .await
            .map_err(|_| RaftNodeError::Timeout(timeout))?;
        m.current_leader.ok_or(RaftNodeError::NoLeader)
    }

    /// Whether the node is ready to serve: a leader is known and this node has applied what it
    /// knows to be committed, give or take [`READY_APPLY_LAG`] entries. Exact equality failed
    /// about 7 % of kubelet probes under a steady write load (apply trails commit by an entry
    /// for a moment), which took healthy members out of the Service and the disruption budget.
    pub fn is_ready(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        let applied = m.last_applied.as_ref().map_or(0, |l| l.index);
        let committed = m.local_committed.as_ref().map_or(0, |l| l.index);
        m.current_leader.is_some() && committed.saturating_sub(applied) <= READY_APPLY_LAG
    }

    /// Stops Raft (pending applies finish first), stops the log syncer after its last fsync,
    /// and flushes RocksDB. The database closes when the last handle is dropped.
    pub async fn shutdown(&self) -> Result<(), RaftNodeError> {
        self.compaction.abort();
        self.tail_trim.abort();
        self.leader_watch.abort();
        self.failover.abort();
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!("raft shutdown: {e}");
        }
        let syncer = self.syncer.lock().map(|mut s| s.take()).unwrap_or(None);
        if let Some(s) = syncer {
            // openraft drops the log store when its core stops, which ends the syncer; do not
            // hang shutdown if a task still holds it.
            let join = tokio::task::spawn_blocking(move || s.join());
            if tokio::time::timeout(Duration::from_secs(5), join).await.is_err() {
                tracing::warn!("log syncer still running at shutdown; flushing anyway");
            }
        }
        let db = self.db.clone();
        blocking(move || {
            db.flush_wal(true)?;
            db.flush()?;
            Ok(())
        })
        .await?;
        Ok(())
    }
}
