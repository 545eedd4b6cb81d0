//! Webhook TLS for Climatik.
//!
//! - [`reload`]: a rustls certificate resolver backed by a certificate and
//!   key on disk (a cert-manager Secret mount) that picks up replaced files,
//!   including Kubernetes' atomic `..data` symlink swap, without a restart.
//! - [`dev_ca`]: a development CA and serving certificates (rcgen) for local
//!   runs without cert-manager.
//! - [`x509`]: the few X.509 facts the logs need (the serial number).

pub mod dev_ca;
mod error;
pub mod reload;
pub mod x509;

pub use dev_ca::{DevCa, DevCaFiles, ServingCert, write_dev_ca};
pub use error::CertError;
pub use reload::{CertFiles, ReloadOutcome, ReloadingCertResolver, server_config};
