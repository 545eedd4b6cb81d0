//! Power usage monitor: measures each PowerCappingPolicy's power and writes
//! it to the policy's status.

use std::{net::SocketAddr, time::Duration};

use clap::Parser;
use climatik_controller::{
    cli::{LeaderElectionArgs, ServeArgs, parse_duration, parse_listen},
    http, lease,
    metrics::Metrics,
    monitor, shutdown, telemetry,
};

#[derive(Debug, Parser)]
#[command(name = "powercapping-controller", version, about)]
struct Args {
    /// Prometheus base URL, e.g. http://prometheus:9090.
    #[arg(long, env = "PROMETHEUS_URL")]
    prometheus_url: String,
    /// HTTP timeout of one Prometheus query.
    #[arg(long, env = "PROMETHEUS_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    prometheus_timeout: Duration,
    /// Read CPU power from Kepler (kepler_pod_cpu_watts).
    #[arg(long, env = "KEPLER_ENABLED")]
    kepler: bool,
    /// How often each policy is measured.
    #[arg(long, env = "INTERVAL", default_value = "15s", value_parser = parse_duration)]
    interval: Duration,
    /// Address of /healthz and /metrics.
    #[arg(long, env = "METRICS_LISTEN", default_value = "0.0.0.0:8080", value_parser = parse_listen)]
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

    let client = kube::Client::try_default().await?;
    let metrics = Metrics::new("powercapping-controller");
    let stop = shutdown::Shutdown::new(shutdown::signal());
    let listener = tokio::net::TcpListener::bind(args.metrics_listen).await?;
    let server = tokio::spawn(http::serve(listener, metrics.clone(), stop.wait()));
    let config = monitor::MonitorConfig {
        prometheus_url: args.prometheus_url,
        prometheus_timeout: args.prometheus_timeout,
        kepler: args.kepler,
        interval: args.interval,
        lease: args.leader.lease("climatik-powercapping-controller"),
        namespace: args.namespace,
        identity: lease::default_identity(),
    };
    tracing::info!(listen = %args.metrics_listen, "powercapping-controller starting");
    monitor::run(client, config, metrics, stop.wait()).await?;
    server.await??;
    tracing::info!("powercapping-controller stopped");
    Ok(())
}
