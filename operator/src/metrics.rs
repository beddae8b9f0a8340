//! Operator metrics in the Prometheus text format, served on `/metrics`, and the health state
//! behind `/readyz` and `/livez`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

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

/// Consecutive failed API calls (no answer, or 5xx/429) after which the replica is not Ready: one
/// failure is routine (a watch timing out during an API server rollout), three in a row with no
/// success between them is an API server this replica cannot use.
pub const API_FAILURES_NOT_READY: u64 = 3;

/// A reconcile running longer than this means the controller loop is stuck (every API call
/// it makes times out well before), and the kubelet should restart the pod.
pub const STUCK_RECONCILE: Duration = Duration::from_secs(600);

/// What this replica is doing, as far as its probes are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Reading the API server's version (before anything is watched).
    Starting,
    /// Waiting for the leader Lease: serves nothing but metrics, so Ready as soon as the API
    /// answers (as controller-runtime's standby managers are), which lets a rolling update go
    /// on while the old replica still holds the Lease.
    Standby,
    /// Running the controller: Ready once its watches have their initial lists.
    Leading,
    /// The controller loop has ended while the process lives on: not Ready, not live.
    Stopped,
}

#[derive(Debug)]
struct HealthState {
    role: Role,
    /// Resources (plural names) the controller must have listed before it is Ready.
    required: BTreeSet<String>,
    /// Resources whose list call has been answered with success.
    listed: BTreeSet<String>,
    failures_in_row: u64,
    last_error: Option<String>,
    next_reconcile: u64,
    /// Reconciles in flight and when they started.
    in_flight: BTreeMap<u64, Instant>,
}

/// The health of the process, fed by the API client's middleware (every call's outcome) and by
/// the controller (role, reconciles in flight); read by `/readyz` and `/livez`.
#[derive(Debug)]
pub struct Health {
    state: Mutex<HealthState>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            state: Mutex::new(HealthState {
                role: Role::Starting,
                required: BTreeSet::new(),
                listed: BTreeSet::new(),
                failures_in_row: 0,
                last_error: None,
                next_reconcile: 0,
                in_flight: BTreeMap::new(),
            }),
        }
    }
}

/// Marks one reconcile in flight until dropped (also when the reconcile future is cancelled).
#[derive(Debug)]
pub struct ReconcileGuard<'a> {
    health: &'a Health,
    id: u64,
}

impl Drop for ReconcileGuard<'_> {
    fn drop(&mut self) {
        self.health.lock().in_flight.remove(&self.id);
    }
}

impl Health {
    fn lock(&self) -> std::sync::MutexGuard<'_, HealthState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the replica's role.
    pub fn set_role(&self, role: Role) {
        self.lock().role = role;
    }

    /// The resources (plural names) whose initial list readiness waits for.
    pub fn require_lists<I: IntoIterator<Item = S>, S: Into<String>>(&self, plurals: I) {
        self.lock().required = plurals.into_iter().map(Into::into).collect();
    }

    /// Records an API call that got an answer the API server means (anything but 5xx/429);
    /// `listed` names the resource when the call was a successful list.
    pub fn api_answered(&self, listed: Option<&str>) {
        let mut s = self.lock();
        s.failures_in_row = 0;
        if let Some(plural) = listed {
            s.listed.insert(plural.to_string());
        }
    }

    /// Records an API call that got no usable answer.
    pub fn api_failed(&self, error: String) {
        let mut s = self.lock();
        s.failures_in_row += 1;
        s.last_error = Some(error);
    }

    /// Marks a reconcile in flight for as long as the guard lives.
    pub fn reconcile_started(&self) -> ReconcileGuard<'_> {
        let mut s = self.lock();
        let id = s.next_reconcile;
        s.next_reconcile += 1;
        s.in_flight.insert(id, Instant::now());
        ReconcileGuard { health: self, id }
    }

    /// Ok with what is ready, or Err with why this replica must not be Ready.
    pub fn readiness(&self) -> Result<String, String> {
        let s = self.lock();
        if s.failures_in_row >= API_FAILURES_NOT_READY {
            return Err(format!(
                "the last {} Kubernetes API calls failed: {}",
                s.failures_in_row,
                s.last_error.as_deref().unwrap_or("unknown error")
            ));
        }
        match s.role {
            Role::Starting => Err("reading the Kubernetes API server's version".into()),
            Role::Standby => Ok("standby: waiting for the leader lease".into()),
            Role::Stopped => Err("the controller has stopped".into()),
            Role::Leading => {
                let missing: Vec<&str> = s.required.difference(&s.listed).map(String::as_str).collect();
                if missing.is_empty() {
                    Ok("watches synced".into())
                } else {
                    Err(format!("waiting for the initial list of {}", missing.join(", ")))
                }
            }
        }
    }

    /// Ok, or Err with why the process should be restarted.
    pub fn liveness(&self) -> Result<String, String> {
        self.liveness_at(Instant::now())
    }

    fn liveness_at(&self, now: Instant) -> Result<String, String> {
        let s = self.lock();
        if s.role == Role::Stopped {
            return Err("the controller loop has ended".into());
        }
        match s.in_flight.values().min() {
            Some(started) if now.saturating_duration_since(*started) > STUCK_RECONCILE => Err(format!(
                "a reconcile has been running for {}s (stuck controller loop)",
                now.saturating_duration_since(*started).as_secs()
            )),
            _ => Ok("alive".into()),
        }
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

    #[test]
    fn ready_only_after_the_initial_lists_and_not_while_the_api_fails() {
        let h = Health::default();
        assert!(h.readiness().is_err(), "not ready while starting");
        h.set_role(Role::Standby);
        assert!(h.readiness().is_ok(), "a standby is ready");
        h.require_lists(["confmanclusters", "pods"]);
        h.set_role(Role::Leading);
        h.api_answered(Some("pods"));
        let why = h.readiness().err().unwrap_or_default();
        assert!(why.contains("confmanclusters") && !why.contains("pods"), "{why}");
        h.api_answered(Some("confmanclusters"));
        assert!(h.readiness().is_ok());
        for _ in 0..API_FAILURES_NOT_READY {
            h.api_failed("client error (Connect)".into());
        }
        let why = h.readiness().err().unwrap_or_default();
        assert!(why.contains("client error (Connect)"), "{why}");
        h.api_answered(None);
        assert!(h.readiness().is_ok(), "one answer makes it ready again");
    }

    #[test]
    fn liveness_fails_when_the_loop_stops_or_a_reconcile_is_stuck() {
        let h = Health::default();
        h.set_role(Role::Leading);
        let guard = h.reconcile_started();
        assert!(h.liveness().is_ok());
        let later = Instant::now() + STUCK_RECONCILE + Duration::from_secs(1);
        assert!(h.liveness_at(later).is_err(), "a reconcile running past the limit is stuck");
        drop(guard);
        assert!(h.liveness_at(later).is_ok(), "a finished (or cancelled) reconcile no longer counts");
        h.set_role(Role::Stopped);
        assert!(h.liveness().is_err());
    }
}
