//! Wire format of the internal Raft RPC: postcard bodies, the cluster token as a bearer
//! token, snapshot metadata in headers. Shared by the client (`network`) and server
//! (`rpc_server`) halves so they cannot drift apart.

use base64::Engine;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Path of AppendEntries.
pub const PATH_APPEND: &str = "/raft/append";
/// Path of RequestVote.
pub const PATH_VOTE: &str = "/raft/vote";
/// Path of the pre-vote round.
pub const PATH_PRE_VOTE: &str = "/raft/pre-vote";
/// Path of leadership transfer.
pub const PATH_TRANSFER_LEADER: &str = "/raft/transfer-leader";
/// Path of the streamed snapshot.
pub const PATH_SNAPSHOT: &str = "/raft/snapshot";
/// Path where a follower asks the leader for a read index.
pub const PATH_READ_INDEX: &str = "/raft/read-index";
/// Path (followed by `/{id}`) where a starting node with an empty data directory asks a peer
/// whether the group already counts on that id (see `crate::lost_member`).
pub const PATH_MEMBER_PROGRESS: &str = "/raft/member-progress";

/// Answer of [`PATH_MEMBER_PROGRESS`] (JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberProgress {
    /// The answering node is the leader (only a leader tracks replication).
    pub leader: bool,
    /// The last log index the leader knows the member to hold (it acknowledged it).
    pub matched: Option<u64>,
    /// An admin allowed this member to rejoin with empty data (`/cluster/members/{id}/rejoin`);
    /// consumed by this answer.
    pub rejoin_allowed: bool,
}

/// Header carrying the sender's vote with a snapshot (base64 JSON).
pub const HEADER_VOTE: &str = "x-confman-vote";
/// Header carrying the snapshot manifest (base64 JSON).
pub const HEADER_MANIFEST: &str = "x-confman-snapshot-manifest";
/// Media type of postcard bodies.
pub const CONTENT_TYPE: &str = "application/x-confman-raft";

/// Errors decoding wire data.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// A postcard body could not be decoded.
    #[error("malformed body: {0}")]
    Body(#[from] postcard::Error),
    /// A header could not be decoded.
    #[error("malformed header {0}: {1}")]
    Header(&'static str, String),
}

/// Encodes a body (postcard: compact, and values stay raw bytes).
pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, WireError> {
    Ok(crate::store::codec::to_sized_vec(v)?)
}

/// Decodes a body written by [`encode`].
pub fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, WireError> {
    Ok(postcard::from_bytes(b)?)
}

/// Encodes a value for a header (base64url of JSON: always visible ASCII).
pub fn header_encode<T: Serialize>(name: &'static str, v: &T) -> Result<String, WireError> {
    let json = serde_json::to_vec(v).map_err(|e| WireError::Header(name, e.to_string()))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json))
}

/// Decodes a header value written by `header_encode`.
pub fn header_decode<T: DeserializeOwned>(name: &'static str, v: &str) -> Result<T, WireError> {
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(v)
        .map_err(|e| WireError::Header(name, e.to_string()))?;
    serde_json::from_slice(&json).map_err(|e| WireError::Header(name, e.to_string()))
}

/// Answer of the read-index RPC: the index a linearizable read must wait for.
#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize)]
pub struct ReadIndex {
    /// Log index that must be applied before reading.
    pub index: u64,
}
