//! Response types of the node API used by clients.

use serde::Deserialize;

/// A value with its version (per key) and revisions (cluster-wide).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The raw value.
    pub value: bytes::Bytes,
    /// Version of the entry (1 on create, +1 per write; restarts after a delete).
    pub version: u64,
    /// Revision of the entry's last change (its ETag): what compare-and-set compares.
    pub mod_revision: u64,
    /// Cluster revision when read.
    pub revision: u64,
}

/// Result of a write.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct WriteResult {
    /// New version of the entry.
    pub version: u64,
    /// Revision of the write.
    pub revision: u64,
}

/// Entry metadata in a listing.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EntryMeta {
    /// Key.
    pub key: String,
    /// Version.
    pub version: u64,
    /// Size in bytes.
    pub size: u64,
}

/// One page of a listing.
#[derive(Debug, Clone, Deserialize)]
pub struct Page {
    /// Entries.
    pub items: Vec<EntryMeta>,
    /// Token for the next page.
    #[serde(rename = "continue")]
    pub continue_token: Option<String>,
}

/// A member of the Raft group.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Member {
    /// Node id.
    pub id: u64,
    /// URL.
    pub address: String,
    /// `voter` or `learner`.
    pub role: String,
}

/// `GET /api/v1/cluster` (the fields clients use).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    /// The answering node.
    pub node_id: u64,
    /// Its role: leader, follower, candidate, learner.
    pub role: String,
    /// Current leader.
    pub leader_id: Option<u64>,
    /// Current term.
    pub term: u64,
    /// Last log index.
    pub last_log_index: Option<u64>,
    /// Committed index.
    pub commit_index: Option<u64>,
    /// Applied index.
    pub applied_index: Option<u64>,
    /// Members of the current configuration.
    pub members: Vec<Member>,
}

impl ClusterStatus {
    /// Whether `id` is a voter.
    pub fn is_voter(&self, id: u64) -> bool {
        self.members.iter().any(|m| m.id == id && m.role == "voter")
    }

    /// Whether `id` is a member (voter or learner).
    pub fn is_member(&self, id: u64) -> bool {
        self.members.iter().any(|m| m.id == id)
    }
}
