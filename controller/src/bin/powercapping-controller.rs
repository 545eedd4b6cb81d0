//! Power usage monitor: measures each PowerCappingPolicy's power and writes
//! it to the policy's status.

use std::time::Duration;

use clap::Parser;
use climatik_controller::{
    app,
    cli::ControllerArgs,
    due::StatusWrites,
    monitor,
    observe::{DEFAULT_DCGM_JOBS, DEFAULT_KEPLER_JOBS},
};
use climatik_runtime::{args::admin_default, duration::parse_duration};

#[derive(Debug, Parser)]
#[command(
    name = "powercapping-controller",
    version,
    about,
    mut_arg("metrics_listen", |a| admin_default(a, "0.0.0.0:8080"))
)]
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
    /// Prometheus jobs (the `job` label) of the DCGM exporter, comma
    /// separated; series of other jobs are ignored, as anyone who can be
    /// scraped could export them. An empty value believes every job.
    #[arg(long, env = "DCGM_JOBS", value_delimiter = ',', default_values_t = default_jobs(DEFAULT_DCGM_JOBS))]
    dcgm_jobs: Vec<String>,
    /// Prometheus jobs of Kepler, comma separated; as --dcgm-jobs.
    #[arg(long, env = "KEPLER_JOBS", value_delimiter = ',', default_values_t = default_jobs(DEFAULT_KEPLER_JOBS))]
    kepler_jobs: Vec<String>,
    /// How often each policy is measured.
    #[arg(long, env = "INTERVAL", default_value = "15s", value_parser = parse_duration)]
    interval: Duration,
    /// Create, update and delete the PowerCappingPolicies that workloads'
    /// `climatik.io/power-cap` annotations ask for.
    #[arg(long, env = "GENERATE_POLICIES", default_value_t = true, action = clap::ArgAction::Set)]
    generate_policies: bool,
    /// How often every annotated workload is compared with its generated
    /// policy (events act at once; this catches anything missed).
    #[arg(long, env = "POLICY_RESYNC", default_value = "5m", value_parser = parse_duration)]
    policy_resync: Duration,
    /// Write a policy's status when its power (or one device's) moved by
    /// more than this percentage of the cap since the last write; smaller
    /// moves wait for the heartbeat. Condition, spec and pod changes, and
    /// power over the cap, are written at once.
    #[arg(long, env = "STATUS_POWER_CHANGE_PERCENT", default_value_t = 5.0, value_parser = percent)]
    status_power_change_percent: f64,
    /// Arbitrate PowerBudgets: share each budget's watts among the
    /// policies on its nodes by priority, lowering their effective caps.
    #[arg(long, env = "POWER_BUDGETS", default_value_t = true, action = clap::ArgAction::Set)]
    power_budgets: bool,
    /// Write each policy's status at least every this many periods.
    #[arg(long, env = "STATUS_HEARTBEAT_PERIODS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    status_heartbeat_periods: u32,
    /// At most this many heartbeat writes a second over all policies: with
    /// many policies each one's heartbeat stretches to keep the total under
    /// it (1000 policies at 2/s: every 500 s). 0: no bound.
    #[arg(long, env = "STATUS_HEARTBEATS_PER_SECOND", default_value_t = 2.0, value_parser = non_negative)]
    status_heartbeats_per_second: f64,
    #[command(flatten)]
    common: ControllerArgs,
}

/// A finite number of zero or more.
fn non_negative(value: &str) -> Result<f64, String> {
    let n: f64 = value.parse().map_err(|e| format!("{e}"))?;
    if n.is_finite() && n >= 0.0 {
        Ok(n)
    } else {
        Err(format!("{n} is not a finite number of zero or more"))
    }
}

/// A percentage from 0 to 100.
fn percent(value: &str) -> Result<f64, String> {
    let p: f64 = value.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=100.0).contains(&p) {
        Ok(p)
    } else {
        Err(format!("{p} is not between 0 and 100"))
    }
}

fn default_jobs(jobs: &[&str]) -> Vec<String> {
    jobs.iter().map(|j| j.to_string()).collect()
}

/// The jobs to believe: an empty value (`--dcgm-jobs=`) leaves one empty
/// name, which means every job.
fn jobs(names: Vec<String>) -> Vec<String> {
    names.into_iter().filter(|n| !n.is_empty()).collect()
}

/// jemalloc gives back what a cold start of many policies freed; glibc's
/// per-thread arenas kept it (the README's scale bench: 63 against 71 MiB).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    app::run("powercapping-controller", args.common, |s| {
        let config = monitor::MonitorConfig {
            prometheus_url: args.prometheus_url,
            prometheus_timeout: args.prometheus_timeout,
            kepler: args.kepler,
            dcgm_jobs: jobs(args.dcgm_jobs),
            kepler_jobs: jobs(args.kepler_jobs),
            interval: args.interval,
            lease: s.lease,
            namespace: s.namespace,
            identity: s.identity,
            generator_resync: args.generate_policies.then_some(args.policy_resync),
            status_writes: StatusWrites {
                power_fraction: args.status_power_change_percent / 100.0,
                heartbeat_periods: args.status_heartbeat_periods,
                heartbeats_per_second: args.status_heartbeats_per_second,
            },
            power_budgets: args.power_budgets,
        };
        monitor::run_with_readiness(s.client, config, s.metrics, s.shutdown.wait(), s.ready)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<Args, clap::Error> {
        let mut argv = vec![
            "powercapping-controller",
            "--prometheus-url",
            "http://p:9090",
        ];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv)
    }

    #[test]
    fn job_flags_default_split_and_empty_means_any_job() -> Result<(), clap::Error> {
        let defaults = parse(&[])?;
        assert_eq!(
            jobs(defaults.dcgm_jobs),
            ["nvidia-dcgm-exporter", "dcgm-exporter"]
        );
        assert_eq!(jobs(defaults.kepler_jobs), ["kepler"]);
        // As the chart renders them.
        let set = parse(&["--dcgm-jobs=a,b.c", "--kepler-jobs="])?;
        assert_eq!(jobs(set.dcgm_jobs), ["a", "b.c"]);
        assert!(jobs(set.kepler_jobs).is_empty());
        Ok(())
    }
}
