//! Command-line flags (see `docs/components.md`) and the process around
//! the server: logging, the Kubernetes client, signals.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context;
use clap::{Args as ClapArgs, Parser, ValueEnum};
use climatik_certs::{CertFiles, ReloadingCertResolver};
use tracing::info;

use crate::{
    effects::{Effects, OwnerTaskLimits},
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
    pub owner: OwnerArgs,
    #[clap(flatten)]
    pub log: LogArgs,
}

#[derive(ClapArgs, Debug)]
pub struct ServerArgs {
    /// Address to serve HTTPS on.
    #[arg(long, env = "WEBHOOK_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// Largest accepted AdmissionReview body, in bytes.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Time budget for the policy writes of one admission (e.g. 7s).
    #[arg(long, env = "EFFECT_TIMEOUT", default_value = "7s", value_parser = parse_duration)]
    pub effect_timeout: Duration,
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

#[derive(ClapArgs, Debug)]
pub struct OwnerArgs {
    /// How long to wait for a new workload before giving up on setting its
    /// policy's ownerReference (and removing the policy if it never appeared).
    #[arg(long, env = "OWNER_REFERENCE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub owner_reference_timeout: Duration,
    /// Most ownerReference tasks pending at once.
    #[arg(long, env = "MAX_OWNER_REFERENCE_TASKS", default_value_t = 256)]
    pub max_owner_reference_tasks: usize,
}

#[derive(ClapArgs, Debug)]
pub struct LogArgs {
    /// Log format on stderr.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

/// Parses `250ms`, `5s`, `2m`, or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: expected e.g. 250ms, 5s, 2m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(value)),
        "" | "s" => Ok(Duration::from_secs(value)),
        "m" => Ok(Duration::from_secs(value * 60)),
        _ => Err(format!(
            "invalid duration {text:?}: expected e.g. 250ms, 5s, 2m"
        )),
    }
}

/// JSON (or text) logs on stderr, filtered by `RUST_LOG` (default info).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
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
    let client = kube::Client::try_default()
        .await
        .context("creating the Kubernetes client")?;
    let metrics = Metrics::new();
    let effects = Effects::new(
        Some(client),
        metrics.clone(),
        OwnerTaskLimits {
            deadline: args.owner.owner_reference_timeout,
            max_tasks: args.owner.max_owner_reference_tasks,
        },
    );
    let limits = Limits {
        max_body_bytes: args.server.max_body_bytes,
        effect_timeout: args.server.effect_timeout,
        ..Limits::default()
    };
    let state = AppState::new(metrics, effects, limits, Some(resolver.clone()));
    let listener = std::net::TcpListener::bind(args.server.listen)
        .with_context(|| format!("listening on {}", args.server.listen))?;
    let server = start(listener, resolver, state, args.tls.tls_reload_interval)?;
    shutdown_signal().await;
    info!("shutting down");
    server.shutdown(Duration::from_secs(10)).await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("-1s").is_err());
    }

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
            "--log-format",
            "text",
        ]);
        let args = args.map_err(|e| e.to_string());
        assert!(args.is_ok(), "{args:?}");
    }
}
