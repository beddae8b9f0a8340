//! The cluster token Secret: the shared bearer token of `/raft/*`. Generated once; the
//! reconcile step only creates it when absent, so it is never rotated by accident.
//!
//! A person rotates it on purpose by editing the value, which holds one token per line: the
//! first is the one presented (by members and the operator), every line is accepted. The
//! credentials hash in the pod template makes each edit roll the members one at a time.

use std::collections::BTreeMap;

use confman_contract::cluster_token::{TokenListError, parse_tokens};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use sha2::{Digest, Sha256};

use super::{BuildError, meta, token_name};
use crate::crd::ConfmanCluster;

/// Key of the token inside the Secret (and file name in the pod).
pub const TOKEN_KEY: &str = "token";

/// A fresh random token: 32 bytes from the OS-seeded generator, hex-encoded.
pub fn generate_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// The token presented to the members: the first of the Secret's lines, checked by the rules
/// the node reads its token file with (a value the node would refuse never reaches a pod).
pub fn presented_token(value: &str) -> Result<&str, TokenListError> {
    parse_tokens(value)?.first().copied().ok_or(TokenListError::Empty)
}

/// Pod-template annotation carrying [`credentials_hash`]: a change of the token or of the API
/// keys restarts the members one at a time (the node reads both at start).
pub const CREDENTIALS_HASH_ANNOTATION: &str = "confman.io/credentials-hash";

/// A hash of the token Secret's value and the API keys file (when `spec.auth` names one).
/// Only the hash reaches the pod template, never the secrets.
pub fn credentials_hash(token: &[u8], api_keys: Option<&[u8]>) -> String {
    let mut h = Sha256::new();
    // Length-prefixed, so moving bytes from one part to the other changes the hash.
    for part in [Some(token), api_keys] {
        match part {
            Some(bytes) => {
                h.update((bytes.len() as u64).to_be_bytes());
                h.update(bytes);
            }
            None => h.update(u64::MAX.to_be_bytes()),
        }
    }
    hex::encode(&h.finalize()[..16])
}

/// The token Secret holding `token`.
pub fn token_secret(c: &ConfmanCluster, token: &str) -> Result<Secret, BuildError> {
    Ok(Secret {
        metadata: meta(c, token_name(c))?,
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(TOKEN_KEY.to_string(), ByteString(token.as_bytes().to_vec()))])),
        ..Secret::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::PayloadClass;
    use crate::fixtures::cluster;

    #[test]
    fn tokens_are_long_and_distinct() {
        let (a, b) = (generate_token(), generate_token());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
    }

    #[test]
    fn secret_holds_the_given_token() -> Result<(), BuildError> {
        let s = token_secret(&cluster(3, PayloadClass::Small), "abc")?;
        assert_eq!(s.metadata.name.as_deref(), Some("config-token"));
        assert_eq!(s.data.unwrap_or_default().get(TOKEN_KEY).map(|b| b.0.clone()), Some(b"abc".to_vec()));
        Ok(())
    }

    #[test]
    fn the_presented_token_is_the_first_line() {
        assert_eq!(presented_token("abc"), Ok("abc"));
        assert_eq!(presented_token("\n  new \nold\n"), Ok("new"));
        assert_eq!(presented_token(" \n"), Err(TokenListError::Empty));
        assert_eq!(presented_token("new\nold x"), Err(TokenListError::NotAToken { line: 2 }));
    }

    #[test]
    fn the_credentials_hash_moves_with_the_token_and_the_keys() {
        let base = credentials_hash(b"t1", Some(b"keys"));
        assert_eq!(base, credentials_hash(b"t1", Some(b"keys")));
        assert_ne!(base, credentials_hash(b"t2", Some(b"keys")));
        assert_ne!(base, credentials_hash(b"t1", Some(b"keys2")));
        assert_ne!(base, credentials_hash(b"t1", None));
        assert_ne!(credentials_hash(b"ab", Some(b"c")), credentials_hash(b"a", Some(b"bc")));
        assert!(!base.contains("t1") && base.len() == 32);
    }
}
