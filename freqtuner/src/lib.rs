//! Climatik's node agent (`freqtuner`): applies the NodeFrequencies of its
//! node through NVML, cpufreq or a simulated backend, holds per-GPU power
//! budgets with a local fast loop, reports per-device status, and restores
//! defaults whenever a target goes away (see `README.md`).

pub mod actuator;
pub mod agent;
pub mod config;
pub mod cpu;
pub mod error;
pub mod events;
pub mod expiry;
pub mod fastloop;
pub mod gpu;
pub mod hold;
pub mod http;
pub mod keepalive;
pub mod kubelet;
pub mod merge;
pub mod metrics;
pub mod sim;
pub mod startup;
pub mod state;
pub mod status_writer;

use std::{sync::Arc, time::Instant};

use anyhow::Context;
use climatik_runtime::{Readiness, admin, shutdown::signal};
use k8s_openapi::api::core::v1::Node;
use tokio::sync::watch;

use crate::{
    actuator::Actuator,
    agent::{Agent, AgentConfig, Heartbeat},
    config::{Cli, CpuBackendKind, GpuBackendKind},
    cpu::{CpuBackend, cpufreq::Cpufreq, sim::SimCpus},
    gpu::{GpuBackend, nvml::open_real, sim::SimGpus},
    hold::HoldRecord,
    keepalive::EntryLease,
    kubelet::{device_plugin::PluginConfig, pod_resources::Poller},
    metrics::Metrics,
    sim::{Assignment, Scenario, SharedWorld, SimConfig, SimWorld, model::GpuModel, pods},
    startup::Retry,
    state::StateFile,
};

/// Runs the agent until SIGTERM or SIGINT, then restores defaults.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    if cli.kubelet.device_plugin_dir.is_some() && cli.backends.gpu_backend != GpuBackendKind::Sim {
        anyhow::bail!("--device-plugin-dir serves simulated GPUs: it needs --gpu-backend sim");
    }
    let client = climatik_runtime::kube_client::infer().await?;
    let node = cli.node_name.clone();
    let metrics = Arc::new(Metrics::default());
    let heartbeat = Arc::new(Heartbeat::default());

    let world = match cli.backends.gpu_backend {
        GpuBackendKind::Sim => Some(sim_world(&cli, &client).await?),
        _ => None,
    };
    let retry = Retry {
        attempts: cli.agent.backend_init_attempts,
        first_backoff: cli.agent.backend_init_backoff,
    };
    let state_file = |backend: &str| {
        StateFile::for_backend(&cli.agent.state_dir, backend, &node)
            .counting_quarantines(metrics.state_quarantined.clone())
    };
    let gpu: Option<Box<dyn GpuBackend>> = match (cli.backends.gpu_backend, &world) {
        (GpuBackendKind::Sim, Some(world)) => {
            Some(Box::new(SimGpus::new(world.clone(), state_file("sim"))?))
        }
        (GpuBackendKind::Nvml, _) => Some(Box::new(
            retry.open("NVML", || open_real(state_file("nvml"))).await?,
        )),
        _ => None,
    };
    let cpu: Option<Box<dyn CpuBackend>> = match cli.backends.cpu_backend {
        CpuBackendKind::Cpufreq => Some(Box::new(
            retry
                .open("cpufreq", || {
                    Cpufreq::new(&cli.backends.sysfs_root, state_file("cpufreq"))
                })
                .await?,
        )),
        CpuBackendKind::Sim => Some(Box::new(SimCpus::new(cli.sim.sim_cpus))),
        CpuBackendKind::None => None,
    };
    if let Some(gpu) = &gpu {
        tracing::info!(
            backend = gpu.name(),
            gpus = gpu.devices().len(),
            "GPU backend ready"
        );
    }

    let readiness = Readiness::new();
    let ready = readiness.flag("watch");
    let listen = cli.server.metrics_listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    tracing::info!(addr = %listener.local_addr()?, "serving metrics");
    let admin = http::admin(
        http::AppState {
            metrics: metrics.clone(),
            world: world.clone(),
            heartbeat: heartbeat.clone(),
            max_silence: cli.agent.fast_loop_interval * 10 + std::time::Duration::from_secs(20),
        },
        readiness,
    );
    // Served until the defaults are restored (aborted below), so a slow
    // restore still answers /healthz.
    let server = tokio::spawn(admin::serve(listener, admin, std::future::pending()));
    let watcher = world
        .clone()
        .map(|world| tokio::spawn(pods::watch_pods(client.clone(), node.clone(), world)));
    let outside_resets = world
        .clone()
        .map(|world| tokio::spawn(sim::reset_on_sigusr1(world)));
    // Ends the kubelet tasks (the device plugin removes its socket).
    let (stop_kubelet, kubelet_stopping) = watch::channel(false);
    let mut kubelet_tasks = Vec::new();
    if let (Some(world), Some(dir), Some(socket)) = (
        &world,
        &cli.kubelet.device_plugin_dir,
        cli.kubelet.pod_resources_socket(),
    ) {
        let uuids = world
            .lock()
            .map_err(|_| anyhow::anyhow!("the simulation state was poisoned"))?
            .infos()
            .into_iter()
            .map(|g| g.uuid)
            .collect();
        kubelet_tasks.push(tokio::spawn(kubelet::device_plugin::run(
            PluginConfig::new(dir.clone(), uuids),
            kubelet_stopping.clone(),
        )));
        kubelet_tasks.push(tokio::spawn(
            Poller::new(socket, cli.agent.fast_loop_interval)
                .run(world.clone(), kubelet_stopping.clone()),
        ));
    }

    let hold = HoldRecord::open(
        HoldRecord::for_node(&cli.agent.state_dir, &node)
            .counting_quarantines(metrics.state_quarantined.clone()),
    )?;
    let actuator = Actuator::new(gpu, cpu, cli.backends.gpu_power_limit, metrics.clone())
        .with_max_entry_ttl(cli.agent.max_entry_ttl)
        .with_hold(hold);
    let agent = Agent::new(
        client,
        AgentConfig {
            node,
            fast_loop_interval: cli.agent.fast_loop_interval,
            status_interval: cli.agent.status_interval,
            status_write_timeout: cli.agent.status_write_timeout,
            entry_lease: cli.agent.entry_lease.clone().map(|lease| EntryLease {
                lease,
                grace: cli.agent.entry_lease_grace,
            }),
        },
        actuator,
        metrics,
        heartbeat,
    )
    .with_readiness(ready);
    let result = agent.run(signal()).await;
    let _ = stop_kubelet.send(true);
    for task in kubelet_tasks {
        if tokio::time::timeout(std::time::Duration::from_secs(5), task)
            .await
            .is_err()
        {
            tracing::warn!("a kubelet task did not stop in time");
        }
    }
    server.abort();
    for task in [watcher, outside_resets].into_iter().flatten() {
        task.abort();
    }
    result.map_err(Into::into)
}

async fn sim_world(cli: &Cli, client: &kube::Client) -> anyhow::Result<SharedWorld> {
    let gpus = match cli.sim.sim_gpus {
        Some(n) => n,
        None => node_gpu_capacity(client, &cli.node_name).await,
    };
    let scenario = match &cli.sim.sim_scenario {
        Some(path) => Scenario::read(path)?,
        None => Scenario::default(),
    };
    let default_load = cli
        .sim
        .sim_default_load
        .parse()
        .context("--sim-default-load")?;
    let model = GpuModel {
        name: cli.sim.sim_gpu_model.clone(),
        min_mhz: cli.sim.sim_min_clock,
        max_mhz: cli.sim.sim_max_clock,
        step_mhz: cli.sim.sim_clock_step,
        tdp_watts: cli.sim.sim_tdp_watts,
        idle_watts: cli.sim.sim_idle_watts,
        max_tokens_per_second: cli.sim.sim_max_tokens_per_second,
        ..GpuModel::h100()?
    };
    let world = SimWorld::new(
        SimConfig {
            node: cli.node_name.clone(),
            gpus,
            model,
            driver_version: cli.sim.sim_driver_version.clone(),
            scenario,
            default_load,
            assignment: if cli.kubelet.device_plugin_dir.is_some() {
                Assignment::Kubelet
            } else {
                Assignment::Agent
            },
        },
        Instant::now(),
    )?;
    Ok(world.shared())
}

/// The node's `nvidia.com/gpu` capacity, or 0 (with a warning).
async fn node_gpu_capacity(client: &kube::Client, node: &str) -> u32 {
    let nodes = kube::Api::<Node>::all(client.clone());
    let capacity = match nodes.get_opt(node).await {
        Ok(Some(n)) => n
            .status
            .and_then(|s| s.capacity)
            .and_then(|c| c.get(pods::GPU_RESOURCE).and_then(|q| q.0.parse().ok())),
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(error = %e, "reading the Node's GPU capacity");
            None
        }
    };
    capacity.unwrap_or_else(|| {
        tracing::warn!(
            node,
            "no nvidia.com/gpu capacity on the Node and no --sim-gpus: simulating no GPUs"
        );
        0
    })
}
