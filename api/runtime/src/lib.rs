//! What every Climatik binary shares, so each `main` only says what differs:
//!
//! - [`init`]: the TLS crypto provider and logging, once per process;
//! - [`args`]: the runtime flags flattened into every binary's clap struct;
//! - [`shutdown`]: SIGTERM / Ctrl-C and the token every task waits on;
//! - [`logging`]: one JSON log shape (or text for a terminal);
//! - [`admin`]: `/healthz`, `/readyz` and `/metrics`, with a readiness
//!   handle the binary flips;
//! - [`duration`]: the one duration grammar of flags and chart values;
//! - [`crypto`]: the process-wide rustls provider;
//! - [`kube_client`]: the Kubernetes client, over one HTTP/2 connection;
//! - [`fs`]: atomic file writes;
//! - [`error_chain`]: an error and its causes on one line.
//!
//! It depends on no other Climatik crate, so every crate (the test support
//! included) can use it.

pub mod admin;
pub mod args;
pub mod crypto;
pub mod duration;
pub mod error_chain;
pub mod fs;
pub mod kube_client;
pub mod logging;
pub mod shutdown;

pub use admin::{Admin, Readiness, ReadyFlag};
pub use args::{AdminArgs, RuntimeArgs};
pub use duration::parse_duration;
pub use shutdown::Shutdown;

/// Process start-up shared by every binary: installs the crypto provider,
/// then logging as `args` asks. Call first thing in `main`.
pub fn init(args: &RuntimeArgs) {
    crypto::install();
    logging::init(args.log_format, &args.log_level);
}
