//! `confman-operator render`: the children a ConfmanCluster would get on first reconcile, as
//! multi-document YAML, without a cluster — for review, GitOps diffs and offline validation.

use kube::ResourceExt;

use crate::builders::{self, BuildError};
use crate::capabilities::Capabilities;
use crate::crd::ConfmanCluster;
use crate::members::Ledger;
use crate::validate::{Applied, Invalid, validate};

/// Why a cluster could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The input is not a ConfmanCluster.
    #[error("not a ConfmanCluster: {0}")]
    Parse(#[from] serde_yaml_ng::Error),
    /// The spec would be refused (`InvalidSpec`).
    #[error("invalid spec ({}): {}", .0.reason, .0.message)]
    Invalid(Invalid),
    /// A child could not be built.
    #[error(transparent)]
    Build(#[from] BuildError),
}

/// Renders the children of the ConfmanCluster in `yaml`; a missing namespace becomes
/// `default` and a missing uid a placeholder (the API server assigns both). The objects are
/// those for a current Kubernetes ([`Capabilities::RECENT`]).
pub fn render(yaml: &str) -> Result<String, RenderError> {
    let mut c: ConfmanCluster = serde_yaml_ng::from_str(yaml)?;
    if c.namespace().is_none() {
        c.metadata.namespace = Some("default".into());
    }
    if c.metadata.uid.is_none() {
        c.metadata.uid = Some("00000000-0000-0000-0000-000000000000".into());
    }
    let tuning = validate(&c.spec, &Applied::default()).map_err(RenderError::Invalid)?;
    let caps = Capabilities::RECENT;
    let replicas = u32::try_from(c.spec.replicas).unwrap_or(0);
    let ledger = Ledger::bootstrap(&c, replicas);
    let config = builders::config_map(&c, &tuning)?;
    let hash = builders::config_hash(&config);
    let docs = [
        serde_yaml_ng::to_string(&builders::token_secret(&c, &builders::generate_token())?)?,
        serde_yaml_ng::to_string(&ledger.config_map(&c)?)?,
        serde_yaml_ng::to_string(&config)?,
        serde_yaml_ng::to_string(&builders::headless_service(&c)?)?,
        serde_yaml_ng::to_string(&builders::client_service(&c)?)?,
        serde_yaml_ng::to_string(&builders::statefulset(&c, &tuning, &hash, &caps)?)?,
        serde_yaml_ng::to_string(&builders::pod_disruption_budget(&c, None, &caps)?)?,
    ];
    Ok(docs.iter().map(|d| format!("---\n{d}")).collect())
}
