//! Action recommender: turns each PowerCappingPolicy's measured power into
//! per-node frequency targets (NodeFrequencies).

use std::time::Duration;

use clap::Parser;
use climatik_controller::{app, cli::ControllerArgs, recommender};
use climatik_runtime::{args::admin_default, duration::parse_duration};

#[derive(Debug, Parser)]
#[command(
    name = "freqtuning-recommender",
    version,
    about,
    mut_arg("metrics_listen", |a| admin_default(a, "0.0.0.0:8081"))
)]
struct Args {
    /// How often targets are recomputed and renewed.
    #[arg(long, env = "INTERVAL", default_value = "15s", value_parser = parse_duration)]
    interval: Duration,
    /// Lifetime of a NodeFrequencies entry unless renewed.
    #[arg(long, env = "ENTRY_TTL", default_value = "120s", value_parser = parse_duration)]
    entry_ttl: Duration,
    #[command(flatten)]
    common: ControllerArgs,
}

/// jemalloc gives back what a cold start of many policies freed; glibc's
/// per-thread arenas kept it (the README's scale bench: 63 against 71 MiB).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.entry_ttl <= args.interval {
        anyhow::bail!(
            "--entry-ttl must be longer than --interval, or entries expire between renewals"
        );
    }
    app::run("freqtuning-recommender", args.common, |s| {
        let config = recommender::RecommenderConfig {
            interval: args.interval,
            entry_ttl: args.entry_ttl,
            lease: s.lease,
            namespace: s.namespace,
            identity: s.identity,
        };
        recommender::run_with_readiness(s.client, config, s.metrics, s.shutdown.wait(), s.ready)
    })
    .await
}
