//! Snapshots with real processes: a wiped follower is restored from a streamed snapshot, a
//! corrupted snapshot is refused, writes continue during builds, a 200 MB transfer does not
//! disturb the leader, a >30 MB append is replicated, and a crash mid-install recovers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use confman_tests::cluster::{Cluster, HarnessError, Result};
use rand::RngCore;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_confman-node");
const ALL: [u64; 3] = [1, 2, 3];
/// The 200 MB transfer saturates the disk and both cores of a small machine; it runs alone
/// (write lock) while the other tests of this file share (read lock), so no test's timing
/// depends on another's load.
static HEAVY: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Small log: snapshots and purges happen after a few dozen entries.
const COMPACT: &[&str] = &["--compaction-entries", "50", "--logs-to-keep", "10"];

fn random(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::rng().fill_bytes(&mut v);
    v
}

/// Starts a cluster, writes `n` values, and returns it with the leader and one follower.
async fn cluster_with_data(extra: &[&str], n: usize, size: usize) -> Result<(Cluster, u64, u64)> {
    let mut args = COMPACT.to_vec();
    args.extend_from_slice(extra);
    let c = Cluster::start(Path::new(BIN), 3, &args).await?;
    let leader = c.wait_leader(&ALL, &ALL).await?;
    let follower = ALL.into_iter().find(|id| *id != leader).unwrap_or(1);
    c.create_namespace(leader, "snap").await?;
    for i in 0..n {
        let st = c.put_bytes(leader, "snap", &format!("k{i:05}"), random(size)).await?;
        assert!(st.is_success(), "write {i}: {st}");
    }
    Ok((c, leader, follower))
}

async fn snapshot_stats(c: &Cluster, id: u64) -> Result<Value> {
    Ok(c.cluster_info(id).await?["snapshots"].clone())
}

/// Crashes `follower`, deletes its data, writes more and compacts the leader's log so the
/// follower can only come back through a snapshot.
async fn lose_follower_and_compact(c: &mut Cluster, leader: u64, follower: u64) -> Result<()> {
    c.kill(follower)?;
    let (st, v) = c
        .call(leader, reqwest::Method::POST, &format!("/api/v1/cluster/members/{follower}/rejoin"), &c.keys.admin, None)
        .await?;
    assert!(st.is_success(), "allow rejoin: {st} {v}");
    c.wipe(follower)?;
    for i in 0..60 {
        let st = c.put_bytes(leader, "snap", &format!("after{i:03}"), random(512)).await?;
        assert!(st.is_success(), "write after{i:03}: {st}");
    }
    c.snapshot(leader).await?;
    let info = c.cluster_info(leader).await?;
    assert!(info["purgedIndex"].as_u64().unwrap_or(0) > 0, "leader log purged: {info}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_follower_rejoins_from_a_streamed_snapshot() -> Result<()> {
    let _shared = HEAVY.read().await;
    let (mut c, leader, follower) = cluster_with_data(&[], 80, 4096).await?;
    // A few large values go through BlobDB and the SST as well.
    for i in 0..5 {
        assert!(c.put_bytes(leader, "snap", &format!("big{i}"), random(300 * 1024)).await?.is_success());
    }
    lose_follower_and_compact(&mut c, leader, follower).await?;
    c.spawn(follower)?;
    let digest = c.wait_converged(&ALL, Duration::from_secs(60)).await?;
    assert!(digest["records"].as_u64().unwrap_or(0) > 140, "{digest}");
    let stats = snapshot_stats(&c, follower).await?;
    assert!(stats["installs"].as_u64() >= Some(1), "follower installed a snapshot: {stats}");
    assert_eq!(stats["rejected"].as_u64(), Some(0));
    assert!(snapshot_stats(&c, leader).await?["sent"].as_u64() >= Some(1));
    Ok(())
}

/// With large values the kept tail was bounded only by `--logs-to-keep` (entries): 1000 entries
/// of 256 KiB kept every write, and a wiped follower was fed the whole history through the log
/// (337 MiB peak with 200 × 1 MiB). The tail is also held under a quarter of
/// `--compaction-bytes`, so the follower comes back through one snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_follower_gets_a_snapshot_when_the_kept_tail_would_exceed_its_byte_bound() -> Result<()> {
    let _shared = HEAVY.read().await;
    const VALUE: u64 = 256 * 1024;
    const COMPACTION: u64 = 16 << 20; // tail bound: 4 MiB = 16 values
    let compaction = COMPACTION.to_string();
    let args = ["--logs-to-keep", "1000", "--compaction-entries", "100000", "--compaction-bytes", &compaction];
    let mut c = Cluster::start(Path::new(BIN), 3, &args).await?;
    let leader = c.wait_leader(&ALL, &ALL).await?;
    let follower = ALL.into_iter().find(|id| *id != leader).unwrap_or(1);
    c.create_namespace(leader, "snap").await?;
    for i in 0..30 {
        assert!(c.put_bytes(leader, "snap", &format!("k{i:03}"), random(VALUE as usize)).await?.is_success());
    }
    c.wait_converged(&ALL, Duration::from_secs(60)).await?;
    c.kill(follower)?;
    let rejoin = format!("/api/v1/cluster/members/{follower}/rejoin");
    let (st, v) = c.call(leader, reqwest::Method::POST, &rejoin, &c.keys.admin, None).await?;
    assert!(st.is_success(), "allow rejoin: {st} {v}");
    c.wipe(follower)?;

    c.snapshot(leader).await?;
    c.poll("the leader to purge its log beyond the tail's byte bound", Duration::from_secs(60), || async {
        Ok(c.cluster_info(leader).await?["purgedIndex"].as_u64().unwrap_or(0) > 0)
    })
    .await?;
    let info = c.cluster_info(leader).await?;
    let kept = info["snapshotIndex"].as_u64().unwrap_or(0).saturating_sub(info["purgedIndex"].as_u64().unwrap_or(0));
    assert!(kept * VALUE <= COMPACTION / 4, "kept tail of {kept} entries of 256 KiB: {info}");

    c.spawn(follower)?;
    c.wait_converged(&ALL, Duration::from_secs(60)).await?;
    let stats = snapshot_stats(&c, follower).await?;
    assert!(stats["installs"].as_u64() >= Some(1), "the wiped follower came back through a snapshot: {stats}");
    Ok(())
}

fn newest_snapshot_file(data_dir: &Path) -> Result<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(data_dir.join("snapshots"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("snap-")))
        .collect();
    dirs.sort();
    dirs.pop().map(|d| d.join("data.sst")).ok_or_else(|| HarnessError::Unexpected("no snapshot on disk".into()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_snapshot_is_rejected_and_the_follower_converges_after_a_retry() -> Result<()> {
    let _shared = HEAVY.read().await;
    let (mut c, leader, follower) = cluster_with_data(&[], 80, 2048).await?;
    lose_follower_and_compact(&mut c, leader, follower).await?;
    // Flip one byte in the middle of the leader's current snapshot file.
    let sst = newest_snapshot_file(&c.data_dir(leader)?)?;
    let mut bytes = std::fs::read(&sst)?;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&sst, &bytes)?;

    c.spawn(follower)?;
    c.poll("the follower to find the checksum mismatch", Duration::from_secs(60), || async {
        Ok(snapshot_stats(&c, follower).await.ok().and_then(|s| s["checksumMismatches"].as_u64()).unwrap_or(0) >= 1)
    })
    .await?;
    let stats = snapshot_stats(&c, follower).await?;
    assert_eq!(stats["installs"].as_u64(), Some(0), "nothing installed: {stats}");
    assert!(c.logged(follower, "snapshot rejected: checksum mismatch")?, "the mismatch is logged");
    assert_eq!(c.digest(follower).await?["records"].as_u64(), Some(0), "follower state untouched");

    // A fresh snapshot on the leader replaces the corrupted one; the retry succeeds.
    assert!(c.put_bytes(leader, "snap", "one-more", random(100)).await?.is_success());
    c.snapshot(leader).await?;
    c.wait_converged(&ALL, Duration::from_secs(60)).await?;
    assert!(snapshot_stats(&c, follower).await?["installs"].as_u64() >= Some(1));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_during_snapshot_builds_are_on_every_node() -> Result<()> {
    let _shared = HEAVY.read().await;
    let (c, leader, _) = cluster_with_data(&[], 10, 1024).await?;
    let c = std::sync::Arc::new(c);
    let mut writers = Vec::new();
    for w in 0..3u64 {
        let c = c.clone();
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..80 {
                let key = format!("w{w}-{i}");
                // Through every node: followers forward to the leader.
                let node = ALL[((w as usize) + i) % 3];
                let resp = c
                    .request(node, reqwest::Method::PUT, &format!("/api/v1/namespaces/snap/config/{key}"))?
                    .bearer_auth(&c.keys.editor)
                    .header("content-type", "text/plain")
                    .body(key.clone())
                    .send()
                    .await?;
                let status = resp.status();
                if status.is_success() {
                    acked.push(key);
                } else {
                    let body = resp.text().await.unwrap_or_default();
                    return Err(HarnessError::Unexpected(format!("write {key} via node {node}: {status} {body}")));
                }
            }
            Result::Ok(acked)
        }));
    }
    for _ in 0..5 {
        c.snapshot(leader).await?;
    }
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.map_err(|e| HarnessError::Unexpected(e.to_string()))??);
    }
    assert_eq!(acked.len(), 240, "every write acknowledged");
    // Builds requested while one runs coalesce; at least one ran during the writes.
    assert!(snapshot_stats(&c, leader).await?["builds"].as_u64() >= Some(1));
    c.wait_converged(&ALL, Duration::from_secs(60)).await?;
    for id in ALL {
        for k in &acked {
            let v = c.get(id, "snap", k, true).await?;
            assert_eq!(v.as_ref().and_then(|e| e["value"].as_str()), Some(k.as_str()), "node {id} {k}");
        }
    }
    Ok(())
}

/// 200 × 1 MiB of state; a wiped follower receives it as one streamed snapshot while the
/// small-class timing (400–800 ms election timeout) is in force: no election may happen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mb_snapshot_transfer_causes_no_election() -> Result<()> {
    let _alone = HEAVY.write().await;
    let (mut c, leader, follower) = cluster_with_data(&[], 200, 1 << 20).await?;
    let before: Vec<Value> = futures_terms(&c, &ALL).await?;
    lose_follower_and_compact(&mut c, leader, follower).await?;
    c.spawn(follower)?;
    let digest = c.wait_converged(&ALL, Duration::from_secs(180)).await?;
    assert!(digest["bytes"].as_u64().unwrap_or(0) > 200 << 20, "{digest}");
    let stats = snapshot_stats(&c, follower).await?;
    assert!(stats["lastInstallBytes"].as_u64().unwrap_or(0) > 200 << 20, "{stats}");
    let survivors: Vec<u64> = ALL.into_iter().filter(|id| *id != follower).collect();
    let after = futures_terms(&c, &survivors).await?;
    for (id, a) in survivors.iter().zip(after) {
        let b = &before[(*id - 1) as usize];
        assert_eq!(a["term"], b["term"], "node {id}: term changed during the transfer");
        assert_eq!(a["leaderId"], b["leaderId"], "node {id}: leader changed");
        assert_eq!(a["leaderChanges"], b["leaderChanges"], "node {id}: leader changes");
    }
    let f = c.cluster_info(follower).await?;
    assert_eq!(f["term"], before[0]["term"], "restored follower joined the same term");
    Ok(())
}

async fn futures_terms(c: &Cluster, ids: &[u64]) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for id in ids {
        out.push(c.cluster_info(*id).await?);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_31_mib_value_replicates_and_an_oversized_one_gets_413() -> Result<()> {
    let _shared = HEAVY.read().await;
    let limits = ["--max-value-bytes", "33554432", "--body-limit-bytes", "41943040"];
    let (c, leader, follower) = cluster_with_data(&limits, 1, 16).await?;
    let value = random(31 << 20);
    assert_eq!(c.put_bytes(follower, "snap", "huge", value.clone()).await?.as_u16(), 201);
    c.wait_converged(&ALL, Duration::from_secs(60)).await?;
    for id in ALL {
        let resp = c
            .request(id, reqwest::Method::GET, "/api/v1/namespaces/snap/config/huge?consistency=stale")?
            .bearer_auth(&c.keys.viewer)
            .header("accept", "application/octet-stream")
            .send()
            .await?;
        assert!(resp.bytes().await?.as_ref() == value.as_slice(), "node {id} holds the 31 MiB value");
    }
    let resp = c
        .request(leader, reqwest::Method::PUT, "/api/v1/namespaces/snap/config/huge")?
        .bearer_auth(&c.keys.editor)
        .header("content-type", "application/octet-stream")
        .body(random((32 << 20) + 1))
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 413);
    let problem: Value = resp.json().await?;
    assert_eq!(problem["limit"].as_u64(), Some(32 << 20), "{problem}");
    let meta = c.get(leader, "snap", "huge", false).await?.unwrap_or_default();
    assert_eq!(meta["version"].as_u64(), Some(1), "nothing written");
    Ok(())
}

/// Starts `follower` with the crash injected between ingesting the snapshot and recording it
/// as applied, and waits for the abort.
async fn crash_follower_mid_install(c: &mut Cluster, follower: u64) -> Result<()> {
    c.spawn_env(follower, &[("CONFMAN_FAULT_CRASH_AT", "install-before-flip")])?;
    let status = c.wait_exit(follower, Duration::from_secs(60)).await?;
    assert!(!status.success(), "the fault injection aborted the process: {status:?}");
    assert!(c.logged(follower, "fault injection: aborting the process")?, "crashed at the injection point");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_during_install_recovers_on_restart() -> Result<()> {
    let _shared = HEAVY.read().await;
    let (mut c, leader, follower) = cluster_with_data(&[], 80, 2048).await?;
    lose_follower_and_compact(&mut c, leader, follower).await?;
    crash_follower_mid_install(&mut c, follower).await?;
    c.spawn(follower)?;
    c.wait_converged(&ALL, Duration::from_secs(60)).await?;
    let stats = snapshot_stats(&c, follower).await?;
    assert_eq!(stats["resumedInstalls"].as_u64(), Some(1), "the interrupted install was resumed at startup: {stats}");
    assert!(c.logged(follower, "resuming an interrupted snapshot install")?);
    Ok(())
}

/// A follower that kept its (old) data crashes mid-install and restarts cut off from the rest
/// of the cluster: no leader can send it anything, so its state at the snapshot's index comes
/// from its own disk. Two paths could produce it: `resume_install` before Raft starts, or
/// openraft installing the (already adopted) local snapshot because it is ahead of the applied
/// index. The counters tell them apart: the install this process made must be the resumed one
/// (with `resume_install` disabled, openraft's install shows as `installs: 1, resumedInstalls:
/// 0` and the test fails).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_follower_cut_off_after_a_crash_mid_install_finishes_the_install_alone() -> Result<()> {
    let _shared = HEAVY.read().await;
    let (mut c, leader, follower) = cluster_with_data(&[], 80, 2048).await?;
    c.wait_converged(&ALL, Duration::from_secs(60)).await?;
    let lagging = c.digest(follower).await?;
    c.kill(follower)?;
    // Overwrite every key the follower holds, then compact: it can only catch up by snapshot.
    for i in 0..80 {
        let st = c.put_bytes(leader, "snap", &format!("k{i:05}"), random(512)).await?;
        assert!(st.is_success(), "overwrite {i}: {st}");
    }
    c.snapshot(leader).await?;
    let lagging_index = lagging["appliedIndex"]
        .as_u64()
        .ok_or_else(|| HarnessError::Unexpected(format!("no applied index: {lagging}")))?;
    // openraft purges once no replication stream reads the purged range any more.
    c.poll("the leader to purge its log past the follower", Duration::from_secs(30), || async {
        Ok(c.cluster_info(leader).await?["purgedIndex"].as_u64().unwrap_or(0) > lagging_index)
    })
    .await?;
    let info = c.cluster_info(leader).await?;
    let target = c.digest(leader).await?;
    assert_eq!(target["appliedIndex"], info["snapshotIndex"], "nothing after the snapshot: {target} {info}");
    assert_ne!(target["sha256"], lagging["sha256"], "the follower's old state differs from the snapshot's");

    crash_follower_mid_install(&mut c, follower).await?;
    let others: Vec<u64> = ALL.into_iter().filter(|id| *id != follower).collect();
    for id in &others {
        c.kill(*id)?;
    }
    c.spawn(follower)?;
    // Alone it never becomes ready (no leader); its local state answers once it listens.
    c.poll("the follower to answer alone", Duration::from_secs(60), || async { Ok(c.digest(follower).await.is_ok()) })
        .await?;
    let alone = c.digest(follower).await?;
    assert_eq!(alone["appliedIndex"], target["appliedIndex"], "follower at the snapshot's index: {alone}");
    assert_eq!(alone["sha256"], target["sha256"], "follower holds exactly the snapshot's state");
    let stats = snapshot_stats(&c, follower).await?;
    assert_eq!(stats["resumedInstalls"].as_u64(), Some(1), "{stats}");
    assert_eq!(stats["installs"].as_u64(), Some(1), "one install in this process: the resumed one: {stats}");

    // The others come back and the cluster converges on the same state.
    for id in &others {
        c.spawn(*id)?;
    }
    c.wait_converged(&ALL, Duration::from_secs(60)).await?;
    Ok(())
}
