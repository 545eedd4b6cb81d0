//! `freqtuner`: the Climatik node agent. Flags in `config.rs`; the work in
//! the library.

use std::process::ExitCode;

use clap::Parser;
use climatik_freqtuner::config::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    climatik_runtime::init(&cli.runtime);

    // One thread is plenty for a node agent and keeps its memory small.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(climatik_freqtuner::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "freqtuner failed");
            ExitCode::FAILURE
        }
    }
}
