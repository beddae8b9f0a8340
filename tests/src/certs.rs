//! Test certificates, generated per run: a CA and one server certificate (signed by it) for a
//! list of host names and IP addresses, written as PEM files the nodes and clients read.

use std::path::{Path, PathBuf};

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

/// PEM files of a test CA and a server certificate it signed.
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
}

/// Generates a CA and a server certificate valid for `names` (DNS names, wildcards, or IP
/// addresses) and writes `ca.pem`, `tls.crt` and `tls.key` into `dir`.
pub fn generate(dir: &Path, names: &[&str]) -> Result<TestCerts, CertError> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "confman test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

    let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
    params.distinguished_name.push(DnType::CommonName, "confman node");
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca)?;

    std::fs::create_dir_all(dir)?;
    let out = TestCerts {
        ca: dir.join("ca.pem"),
        cert: dir.join("tls.crt"),
        key: dir.join("tls.key"),
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    };
    std::fs::write(&out.ca, &out.ca_pem)?;
    std::fs::write(&out.cert, &out.cert_pem)?;
    std::fs::write(&out.key, &out.key_pem)?;
    Ok(out)
}
