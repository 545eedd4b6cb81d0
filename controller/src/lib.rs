//! Climatik's brain: the power usage monitor (`powercapping-controller`)
//! reads each PowerCappingPolicy's power from Prometheus and writes it to
//! the policy's status, and generates the policies that workload
//! annotations ask for; the action recommender (`freqtuning-recommender`)
//! turns that status into per-node frequency targets (NodeFrequencies).
//!
//! Both run in-process through [`monitor::run`] and [`recommender::run`]
//! (the binaries are thin wrappers around [`app::run`], which holds their
//! shared process set-up), so tests drive the real reconcilers.

pub mod algorithm;
pub mod app;
pub mod arbitration;
pub mod cli;
pub mod conditions;
mod driver;
pub mod due;
mod energy;
mod error;
pub mod generator;
pub mod http;
pub mod lease;
pub mod metrics;
pub mod monitor;
pub mod observe;
pub mod policy_metrics;
pub mod prom;
mod reachable;
pub mod recommender;
pub mod shed;

pub use error::{Error, Result};

/// Reconcile scheduling shared by both controllers. Bounded concurrency
/// keeps a cold start with thousands of policies from flooding the API
/// server and Prometheus at once (the scale benchmark saw 504s without it);
/// the debounce folds the burst of watch events that our own status writes
/// cause into one reconcile.
pub fn controller_config() -> kube::runtime::controller::Config {
    kube::runtime::controller::Config::default()
        .concurrency(16)
        .debounce(std::time::Duration::from_secs(1))
}
