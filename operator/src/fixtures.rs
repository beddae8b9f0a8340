//! A ConfmanCluster as the API server hands one over (namespace, uid and generation set): the
//! one fixture the operator's unit tests, its stand-in API tests and the node's contract test
//! share, instead of a copy per test file. Public so integration tests can reach it.

use crate::crd::{ConfmanCluster, ConfmanClusterSpec, PayloadClass};

/// Namespace of [`cluster`].
pub const NAMESPACE: &str = "platform";
/// Name of [`cluster`]; its pods are `config-0`, `config-1`, …
pub const NAME: &str = "config";
/// uid of [`cluster`] (what owner references of its children point at).
pub const UID: &str = "cmc-uid";

/// A cluster of `replicas` members of payload class `class`, image `confman:1`, 10Gi volumes.
pub fn cluster(replicas: i32, class: PayloadClass) -> ConfmanCluster {
    let mut c = ConfmanCluster::new(
        NAME,
        ConfmanClusterSpec { payload_class: class, ..ConfmanClusterSpec::minimal(replicas, "confman:1", "10Gi") },
    );
    c.metadata.namespace = Some(NAMESPACE.into());
    c.metadata.uid = Some(UID.into());
    c.metadata.generation = Some(1);
    c
}
