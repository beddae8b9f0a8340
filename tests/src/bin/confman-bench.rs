#![allow(clippy::print_stdout)] // a command-line tool: its output is the report
//! `confman-bench`: starts a 3-node Confman cluster on loopback (real processes, node default
//! timing) and measures 1 KiB writes at 1, 16 and 64 clients and linearizable and stale reads
//! at 64 clients. Prints ops/s, p50/p99 and errors per workload as a Markdown table.
//!
//! Build the node first: `cargo build -p confman-node && cargo run -p confman-tests --bin confman-bench`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use confman_tests::cluster::Cluster;
use confman_tests::stats::{Summary, summarize};
use rand::RngCore;

#[derive(Debug, Parser)]
#[command(about = "Benchmark a 3-node Confman cluster on loopback")]
struct Args {
    /// Path of the confman-node binary (default: next to this binary).
    #[arg(long)]
    node_bin: Option<PathBuf>,
    /// Seconds per workload.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Keys preloaded for the read workloads.
    #[arg(long, default_value_t = 1000)]
    read_keys: usize,
    /// Write the results as JSON to this file too.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, serde::Serialize)]
struct Row {
    workload: String,
    clients: usize,
    ops: usize,
    errors: usize,
    ops_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

#[derive(Clone, Copy)]
enum Op {
    Write,
    Read { stale: bool },
}

async fn run(urls: &[String], http: &reqwest::Client, op: Op, clients: usize, secs: u64, keys: usize) -> Row {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let urls = urls.to_vec();
        let http = http.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0usize;
            let mut value = vec![0u8; 1024];
            let mut i = 0usize;
            while Instant::now() < deadline {
                i += 1;
                let t = Instant::now();
                let ok = match op {
                    Op::Write => {
                        rand::rng().fill_bytes(&mut value);
                        http.put(format!("{}/api/v1/namespaces/bench/config/w-{c}-{i}", urls[0]))
                            .header("content-type", "application/octet-stream")
                            .body(value.clone())
                            .send()
                            .await
                            .is_ok_and(|r| r.status().is_success())
                    }
                    Op::Read { stale } => {
                        let url = &urls[(c + i) % urls.len()];
                        let q = if stale { "?consistency=stale" } else { "" };
                        http.get(format!("{url}/api/v1/namespaces/bench/config/r-{}{q}", (c * 7919 + i) % keys))
                            .header("accept", "application/octet-stream")
                            .send()
                            .await
                            .is_ok_and(|r| r.status().is_success())
                    }
                };
                if ok {
                    lat.push(t.elapsed());
                } else {
                    errors += 1;
                }
            }
            (lat, errors)
        }));
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((l, e)) = t.await {
            lat.extend(l);
            errors += e;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let s: Summary = summarize(&mut lat);
    let name = match op {
        Op::Write => "write 1 KiB",
        Op::Read { stale: false } => "read linearizable",
        Op::Read { stale: true } => "read stale",
    };
    Row {
        workload: name.into(),
        clients,
        ops: s.count,
        errors,
        ops_per_sec: s.count as f64 / elapsed,
        p50_ms: s.p50_ms,
        p99_ms: s.p99_ms,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin = confman_tests::node_binary(args.node_bin.clone())?;
    if !bin.exists() {
        bail!(
            "confman-node not found at {}; run `cargo build -p confman-node` first or pass --node-bin",
            bin.display()
        );
    }
    let cluster = Cluster::start_with(&bin, 3, &[]).await.context("starting the cluster")?;
    let leader = cluster.wait_leader(&[1, 2, 3], &[1, 2, 3]).await?;
    cluster.create_namespace(leader, "bench").await?;
    let mut urls = vec![cluster.url(leader)?];
    for id in [1, 2, 3] {
        if id != leader {
            urls.push(cluster.url(id)?);
        }
    }
    let http = confman_client::http_builder()
        .default_headers(confman_tests::cluster::bearer_headers(&cluster.keys.editor)?)
        .tcp_nodelay(true)
        .pool_max_idle_per_host(128)
        .build()?;
    // Preload the read key space.
    let preload = Arc::new(urls[0].clone());
    let mut value = vec![0u8; 1024];
    for k in 0..args.read_keys {
        rand::rng().fill_bytes(&mut value);
        let r = http
            .put(format!("{preload}/api/v1/namespaces/bench/config/r-{k}"))
            .header("content-type", "application/octet-stream")
            .body(value.clone())
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("preload failed: {}", r.status());
        }
    }
    let mut rows = Vec::new();
    for clients in [1, 16, 64] {
        rows.push(run(&urls, &http, Op::Write, clients, args.seconds, args.read_keys).await);
    }
    rows.push(run(&urls, &http, Op::Read { stale: false }, 64, args.seconds, args.read_keys).await);
    rows.push(run(&urls, &http, Op::Read { stale: true }, 64, args.seconds, args.read_keys).await);

    let mut out = String::new();
    out.push_str("| workload | clients | ops | errors | ops/s | p50 ms | p99 ms |\n|---|---|---|---|---|---|---|\n");
    for r in &rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {:.0} | {:.2} | {:.2} |\n",
            r.workload, r.clients, r.ops, r.errors, r.ops_per_sec, r.p50_ms, r.p99_ms
        ));
    }
    print!("{out}");
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_vec_pretty(&rows)?)?;
    }
    Ok(())
}
