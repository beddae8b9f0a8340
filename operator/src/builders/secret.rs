//! The cluster token Secret: the shared bearer token of `/raft/*`. Generated once; the
//! reconcile step only creates it when absent, so it is never rotated by accident.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;

use super::{BuildError, meta, token_name};
use crate::crd::ConfmanCluster;

/// Key of the token inside the Secret (and file name in the pod).
pub const TOKEN_KEY: &str = "token";

/// A fresh random token: 32 bytes from the OS-seeded generator, hex-encoded.
pub fn generate_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
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
    use crate::builders::fixtures::cluster;
    use crate::crd::PayloadClass;

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
}
