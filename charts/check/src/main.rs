//! `climatik-check`: what `helm test` runs after an install. Prints one line
//! per check and exits non-zero when any failed.

use clap::Parser;
use climatik_check::{Args, run};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    climatik_runtime::crypto::install();
    let client = kube::Client::try_default().await?;
    let findings = run(&client, &args).await;
    for finding in &findings {
        println!("{finding}");
    }
    if findings.iter().any(|f| f.outcome.is_err()) {
        std::process::exit(1);
    }
    Ok(())
}
