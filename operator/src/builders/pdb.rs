//! PodDisruptionBudget keeping a Raft quorum through voluntary disruptions (node drains).

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{ApiResource, DynamicObject};
use kube::core::GroupVersionKind;
use serde::Serialize;

use super::{BuildError, client_name, meta, selector_labels};
use crate::capabilities::Capabilities;
use crate::crd::ConfmanCluster;

/// `policy/v1beta1` PodDisruptionBudget, for servers older than 1.21 that do not serve
/// `policy/v1` (k8s-openapi no longer has the type, so it is handled as a dynamic object).
pub fn pdb_v1beta1_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("policy", "v1beta1", "PodDisruptionBudget"),
        "poddisruptionbudgets",
    )
}

/// The PodDisruptionBudget in the API version the server serves.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Pdb {
    /// `policy/v1` (Kubernetes 1.21 and later).
    V1(PodDisruptionBudget),
    /// `policy/v1beta1`: the same fields under the older API version (Kubernetes 1.20).
    V1beta1(DynamicObject),
}

impl Pdb {
    /// The object's metadata.
    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Pdb::V1(p) => &p.metadata,
            Pdb::V1beta1(d) => &d.metadata,
        }
    }
}

/// The group the budget protects when the live Raft group is unknown (no leader answered):
/// the larger of `spec.replicas` and the voters last recorded in `status.members`, as voters and
/// as pods. Mid-shrink (5 → 3, two voters still in the group) `spec.replicas` alone would let
/// three of five voters go; sizing from the recorded voters keeps three of five.
fn assumed_group(c: &ConfmanCluster) -> (i32, i32) {
    let recorded = c.status.as_ref().map_or(0, |s| s.members.iter().filter(|m| m.role == "voter").count());
    let voters = c.spec.replicas.max(i32::try_from(recorded).unwrap_or(i32::MAX));
    (voters, voters)
}

/// How the budget protects the group: `MaxUnavailable(1)` for a single voter (there is no
/// quorum to keep, and a budget that no eviction can satisfy would block every node drain
/// forever), else `MinAvailable` such that voluntary evictions never cost a quorum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// `spec.maxUnavailable`.
    MaxUnavailable(i32),
    /// `spec.minAvailable`.
    MinAvailable(i32),
}

/// The budget for `voters` Raft voters on `pods` pods. Of the voters at most
/// `voters − quorum(voters)` may be down, and every pod beyond the voters (a learner's, during
/// a scale-up: 3 voters + 1 learner → 3 of 4 must stay) may be one of them; so `pods −
/// tolerated` must stay, and never fewer than a quorum (voters without a pod already count as
/// down).
pub fn budget(voters: i32, pods: i32) -> Budget {
    if voters <= 1 {
        return Budget::MaxUnavailable(1);
    }
    let quorum = voters / 2 + 1;
    let tolerated = voters - quorum;
    Budget::MinAvailable((pods - tolerated).max(quorum).min(pods.max(1)))
}

/// The PodDisruptionBudget. `group` is `(voters, pods)` of the live Raft group and the
/// StatefulSet's replicas; with it unknown (`None`) see [`assumed_group`]. Pods that are not
/// Ready may always be evicted where the server honours it (`unhealthyPodEvictionPolicy:
/// AlwaysAllow`): such a pod holds up no quorum, and with the default policy a crash-looping
/// member would block the drain of its node whenever the budget is already spent.
pub fn pod_disruption_budget(
    c: &ConfmanCluster,
    group: Option<(i32, i32)>,
    caps: &Capabilities,
) -> Result<Pdb, BuildError> {
    let (voters, pods) = group.unwrap_or_else(|| assumed_group(c));
    let (min_available, max_unavailable) = match budget(voters, pods) {
        Budget::MinAvailable(n) => (Some(IntOrString::Int(n)), None),
        Budget::MaxUnavailable(n) => (None, Some(IntOrString::Int(n))),
    };
    let v1 = PodDisruptionBudget {
        metadata: meta(c, client_name(c))?,
        spec: Some(PodDisruptionBudgetSpec {
            min_available,
            max_unavailable,
            selector: Some(LabelSelector { match_labels: Some(selector_labels(c)), ..LabelSelector::default() }),
            unhealthy_pod_eviction_policy: (caps.pdb_v1 && caps.pdb_unhealthy_pod_eviction_policy)
                .then(|| "AlwaysAllow".to_string()),
        }),
        ..PodDisruptionBudget::default()
    };
    if caps.pdb_v1 {
        return Ok(Pdb::V1(v1));
    }
    // The fields set above (minAvailable or maxUnavailable, selector) mean the same in v1beta1.
    let mut value = serde_json::to_value(&v1)?;
    let ar = pdb_v1beta1_resource();
    value["apiVersion"] = serde_json::Value::String(ar.api_version);
    value["kind"] = serde_json::Value::String(ar.kind);
    value.as_object_mut().map(|o| o.remove("status"));
    Ok(Pdb::V1beta1(serde_json::from_value(value)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::PayloadClass;
    use crate::fixtures::cluster;

    fn min_available(pdb: &Pdb) -> serde_json::Value {
        serde_json::to_value(pdb).map(|v| v["spec"]["minAvailable"].clone()).unwrap_or_default()
    }

    fn spec_field(pdb: &Pdb, field: &str) -> serde_json::Value {
        serde_json::to_value(pdb).map(|v| v["spec"][field].clone()).unwrap_or_default()
    }

    #[test]
    fn pdb_single_replica_does_not_block_every_drain() -> Result<(), BuildError> {
        for caps in [Capabilities::RECENT, Capabilities::of_version(1, 20)] {
            let pdb = pod_disruption_budget(&cluster(1, PayloadClass::Small), None, &caps)?;
            assert_eq!(spec_field(&pdb, "maxUnavailable"), serde_json::json!(1), "{caps:?}");
            assert_eq!(spec_field(&pdb, "minAvailable"), serde_json::Value::Null, "{caps:?}");
            // One voter growing to three: its learner's pod must not pin the voter either.
            let pdb = pod_disruption_budget(&cluster(3, PayloadClass::Small), Some((1, 2)), &caps)?;
            assert_eq!(spec_field(&pdb, "maxUnavailable"), serde_json::json!(1), "{caps:?}");
        }
        // No budget that equals the pods for any group that has a quorum to keep.
        for voters in [3, 5, 7, 9] {
            assert!(matches!(budget(voters, voters), Budget::MinAvailable(n) if n < voters), "{voters}");
        }
        Ok(())
    }

    #[test]
    fn pdb_unhealthy_pods_may_always_be_evicted_where_served() -> Result<(), BuildError> {
        let c = cluster(3, PayloadClass::Small);
        let recent = pod_disruption_budget(&c, None, &Capabilities::RECENT)?;
        assert_eq!(spec_field(&recent, "unhealthyPodEvictionPolicy"), serde_json::json!("AlwaysAllow"));
        for minor in [20, 21, 26] {
            let pdb = pod_disruption_budget(&c, None, &Capabilities::of_version(1, minor))?;
            assert_eq!(spec_field(&pdb, "unhealthyPodEvictionPolicy"), serde_json::Value::Null, "1.{minor}");
        }
        // Never sent as policy/v1beta1, which has no such field.
        let beta = Capabilities { pdb_v1: false, ..Capabilities::RECENT };
        let pdb = pod_disruption_budget(&c, None, &beta)?;
        assert_eq!(spec_field(&pdb, "unhealthyPodEvictionPolicy"), serde_json::Value::Null);
        Ok(())
    }

    #[test]
    fn pdb_mid_shrink_is_sized_from_the_actual_voters() -> Result<(), BuildError> {
        use crate::crd::{ConfmanClusterStatus, MemberStatus};
        // spec.replicas went 5 → 3; the group still has 5 voters and no leader answers now.
        let mut c = cluster(3, PayloadClass::Small);
        let member = |id: u64| MemberStatus {
            id,
            pod: format!("config-{}", id - 1),
            role: "voter".into(),
            healthy: true,
            applied_index: None,
        };
        c.status = Some(ConfmanClusterStatus { members: (1..=5).map(member).collect(), ..Default::default() });
        let pdb = pod_disruption_budget(&c, None, &Capabilities::RECENT)?;
        assert_eq!(min_available(&pdb), serde_json::json!(3), "3 of 5 voters must stay, not 2");
        // Live group: 4 voters left on 5 pods, and 5 voters whose pods are partly gone.
        assert_eq!(budget(4, 5), Budget::MinAvailable(4));
        assert_eq!(budget(5, 3), Budget::MinAvailable(3), "never fewer than a quorum of the voters");
        Ok(())
    }

    #[test]
    fn pdb_keeps_a_quorum() -> Result<(), BuildError> {
        for caps in [Capabilities::RECENT, Capabilities::of_version(1, 20)] {
            for (replicas, min) in [(3, 2), (5, 3), (9, 5)] {
                let pdb = pod_disruption_budget(&cluster(replicas, PayloadClass::Small), None, &caps)?;
                assert_eq!(min_available(&pdb), serde_json::json!(min), "{replicas} {caps:?}");
            }
            // Pending steps are priced in: 3 voters + a learner pod, and 5 voters during a shrink.
            for (voters, pods, min) in [(3, 4, 3), (5, 5, 3), (4, 5, 4)] {
                let pdb = pod_disruption_budget(&cluster(3, PayloadClass::Small), Some((voters, pods)), &caps)?;
                assert_eq!(min_available(&pdb), serde_json::json!(min), "{voters}/{pods} {caps:?}");
            }
        }
        Ok(())
    }

    #[test]
    fn an_old_server_gets_the_same_budget_as_policy_v1beta1() -> Result<(), Box<dyn std::error::Error>> {
        let c = cluster(3, PayloadClass::Small);
        let new = serde_json::to_value(pod_disruption_budget(&c, None, &Capabilities::RECENT)?)?;
        let old_caps = Capabilities { pdb_v1: false, ..Capabilities::RECENT };
        let old = pod_disruption_budget(&c, None, &old_caps)?;
        assert!(matches!(old, Pdb::V1beta1(_)));
        let old = serde_json::to_value(old)?;
        assert_eq!((&new["apiVersion"], &new["kind"]), (&"policy/v1".into(), &"PodDisruptionBudget".into()));
        assert_eq!((&old["apiVersion"], &old["kind"]), (&"policy/v1beta1".into(), &"PodDisruptionBudget".into()));
        let mut new_spec = new["spec"].clone();
        new_spec.as_object_mut().map(|o| o.remove("unhealthyPodEvictionPolicy"));
        assert_eq!(old["spec"], new_spec, "the same budget, without the policy/v1-only field");
        assert_eq!(old["metadata"], new["metadata"]);
        Ok(())
    }
}
