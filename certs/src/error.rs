//! Errors of certificate loading and generation.

use std::path::PathBuf;

/// Why a certificate could not be loaded, generated or written.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} holds no PEM private key: {reason}")]
    NoPrivateKey { path: PathBuf, reason: String },
    #[error("parsing PEM in {path}: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("the key does not fit the certificate or is unsupported: {0}")]
    KeyMismatch(#[source] rustls::Error),
    #[error("building the TLS configuration: {0}")]
    Tls(#[source] rustls::Error),
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("invalid subject alternative name {name:?}: {reason}")]
    SubjectAltName { name: String, reason: String },
}

impl CertError {
    /// A short, stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            CertError::Read { .. } => "read",
            CertError::Write { .. } => "write",
            CertError::NoCertificate { .. } => "no_certificate",
            CertError::NoPrivateKey { .. } => "no_private_key",
            CertError::Pem { .. } => "pem",
            CertError::KeyMismatch(_) => "key_mismatch",
            CertError::Tls(_) => "tls",
            CertError::Generate(_) => "generate",
            CertError::SubjectAltName { .. } => "subject_alt_name",
        }
    }
}
