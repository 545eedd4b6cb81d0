//! `climatik-webhook`: see `webhook/README.md` and `docs/components.md`.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = climatik_webhook::app::Args::parse();
    climatik_runtime::init(&args.runtime);
    climatik_webhook::app::run(args).await
}
