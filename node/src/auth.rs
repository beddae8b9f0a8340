//! API-key authentication and role/namespace authorisation. Keys are stored as
//! SHA-256 digests and compared in constant time; roles nest admin ⊃ editor ⊃ viewer; a key may
//! be limited to namespace glob patterns.

use std::path::Path;

use serde::Deserialize;

use crate::cluster_token::ClusterToken;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub use confman_contract::Role;

pub mod service_account;
pub mod token_review;

/// A role over some namespaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The role held.
    pub role: Role,
    /// Namespace glob patterns it applies to.
    pub namespaces: Vec<String>,
}

impl Grant {
    fn covers(&self, ns: &str) -> bool {
        self.namespaces.iter().any(|p| glob_match(p, ns))
    }
}

/// An authenticated caller: an API key holds one grant, a ServiceAccount one per rule that
/// names it (so a viewer rule over `*` and an editor rule over `team-*` stay separate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Key name or `system:serviceaccount:<ns>:<name>` (the actor in audit records).
    pub name: String,
    /// What it may do.
    pub grants: Vec<Grant>,
    /// Until when the credential is known to be good (a ServiceAccount token: its expiry, or
    /// the end of the cache period after which the API server is asked again); None for an
    /// API key. A long-lived request (a watch) ends then, and the client reconnects with a
    /// credential that is checked again.
    pub valid_until: Option<std::time::Instant>,
}

impl Principal {
    fn single(name: &str, role: Role, namespaces: Vec<String>) -> Principal {
        Principal { name: name.into(), grants: vec![Grant { role, namespaces }], valid_until: None }
    }

    /// The strongest role held anywhere.
    pub fn role(&self) -> Option<Role> {
        self.grants.iter().map(|g| g.role).max()
    }

    /// Whether any grant covers namespace `ns` (every role can at least read).
    pub fn covers(&self, ns: &str) -> bool {
        self.grants.iter().any(|g| g.covers(ns))
    }

    /// Whether it is an admin over every namespace (pattern `*`): needed for cluster-wide
    /// administration.
    pub fn is_unscoped(&self) -> bool {
        self.grants.iter().any(|g| g.role == Role::Admin && g.namespaces.iter().any(|p| p == "*"))
    }
}

/// Why a request is not allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No key or an unknown key: 401.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// A ServiceAccount token that is not accepted, and why: 401.
    #[error("{0}")]
    BadToken(String),
    /// Known key without the needed role or namespace: 403.
    #[error("{0}")]
    Forbidden(String),
    /// A ServiceAccount token could not be checked (the API server did not answer): 503.
    #[error("{0}")]
    Unavailable(String),
}

/// Errors loading the keys file.
#[derive(Debug, thiserror::Error)]
pub enum KeysFileError {
    /// Read or parse failure.
    #[error("api keys file {path}: {reason}")]
    Invalid {
        /// The keys file as configured (`--api-keys-file`).
        path: String,
        /// What is wrong with it: the read error, the parse error, or the rule it breaks.
        reason: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    keys: Vec<KeyEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    name: String,
    key: Option<String>,
    sha256: Option<String>,
    roles: Vec<Role>,
    namespaces: Option<Vec<String>>,
}

#[derive(Debug, Clone)]
struct StoredKey {
    digest: [u8; 32],
    principal: Principal,
}

/// The set of accepted API keys.
#[derive(Debug, Clone)]
pub struct KeyRing {
    keys: Vec<StoredKey>,
}

fn digest(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

/// Constant-time byte comparison (length differences are not hidden; tokens are fixed-size
/// in practice and keys are compared through fixed-size digests).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

impl KeyRing {
    /// Parses a keys file (YAML; JSON is valid YAML).
    pub fn parse(text: &str, origin: &str) -> Result<KeyRing, KeysFileError> {
        let fail = |reason: String| KeysFileError::Invalid { path: origin.to_string(), reason };
        let file: KeysFile = serde_yaml_ng::from_str(text).map_err(|e| fail(e.to_string()))?;
        if file.keys.is_empty() {
            return Err(fail("no keys defined".into()));
        }
        let mut keys = Vec::new();
        for (i, k) in file.keys.into_iter().enumerate() {
            let digest = match (&k.key, &k.sha256) {
                (Some(key), None) if !key.is_empty() => digest(key.as_bytes()),
                (None, Some(hex_digest)) => {
                    let bytes = hex::decode(hex_digest.trim())
                        .map_err(|e| fail(format!("keys[{i}] ({}): sha256 is not hex: {e}", k.name)))?;
                    bytes
                        .try_into()
                        .map_err(|_| fail(format!("keys[{i}] ({}): sha256 must be 32 bytes (64 hex digits)", k.name)))?
                }
                _ => return Err(fail(format!("keys[{i}] ({}): exactly one of key or sha256 is required", k.name))),
            };
            let role = k
                .roles
                .iter()
                .copied()
                .max()
                .ok_or_else(|| fail(format!("keys[{i}] ({}): at least one role is required", k.name)))?;
            if k.name.is_empty() {
                return Err(fail(format!("keys[{i}]: name must not be empty")));
            }
            let namespaces = k.namespaces.unwrap_or_else(|| vec!["*".into()]);
            keys.push(StoredKey { digest, principal: Principal::single(&k.name, role, namespaces) });
        }
        Ok(KeyRing { keys })
    }

    /// Loads a keys file.
    pub fn load(path: &Path) -> Result<KeyRing, KeysFileError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| KeysFileError::Invalid { path: path.display().to_string(), reason: e.to_string() })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// A ring with a single unrestricted admin key (development mode).
    pub fn single_admin(name: &str, key: &str) -> KeyRing {
        KeyRing {
            keys: vec![StoredKey {
                digest: digest(key.as_bytes()),
                principal: Principal::single(name, Role::Admin, vec!["*".into()]),
            }],
        }
    }

    /// Adds every accepted cluster token as an unscoped admin credential named `cluster-token`:
    /// whoever holds one can already act as a member, and the operator manages membership with
    /// it (during a rotation the operator may present either).
    pub fn with_cluster_token(mut self, token: &ClusterToken) -> KeyRing {
        for d in token.accepted_digests() {
            self.keys.push(StoredKey {
                digest: *d,
                principal: Principal::single("cluster-token", Role::Admin, vec!["*".into()]),
            });
        }
        self
    }

    /// Finds the principal of a presented key; every stored digest is compared so timing does
    /// not reveal which key matched.
    pub fn authenticate(&self, presented: Option<&str>) -> Result<Principal, AuthError> {
        let presented = presented.ok_or(AuthError::Unauthenticated(KEY_REQUIRED))?;
        self.find(presented).ok_or(AuthError::Unauthenticated("the API key is not valid"))
    }

    fn find(&self, presented: &str) -> Option<Principal> {
        let d = digest(presented.as_bytes());
        let mut found = None;
        for k in &self.keys {
            if bool::from(k.digest.ct_eq(&d)) {
                found = Some(&k.principal);
            }
        }
        found.cloned()
    }
}

const KEY_REQUIRED: &str =
    "an API key or a ServiceAccount token is required (Authorization: Bearer <key> or X-Api-Key)";

/// API keys and, when configured, ServiceAccount tokens: what a request is authenticated
/// against. A presented credential that is a known key never reaches the API server.
#[derive(Debug)]
pub struct Authenticator {
    /// API keys and cluster tokens.
    pub keys: KeyRing,
    /// ServiceAccount tokens, when `--service-accounts-file` is set.
    pub service_accounts: Option<token_review::ServiceAccountAuth>,
}

impl Authenticator {
    /// Finds the principal of a presented credential: an API key, else a ServiceAccount token.
    pub async fn authenticate(&self, presented: Option<&str>) -> Result<Principal, AuthError> {
        let presented = presented.ok_or(AuthError::Unauthenticated(KEY_REQUIRED))?;
        if let Some(p) = self.keys.find(presented) {
            return Ok(p);
        }
        match &self.service_accounts {
            Some(sa) if service_account::looks_like_jwt(presented) => sa.authenticate(presented).await,
            _ => Err(AuthError::Unauthenticated("the API key is not valid")),
        }
    }
}

/// Checks that `p` holds `role` and, when `ns` is given, that one grant of at least that role
/// covers that namespace.
pub fn authorize(p: &Principal, role: Role, ns: Option<&str>) -> Result<(), AuthError> {
    let strong_enough = |g: &&Grant| g.role >= role;
    if !p.grants.iter().any(|g| strong_enough(&g)) {
        let held = p.role().map_or_else(|| "no role".to_string(), |r| format!("role {r:?}"));
        return Err(AuthError::Forbidden(format!("{:?} has {held}; this needs {role:?}", p.name)));
    }
    if let Some(ns) = ns
        && !p.grants.iter().filter(strong_enough).any(|g| g.covers(ns))
    {
        return Err(AuthError::Forbidden(format!("{:?} is not allowed {role:?} on namespace {ns:?}", p.name)));
    }
    Ok(())
}

/// Glob match with `*` (any run of characters) and `?` (one character).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
keys:
  - name: ops
    key: "admin-key"
    roles: [admin]
  - name: ci
    sha256: "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"
    roles: [viewer, editor]
    namespaces: ["payments.*"]
"#;

    #[test]
    fn roles_nest_and_namespaces_scope() -> Result<(), Box<dyn std::error::Error>> {
        let ring = KeyRing::parse(FILE, "test")?;
        let ops = ring.authenticate(Some("admin-key"))?;
        assert_eq!(ops.role(), Some(Role::Admin));
        assert!(authorize(&ops, Role::Viewer, Some("anything")).is_ok());
        // sha256("secret")
        let ci = ring.authenticate(Some("secret"))?;
        assert_eq!(ci.role(), Some(Role::Editor));
        assert!(authorize(&ci, Role::Editor, Some("payments.prod")).is_ok());
        assert!(matches!(authorize(&ci, Role::Editor, Some("billing")), Err(AuthError::Forbidden(_))));
        assert!(matches!(authorize(&ci, Role::Admin, Some("payments.prod")), Err(AuthError::Forbidden(_))));
        assert!(matches!(ring.authenticate(Some("nope")), Err(AuthError::Unauthenticated(_))));
        assert!(matches!(ring.authenticate(None), Err(AuthError::Unauthenticated(_))));
        Ok(())
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        for (text, needle) in [
            ("keys: []", "no keys"),
            ("keys:\n - name: a\n   roles: [admin]", "exactly one of key or sha256"),
            ("keys:\n - name: a\n   key: k\n   roles: []", "at least one role"),
            ("keys:\n - name: a\n   key: k\n   roles: [root]", "unknown variant"),
            ("keys:\n - name: a\n   sha256: abc\n   roles: [admin]", "sha256"),
            ("keys:\n - name: a\n   key: k\n   roles: [admin]\n   extra: 1", "unknown field"),
        ] {
            let err = KeyRing::parse(text, "f").err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(needle), "{text:?} -> {err}");
        }
    }

    #[test]
    fn globs() {
        assert!(glob_match("*", "x"));
        assert!(glob_match("payments.*", "payments.prod"));
        assert!(!glob_match("payments.*", "payments"));
        assert!(glob_match("a?c", "abc"));
        assert!(glob_match("*.prod", "x.y.prod"));
        assert!(!glob_match("*.prod", "x.dev"));
    }

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
