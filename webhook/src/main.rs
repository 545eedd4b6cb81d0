//! `climatik-webhook`: see `webhook/README.md` and `docs/components.md`.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // kube and rustls both build TLS configs; one process-wide provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = climatik_webhook::app::Args::parse();
    climatik_webhook::app::init_logging(args.log.log_format);
    climatik_webhook::app::run(args).await
}
