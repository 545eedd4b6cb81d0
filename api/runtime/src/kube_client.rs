//! The Kubernetes client every Climatik binary talks to the API server with.
//!
//! kube's default client speaks HTTP/1.1 only and pools connections without
//! a timer: every request that finds no idle connection opens a new one,
//! and an idle one is dropped only when it is next reached. At a cold start
//! of 1000 policies the controller held about 140 TLS connections to the
//! API server afterwards, about 12 MB of buffers it never gave back. This
//! client offers HTTP/2, as client-go does, so every request and watch
//! shares one connection, checked by pings; over HTTP/1.1 (a plain-HTTP
//! API server) the pool keeps few idle connections, and not for long.
//! Everything else is kube's own: its TLS settings (the CA file reloaded
//! in-cluster), authentication, extra headers and its retry of 429/503/504.

use std::time::Duration;

use anyhow::Context as _;
use hyper_util::{
    client::legacy::{Builder, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};
use kube::{
    Client, Config,
    client::{ConfigExt as _, retry::RetryPolicy},
};
use tower::{BoxError, ServiceBuilder, retry::RetryLayer};

/// How often an HTTP/2 connection is pinged, idle or not, and how long a
/// ping may go unanswered before the connection is dropped and its watches
/// restart on a new one (client-go's 30 s and 15 s).
const PING_INTERVAL: Duration = Duration::from_secs(30);
const PING_TIMEOUT: Duration = Duration::from_secs(15);
/// Idle HTTP/1.1 connections kept per API server, and for how long.
const MAX_IDLE_CONNECTIONS: usize = 4;
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A client from the in-cluster service account or `KUBECONFIG`, as
/// [`kube::Client::try_default`] infers them.
pub async fn infer() -> anyhow::Result<Client> {
    let config = Config::infer()
        .await
        .context("finding the Kubernetes API (in-cluster or KUBECONFIG)")?;
    from_config(config)
}

/// A client for `config`. A proxy in the kubeconfig is left to kube's own
/// client, which says clearly that this build does not support one.
pub fn from_config(config: Config) -> anyhow::Result<Client> {
    if config.proxy_url.is_some() {
        return Client::try_from(config).context("building the Kubernetes client");
    }
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(config.connect_timeout);
    http.set_nodelay(true);
    let mut tls = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(
            config
                .rustls_client_config()
                .context("the API server's TLS settings")?,
        )
        .https_or_http();
    if let Some(name) = &config.tls_server_name {
        let name = rustls::pki_types::ServerName::try_from(name.clone())
            .with_context(|| format!("tls-server-name {name:?}"))?;
        tls = tls.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name));
    }
    let connector = tls.enable_http1().enable_http2().wrap_connector(http);
    let http_client = Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(IDLE_TIMEOUT)
        .pool_max_idle_per_host(MAX_IDLE_CONNECTIONS)
        .http2_keep_alive_interval(PING_INTERVAL)
        .http2_keep_alive_timeout(PING_TIMEOUT)
        .http2_keep_alive_while_idle(true)
        .build(connector);
    let retry = config
        .default_retry
        .then(|| RetryLayer::new(RetryPolicy::server_retry()));
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(retry)
        .option_layer(config.auth_layer().context("the API server credentials")?)
        .layer(
            config
                .extra_headers_layer()
                .context("the kubeconfig's impersonation headers")?,
        )
        .map_err(BoxError::from)
        .service(http_client);
    Ok(Client::new(service, config.default_namespace))
}
