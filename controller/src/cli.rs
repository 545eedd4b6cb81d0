//! Flag groups shared by both binaries (flattened into each).

use std::{net::SocketAddr, time::Duration};

use crate::{
    lease::{LeaseConfig, default_identity},
    telemetry::LogFormat,
};

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

/// Serving and logging flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Log format on stderr.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,
}

/// `15s`, `2m`, `500ms`, `1h`, or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (number, unit) = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or((t, "s"), |i| t.split_at(i));
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 15s"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("{text:?}: unit must be ms, s, m or h")),
    };
    if !seconds.is_finite() || seconds <= 0.0 || seconds > 86_400.0 {
        return Err(format!("{text:?} must be between 1ms and 24h"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Parses a listen address such as `0.0.0.0:8080`.
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|e| format!("{text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("3d").is_err());
    }
}
