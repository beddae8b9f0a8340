//! The Secrets the operator generates: the cluster token (the shared bearer token of
//! `/raft/*`) and, for a cluster without `spec.auth`, the admin API key. Each is generated
//! once; the reconcile step only creates one when absent, so neither is rotated by accident.
//!
//! A person rotates it on purpose by editing the value, which holds one token per line: the
//! first is the one presented (by members and the operator), every line is accepted. The
//! credentials hash in the pod template makes each edit roll the members one at a time.

use std::collections::BTreeMap;

use confman_contract::cluster_token::{TokenListError, parse_tokens};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use sha2::{Digest, Sha256};

use super::{BuildError, KEYS_FILE, admin_keys_name, meta, token_name};
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

/// A hash of the token Secret's value and the API keys file the members mount.
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

/// Key of the plain admin API key in the generated admin Secret (what a person reads with
/// `kubectl get secret <cluster>-admin -o jsonpath='{.data.admin-key}' | base64 -d`).
pub const ADMIN_KEY: &str = "admin-key";

/// Name of the generated admin key in the keys file (the actor in audit records).
pub const ADMIN_KEY_NAME: &str = "admin";

/// The keys file (`keys.yaml`) of the generated admin Secret: `key` as the one unrestricted
/// admin key. The node reads the same format from `spec.auth`'s Secret.
pub fn admin_keys_file(key: &str) -> String {
    format!("keys:\n  - name: {ADMIN_KEY_NAME}\n    key: \"{key}\"\n    roles: [admin]\n")
}

/// The admin key Secret holding `key`, plain and as the keys file the members mount. A person
/// may edit `keys.yaml` (add keys, restrict them); the operator never rewrites the Secret, and a
/// deleted one is generated anew (a new key: the members roll to it).
pub fn admin_keys_secret(c: &ConfmanCluster, key: &str) -> Result<Secret, BuildError> {
    Ok(Secret {
        metadata: meta(c, admin_keys_name(c))?,
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([
            (ADMIN_KEY.to_string(), ByteString(key.as_bytes().to_vec())),
            (KEYS_FILE.to_string(), ByteString(admin_keys_file(key).into_bytes())),
        ])),
        ..Secret::default()
    })
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
