//! Flags both controller binaries share (flattened into each), on top of
//! `climatik-runtime`'s logging and admin-server flags.

use std::time::Duration;

use climatik_runtime::args::{AdminArgs, RuntimeArgs};
use climatik_runtime::duration::parse_duration;

use crate::lease::{LeaseConfig, Timing, TimingError, default_identity};

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
    /// How long a follower waits, after it last saw the Lease renewed,
    /// before it takes the Lease over.
    #[arg(long, env = "LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,
    /// How long after the start of its last successful renewal a leader
    /// that cannot renew steps down; shorter than the lease duration
    /// (default: two thirds of it).
    #[arg(long, env = "LEASE_RENEW_DEADLINE", value_parser = parse_duration)]
    pub lease_renew_deadline: Option<Duration>,
    /// How often candidates try to acquire or renew the Lease, each API
    /// call of a try limited to half of it; shorter than the renew deadline
    /// (default: a fifth of it).
    #[arg(long, env = "LEASE_RETRY_PERIOD", value_parser = parse_duration)]
    pub lease_retry_period: Option<Duration>,
}

impl LeaderElectionArgs {
    /// The Lease to elect through, `None` when election is off; fails when
    /// the durations are out of order.
    pub fn lease(&self, default_name: &str) -> Result<Option<LeaseConfig>, TimingError> {
        if !self.leader_election {
            return Ok(None);
        }
        Ok(Some(LeaseConfig {
            namespace: self.lease_namespace.clone(),
            name: self
                .lease_name
                .clone()
                .unwrap_or_else(|| default_name.to_string()),
            identity: default_identity(),
            timing: Timing::new(
                self.lease_duration,
                self.lease_renew_deadline,
                self.lease_retry_period,
            )?,
        }))
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
