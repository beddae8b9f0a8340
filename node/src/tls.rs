//! TLS (rustls, ring provider) for the node's one listener — the client API and Raft RPC share
//! it — and the CAs the node's outgoing calls (Raft RPC, forwarded writes) trust; the client
//! those calls use is built by `confman-http`. PEM files in, rustls configs out; the handshakes themselves are run by the
//! listener (`crate::listener`), off its accept loop and under its connection limits.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Why TLS could not be set up; names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{setting} {path}: {reason}")]
    File {
        /// The setting that named the file.
        setting: &'static str,
        /// The file as configured.
        path: PathBuf,
        /// What is wrong with it: unreadable, not PEM, or no certificate or key in it.
        reason: String,
    },
    /// rustls refused the certificate or key.
    #[error("tls-cert-file/tls-key-file: {0}")]
    Config(#[from] rustls::Error),
}

fn certs(setting: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let fail = |reason: String| TlsError::File { setting, path: path.to_path_buf(), reason };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| fail(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(e.to_string()))?;
    if certs.is_empty() {
        return Err(fail("no PEM certificate in the file".into()));
    }
    Ok(certs)
}

/// The listener's certificate and key, re-read when their files change: cert-manager renews
/// certificates in place and the kubelet swaps the mounted Secret's files, so a node that runs
/// for months must serve the renewed certificate without a restart. A pair that does not load
/// (half-written, key not matching) keeps the previous one in service.
#[derive(Debug)]
pub struct CertReloader {
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    /// The files' bytes the served key was built from, and the key.
    current: RwLock<(Vec<u8>, Arc<CertifiedKey>)>,
}

impl CertReloader {
    /// Loads the pair; fails (naming the file) when it is unusable.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Arc<CertReloader>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (bytes, key) = read_pair(cert_file, key_file, &provider)?;
        Ok(Arc::new(CertReloader {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            provider,
            current: RwLock::new((bytes, Arc::new(key))),
        }))
    }

    /// Re-reads the files; `Ok(true)` when a different certificate is served from now on.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let read = |p: &Path, setting| {
            std::fs::read(p).map_err(|e| TlsError::File { setting, path: p.to_path_buf(), reason: e.to_string() })
        };
        let mut bytes = read(&self.cert_file, "tls-cert-file")?;
        bytes.extend(read(&self.key_file, "tls-key-file")?);
        if self.current.read().is_ok_and(|c| c.0 == bytes) {
            return Ok(false);
        }
        let (bytes, key) = read_pair(&self.cert_file, &self.key_file, &self.provider)?;
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        *current = (bytes, Arc::new(key));
        Ok(true)
    }

    /// The certificate chain served now (end-entity first).
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.current.read().map(|c| c.1.cert.clone()).unwrap_or_default()
    }

    /// Re-reads the files every `every` until the task is aborted; logs rotations and failures.
    pub async fn watch(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            match self.reload() {
                Ok(true) => tracing::info!(cert = %self.cert_file.display(), "TLS certificate reloaded"),
                Ok(false) => {}
                Err(e) => tracing::warn!("TLS certificate not reloaded, the previous one stays in service: {e}"),
            }
        }
    }
}

impl ResolvesServerCert for CertReloader {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.1.clone())
    }
}

/// Reads and checks a certificate/key pair; returns the files' bytes and the key.
fn read_pair(
    cert_file: &Path,
    key_file: &Path,
    provider: &CryptoProvider,
) -> Result<(Vec<u8>, CertifiedKey), TlsError> {
    let fail = |setting, path: &Path, reason: String| TlsError::File { setting, path: path.to_path_buf(), reason };
    let mut bytes = std::fs::read(cert_file).map_err(|e| fail("tls-cert-file", cert_file, e.to_string()))?;
    bytes.extend(std::fs::read(key_file).map_err(|e| fail("tls-key-file", key_file, e.to_string()))?);
    let chain = certs("tls-cert-file", cert_file)?;
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| fail("tls-key-file", key_file, e.to_string()))?;
    let certified = CertifiedKey::from_der(chain, key, provider)?;
    Ok((bytes, certified))
}

/// The server config for the listener: the certificate from `reloader`; HTTP/2 and HTTP/1.1
/// offered by ALPN.
pub fn server_config(reloader: Arc<CertReloader>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(reloader.provider.clone())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(reloader);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The CA certificates (PEM bundle) outgoing calls trust, for reqwest.
pub fn trusted_cas(ca_file: &Path) -> Result<Vec<reqwest::Certificate>, TlsError> {
    trusted_cas_of("tls-ca-file", ca_file)
}

/// The CA certificates in `ca_file`, which `setting` names (for the error).
pub fn trusted_cas_of(setting: &'static str, ca_file: &Path) -> Result<Vec<reqwest::Certificate>, TlsError> {
    certs(setting, ca_file)?
        .into_iter()
        .map(|der| {
            reqwest::Certificate::from_der(&der).map_err(|e| TlsError::File {
                setting,
                path: ca_file.to_path_buf(),
                reason: e.to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotated_pair_replaces_the_served_one_and_a_broken_one_does_not() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let first = confman_tests::certs::generate(dir.path(), &["a.example"])?;
        let reloader = CertReloader::load(&first.cert, &first.key)?;
        let served = reloader.chain();
        assert!(!reloader.reload()?, "unchanged files: nothing to do");
        // Renewal written in place.
        confman_tests::certs::issue(&first.authority, dir.path(), &["b.example"])?;
        assert!(reloader.reload()?, "a renewed pair is picked up");
        let renewed = reloader.chain();
        assert_ne!(renewed, served);
        // A half-written rotation (new key, old certificate) is refused; the renewed pair stays.
        let other = confman_tests::certs::generate(&dir.path().join("other"), &["c.example"])?;
        std::fs::copy(&other.key, &first.key)?;
        let err = reloader.reload().err().ok_or("mismatched key accepted")?;
        assert!(err.to_string().contains("tls-cert-file/tls-key-file"), "{err}");
        assert_eq!(reloader.chain(), renewed);
        std::fs::write(&first.cert, "garbage")?;
        assert!(reloader.reload().is_err());
        assert_eq!(reloader.chain(), renewed);
        Ok(())
    }

    #[test]
    fn unusable_pem_files_name_the_setting() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate")?;
        let missing = dir.path().join("missing.pem");
        let err = CertReloader::load(&junk, &junk).err().ok_or("junk accepted")?;
        assert!(matches!(err, TlsError::File { setting: "tls-cert-file", .. }), "{err}");
        let err = CertReloader::load(&missing, &junk).err().ok_or("missing file accepted")?;
        assert!(err.to_string().contains("missing.pem"), "{err}");
        let err = trusted_cas(&junk).err().ok_or("junk CA accepted")?;
        assert!(matches!(err, TlsError::File { setting: "tls-ca-file", .. }), "{err}");
        Ok(())
    }
}
