//! The agent's admin endpoints (`climatik-runtime`'s `/healthz`, `/readyz`,
//! `/metrics`): liveness from the agent loop's heartbeat, readiness from its
//! NodeFrequencies watch, and the metrics of the agent plus, with the `sim`
//! backend, the dcgm-exporter series of the simulated GPUs.

use std::{sync::Arc, time::Duration};

use climatik_runtime::{Admin, Readiness};

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

/// The admin endpoints over `state`, ready as `readiness` says.
pub fn admin(state: AppState, readiness: Readiness) -> Admin {
    let heartbeat = state.heartbeat.clone();
    let max_silence = state.max_silence;
    Admin::new(move || metrics(&state))
        .with_readiness(readiness)
        .with_liveness(move || {
            if heartbeat.fresh(max_silence) {
                Ok(())
            } else {
                Err("agent loop stalled".to_string())
            }
        })
}

fn metrics(state: &AppState) -> String {
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
    body
}
