//! The openraft type configuration and aliases used across the adapter module.

use crate::command::{Command, CommandOutcome};

openraft::declare_raft_types!(
    /// Confman's Raft type configuration: commands in, outcomes out, nodes addressed by URL.
    pub TypeConfig:
        D = Command,
        R = CommandOutcome,
        NodeId = u64,
        Node = openraft::BasicNode,
);

/// Raft node id: fixed for a data directory, never reused for another member.
pub type NodeId = u64;
/// A node's address record as kept in the membership (`addr` is its advertised base URL).
pub type Node = openraft::BasicNode;
/// Log id (term + leader + index).
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
/// A node's vote (term, candidate, committed), persisted before it is sent.
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
/// A log entry: its log id and a `Command` (or a blank or membership entry).
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
/// Membership with the log id that introduced it.
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
/// Snapshot metadata: the last log id and the membership the snapshot covers.
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
/// The Raft handle with Confman's state machine.
pub type Raft = openraft::Raft<TypeConfig, super::state_machine::StateMachine>;
/// A snapshot whose data is a file on disk.
pub type FileSnapshot = openraft::alias::SnapshotOf<TypeConfig, super::snapshot::SnapshotFile>;
