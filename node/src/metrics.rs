//! Prometheus metrics in the text exposition format: HTTP request counts and latency
//! histograms by route class, plus Raft gauges read from the node's status at scrape time.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::raft::ClusterStatus;

/// Latency bucket upper bounds, seconds.
const BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// The metric label of an HTTP method: the standard methods by name, anything else "other".
pub fn method_label(m: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *m {
        Method::GET => "GET",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// Request metrics of the HTTP API.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    watch_reads: Arc<AtomicU64>,
}

impl Metrics {
    /// The counter of storage reads made by watches (shared with every watch stream).
    pub fn watch_reads(&self) -> Arc<AtomicU64> {
        self.watch_reads.clone()
    }

    /// Records one finished request.
    pub fn observe(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((route.to_string(), method.to_string(), status)).or_default() += 1;
        }
        if let Ok(mut l) = self.latency.lock() {
            let h = l.entry(route.to_string()).or_default();
            let secs = elapsed.as_secs_f64();
            for (i, b) in BUCKETS.iter().enumerate() {
                if secs <= *b {
                    h.counts[i] += 1;
                }
            }
            h.count += 1;
            h.sum += secs;
        }
    }

    /// Renders every metric, with Raft gauges from `status` and the write budget's figures.
    pub fn render(
        &self,
        status: &ClusterStatus,
        write_budget: &crate::api::write_budget::WriteBudget,
        disk: &crate::disk_space::DiskSpace,
    ) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# HELP confman_http_requests_total HTTP requests by route, method and status.");
        let _ = writeln!(out, "# TYPE confman_http_requests_total counter");
        if let Ok(m) = self.requests.lock() {
            for ((route, method, status), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "confman_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {n}"
                );
            }
        }
        let _ = writeln!(out, "# HELP confman_http_request_duration_seconds HTTP request latency by route.");
        let _ = writeln!(out, "# TYPE confman_http_request_duration_seconds histogram");
        if let Ok(l) = self.latency.lock() {
            for (route, h) in l.iter() {
                for (i, b) in BUCKETS.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "confman_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{b}\"}} {}",
                        h.counts[i]
                    );
                }
                let _ = writeln!(
                    out,
                    "confman_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                    h.count
                );
                let _ = writeln!(out, "confman_http_request_duration_seconds_sum{{route=\"{route}\"}} {}", h.sum);
                let _ = writeln!(out, "confman_http_request_duration_seconds_count{{route=\"{route}\"}} {}", h.count);
            }
        }
        let gauge = |out: &mut String, name: &str, help: &str, v: Option<u64>| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} gauge");
            let _ = writeln!(out, "{name} {}", v.map_or(-1, |v| v as i64));
        };
        gauge(&mut out, "confman_raft_term", "Current Raft term.", Some(status.term));
        gauge(
            &mut out,
            "confman_raft_is_leader",
            "1 when this node is the leader.",
            Some(u64::from(status.role == "leader")),
        );
        gauge(&mut out, "confman_raft_leader_id", "Current leader id (-1 when unknown).", status.leader_id);
        gauge(&mut out, "confman_raft_last_log_index", "Last log index.", status.last_log_index);
        gauge(&mut out, "confman_raft_commit_index", "Committed index.", status.commit_index);
        gauge(&mut out, "confman_raft_applied_index", "Applied index.", status.applied_index);
        gauge(&mut out, "confman_raft_snapshot_index", "Index of the last snapshot.", status.snapshot_index);
        gauge(&mut out, "confman_raft_purged_index", "Highest purged log index.", status.purged_index);
        gauge(
            &mut out,
            "confman_raft_log_entries",
            "Log entries held (last index minus purged index).",
            status.last_log_index.map(|l| l - status.purged_index.unwrap_or(0)),
        );
        gauge(
            &mut out,
            "confman_raft_log_bytes_since_snapshot",
            "Log bytes appended since the last snapshot.",
            Some(status.log_bytes_since_snapshot),
        );
        gauge(
            &mut out,
            "confman_raft_members",
            "Members in the effective membership.",
            Some(status.members.len() as u64),
        );
        gauge(
            &mut out,
            "confman_write_budget_bytes",
            "Bytes of client write bodies this node holds at once (write-budget-bytes).",
            Some(write_budget.capacity()),
        );
        gauge(
            &mut out,
            "confman_write_budget_in_use_bytes",
            "Bytes of the write budget reserved by writes being read or proposed now.",
            Some(write_budget.in_use()),
        );
        // Read now (a statvfs), not as of the last write or background read.
        let low = disk.check();
        gauge(
            &mut out,
            "confman_disk_free_bytes",
            "Free bytes on the data directory's filesystem at the last read.",
            Some(disk.free()),
        );
        gauge(
            &mut out,
            "confman_disk_reserve_bytes",
            "Free space the node keeps (disk-reserve-bytes); below it writes are refused.",
            Some(disk.reserve()),
        );
        gauge(
            &mut out,
            "confman_disk_low",
            "1 while the data directory is below its reserve (writes refused, no new log entries).",
            Some(u64::from(low)),
        );
        let _ = writeln!(out, "# HELP confman_watch_storage_reads_total Storage reads made by watch streams.");
        let _ = writeln!(out, "# TYPE confman_watch_storage_reads_total counter");
        let _ = writeln!(out, "confman_watch_storage_reads_total {}", self.watch_reads.load(Ordering::Relaxed));
        out
    }
}
