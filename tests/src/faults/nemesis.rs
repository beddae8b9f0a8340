//! Faults injected while the workload runs: crashes, pauses, partitions, a full disk and a
//! slow disk, of the leader or of a follower, each healed after a random delay.

use std::time::{Duration, Instant};

use rand::Rng;

use crate::cluster::{Cluster, FaultSetup, HarnessError, Result};
use crate::small_disk::SmallDisks;

/// A fault the suite injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nemesis {
    /// `kill -9` of the current leader; restarted after a random delay.
    KillLeader,
    /// `kill -9` of a follower; restarted after a random delay.
    KillFollower,
    /// `SIGSTOP` of the current leader; `SIGCONT` after a random delay.
    PauseLeader,
    /// `SIGSTOP` of a follower; `SIGCONT` after a random delay.
    PauseFollower,
    /// The leader cut off from both followers; healed after a random delay. Needs a cluster
    /// from `Cluster::start_isolated`.
    PartitionLeader,
    /// One follower cut off from the other two.
    PartitionFollower,
    /// The leader cut off from one follower, the other follower linked to both: the cut-off
    /// follower campaigns, and each side sees a different majority through the bridge.
    PartitionBridge,
    /// A node's data directory filled (by a filler file) to below the node's free-space
    /// reserve — the leader and a follower in turn; the filler removed after a random delay.
    DiskFull,
    /// Every log fsync of a node 50–500 ms slower — the leader and a follower in turn.
    SlowDisk,
}

/// Size of each node's data filesystem for [`Nemesis::DiskFull`]: room for RocksDB's WAL (up
/// to 256 MiB before a forced flush) and a 10-minute run's data above the reserve, as a real
/// volume would have (a 320 MiB one let a node's own data keep it below the reserve).
pub const SMALL_DISK_BYTES: u64 = 1 << 30;
/// The nodes' `--disk-reserve-bytes` for [`Nemesis::DiskFull`].
pub const DISK_RESERVE_BYTES: u64 = 96 << 20;
/// Free space a full disk is left with: below the reserve, above RocksDB's WAL preallocation
/// (1.1 × a 32 MiB memtable), as a node's own reserve would leave it in production.
pub const FULL_DISK_LEAVES_BYTES: u64 = 56 << 20;

impl Nemesis {
    /// What the cluster needs for it.
    pub fn setup(self) -> FaultSetup {
        FaultSetup {
            isolated: matches!(self, Nemesis::PartitionLeader | Nemesis::PartitionFollower | Nemesis::PartitionBridge),
            small_disk_bytes: (self == Nemesis::DiskFull).then_some(SMALL_DISK_BYTES),
            fsync_hook: self == Nemesis::SlowDisk,
        }
    }

    /// Node flags it needs.
    pub fn node_args(self) -> Vec<String> {
        match self {
            Nemesis::DiskFull => vec!["--disk-reserve-bytes".into(), DISK_RESERVE_BYTES.to_string()],
            _ => Vec::new(),
        }
    }
}

/// What a nemesis did.
#[derive(Debug, Default, Clone)]
pub struct FaultLog {
    /// Faults injected (each healed before the next).
    pub faults: u64,
    /// One line per fault: when, what, on which node.
    pub events: Vec<String>,
    /// For a full disk: how long the node took, once its filler was removed, to apply what
    /// the cluster had committed by then.
    pub recoveries: Vec<Duration>,
}

/// How long after now node `target` takes to apply the commit index the other nodes report
/// now (at most `within`); on failure, what the node last reported.
async fn catch_up_time(
    c: &Cluster,
    target: u64,
    ids: &[u64],
    within: Duration,
) -> std::result::Result<Duration, String> {
    let started = Instant::now();
    let mut goal = None;
    let mut last = serde_json::Value::Null;
    while started.elapsed() < within {
        if goal.is_none() {
            for id in ids.iter().filter(|id| **id != target) {
                if let Ok(info) = c.cluster_info(*id).await
                    && let Some(commit) = info["commitIndex"].as_u64()
                {
                    goal = Some(goal.unwrap_or(0).max(commit));
                }
            }
        }
        if let Ok(info) = c.cluster_info(target).await {
            if let Some(goal) = goal
                && info["appliedIndex"].as_u64().unwrap_or(0) >= goal
            {
                return Ok(started.elapsed());
            }
            last = info;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("goal {goal:?}, node {target} last reported {last}"))
}

fn signal(pid: u32, sig: &str) -> Result<()> {
    let st = std::process::Command::new("kill").args([sig, &pid.to_string()]).status()?;
    if st.success() { Ok(()) } else { Err(HarnessError::Unexpected(format!("kill {sig} {pid} failed"))) }
}

/// The leader every node that answers names (at least two, all the same), if any.
async fn current_leader(c: &Cluster, ids: &[u64]) -> Option<u64> {
    let mut named = Vec::new();
    for id in ids {
        if let Ok(info) = c.cluster_info(*id).await {
            named.push(info["leaderId"].as_u64());
        }
    }
    match named.first() {
        Some(Some(l)) if named.len() >= 2 && named.iter().all(|n| *n == Some(*l)) => Some(*l),
        _ => None,
    }
}

/// Injects `nemesis` over and over until `until`: a fault, a random 0.5–2 s with it, the heal,
/// then a random 0.5–1.5 s of calm. Every fault is healed before this returns.
pub async fn run_nemesis(c: &mut Cluster, nemesis: Nemesis, until: Instant) -> Result<FaultLog> {
    let ids: Vec<u64> = c.nodes.keys().copied().collect();
    let mut log = FaultLog::default();
    let started = Instant::now();
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(rand::rng().random_range(500..1500))).await;
        // A node that exited on its own is found before a restart could hide it.
        let exits = c.exited()?;
        if !exits.is_empty() {
            return Err(HarnessError::Unexpected(format!("nodes exited on their own: {exits:?}")));
        }
        let Some(leader) = current_leader(c, &ids).await else { continue };
        let followers: Vec<u64> = ids.iter().copied().filter(|id| *id != leader).collect();
        let follower = followers[rand::rng().random_range(0..followers.len())];
        let target = match nemesis {
            Nemesis::KillLeader | Nemesis::PauseLeader | Nemesis::PartitionLeader | Nemesis::PartitionBridge => leader,
            Nemesis::KillFollower | Nemesis::PauseFollower | Nemesis::PartitionFollower => follower,
            Nemesis::DiskFull | Nemesis::SlowDisk if log.faults % 2 == 0 => leader,
            Nemesis::DiskFull | Nemesis::SlowDisk => follower,
        };
        // A full or slow disk is held longer: a leader hands over, a follower falls behind.
        let hold = match nemesis {
            Nemesis::DiskFull | Nemesis::SlowDisk => Duration::from_millis(rand::rng().random_range(2000..5000)),
            _ => Duration::from_millis(rand::rng().random_range(500..2000)),
        };
        log.faults += 1;
        log.events.push(format!(
            "{:.1}s {nemesis:?} node {target} for {} ms",
            started.elapsed().as_secs_f64(),
            hold.as_millis()
        ));
        match nemesis {
            Nemesis::KillLeader | Nemesis::KillFollower => {
                c.kill(target)?;
                tokio::time::sleep(hold).await;
                c.spawn(target)?;
            }
            Nemesis::PauseLeader | Nemesis::PauseFollower => {
                let pid =
                    c.pid(target).ok_or_else(|| HarnessError::Unexpected(format!("node {target} is not running")))?;
                signal(pid, "-STOP")?;
                tokio::time::sleep(hold).await;
                signal(pid, "-CONT")?;
            }
            Nemesis::DiskFull => {
                let dir = c.data_dir(target)?;
                let filled = SmallDisks::fill(&dir, FULL_DISK_LEAVES_BYTES);
                if filled.is_ok() {
                    tokio::time::sleep(hold).await;
                }
                // Emptied on every path, a failed fill included.
                SmallDisks::unfill(&dir)?;
                filled?;
                match catch_up_time(c, target, &ids, Duration::from_secs(60)).await {
                    Ok(t) => log.recoveries.push(t),
                    Err(why) => {
                        return Err(HarnessError::Unexpected(format!(
                            "node {target} did not catch up within 60 s of its disk being freed: {why}"
                        )));
                    }
                }
            }
            Nemesis::SlowDisk => {
                c.set_fsync_delay(target, Some("50-500"))?;
                tokio::time::sleep(hold).await;
                c.set_fsync_delay(target, None)?;
            }
            Nemesis::PartitionLeader | Nemesis::PartitionFollower | Nemesis::PartitionBridge => {
                let net = c.network.as_ref().ok_or_else(|| {
                    HarnessError::Unexpected(format!("{nemesis:?} needs a cluster from Cluster::start_isolated"))
                })?;
                let cuts: Vec<(u64, u64)> = match nemesis {
                    // The leader loses one follower; the other follower bridges the two halves.
                    Nemesis::PartitionBridge => vec![(leader, followers[0])],
                    _ => ids.iter().filter(|id| **id != target).map(|id| (target, *id)).collect(),
                };
                let cut = cuts.iter().try_for_each(|(a, b)| net.cut(*a, *b));
                if cut.is_ok() {
                    tokio::time::sleep(hold).await;
                }
                // Healed on every path, a failed cut included.
                net.heal()?;
                cut?;
            }
        }
    }
    Ok(log)
}
