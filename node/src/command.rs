//! The replicated commands (what a Raft log entry carries) and their outcomes. A command holds
//! everything apply needs (actor, timestamp chosen by the proposer), so applying it is
//! deterministic on every node and on every replay.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::Namespace;

/// A client change proposed through Raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// API key name recorded as the actor in audit and metadata.
    pub actor: String,
    /// Proposal time (proposer's clock), milliseconds since the epoch.
    pub at_ms: u64,
    /// What the command changes; applied by `store::apply` at the same index on every replica.
    pub op: Operation,
}

/// The changes a client can make.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Operation {
    /// Create a namespace or update its description/owner.
    PutNamespace {
        /// Namespace name (validated before proposing).
        name: String,
        /// Free text shown with the namespace; replaces the previous description.
        description: String,
        /// Who owns the namespace (free text: a team, a person); replaces the previous owner.
        owner: String,
    },
    /// Delete a namespace and every entry in it.
    DeleteNamespace {
        /// The namespace to delete with its entries and their history (each deletion is audited).
        name: String,
    },
    /// Write a new version of a key.
    PutEntry {
        /// Namespace (must exist).
        namespace: String,
        /// Key within the namespace (validated before proposing).
        key: String,
        /// Content type the writer declared, returned with the value on reads.
        content_type: String,
        /// The value, carried in the log as raw bytes (never JSON numbers).
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        /// Compare-and-set condition checked at apply time.
        precondition: Precondition,
    },
    /// Delete a key and its history.
    DeleteEntry {
        /// Namespace of the key.
        namespace: String,
        /// The key to delete (its history goes with it).
        key: String,
        /// Compare-and-set condition checked at apply time.
        precondition: Precondition,
    },
    /// Set how many superseded versions every key keeps. Cluster state, not a node flag: every
    /// replica trims history identically. (New variants go last: the log encodes the index.)
    SetHistoryDepth {
        /// Superseded versions kept per key.
        depth: u64,
        /// Only when no depth was set yet (the first leader's initial value).
        if_unset: bool,
    },
    /// Change cluster settings together (an admin's `PUT /api/v1/cluster/settings`): all or
    /// none of them apply.
    SetSettings {
        /// Superseded versions kept per key.
        history_depth: Option<u64>,
        /// Audit events kept per namespace (oldest whole revisions dropped first).
        audit_retention: Option<u64>,
    },
    /// A write carrying the client's idempotency key (`Idempotency-Key`): applied once; a
    /// repeat within the window gets the first application's outcome back (see
    /// `store::idempotency`). Only entry writes are keyed.
    Keyed {
        /// The client-generated key (validated before proposing).
        idempotency_key: String,
        /// The entry write (`PutEntry` or `DeleteEntry`) the key stands for.
        op: Box<Operation>,
    },
}

/// A condition on the current state of a key, evaluated when the command is applied, so
/// compare-and-set is linearizable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Precondition {
    /// No condition: the write applies whatever the key's state.
    None,
    /// The key must not exist (`If-None-Match: *`).
    Absent,
    /// The key must exist (`If-Match: *`).
    Exists,
    /// The key must be at exactly this version. Written by older nodes only: versions restart
    /// at 1 after a delete, so a version cannot tell two incarnations of a key apart.
    Version(u64),
    /// The key's last change must be this revision (`If-Match: "<revision>"`, the ETag).
    /// Revisions are log indexes, never reused, so a deleted and re-created key never matches
    /// an ETag of its earlier incarnation.
    Revision(u64),
}

/// What a precondition is checked against: the key's current version and the revision of its
/// last change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Current {
    /// Per-key version.
    pub version: u64,
    /// Revision (log index) of the last change.
    pub revision: u64,
}

impl Precondition {
    /// Whether the condition holds for a key in state `current` (`None`: absent).
    pub fn holds(self, current: Option<Current>) -> bool {
        match self {
            Precondition::None => true,
            Precondition::Absent => current.is_none(),
            Precondition::Exists => current.is_some(),
            Precondition::Version(v) => current.is_some_and(|c| c.version == v),
            Precondition::Revision(r) => current.is_some_and(|c| c.revision == r),
        }
    }
}

/// What applying a log entry produced; returned to the proposer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandOutcome {
    /// A blank or membership entry (no client command).
    Nothing,
    /// Namespace created or updated.
    NamespaceWritten {
        /// True when it did not exist before.
        created: bool,
        /// The stored namespace.
        namespace: Namespace,
    },
    /// Namespace deleted, with this many entries.
    NamespaceDeleted {
        /// Entries removed with it.
        entries_deleted: u64,
    },
    /// Entry written.
    EntryWritten {
        /// True when the key did not exist before.
        created: bool,
        /// The new version.
        version: u64,
        /// The revision (log index) of the write.
        revision: u64,
    },
    /// Entry deleted.
    EntryDeleted {
        /// The version that was deleted.
        version: u64,
        /// The revision (log index) of the delete.
        revision: u64,
    },
    /// The precondition did not hold; nothing changed.
    PreconditionFailed {
        /// The key's version at apply time.
        current_version: Option<u64>,
        /// The revision of the key's last change at apply time (its current ETag).
        current_revision: Option<u64>,
    },
    /// The namespace does not exist; nothing changed.
    NamespaceNotFound,
    /// The key does not exist; nothing changed.
    EntryNotFound,
    /// A cluster setting was applied.
    SettingApplied {
        /// The setting's value after this command (unchanged when `if_unset` found one).
        history_depth: u64,
    },
    /// A keyed write whose key was already used for the same write: this is the outcome of
    /// its first application; nothing changed now.
    Replayed(Box<CommandOutcome>),
    /// A keyed write whose key was already used for a different write; nothing changed.
    IdempotencyKeyReused,
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.op.describe(f)?;
        write!(f, " by {}", self.actor)
    }
}

impl Operation {
    fn describe(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operation::PutNamespace { name, .. } => write!(f, "put-namespace {name}"),
            Operation::DeleteNamespace { name } => write!(f, "delete-namespace {name}"),
            Operation::PutEntry { namespace, key, value, .. } => {
                write!(f, "put {namespace}/{key} ({} bytes)", value.len())
            }
            Operation::DeleteEntry { namespace, key, .. } => write!(f, "delete {namespace}/{key}"),
            Operation::SetHistoryDepth { depth, .. } => write!(f, "set history depth {depth}"),
            Operation::SetSettings { history_depth, audit_retention } => {
                write!(f, "set history depth {history_depth:?}, audit retention {audit_retention:?}")
            }
            Operation::Keyed { idempotency_key, op } => {
                op.describe(f)?;
                write!(f, " (idempotency key {idempotency_key})")
            }
        }
    }
}

impl Operation {
    /// The namespace this operation changes, if any (what watchers of it must hear about).
    pub fn namespace(&self) -> Option<&str> {
        match self {
            Operation::PutNamespace { name, .. } | Operation::DeleteNamespace { name } => Some(name),
            Operation::PutEntry { namespace, .. } | Operation::DeleteEntry { namespace, .. } => Some(namespace),
            Operation::SetHistoryDepth { .. } | Operation::SetSettings { .. } => None,
            Operation::Keyed { op, .. } => op.namespace(),
        }
    }
}

impl Command {
    /// Bytes this command occupies in the log, approximately (for byte budgets).
    pub fn approx_size(&self) -> usize {
        self.op.approx_size() + self.actor.len() + 32
    }
}

impl Operation {
    fn approx_size(&self) -> usize {
        match self {
            Operation::PutNamespace { name, description, owner } => name.len() + description.len() + owner.len(),
            Operation::DeleteNamespace { name } => name.len(),
            Operation::PutEntry { namespace, key, content_type, value, .. } => {
                namespace.len() + key.len() + content_type.len() + value.len()
            }
            Operation::DeleteEntry { namespace, key, .. } => namespace.len() + key.len(),
            Operation::SetHistoryDepth { .. } | Operation::SetSettings { .. } => 9,
            Operation::Keyed { idempotency_key, op } => idempotency_key.len() + op.approx_size(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preconditions() {
        let at = |version, revision| Some(Current { version, revision });
        assert!(Precondition::None.holds(None));
        assert!(Precondition::None.holds(at(3, 9)));
        assert!(Precondition::Absent.holds(None));
        assert!(!Precondition::Absent.holds(at(1, 2)));
        assert!(Precondition::Exists.holds(at(1, 2)));
        assert!(!Precondition::Exists.holds(None));
        assert!(Precondition::Version(2).holds(at(2, 7)));
        assert!(!Precondition::Version(2).holds(at(3, 7)));
        assert!(!Precondition::Version(2).holds(None));
        assert!(Precondition::Revision(7).holds(at(2, 7)));
        // A re-created key is at version 1 again, but at a new revision: no ABA.
        assert!(!Precondition::Revision(4).holds(at(1, 12)));
        assert!(!Precondition::Revision(7).holds(None));
    }

    #[test]
    fn value_is_encoded_compactly() -> Result<(), postcard::Error> {
        let cmd = Command {
            actor: "a".into(),
            at_ms: 1,
            op: Operation::PutEntry {
                namespace: "n".into(),
                key: "k".into(),
                content_type: "application/octet-stream".into(),
                value: vec![0xAB; 10_000],
                precondition: Precondition::None,
            },
        };
        let bytes = postcard::to_stdvec(&cmd)?;
        assert!(bytes.len() < 10_100, "encoded {} bytes for a 10000-byte value", bytes.len());
        let back: Command = postcard::from_bytes(&bytes)?;
        assert_eq!(back, cmd);
        Ok(())
    }
}
