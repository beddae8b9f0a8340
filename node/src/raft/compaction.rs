//! Log compaction: a snapshot when the log since the last one is due (`LogBytes`), and after
//! each snapshot a purge of the log beyond the kept tail.

use std::sync::Arc;

use openraft::async_runtime::watch::WatchReceiver;

use super::log_store::{self, LogBytes};
use super::types::Raft;
use crate::disk_space::DiskSpace;
use crate::store::{RocksDb, blocking};

/// Byte bound of the log tail kept after a snapshot for lagging followers: a quarter of the
/// compaction threshold. A follower further behind than that is cheaper to send the snapshot
/// than the log (a snapshot is the state, the log is every superseded value too); with large
/// values the count bound (`logs_to_keep`) alone would keep hundreds of MiB.
pub(super) fn kept_tail_bytes(compaction_bytes: u64) -> u64 {
    compaction_bytes / 4
}

/// Whether a snapshot may be built now. A build writes a file as large as the state (at most
/// `estimate`: the last snapshot plus the log since) beside the old one, and a failed build
/// stops Raft (openraft treats it as a storage error). Below the reserve it is still built when
/// the disk holds it with a quarter of the reserve to spare: compaction is what frees the log,
/// so a node whose own log took it below the reserve must not wait for it for ever.
pub(super) fn may_build_snapshot(low: bool, free: u64, reserve: u64, estimate: u64) -> bool {
    !low || free >= estimate.saturating_add(reserve / 4)
}

/// Builds a snapshot each time `log_bytes` says compaction is due; ends when Raft stops. Waits
/// while [`may_build_snapshot`] says no (the log is kept meanwhile).
pub(super) async fn trigger_snapshots(raft: Raft, log_bytes: Arc<LogBytes>, disk: Arc<DiskSpace>) {
    let allowed = |disk: &DiskSpace, log_bytes: &LogBytes| {
        let estimate = log_bytes.last_snapshot_bytes().saturating_add(log_bytes.current());
        may_build_snapshot(disk.check(), disk.free(), disk.reserve(), estimate)
    };
    loop {
        log_bytes.wait_due().await;
        if !allowed(&disk, &log_bytes) {
            tracing::warn!(free = disk.free(), "log compaction due, but the disk cannot hold a snapshot; deferred");
            while !allowed(&disk, &log_bytes) {
                tokio::time::sleep(crate::disk_space::POLL_INTERVAL).await;
            }
        }
        tracing::info!(bytes = log_bytes.current(), "log compaction due; building a snapshot");
        if raft.trigger().snapshot().await.is_err() {
            return;
        }
    }
}

/// After each snapshot (built or installed), purges the log beyond the kept tail's bounds
/// (`logs_to_keep` entries and `max_bytes`). openraft holds a purge back while a replication
/// stream still reads the entries, and never purges past its snapshot.
pub(super) async fn trim_log_tail(raft: Raft, db: Arc<RocksDb>, max_entries: u64, max_bytes: u64) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_low_node_still_compacts_when_the_disk_holds_the_snapshot() {
        let reserve = 100;
        assert!(may_build_snapshot(false, 0, reserve, 1000), "above the reserve: always");
        assert!(may_build_snapshot(true, 75, reserve, 50));
        assert!(!may_build_snapshot(true, 74, reserve, 50));
        assert!(!may_build_snapshot(true, 90, reserve, u64::MAX));
    }
}
