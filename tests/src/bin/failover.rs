#![allow(clippy::print_stdout)] // a command-line tool: its output is the report
//! `failover`: how long a 3-node cluster is without a leader after `kill -9` of the leader.
//! Each round kills the leader, polls every survivor's `/api/v1/cluster` every 10 ms until all
//! name the same new leader, then restarts the killed node. The same rounds run with the
//! failover watchdog and without it (openraft's own election timers only) on fresh clusters,
//! alternating, and the report gives p50/max per variant and their ratio.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use confman_tests::cluster::Cluster;

#[derive(Debug, Parser)]
#[command(about = "Leader failover time after kill -9, with and without the failover watchdog")]
struct Args {
    /// Path of the confman-node binary (default: next to this binary).
    #[arg(long)]
    node_bin: Option<PathBuf>,
    /// Rounds per variant.
    #[arg(long, default_value_t = 6)]
    rounds: usize,
    /// Election timeout range, ms (heartbeat 250 ms).
    #[arg(long, default_value_t = 1000)]
    election_min_ms: u64,
    #[arg(long, default_value_t = 2000)]
    election_max_ms: u64,
}

async fn agreed_leader(c: &Cluster, ids: &[u64]) -> Option<u64> {
    let mut leader = None;
    for id in ids {
        let l = c.cluster_info(*id).await.ok()?["leaderId"].as_u64()?;
        if leader.is_some_and(|x| x != l) {
            return None;
        }
        leader = Some(l);
    }
    leader.filter(|l| ids.contains(l))
}

async fn rounds(bin: &std::path::Path, args: &Args, watchdog: bool) -> anyhow::Result<Vec<Duration>> {
    let timing = [
        "--heartbeat-ms".to_string(),
        "250".into(),
        "--election-min-ms".into(),
        args.election_min_ms.to_string(),
        "--election-max-ms".into(),
        args.election_max_ms.to_string(),
    ];
    let timing: Vec<&str> = timing.iter().map(String::as_str).collect();
    let env: &[(&str, &str)] = if watchdog { &[] } else { &[("CONFMAN_BENCH_NO_FAILOVER_WATCHDOG", "1")] };
    let started = Cluster::start_with_env(bin, 3, &timing, env).await;
    let mut c = started.context("starting the cluster")?;
    let all = [1, 2, 3];
    let mut out = Vec::new();
    for _ in 0..args.rounds {
        let leader = c.wait_leader(&all, &all).await?;
        // A settled cluster: every node heard the leader recently.
        tokio::time::sleep(Duration::from_millis(args.election_max_ms)).await;
        let survivors: Vec<u64> = all.into_iter().filter(|id| *id != leader).collect();
        c.kill(leader)?;
        let t = Instant::now();
        loop {
            if agreed_leader(&c, &survivors).await.is_some() {
                break;
            }
            if t.elapsed() > Duration::from_secs(60) {
                bail!("no new leader within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        out.push(t.elapsed());
        c.spawn(leader)?;
        c.wait_all_ready(&all).await?;
    }
    Ok(out)
}

fn ms(d: &Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin = confman_tests::node_binary(args.node_bin.clone())?;
    println!(
        "failover: 3 nodes on loopback, heartbeat 250 ms, election timeout {}–{} ms, {} rounds per variant",
        args.election_min_ms, args.election_max_ms, args.rounds
    );
    let mut results: Vec<(bool, Vec<Duration>)> = vec![(false, Vec::new()), (true, Vec::new())];
    // Alternate the variants in halves so drift in machine load touches both.
    let half = Args { rounds: args.rounds.div_ceil(2), ..args };
    for _ in 0..2 {
        for (watchdog, acc) in results.iter_mut() {
            acc.extend(rounds(&bin, &half, *watchdog).await?);
        }
    }
    let mut p50s = Vec::new();
    for (watchdog, mut v) in results {
        v.sort();
        let p50 = ms(&v[v.len() / 2]);
        let max = v.last().map(ms).unwrap_or(0.0);
        let name = if watchdog { "with watchdog" } else { "openraft timers only" };
        let all: Vec<String> = v.iter().map(|d| format!("{:.0}", ms(d))).collect();
        println!("{name:>22}: p50 {p50:.0} ms, max {max:.0} ms  (all: {})", all.join(", "));
        p50s.push(p50);
    }
    println!("p50 ratio (watchdog / timers only): {:.2}", p50s[1] / p50s[0].max(1.0));
    Ok(())
}
