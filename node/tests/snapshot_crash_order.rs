//! Power loss while a follower adopts a received snapshot, with real processes. The on-disk
//! state a power cut can leave is built directly in the stopped follower's data directory
//! (a process abort cannot lose the page cache, so `CONFMAN_FAULT_CRASH_AT` cannot produce it):
//! the leader's snapshot adopted, an uncommitted log tail from an older term above the
//! snapshot's index (the truncation was lost), and the install at each of its crash points.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use confman_node::raft::snapshot::{KEY_INSTALLING, Manifest, SnapshotFile, SnapshotStore};
use confman_node::raft::types::TypeConfig;
use confman_node::store::codec::{be_u64, decode, encode};
use confman_node::store::{CF_LOG, CF_SM_META, cf};
use confman_tests::cluster::{Cluster, HarnessError, Result};
use openraft::testing::blank_ent;

const BIN: &str = env!("CARGO_BIN_EXE_confman-node");
const ALL: [u64; 3] = [1, 2, 3];
/// Small log: snapshots and purges happen after a few dozen entries.
const COMPACT: &[&str] = &["--compaction-entries", "50", "--logs-to-keep", "10"];

/// Where a power cut can stop the adoption of a received snapshot.
#[derive(Debug, Clone, Copy)]
enum CrashPoint {
    /// The snapshot's directory is published; no RocksDB write of the install yet.
    Adopted,
    /// The synced `installing` marker is written; the state is not replaced yet.
    MarkerWritten,
    /// The state is replaced and last-applied flipped; the log is not purged yet.
    Flipped,
}

fn unexpected(what: &str) -> impl Fn(confman_node::store::StoreError) -> HarnessError + '_ {
    move |e| HarnessError::Unexpected(format!("{what}: {e}"))
}

/// The newest complete snapshot directory under `data/snapshots`.
fn newest_snapshot(data: &Path) -> Result<PathBuf> {
    let mut dirs: Vec<PathBuf> = fs::read_dir(data.join("snapshots"))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("snap-"))
        .map(|e| e.path())
        .collect();
    dirs.sort();
    dirs.pop().ok_or_else(|| HarnessError::Unexpected(format!("no snapshot in {}", data.display())))
}

/// Builds, in the stopped `follower`'s data directory, the state a power cut leaves at `point`
/// while it adopts the leader's newest snapshot; returns the snapshot's index.
fn build_crash_state(leader_data: &Path, follower_data: &Path, point: CrashPoint) -> Result<u64> {
    // Snapshot directories are immutable: copying one from the running leader is safe.
    let src = newest_snapshot(leader_data)?;
    let manifest: Manifest = serde_json::from_slice(&fs::read(src.join("manifest.json"))?)
        .map_err(|e| HarnessError::Unexpected(format!("manifest: {e}")))?;
    let snap = manifest.meta.last_log_id.ok_or_else(|| HarnessError::Unexpected("an empty snapshot".into()))?;
    assert!(snap.leader_id.term >= 2, "the snapshot needs a term with an older one below it: {snap}");
    let name = src.file_name().ok_or_else(|| HarnessError::Unexpected("snapshot dir name".into()))?;
    let dst = follower_data.join("snapshots").join(name);
    fs::create_dir_all(&dst)?;
    for f in fs::read_dir(&src)? {
        let f = f?;
        fs::copy(f.path(), dst.join(f.file_name()))?;
    }

    let db = confman_node::store::open(follower_data).map_err(unexpected("open"))?;
    {
        let log = cf(&db, CF_LOG).map_err(unexpected("log cf"))?;
        let last = match db.iterator_cf(&log, rocksdb::IteratorMode::End).next() {
            Some(item) => {
                let (_, v) = item.map_err(|e| HarnessError::Unexpected(e.to_string()))?;
                decode::<confman_node::raft::types::Entry>(&v).map_err(unexpected("decode"))?.log_id.index
            }
            None => 0,
        };
        assert!(last < snap.index, "the follower lags behind the snapshot: {last} vs {snap}");
        // An uncommitted tail appended under an older term, reaching past the snapshot.
        let older = snap.leader_id.term - 1;
        for i in last + 1..=snap.index + 20 {
            let e = blank_ent::<TypeConfig>(older, snap.leader_id.node_id, i);
            db.put_cf(&log, be_u64(i), encode(&e).map_err(unexpected("encode"))?)
                .map_err(|e| HarnessError::Unexpected(e.to_string()))?;
        }
        match point {
            CrashPoint::Adopted => {}
            CrashPoint::MarkerWritten => {
                let meta = cf(&db, CF_SM_META).map_err(unexpected("sm cf"))?;
                db.put_cf(&meta, KEY_INSTALLING, name.to_string_lossy().as_bytes())
                    .map_err(|e| HarnessError::Unexpected(e.to_string()))?;
            }
            CrashPoint::Flipped => {
                let store = SnapshotStore::open(follower_data).map_err(unexpected("snapshot store"))?;
                store.install(&db, &SnapshotFile { dir: dst.clone(), manifest }).map_err(unexpected("install"))?;
            }
        }
        db.flush_wal(true).map_err(|e| HarnessError::Unexpected(e.to_string()))?;
    }
    drop(db);
    Ok(snap.index)
}

/// Power loss between adopting a received snapshot and its synced writes left a log tail from
/// an older term above the snapshot; the node then refused to start ("inverted log order").
/// For each crash point, the follower must start, rejoin and converge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_loss_mid_snapshot_adoption_restarts_rejoins_and_converges() -> Result<()> {
    let mut c = Cluster::start(Path::new(BIN), 3, COMPACT).await?;
    let first = c.wait_leader(&ALL, &ALL).await?;
    c.create_namespace(first, "snap").await?;
    c.put_bytes(first, "snap", "seed", vec![1; 64]).await?;
    // A second term, so an older one exists below the snapshot's.
    c.kill(first)?;
    let others: Vec<u64> = ALL.into_iter().filter(|id| *id != first).collect();
    c.wait_leader(&others, &others).await?;
    c.spawn(first)?;
    c.wait_converged(&ALL, Duration::from_secs(60)).await?;

    for (round, point) in [CrashPoint::Adopted, CrashPoint::MarkerWritten, CrashPoint::Flipped].into_iter().enumerate()
    {
        let leader = c.wait_leader(&ALL, &ALL).await?;
        let follower = ALL.into_iter().find(|id| *id != leader).unwrap_or(1);
        c.kill(follower)?;
        for i in 0..60 {
            let st = c.put_bytes(leader, "snap", &format!("r{round}-k{i:03}"), vec![round as u8; 256]).await?;
            assert!(st.is_success(), "{point:?}: write {i}: {st}");
        }
        c.snapshot(leader).await?;
        let index = build_crash_state(&c.data_dir(leader)?, &c.data_dir(follower)?, point)?;
        c.spawn(follower)?;
        c.wait_converged(&ALL, Duration::from_secs(60))
            .await
            .map_err(|e| HarnessError::Unexpected(format!("{point:?} (snapshot at {index}): {e}")))?;
        assert!(
            c.logged(follower, "discarded a log that conflicts with the snapshot (interrupted snapshot install)")?,
            "{point:?}: the conflicting log was discarded at start-up"
        );
    }
    Ok(())
}
