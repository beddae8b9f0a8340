//! Report: what a person sees of a reconcile — the status subresource and Events. Kept apart
//! so that every Event goes through one place that makes it acceptable to the API server. A
//! failed Event is logged and the reconcile goes on; a failed status write fails the reconcile
//! (it is retried, since the status is what tells a person where the cluster stands).

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};

use super::{Context, Error, FIELD_MANAGER, key};
use crate::crd::{ConfmanCluster, ConfmanClusterStatus};
use crate::status;

/// An Event decided before the change it announces is made, published once it is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// A Warning rather than a Normal Event.
    pub warning: bool,
    /// UpperCamelCase reason.
    pub reason: &'static str,
    /// What happened, for a person.
    pub note: String,
    /// What the operator did.
    pub action: &'static str,
}

impl Notice {
    /// A Normal Event.
    pub fn normal(reason: &'static str, note: String, action: &'static str) -> Notice {
        Notice { warning: false, reason, note, action }
    }
}

/// Publishes an Event about `c`; a refused Event is logged.
async fn publish(ctx: &Context, c: &ConfmanCluster, warning: bool, reason: &str, note: &str, action: &str) {
    let event = Event {
        type_: if warning { EventType::Warning } else { EventType::Normal },
        reason: status::event_reason(reason),
        note: Some(status::event_note(note)),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &c.object_ref(&())).await {
        tracing::warn!(cluster = %key(c), error = %e, "cannot publish event");
    }
}

/// Publishes `notices` as Events about `c`.
pub async fn announce(ctx: &Context, c: &ConfmanCluster, notices: &[Notice]) {
    for n in notices {
        publish(ctx, c, n.warning, n.reason, &n.note, n.action).await;
    }
}

/// Patches the status (server-side apply on the status subresource) and publishes an Event
/// for every condition that changed.
pub async fn write_status(ctx: &Context, c: &ConfmanCluster, new: ConfmanClusterStatus) -> Result<(), Error> {
    let api = Api::<ConfmanCluster>::namespaced(ctx.client.clone(), &c.namespace().unwrap_or_default());
    let body = status::status_apply_body(&new)?;
    api.patch_status(&c.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body)).await?;
    for cond in status::transitions(c.status.as_ref(), &new) {
        let note =
            if cond.message.is_empty() { format!("{} is {}", cond.type_, cond.status) } else { cond.message.clone() };
        let action = format!("{}{}", cond.type_, cond.status);
        publish(ctx, c, status::is_warning(cond), &cond.reason, &note, &action).await;
    }
    Ok(())
}

/// Tells a cluster's owner, once per cluster (by uid) and operator run, which of its settings this
/// server does not honour (see [`crate::capabilities::Capabilities::unavailable_note`]).
pub async fn tell_unavailable(ctx: &Context, c: &ConfmanCluster) {
    let Some(note) = ctx.capabilities.unavailable_note(&c.spec) else { return };
    let uid = c.uid().unwrap_or_else(|| key(c));
    if !ctx.told_unavailable.lock().await.insert(uid) {
        return;
    }
    publish(ctx, c, true, "FeatureUnavailable", &note, "Reconcile").await;
}
