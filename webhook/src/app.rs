//! Command-line flags (see `docs/components.md`) and the process around
//! the server: the certificate, signals. Logging, signals and durations
//! come from `climatik-runtime`.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context;
use clap::{Args as ClapArgs, Parser};
use climatik_certs::{CertFiles, ReloadingCertResolver};
use climatik_runtime::parse_duration;
use climatik_runtime::{Shutdown, args::RuntimeArgs};
use tracing::info;

use crate::{
    floor::{Checks, DEFAULT_MIN_WATTS_PER_GPU, parse_min_watts},
    metrics::Metrics,
    server::{AppState, Limits, start},
};

#[derive(Parser, Debug)]
#[command(
    name = "climatik-webhook",
    version,
    about = "Climatik mutating admission webhook"
)]
pub struct Args {
    #[clap(flatten)]
    pub server: ServerArgs,
    #[clap(flatten)]
    pub tls: TlsArgs,
    #[clap(flatten)]
    pub runtime: RuntimeArgs,
}

#[derive(ClapArgs, Debug)]
pub struct ServerArgs {
    /// Address to serve HTTPS on.
    #[arg(long, env = "WEBHOOK_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// Largest accepted AdmissionReview body, in bytes.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Bodies held at once, in bytes (memory bound: see the chart's
    /// `webhook.resources`); requests beyond it wait until their deadline.
    #[arg(long, env = "MAX_IN_FLIGHT_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_in_flight_bytes: usize,
    /// The API server's wait for an answer: the webhook configuration's
    /// `timeoutSeconds` (the chart passes the same value). Requests not
    /// answered by then are dropped.
    #[arg(long, env = "ADMISSION_TIMEOUT", default_value = "10s", value_parser = parse_admission_timeout)]
    pub admission_timeout: Duration,
    /// Least power one GPU can be held to, in watts: a cap below the
    /// pod template's `nvidia.com/gpu` count times this gets an admission
    /// warning. 0 turns the warning off.
    #[arg(long, env = "MIN_WATTS_PER_GPU", default_value_t = DEFAULT_MIN_WATTS_PER_GPU, value_parser = parse_min_watts)]
    pub min_watts_per_gpu: f64,
}

/// `timeoutSeconds` may be 1 to 30 seconds.
fn parse_admission_timeout(value: &str) -> Result<Duration, String> {
    let timeout = parse_duration(value)?;
    if timeout < Duration::from_secs(1) || timeout > Duration::from_secs(30) {
        return Err(format!(
            "{value:?} is outside 1s..30s, the range of a webhook's timeoutSeconds"
        ));
    }
    Ok(timeout)
}

#[derive(ClapArgs, Debug)]
pub struct TlsArgs {
    /// Serving certificate (PEM chain, leaf first); re-read when it changes.
    #[arg(
        long,
        env = "TLS_CERT_FILE",
        default_value = "/etc/climatik/tls/tls.crt"
    )]
    pub tls_cert_file: PathBuf,
    /// Private key of the serving certificate (PEM).
    #[arg(
        long,
        env = "TLS_KEY_FILE",
        default_value = "/etc/climatik/tls/tls.key"
    )]
    pub tls_key_file: PathBuf,
    /// How often to check the certificate files for a new certificate.
    #[arg(long, env = "TLS_RELOAD_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub tls_reload_interval: Duration,
}

/// Runs the webhook until SIGTERM or Ctrl-C.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let resolver = Arc::new(
        ReloadingCertResolver::new(CertFiles {
            cert: args.tls.tls_cert_file.clone(),
            key: args.tls.tls_key_file.clone(),
        })
        .context("loading the serving certificate")?,
    );
    let limits = Limits {
        max_body_bytes: args.server.max_body_bytes,
        max_in_flight_bytes: args.server.max_in_flight_bytes,
        deadline: args.server.admission_timeout,
    };
    let checks = Checks {
        min_watts_per_gpu: args.server.min_watts_per_gpu,
    };
    let state = AppState::with_checks(Metrics::new(), limits, Some(resolver.clone()), checks);
    let listener = std::net::TcpListener::bind(args.server.listen)
        .with_context(|| format!("listening on {}", args.server.listen))?;
    let server = start(listener, resolver, state, args.tls.tls_reload_interval)?;
    Shutdown::on_signal().wait().await;
    info!("shutting down");
    server.shutdown(Duration::from_secs(10)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_match_the_component_contract() {
        let args = Args::try_parse_from([
            "climatik-webhook",
            "--listen",
            "127.0.0.1:9443",
            "--tls-cert-file",
            "c.crt",
            "--tls-key-file",
            "c.key",
            "--max-body-bytes",
            "1024",
            "--admission-timeout",
            "5s",
            "--min-watts-per-gpu",
            "0",
            "--log-format",
            "text",
        ]);
        let args = args.map_err(|e| e.to_string());
        assert!(args.is_ok(), "{args:?}");
    }

    #[test]
    fn the_admission_timeout_is_one_the_api_server_allows() {
        for bad in ["0s", "500ms", "31s", "1m"] {
            assert!(parse_admission_timeout(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_admission_timeout("30s"), Ok(Duration::from_secs(30)));
    }
}
