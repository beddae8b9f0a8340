//! `confman-operator render`: the children a ConfmanCluster would get on first reconcile, as
//! multi-document YAML, without a cluster — for review, GitOps diffs and offline validation.

use kube::ResourceExt;

use crate::builders::{self, BuildError, Inputs};
use crate::capabilities::Capabilities;
use crate::crd::ConfmanCluster;
use crate::ledger::Ledger;
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
/// those for a current Kubernetes ([`Capabilities::RECENT`]), with a fresh token (and admin key
/// without `spec.auth`); without the
/// Secrets at hand the pod template has no credentials or CA hash.
pub fn render(yaml: &str) -> Result<String, RenderError> {
    let mut c: ConfmanCluster = serde_yaml_ng::from_str(yaml)?;
    if c.namespace().is_none() {
        c.metadata.namespace = Some("default".into());
    }
    if c.metadata.uid.is_none() {
        c.metadata.uid = Some("00000000-0000-0000-0000-000000000000".into());
    }
    let tuning = validate(&c.spec, &Applied::default()).map_err(RenderError::Invalid)?;
    let replicas = u32::try_from(c.spec.replicas).unwrap_or(0);
    let token = builders::generate_token();
    let admin_key = builders::user_keys_secret(&c).is_none().then(builders::generate_token);
    let inputs = Inputs {
        tuning: &tuning,
        ledger: &Ledger::bootstrap(&c, replicas),
        new_token: Some(&token),
        new_admin_key: admin_key.as_deref(),
        replicas,
        trusted_ca: None,
        credentials_hash: None,
        group: None,
        caps: &Capabilities::RECENT,
        token_review_role: builders::DEFAULT_TOKEN_REVIEW_ROLE,
    };
    Ok(builders::desired(&c, &inputs)?.to_yaml()?)
}
