//! A development CA and serving certificates for running the webhook
//! without cert-manager (local runs, the test control plane, benchmarks).
//!
//! The CA is reusable: its parameters are fixed here, so a CA written
//! earlier (`ca.crt` + `ca.key`) can issue new serving certificates, which
//! is how a rotation is rehearsed: new leaf, same trust anchor.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

use crate::{CertError, x509::certificate_serial_hex};

/// Common name of the development CA.
pub const CA_COMMON_NAME: &str = "Climatik development CA";

/// File names written by [`write_dev_ca`], as a cert-manager Secret names
/// its keys (`ca.crt`, `tls.crt`, `tls.key`), plus the CA key.
pub const CA_CERT_FILE: &str = "ca.crt";
pub const CA_KEY_FILE: &str = "ca.key";
pub const TLS_CERT_FILE: &str = "tls.crt";
pub const TLS_KEY_FILE: &str = "tls.key";

/// A CA that can sign serving certificates.
pub struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    key_pem: String,
}

/// A serving certificate and its key, PEM-encoded.
#[derive(Clone, Debug)]
pub struct ServingCert {
    pub cert_pem: String,
    pub key_pem: String,
    /// Serial number, lower-case hex.
    pub serial_hex: String,
}

impl DevCa {
    /// Generates a fresh CA (ECDSA P-256, valid ten years).
    pub fn generate() -> Result<Self, CertError> {
        let key = KeyPair::generate()?;
        let cert = ca_params().self_signed(&key)?;
        let key_pem = key.serialize_pem();
        Ok(Self {
            issuer: Issuer::new(ca_params(), key),
            cert_pem: cert.pem(),
            key_pem,
        })
    }

    /// Loads a CA written earlier by [`DevCa::generate`] (its parameters are
    /// fixed, so the certificate's subject is known without parsing it).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        let key = KeyPair::from_pem(key_pem)?;
        if !cert_pem.contains("BEGIN CERTIFICATE") {
            return Err(CertError::Pem {
                path: PathBuf::from(CA_CERT_FILE),
                reason: "no certificate block".to_string(),
            });
        }
        Ok(Self {
            issuer: Issuer::new(ca_params(), key),
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
        })
    }

    /// The CA certificate (the `caBundle` of a webhook configuration).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Issues a serving certificate for the given DNS names and IP
    /// addresses (at least one in all), valid two years, with a fresh key
    /// and a random serial.
    pub fn issue_serving(
        &self,
        dns_names: &[String],
        ip_addresses: &[IpAddr],
    ) -> Result<ServingCert, CertError> {
        if dns_names.is_empty() && ip_addresses.is_empty() {
            return Err(CertError::SubjectAltName {
                name: String::new(),
                reason: "give at least one DNS name or IP address".to_string(),
            });
        }
        let mut params = CertificateParams::default();
        let mut subject = DistinguishedName::new();
        let common_name = dns_names
            .first()
            .cloned()
            .or_else(|| ip_addresses.first().map(IpAddr::to_string))
            .unwrap_or_default();
        subject.push(DnType::CommonName, common_name);
        subject.push(DnType::OrganizationName, "climatik");
        params.distinguished_name = subject;
        for name in dns_names {
            let san =
                name.clone()
                    .try_into()
                    .map_err(|e: rcgen::Error| CertError::SubjectAltName {
                        name: name.clone(),
                        reason: e.to_string(),
                    })?;
            params.subject_alt_names.push(SanType::DnsName(san));
        }
        params
            .subject_alt_names
            .extend(ip_addresses.iter().copied().map(SanType::IpAddress));
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        let year = current_year();
        params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
        params.not_after = rcgen::date_time_ymd(year + 2, 1, 1);

        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(ServingCert {
            serial_hex: certificate_serial_hex(cert.der()).unwrap_or_default(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, CA_COMMON_NAME);
    subject.push(DnType::OrganizationName, "climatik");
    params.distinguished_name = subject;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let year = current_year();
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + 10, 1, 1);
    params
}

/// Positive 16-byte serial (RFC 5280 wants positive and at most 20 bytes);
/// random so a reissued certificate is told apart from the old one.
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

/// The current UTC year, close enough for validity bounds that start a year
/// back (clock skew) and end years ahead.
fn current_year() -> i32 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    1970 + i32::try_from(secs / 31_556_952).unwrap_or(0)
}

/// What [`write_dev_ca`] wrote.
#[derive(Clone, Debug)]
pub struct DevCaFiles {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// Serial of the new serving certificate, lower-case hex.
    pub serial_hex: String,
    /// Whether an existing CA in the directory was reused.
    pub reused_ca: bool,
}

/// Writes `ca.crt`, `ca.key`, `tls.crt` and `tls.key` into `out_dir`. An
/// existing CA there is reused, so running it again rotates only the
/// serving certificate and the `caBundle` stays valid. Each file is written
/// to a temporary name and renamed, so readers never see half a file.
pub fn write_dev_ca(
    out_dir: &Path,
    dns_names: &[String],
    ip_addresses: &[IpAddr],
) -> Result<DevCaFiles, CertError> {
    std::fs::create_dir_all(out_dir).map_err(|source| CertError::Write {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let ca_cert = out_dir.join(CA_CERT_FILE);
    let ca_key = out_dir.join(CA_KEY_FILE);
    let (ca, reused_ca) = if ca_cert.exists() && ca_key.exists() {
        let cert_pem = read_string(&ca_cert)?;
        let key_pem = read_string(&ca_key)?;
        (DevCa::from_pem(&cert_pem, &key_pem)?, true)
    } else {
        let ca = DevCa::generate()?;
        write_atomic(&ca_key, ca.key_pem().as_bytes(), 0o600)?;
        write_atomic(&ca_cert, ca.cert_pem().as_bytes(), 0o644)?;
        (ca, false)
    };
    let serving = ca.issue_serving(dns_names, ip_addresses)?;
    let tls_cert = out_dir.join(TLS_CERT_FILE);
    let tls_key = out_dir.join(TLS_KEY_FILE);
    write_atomic(&tls_key, serving.key_pem.as_bytes(), 0o600)?;
    write_atomic(&tls_cert, serving.cert_pem.as_bytes(), 0o644)?;
    Ok(DevCaFiles {
        ca_cert,
        ca_key,
        tls_cert,
        tls_key,
        serial_hex: serving.serial_hex,
        reused_ca,
    })
}

fn read_string(path: &Path) -> Result<String, CertError> {
    std::fs::read_to_string(path).map_err(|source| CertError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `bytes` to a sibling temporary file with `mode` (`0o600` for
/// keys), then renames it over `path` (`climatik-runtime`'s one atomic
/// write, with this crate's error).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CertError> {
    climatik_runtime::fs::write_atomic(path, bytes, mode).map_err(|source| CertError::Write {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reissuing_from_a_saved_ca_keeps_the_trust_anchor() -> Result<(), CertError> {
        let dir = tempfile::tempdir().map_err(|source| CertError::Write {
            path: PathBuf::from("tempdir"),
            source,
        })?;
        let names = vec!["localhost".to_string()];
        let ips = vec![IpAddr::from([127, 0, 0, 1])];
        let first = write_dev_ca(dir.path(), &names, &ips)?;
        let ca_before = read_string(&first.ca_cert)?;
        let second = write_dev_ca(dir.path(), &names, &ips)?;
        assert!(!first.reused_ca);
        assert!(second.reused_ca);
        assert_eq!(ca_before, read_string(&second.ca_cert)?);
        assert_ne!(first.serial_hex, second.serial_hex);
        assert_eq!(second.serial_hex.len(), 32);
        Ok(())
    }

    #[test]
    fn a_certificate_needs_a_name() {
        let ca = DevCa::generate();
        assert!(matches!(
            ca.and_then(|ca| ca.issue_serving(&[], &[])),
            Err(CertError::SubjectAltName { .. })
        ));
    }
}
