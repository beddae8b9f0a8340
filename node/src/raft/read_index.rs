//! The follower's half of a linearizable read: asks the leader for its read index over the
//! Raft transport (the leader's half is `rpc_server::read_index`).

use std::sync::Arc;
use std::time::Duration;

use super::error::RaftNodeError;
use super::wire;

/// Asks a leader for the index a read must wait for, authenticated with the cluster token.
pub(super) struct ReadIndexClient {
    pub http: reqwest::Client,
    pub token: Arc<str>,
    pub timeout: Duration,
}

impl ReadIndexClient {
    /// The read index of the leader at `leader_addr`. A leader that has lost its leadership
    /// meanwhile answers with an error, reported as no leader so that clients retry.
    pub async fn fetch(&self, leader_addr: &str) -> Result<u64, RaftNodeError> {
        let resp = self
            .http
            .post(format!("{}{}", leader_addr.trim_end_matches('/'), wire::PATH_READ_INDEX))
            .bearer_auth(&*self.token)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| RaftNodeError::Network(e.to_string()))?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| RaftNodeError::Network(e.to_string()))?;
        if !status.is_success() {
            return Err(RaftNodeError::Network(format!("read index: HTTP {status}")));
        }
        let reply: Result<wire::ReadIndex, String> =
            wire::decode(&body).map_err(|e| RaftNodeError::Network(e.to_string()))?;
        reply.map(|r| r.index).map_err(|_| RaftNodeError::NoLeader)
    }
}
