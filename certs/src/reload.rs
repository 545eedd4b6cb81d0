//! A rustls certificate resolver that follows files on disk.
//!
//! cert-manager renews the webhook certificate by rewriting its Secret, and
//! the kubelet replaces the mounted files by swapping the `..data` symlink.
//! Paths therefore stay the same while their content changes, so the
//! resolver compares content rather than watching inodes: [`reload_if_changed`]
//! reads both files (a few KB) and swaps in a new [`CertifiedKey`] only when
//! they changed *and* the key fits the certificate. A half-written pair
//! (certificate renewed, key not yet) is retried on the next poll while the
//! old certificate keeps serving. New TLS handshakes pick up the new
//! certificate; established connections keep theirs.
//!
//! [`reload_if_changed`]: ReloadingCertResolver::reload_if_changed

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use rustls::{
    ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

use crate::{CertError, x509::certificate_serial_hex};

/// Where the serving certificate (PEM chain, leaf first) and key live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What a reload attempt did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The files are as last loaded (or as last rejected).
    Unchanged,
    /// A new certificate is being served; its serial in hex.
    Reloaded { serial_hex: String },
}

struct Current {
    key: Arc<CertifiedKey>,
    serial_hex: String,
    /// File contents the current key was loaded from, or that were last
    /// rejected: a bad pair is reported once, not on every poll.
    seen: (Vec<u8>, Vec<u8>),
}

/// Serves the certificate most recently loaded from [`CertFiles`].
pub struct ReloadingCertResolver {
    files: CertFiles,
    provider: Arc<CryptoProvider>,
    current: RwLock<Current>,
    /// TLS handshakes served with the current certificate: shows that
    /// clients (the API server) actually picked up a new one.
    handshakes: AtomicU64,
}

impl fmt::Debug for ReloadingCertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingCertResolver")
            .field("files", &self.files)
            .field("serial", &self.serial_hex())
            .finish()
    }
}

impl ReloadingCertResolver {
    /// Loads the files once; fails if they are missing or do not fit
    /// together, since a webhook without a certificate cannot serve.
    pub fn new(files: CertFiles) -> Result<Self, CertError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let seen = read_pair(&files)?;
        let (key, serial_hex) = parse_pair(&files, &seen, &provider)?;
        Ok(Self {
            files,
            provider,
            current: RwLock::new(Current {
                key,
                serial_hex,
                seen,
            }),
            handshakes: AtomicU64::new(0),
        })
    }

    /// The files this resolver follows.
    pub fn files(&self) -> &CertFiles {
        &self.files
    }

    /// Serial number (hex) of the certificate being served.
    pub fn serial_hex(&self) -> String {
        self.read().serial_hex.clone()
    }

    /// Handshakes served with the current certificate since it was loaded.
    pub fn handshakes_with_current(&self) -> u64 {
        self.handshakes.load(Ordering::Relaxed)
    }

    /// The certificate chain being served, leaf first.
    pub fn certificate_chain(&self) -> Vec<CertificateDer<'static>> {
        self.read().key.cert.clone()
    }

    /// Re-reads the files and swaps in their certificate if they changed
    /// and are valid. On error the previous certificate keeps serving.
    pub fn reload_if_changed(&self) -> Result<ReloadOutcome, CertError> {
        let pair = read_pair(&self.files)?;
        if self.read().seen == pair {
            return Ok(ReloadOutcome::Unchanged);
        }
        match parse_pair(&self.files, &pair, &self.provider) {
            Ok((key, serial_hex)) => {
                let mut current = self.write();
                *current = Current {
                    key,
                    serial_hex: serial_hex.clone(),
                    seen: pair,
                };
                self.handshakes.store(0, Ordering::Relaxed);
                Ok(ReloadOutcome::Reloaded { serial_hex })
            }
            Err(err) => {
                // Keep serving; remember the bad pair so it is reported
                // once, and retried as soon as either file changes again.
                self.write().seen = pair;
                Err(err)
            }
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Current> {
        // A poisoned lock only means a panic elsewhere mid-swap; the value
        // is always a complete `Current`, so keep using it.
        self.current.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Current> {
        self.current.write().unwrap_or_else(|e| e.into_inner())
    }
}

impl ResolvesServerCert for ReloadingCertResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let key = self.read().key.clone();
        self.handshakes.fetch_add(1, Ordering::Relaxed);
        Some(key)
    }
}

/// A TLS server configuration (ring provider, TLS 1.2 and 1.3, ALPN h2 and
/// http/1.1) that serves whatever `resolver` currently holds.
pub fn server_config(resolver: Arc<ReloadingCertResolver>) -> Result<ServerConfig, CertError> {
    let provider = resolver.provider.clone();
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(CertError::Tls)?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

fn read_pair(files: &CertFiles) -> Result<(Vec<u8>, Vec<u8>), CertError> {
    Ok((read(&files.cert)?, read(&files.key)?))
}

fn read(path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|source| CertError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn parse_pair(
    files: &CertFiles,
    (cert_pem, key_pem): &(Vec<u8>, Vec<u8>),
    provider: &CryptoProvider,
) -> Result<(Arc<CertifiedKey>, String), CertError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::Pem {
            path: files.cert.clone(),
            reason: e.to_string(),
        })?;
    let Some(leaf) = chain.first() else {
        return Err(CertError::NoCertificate {
            path: files.cert.clone(),
        });
    };
    let serial_hex = certificate_serial_hex(leaf).unwrap_or_default();
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| CertError::NoPrivateKey {
        path: files.key.clone(),
        reason: e.to_string(),
    })?;
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(CertError::KeyMismatch)?;
    Ok((Arc::new(certified), serial_hex))
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read, Write},
        net::IpAddr,
    };

    use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConnection};

    use super::*;
    use crate::{DevCa, dev_ca::write_atomic};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn issue(ca: &DevCa, dir: &Path) -> Result<String, CertError> {
        let serving =
            ca.issue_serving(&["localhost".to_string()], &[IpAddr::from([127, 0, 0, 1])])?;
        write_atomic(&dir.join("tls.key"), serving.key_pem.as_bytes(), 0o600)?;
        write_atomic(&dir.join("tls.crt"), serving.cert_pem.as_bytes(), 0o644)?;
        Ok(serving.serial_hex)
    }

    /// A real TLS handshake in memory: returns the leaf certificate the
    /// server presented, verified against `ca`.
    fn served_leaf(
        ca: &DevCa,
        resolver: Arc<ReloadingCertResolver>,
    ) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca.cert_pem().as_bytes()) {
            roots.add(cert?)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client_config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut client = ClientConnection::new(Arc::new(client_config), "localhost".try_into()?)?;
        let mut server = ServerConnection::new(Arc::new(server_config(resolver)?))?;
        for _ in 0..10 {
            if !client.is_handshaking() && !server.is_handshaking() {
                break;
            }
            let mut buf = Vec::new();
            client.write_tls(&mut buf)?;
            server.read_tls(&mut buf.as_slice())?;
            server.process_new_packets()?;
            let mut buf = Vec::new();
            server.write_tls(&mut buf)?;
            client.read_tls(&mut buf.as_slice())?;
            client.process_new_packets()?;
        }
        client.writer().write_all(b"ping")?;
        let mut buf = Vec::new();
        client.write_tls(&mut buf)?;
        server.read_tls(&mut buf.as_slice())?;
        server.process_new_packets()?;
        let mut got = [0u8; 4];
        server.reader().read_exact(&mut got)?;
        assert_eq!(&got, b"ping");
        let leaf = client
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or("no peer certificate")?;
        Ok(leaf.to_vec())
    }

    #[test]
    fn serves_the_new_certificate_after_the_files_change() -> TestResult {
        let dir = tempfile::tempdir()?;
        let ca = DevCa::generate()?;
        let first = issue(&ca, dir.path())?;
        let files = CertFiles {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
        };
        let resolver = Arc::new(ReloadingCertResolver::new(files)?);
        assert_eq!(resolver.serial_hex(), first);
        let leaf = served_leaf(&ca, resolver.clone())?;
        assert_eq!(certificate_serial_hex(&leaf), Some(first.clone()));
        assert_eq!(resolver.reload_if_changed()?, ReloadOutcome::Unchanged);

        let second = issue(&ca, dir.path())?;
        assert_ne!(first, second);
        assert_eq!(
            resolver.reload_if_changed()?,
            ReloadOutcome::Reloaded {
                serial_hex: second.clone()
            }
        );
        assert_eq!(resolver.handshakes_with_current(), 0);
        let leaf = served_leaf(&ca, resolver.clone())?;
        assert_eq!(certificate_serial_hex(&leaf), Some(second));
        assert_eq!(resolver.handshakes_with_current(), 1);
        Ok(())
    }

    #[test]
    fn follows_a_kubernetes_style_symlink_swap() -> TestResult {
        // The kubelet's layout: tls.crt -> ..data/tls.crt, ..data -> ..<ts>.
        let dir = tempfile::tempdir()?;
        let ca = DevCa::generate()?;
        let v1 = dir.path().join("..v1");
        std::fs::create_dir(&v1)?;
        let first = issue(&ca, &v1)?;
        std::os::unix::fs::symlink("..v1", dir.path().join("..data"))?;
        std::os::unix::fs::symlink("..data/tls.crt", dir.path().join("tls.crt"))?;
        std::os::unix::fs::symlink("..data/tls.key", dir.path().join("tls.key"))?;
        let resolver = ReloadingCertResolver::new(CertFiles {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
        })?;
        assert_eq!(resolver.serial_hex(), first);

        let v2 = dir.path().join("..v2");
        std::fs::create_dir(&v2)?;
        let second = issue(&ca, &v2)?;
        std::os::unix::fs::symlink("..v2", dir.path().join("..data_tmp"))?;
        std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data"))?;
        std::fs::remove_dir_all(&v1)?;
        assert_eq!(
            resolver.reload_if_changed()?,
            ReloadOutcome::Reloaded {
                serial_hex: second.clone()
            }
        );
        assert_eq!(resolver.serial_hex(), second);
        Ok(())
    }

    #[test]
    fn a_mismatched_pair_keeps_the_old_certificate_until_fixed() -> TestResult {
        let dir = tempfile::tempdir()?;
        let ca = DevCa::generate()?;
        let first = issue(&ca, dir.path())?;
        let resolver = ReloadingCertResolver::new(CertFiles {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
        })?;
        // Certificate renewed, key not yet: a half-done rotation.
        let renewed = ca.issue_serving(&["localhost".to_string()], &[])?;
        write_atomic(
            &dir.path().join("tls.crt"),
            renewed.cert_pem.as_bytes(),
            0o644,
        )?;
        let err = resolver
            .reload_if_changed()
            .err()
            .ok_or("accepted a mismatched pair")?;
        assert_eq!(err.metric_label(), "key_mismatch");
        assert_eq!(resolver.serial_hex(), first);
        // Reported once, not on every poll.
        assert_eq!(resolver.reload_if_changed()?, ReloadOutcome::Unchanged);
        write_atomic(
            &dir.path().join("tls.key"),
            renewed.key_pem.as_bytes(),
            0o600,
        )?;
        assert_eq!(
            resolver.reload_if_changed()?,
            ReloadOutcome::Reloaded {
                serial_hex: renewed.serial_hex.clone()
            }
        );
        Ok(())
    }

    #[test]
    fn garbage_and_missing_files_are_errors_not_panics() -> TestResult {
        let dir = tempfile::tempdir()?;
        let files = CertFiles {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
        };
        assert_eq!(
            ReloadingCertResolver::new(files.clone())
                .err()
                .map(|e| e.metric_label()),
            Some("read")
        );
        std::fs::write(&files.cert, "not pem")?;
        std::fs::write(&files.key, "not pem either")?;
        assert_eq!(
            ReloadingCertResolver::new(files)
                .err()
                .map(|e| e.metric_label()),
            Some("no_certificate")
        );
        Ok(())
    }
}
