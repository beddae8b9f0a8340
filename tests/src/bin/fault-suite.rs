#![allow(clippy::print_stdout)] // a command-line tool: its output is the report
//! `fault-suite`: the long form of the fault suite. For each nemesis, a fresh 3-node cluster
//! takes the recorded read/write/compare-and-set load for `--minutes` while the fault repeats;
//! the load uses fresh keys every `--window-secs`, so each window's histories are judged on
//! their own (a search over minutes of one key's history would not fit in memory). Prints a
//! Markdown report (operations by outcome, faults, verdicts, node exits, time to converge);
//! `--histories DIR` keeps every history as JSON.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use confman_tests::cluster::Cluster;
use confman_tests::faults::{self, Nemesis, Recorded, Workload};
use confman_tests::linearizability::{RegisterOutput, Verdict, check_register, describe};

#[derive(Debug, Parser)]
#[command(about = "Long fault-suite runs against 3-node Confman clusters, judged by a linearizability checker")]
struct Args {
    /// Path of the confman-node binary (default: next to this binary).
    #[arg(long)]
    node_bin: Option<PathBuf>,
    /// Minutes per nemesis.
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Seconds per key window. Short windows keep each key's history small enough for the
    /// search: with 30 s windows, 3 of 60 histories of a 10-minute kill-leader run (about 20
    /// unknown writes each) exceeded the step budget undecided.
    #[arg(long, default_value_t = 10)]
    window_secs: u64,
    /// Nemeses to run (default: all): kill-leader, kill-follower, pause-leader, pause-follower,
    /// partition-leader, partition-follower, partition-bridge.
    #[arg(long, value_delimiter = ',')]
    nemesis: Vec<String>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 6)]
    clients: usize,
    /// Keys per window.
    #[arg(long, default_value_t = 3)]
    keys: usize,
    /// Size of written values.
    #[arg(long, default_value_t = 64)]
    value_bytes: usize,
    /// Share of writes (percent) with a large value of `--large-min-bytes`..`--large-max-bytes`.
    #[arg(long, default_value_t = 0)]
    large_percent: u8,
    /// Smallest large value.
    #[arg(long, default_value_t = 1 << 20)]
    large_min_bytes: usize,
    /// Largest large value (exclusive).
    #[arg(long, default_value_t = 4 << 20)]
    large_max_bytes: usize,
    /// A flag for every node, as `--node-arg=--compaction-bytes=16777216` (repeatable).
    #[arg(long = "node-arg", allow_hyphen_values = true)]
    node_args: Vec<String>,
    /// Write every window's histories here as JSON.
    #[arg(long)]
    histories: Option<PathBuf>,
}

const ALL: [(&str, Nemesis); 9] = [
    ("kill-leader", Nemesis::KillLeader),
    ("kill-follower", Nemesis::KillFollower),
    ("pause-leader", Nemesis::PauseLeader),
    ("pause-follower", Nemesis::PauseFollower),
    ("partition-leader", Nemesis::PartitionLeader),
    ("partition-follower", Nemesis::PartitionFollower),
    ("partition-bridge", Nemesis::PartitionBridge),
    ("disk-full", Nemesis::DiskFull),
    ("slow-disk", Nemesis::SlowDisk),
];

/// Search budget per key and window.
const MAX_STEPS: u64 = 50_000_000;

async fn run(args: &Args, name: &str, nemesis: Nemesis) -> anyhow::Result<()> {
    let bin = confman_tests::node_binary(args.node_bin.clone())?;
    let ids = [1, 2, 3];
    let mut node_args = nemesis.node_args();
    node_args.extend(args.node_args.iter().flat_map(|a| match a.split_once('=') {
        Some((flag, value)) => vec![flag.to_string(), value.to_string()],
        None => vec![a.clone()],
    }));
    let node_args: Vec<&str> = node_args.iter().map(String::as_str).collect();
    let mut c = Cluster::start_faulty(&bin, 3, &node_args, nemesis.setup()).await?;
    let leader = c.wait_leader(&ids, &ids).await?;
    c.create_namespace(leader, faults::NAMESPACE).await?;
    let urls: Vec<String> = ids.iter().map(|id| c.url(*id)).collect::<Result<_, _>>()?;
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(args.minutes * 60.0);
    let (window, clients, keys, value_bytes) =
        (Duration::from_secs(args.window_secs), args.clients, args.keys, args.value_bytes);
    let (load_urls, editor) = (urls.clone(), c.keys.editor.clone());
    let (large_percent, large) = (args.large_percent, args.large_min_bytes..args.large_max_bytes);
    let load = tokio::spawn(async move {
        let mut windows: Vec<Recorded> = Vec::new();
        while Instant::now() < until {
            let w = Workload {
                key_prefix: format!("w{}k", windows.len()),
                value_bytes,
                large_percent,
                large_value_bytes: large.clone(),
                request_timeout: Duration::from_secs(if large_percent > 0 { 5 } else { 3 }),
                ..Workload::small(clients, keys, window.min(until.saturating_duration_since(Instant::now())))
            };
            windows.push(faults::run_workload(load_urls.clone(), editor.clone(), w).await?);
        }
        Ok::<_, confman_tests::cluster::HarnessError>(windows)
    });
    let fault_log = faults::run_nemesis(&mut c, nemesis, until).await?;
    let mut windows = load.await??;
    let exits = c.exited()?;
    let healed = Instant::now();
    c.wait_converged(&ids, Duration::from_secs(120)).await.context("members converging after the faults")?;
    let converge = healed.elapsed();

    let (mut judged, mut linearizable, mut failures, mut anomalies) = (0, 0, Vec::new(), Vec::new());
    let mut outcomes = std::collections::BTreeMap::<String, u64>::new();
    for (i, rec) in windows.iter_mut().enumerate() {
        faults::final_reads(&urls, &c.keys.editor, rec).await?;
        for (k, v) in &rec.outcomes {
            *outcomes.entry(k.clone()).or_default() += v;
        }
        anomalies.extend(rec.anomalies.iter().map(|a| format!("window {i}: {a}")));
        for (key, history) in &rec.keys {
            judged += 1;
            // A search that gives up decides nothing: it fails the run like a violation.
            match check_register(history, MAX_STEPS) {
                Verdict::Linearizable => linearizable += 1,
                v => failures.push(format!("window {i} key {key}: {}", describe(history, &v))),
            }
        }
        if let Some(dir) = &args.histories {
            std::fs::create_dir_all(dir)?;
            let file = dir.join(format!("{name}-window{i}.json"));
            std::fs::write(&file, serde_json::to_vec(&rec.keys)?)?;
        }
    }
    let ops: u64 = outcomes.values().sum();
    // Completed writes' latency (invocation to answer), every window.
    let mut write_latency: Vec<Duration> = windows
        .iter()
        .flat_map(|w| w.keys.values().flatten())
        .filter(|o| matches!(o.output, Some(RegisterOutput::Written(_))))
        .filter_map(|o| o.ret.map(|r| Duration::from_micros(r.saturating_sub(o.call))))
        .collect();
    let latency = confman_tests::stats::summarize(&mut write_latency);
    let mut leader_changes = 0;
    for id in ids {
        if let Ok(info) = c.cluster_info(id).await {
            leader_changes = leader_changes.max(info["leaderChanges"].as_u64().unwrap_or(0));
        }
    }
    println!("### {name}\n");
    println!(
        "- {:.1} min, {} windows of {} s, {clients} clients on {keys} keys per window, values of {value_bytes} B",
        started.elapsed().as_secs_f64() / 60.0,
        windows.len(),
        args.window_secs
    );
    if args.large_percent > 0 {
        println!(
            "- {} % of writes with a large value of {}..{} bytes",
            args.large_percent, args.large_min_bytes, args.large_max_bytes
        );
    }
    if !args.node_args.is_empty() {
        println!("- node flags: {}", args.node_args.join(" "));
    }
    println!("- faults injected: {}; leader changes seen by a node (most): {leader_changes}", fault_log.faults);
    println!(
        "- completed writes: {}, latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        latency.count, latency.p50_ms, latency.p99_ms, latency.max_ms
    );
    if !fault_log.recoveries.is_empty() {
        let mut r = fault_log.recoveries.clone();
        let rs = confman_tests::stats::summarize(&mut r);
        println!(
            "- catch-up after the disk was freed: {} times, p50 {:.0} ms, max {:.0} ms",
            rs.count, rs.p50_ms, rs.max_ms
        );
    }
    println!("- operations: {ops} ({:.0}/s); by outcome: {outcomes:?}", ops as f64 / started.elapsed().as_secs_f64());
    println!(
        "- key histories judged: {judged}; linearizable: {linearizable}; not linearizable or undecided: {}",
        failures.len()
    );
    println!("- answers no correct node gives: {}", anomalies.len());
    for a in &anomalies {
        println!("  - {a}");
    }
    println!(
        "- node exits other than the nemesis's: {exits:?}; converged {:.1} s after the load stopped",
        converge.as_secs_f64()
    );
    for f in &failures {
        println!("\n```\n{f}```");
    }
    println!();
    if !failures.is_empty() || !exits.is_empty() || !anomalies.is_empty() {
        bail!(
            "{name}: {} histories not judged linearizable, {} unexpected exits, {} anomalies",
            failures.len(),
            exits.len(),
            anomalies.len()
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let chosen: Vec<(&str, Nemesis)> = if args.nemesis.is_empty() {
        ALL.to_vec()
    } else {
        args.nemesis
            .iter()
            .map(|n| ALL.iter().find(|(name, _)| name == n).copied().with_context(|| format!("unknown nemesis {n:?}")))
            .collect::<anyhow::Result<_>>()?
    };
    println!("## fault-suite: {} min per nemesis\n", args.minutes);
    let mut failed = Vec::new();
    for (name, nemesis) in chosen {
        if let Err(e) = run(&args, name, nemesis).await {
            println!("**{name} failed**: {e:#}\n");
            failed.push(name);
        }
    }
    if !failed.is_empty() {
        bail!("failed: {failed:?}");
    }
    Ok(())
}
