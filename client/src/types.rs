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
    /// The key, without its namespace.
    pub key: String,
    /// The entry's per-key version (1 on create, +1 per write).
    pub version: u64,
    /// Size of the value in bytes (listings carry no values unless asked).
    pub size: u64,
}

/// One page of a listing.
#[derive(Debug, Clone, Deserialize)]
pub struct Page {
    /// The entries of this page, in key order.
    pub items: Vec<EntryMeta>,
    /// Pass to the next `list` call to continue after this page; `None` on the last page.
    #[serde(rename = "continue")]
    pub continue_token: Option<String>,
}

/// A member of the Raft group.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Member {
    /// Raft node id (never reused for another member).
    pub id: u64,
    /// The member's advertised base URL, where it serves the API.
    pub address: String,
    /// `voter` or `learner`.
    pub role: String,
}

/// `GET /api/v1/cluster` (the fields clients use).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    /// Id of the node that answered (each node reports its own view).
    pub node_id: u64,
    /// Its role: leader, follower, candidate, learner.
    pub role: String,
    /// The leader this node knows of; `None` during an election.
    pub leader_id: Option<u64>,
    /// Raft term; a rising term means elections.
    pub term: u64,
    /// Last log index this node holds.
    pub last_log_index: Option<u64>,
    /// Highest index this node knows to be committed.
    pub commit_index: Option<u64>,
    /// Highest index this node has applied: a member has caught up when it reaches the
    /// leader's commit index.
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
