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
    let ids = [1, 2, 3];
    let mut c = if nemesis.needs_isolation() {
        Cluster::start_isolated(Path::new(BIN), 3, &[]).await?
    } else {
        Cluster::start(Path::new(BIN), 3, &[]).await?
    };
    let leader = c.wait_leader(&ids, &ids).await?;
    c.create_namespace(leader, faults::NAMESPACE).await?;
    let urls: Vec<String> = ids.iter().map(|id| c.url(*id)).collect::<std::result::Result<_, _>>()?;
    let w = Workload {
        clients: 6,
        keys: 3,
        duration: Duration::from_secs(8),
        request_timeout: Duration::from_secs(3),
        value_bytes: 64,
        key_prefix: "k".into(),
    };
    let faults_until = Instant::now() + w.duration - Duration::from_secs(1);
    let load = tokio::spawn(faults::run_workload(urls.clone(), c.keys.editor.clone(), w));
    let fault_log = faults::run_nemesis(&mut c, nemesis, faults_until).await?;
    let mut recorded = load.await??;
    assert_eq!(c.exited()?, vec![], "a node exited on its own");
    c.wait_converged(&ids, Duration::from_secs(60)).await?;
    faults::final_reads(&urls, &c.keys.editor, &mut recorded).await?;

    eprintln!("{nemesis:?}: {} faults {:?}; outcomes {:?}", fault_log.faults, fault_log.events, recorded.outcomes);
    assert!(fault_log.faults >= 2, "too few faults: {:?}", fault_log.events);
    assert_eq!(recorded.anomalies, Vec::<String>::new(), "answers no correct node gives");
    let ops: Vec<_> = recorded.keys.values().flatten().collect();
    let written = ops.iter().filter(|o| matches!(o.output, Some(RegisterOutput::Written(_)))).count();
    let read = ops.iter().filter(|o| matches!(o.output, Some(RegisterOutput::Read(_)))).count();
    assert!(written >= 50 && read >= 50, "too little load to judge: {:?}", recorded.outcomes);
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
