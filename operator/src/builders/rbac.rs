//! What the members need to accept ServiceAccount tokens (`spec.auth.serviceAccounts`): a
//! ServiceAccount of their own (unless `spec.pod.serviceAccountName` names one) and a
//! ClusterRoleBinding of it to the chart's ClusterRole that allows exactly `create` on
//! `tokenreviews`. TokenReviews are cluster-scoped, so the binding is too: it cannot be owned
//! by the namespaced ConfmanCluster (the garbage collector would never remove it), so the
//! operator removes it itself, behind [`TOKEN_REVIEW_FINALIZER`].

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;

use super::{BuildError, labels, meta};
use crate::crd::ConfmanCluster;

/// Finalizer held while the cluster's TokenReview binding exists.
pub const TOKEN_REVIEW_FINALIZER: &str = "confman.io/token-review-binding";

/// The ClusterRole the binding refers to when the operator is not told another
/// (`CONFMAN_TOKEN_REVIEW_ROLE`; the chart sets it to the ClusterRole it installs).
pub const DEFAULT_TOKEN_REVIEW_ROLE: &str = "confman-token-review";

/// The audiences a ServiceAccount token for this cluster may carry.
pub fn token_audiences(c: &ConfmanCluster) -> Vec<String> {
    vec!["confman".into(), c.name_any()]
}

/// Whether the members accept ServiceAccount tokens.
pub fn accepts_service_accounts(c: &ConfmanCluster) -> bool {
    c.spec.auth.as_ref().is_some_and(|a| !a.service_accounts.is_empty())
}

/// The ServiceAccount the member pods run as: `spec.pod.serviceAccountName`, else (when they
/// accept ServiceAccount tokens, and so call TokenReview) `<name>-member`, else none.
pub fn member_service_account_name(c: &ConfmanCluster) -> Option<String> {
    let named = c.spec.pod.as_ref().and_then(|p| p.service_account_name.clone());
    named.or_else(|| accepts_service_accounts(c).then(|| format!("{}-member", c.name_any())))
}

/// The members' own ServiceAccount, when the operator is to create it.
pub fn member_service_account(c: &ConfmanCluster) -> Result<Option<ServiceAccount>, BuildError> {
    let user_named = c.spec.pod.as_ref().is_some_and(|p| p.service_account_name.is_some());
    if !accepts_service_accounts(c) || user_named {
        return Ok(None);
    }
    let Some(name) = member_service_account_name(c) else { return Ok(None) };
    Ok(Some(ServiceAccount { metadata: meta(c, name)?, ..ServiceAccount::default() }))
}

/// Name of the cluster's TokenReview binding (cluster-scoped, so it names the namespace).
pub fn token_review_binding_name(c: &ConfmanCluster) -> String {
    format!("confman:{}:{}:token-review", c.namespace().unwrap_or_default(), c.name_any())
}

/// Label naming the namespace of the cluster a cluster-scoped object belongs to (its other
/// labels name only the cluster, whose name is unique per namespace only).
pub const CLUSTER_NAMESPACE_LABEL: &str = "confman.io/cluster-namespace";

/// The labels of the cluster's binding: the cluster's, and its namespace.
pub fn binding_labels(c: &ConfmanCluster) -> std::collections::BTreeMap<String, String> {
    let mut l = labels(c);
    l.insert(CLUSTER_NAMESPACE_LABEL.into(), c.namespace().unwrap_or_default());
    l
}

/// The binding of the members' ServiceAccount to `role`, when they accept ServiceAccount tokens.
pub fn token_review_binding(c: &ConfmanCluster, role: &str) -> Result<Option<ClusterRoleBinding>, BuildError> {
    let Some(account) = member_service_account_name(c).filter(|_| accepts_service_accounts(c)) else {
        return Ok(None);
    };
    let namespace = c.namespace().ok_or(BuildError::MissingMetadata("namespace"))?;
    Ok(Some(ClusterRoleBinding {
        metadata: ObjectMeta {
            name: Some(token_review_binding_name(c)),
            labels: Some(binding_labels(c)),
            ..ObjectMeta::default()
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "ClusterRole".into(),
            name: role.into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: account,
            namespace: Some(namespace),
            ..Subject::default()
        }]),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{AuthSpec, PayloadClass, PodOptions};
    use crate::fixtures::cluster;
    use confman_contract::{Role, ServiceAccountRule};

    fn with_rules() -> ConfmanCluster {
        let mut c = cluster(3, PayloadClass::Small);
        c.spec.auth = Some(AuthSpec {
            service_accounts: vec![ServiceAccountRule {
                namespace: "apps".into(),
                name: "*".into(),
                roles: vec![Role::Viewer],
                namespaces: vec!["*".into()],
            }],
            ..AuthSpec::default()
        });
        c
    }

    #[test]
    fn members_accepting_service_accounts_get_an_account_bound_to_token_review_only() -> Result<(), BuildError> {
        let plain = cluster(3, PayloadClass::Small);
        assert_eq!(member_service_account(&plain)?, None);
        assert_eq!(token_review_binding(&plain, "r")?, None);

        let c = with_rules();
        let sa = member_service_account(&c)?.ok_or(BuildError::MissingMetadata("service account"))?;
        assert_eq!(sa.metadata.name.as_deref(), Some("config-member"));
        assert!(sa.metadata.owner_references.is_some_and(|o| o.len() == 1), "owned: collected with the cluster");
        let binding =
            token_review_binding(&c, "confman-token-review")?.ok_or(BuildError::MissingMetadata("binding"))?;
        assert_eq!(binding.metadata.name.as_deref(), Some("confman:platform:config:token-review"));
        assert_eq!(binding.metadata.owner_references, None, "a namespaced owner is never resolved for it");
        assert_eq!(binding.role_ref.name, "confman-token-review");
        let subject = binding.subjects.unwrap_or_default().into_iter().next();
        assert_eq!(
            subject.map(|s| (s.kind, s.name, s.namespace)),
            Some(("ServiceAccount".into(), "config-member".into(), Some("platform".into())))
        );
        assert_eq!(token_audiences(&c), ["confman", "config"]);
        Ok(())
    }

    #[test]
    fn a_service_account_the_spec_names_is_bound_and_not_created() -> Result<(), BuildError> {
        let mut c = with_rules();
        c.spec.pod = Some(PodOptions { service_account_name: Some("team-sa".into()), ..PodOptions::default() });
        assert_eq!(member_service_account(&c)?, None);
        let binding = token_review_binding(&c, "r")?.ok_or(BuildError::MissingMetadata("binding"))?;
        assert_eq!(binding.subjects.unwrap_or_default().into_iter().next().map(|s| s.name).as_deref(), Some("team-sa"));
        Ok(())
    }
}
