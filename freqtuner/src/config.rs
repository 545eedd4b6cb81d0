//! Command-line flags (each also read from the environment), grouped by
//! concern. The names and defaults are the contract in
//! `docs/components.md`.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, ValueEnum};
use climatik_runtime::args::{AdminArgs, RuntimeArgs, admin_default};
/// The one duration grammar (`climatik-runtime`), also used by the
/// simulated load profiles.
use climatik_runtime::parse_duration;

use crate::keepalive::LeaseName;

/// Climatik node agent: applies the NodeFrequencies of its node.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "freqtuner",
    version,
    mut_arg("metrics_listen", |a| admin_default(a, "0.0.0.0:9400"))
)]
pub struct Cli {
    /// The node this agent runs on; its NodeFrequencies has this name.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,

    #[clap(flatten)]
    pub backends: BackendArgs,

    #[clap(flatten)]
    pub agent: AgentArgs,

    /// The admin server: `/healthz`, `/readyz`, `/metrics`.
    #[clap(flatten)]
    pub server: AdminArgs,

    #[clap(flatten)]
    pub runtime: RuntimeArgs,

    #[clap(flatten)]
    pub sim: SimArgs,

    #[clap(flatten)]
    pub kubelet: KubeletArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GpuBackendKind {
    Nvml,
    Sim,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CpuBackendKind {
    Cpufreq,
    Sim,
    None,
}

/// Which hardware the agent drives.
#[derive(Debug, Clone, Args)]
pub struct BackendArgs {
    /// GPU backend.
    #[arg(long, env = "GPU_BACKEND", value_enum, default_value = "nvml")]
    pub gpu_backend: GpuBackendKind,

    /// CPU backend.
    #[arg(long, env = "CPU_BACKEND", value_enum, default_value = "cpufreq")]
    pub cpu_backend: CpuBackendKind,

    /// Root of sysfs for the cpufreq backend.
    #[arg(long, env = "SYSFS_ROOT", default_value = "/sys")]
    pub sysfs_root: PathBuf,

    /// Also set each budgeted GPU's own power limit to its budget (clamped
    /// to what the GPU accepts), besides the clock loop.
    #[arg(long, env = "GPU_POWER_LIMIT", default_value_t = false)]
    pub gpu_power_limit: bool,
}

/// The control loop and its restore state.
#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    /// Period of the fast loop (power budgets, expiry checks).
    #[arg(long, env = "FAST_LOOP_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub fast_loop_interval: Duration,

    /// Where the values to restore after a crash are kept (node-local).
    #[arg(long, env = "STATE_DIR", default_value = "/var/lib/climatik")]
    pub state_dir: PathBuf,

    /// Rewrite the status at least this often, so readings stay fresh.
    #[arg(long, env = "STATUS_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub status_interval: Duration,

    /// Give up on a status write (or on creating the node's object) after
    /// this long; the next pass's status is tried instead. The loop itself
    /// never waits on the API server.
    #[arg(long, env = "STATUS_WRITE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub status_write_timeout: Duration,
    /// Longest an entry counts after the agent first saw it (or after its
    /// last renewal, a changed `expiresAt`), whatever its `expiresAt` says.
    /// Measured from the agent's start for entries it finds at start-up.
    #[arg(long, env = "MAX_ENTRY_TTL", default_value = "10m", value_parser = parse_max_entry_ttl)]
    pub max_entry_ttl: Duration,

    /// `NAMESPACE/NAME` of the recommender's leader-election Lease: while
    /// it is renewed, the entries the recommender writes `keptByLease`
    /// count past their `expiresAt`, so it need not renew them one by one.
    /// Without it only `expiresAt` counts.
    #[arg(long, env = "ENTRY_LEASE")]
    pub entry_lease: Option<LeaseName>,

    /// How long kept entries still count after the last renewal of the
    /// entry Lease this agent saw: how long a node stays capped once no
    /// recommender runs, or while the API server is unreachable.
    #[arg(long, env = "ENTRY_LEASE_GRACE", default_value = "120s", value_parser = parse_entry_lease_grace)]
    pub entry_lease_grace: Duration,

    /// Tries to open each device backend (NVML, cpufreq) and read its
    /// restore state before the agent exits non-zero: it never runs
    /// without restoring what a killed predecessor left.
    #[arg(long, env = "BACKEND_INIT_ATTEMPTS", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub backend_init_attempts: u32,

    /// Wait after the first failed try; doubled after each (at most 30 s).
    #[arg(long, env = "BACKEND_INIT_BACKOFF", default_value = "1s", value_parser = parse_duration)]
    pub backend_init_backoff: Duration,
}

/// A positive duration: a lifetime cap of zero would end every entry at
/// once.
fn parse_max_entry_ttl(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        d if d.is_zero() => Err("the maximum entry lifetime must be positive".into()),
        d => Ok(d),
    }
}

/// A positive duration: a grace of zero would end kept entries between
/// two renewals.
fn parse_entry_lease_grace(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        d if d.is_zero() => Err("the entry Lease grace must be positive".into()),
        d => Ok(d),
    }
}

/// The simulated node (`--gpu-backend sim` / `--cpu-backend sim`).
#[derive(Debug, Clone, Args)]
pub struct SimArgs {
    /// Number of simulated GPUs; default: the node's `nvidia.com/gpu`
    /// capacity.
    #[arg(long, env = "SIM_GPUS")]
    pub sim_gpus: Option<u32>,

    /// Product name of the simulated GPUs.
    #[arg(long, env = "SIM_GPU_MODEL", default_value = "NVIDIA H100 80GB HBM3")]
    pub sim_gpu_model: String,

    /// Highest SM clock, MHz.
    #[arg(long, env = "SIM_MAX_CLOCK", default_value_t = 1980)]
    pub sim_max_clock: u32,

    /// Lowest SM clock, MHz.
    #[arg(long, env = "SIM_MIN_CLOCK", default_value_t = 345)]
    pub sim_min_clock: u32,

    /// Step between supported SM clocks, MHz.
    #[arg(long, env = "SIM_CLOCK_STEP", default_value_t = 15)]
    pub sim_clock_step: u32,

    /// Power at full load and maximum clock, W.
    #[arg(long, env = "SIM_TDP_WATTS", default_value_t = 700.0)]
    pub sim_tdp_watts: f64,

    /// Idle power, W.
    #[arg(long, env = "SIM_IDLE_WATTS", default_value_t = 70.0)]
    pub sim_idle_watts: f64,

    /// Throughput at full load and maximum clock, tokens/s.
    #[arg(long, env = "SIM_MAX_TOKENS_PER_SECOND", default_value_t = 40_000.0)]
    pub sim_max_tokens_per_second: f64,

    /// Load of pods holding GPUs without a `climatik.io/sim-load` annotation.
    #[arg(long, env = "SIM_DEFAULT_LOAD", default_value = "1.0")]
    pub sim_default_load: String,

    /// Scenario file (YAML) with loads by pod and by GPU index.
    #[arg(long, env = "SIM_SCENARIO")]
    pub sim_scenario: Option<PathBuf>,

    /// Number of simulated CPUs (`--cpu-backend sim`).
    #[arg(long, env = "SIM_CPUS", default_value_t = 8)]
    pub sim_cpus: u32,

    /// Driver version reported in the DCGM series.
    #[arg(long, env = "SIM_DRIVER_VERSION", default_value = "550.54.15")]
    pub sim_driver_version: String,
}

/// The simulated GPUs on a node with a kubelet (`--gpu-backend sim`): served
/// to the kubelet as a device plugin, their holders read back from
/// PodResources, as NVIDIA's device plugin and dcgm-exporter do.
#[derive(Debug, Clone, Args)]
pub struct KubeletArgs {
    /// Serve the kubelet device-plugin API (`nvidia.com/gpu`, one device
    /// per simulated GPU) from this directory, the kubelet's
    /// `<root>/device-plugins`, and let the kubelet assign the GPUs. Off by
    /// default: the agent then assigns GPUs to the pods itself.
    #[arg(long, env = "DEVICE_PLUGIN_DIR")]
    pub device_plugin_dir: Option<PathBuf>,

    /// The kubelet's PodResources socket; default:
    /// `<device-plugin-dir>/../pod-resources/kubelet.sock`.
    #[arg(long, env = "POD_RESOURCES_SOCKET", requires = "device_plugin_dir")]
    pub pod_resources_socket: Option<PathBuf>,
}

impl KubeletArgs {
    /// The PodResources socket, when the device plugin is on.
    pub fn pod_resources_socket(&self) -> Option<PathBuf> {
        let dir = self.device_plugin_dir.as_ref()?;
        Some(
            self.pod_resources_socket
                .clone()
                .unwrap_or_else(|| dir.join("..").join("pod-resources").join("kubelet.sock")),
        )
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn flags_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_follow_the_component_contract() {
        let cli = Cli::try_parse_from(["freqtuner", "--node-name", "n1"]).expect("parse");
        assert_eq!(cli.backends.gpu_backend, GpuBackendKind::Nvml);
        assert_eq!(cli.backends.cpu_backend, CpuBackendKind::Cpufreq);
        assert_eq!(cli.backends.sysfs_root, PathBuf::from("/sys"));
        assert_eq!(cli.server.metrics_listen.port(), 9400);
        assert_eq!(cli.agent.fast_loop_interval, Duration::from_secs(1));
        assert_eq!(cli.agent.state_dir, PathBuf::from("/var/lib/climatik"));
        assert_eq!(cli.agent.status_write_timeout, Duration::from_secs(5));
        assert_eq!(
            cli.agent.max_entry_ttl,
            crate::expiry::DEFAULT_MAX_ENTRY_TTL
        );
        assert_eq!(cli.kubelet.device_plugin_dir, None);
        assert_eq!(cli.kubelet.pod_resources_socket(), None);
    }

    #[test]
    fn max_entry_ttl_is_a_positive_duration() {
        let parse = |ttl: &str| {
            Cli::try_parse_from(["freqtuner", "--node-name", "n1", "--max-entry-ttl", ttl])
                .map(|cli| cli.agent.max_entry_ttl)
        };
        assert_eq!(parse("90s").ok(), Some(Duration::from_secs(90)));
        assert!(parse("0s").is_err());
        assert!(parse("forever").is_err());
    }

    #[test]
    fn pod_resources_socket_defaults_beside_the_device_plugins() {
        let cli = Cli::try_parse_from([
            "freqtuner",
            "--node-name",
            "n1",
            "--device-plugin-dir",
            "/var/lib/kubelet/device-plugins",
        ])
        .expect("parse");
        assert_eq!(
            cli.kubelet.pod_resources_socket(),
            Some(PathBuf::from(
                "/var/lib/kubelet/device-plugins/../pod-resources/kubelet.sock"
            ))
        );
        assert!(
            Cli::try_parse_from([
                "freqtuner",
                "--node-name",
                "n1",
                "--pod-resources-socket",
                "/x.sock"
            ])
            .is_err()
        );
    }
}
