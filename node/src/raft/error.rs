//! The errors of Raft operations, and the translation of openraft's errors into them (the API
//! layer maps them to HTTP statuses).

use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};

use super::types::{NodeId, TypeConfig};
use crate::store::StoreError;

/// Errors of Raft operations, mapped to HTTP statuses by the API layer.
#[derive(Debug, thiserror::Error)]
pub enum RaftNodeError {
    /// No leader is known right now (election in progress or quorum lost).
    #[error("no leader is currently known")]
    NoLeader,
    /// Another node leads; the request belongs there.
    #[error("node {leader_id} at {leader_addr} is the leader")]
    NotLeader {
        /// Id of the node that leads.
        leader_id: NodeId,
        /// The leader's advertised base URL, where the request can be forwarded.
        leader_addr: String,
    },
    /// The operation did not finish in time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// A proposal was lost track of after it may have been replicated (discarded by a leader
    /// change or a snapshot install, or Raft stopped): it may or may not be applied.
    #[error("the outcome of the write is unknown: {0}")]
    OutcomeUnknown(String),
    /// The request is invalid for the current membership.
    #[error("membership change refused: {0}")]
    Membership(String),
    /// Raft has stopped (shutdown or fatal storage error).
    #[error("raft has stopped: {0}")]
    Stopped(String),
    /// Talking to the leader failed.
    #[error("could not reach the leader: {0}")]
    Network(String),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The settings are unusable.
    #[error("invalid raft settings: {0}")]
    Config(String),
    /// The data directory is below its free-space reserve: nothing was proposed.
    #[error("insufficient storage: {0}")]
    NoSpace(String),
}

/// Raft stopped under an operation that changes nothing (a trigger, a wait).
pub(super) fn stopped<E: std::fmt::Display>(e: E) -> RaftNodeError {
    RaftNodeError::Stopped(e.to_string())
}

/// Translates the failure of a proposal (a client write or a membership change) made on node
/// `me`.
pub(super) fn from_write_error(me: NodeId, e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> RaftNodeError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => match (f.leader_id, f.leader_node) {
            (Some(id), Some(node)) if id != me => RaftNodeError::NotLeader { leader_id: id, leader_addr: node.addr },
            _ => RaftNodeError::NoLeader,
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => RaftNodeError::Membership(e.to_string()),
        RaftError::APIError(ClientWriteError::PreconditionFailed(e)) => RaftNodeError::Membership(e.to_string()),
        // openraft discards a pending proposal when a new leader overwrote it, but also when
        // a snapshot install purged it — then it may have been committed: outcome unknown.
        RaftError::APIError(ClientWriteError::LogEntryDiscarded(e)) => {
            tracing::info!("proposal discarded (leader change or snapshot install): {e}");
            RaftNodeError::OutcomeUnknown(e.to_string())
        }
        // Raft stopped with the proposal in flight: it may have been replicated.
        RaftError::Fatal(f) => RaftNodeError::OutcomeUnknown(format!("raft stopped: {f}")),
    }
}
