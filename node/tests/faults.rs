//! The fault suite's short form: three real nodes under a mixed load of reads, writes and
//! compare-and-sets from six clients (random member per operation) while one kind of fault
//! repeats; every key's history must be linearizable (so no acknowledged write is lost and no
//! read is stale), no node may exit on its own, and the members must converge afterwards.
//! Partitions run with each node in a network namespace of its own (root needed).

use std::path::Path;
use std::time::{Duration, Instant};

use confman_tests::cluster::Cluster;
use confman_tests::faults::{self, Nemesis, Workload};
use confman_tests::linearizability::{RegisterOutput, Verdict, check_register, describe};

const BIN: &str = env!("CARGO_BIN_EXE_confman-node");

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Search budget per key: far above what a few seconds of history needs.
const MAX_STEPS: u64 = 20_000_000;

async fn survives(nemesis: Nemesis) -> Result<()> {
    survives_with(nemesis, Workload::small(6, 3, Duration::from_secs(8)), &[]).await
}

/// Runs `w` under `nemesis` and judges the histories; `extra_args` go to every node.
async fn survives_with(nemesis: Nemesis, w: Workload, extra_args: &[&str]) -> Result<()> {
    let ids = [1, 2, 3];
    let mut args = nemesis.node_args();
    args.extend(extra_args.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut c = Cluster::start_faulty(Path::new(BIN), 3, &args, nemesis.setup()).await?;
    let leader = c.wait_leader(&ids, &ids).await?;
    c.create_namespace(leader, faults::NAMESPACE).await?;
    let urls: Vec<String> = ids.iter().map(|id| c.url(*id)).collect::<std::result::Result<_, _>>()?;
    let large = w.large_percent > 0;
    let faults_until = Instant::now() + w.duration - Duration::from_secs(1);
    let load = tokio::spawn(faults::run_workload(urls.clone(), c.keys.editor.clone(), w));
    let fault_log = faults::run_nemesis(&mut c, nemesis, faults_until).await?;
    let mut recorded = load.await??;
    assert_eq!(c.exited()?, vec![], "a node exited on its own");
    c.wait_converged(&ids, Duration::from_secs(60)).await?;
    faults::final_reads(&urls, &c.keys.editor, &mut recorded).await?;

    eprintln!("{nemesis:?}: {} faults {:?}; outcomes {:?}", fault_log.faults, fault_log.events, recorded.outcomes);
    assert!(fault_log.faults >= 2, "too few faults: {:?}", fault_log.events);
    if nemesis == Nemesis::DiskFull {
        // The first fault fills the leader's disk: it refuses writes until it has handed over.
        let refused = recorded.outcomes.get("failed: 507 insufficient-storage").copied().unwrap_or(0);
        assert!(refused > 0, "no write was refused for want of space: {:?}", recorded.outcomes);
        assert_eq!(fault_log.recoveries.len() as u64, fault_log.faults, "every full node caught up");
    }
    assert_eq!(recorded.anomalies, Vec::<String>::new(), "answers no correct node gives");
    let ops: Vec<_> = recorded.keys.values().flatten().collect();
    let written = ops.iter().filter(|o| matches!(o.output, Some(RegisterOutput::Written(_)))).count();
    let read = ops.iter().filter(|o| matches!(o.output, Some(RegisterOutput::Read(_)))).count();
    let least = if large { 10 } else { 50 };
    assert!(written >= least && read >= least, "too little load to judge: {:?}", recorded.outcomes);
    // Unknown outcomes weaken the check (each may or may not have happened): keep them rare.
    let unknown = ops.iter().filter(|o| o.output.is_none()).count();
    assert!(unknown * 20 <= ops.len(), "{unknown} of {} operations ended unknown", ops.len());
    for (key, history) in &recorded.keys {
        let verdict = check_register(history, MAX_STEPS);
        assert_eq!(verdict, Verdict::Linearizable, "key {key}: {}", describe(history, &verdict));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_again_and_again_loses_no_acknowledged_write() -> Result<()> {
    survives(Nemesis::KillLeader).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_killed_again_and_again_loses_no_acknowledged_write() -> Result<()> {
    survives(Nemesis::KillFollower).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_serves_no_stale_read_and_loses_no_write() -> Result<()> {
    survives(Nemesis::PauseLeader).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_follower_serves_no_stale_read_and_loses_no_write() -> Result<()> {
    survives(Nemesis::PauseFollower).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_its_followers_loses_no_write_and_serves_no_stale_read() -> Result<()> {
    survives(Nemesis::PartitionLeader).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_cut_off_loses_no_write_and_serves_no_stale_read() -> Result<()> {
    survives(Nemesis::PartitionFollower).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_partition_loses_no_write_and_serves_no_stale_read() -> Result<()> {
    survives(Nemesis::PartitionBridge).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_on_the_leader_or_a_follower_loses_no_write_and_serves_no_stale_read() -> Result<()> {
    survives_with(Nemesis::DiskFull, Workload::small(6, 3, Duration::from_secs(12)), &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_disk_on_the_leader_or_a_follower_loses_no_write_and_serves_no_stale_read() -> Result<()> {
    survives_with(Nemesis::SlowDisk, Workload::small(6, 3, Duration::from_secs(10)), &[]).await
}

/// Values of 1–4 MiB in every tenth write, with a compaction threshold low enough that the
/// leader builds snapshots and the restarted follower is sent one while the leader is killed
/// and restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_values_under_kills_of_the_leader_lose_no_write() -> Result<()> {
    let w = Workload {
        large_percent: 10,
        large_value_bytes: (1 << 20)..(4 << 20),
        request_timeout: Duration::from_secs(5),
        ..Workload::small(6, 3, Duration::from_secs(12))
    };
    survives_with(Nemesis::KillLeader, w, &["--compaction-bytes", "16777216", "--logs-to-keep", "4"]).await
}
