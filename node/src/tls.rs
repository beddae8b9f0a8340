//! TLS (rustls, ring provider) for the node's one listener — the client API and Raft RPC share
//! it — and for the node's outgoing calls (Raft RPC, forwarded writes), which trust the
//! configured CA. PEM files in, rustls configs out; the listener does handshakes off the accept
//! path so one slow client cannot stall others.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How long a client gets to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why TLS could not be set up; names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{setting} {path}: {reason}")]
    File {
        /// The setting that named the file.
        setting: &'static str,
        /// Path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// rustls refused the certificate or key.
    #[error("tls-cert-file/tls-key-file: {0}")]
    Config(#[from] rustls::Error),
}

/// Makes ring the process-wide rustls provider (reqwest builds its TLS config from it).
/// Idempotent; call before building any HTTP client.
pub fn install_crypto_provider() {
    // Err means a provider is installed already, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
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

/// The server config for the listener: certificate chain and key from PEM files; HTTP/2 and
/// HTTP/1.1 offered by ALPN.
pub fn server_config(cert_file: &Path, key_file: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = certs("tls-cert-file", cert_file)?;
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| TlsError::File {
        setting: "tls-key-file",
        path: key_file.to_path_buf(),
        reason: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The CA certificates (PEM bundle) outgoing calls trust, for reqwest.
pub fn trusted_cas(ca_file: &Path) -> Result<Vec<reqwest::Certificate>, TlsError> {
    certs("tls-ca-file", ca_file)?
        .into_iter()
        .map(|der| {
            reqwest::Certificate::from_der(&der).map_err(|e| TlsError::File {
                setting: "tls-ca-file",
                path: ca_file.to_path_buf(),
                reason: e.to_string(),
            })
        })
        .collect()
}

/// A listener that yields TLS streams: a task accepts TCP connections and completes each
/// handshake in its own task (bounded by a timeout); finished streams are handed to the server.
pub struct TlsListener {
    local_addr: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// Wraps a bound TCP listener.
    pub fn new(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> io::Result<TlsListener> {
        let local_addr = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(config);
        let (tx, ready) = mpsc::channel(64);
        let accept_task = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!("TCP_NODELAY: {e}");
                }
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { local_addr, ready, accept_task })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept task only ends when aborted (on drop); nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusable_pem_files_name_the_setting() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate")?;
        let missing = dir.path().join("missing.pem");
        let err = server_config(&junk, &junk).err().ok_or("junk accepted")?;
        assert!(matches!(err, TlsError::File { setting: "tls-cert-file", .. }), "{err}");
        let err = server_config(&missing, &junk).err().ok_or("missing file accepted")?;
        assert!(err.to_string().contains("missing.pem"), "{err}");
        let err = trusted_cas(&junk).err().ok_or("junk CA accepted")?;
        assert!(matches!(err, TlsError::File { setting: "tls-ca-file", .. }), "{err}");
        Ok(())
    }
}
