//! PodDisruptionBudget keeping a Raft quorum through voluntary disruptions (node drains).

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{BuildError, client_name, meta, selector_labels};
use crate::crd::ConfmanCluster;

/// At most (replicas − 1) / 2 pods down by choice: `minAvailable` = quorum of `spec.replicas`.
pub fn pod_disruption_budget(c: &ConfmanCluster) -> Result<PodDisruptionBudget, BuildError> {
    let quorum = c.spec.replicas / 2 + 1;
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
            let pdb = pod_disruption_budget(&cluster(replicas, PayloadClassSpec::Small))?;
            assert_eq!(pdb.spec.unwrap_or_default().min_available, Some(IntOrString::Int(min)), "{replicas}");
        }
        Ok(())
    }
}
