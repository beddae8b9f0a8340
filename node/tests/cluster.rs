//! A 3-node cluster of real processes on loopback: replication through a follower,
//! linearizable reads everywhere, leader crash and re-election, and catch-up after restart.

use std::path::Path;

use confman_tests::cluster::{Cluster, Result};

const BIN: &str = env!("CARGO_BIN_EXE_confman-node");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_survive_leader_crash_and_the_crashed_node_catches_up() -> Result<()> {
    let mut c = Cluster::start(Path::new(BIN), 3, &[]).await?;
    let all = [1, 2, 3];
    let leader = c.wait_leader(&all, &all).await?;
    let follower = *all.iter().find(|id| **id != leader).unwrap_or(&1);

    // Writes through a follower are forwarded to the leader.
    c.create_namespace(follower, "app").await?;
    let mut acked = Vec::new();
    for i in 0..20 {
        let (st, body) = c.put_text(follower, "app", &format!("k{i}"), &format!("v{i}")).await?;
        assert_eq!(st.as_u16(), 201, "write {i} through follower {follower}: {body}");
        acked.push((format!("k{i}"), format!("v{i}")));
    }
    // Linearizable reads see every acknowledged write on every node, at once.
    for id in all {
        for (k, v) in &acked {
            let got = c.get(id, "app", k, false).await?;
            assert_eq!(got.as_ref().and_then(|e| e["value"].as_str()), Some(v.as_str()), "node {id} key {k}");
        }
    }

    // Crash the leader: the other two elect a new one and keep every acknowledged write.
    c.kill(leader)?;
    let survivors: Vec<u64> = all.iter().copied().filter(|id| *id != leader).collect();
    let new_leader = c.wait_leader(&survivors, &survivors).await?;
    assert_ne!(new_leader, leader);
    for i in 20..30 {
        let (st, body) = c.put_text(survivors[0], "app", &format!("k{i}"), &format!("v{i}")).await?;
        assert_eq!(st.as_u16(), 201, "write {i} after failover: {body}");
        acked.push((format!("k{i}"), format!("v{i}")));
    }
    for id in &survivors {
        for (k, v) in &acked {
            let got = c.get(*id, "app", k, false).await?;
            assert_eq!(got.as_ref().and_then(|e| e["value"].as_str()), Some(v.as_str()), "node {id} key {k}");
        }
    }

    // The crashed node restarts with its data and catches up.
    c.spawn(leader)?;
    c.wait_all_ready(&[leader]).await?;
    for (k, v) in &acked {
        let got = c.get(leader, "app", k, false).await?;
        assert_eq!(got.as_ref().and_then(|e| e["value"].as_str()), Some(v.as_str()), "restarted node key {k}");
    }
    // Its stale local state converges too (no read barrier): wait until applied, then compare.
    let target = c.cluster_info(new_leader).await?["commitIndex"].as_u64().unwrap_or(0);
    c.poll("restarted node applied the log", std::time::Duration::from_secs(30), || async {
        Ok(c.cluster_info(leader).await?["appliedIndex"].as_u64().unwrap_or(0) >= target)
    })
    .await?;
    for (k, v) in &acked {
        let got = c.get(leader, "app", k, true).await?;
        assert_eq!(got.as_ref().and_then(|e| e["value"].as_str()), Some(v.as_str()), "stale read of {k}");
    }
    Ok(())
}
