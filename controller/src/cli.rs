//! Flags both controller binaries share (flattened into each), on top of
//! `climatik-runtime`'s logging and admin-server flags.

use std::time::Duration;

use climatik_runtime::args::{AdminArgs, RuntimeArgs};
use climatik_runtime::duration::parse_duration;

use crate::lease::{LeaseConfig, default_identity};

/// Leader election flags.
#[derive(Debug, Clone, clap::Args)]
pub struct LeaderElectionArgs {
    /// Elect a leader through a Lease so several replicas can run.
    #[arg(long, env = "LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Namespace of the Lease (the pod's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "climatik-system")]
    pub lease_namespace: String,
    /// Name of the Lease.
    #[arg(long, env = "LEASE_NAME")]
    pub lease_name: Option<String>,
    /// How long a leader's Lease lasts without renewal.
    #[arg(long, env = "LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,
}

impl LeaderElectionArgs {
    pub fn lease(&self, default_name: &str) -> Option<LeaseConfig> {
        self.leader_election.then(|| LeaseConfig {
            namespace: self.lease_namespace.clone(),
            name: self
                .lease_name
                .clone()
                .unwrap_or_else(|| default_name.to_string()),
            identity: default_identity(),
            duration: self.lease_duration,
        })
    }
}

/// Everything but the controller's own tuning: scope, leader election,
/// admin server, logging. Each binary sets its admin port with
/// `#[command(mut_arg("metrics_listen", ...))]`.
#[derive(Debug, Clone, clap::Args)]
pub struct ControllerArgs {
    /// Watch policies in this namespace only (default: all namespaces).
    #[arg(long, env = "WATCH_NAMESPACE")]
    pub namespace: Option<String>,
    #[command(flatten)]
    pub leader: LeaderElectionArgs,
    #[command(flatten)]
    pub admin: AdminArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}
