//! Physical floors measured in the same run as the benchmarks: fdatasync latency of the data
//! disk, the cost of writing 1 MiB and syncing it, sequential write bandwidth with fsync, and
//! loopback TCP throughput. Blocking file work runs on a blocking thread.

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::stats::{Summary, summarize};

/// The floors, with what each measures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Floors {
    /// Overwrite 4 KiB + fdatasync, 200 times.
    pub fdatasync_4k: SummaryMs,
    /// Append 1 MiB + fdatasync, 100 times: the floor of a sequential 1 MiB durable write.
    pub write_1mib_fdatasync: SummaryMs,
    /// 256 MiB written in 1 MiB chunks then fsynced, MB/s.
    pub seq_write_fsync_mb_s: f64,
    /// 1 GiB over a loopback TCP connection, MB/s.
    pub loopback_tcp_mb_s: f64,
}

/// Serializable latency summary.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct SummaryMs {
    /// Median, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
}

impl From<Summary> for SummaryMs {
    fn from(s: Summary) -> Self {
        Self { p50_ms: s.p50_ms, p99_ms: s.p99_ms }
    }
}

fn disk_floors(dir: &Path) -> std::io::Result<(SummaryMs, SummaryMs, f64)> {
    let path = dir.join("floor.bin");
    let mut f = OpenOptions::new().create(true).truncate(true).read(true).write(true).open(&path)?;
    let small = vec![7u8; 4096];
    let mut lat = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        f.seek(SeekFrom::Start(0))?;
        f.write_all(&small)?;
        f.sync_data()?;
        lat.push(t.elapsed());
    }
    let fsync_4k = summarize(&mut lat).into();
    let big = vec![9u8; 1 << 20];
    let mut lat = Vec::new();
    for _ in 0..100 {
        let t = Instant::now();
        f.write_all(&big)?;
        f.sync_data()?;
        lat.push(t.elapsed());
    }
    let write_1m = summarize(&mut lat).into();
    drop(f);
    let mut f = OpenOptions::new().create(true).truncate(true).write(true).open(&path)?;
    let t = Instant::now();
    for _ in 0..256 {
        f.write_all(&big)?;
    }
    f.sync_all()?;
    let seq = 256.0 * (1 << 20) as f64 / 1e6 / t.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&path)?;
    Ok((fsync_4k, write_1m, seq))
}

async fn loopback_tcp() -> std::io::Result<f64> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let total: u64 = 1 << 30;
    let reader = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await?;
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0u64;
        while got < total {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            got += n as u64;
        }
        Ok::<u64, std::io::Error>(got)
    });
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let chunk = vec![1u8; 1 << 20];
    let t = Instant::now();
    for _ in 0..(total >> 20) {
        s.write_all(&chunk).await?;
    }
    s.shutdown().await?;
    let got = reader.await.map_err(std::io::Error::other)??;
    Ok(got as f64 / 1e6 / t.elapsed().as_secs_f64().max(1e-9))
}

/// Measures every floor, disk ones in `dir` (the data disk).
pub async fn measure(dir: &Path) -> std::io::Result<Floors> {
    let d = dir.to_path_buf();
    let (fsync_4k, write_1m, seq) =
        tokio::task::spawn_blocking(move || disk_floors(&d)).await.map_err(std::io::Error::other)??;
    let tcp = loopback_tcp().await?;
    Ok(Floors {
        fdatasync_4k: fsync_4k,
        write_1mib_fdatasync: write_1m,
        seq_write_fsync_mb_s: seq,
        loopback_tcp_mb_s: tcp,
    })
}
