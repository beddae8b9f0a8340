//! Everything that touches openraft lives under this module, so a library upgrade stays local.
//! The rest of the node sees `RaftNode`: propose a command, wait for a linearizable read
//! point, inspect and change the cluster, and the `/raft/*` router.
//!
//! Modules by job:
//! - `node` — `RaftNode`: start, stop, status; `node::requests` (writes, read barrier) and
//!   `node::membership` (members and leadership);
//! - `settings` (what a node needs to run Raft, and openraft's configuration from it),
//!   `error` (`RaftNodeError`), `status` (the cluster view the API shows);
//! - storage, as in openraft's examples: `log_store` (log + group commit), `state_machine`
//!   (apply), `snapshot` (file snapshots), `compaction` (when to snapshot, how much log to
//!   keep), `types` (type configuration);
//! - transport: `network` (client half), `rpc_server` (server half, `/raft/*`), `wire`
//!   (paths and encoding both halves share), `read_index` (a follower asking the leader);
//! - `failover` (leader liveness and the election watchdog), `rejoin` (a lost member's way
//!   back).

mod compaction;
mod error;
mod failover;
pub mod log_store;
pub mod network;
mod node;
mod peer_room;
mod read_index;
mod rejoin;
pub mod rpc_server;
mod settings;
pub mod snapshot;
pub mod state_machine;
mod status;
pub mod types;
pub mod wire;

pub use self::error::RaftNodeError;
pub use self::failover::LeaderContact;
pub use self::node::{READY_APPLY_LAG, RaftNode};
pub use self::rejoin::RejoinAllowances;
pub use self::settings::RaftSettings;
pub use self::status::{ClusterStatus, MemberStatus};
pub use self::types::NodeId;
