//! Command-line flags (see `docs/components.md`) and the process around
//! the server: the Kubernetes client, the certificate, signals. Logging,
//! signals and durations come from `climatik-runtime`.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context;
use clap::{Args as ClapArgs, Parser};
use climatik_certs::{CertFiles, ReloadingCertResolver};
use climatik_runtime::parse_duration;
use climatik_runtime::{Shutdown, args::RuntimeArgs};
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
            "--log-format",
            "text",
        ]);
        let args = args.map_err(|e| e.to_string());
        assert!(args.is_ok(), "{args:?}");
    }
}
