//! The process-wide rustls crypto provider.
//!
//! kube, reqwest, axum-server and our certificate code all build rustls
//! configs; with more than one provider compiled into the dependency graph
//! rustls refuses to pick one, so each process installs ring once, here.

/// Installs ring as the process default. Idempotent: later calls, and
/// calls after another provider was installed, change nothing.
pub fn install() {
    // An error only says a provider is already installed, which is the
    // state we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    #[test]
    fn installing_twice_is_harmless() {
        super::install();
        super::install();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }
}
