//! Operator metrics in the Prometheus text format, served on `/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Counters of the reconcile loop.
#[derive(Debug, Default)]
pub struct Metrics {
    reconciles: AtomicU64,
    failures: AtomicU64,
    invalid_specs: AtomicU64,
    duration_us_total: AtomicU64,
    last_duration_us: AtomicU64,
    leader: AtomicBool,
}

impl Metrics {
    /// Records one reconcile.
    pub fn observe_reconcile(&self, took: Duration, ok: bool) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.reconciles.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        self.duration_us_total.fetch_add(us, Ordering::Relaxed);
        self.last_duration_us.store(us, Ordering::Relaxed);
    }

    /// Records a refused spec.
    pub fn invalid_spec(&self) {
        self.invalid_specs.fetch_add(1, Ordering::Relaxed);
    }

    /// Records whether this replica holds the leader lease.
    pub fn set_leader(&self, leader: bool) {
        self.leader.store(leader, Ordering::Relaxed);
    }

    /// Whether this replica holds the leader lease.
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }

    /// The Prometheus exposition.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let secs = |us: u64| us as f64 / 1e6;
        let rows: [(&str, &str, &str, String); 6] = [
            (
                "confman_operator_reconciles_total",
                "counter",
                "Reconciles run.",
                self.reconciles.load(Ordering::Relaxed).to_string(),
            ),
            (
                "confman_operator_reconcile_failures_total",
                "counter",
                "Reconciles that failed.",
                self.failures.load(Ordering::Relaxed).to_string(),
            ),
            (
                "confman_operator_invalid_specs_total",
                "counter",
                "Reconciles that refused a spec.",
                self.invalid_specs.load(Ordering::Relaxed).to_string(),
            ),
            (
                "confman_operator_reconcile_seconds_total",
                "counter",
                "Time spent reconciling.",
                secs(self.duration_us_total.load(Ordering::Relaxed)).to_string(),
            ),
            (
                "confman_operator_last_reconcile_seconds",
                "gauge",
                "Duration of the last reconcile.",
                secs(self.last_duration_us.load(Ordering::Relaxed)).to_string(),
            ),
            (
                "confman_operator_leader",
                "gauge",
                "1 when this replica holds the leader lease.",
                u8::from(self.is_leader()).to_string(),
            ),
        ];
        for (name, kind, help, value) in rows {
            let _ = write!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_show_up_in_the_exposition() {
        let m = Metrics::default();
        m.observe_reconcile(Duration::from_millis(20), true);
        m.observe_reconcile(Duration::from_millis(30), false);
        m.set_leader(true);
        let text = m.render();
        assert!(text.contains("confman_operator_reconciles_total 2\n"), "{text}");
        assert!(text.contains("confman_operator_reconcile_failures_total 1\n"), "{text}");
        assert!(text.contains("confman_operator_last_reconcile_seconds 0.03\n"), "{text}");
        assert!(text.contains("confman_operator_leader 1\n"), "{text}");
    }
}
