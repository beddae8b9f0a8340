//! `RaftNode`: a running Raft group member with its storage and background tasks. This file
//! starts and stops it and answers questions about it; proposals and reads are in `requests`,
//! membership and leadership changes in `membership`.

mod disk;
mod membership;
mod requests;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::BasicNode;
use openraft::async_runtime::watch::WatchReceiver;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::compaction;
use super::error::{RaftNodeError, stopped};
use super::failover::{self, LeaderContact};
use super::log_store::{LogBytes, LogStore, SyncerHandle};
use super::network::{self, NetworkFactory, NetworkTimeouts};
use super::peer_room::PeerRoom;
use super::read_index::ReadIndexClient;
use super::rejoin::RejoinAllowances;
use super::rpc_server;
use super::settings::RaftSettings;
use super::snapshot::{self, SnapshotStore};
use super::state_machine::StateMachine;
use super::status::{self, ClusterStatus, known_leader};
use super::types::{NodeId, Raft};
use crate::changes::ChangeFeed;
use crate::cluster_token::ClusterToken;
use crate::disk_space::DiskSpace;
use crate::store::{RocksDb, blocking};

/// How far apply may trail the commit index on a ready node (see [`RaftNode::is_ready`]): a
/// node catching up after a restart is further behind than this for as long as it matters.
pub const READY_APPLY_LAG: u64 = 64;

/// A running Raft node with its storage.
pub struct RaftNode {
    raft: Raft,
    id: NodeId,
    db: Arc<RocksDb>,
    snapshots: Arc<SnapshotStore>,
    token: Arc<ClusterToken>,
    read_index: ReadIndexClient,
    applied_rx: watch::Receiver<u64>,
    changes: Arc<ChangeFeed>,
    log_bytes: Arc<LogBytes>,
    syncer: Mutex<Option<SyncerHandle>>,
    /// Compaction trigger, log tail trim, leader watch and failover watchdog; aborted at
    /// shutdown.
    tasks: Vec<JoinHandle<()>>,
    contact: Arc<LeaderContact>,
    leader_changes: Arc<AtomicU64>,
    rejoins: Arc<RejoinAllowances>,
    /// The history depth this node proposes when the cluster has none yet.
    initial_history_depth: u64,
    /// Set once the cluster's settings are known to be in the state (checked before the first
    /// client write a leader proposes, so no write is applied under the default by accident).
    settings_recorded: AtomicBool,
    snapshot_timeout: Duration,
    request_timeout: Duration,
    election_min: Duration,
    /// How long a leader counts itself leader after its last quorum acknowledgement.
    leader_lease: Duration,
    /// Free space of the data directory against its reserve.
    disk: Arc<DiskSpace>,
    /// Followers that refused entries for want of disk space.
    peer_room: Arc<PeerRoom>,
}

impl RaftNode {
    /// Opens storage, starts Raft and, on a pristine data directory, bootstraps the cluster.
    pub async fn start(
        settings: &RaftSettings,
        db: Arc<RocksDb>,
        data_dir: &Path,
        token: Arc<ClusterToken>,
        disk: Arc<DiskSpace>,
    ) -> Result<Arc<Self>, RaftNodeError> {
        let config = settings.openraft_config()?;
        let t = &settings.tuning;
        let ms = Duration::from_millis;
        let snapshots = SnapshotStore::open(data_dir)?;
        let log_bytes = Arc::new(LogBytes::new(t.compaction_bytes, t.compaction_entries));
        if let Some(current) = snapshots.current()? {
            log_bytes.reset(current.manifest.data_size);
        }
        // Everything that can fail comes before the log store's syncer thread starts, or is
        // followed by a Raft shutdown: the syncer is joined on drop and only exits once the
        // log store (inside Raft) is gone.
        let http = network::http_client(&settings.outgoing).map_err(|e| RaftNodeError::Network(e.to_string()))?;
        let timeouts = NetworkTimeouts { append: ms(t.append_timeout_ms), snapshot_idle: ms(t.snapshot_timeout_ms) };
        let peer_room = Arc::new(PeerRoom::default());
        let network = NetworkFactory::new(
            Arc::from(token.presented()),
            timeouts,
            snapshots.stats(),
            peer_room.clone(),
            &settings.outgoing,
        )
        .map_err(|e| RaftNodeError::Network(e.to_string()))?;
        let (applied_tx, applied_rx) = watch::channel(0u64);
        let changes = Arc::new(ChangeFeed::default());
        let sm =
            StateMachine::new(db.clone(), snapshots.clone(), log_bytes.clone(), Arc::new(applied_tx), changes.clone())?;
        let (log_store, syncer) =
            LogStore::new(db.clone(), t.max_append_bytes, t.max_append_entries, log_bytes.clone())?;
        let raft = Raft::new(settings.node_id, Arc::new(config), network, log_store, sm).await.map_err(stopped)?;
        if let Err(e) = Self::bootstrap(&raft, settings).await {
            if let Err(stop) = raft.shutdown().await {
                tracing::warn!("raft did not shut down cleanly after a failed start: {stop}");
            }
            return Err(e);
        }
        let (tasks, contact, leader_changes) = Self::spawn_tasks(&raft, &db, &log_bytes, &disk, settings);
        let read_index =
            ReadIndexClient { http, token: Arc::from(token.presented()), timeout: ms(t.request_timeout_ms) };
        Ok(Arc::new(Self {
            raft,
            id: settings.node_id,
            db,
            snapshots,
            token,
            read_index,
            applied_rx,
            changes,
            log_bytes,
            syncer: Mutex::new(Some(syncer)),
            tasks,
            contact,
            leader_changes,
            rejoins: Arc::default(),
            initial_history_depth: settings.history_depth,
            settings_recorded: AtomicBool::new(false),
            snapshot_timeout: ms(t.snapshot_timeout_ms),
            request_timeout: ms(t.request_timeout_ms),
            election_min: ms(t.election_min_ms),
            leader_lease: ms(t.election_max_ms),
            disk,
            peer_room,
        }))
    }

    /// Initialises the group on a fresh node that is its first member (or a single node).
    /// Of the listed peers only the lowest id initialises, so two nodes starting at once
    /// cannot create two clusters; the others wait to be contacted by its leader.
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

    /// Starts the background tasks of a started Raft: leader tracking, the failover watchdog,
    /// the compaction trigger and the log tail trim.
    fn spawn_tasks(
        raft: &Raft,
        db: &Arc<RocksDb>,
        log_bytes: &Arc<LogBytes>,
        disk: &Arc<DiskSpace>,
        settings: &RaftSettings,
    ) -> (Vec<JoinHandle<()>>, Arc<LeaderContact>, Arc<AtomicU64>) {
        let t = &settings.tuning;
        let leader_changes = Arc::new(AtomicU64::new(0));
        let contact = Arc::new(LeaderContact::new());
        let mut tasks =
            vec![tokio::spawn(failover::watch_leader(raft.clone(), leader_changes.clone(), contact.clone()))];
        // The benchmark's baseline switch (openraft's own timers only); never set in production.
        if std::env::var_os("CONFMAN_BENCH_NO_FAILOVER_WATCHDOG").is_none() {
            tasks.push(tokio::spawn(failover::watchdog(raft.clone(), settings.node_id, contact.clone(), *t)));
        }
        tasks.push(tokio::spawn(compaction::trigger_snapshots(raft.clone(), log_bytes.clone(), disk.clone())));
        tasks.push(tokio::spawn(compaction::trim_log_tail(
            raft.clone(),
            db.clone(),
            t.logs_to_keep,
            compaction::kept_tail_bytes(t.compaction_bytes),
        )));
        (tasks, contact, leader_changes)
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
            self.disk.clone(),
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

    /// Free space of the data directory against its reserve.
    pub fn disk(&self) -> &Arc<DiskSpace> {
        &self.disk
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
    pub fn changes(&self) -> &Arc<ChangeFeed> {
        &self.changes
    }

    /// The last applied revision.
    pub fn applied_revision(&self) -> u64 {
        *self.applied_rx.borrow()
    }

    /// A snapshot of this node's view of the cluster.
    pub fn status(&self) -> ClusterStatus {
        let local = status::LocalFigures {
            applied_revision: self.applied_revision(),
            log_bytes_since_snapshot: self.log_bytes.current(),
            leader_changes: self.leader_changes.load(Ordering::Relaxed),
            snapshots: self.snapshots.stats().view(),
            since_leader_contact: self.contact.since(),
        };
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        status::from_metrics(self.id, &m, self.leader_lease, local)
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

    /// Whether the node is ready to serve: a leader is known (a leader counts itself only
    /// within its quorum lease, see [`known_leader`]) and this node has applied what it
    /// knows to be committed, give or take [`READY_APPLY_LAG`] entries. Exact equality failed
    /// about 7 % of kubelet probes under a steady write load (apply trails commit by an entry
    /// for a moment), which took healthy members out of the Service and the disruption budget.
    pub fn is_ready(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        let applied = m.last_applied.as_ref().map_or(0, |l| l.index);
        let committed = m.local_committed.as_ref().map_or(0, |l| l.index);
        known_leader(&m, self.leader_lease, self.contact.since()).is_some()
            && committed.saturating_sub(applied) <= READY_APPLY_LAG
    }

    /// Stops Raft (pending applies finish first), stops the log syncer after its last fsync,
    /// and flushes RocksDB. The database closes when the last handle is dropped.
    pub async fn shutdown(&self) -> Result<(), RaftNodeError> {
        for task in &self.tasks {
            task.abort();
        }
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
