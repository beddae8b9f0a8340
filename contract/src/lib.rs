//! What the operator and the node must agree on, defined once. The operator derives a node's
//! timing and size settings from a payload class plus overrides and writes them into the node's
//! config file; the node reads that file, resolves its settings through the same [`derive`] and
//! refuses to start on a violated invariant. Both sides use these types, so a setting, a default
//! or a rule cannot drift between them.
//!
//! - [`tuning`]: the settings table (every setting once: description, flag variable, node
//!   default, value per payload class), from which [`Tuning`], [`TuningOverrides`] and the file
//!   keys of [`NodeConfig`] are all generated.
//! - [`invariants`]: the rules between settings and [`derive`].
//! - [`node_config`]: `node.toml`, the node's config file; its keys are also the node's flags.
//! - [`members`]: `members.toml`, the operator's ledger of node ids as the pods read it.
//! - [`cluster_token`]: the token file / token Secret format (several tokens during a rotation).
//! - [`service_accounts`]: `service-accounts.toml`, the ServiceAccounts a node accepts and their
//!   roles (`spec.auth.serviceAccounts`).

pub mod class;
pub mod cluster_token;
pub mod tuning;

pub mod invariants;
pub mod members;
pub mod node_config;
pub mod service_accounts;

pub use class::PayloadClass;
pub use invariants::{Violation, derive};
pub use members::MembersFile;
pub use node_config::NodeConfig;
pub use service_accounts::{Role, ServiceAccountRule, ServiceAccountsFile};
pub use tuning::{Tuning, TuningOverrides};
