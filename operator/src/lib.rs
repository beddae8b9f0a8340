//! Confman operator: the `ConfmanCluster` resource, the pure functions that derive what a
//! cluster should look like (validation, tuning, member ledger, child objects, status), and the
//! reconcile loop and controller that apply them.

pub mod builders;
pub mod capabilities;
pub mod controller;
pub mod crd;
pub mod fixtures;
pub mod ledger;
pub mod membership_step;
pub mod metrics;
pub mod node_client;
pub mod reconcile;
pub mod render;
pub mod status;
pub mod tuning;
pub mod validate;
