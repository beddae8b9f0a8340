//! Client errors; API errors carry the node's RFC 7807 problem.

/// An RFC 7807 problem returned by a node.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct Problem {
    /// HTTP status.
    #[serde(default)]
    pub status: u16,
    /// Problem type (a short machine-readable name).
    #[serde(default, rename = "type")]
    pub kind: String,
    /// Human-readable explanation.
    #[serde(default)]
    pub detail: String,
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
    /// The node refused the request.
    #[error("confman: {0}")]
    Api(Problem),
    /// Every attempt until the deadline answered 503.
    #[error("confman unavailable: {0}")]
    Unavailable(Problem),
    /// The HTTP exchange failed.
    #[error("transport: {0}")]
    Transport(reqwest::Error),
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
