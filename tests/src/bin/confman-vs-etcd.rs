#![allow(clippy::print_stdout)] // a command-line tool: its output is the report
//! `confman-vs-etcd`: the same workloads against a 3-node Confman cluster (HTTP API) and a
//! 3-node etcd 3.4 cluster (gRPC via `etcd-client`) on this machine in one run, plus the
//! physical floors (fdatasync, sequential write, loopback TCP). Writes a Markdown and a JSON
//! report with the Confman/etcd ratio per workload.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use confman_tests::cluster::{Cluster, peak_rss_kib, reset_peak_rss};
use confman_tests::etcd::EtcdCluster;
use confman_tests::floors;
use confman_tests::stats::{ratio, summarize};
use rand::RngCore;
use serde_json::{Value, json};

#[derive(Debug, Parser)]
#[command(about = "Confman beside etcd: same workloads, same machine, one run")]
struct Args {
    /// confman-node binary (default: next to this binary).
    #[arg(long)]
    node_bin: Option<PathBuf>,
    /// etcd binary.
    #[arg(long, default_value = "/usr/bin/etcd")]
    etcd_bin: PathBuf,
    /// Seconds per timed workload.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Keys preloaded for the read workloads.
    #[arg(long, default_value_t = 1000)]
    read_keys: usize,
    /// Writes in the sustained 1 MiB run.
    #[arg(long, default_value_t = 500)]
    sustained_writes: u64,
    /// Run only workloads whose name contains one of these comma-separated texts.
    #[arg(long)]
    only: Option<String>,
    /// Skip etcd (quick Confman-only runs).
    #[arg(long)]
    skip_etcd: bool,
    /// Output folder for the Markdown and JSON reports.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
}

/// A system under test, through its native client path.
#[derive(Clone)]
enum Sut {
    Confman { http: reqwest::Client, leader: String, all: Vec<String> },
    Etcd { client: Box<etcd_client::Client> },
}

impl Sut {
    fn name(&self) -> &'static str {
        match self {
            Sut::Confman { .. } => "confman",
            Sut::Etcd { .. } => "etcd",
        }
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> bool {
        match self {
            Sut::Confman { http, leader, .. } => http
                .put(format!("{leader}/api/v1/namespaces/bench/config/{key}"))
                .header("content-type", "application/octet-stream")
                .body(value)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success()),
            Sut::Etcd { client } => client.kv_client().put(key, value, None).await.is_ok(),
        }
    }

    async fn get(&self, key: &str, linearizable: bool, spread: usize) -> bool {
        match self {
            Sut::Confman { http, all, .. } => {
                let url = &all[spread % all.len()];
                let q = if linearizable { "" } else { "?consistency=stale" };
                http.get(format!("{url}/api/v1/namespaces/bench/config/{key}{q}"))
                    .header("accept", "application/octet-stream")
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
            Sut::Etcd { client } => {
                let opts = if linearizable { None } else { Some(etcd_client::GetOptions::new().with_serializable()) };
                client.kv_client().get(key, opts).await.is_ok_and(|r| !r.kvs().is_empty())
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Write(usize),
    Read { linearizable: bool },
    Mixed(usize),
}

#[derive(Debug, Clone, Copy)]
struct Workload {
    name: &'static str,
    kind: Kind,
    clients: usize,
    /// `None`: timed; `Some(n)`: exactly n operations with latency windows of 100.
    count: Option<u64>,
}

fn random(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::rng().fill_bytes(&mut v);
    v
}

async fn run(sut: &Sut, w: Workload, secs: u64, keys: usize, pids: &[u32]) -> Value {
    for p in pids {
        reset_peak_rss(*p);
    }
    let deadline = Instant::now() + Duration::from_secs(secs);
    let seq = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..w.clients {
        let (sut, seq) = (sut.clone(), seq.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            let mut bytes = 0u64;
            loop {
                let i = seq.fetch_add(1, Ordering::Relaxed);
                match w.count {
                    Some(n) if i >= n => break,
                    None if Instant::now() >= deadline => break,
                    _ => {}
                }
                let t = Instant::now();
                let (ok, b) = match w.kind {
                    Kind::Write(size) => {
                        (sut.put(&format!("{}-{c}-{i}", w.name.replace(' ', "-")), random(size)).await, size)
                    }
                    Kind::Read { linearizable } => (
                        sut.get(&format!("r-{}", (i as usize * 7919) % keys), linearizable, c + i as usize).await,
                        1024,
                    ),
                    Kind::Mixed(size) => {
                        if i % 10 == 0 {
                            (sut.put(&format!("r-{}", (i as usize * 7919) % keys), random(size)).await, size)
                        } else {
                            (sut.get(&format!("r-{}", (i as usize * 31) % keys), true, c + i as usize).await, size)
                        }
                    }
                };
                if ok {
                    bytes += b as u64;
                }
                out.push((i, t.elapsed(), ok));
            }
            (out, bytes)
        }));
    }
    let mut all = Vec::new();
    let mut bytes = 0;
    for t in tasks {
        if let Ok((o, b)) = t.await {
            all.extend(o);
            bytes += b;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_by_key(|r| r.0);
    let errors = all.iter().filter(|r| !r.2).count();
    let mut lat: Vec<Duration> = all.iter().filter(|r| r.2).map(|r| r.1).collect();
    let ops = lat.len();
    let s = summarize(&mut lat);
    let windows: Vec<Value> = if w.count.is_some() {
        all.chunks(100)
            .map(|ch| {
                let mut l: Vec<Duration> = ch.iter().filter(|r| r.2).map(|r| r.1).collect();
                let s = summarize(&mut l);
                json!({ "from": ch[0].0, "p50_ms": s.p50_ms, "p99_ms": s.p99_ms })
            })
            .collect()
    } else {
        Vec::new()
    };
    let rss: Vec<Option<u64>> = pids.iter().map(|p| peak_rss_kib(*p).map(|k| k / 1024)).collect();
    json!({
        "system": sut.name(), "workload": w.name, "clients": w.clients,
        "ops": ops, "errors": errors, "ops_per_s": ops as f64 / elapsed,
        "mb_per_s": bytes as f64 / 1e6 / elapsed, "p50_ms": s.p50_ms, "p99_ms": s.p99_ms,
        "peak_rss_mib": rss, "windows": windows,
    })
}

async fn preload(sut: &Sut, keys: usize) -> anyhow::Result<()> {
    for k in 0..keys {
        if !sut.put(&format!("r-{k}"), random(1024)).await {
            bail!("{} preload failed at key {k}", sut.name());
        }
    }
    Ok(())
}

fn machine_info() -> Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|s| s.trim_start_matches([' ', '\t', ':']).to_string());
    let mem = read("/proc/meminfo").lines().next().map(str::to_string);
    let cmd = |c: &str, a: &[&str]| {
        std::process::Command::new(c)
            .args(a)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").to_string())
    };
    json!({
        "cpu": cpu, "cores": std::thread::available_parallelism().map(|n| n.get()).ok(), "memory": mem,
        "kernel": cmd("uname", &["-r"]), "etcd": cmd("/usr/bin/etcd", &["--version"]),
        "confman": env!("CARGO_PKG_VERSION"), "git": cmd("git", &["rev-parse", "--short", "HEAD"]),
    })
}

fn workloads(sustained: u64) -> Vec<Workload> {
    let t = |name, kind, clients| Workload { name, kind, clients, count: None };
    vec![
        t("write 1KiB", Kind::Write(1024), 1),
        t("write 1KiB", Kind::Write(1024), 16),
        t("write 1KiB", Kind::Write(1024), 64),
        t("read linearizable", Kind::Read { linearizable: true }, 64),
        t("read stale/serializable", Kind::Read { linearizable: false }, 64),
        t("write 100KiB", Kind::Write(100 * 1024), 1),
        t("write 100KiB", Kind::Write(100 * 1024), 8),
        t("write 1MiB", Kind::Write(1 << 20), 1),
        t("write 1MiB", Kind::Write(1 << 20), 8),
        Workload { name: "sustained 1MiB", kind: Kind::Write(1 << 20), clients: 8, count: Some(sustained) },
        t("mixed 90/10 1KiB", Kind::Mixed(1024), 64),
    ]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let node_bin = confman_tests::node_binary(args.node_bin.clone())?;
    if !node_bin.exists() {
        bail!("confman-node not found at {}; run `cargo build -p confman-node` first", node_bin.display());
    }
    if !args.etcd_bin.exists() {
        bail!(
            "etcd not found at {}; install Debian's etcd-server (scripts/bench-compare does)",
            args.etcd_bin.display()
        );
    }
    let work = tempfile::tempdir()?;
    println!("measuring physical floors…");
    let floors = floors::measure(work.path()).await?;
    let mut rows = Vec::new();
    let wl: Vec<Workload> = workloads(args.sustained_writes)
        .into_iter()
        .filter(|w| args.only.as_ref().is_none_or(|o| o.split(',').any(|part| w.name.contains(part))))
        .collect();

    {
        println!("confman: starting 3 nodes…");
        let c = Cluster::start_with(&node_bin, 3, &[]).await.context("confman cluster")?;
        let leader = c.wait_leader(&[1, 2, 3], &[1, 2, 3]).await?;
        c.create_namespace(leader, "bench").await?;
        let http = confman_client::http_builder()
            .default_headers(confman_tests::cluster::bearer_headers(&c.keys.editor)?)
            .tcp_nodelay(true)
            .pool_max_idle_per_host(128)
            .build()?;
        let mut all = vec![c.url(leader)?];
        all.extend([1, 2, 3].into_iter().filter(|i| *i != leader).filter_map(|i| c.url(i).ok()));
        let sut = Sut::Confman { http, leader: c.url(leader)?, all };
        preload(&sut, args.read_keys).await?;
        for w in &wl {
            println!("confman: {} × {}", w.name, w.clients);
            rows.push(run(&sut, *w, args.seconds, args.read_keys, &c.pids()).await);
        }
        let (_, info) = c.call(leader, reqwest::Method::GET, "/api/v1/cluster", &c.keys.admin, None).await?;
        println!("confman leader changes seen: {}", info["leaderChanges"]);
    }
    if !args.skip_etcd {
        println!("etcd: starting 3 members…");
        let e = EtcdCluster::start(&args.etcd_bin, work.path()).await.context("etcd cluster")?;
        let opts = etcd_client::ConnectOptions::new().with_timeout(Duration::from_secs(30));
        let client = etcd_client::Client::connect(e.endpoints.clone(), Some(opts)).await?;
        let sut = Sut::Etcd { client: Box::new(client) };
        preload(&sut, args.read_keys).await?;
        for w in &wl {
            println!("etcd: {} × {}", w.name, w.clients);
            rows.push(run(&sut, *w, args.seconds, args.read_keys, &e.pids()).await);
        }
    }
    report(&args.out, &rows, &floors, &machine_info())
}

fn report(out: &Path, rows: &[Value], floors: &floors::Floors, machine: &Value) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    let mut md = String::new();
    md.push_str("# Confman vs etcd (same machine, same run)\n\n");
    md.push_str(&format!("Machine: `{machine}`\n\n"));
    md.push_str(&format!(
        "Floors: fdatasync 4 KiB p50 {:.2} ms (p99 {:.2}); write 1 MiB + fdatasync p50 {:.2} ms (p99 {:.2}); sequential write + fsync {:.0} MB/s; loopback TCP {:.0} MB/s\n\n",
        floors.fdatasync_4k.p50_ms, floors.fdatasync_4k.p99_ms, floors.write_1mib_fdatasync.p50_ms,
        floors.write_1mib_fdatasync.p99_ms, floors.seq_write_fsync_mb_s, floors.loopback_tcp_mb_s
    ));
    md.push_str("| workload | clients | system | ops/s | MB/s | p50 ms | p99 ms | errors | peak RSS MiB (per node) | confman/etcd ops/s |\n");
    md.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
    let mut ratios = Vec::new();
    for r in rows.iter().filter(|r| r["system"] == "confman") {
        let other = rows
            .iter()
            .find(|o| o["system"] == "etcd" && o["workload"] == r["workload"] && o["clients"] == r["clients"]);
        let rt =
            other.and_then(|o| ratio(r["ops_per_s"].as_f64().unwrap_or(0.0), o["ops_per_s"].as_f64().unwrap_or(0.0)));
        ratios.push(json!({ "workload": r["workload"], "clients": r["clients"], "confman_over_etcd_ops": rt }));
        for (row, ratio_cell) in
            [(Some(r), rt.map(|x| format!("**{x:.2}×**")).unwrap_or_default()), (other, String::new())]
        {
            if let Some(x) = row {
                md.push_str(&format!(
                    "| {} | {} | {} | {:.0} | {:.1} | {:.2} | {:.2} | {} | {} | {} |\n",
                    x["workload"].as_str().unwrap_or(""),
                    x["clients"],
                    x["system"].as_str().unwrap_or(""),
                    x["ops_per_s"].as_f64().unwrap_or(0.0),
                    x["mb_per_s"].as_f64().unwrap_or(0.0),
                    x["p50_ms"].as_f64().unwrap_or(0.0),
                    x["p99_ms"].as_f64().unwrap_or(0.0),
                    x["errors"],
                    x["peak_rss_mib"],
                    ratio_cell
                ));
            }
        }
    }
    let seq1 = rows.iter().find(|r| r["system"] == "confman" && r["workload"] == "write 1MiB" && r["clients"] == 1);
    if let Some(s) = seq1 {
        let p50 = s["p50_ms"].as_f64().unwrap_or(0.0);
        md.push_str(&format!(
            "\nConfman 1 MiB sequential write p50 {p50:.2} ms = {:.2}× the write-1MiB+fdatasync floor ({:.2} ms).\n",
            ratio(p50, floors.write_1mib_fdatasync.p50_ms).unwrap_or(f64::NAN),
            floors.write_1mib_fdatasync.p50_ms
        ));
    }
    md.push_str("\nSustained 1 MiB run, latency per window of 100 writes (p50/p99 ms):\n\n");
    for r in rows.iter().filter(|r| r["workload"] == "sustained 1MiB") {
        let w: Vec<String> = r["windows"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|w| format!("{:.0}/{:.0}", w["p50_ms"].as_f64().unwrap_or(0.0), w["p99_ms"].as_f64().unwrap_or(0.0)))
            .collect();
        md.push_str(&format!("- {}: {}\n", r["system"].as_str().unwrap_or(""), w.join(", ")));
    }
    let json = json!({ "machine": machine, "floors": floors, "rows": rows, "ratios": ratios });
    std::fs::write(out.join("confman-vs-etcd.md"), &md)?;
    std::fs::write(out.join("confman-vs-etcd.json"), serde_json::to_vec_pretty(&json)?)?;
    print!("{md}");
    Ok(())
}
