//! The controllers' admin endpoints: `climatik-runtime`'s `/healthz`,
//! `/readyz` and `/metrics` over this process's [`Metrics`].

use std::sync::Arc;

use climatik_runtime::admin::Admin;

use crate::metrics::Metrics;

/// `/metrics` renders `metrics`; readiness is added by the caller.
pub fn admin(metrics: Arc<Metrics>) -> Admin {
    Admin::new(move || metrics.encode())
}
