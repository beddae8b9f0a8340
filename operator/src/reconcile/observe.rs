//! Observe: what a reconcile reads before deciding, from the Kubernetes API and from the nodes,
//! into one [`Snapshot`] (act still re-reads what it must check right before a write). Reading first and deciding after means each decision sees one picture of the
//! cluster, and the deciding code can be tested on a hand-made picture without an API server.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::ResourceExt;
use kube::api::{Api, ListParams};

use super::decide::Access;
use super::{Context, Error};
use crate::builders;
use crate::crd::ConfmanCluster;
use crate::membership_step::{PodView, RaftView};
use crate::node_client;
use crate::status;

/// What one reconcile knows of a cluster.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The StatefulSet running the members, once created.
    pub statefulset: Option<StatefulSet>,
    /// The member ledger ConfigMap as stored.
    pub ledger: Option<ConfigMap>,
    /// The cluster token Secret.
    pub token: Option<Secret>,
    /// A token generated for a cluster whose token Secret does not exist yet, so that deciding
    /// stays free of randomness (used only if the cluster has no members either).
    pub fresh_token: Option<String>,
    /// The Secret with the members' keys file: the one `spec.auth.apiKeysSecret` names, else
    /// the generated admin key Secret.
    pub api_keys: Option<Secret>,
    /// An admin key generated for a cluster without `spec.auth` whose admin key Secret does not
    /// exist (yet, or any more), for the same reason as `fresh_token`.
    pub fresh_admin_key: Option<String>,
    /// The Secret `spec.tls.clientSecret` names (not read without `spec.tls`).
    pub tls: Option<Secret>,
    /// What each wanted ordinal's pod and node report; empty until [`Snapshot::ask_nodes`], and
    /// before the StatefulSet exists.
    pub members: Vec<PodView>,
    /// The group as its leader reports it.
    pub raft: Option<RaftView>,
}

/// Reads the StatefulSet and the member ledger: what validation and a paused or invalid
/// cluster's status need. The Secrets are read by [`Snapshot::read_secrets`] once the spec is
/// known to be valid (a blank Secret name would otherwise fail the read, not the validation).
pub async fn read(ctx: &Context, c: &ConfmanCluster) -> Result<Snapshot, Error> {
    let ns = c.namespace().unwrap_or_default();
    Ok(Snapshot {
        statefulset: Api::namespaced(ctx.client.clone(), &ns).get_opt(&builders::client_name(c)).await?,
        ledger: Api::namespaced(ctx.client.clone(), &ns).get_opt(&builders::members_name(c)).await?,
        ..Snapshot::default()
    })
}

impl Snapshot {
    /// Reads the token Secret and the Secrets the spec names (API keys, TLS).
    pub async fn read_secrets(&mut self, ctx: &Context, c: &ConfmanCluster) -> Result<(), Error> {
        let secrets = Api::<Secret>::namespaced(ctx.client.clone(), &c.namespace().unwrap_or_default());
        self.token = secrets.get_opt(&builders::token_name(c)).await?;
        if self.token.is_none() {
            self.fresh_token = Some(builders::generate_token());
        }
        self.api_keys = secrets.get_opt(&builders::keys_secret_name(c)).await?;
        if builders::user_keys_secret(c).is_none() && self.api_keys.is_none() {
            self.fresh_admin_key = Some(builders::generate_token());
        }
        if let Some(t) = &c.spec.tls {
            self.tls = secrets.get_opt(&t.client_secret).await?;
        }
        Ok(())
    }

    /// `StatefulSet.spec.replicas`, None before the StatefulSet exists.
    pub fn sts_replicas(&self) -> Option<u32> {
        self.statefulset.as_ref()?.spec.replicas.and_then(|r| u32::try_from(r).ok())
    }

    /// Lists the pods and asks their nodes (nothing before the StatefulSet exists) with the
    /// credentials decided from the Secrets, filling [`Snapshot::members`] and
    /// [`Snapshot::raft`]; returns the client, which the act stage's admin calls use too.
    pub async fn ask_nodes(
        &mut self,
        ctx: &Context,
        c: &ConfmanCluster,
        access: &Access,
    ) -> Result<confman_client::Client, Error> {
        let wanted = u32::try_from(c.spec.replicas).unwrap_or(0);
        let ordinals = self.sts_replicas().unwrap_or(0).max(wanted);
        let client = node_client::client(c, ordinals, &access.presented, &ctx.resolve, access.ca.as_deref())
            .map_err(|e| Error::Node(e.to_string()))?;
        if self.sts_replicas().is_some() {
            let api = Api::<Pod>::namespaced(ctx.client.clone(), &c.namespace().unwrap_or_default());
            let pods = api.list(&ListParams::default().labels(&builders::selector_string(c))).await?;
            // Until the StatefulSet controller has seen the latest template, its updateRevision is
            // the previous one: no pod is judged outdated (none is replaced) before then.
            let revision = self.statefulset.as_ref().and_then(status::trusted_update_revision).map(str::to_string);
            (self.members, self.raft) =
                node_client::observe(c, &client, ordinals, &pods.items, revision.as_deref()).await;
        }
        Ok(client)
    }
}
