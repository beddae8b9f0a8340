#![allow(clippy::print_stdout)] // a command-line tool: its output is the report
//! `stress-large`: the large-value stress run. A 3-node cluster on loopback takes N large
//! writes from 8 clients; then a follower is wiped and restored from a snapshot while writes
//! continue. Prints throughput, latency per window of 100 writes, peak RSS (VmHWM) per node and
//! phase, data-directory sizes, log size over time, leader changes, snapshot figures, and the
//! same bytes copied with `cp` on the same disk as the restore baseline.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use confman_tests::cluster::Cluster;
use confman_tests::stats::{ratio, summarize};
use rand::RngCore;
use reqwest::Method;
use serde_json::{Value, json};

#[derive(Debug, Parser)]
#[command(about = "Large-value stress run against a 3-node Confman cluster on loopback")]
struct Args {
    /// Path of the confman-node binary (default: next to this binary).
    #[arg(long)]
    node_bin: Option<PathBuf>,
    /// Value size in KiB.
    #[arg(long, default_value_t = 1024)]
    value_kib: usize,
    /// Number of writes in the measured phase.
    #[arg(long, default_value_t = 500)]
    writes: u64,
    /// Concurrent writers.
    #[arg(long, default_value_t = 8)]
    clients: u64,
    /// Write the report as JSON to this file too.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn dir_size(p: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else { return 0 };
    rd.filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

async fn put(http: &reqwest::Client, url: &str, key: &str, value: Vec<u8>) -> bool {
    http.put(format!("{url}/api/v1/namespaces/stress/config/{key}"))
        .header("content-type", "application/octet-stream")
        .body(value)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

fn rss_row(c: &Cluster) -> Value {
    json!({ "node1": c.peak_rss_kib(1).map(|k| k / 1024), "node2": c.peak_rss_kib(2).map(|k| k / 1024), "node3": c.peak_rss_kib(3).map(|k| k / 1024) })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin = confman_tests::node_binary(args.node_bin.clone())?;
    if !bin.exists() {
        bail!("confman-node not found at {}; run `cargo build -p confman-node` first", bin.display());
    }
    let value_size = args.value_kib * 1024;
    let max_value = (value_size as u64 * 2).max(16 << 20).to_string();
    let body_limit = (value_size as u64 * 3).max(24 << 20).to_string();
    let mut c = Cluster::start_with(&bin, 3, &["--max-value-bytes", &max_value, "--body-limit-bytes", &body_limit])
        .await
        .context("starting the cluster")?;
    let leader = c.wait_leader(&[1, 2, 3], &[1, 2, 3]).await?;
    let follower = if leader == 3 { 2 } else { 3 };
    c.create_namespace(leader, "stress").await?;
    let leader_url = c.url(leader)?;
    let initial: Vec<Value> = vec![c.cluster_info(1).await?, c.cluster_info(2).await?, c.cluster_info(3).await?];
    let http = confman_client::http_builder()
        .default_headers(confman_tests::cluster::bearer_headers(&c.keys.editor)?)
        .tcp_nodelay(true)
        .build()?;

    // Log size over time, sampled from the leader every 500 ms.
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (http, url, on) = (http.clone(), leader_url.clone(), sampling.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let mut samples = Vec::new();
            while on.load(Ordering::Relaxed) {
                if let Ok(r) = http.get(format!("{url}/api/v1/cluster")).send().await
                    && let Ok(v) = r.json::<Value>().await
                {
                    let entries = v["lastLogIndex"].as_u64().unwrap_or(0) - v["purgedIndex"].as_u64().unwrap_or(0);
                    samples.push(json!({
                        "t_s": (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
                        "log_mib_since_snapshot": (mib(v["logBytesSinceSnapshot"].as_u64().unwrap_or(0)) * 10.0).round() / 10.0,
                        "log_entries": entries,
                    }));
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            samples
        })
    };

    // Phase 1: measured writes.
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.clients {
        let (http, url, next, n) = (http.clone(), leader_url.clone(), next.clone(), args.writes);
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            let mut value = vec![0u8; value_size];
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                rand::rng().fill_bytes(&mut value);
                let t = Instant::now();
                let ok = put(&http, &url, &format!("k{i:05}"), value.clone()).await;
                out.push((i, t.elapsed(), ok));
            }
            out
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.extend(t.await?);
    }
    let write_secs = started.elapsed().as_secs_f64();
    results.sort_by_key(|r| r.0);
    let errors = results.iter().filter(|r| !r.2).count();
    let mut windows = Vec::new();
    for chunk in results.chunks(100) {
        let mut lat: Vec<Duration> = chunk.iter().filter(|r| r.2).map(|r| r.1).collect();
        let s = summarize(&mut lat);
        windows.push(json!({ "from": chunk[0].0, "p50_ms": s.p50_ms, "p99_ms": s.p99_ms }));
    }
    let rss_writes = rss_row(&c);
    let mb_written = args.writes as f64 * value_size as f64 / 1e6;

    // Phase 2: wipe a follower and restore it from a snapshot while writes continue.
    c.kill(follower)?;
    let (st, v) = c
        .call(leader, Method::POST, &format!("/api/v1/cluster/members/{follower}/rejoin"), &c.keys.admin, None)
        .await?;
    if !st.is_success() {
        bail!("rejoin: {st} {v}");
    }
    c.wipe(follower)?;
    let writing = Arc::new(AtomicBool::new(true));
    let background = {
        let (http, url, on) = (http.clone(), leader_url.clone(), writing.clone());
        tokio::spawn(async move {
            let (mut n, mut ok) = (0u64, 0u64);
            let mut value = vec![0u8; value_size];
            while on.load(Ordering::Relaxed) {
                rand::rng().fill_bytes(&mut value);
                if put(&http, &url, &format!("bg{n:05}"), value.clone()).await {
                    ok += 1;
                }
                n += 1;
            }
            (n, ok)
        })
    };
    c.snapshot(leader).await?;
    let leader_after_build = c.cluster_info(leader).await?;
    let restore_started = Instant::now();
    c.spawn(follower)?;
    c.poll("follower restored from a snapshot", Duration::from_secs(600), || async {
        Ok(c.cluster_info(follower).await.ok().and_then(|v| v["snapshots"]["installs"].as_u64()).unwrap_or(0) >= 1)
    })
    .await?;
    let restore_secs = restore_started.elapsed().as_secs_f64();
    writing.store(false, Ordering::Relaxed);
    let (bg_total, bg_ok) = background.await?;
    c.wait_converged(&[1, 2, 3], Duration::from_secs(300)).await?;
    sampling.store(false, Ordering::Relaxed);
    let log_samples = sampler.await?;
    let rss_restore = rss_row(&c);
    let finals: Vec<Value> = vec![c.cluster_info(1).await?, c.cluster_info(2).await?, c.cluster_info(3).await?];
    let leader_changes: u64 = finals
        .iter()
        .zip(&initial)
        .map(|(f, i)| f["leaderChanges"].as_u64().unwrap_or(0).saturating_sub(i["leaderChanges"].as_u64().unwrap_or(0)))
        .max()
        .unwrap_or(0);
    let term_changes = finals[0]["term"].as_u64().unwrap_or(0).saturating_sub(initial[0]["term"].as_u64().unwrap_or(0));
    let lsn = &finals[(leader - 1) as usize]["snapshots"];
    let fsn = &finals[(follower - 1) as usize]["snapshots"];
    let snap_bytes = fsn["lastInstallBytes"].as_u64().unwrap_or(0);
    let transfer_ms = fsn["lastReceiveMs"].as_u64().unwrap_or(0);
    let install_ms = fsn["lastInstallMs"].as_u64().unwrap_or(0);

    // Baseline: copy the same bytes with cp on the same disk (and sync).
    let snap_dir = c.data_dir(leader)?.join("snapshots");
    let mut snaps: Vec<PathBuf> = std::fs::read_dir(&snap_dir)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    snaps.sort();
    let sst = snaps.last().map(|d| d.join("data.sst")).context("no snapshot on the leader")?;
    let copy_to = c.data_dir(leader)?.join("cp-baseline.sst");
    let t = Instant::now();
    let status = std::process::Command::new("cp").arg(&sst).arg(&copy_to).status()?;
    let sync = std::process::Command::new("sync").arg(&copy_to).status()?;
    let cp_secs = t.elapsed().as_secs_f64();
    if !status.success() || !sync.success() {
        bail!("cp baseline failed");
    }
    let cp_bytes = std::fs::metadata(&copy_to)?.len();
    std::fs::remove_file(&copy_to)?;
    let restore_mb_s = snap_bytes as f64 / 1e6 / ((transfer_ms + install_ms).max(1) as f64 / 1000.0);
    let cp_mb_s = cp_bytes as f64 / 1e6 / cp_secs.max(1e-3);
    let dirs = json!({
        "node1_mib": mib(dir_size(&c.data_dir(1)?)).round(),
        "node2_mib": mib(dir_size(&c.data_dir(2)?)).round(),
        "node3_mib": mib(dir_size(&c.data_dir(3)?)).round(),
    });
    let first_p99 = windows.first().and_then(|w| w["p99_ms"].as_f64()).unwrap_or(0.0);
    let last_p99 = windows.last().and_then(|w| w["p99_ms"].as_f64()).unwrap_or(0.0);

    let report = json!({
        "value_kib": args.value_kib,
        "writes": args.writes,
        "clients": args.clients,
        "errors": errors,
        "throughput_writes_per_s": args.writes as f64 / write_secs,
        "throughput_mb_per_s": mb_written / write_secs,
        "windows": windows,
        "last_window_p99_over_first": ratio(last_p99, first_p99),
        "peak_rss_mib_after_writes": rss_writes,
        "peak_rss_mib_after_restore": rss_restore,
        "restored_follower": follower,
        "data_dirs": dirs,
        "log_over_time": log_samples,
        "leader_changes": leader_changes,
        "term_changes": term_changes,
        "snapshot": {
            "leader_last_build_ms": lsn["lastBuildMs"], "leader_last_build_bytes": lsn["lastBuildBytes"],
            "leader_builds": lsn["builds"], "leader_last_send_ms": lsn["lastSendMs"],
            "follower_receive_ms": transfer_ms, "follower_install_ms": install_ms, "follower_install_bytes": snap_bytes,
            "leader_snapshot_index_at_trigger": leader_after_build["snapshotIndex"],
            "restore_wall_s": restore_secs,
        },
        "background_writes_during_restore": { "attempted": bg_total, "acknowledged": bg_ok },
        "restore_mb_per_s": restore_mb_s,
        "cp_baseline": { "bytes": cp_bytes, "seconds": cp_secs, "mb_per_s": cp_mb_s },
        "restore_vs_cp_slowdown": ratio(cp_mb_s, restore_mb_s),
    });

    println!(
        "## stress-large: {} × {} KiB from {} clients (3 nodes, loopback)\n",
        args.writes, args.value_kib, args.clients
    );
    println!(
        "- throughput: {:.1} writes/s, {:.1} MB/s; errors: {errors}",
        args.writes as f64 / write_secs,
        mb_written / write_secs
    );
    println!("- latency per window of 100 writes (p50 / p99 ms):");
    for w in report["windows"].as_array().cloned().unwrap_or_default() {
        println!(
            "  - from #{}: {:.1} / {:.1}",
            w["from"],
            w["p50_ms"].as_f64().unwrap_or(0.0),
            w["p99_ms"].as_f64().unwrap_or(0.0)
        );
    }
    println!("- last-window p99 / first-window p99: {:.2}", ratio(last_p99, first_p99).unwrap_or(f64::NAN));
    println!(
        "- peak RSS MiB (VmHWM) after writes: {rss_writes}; after restore (node{follower} wiped and restored): {rss_restore}"
    );
    println!("- data dirs: {dirs}");
    println!("- leader changes: {leader_changes}; term changes: {term_changes}");
    println!("- snapshot: {}", report["snapshot"]);
    println!("- writes during restore: {bg_ok}/{bg_total} acknowledged");
    println!(
        "- restore {:.1} MB/s vs cp {:.1} MB/s ({} bytes in {:.2}s): cp is {:.2}× faster",
        restore_mb_s,
        cp_mb_s,
        cp_bytes,
        cp_secs,
        ratio(cp_mb_s, restore_mb_s).unwrap_or(f64::NAN)
    );
    println!("- log over time (leader): {}", report["log_over_time"]);
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(())
}
