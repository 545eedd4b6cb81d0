//! Action recommender: turns each PowerCappingPolicy's measured power into
//! per-node frequency targets (NodeFrequencies).

use std::{net::SocketAddr, time::Duration};

use clap::Parser;
use climatik_controller::{
    cli::{LeaderElectionArgs, ServeArgs, parse_duration, parse_listen},
    http, lease,
    metrics::Metrics,
    recommender, shutdown, telemetry,
};

#[derive(Debug, Parser)]
#[command(name = "freqtuning-recommender", version, about)]
struct Args {
    /// How often targets are recomputed and renewed.
    #[arg(long, env = "INTERVAL", default_value = "15s", value_parser = parse_duration)]
    interval: Duration,
    /// Lifetime of a NodeFrequencies entry unless renewed.
    #[arg(long, env = "ENTRY_TTL", default_value = "120s", value_parser = parse_duration)]
    entry_ttl: Duration,
    /// Address of /healthz and /metrics.
    #[arg(long, env = "METRICS_LISTEN", default_value = "0.0.0.0:8081", value_parser = parse_listen)]
    metrics_listen: SocketAddr,
    /// Watch policies in this namespace only (default: all namespaces).
    #[arg(long, env = "WATCH_NAMESPACE")]
    namespace: Option<String>,
    #[clap(flatten)]
    leader: LeaderElectionArgs,
    #[clap(flatten)]
    serve: ServeArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    telemetry::init(args.serve.log_format);
    if args.entry_ttl <= args.interval {
        anyhow::bail!(
            "--entry-ttl must be longer than --interval, or entries expire between renewals"
        );
    }

    let client = kube::Client::try_default().await?;
    let metrics = Metrics::new("freqtuning-recommender");
    let stop = shutdown::Shutdown::new(shutdown::signal());
    let listener = tokio::net::TcpListener::bind(args.metrics_listen).await?;
    let server = tokio::spawn(http::serve(listener, metrics.clone(), stop.wait()));
    let config = recommender::RecommenderConfig {
        interval: args.interval,
        entry_ttl: args.entry_ttl,
        lease: args.leader.lease("climatik-freqtuning-recommender"),
        namespace: args.namespace,
        identity: lease::default_identity(),
    };
    tracing::info!(listen = %args.metrics_listen, "freqtuning-recommender starting");
    recommender::run(client, config, metrics, stop.wait()).await?;
    server.await??;
    tracing::info!("freqtuning-recommender stopped");
    Ok(())
}
