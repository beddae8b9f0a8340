#![allow(clippy::print_stdout)] // a command-line tool: its output is the report
//! `watch-idle`: what idle watchers cost a node. One node on loopback; namespace `b` takes paced
//! writes while namespace `a`, which nothing writes to, has 0 and then N open watches. Prints the
//! node's CPU time (utime + stime from /proc) per phase, the ratio of the two, the storage reads
//! the watches made, and leader changes. Idle watchers must cost close to nothing: one storage
//! read per applied change each, no busy loop.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use confman_tests::cluster::Cluster;
use futures::StreamExt;
use serde_json::Value;

#[derive(Debug, Parser)]
#[command(about = "CPU cost of idle watches on a node whose other namespaces take writes")]
struct Args {
    /// Path of the confman-node binary (default: next to this binary).
    #[arg(long)]
    node_bin: Option<PathBuf>,
    /// Idle watches opened on namespace `a` in the second phase.
    #[arg(long, default_value_t = 100)]
    watchers: usize,
    /// Writes per second into namespace `b`.
    #[arg(long, default_value_t = 500)]
    rate: u64,
    /// Seconds per phase.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("malformed /proc stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11).context("no utime")?.parse()?;
    let stime: u64 = f.get(12).context("no stime")?.parse()?;
    Ok(utime + stime)
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok()).unwrap_or(0)
}

struct Phase {
    ticks: u64,
    writes: u64,
    failed: u64,
    watch_reads: u64,
}

/// Paced writes into `b` for `secs`; returns the node's CPU ticks over the phase.
async fn phase(c: &Cluster, pid: u32, rate: u64, secs: u64) -> anyhow::Result<Phase> {
    let url = c.url(1)?;
    let metrics_before = c.http.get(format!("{url}/metrics")).send().await?.text().await?;
    let t0 = cpu_ticks(pid)?;
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let end = Instant::now() + Duration::from_secs(secs);
    let (mut writes, mut failed) = (0u64, 0u64);
    while Instant::now() < end {
        tick.tick().await;
        let r = c
            .http
            .put(format!("{url}/api/v1/namespaces/b/config/k{}", writes % 1000))
            .bearer_auth(&c.keys.editor)
            .header("content-type", "text/plain")
            .body("v")
            .send()
            .await;
        match r {
            Ok(r) if r.status().is_success() => writes += 1,
            _ => failed += 1,
        }
    }
    let ticks = cpu_ticks(pid)? - t0;
    let metrics_after = c.http.get(format!("{url}/metrics")).send().await?.text().await?;
    let name = "confman_watch_storage_reads_total";
    Ok(Phase { ticks, writes, failed, watch_reads: metric(&metrics_after, name) - metric(&metrics_before, name) })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin = confman_tests::node_binary(args.node_bin.clone())?;
    let c = Cluster::start(&bin, 1, &[]).await.context("starting the node")?;
    c.create_namespace(1, "a").await?;
    c.create_namespace(1, "b").await?;
    let pid = c.pid(1).context("node pid")?;
    let hz = 100.0; // USER_HZ on Linux
    let leader_changes = |v: &Value| v["leaderChanges"].as_u64().unwrap_or(0);
    let before = c.cluster_info(1).await?;

    println!("watch-idle: 1 node, {} writes/s into `b` for {} s per phase", args.rate, args.seconds);
    let base = phase(&c, pid, args.rate, args.seconds).await?;

    let mut streams = Vec::new();
    for _ in 0..args.watchers {
        let resp =
            c.http.get(format!("{}/api/v1/namespaces/a/watch", c.url(1)?)).bearer_auth(&c.keys.viewer).send().await?;
        if !resp.status().is_success() {
            bail!("watch refused: {}", resp.status());
        }
        streams.push(resp.bytes_stream().boxed());
    }
    let watched = phase(&c, pid, args.rate, args.seconds).await?;
    // Nothing was written to `a`: no watch may have received an event (keep-alive comments
    // only). Poll each stream without waiting.
    let mut events = 0usize;
    for s in &mut streams {
        while let Some(Some(Ok(chunk))) = futures::FutureExt::now_or_never(s.next()) {
            events += String::from_utf8_lossy(&chunk).matches("data:").count();
        }
    }
    drop(streams);
    let after = c.cluster_info(1).await?;

    let secs = args.seconds as f64;
    for (name, p) in [("no watches", &base), (&*format!("{} idle watches", args.watchers), &watched)] {
        println!(
            "{name:>18}: {:>6} writes ({} failed), node CPU {:>5} ticks = {:.3} cores, watch storage reads {}",
            p.writes,
            p.failed,
            p.ticks,
            p.ticks as f64 / hz / secs,
            p.watch_reads
        );
    }
    println!(
        "CPU ratio (watches / none): {:.3}; watch reads per applied write per watcher: {:.3}; events delivered to idle watches: {events}; leader changes during the run: {}",
        watched.ticks as f64 / base.ticks.max(1) as f64,
        watched.watch_reads as f64 / (watched.writes.max(1) as f64 * args.watchers.max(1) as f64),
        leader_changes(&after) - leader_changes(&before)
    );
    Ok(())
}
