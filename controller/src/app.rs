//! The process around either controller: start-up, the Kubernetes client,
//! the admin server with readiness, signals. The two binaries differ only
//! in their flags and in which reconciler [`run`] starts.

use std::{future::Future, sync::Arc};

use anyhow::Context as _;
use climatik_runtime::{Readiness, ReadyFlag, Shutdown, admin};

use crate::{cli::ControllerArgs, lease, metrics::Metrics};

/// What a controller's reconciler is started with.
pub struct Started {
    pub client: kube::Client,
    pub metrics: Arc<Metrics>,
    /// Leader election, with the Lease named `climatik-<binary>` unless
    /// `--lease-name` says otherwise; `None` when switched off.
    pub lease: Option<lease::LeaseConfig>,
    pub namespace: Option<String>,
    /// Names this replica in events and in the Lease.
    pub identity: String,
    /// Set once the reconciler's watches have synced: `/readyz` passes from
    /// then on. Standbys of a leader election are ready too: a rolling
    /// update (maxUnavailable 0) waits for the new pod to be ready while the
    /// old one still holds the Lease, so gating on leadership would stall it.
    pub ready: ReadyFlag,
    pub shutdown: Shutdown,
}

/// Runs the controller `binary` until SIGTERM or Ctrl-C: logging, client,
/// metrics and admin server, then `start`'s reconciler.
pub async fn run<F, Fut>(binary: &str, args: ControllerArgs, start: F) -> anyhow::Result<()>
where
    F: FnOnce(Started) -> Fut,
    Fut: Future<Output = crate::Result<()>>,
{
    climatik_runtime::init(&args.runtime);
    let lease = args
        .leader
        .lease(&format!("climatik-{binary}"))
        .context("leader election flags")?;
    let client = climatik_runtime::kube_client::infer().await?;
    let metrics = Metrics::new(binary);
    let shutdown = Shutdown::on_signal();
    let readiness = Readiness::new();
    let ready = readiness.flag("watch");
    let listen = args.admin.metrics_listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let server = tokio::spawn(admin::serve(
        listener,
        crate::http::admin(metrics.clone()).with_readiness(readiness),
        shutdown.wait(),
    ));
    tracing::info!(%listen, "{binary} starting");
    start(Started {
        client,
        metrics,
        lease,
        namespace: args.namespace,
        identity: lease::default_identity(),
        ready,
        shutdown,
    })
    .await?;
    server.await??;
    tracing::info!("{binary} stopped");
    Ok(())
}
