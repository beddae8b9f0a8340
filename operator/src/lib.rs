//! Confman operator: the `ConfmanCluster` resource and the pure functions that derive what the
//! cluster should look like (tuning from the payload class). Reconcile, builders and the
//! membership state machine build on these.

pub mod builders;
pub mod crd;
pub mod tuning;
