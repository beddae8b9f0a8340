//! Test certificates, generated per run: a CA and one server certificate (signed by it) for a
//! list of host names and IP addresses, written as PEM files the nodes and clients read.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};

/// Certificate generation failed.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen refused the parameters.
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    /// Writing a PEM file failed.
    #[error("writing certificates: {0}")]
    Io(#[from] std::io::Error),
}

/// A test certificate authority that can issue server certificates.
#[derive(Debug)]
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// The CA certificate's PEM text (what clients trust).
    pub pem: String,
}

/// PEM files of a server certificate and the CA that signed it.
#[derive(Debug, Clone)]
pub struct TestCerts {
    /// CA certificate (what clients trust).
    pub ca: PathBuf,
    /// Server certificate chain.
    pub cert: PathBuf,
    /// Server private key.
    pub key: PathBuf,
    /// The CA certificate's PEM text.
    pub ca_pem: String,
    /// The server certificate's PEM text.
    pub cert_pem: String,
    /// The server key's PEM text.
    pub key_pem: String,
    /// The CA, to issue more certificates (e.g. a renewal).
    pub authority: Arc<TestCa>,
}

impl TestCa {
    /// A new self-signed CA.
    pub fn new() -> Result<TestCa, CertError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "confman test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        let pem = issuer.pem();
        Ok(TestCa { issuer, pem })
    }
}

/// Issues a server certificate from `ca` for `names` (DNS names, wildcards or IP addresses) and
/// writes `ca.pem`, `tls.crt` and `tls.key` into `dir` (replacing what is there).
pub fn issue(ca: &Arc<TestCa>, dir: &Path, names: &[&str]) -> Result<TestCerts, CertError> {
    let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
    params.distinguished_name.push(DnType::CommonName, "confman node");
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca.issuer)?;
    std::fs::create_dir_all(dir)?;
    let out = TestCerts {
        ca: dir.join("ca.pem"),
        cert: dir.join("tls.crt"),
        key: dir.join("tls.key"),
        ca_pem: ca.pem.clone(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        authority: ca.clone(),
    };
    std::fs::write(&out.ca, &out.ca_pem)?;
    std::fs::write(&out.cert, &out.cert_pem)?;
    std::fs::write(&out.key, &out.key_pem)?;
    Ok(out)
}

/// A new CA and a server certificate from it for `names`, written into `dir`.
pub fn generate(dir: &Path, names: &[&str]) -> Result<TestCerts, CertError> {
    issue(&Arc::new(TestCa::new()?), dir, names)
}

/// The rustls certificate-verification failure behind an error, if that is what it is. Walks
/// the source chain; rustls' error travels inside an `io::Error`, whose `source()` skips it,
/// so each `io::Error` on the way is opened too (hyper's wraps tokio-rustls' wraps rustls').
pub fn certificate_error(e: &(dyn std::error::Error + 'static)) -> Option<rustls::CertificateError> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(rustls::Error::InvalidCertificate(c)) = err.downcast_ref::<rustls::Error>() {
            return Some(c.clone());
        }
        let wrapped = err.downcast_ref::<std::io::Error>().and_then(std::io::Error::get_ref);
        cur = match wrapped {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    None
}
