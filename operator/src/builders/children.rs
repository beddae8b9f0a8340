//! The one list of a cluster's children. `render` and the reconcile both take it from
//! [`desired`], so a child added here is rendered and applied alike, and the apply stage, which
//! takes [`Children`] apart field by field, does not compile until it applies the new one too.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;

use super::{
    BuildError, Pdb, admin_keys_secret, client_service, config_hash, config_map, headless_service,
    member_service_account, pod_disruption_budget, statefulset, token_review_binding, token_secret,
    with_credentials_hash, with_trusted_ca,
};
use crate::capabilities::Capabilities;
use crate::crd::{ConfmanCluster, Tuning};
use crate::ledger::{Ledger, NEXT_ID_ANNOTATION};

/// What the children are built from besides the spec: what was derived or decided from the
/// cluster as it is.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// The effective tuning (validated).
    pub tuning: &'a Tuning,
    /// The member ledger to write.
    pub ledger: &'a Ledger,
    /// A token for a new token Secret; None when the Secret exists (it is never rewritten).
    pub new_token: Option<&'a str>,
    /// An admin key for a new admin key Secret (no `spec.auth`, no Secret yet); None otherwise.
    pub new_admin_key: Option<&'a str>,
    /// `StatefulSet.spec.replicas` (the membership step's, not always `spec.replicas`).
    pub replicas: u32,
    /// The CA bundle the members trust (`ca.crt` of the TLS Secret), when known.
    pub trusted_ca: Option<&'a str>,
    /// [`super::credentials_hash`] for the pod template, when known.
    pub credentials_hash: Option<&'a str>,
    /// `(voters, pods)` of the live Raft group, for the disruption budget.
    pub group: Option<(i32, i32)>,
    /// What the API server serves.
    pub caps: &'a Capabilities,
    /// The ClusterRole allowing `create` on tokenreviews that the members' ServiceAccount is
    /// bound to (with `spec.auth.serviceAccounts`).
    pub token_review_role: &'a str,
}

/// Every child of a cluster, in the order they are applied.
#[derive(Debug, Clone)]
pub struct Children {
    /// The cluster token Secret, only when it is to be created.
    pub token: Option<Secret>,
    /// The generated admin key Secret, only when it is to be created.
    pub admin_keys: Option<Secret>,
    /// The members' ServiceAccount, when the operator creates it (`spec.auth.serviceAccounts`
    /// without `spec.pod.serviceAccountName`).
    pub service_account: Option<ServiceAccount>,
    /// The cluster-scoped binding of the members' ServiceAccount to TokenReview (with
    /// `spec.auth.serviceAccounts`); removed by the operator, not the garbage collector.
    pub token_review_binding: Option<ClusterRoleBinding>,
    /// The member ledger ConfigMap (node ids by pod).
    pub ledger: ConfigMap,
    /// The node configuration ConfigMap.
    pub config: ConfigMap,
    /// The headless (peer) Service.
    pub headless: Service,
    /// The client Service.
    pub client: Service,
    /// The StatefulSet running the members.
    pub statefulset: StatefulSet,
    /// The PodDisruptionBudget keeping a quorum through drains.
    pub pdb: Pdb,
}

/// The children of `c` built from `i`.
pub fn desired(c: &ConfmanCluster, i: &Inputs<'_>) -> Result<Children, BuildError> {
    let config = config_map(c, i.tuning)?;
    let mut sts = statefulset(c, i.tuning, &config_hash(&config), i.caps)?;
    sts.spec.replicas = Some(i32::try_from(i.replicas).unwrap_or(i32::MAX));
    sts.metadata.annotations.get_or_insert_default().insert(NEXT_ID_ANNOTATION.into(), i.ledger.next_id.to_string());
    if let Some(ca) = i.trusted_ca {
        with_trusted_ca(&mut sts, ca);
    }
    if let Some(hash) = i.credentials_hash {
        with_credentials_hash(&mut sts, hash);
    }
    Ok(Children {
        token: i.new_token.map(|t| token_secret(c, t)).transpose()?,
        admin_keys: i.new_admin_key.map(|k| admin_keys_secret(c, k)).transpose()?,
        service_account: member_service_account(c)?,
        token_review_binding: token_review_binding(c, i.token_review_role)?,
        ledger: i.ledger.config_map(c)?,
        config,
        headless: headless_service(c)?,
        client: client_service(c)?,
        statefulset: sts,
        pdb: pod_disruption_budget(c, i.group, i.caps)?,
    })
}

impl Children {
    /// Every child as multi-document YAML, in apply order.
    pub fn to_yaml(&self) -> Result<String, serde_yaml_ng::Error> {
        // Taken apart field by field, so a new child does not compile until it is rendered.
        let Children {
            token,
            admin_keys,
            service_account,
            token_review_binding,
            ledger,
            config,
            headless,
            client,
            statefulset,
            pdb,
        } = self;
        let mut docs = Vec::new();
        for secret in [token, admin_keys].into_iter().flatten() {
            docs.push(serde_yaml_ng::to_string(secret)?);
        }
        if let Some(account) = service_account {
            docs.push(serde_yaml_ng::to_string(account)?);
        }
        if let Some(binding) = token_review_binding {
            docs.push(serde_yaml_ng::to_string(binding)?);
        }
        docs.extend([
            serde_yaml_ng::to_string(ledger)?,
            serde_yaml_ng::to_string(config)?,
            serde_yaml_ng::to_string(headless)?,
            serde_yaml_ng::to_string(client)?,
            serde_yaml_ng::to_string(statefulset)?,
            serde_yaml_ng::to_string(pdb)?,
        ]);
        Ok(docs.iter().map(|d| format!("---\n{d}")).collect())
    }
}

/// A pod-template annotation of `sts` (what a rollout is driven by).
pub fn template_annotation(sts: &StatefulSet, key: &str) -> Option<String> {
    sts.spec.template.metadata.as_ref()?.annotations.as_ref()?.get(key).cloned()
}
