//! Client requests through Raft: proposing a command, and the barrier before a linearizable
//! read.

use std::sync::atomic::Ordering;
use std::time::Duration;

use openraft::ReadPolicy;
use openraft::error::RaftError;

use super::RaftNode;
use crate::command::{Command, CommandOutcome, Operation};
use crate::raft::error::{RaftNodeError, from_write_error, stopped};
use crate::store::blocking;

impl RaftNode {
    /// Proposes a command on this node, which must be the leader; returns the outcome and the
    /// revision (log index) it was applied at.
    pub async fn write(&self, cmd: Command) -> Result<(CommandOutcome, u64), RaftNodeError> {
        self.write_holding(cmd, (), Duration::ZERO).await
    }

    /// Like [`RaftNode::write`], keeping `hold` (a reservation of the write budget) until Raft
    /// has answered — past this call's timeout or a client that went away, since the command
    /// stays in Raft's queue and log either way — and waiting only what is left of the request
    /// timeout after `already_waited`.
    pub async fn write_holding<H: Send + 'static>(
        &self,
        cmd: Command,
        hold: H,
        already_waited: Duration,
    ) -> Result<(CommandOutcome, u64), RaftNodeError> {
        // A leader below its disk reserve proposes nothing: its own log write could fail, and
        // openraft stops on a failed log write (`crate::disk_space`). Nor does one whose
        // followers refuse entries so that no majority can store the write: it could not
        // commit, and the client would wait for an unknown outcome. (A node that is not the
        // leader leaves the answer to openraft: not the leader.)
        if self.raft.is_leader() {
            self.check_room()?;
        }
        if !self.settings_recorded.load(Ordering::Acquire) {
            self.record_initial_settings().await?;
        }
        let raft = self.raft.clone();
        let proposal = tokio::spawn(async move {
            let answer = raft.client_write(cmd).await;
            drop(hold);
            answer
        });
        let timeout = self.request_timeout.saturating_sub(already_waited);
        match tokio::time::timeout(timeout, proposal).await {
            Err(_) => Err(RaftNodeError::Timeout(self.request_timeout)),
            // The command may be in the log already: the outcome is not known.
            Ok(Err(join)) => Err(RaftNodeError::OutcomeUnknown(format!("the proposal task ended: {join}"))),
            Ok(Ok(Ok(resp))) => Ok((resp.data, resp.log_id.index)),
            Ok(Ok(Err(e))) => Err(from_write_error(self.id, e)),
        }
    }

    /// Makes sure the cluster settings are in the log before this leader's first client write:
    /// the first leader of a new cluster proposes its own (conditionally, `if_unset`).
    async fn record_initial_settings(&self) -> Result<(), RaftNodeError> {
        let db = self.db.clone();
        let stored = blocking(move || crate::store::apply::stored_history_depth(&db)).await?;
        if let Some(d) = stored
            && d != self.initial_history_depth
        {
            tracing::warn!(
                cluster = d,
                flag = self.initial_history_depth,
                "--history-depth differs from the cluster's setting, which applies (change it with PUT /api/v1/cluster/settings)"
            );
        }
        if stored.is_none() {
            let cmd = Command {
                actor: "cluster-bootstrap".into(),
                at_ms: crate::model::now_ms(),
                op: Operation::SetHistoryDepth { depth: self.initial_history_depth, if_unset: true },
            };
            match tokio::time::timeout(self.request_timeout, self.raft.client_write(cmd)).await {
                Err(_) => return Err(RaftNodeError::Timeout(self.request_timeout)),
                Ok(Err(e)) => return Err(from_write_error(self.id, e)),
                Ok(Ok(r)) => tracing::info!(outcome = ?r.data, "cluster settings recorded"),
            }
        }
        self.settings_recorded.store(true, Ordering::Release);
        Ok(())
    }

    /// Waits until this node may serve a linearizable read: the leader confirms its leadership
    /// with a quorum (read index); a follower asks the leader for the read index and waits
    /// until it has applied it. Returns the applied revision the read will see at least.
    pub async fn linearizable_barrier(&self) -> Result<u64, RaftNodeError> {
        let index = if self.raft.is_leader() {
            let fut = self.raft.ensure_linearizable(ReadPolicy::ReadIndex);
            match tokio::time::timeout(self.request_timeout, fut).await {
                Err(_) => return Err(RaftNodeError::Timeout(self.request_timeout)),
                Ok(Ok(read_log_id)) => read_log_id.index(),
                Ok(Err(RaftError::APIError(e))) => {
                    tracing::debug!("read index refused: {e}");
                    return Err(self.not_leader());
                }
                Ok(Err(RaftError::Fatal(f))) => return Err(stopped(f)),
            }
        } else {
            match self.leader_or_wait().await {
                Some((leader_id, addr)) if leader_id != self.id => self.read_index.fetch(&addr).await?,
                _ => return Err(RaftNodeError::NoLeader),
            }
        };
        let mut rx = self.applied_rx.clone();
        let wait = rx.wait_for(|applied| *applied >= index);
        match tokio::time::timeout(self.request_timeout, wait).await {
            Err(_) => Err(RaftNodeError::Timeout(self.request_timeout)),
            Ok(Err(_)) => Err(RaftNodeError::Stopped("state machine closed".into())),
            Ok(Ok(applied)) => Ok(*applied),
        }
    }
}
