//! PodDisruptionBudget keeping a Raft quorum through voluntary disruptions (node drains).

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{BuildError, client_name, meta, selector_labels};
use crate::crd::ConfmanCluster;

/// `minAvailable` such that voluntary evictions never cost a quorum: of `pods` pods, at most
/// `voters − quorum(voters)` may be down. With the group unknown (`None`), `spec.replicas`
/// voters and as many pods are assumed. During a scale-up a learner's pod counts as a pod but
/// not as a vote (3 voters + 1 learner → 3 of 4 must stay).
pub fn pod_disruption_budget(c: &ConfmanCluster, group: Option<(i32, i32)>) -> Result<PodDisruptionBudget, BuildError> {
    let (voters, pods) = group.unwrap_or((c.spec.replicas, c.spec.replicas));
    let tolerated = voters - (voters / 2 + 1);
    let quorum = (pods - tolerated).max(1);
    Ok(PodDisruptionBudget {
        metadata: meta(c, client_name(c))?,
        spec: Some(PodDisruptionBudgetSpec {
            min_available: Some(IntOrString::Int(quorum)),
            selector: Some(LabelSelector { match_labels: Some(selector_labels(c)), ..LabelSelector::default() }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::fixtures::cluster;
    use crate::crd::PayloadClassSpec;

    #[test]
    fn pdb_keeps_a_quorum() -> Result<(), BuildError> {
        for (replicas, min) in [(1, 1), (3, 2), (5, 3), (9, 5)] {
            let pdb = pod_disruption_budget(&cluster(replicas, PayloadClassSpec::Small), None)?;
            assert_eq!(pdb.spec.unwrap_or_default().min_available, Some(IntOrString::Int(min)), "{replicas}");
        }
        // Pending steps are priced in: 3 voters + a learner pod, and 5 voters during a shrink.
        for (voters, pods, min) in [(3, 4, 3), (5, 5, 3), (4, 5, 4)] {
            let pdb = pod_disruption_budget(&cluster(3, PayloadClassSpec::Small), Some((voters, pods)))?;
            assert_eq!(pdb.spec.unwrap_or_default().min_available, Some(IntOrString::Int(min)), "{voters}/{pods}");
        }
        Ok(())
    }
}
