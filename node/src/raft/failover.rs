//! Leader liveness as a follower sees it, and the watchdog that starts an election as soon as
//! a dead leader's lease has run out.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use confman_contract::Tuning;
use openraft::ServerState;
use openraft::async_runtime::watch::WatchReceiver;

use super::types::{NodeId, Raft};

/// When this node last heard from a leader (an AppendEntries, heartbeats included). Written
/// by the RPC server on every accepted append, read by the watchdog.
#[derive(Debug)]
pub struct LeaderContact {
    started: Instant,
    last_ms: AtomicU64,
}

impl LeaderContact {
    pub(super) fn new() -> Self {
        Self { started: Instant::now(), last_ms: AtomicU64::new(0) }
    }

    /// Records contact from the current leader now.
    pub fn touch(&self) {
        self.last_ms.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Time since the last contact (since the start before the first).
    pub(super) fn since(&self) -> Duration {
        self.started.elapsed().saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// Counts leader changes and treats each new leader as contact (this node stepping down
/// included), so the watchdog waits a full lease from a change; ends when Raft stops.
pub(super) async fn watch_leader(raft: Raft, changes: Arc<AtomicU64>, contact: Arc<LeaderContact>) {
    let mut rx = raft.metrics();
    let mut last = rx.borrow_watched().current_leader;
    while rx.changed().await.is_ok() {
        let now = rx.borrow_watched().current_leader;
        if now != last {
            if now.is_some() {
                changes.fetch_add(1, Ordering::Relaxed);
                contact.touch();
            }
            last = now;
        }
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
pub(super) async fn watchdog(raft: Raft, me: NodeId, contact: Arc<LeaderContact>, tuning: Tuning) {
    let [heartbeat, election_min, election_max] =
        [tuning.heartbeat_ms, tuning.election_min_ms, tuning.election_max_ms].map(Duration::from_millis);
    // Checked often enough that the lease's end is noticed within a few percent of it.
    let mut tick = tokio::time::interval(heartbeat.min(election_min / 20).max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let jitter = || election_min.mul_f64(rand::random::<f64>() / 5.0);
    let mut wait = election_max + jitter();
    let mut last_round: Option<Instant> = None;
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
        last_round = Some(Instant::now());
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
