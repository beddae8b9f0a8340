//! Client errors; API errors carry the node's RFC 7807 problem.

/// An RFC 7807 problem returned by a node.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct Problem {
    /// HTTP status as the problem body states it (0 when the body has none).
    #[serde(default)]
    pub status: u16,
    /// Problem type (a short machine-readable name).
    #[serde(default, rename = "type")]
    pub kind: String,
    /// Human-readable explanation.
    #[serde(default)]
    pub detail: String,
    /// The node id the problem is about, when the node names one (e.g. `data-lost`).
    #[serde(default, rename = "nodeId")]
    pub node_id: Option<u64>,
}

impl Problem {
    /// Reads the problem body of a failed response (a bare status when the body is not one).
    pub async fn read(resp: reqwest::Response) -> Problem {
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let mut p: Problem =
            serde_json::from_str(&text).unwrap_or_else(|_| Problem { detail: text.clone(), ..Problem::default() });
        p.status = status;
        p
    }
}

impl Problem {
    /// Whether the node says the outcome of the request is unknown (it timed out waiting for
    /// the cluster, or lost the leader mid-request): the change may or may not have been made.
    pub fn outcome_unknown(&self) -> bool {
        self.kind.ends_with("/timeout") || self.kind == "timeout"
    }
}

impl Problem {
    /// The node that answered lost its volume: it refuses to start under its id (which has
    /// held a place in the group) and must be replaced by a member with a fresh id.
    pub fn data_lost(&self) -> bool {
        self.kind.ends_with("/data-lost") || self.kind == "data-lost"
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.kind, self.detail)
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The client was built without endpoints.
    #[error("no endpoints configured")]
    NoEndpoints,
    /// The token file (a projected ServiceAccount token) could not be read.
    #[error("credential file {path}: {reason}")]
    Credential {
        /// The token file.
        path: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// The node refused the request.
    #[error("confman: {0}")]
    Api(Problem),
    /// Every attempt until the deadline answered 503.
    #[error("confman unavailable: {0}")]
    Unavailable(Problem),
    /// The HTTP exchange failed.
    #[error("transport: {0}")]
    Transport(reqwest::Error),
    /// A conditional write or membership change was sent but never answered: it may or may not
    /// have been applied. Read the current state before deciding to repeat it.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// The response was not what the API documents.
    #[error("unexpected response: {0}")]
    Decode(reqwest::Error),
}

impl Error {
    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api(p) | Error::Unavailable(p) => Some(p.status),
            _ => None,
        }
    }
}
