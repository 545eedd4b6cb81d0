//! Flags every binary shares, flattened into each one's clap struct with
//! `#[command(flatten)]` so the names, environment variables and defaults
//! are the same everywhere.

use std::net::SocketAddr;

use crate::logging::{self, LogFormat};

/// Logging flags (every binary).
#[derive(Debug, Clone, clap::Args)]
pub struct RuntimeArgs {
    /// Log format on stderr.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,
    /// Log filter in `RUST_LOG` syntax, e.g. `info` or
    /// `info,climatik_controller=debug`.
    #[arg(
        long,
        env = "RUST_LOG",
        default_value = logging::DEFAULT_FILTER,
        value_parser = logging::parse_filter
    )]
    pub log_level: String,
}

impl Default for RuntimeArgs {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Json,
            log_level: logging::DEFAULT_FILTER.to_string(),
        }
    }
}

/// The plain-HTTP admin server (`/healthz`, `/readyz`, `/metrics`), for
/// binaries that have one. Each binary sets its own default address with
/// `#[command(mut_arg("metrics_listen", |a| admin_default(a, "0.0.0.0:PORT")))]`;
/// without it the flag is required.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminArgs {
    /// Address of the admin server: /healthz, /readyz and /metrics.
    #[arg(long, env = "METRICS_LISTEN", value_parser = parse_listen)]
    pub metrics_listen: SocketAddr,
}

/// Gives `--metrics-listen` a binary's default address.
pub fn admin_default(arg: clap::Arg, address: &'static str) -> clap::Arg {
    // The derive marks a non-Option field required; a default makes it not.
    arg.default_value(address).required(false)
}

/// Parses a listen address such as `0.0.0.0:8080`.
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    text.trim()
        .parse()
        .map_err(|e| format!("{text:?} is not an address such as 0.0.0.0:8080: {e}"))
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[derive(Debug, Parser)]
    #[command(mut_arg("metrics_listen", |a| admin_default(a, "0.0.0.0:9999")))]
    struct Cli {
        #[command(flatten)]
        runtime: RuntimeArgs,
        #[command(flatten)]
        admin: AdminArgs,
    }

    #[test]
    fn a_binary_sets_its_own_admin_port() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["x"]).expect("defaults");
        assert_eq!(cli.admin.metrics_listen.port(), 9999);
        assert_eq!(cli.runtime.log_format, LogFormat::Json);
        let cli = Cli::try_parse_from([
            "x",
            "--metrics-listen",
            "127.0.0.1:1",
            "--log-format",
            "text",
            "--log-level",
            "debug",
        ])
        .expect("flags");
        assert_eq!(cli.admin.metrics_listen.port(), 1);
        assert_eq!(cli.runtime.log_format, LogFormat::Text);
        assert_eq!(cli.runtime.log_level, "debug");
        assert!(Cli::try_parse_from(["x", "--metrics-listen", "nowhere"]).is_err());
    }
}
