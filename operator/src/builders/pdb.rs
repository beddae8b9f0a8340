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

/// `minAvailable` such that voluntary evictions never cost a quorum: of `pods` pods, at most
/// `voters − quorum(voters)` may be down. With the group unknown (`None`), `spec.replicas`
/// voters and as many pods are assumed. During a scale-up a learner's pod counts as a pod but
/// not as a vote (3 voters + 1 learner → 3 of 4 must stay).
pub fn pod_disruption_budget(
    c: &ConfmanCluster,
    group: Option<(i32, i32)>,
    caps: &Capabilities,
) -> Result<Pdb, BuildError> {
    let (voters, pods) = group.unwrap_or((c.spec.replicas, c.spec.replicas));
    let tolerated = voters - (voters / 2 + 1);
    let quorum = (pods - tolerated).max(1);
    let v1 = PodDisruptionBudget {
        metadata: meta(c, client_name(c))?,
        spec: Some(PodDisruptionBudgetSpec {
            min_available: Some(IntOrString::Int(quorum)),
            selector: Some(LabelSelector { match_labels: Some(selector_labels(c)), ..LabelSelector::default() }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    };
    if caps.pdb_v1 {
        return Ok(Pdb::V1(v1));
    }
    // The fields set above (minAvailable, selector) mean the same in v1beta1.
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
    use crate::builders::fixtures::cluster;
    use crate::crd::PayloadClassSpec;

    fn min_available(pdb: &Pdb) -> serde_json::Value {
        serde_json::to_value(pdb).map(|v| v["spec"]["minAvailable"].clone()).unwrap_or_default()
    }

    #[test]
    fn pdb_keeps_a_quorum() -> Result<(), BuildError> {
        for caps in [Capabilities::RECENT, Capabilities::of_version(1, 20)] {
            for (replicas, min) in [(1, 1), (3, 2), (5, 3), (9, 5)] {
                let pdb = pod_disruption_budget(&cluster(replicas, PayloadClassSpec::Small), None, &caps)?;
                assert_eq!(min_available(&pdb), serde_json::json!(min), "{replicas} {caps:?}");
            }
            // Pending steps are priced in: 3 voters + a learner pod, and 5 voters during a shrink.
            for (voters, pods, min) in [(3, 4, 3), (5, 5, 3), (4, 5, 4)] {
                let pdb = pod_disruption_budget(&cluster(3, PayloadClassSpec::Small), Some((voters, pods)), &caps)?;
                assert_eq!(min_available(&pdb), serde_json::json!(min), "{voters}/{pods} {caps:?}");
            }
        }
        Ok(())
    }

    #[test]
    fn an_old_server_gets_the_same_budget_as_policy_v1beta1() -> Result<(), Box<dyn std::error::Error>> {
        let c = cluster(3, PayloadClassSpec::Small);
        let new = serde_json::to_value(pod_disruption_budget(&c, None, &Capabilities::RECENT)?)?;
        let old_caps = Capabilities { pdb_v1: false, ..Capabilities::RECENT };
        let old = pod_disruption_budget(&c, None, &old_caps)?;
        assert!(matches!(old, Pdb::V1beta1(_)));
        let old = serde_json::to_value(old)?;
        assert_eq!((&new["apiVersion"], &new["kind"]), (&"policy/v1".into(), &"PodDisruptionBudget".into()));
        assert_eq!((&old["apiVersion"], &old["kind"]), (&"policy/v1beta1".into(), &"PodDisruptionBudget".into()));
        assert_eq!(old["spec"], new["spec"]);
        assert_eq!(old["metadata"], new["metadata"]);
        Ok(())
    }
}
