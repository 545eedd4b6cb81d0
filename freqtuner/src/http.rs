//! `/healthz` and `/metrics` (the agent's own series, and with the `sim`
//! backend the DCGM-exporter series of the simulated GPUs).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};

use crate::{agent::Heartbeat, metrics::Metrics, sim::SharedWorld};

/// What the handlers read.
#[derive(Clone)]
pub struct AppState {
    pub metrics: Arc<Metrics>,
    pub world: Option<SharedWorld>,
    pub heartbeat: Arc<Heartbeat>,
    /// `/healthz` fails when the loop has not run for this long.
    pub max_silence: Duration,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    if state.heartbeat.fresh(state.max_silence) {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "agent loop stalled\n")
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut body = state.metrics.encode();
    if let Some(world) = &state.world
        && let Ok(mut world) = world.lock()
    {
        let readings = world.readings(std::time::Instant::now());
        body.push_str(&crate::sim::dcgm::render(
            &readings,
            world.node(),
            world.driver_version(),
        ));
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
}

/// Binds `addr` (port 0 picks a free one) and returns the bound address
/// with the server future.
pub async fn bind(
    addr: SocketAddr,
    state: AppState,
) -> std::io::Result<(
    SocketAddr,
    impl std::future::Future<Output = std::io::Result<()>>,
)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((
        local,
        async move { axum::serve(listener, router(state)).await },
    ))
}
