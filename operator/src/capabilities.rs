//! What the Kubernetes API server can take, discovered once at start-up. The operator is
//! installed on servers as old as 1.20, where things the builders would otherwise emit are
//! refused or ignored: `StatefulSet.spec.persistentVolumeClaimRetentionPolicy` (no such field
//! before 1.23), `policy/v1` PodDisruptionBudgets (served from 1.21; `policy/v1beta1` has the
//! same shape) and their `unhealthyPodEvictionPolicy` (honoured by default from 1.27).
//! The builders take a [`Capabilities`] so that what they emit is decided by a plain value that
//! unit tests can set both ways; only [`discover`] does I/O.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::version::Info;

use crate::crd::ConfmanClusterSpec;

/// What the server supports, as far as the operator's children are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Emit `StatefulSet.spec.persistentVolumeClaimRetentionPolicy`: only from 1.27, where the
    /// `StatefulSetAutoDeletePVC` gate is on by default. Before 1.23 the field is refused
    /// ("field not declared in schema"); from 1.23 to 1.26 it is accepted but silently dropped
    /// unless the alpha/beta gate was turned on, so sending it would promise what is not done.
    pub pvc_retention_policy: bool,
    /// PodDisruptionBudgets are served as `policy/v1` (1.21+); otherwise as `policy/v1beta1`.
    pub pdb_v1: bool,
    /// Emit `PodDisruptionBudget.spec.unhealthyPodEvictionPolicy`: from 1.27, where the
    /// `PDBUnhealthyPodEvictionPolicy` gate is beta and on by default (alpha and off in 1.26,
    /// where the field is silently dropped; unknown before), and only with `policy/v1`.
    pub pdb_unhealthy_pod_eviction_policy: bool,
}

impl Default for Capabilities {
    fn default() -> Self {
        Capabilities::RECENT
    }
}

/// Oldest minor (of Kubernetes 1.x) that serves `policy/v1` PodDisruptionBudgets.
const PDB_V1_SINCE: u32 = 21;
/// Oldest minor where the StatefulSet PVC retention policy is enforced by default.
const PVC_RETENTION_SINCE: u32 = 27;
/// Oldest minor where a PDB's `unhealthyPodEvictionPolicy` is honoured by default.
const UNHEALTHY_POD_EVICTION_SINCE: u32 = 27;
/// How long start-up keeps retrying a server that does not answer before giving up (the
/// Deployment then restarts the pod): a guess made during an API outage would stick for the
/// operator's whole run.
const DISCOVERY_DEADLINE: Duration = Duration::from_secs(120);
/// Longest pause between two discovery attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Why the server's capabilities could not be discovered.
#[derive(Debug, thiserror::Error)]
#[error("cannot discover what the Kubernetes API server serves within {DISCOVERY_DEADLINE:?}: {0}")]
pub struct DiscoveryError(String);

impl Capabilities {
    /// A current server: everything the builders can emit is accepted and enforced.
    pub const RECENT: Capabilities =
        Capabilities { pvc_retention_policy: true, pdb_v1: true, pdb_unhealthy_pod_eviction_policy: true };

    /// Capabilities of Kubernetes `1.minor` (another major: a future server, all of them).
    pub fn of_version(major: u32, minor: u32) -> Capabilities {
        if major != 1 {
            return Capabilities::RECENT;
        }
        Capabilities {
            pvc_retention_policy: minor >= PVC_RETENTION_SINCE,
            pdb_v1: minor >= PDB_V1_SINCE,
            pdb_unhealthy_pod_eviction_policy: minor >= UNHEALTHY_POD_EVICTION_SINCE,
        }
    }

    /// Capabilities from the server's `/version` answer; None when it names no version (then
    /// the caller decides what to assume).
    pub fn from_info(info: &Info) -> Option<Capabilities> {
        let (major, minor) = parse_version(info)?;
        Some(Capabilities::of_version(major, minor))
    }

    /// One line per feature this server lacks, for the start-up log (empty on a recent server).
    pub fn limitations(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if !self.pvc_retention_policy {
            out.push(
                "StatefulSet persistentVolumeClaimRetentionPolicy is not enforced (Kubernetes < 1.27): \
                 spec.storage.retainOnDelete/retainOnScaleDown have no effect, volumes are always kept",
            );
        }
        if !self.pdb_v1 {
            out.push("policy/v1 PodDisruptionBudget is not served (Kubernetes < 1.21): policy/v1beta1 is used");
        }
        if !self.pdb_unhealthy_pod_eviction_policy {
            out.push(
                "PodDisruptionBudget unhealthyPodEvictionPolicy is not honoured (Kubernetes < 1.27): \
                 a member pod that is not Ready can be evicted only while the budget allows a disruption",
            );
        }
        out
    }

    /// The Event note telling a cluster's owner which of its settings this server does not
    /// honour; None when nothing it asks for is lost (retaining every volume is what an old
    /// server does anyway, and a v1beta1 PDB protects the quorum just the same).
    pub fn unavailable_note(&self, spec: &ConfmanClusterSpec) -> Option<String> {
        let wants_deletion = !spec.storage.retain_on_delete || !spec.storage.retain_on_scale_down;
        (!self.pvc_retention_policy && wants_deletion).then(|| {
            "this Kubernetes server (< 1.27) does not enforce the StatefulSet PVC retention policy: \
             spec.storage.retainOnDelete/retainOnScaleDown=false are not honoured and member volumes \
             are kept on deletion and scale-down (delete the PersistentVolumeClaims by hand)"
                .to_string()
        })
    }
}

/// Leading decimal digits of `s` (`"20+"` → 20, as managed offerings report minors).
fn leading_number(s: &str) -> Option<u32> {
    let digits: String = s.trim().chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// `(major, minor)` from `major`/`minor`, falling back to `gitVersion` (`v1.20.2-eks-…`) when
/// those are empty, as some distributions leave them.
fn parse_version(info: &Info) -> Option<(u32, u32)> {
    if let (Some(major), Some(minor)) = (leading_number(&info.major), leading_number(&info.minor)) {
        return Some((major, minor));
    }
    let v = info.git_version.trim().trim_start_matches('v');
    let mut parts = v.split('.');
    Some((leading_number(parts.next()?)?, leading_number(parts.next()?)?))
}

/// Whether retrying can help: an error status from the server (other than overload) will be
/// the same on the next attempt.
fn is_transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(status) => status.code == 429 || status.code >= 500,
        kube::Error::SerdeError(_) => false,
        _ => true,
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 404)
}

/// Runs `call` until it succeeds or fails for a reason retrying cannot change, backing off
/// between transient failures, until [`DISCOVERY_DEADLINE`].
async fn retrying<T, F, Fut>(what: &str, mut call: F) -> Result<Result<T, kube::Error>, DiscoveryError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, kube::Error>>,
{
    let started = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(500);
    loop {
        match call().await {
            Err(e) if is_transient(&e) => {
                if started.elapsed() >= DISCOVERY_DEADLINE {
                    return Err(DiscoveryError(format!("{what}: {e}")));
                }
                tracing::warn!(error = %e, what, retry_in = ?pause, "kubernetes API not answering; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_BACKOFF);
            }
            done => return Ok(done),
        }
    }
}

/// Discovers what the server serves: whether `policy/v1` lists PodDisruptionBudgets (asked
/// of the API itself), and from the server version whether the StatefulSet PVC retention
/// policy is enforced (a field's enforcement is not discoverable). Transient failures are
/// retried until [`DISCOVERY_DEADLINE`]; then start-up fails rather than guessing. A server
/// without `/version` (the in-process test stand-in) is taken as recent.
pub async fn discover(client: &kube::Client) -> Result<Capabilities, DiscoveryError> {
    let info = retrying("GET /version", || client.apiserver_version()).await?;
    let (mut caps, version) = match info {
        Ok(info) => match Capabilities::from_info(&info) {
            Some(caps) => (caps, info.git_version),
            None => {
                tracing::warn!(git_version = %info.git_version, "server version unreadable; assuming a recent Kubernetes");
                (Capabilities::RECENT, info.git_version)
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "the server answers no version; assuming a recent Kubernetes");
            return Ok(Capabilities::RECENT);
        }
    };
    match retrying("GET /apis/policy/v1", || client.list_api_group_resources("policy/v1")).await? {
        Ok(list) => caps.pdb_v1 = list.resources.iter().any(|r| r.name == "poddisruptionbudgets"),
        Err(e) if is_not_found(&e) => caps.pdb_v1 = false,
        Err(e) => return Err(DiscoveryError(format!("GET /apis/policy/v1: {e}"))),
    }
    // The field exists only in policy/v1.
    caps.pdb_unhealthy_pod_eviction_policy &= caps.pdb_v1;
    let limits = caps.limitations();
    if limits.is_empty() {
        tracing::info!(version = %version, "kubernetes server supports every feature the operator uses");
    } else {
        tracing::warn!(version = %version, unavailable = %limits.join("; "), "kubernetes server lacks features");
    }
    Ok(caps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ConfmanClusterSpec;

    fn info(major: &str, minor: &str, git: &str) -> Info {
        Info { major: major.into(), minor: minor.into(), git_version: git.into(), ..Info::default() }
    }

    #[test]
    fn versions_map_to_capabilities() {
        let old = Capabilities { pvc_retention_policy: false, pdb_v1: false, pdb_unhealthy_pod_eviction_policy: false };
        assert_eq!(Capabilities::from_info(&info("1", "20", "v1.20.2")), Some(old));
        assert_eq!(
            Capabilities::from_info(&info("1", "21+", "v1.21.14-gke.1")),
            Some(Capabilities { pvc_retention_policy: false, pdb_v1: true, pdb_unhealthy_pod_eviction_policy: false })
        );
        // 1.23–1.26 accept the field but drop it with the gate off: not emitted.
        assert_eq!(
            Capabilities::of_version(1, 26),
            Capabilities { pvc_retention_policy: false, pdb_v1: true, pdb_unhealthy_pod_eviction_policy: false }
        );
        assert_eq!(Capabilities::of_version(1, 27), Capabilities::RECENT);
        assert_eq!(Capabilities::of_version(2, 0), Capabilities::RECENT);
        // Empty major/minor: gitVersion decides.
        assert_eq!(Capabilities::from_info(&info("", "", "v1.20.2-eks-abc")), Some(old));
        assert_eq!(Capabilities::from_info(&info("", "", "devel")), None);
    }

    #[test]
    fn an_old_server_tells_only_clusters_that_lose_something() {
        let old = Capabilities::of_version(1, 20);
        assert_eq!(old.limitations().len(), 3);
        assert!(Capabilities::RECENT.limitations().is_empty());
        let mut spec = ConfmanClusterSpec::minimal(3, "i", "1Gi");
        let note = old.unavailable_note(&spec).unwrap_or_default();
        assert!(note.contains("retainOnDelete"), "{note}");
        assert_eq!(Capabilities::RECENT.unavailable_note(&spec), None);
        spec.storage.retain_on_delete = true;
        spec.storage.retain_on_scale_down = true;
        assert_eq!(old.unavailable_note(&spec), None, "keeping every volume is what the old server does");
    }
}
