//! A data directory that runs below the node's free-space reserve, on real small filesystems
//! (a tmpfs per node, filled by a filler file; root needed): writes are refused with a 507
//! problem and change nothing, reads go on, a full leader hands over, a full follower falls
//! behind without stopping Raft, and every node catches up by itself once space is freed.

use std::path::Path;
use std::time::Duration;

use confman_tests::cluster::{Cluster, FaultSetup};
use confman_tests::faults::{DISK_RESERVE_BYTES, FULL_DISK_LEAVES_BYTES, SMALL_DISK_BYTES};
use confman_tests::small_disk::SmallDisks;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_confman-node");

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const NS: &str = "disk";
const WAIT: Duration = Duration::from_secs(30);

async fn start() -> Result<Cluster> {
    let reserve = DISK_RESERVE_BYTES.to_string();
    let setup = FaultSetup { small_disk_bytes: Some(SMALL_DISK_BYTES), ..FaultSetup::default() };
    let c = Cluster::start_faulty(Path::new(BIN), 3, &["--disk-reserve-bytes", &reserve], setup).await?;
    let leader = c.wait_leader(&[1, 2, 3], &[1, 2, 3]).await?;
    c.create_namespace(leader, NS).await?;
    Ok(c)
}

async fn put(c: &Cluster, id: u64, key: &str, value: &str) -> Result<(StatusCode, Value)> {
    let path = format!("/api/v1/namespaces/{NS}/config/{key}");
    Ok(c.call(id, Method::PUT, &path, &c.keys.editor, Some(json!({ "value": value }))).await?)
}

/// A linearizable read on node `id`: the value, or the status it answered with.
async fn read(c: &Cluster, id: u64, key: &str) -> Result<std::result::Result<String, StatusCode>> {
    let path = format!("/api/v1/namespaces/{NS}/config/{key}");
    let (st, v) = c.call(id, Method::GET, &path, &c.keys.viewer, None).await?;
    Ok(if st == StatusCode::OK { Ok(v["value"].as_str().unwrap_or_default().to_string()) } else { Err(st) })
}

async fn disk_low(c: &Cluster, id: u64) -> Result<bool> {
    let text = c.request(id, Method::GET, "/metrics")?.send().await?.text().await?;
    let v = text.lines().find_map(|l| l.strip_prefix("confman_disk_low ")).ok_or("no confman_disk_low")?;
    Ok(v.trim() == "1")
}

/// Calls `f` until it gives `Some` (at most [`WAIT`]).
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await? {
            return Ok(v);
        }
        if std::time::Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn fill(c: &Cluster, id: u64) -> Result<()> {
    SmallDisks::fill(&c.data_dir(id)?, FULL_DISK_LEAVES_BYTES)?;
    Ok(())
}

fn unfill(c: &Cluster, id: u64) -> Result<()> {
    SmallDisks::unfill(&c.data_dir(id)?)?;
    Ok(())
}

/// No node exited, and none logged a storage error (Raft stopping on a failed write).
fn all_running_without_storage_errors(c: &mut Cluster) -> Result<()> {
    assert_eq!(c.exited()?, vec![], "a node exited");
    for id in [1, 2, 3] {
        let errors = c.log_records_at(id, "ERROR")?;
        assert!(errors.is_empty(), "node {id} logged errors: {errors:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_disk_full_refuses_writes_with_507_keeps_serving_reads_and_writes_resume_once_freed() -> Result<()> {
    let mut c = start().await?;
    let leader = c.wait_leader(&[1, 2, 3], &[1, 2, 3]).await?;
    assert_eq!(put(&c, leader, "k", "before").await?.0, StatusCode::CREATED);
    for id in [1, 2, 3] {
        fill(&c, id)?;
    }
    // A write to any node (a follower forwards it) is refused, with the reason.
    let body = eventually("a write refused with 507", || async {
        let (st, body) = put(&c, 1, "k", "during").await?;
        assert!(
            st == StatusCode::INSUFFICIENT_STORAGE || st.is_success() || st == StatusCode::SERVICE_UNAVAILABLE,
            "unexpected answer {st}: {body}"
        );
        Ok((st == StatusCode::INSUFFICIENT_STORAGE).then_some(body))
    })
    .await?;
    assert!(body["type"].as_str().is_some_and(|t| t.ends_with("/insufficient-storage")), "{body}");
    assert!(body["detail"].as_str().is_some_and(|d| d.contains("disk-reserve-bytes")), "{body}");
    for id in [1, 2, 3] {
        assert!(disk_low(&c, id).await?, "node {id} reports a low disk");
        // Every write now is refused: no member can store it (503 while a full leader hands
        // over to another full one).
        let (st, body) = put(&c, id, "k", "refused").await?;
        assert!(st == StatusCode::INSUFFICIENT_STORAGE || st == StatusCode::SERVICE_UNAVAILABLE, "{st}: {body}");
    }
    // Reads go on, and show no refused write.
    for id in [1, 2, 3] {
        let value =
            eventually(&format!("a linearizable read on node {id}"), || async { Ok(read(&c, id, "k").await?.ok()) })
                .await?;
        assert!(value == "before" || value == "during", "node {id} read {value:?}");
        assert_ne!(value, "refused");
    }
    for id in [1, 2, 3] {
        unfill(&c, id)?;
    }
    eventually("a write accepted once space is freed", || async {
        Ok((put(&c, 2, "k", "after").await?.0 == StatusCode::OK).then_some(()))
    })
    .await?;
    c.wait_converged(&[1, 2, 3], WAIT).await?;
    for id in [1, 2, 3] {
        assert_eq!(read(&c, id, "k").await?, Ok("after".to_string()), "node {id}");
        assert!(!disk_low(&c, id).await?, "node {id} still reports a low disk");
    }
    all_running_without_storage_errors(&mut c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_follower_falls_behind_serves_fresh_reads_through_the_leader_and_catches_up_once_freed() -> Result<()> {
    let mut c = start().await?;
    let leader = c.wait_leader(&[1, 2, 3], &[1, 2, 3]).await?;
    let follower = [1, 2, 3].into_iter().find(|id| *id != leader).ok_or("no follower")?;
    fill(&c, follower)?;
    eventually("the follower reports a low disk", || async { Ok(disk_low(&c, follower).await?.then_some(())) }).await?;
    // The cluster keeps writing: the leader and the other follower are a majority.
    for i in 0..20 {
        let (st, body) = put(&c, leader, &format!("k{i}"), &format!("v{i}")).await?;
        assert_eq!(st, StatusCode::CREATED, "{body}");
    }
    // The full follower took none of it, yet its linearizable reads are fresh (the leader
    // answers them) and writes sent to it are forwarded.
    let info = c.cluster_info(follower).await?;
    let commit = c.cluster_info(leader).await?["commitIndex"].as_u64().ok_or("no commit index")?;
    assert!(info["lastLogIndex"].as_u64().unwrap_or(0) < commit, "the full follower appended entries: {info}");
    assert_eq!(read(&c, follower, "k19").await?, Ok("v19".to_string()));
    assert_eq!(put(&c, follower, "via-follower", "x").await?.0, StatusCode::CREATED);
    assert_eq!(c.wait_leader(&[1, 2, 3], &[1, 2, 3]).await?, leader, "no election from a full follower");
    unfill(&c, follower)?;
    c.wait_converged(&[1, 2, 3], WAIT).await?;
    let path = format!("/api/v1/namespaces/{NS}/config/k19?consistency=stale");
    let (st, v) = c.call(follower, Method::GET, &path, &c.keys.viewer, None).await?;
    assert_eq!((st, v["value"].as_str()), (StatusCode::OK, Some("v19")), "caught up by itself");
    all_running_without_storage_errors(&mut c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_leader_hands_over_so_the_cluster_keeps_writing_and_catches_up_once_freed() -> Result<()> {
    let mut c = start().await?;
    let leader = c.wait_leader(&[1, 2, 3], &[1, 2, 3]).await?;
    fill(&c, leader)?;
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    let new_leader = c.wait_leader(&[1, 2, 3], &others).await?;
    assert_ne!(new_leader, leader);
    // Writes through any member succeed again, the full one included (it forwards).
    for (i, id) in [1, 2, 3].into_iter().enumerate() {
        eventually(&format!("a write through node {id}"), || async {
            let (st, body) = put(&c, id, &format!("k{i}"), "v").await?;
            let refused = st == StatusCode::INSUFFICIENT_STORAGE || st == StatusCode::SERVICE_UNAVAILABLE;
            assert!(st.is_success() || refused, "{st}: {body}");
            Ok(st.is_success().then_some(()))
        })
        .await?;
    }
    unfill(&c, leader)?;
    c.wait_converged(&[1, 2, 3], WAIT).await?;
    all_running_without_storage_errors(&mut c)
}
