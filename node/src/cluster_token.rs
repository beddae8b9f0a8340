//! The cluster token: the shared secret members present to each other on `/raft/*` (and the
//! operator presents as an unscoped admin).
//!
//! A token file holds one token per line. The first line is the token this node presents; every
//! line is accepted. That is what makes a rotation safe while members restart one at a time: a
//! member that already presents the new token must be accepted by one that has not restarted
//! yet, so the new token is first added as accepted everywhere (`old` then `new`), then made the
//! presented one (`new` then `old`), and the old line is dropped last.

use confman_contract::cluster_token::{TokenListError, parse_tokens};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A token file the node cannot use.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("cluster-token-file {path} {reason}")]
pub struct TokenFileError {
    /// The file.
    pub path: String,
    /// What is wrong with it.
    pub reason: TokenListError,
}

/// The token this node presents and the digests of every token it accepts.
#[derive(Clone)]
pub struct ClusterToken {
    presented: String,
    accepted: Vec<[u8; 32]>,
}

impl std::fmt::Debug for ClusterToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterToken").field("accepted", &self.accepted.len()).finish_non_exhaustive()
    }
}

impl ClusterToken {
    /// Parses a token file's text; blank lines and surrounding whitespace are ignored.
    /// `origin` names the file in errors.
    pub fn parse(text: &str, origin: &str) -> Result<ClusterToken, TokenFileError> {
        let tokens = parse_tokens(text).map_err(|reason| TokenFileError { path: origin.to_string(), reason })?;
        let presented = tokens.first().map(|t| t.to_string()).unwrap_or_default();
        Ok(ClusterToken { presented, accepted: tokens.iter().map(|t| digest(t)).collect() })
    }

    /// A single token, presented and accepted (a generated development token).
    pub fn single(token: &str) -> ClusterToken {
        ClusterToken { presented: token.to_string(), accepted: vec![digest(token)] }
    }

    /// The token sent to peers.
    pub fn presented(&self) -> &str {
        &self.presented
    }

    /// Digests of the accepted tokens (for the API key ring).
    pub fn accepted_digests(&self) -> &[[u8; 32]] {
        &self.accepted
    }

    /// Whether `presented` is one of the accepted tokens; every digest is compared, so timing
    /// does not reveal which one matched.
    pub fn accepts(&self, presented: &str) -> bool {
        let d = digest(presented);
        self.accepted.iter().fold(false, |found, a| found | bool::from(a.ct_eq(&d)))
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_line_is_presented_and_every_line_is_accepted() -> Result<(), TokenFileError> {
        let t = ClusterToken::parse("  new-token \n\nold-token\n", "/t")?;
        assert_eq!(t.presented(), "new-token");
        assert!(t.accepts("new-token"));
        assert!(t.accepts("old-token"));
        assert!(!t.accepts("other"));
        assert!(!t.accepts(""));
        assert_eq!(t.accepted_digests().len(), 2);
        Ok(())
    }

    #[test]
    fn a_single_token_file_accepts_only_itself() -> Result<(), TokenFileError> {
        let t = ClusterToken::parse("abc\n", "/t")?;
        assert_eq!(t.presented(), "abc");
        assert!(t.accepts("abc"));
        assert!(!t.accepts("abcd"));
        Ok(())
    }

    #[test]
    fn bad_token_files_are_refused_naming_the_file() {
        let err = |text: &str| ClusterToken::parse(text, "/etc/token").err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(err(" \n"), "cluster-token-file /etc/token holds no token");
        assert!(err("good\nwith space").contains("/etc/token line 2 is not a token"), "{}", err("good\nwith space"));
        assert!(err("a\nb\nc\nd\ne").contains("holds 5 tokens"), "{}", err("a\nb\nc\nd\ne"));
    }
}
