//! The `reqwest` client setup shared by the node (its Raft transport and forwarded writes) and
//! `confman-client`. It lives in its own crate so the node does not depend on the client.

use std::sync::atomic::{AtomicBool, Ordering};

/// Makes ring the process-wide rustls provider, which reqwest needs before it builds any
/// client (this workspace avoids aws-lc's C build). Idempotent; [`http_builder`] and
/// [`build_http`] call it, and so should code that builds its own `reqwest::Client`.
pub fn install_crypto_provider() {
    // Err means a provider is installed already, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A `reqwest` client builder that is safe to build (crypto provider installed), without
/// proxies: nodes are addressed directly, and an environment proxy must not relay Raft
/// traffic or calls made to a particular node.
pub fn http_builder() -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder().no_proxy()
}

/// Builds a client from `base` that verifies https servers against `cas` only, or, without
/// CAs, against the system's roots. A system without roots (a minimal container image) still
/// gets a working client: plain http works, and https servers fail verification with a clear
/// error instead of the client failing to build (or the node failing to start).
pub fn build_http(
    base: impl Fn() -> reqwest::ClientBuilder,
    cas: &[reqwest::Certificate],
) -> Result<reqwest::Client, reqwest::Error> {
    install_crypto_provider();
    if !cas.is_empty() {
        return base().tls_certs_only(cas.iter().cloned()).build();
    }
    // Once the system's roots failed to load, later clients skip straight to the fallback
    // (and the warning is logged once per process).
    static NO_SYSTEM_ROOTS: AtomicBool = AtomicBool::new(false);
    if !NO_SYSTEM_ROOTS.load(Ordering::Relaxed) {
        match base().build() {
            Ok(client) => return Ok(client),
            Err(e) => {
                if !NO_SYSTEM_ROOTS.swap(true, Ordering::Relaxed) {
                    tracing::warn!("no system CA roots ({e}); https servers need an explicitly trusted CA");
                }
            }
        }
    }
    let no_roots =
        rustls::ClientConfig::builder().with_root_certificates(rustls::RootCertStore::empty()).with_no_client_auth();
    base().use_preconfigured_tls(no_roots).build()
}
