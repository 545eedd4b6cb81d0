//! `make bench` (control-plane scale part): the powercapping-controller and
//! the freqtuning-recommender, run as the shipped binaries, against many
//! policies on many nodes of a real API server and a real Prometheus.
//!
//! The bench creates the nodes, namespaces, pods bound to the nodes, the
//! node agents' NodeFrequencies inventory and the policies, serves DCGM
//! series for every pod's GPU (closed loop: each GPU's power follows the
//! clock its NodeFrequencies entries ask for, through the plant model), has
//! Prometheus scrape them, starts both controllers, waits until every policy
//! is measured and has entries, and then measures one window: reconcile
//! rate and duration (the controllers' own histograms), reaction latency
//! (policy change -> status -> NodeFrequencies, seen through watches), API
//! writes (the API server's `apiserver_request_total`), status freshness,
//! and the controllers' memory and CPU from `/proc`. Writes
//! `target/bench/scale.json`. Run through `scripts/bench-scale.sh`, which
//! starts a separate cluster for it.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use axum::{Router, routing::get};
use clap::Parser;
use climatik_api::{
    NodeFrequencies, PowerCappingPolicy,
    names::{MANAGER_FREQTUNER, conditions, policy_key},
};
use climatik_controller::{
    cli::parse_duration,
    conditions::is_true,
    plant::{self, GpuPlant},
    prom::Prometheus,
    shutdown,
    telemetry::{self, LogFormat},
};
use futures::{StreamExt, stream};
use k8s_openapi::{
    api::core::v1::{Namespace, Node, Pod, ServiceAccount},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
    runtime::{
        WatchStreamExt,
        reflector::{self, ObjectRef, Store},
        wait::{await_condition, conditions::is_crd_established},
        watcher,
    },
};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

/// Field manager of everything the bench writes.
const MANAGER: &str = "scale-bench";
/// GPUs per node in the inventory (pods use the first few).
const GPUS_PER_NODE: usize = 4;
/// Name of the bench's file in Prometheus' file discovery directory.
const SD_FILE: &str = "scale-bench-dcgm.json";
/// A cap no GPU can stay under: probes set it so the recommender must
/// lower every clock of the policy.
const PROBE_CAP_WATTS: i64 = 1;
/// API verbs that change state (`APPLY` is server-side apply).
const WRITE_VERBS: [&str; 6] = [
    "POST",
    "PUT",
    "PATCH",
    "APPLY",
    "DELETE",
    "DELETECOLLECTION",
];
const READ_VERBS: [&str; 2] = ["GET", "LIST"];
/// `/proc/<pid>/stat` counts CPU time in USER_HZ, 100 on Linux.
const TICKS_PER_SECOND: f64 = 100.0;

const METHOD: &str = "The bench runs on its own local control plane (etcd, kube-apiserver, \
kube-controller-manager, kube-scheduler from tests/cluster, no kubelet) and Prometheus (1 s \
scrape). It creates the Node objects (no kubelet behind them), namespaces, pods bound to the \
nodes with spec.nodeName (one GPU each), a NodeFrequencies per node with the GPU inventory a \
node agent would report, and the policies (each selecting 1 or 2 pods, so a policy maps onto \
1 or 2 nodes and each node hosts about 3 policies). A small HTTP endpoint in the bench serves \
DCGM_FI_DEV_POWER_USAGE / DCGM_FI_DEV_SM_CLOCK for every pod's GPU in closed loop: a GPU runs \
at the lowest unexpired target of its NodeFrequencies entries and draws what the plant model \
(controller/src/plant.rs, calibrated on the vLLM SM-clock sweep) gives at that clock and the \
pod's load. Prometheus scrapes it every second. The shipped powercapping-controller and \
freqtuning-recommender binaries (release build, leader election on, JSON logs at info) run as \
child processes with the cluster's admin kubeconfig (not the chart's RBAC; the bench measures \
load, tests/loop.rs covers permissions). After every policy is measured and has entries \
(convergence) and one more interval, a measurement window starts. Reconcile rate and duration \
are deltas of the controllers' own climatik_reconcile_total and \
climatik_reconcile_duration_seconds over the window; percentiles are interpolated linearly \
inside the histogram buckets (bounds 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10 s), so they \
are only as fine as the buckets. Reaction latency is measured exactly by probes during the \
window: a policy's powerCapLimit is set to 1 W (then restored); monitor = patch -> \
status.observedGeneration seen by a watch, recommender = that -> every NodeFrequencies entry \
of the policy lowered (seen by the bench's NodeFrequencies watch, polled every 20 ms), \
end_to_end = both. API writes/s and reads/s are deltas of the API server's \
apiserver_request_total by verb over the window (writes: POST, PUT, PATCH, APPLY, DELETE), \
for the whole server and for the resources only our controllers write (group climatik.io and \
events.k8s.io), less the bench's own probe patches. Freshness is the age of each policy's \
status.lastUpdated and of each entry's last renewal (expiresAt minus the TTL; 1 s resolution) \
at the end of the window. Memory is VmRSS sampled every second from /proc/<pid>/status; peak \
is VmHWM at the end, steady is the median VmRSS over the window; CPU is utime+stime over the \
window. The machine's cores are shared with whatever else runs (scripts/bench-scale.sh starts \
the cluster, Prometheus, the bench and so the controllers at nice 10 unless BENCH_NICE says \
otherwise; config.nice), so rates and latencies are lower bounds of what the control plane can \
do on dedicated cores.";

#[derive(Debug, Parser)]
#[command(
    name = "scale-bench",
    about = "Control-plane scale benchmark: both controllers against many policies and nodes"
)]
struct Args {
    #[clap(flatten)]
    load: LoadArgs,
    #[clap(flatten)]
    run: RunArgs,
    #[clap(flatten)]
    env: EnvArgs,
}

/// How big the cluster is.
#[derive(Debug, Clone, clap::Args)]
struct LoadArgs {
    /// PowerCappingPolicies to create (each selects 1 or 2 pods).
    #[arg(long, env = "SCALE_POLICIES", default_value_t = 1000)]
    policies: usize,
    /// Node objects to create (`scale-node-N`).
    #[arg(long, env = "SCALE_NODES", default_value_t = 500)]
    nodes: usize,
    /// Namespaces the policies are spread over (the monitor queries
    /// Prometheus per namespace, so this sets the size of each answer).
    #[arg(long, env = "SCALE_NAMESPACES", default_value_t = 10)]
    namespaces: usize,
    /// Concurrent requests while creating the objects.
    #[arg(long, default_value_t = 16)]
    setup_concurrency: usize,
}

/// How the controllers run and how long the bench measures.
#[derive(Debug, Clone, clap::Args)]
struct RunArgs {
    /// `--interval` of both controllers.
    #[arg(long, env = "SCALE_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    interval: Duration,
    /// `--entry-ttl` of the recommender (longer than the interval).
    #[arg(long, env = "SCALE_ENTRY_TTL", default_value = "60s", value_parser = parse_duration)]
    entry_ttl: Duration,
    /// Length of the measurement window.
    #[arg(long, env = "SCALE_WINDOW", default_value = "60s", value_parser = parse_duration)]
    window: Duration,
    /// Longest wait for every policy to be measured and have entries.
    #[arg(long, env = "SCALE_WARMUP_TIMEOUT", default_value = "150s", value_parser = parse_duration)]
    warmup_timeout: Duration,
    /// The whole run (setup, warm-up, window) ends within about this; a
    /// control plane that cannot keep up gives a partial result.
    #[arg(long, env = "SCALE_DEADLINE", default_value = "360s", value_parser = parse_duration)]
    deadline: Duration,
    /// Reaction-latency probes running at once during the window.
    #[arg(long, default_value_t = 4)]
    probes: usize,
}

/// Where things are.
#[derive(Debug, Clone, clap::Args)]
struct EnvArgs {
    /// Prometheus that scrapes the bench's DCGM endpoint.
    #[arg(long, env = "PROMETHEUS_URL")]
    prometheus_url: String,
    /// Prometheus' file discovery directory.
    #[arg(long, env = "PROMETHEUS_SD_DIR")]
    prometheus_sd_dir: PathBuf,
    /// Directory of the controller binaries (default: this binary's).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Result file.
    #[arg(long, default_value = "target/bench/scale.json")]
    out: PathBuf,
    /// Logs of the controllers.
    #[arg(long, default_value = "target/bench/scale-logs")]
    log_dir: PathBuf,
    /// Other processes whose memory and CPU to record, `NAME=PID`
    /// (e.g. the API server).
    #[arg(long = "watch-pid", value_parser = parse_named_pid)]
    watch_pids: Vec<(String, u32)>,
}

fn parse_named_pid(text: &str) -> Result<(String, u32), String> {
    let (name, pid) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected NAME=PID"))?;
    let pid = pid
        .trim()
        .parse()
        .map_err(|e| format!("{text:?}: bad pid: {e}"))?;
    Ok((name.to_string(), pid))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    telemetry::init(LogFormat::Text);
    // Dropping `run` kills the controllers (kill_on_drop), so a signal or
    // the deadline never leaves them running against a cluster going away.
    let report = tokio::select! {
        report = run(&args) => report?,
        _ = shutdown::signal() => bail!("interrupted"),
        _ = tokio::time::sleep(args.run.deadline + Duration::from_secs(30)) => {
            bail!("the bench did not finish within --deadline {:?}", args.run.deadline)
        }
    };
    if let Some(dir) = args.env.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.env.out, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", args.env.out.display()))?;
    tracing::info!(out = %args.env.out.display(), "done");
    Ok(())
}

async fn run(args: &Args) -> anyhow::Result<Value> {
    // Time to stop the controllers and write the result is kept back.
    let deadline = Instant::now() + args.run.deadline.saturating_sub(Duration::from_secs(25));
    let client = kube::Client::try_default()
        .await
        .context("connecting to the cluster (KUBECONFIG)")?;
    let topology = topology::Topology::new(&args.load);
    tracing::info!(
        policies = topology.policies.len(),
        pods = topology.pod_count(),
        nodes = args.load.nodes,
        "creating objects"
    );
    let setup_started = Instant::now();
    let created = setup::create_all(&client, &topology, args.load.setup_concurrency).await?;
    let setup_s = setup_started.elapsed().as_secs_f64();
    tracing::info!(created, seconds = setup_s, "objects created");

    let (nf_store, nf_task) = nodefrequencies_store(client.clone());
    let dcgm = dcgm::Endpoint::start(&topology, nf_store.clone()).await?;
    dcgm::register(&args.env.prometheus_sd_dir, &dcgm.addr)?;
    let prometheus = Prometheus::new(&args.env.prometheus_url, Duration::from_secs(5))?;
    dcgm::wait_scraped(&prometheus, topology.pod_count()).await?;

    let bin_dir = match &args.env.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()?
            .parent()
            .map(Path::to_path_buf)
            .context("locating the controller binaries")?,
    };
    std::fs::create_dir_all(&args.env.log_dir)?;
    let mut controllers = children::start(&bin_dir, &args.env, &args.run).await?;
    let started = Instant::now();
    let mut watched: Vec<(String, u32)> = controllers
        .iter()
        .filter_map(|c| c.child.id().map(|pid| (c.name.to_string(), pid)))
        .collect();
    watched.extend(args.env.watch_pids.iter().cloned());
    let sampler = proc::Sampler::start(watched);

    let measured = measure(
        args,
        &client,
        &topology,
        &nf_store,
        &controllers,
        started,
        deadline,
    )
    .await;
    let stop = children::stop(&mut controllers).await;
    let samples = sampler.finish().await;
    nf_task.abort();
    let _ = std::fs::remove_file(args.env.prometheus_sd_dir.join(SD_FILE));

    let window = measured.window.clone();
    let mut memory = serde_json::Map::new();
    let mut cluster = serde_json::Map::new();
    for (name, _) in &samples.names {
        let summary = proc::summary(&samples, name, &window);
        if controllers.iter().any(|c| c.name == name) {
            memory.insert(name.clone(), summary);
        } else {
            cluster.insert(name.clone(), summary);
        }
    }
    Ok(json!({
        "benchmark": "control-plane scale",
        "method": METHOD,
        "config": {
            "policies": topology.policies.len(),
            "nodes": args.load.nodes,
            "namespaces": args.load.namespaces,
            "pods": topology.pod_count(),
            "gpus_in_use": topology.pod_count(),
            "interval_s": args.run.interval.as_secs_f64(),
            "entry_ttl_s": args.run.entry_ttl.as_secs_f64(),
            "prometheus_scrape_interval_s": 1,
            "leader_election": true,
            "credentials": "cluster admin kubeconfig",
            "host_cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "nice": proc::own_nice(),
        },
        "setup": {
            "objects_created": created,
            "seconds": round3(setup_s),
        },
        "convergence": measured.convergence,
        "reconcile": measured.reconcile,
        "reaction_latency": measured.reaction,
        "api": measured.api,
        "freshness": measured.freshness,
        "memory": memory,
        "cluster_processes": cluster,
        "shutdown": stop,
    }))
}

/// What the measurement phase found, before memory is summarised. Every
/// part is filled in, with an `error` where that part could not be measured
/// (an overloaded control plane is a result too).
struct Measured {
    window: proc::Window,
    convergence: Value,
    reconcile: Value,
    reaction: Value,
    api: Value,
    freshness: Value,
}

fn error_value(e: &anyhow::Error) -> Value {
    json!({ "error": format!("{e:#}") })
}

/// Warm-up, then the window; ends by `deadline` whatever the cluster does.
async fn measure(
    args: &Args,
    client: &kube::Client,
    topology: &topology::Topology,
    nf_store: &Store<NodeFrequencies>,
    controllers: &[children::Controller],
    started: Instant,
    deadline: Instant,
) -> Measured {
    // Leave room for the settle interval, the window and two snapshots.
    let reserve = args.run.interval + args.run.window + Duration::from_secs(45);
    let warmup_until = (Instant::now() + args.run.warmup_timeout)
        .min(deadline.checked_sub(reserve).unwrap_or(deadline));
    let warmup = warmup_until.saturating_duration_since(started);
    let convergence = converge::wait(client, topology, nf_store, started, warmup).await;
    tracing::info!(%convergence, "warm-up over; settling for one interval");
    tokio::time::sleep_until((Instant::now() + args.run.interval).min(deadline).into()).await;

    tracing::info!(window = ?args.run.window, "measuring");
    let window_start = started.elapsed().as_secs_f64();
    let before = tokio::time::timeout_at(deadline.into(), snapshot::take(client, controllers))
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("no metrics snapshot before the deadline")));
    let t0 = Instant::now();
    let window_end = (t0 + args.run.window).min(
        deadline
            .checked_sub(Duration::from_secs(40))
            .unwrap_or(deadline),
    );
    let probes = probe::run(
        client,
        topology,
        nf_store,
        window_end,
        window_end + Duration::from_secs(20),
        args.run.probes,
    )
    .await;
    let after = tokio::time::timeout_at(deadline.into(), snapshot::take(client, controllers))
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("no metrics snapshot before the deadline")));
    let seconds = t0.elapsed().as_secs_f64();
    let window = proc::Window {
        start: window_start,
        end: started.elapsed().as_secs_f64(),
    };
    let freshness = match tokio::time::timeout_at(
        (deadline + Duration::from_secs(10)).into(),
        converge::freshness(client, topology, nf_store, args.run.entry_ttl),
    )
    .await
    {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => error_value(&e),
        Err(_) => json!({ "error": "listing the policies did not finish before the deadline" }),
    };

    let (api, reconcile) = match (&before, &after) {
        (Ok(before), Ok(after)) => {
            let api = snapshot::api_rates(
                &before.apiserver,
                &after.apiserver,
                seconds,
                probes.patches as f64,
            );
            let mut reconcile = serde_json::Map::new();
            for c in controllers {
                let (Some(b), Some(a)) = (
                    before.controllers.get(c.name),
                    after.controllers.get(c.name),
                ) else {
                    continue;
                };
                reconcile.insert(
                    c.name.to_string(),
                    snapshot::reconcile_rates(
                        b,
                        a,
                        seconds,
                        topology.policies.len() as f64 / args.run.interval.as_secs_f64(),
                    ),
                );
            }
            (api, Value::Object(reconcile))
        }
        (Err(e), _) | (_, Err(e)) => (error_value(e), error_value(e)),
    };
    Measured {
        window,
        convergence,
        reconcile,
        reaction: probes.summary(),
        api,
        freshness,
    }
}

/// Watches every NodeFrequencies into a store: the DCGM endpoint's clocks
/// and the probes' "entries lowered" both read it.
fn nodefrequencies_store(
    client: kube::Client,
) -> (Store<NodeFrequencies>, tokio::task::JoinHandle<()>) {
    let (store, writer) = reflector::store::<NodeFrequencies>();
    let stream = reflector::reflector(
        writer,
        watcher(
            Api::<NodeFrequencies>::all(client),
            watcher::Config::default(),
        )
        .default_backoff(),
    );
    let task = tokio::spawn(async move {
        stream.for_each(|_| async {}).await;
    });
    (store, task)
}

fn round3(x: f64) -> f64 {
    // `+ 0.0` turns -0.0 into 0.0.
    (x * 1000.0).round() / 1000.0 + 0.0
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted.get(rank.min(sorted.len()) - 1).copied()
}

fn distribution(mut values: Vec<f64>) -> Value {
    values.sort_by(f64::total_cmp);
    json!({
        "count": values.len(),
        "p50_s": percentile(&values, 0.5).map(round3),
        "p99_s": percentile(&values, 0.99).map(round3),
        "max_s": values.last().copied().map(round3),
    })
}

/// The objects of the bench and how they relate; deterministic.
mod topology {
    use super::*;

    pub struct Topology {
        pub nodes: Vec<String>,
        pub namespaces: Vec<String>,
        pub policies: Vec<Policy>,
    }

    pub struct Policy {
        pub namespace: String,
        pub name: String,
        pub cap_watts: i64,
        pub pods: Vec<PodPlan>,
    }

    pub struct PodPlan {
        pub name: String,
        pub node: String,
        pub gpu_index: usize,
        pub gpu_uuid: String,
        /// Share of the GPU the pod keeps busy.
        pub load: f64,
    }

    impl Topology {
        /// Policy `i` selects 1 pod when `i` is even, 2 when odd; pods go
        /// round-robin over the nodes, each to the next free GPU.
        pub fn new(load: &LoadArgs) -> Self {
            let node_count = load.nodes.max(1);
            let nodes: Vec<String> = (0..node_count).map(|n| format!("scale-node-{n}")).collect();
            let namespaces: Vec<String> = (0..load.namespaces.max(1))
                .map(|n| format!("scale-bench-{n}"))
                .collect();
            let mut next_pod = 0usize;
            let policies = (0..load.policies)
                .map(|i| {
                    let name = format!("pcp-{i}");
                    let pods: Vec<PodPlan> = (0..1 + i % 2)
                        .map(|j| {
                            let k = next_pod;
                            next_pod += 1;
                            let node = nodes[k % node_count].clone();
                            let gpu_index = (k / node_count) % GPUS_PER_NODE;
                            PodPlan {
                                name: format!("{name}-{j}"),
                                gpu_uuid: gpu_uuid(&node, gpu_index),
                                node,
                                gpu_index,
                                load: 0.55 + 0.45 * unit(k as u64),
                            }
                        })
                        .collect();
                    // 140-240 W per GPU against 154-250 W drawn unclocked:
                    // most policies cap, some do not.
                    let per_gpu = 140.0 + 100.0 * unit(1_000_003 + i as u64);
                    Policy {
                        namespace: namespaces[i % namespaces.len()].clone(),
                        cap_watts: (per_gpu * pods.len() as f64).round() as i64,
                        name,
                        pods,
                    }
                })
                .collect();
            Self {
                nodes,
                namespaces,
                policies,
            }
        }

        pub fn pod_count(&self) -> usize {
            self.policies.iter().map(|p| p.pods.len()).sum()
        }
    }

    pub fn gpu_uuid(node: &str, index: usize) -> String {
        format!("GPU-{node}-{index}")
    }

    /// A reproducible number in [0, 1) (splitmix64).
    fn unit(seed: u64) -> f64 {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Creating the CRDs and every object, a bounded number of requests at once.
mod setup {
    use super::*;
    use topology::Topology;

    pub async fn create_all(
        client: &kube::Client,
        topology: &Topology,
        concurrency: usize,
    ) -> anyhow::Result<usize> {
        install_crds(client).await?;
        let mut namespaces: Vec<String> = topology.namespaces.clone();
        // The controllers' Leases live here.
        namespaces.push("climatik-system".to_string());
        let count = namespaces.len();
        all(
            namespaces.iter().map(|ns| namespace(client, ns)),
            concurrency,
        )
        .await?;
        all(
            topology
                .namespaces
                .iter()
                .map(|ns| service_account(client, ns)),
            concurrency,
        )
        .await?;
        all(topology.nodes.iter().map(|n| node(client, n)), concurrency).await?;
        all(
            topology.nodes.iter().map(|n| node_frequencies(client, n)),
            concurrency,
        )
        .await?;
        let pods = topology
            .policies
            .iter()
            .flat_map(|p| p.pods.iter().map(move |pod| (p, pod)));
        all(pods.map(|(p, pod)| self::pod(client, p, pod)), concurrency).await?;
        all(
            topology.policies.iter().map(|p| policy(client, p)),
            concurrency,
        )
        .await?;
        Ok(2 + count
            + topology.namespaces.len()
            + 2 * topology.nodes.len()
            + topology.pod_count()
            + topology.policies.len())
    }

    async fn all<F>(futures: impl Iterator<Item = F>, concurrency: usize) -> anyhow::Result<()>
    where
        F: std::future::Future<Output = anyhow::Result<()>>,
    {
        let mut results = stream::iter(futures).buffer_unordered(concurrency.max(1));
        while let Some(result) = results.next().await {
            result?;
        }
        Ok(())
    }

    fn apply() -> PatchParams {
        PatchParams::apply(MANAGER).force()
    }

    async fn install_crds(client: &kube::Client) -> anyhow::Result<()> {
        let api = Api::<CustomResourceDefinition>::all(client.clone());
        for (_, crd) in climatik_api::crd::all() {
            let name = crd.name_any();
            api.patch(&name, &apply(), &Patch::Apply(&crd))
                .await
                .with_context(|| format!("applying CRD {name}"))?;
            tokio::time::timeout(
                Duration::from_secs(30),
                await_condition(api.clone(), &name, is_crd_established()),
            )
            .await
            .with_context(|| format!("CRD {name} not established"))??;
        }
        Ok(())
    }

    async fn namespace(client: &kube::Client, name: &str) -> anyhow::Result<()> {
        let body = json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": name } });
        Api::<Namespace>::all(client.clone())
            .patch(name, &apply(), &Patch::Apply(body))
            .await
            .with_context(|| format!("namespace {name}"))?;
        Ok(())
    }

    /// Pods need their namespace's default ServiceAccount; apply it rather
    /// than wait for the controller-manager to create it.
    async fn service_account(client: &kube::Client, ns: &str) -> anyhow::Result<()> {
        let body = json!({ "apiVersion": "v1", "kind": "ServiceAccount", "metadata": { "name": "default" } });
        Api::<ServiceAccount>::namespaced(client.clone(), ns)
            .patch("default", &apply(), &Patch::Apply(body))
            .await
            .with_context(|| format!("default ServiceAccount in {ns}"))?;
        Ok(())
    }

    async fn node(client: &kube::Client, name: &str) -> anyhow::Result<()> {
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": { "name": name, "labels": {
                "kubernetes.io/hostname": name,
                "climatik.io/scale-bench": "true",
            } },
            // Capacity is status, which a create keeps (what a kubelet sends).
            "status": { "capacity": {
                "cpu": "32", "memory": "256Gi", "pods": "110",
                "nvidia.com/gpu": GPUS_PER_NODE.to_string(),
            } },
        }))?;
        create(Api::<Node>::all(client.clone()), &node, name).await
    }

    /// The NodeFrequencies a node agent creates and the inventory it reports.
    async fn node_frequencies(client: &kube::Client, node: &str) -> anyhow::Result<()> {
        let api = Api::<NodeFrequencies>::all(client.clone());
        let params = PatchParams::apply(MANAGER_FREQTUNER).force();
        let spec = json!({
            "apiVersion": "climatik.io/v1alpha1", "kind": "NodeFrequencies",
            "metadata": { "name": node }, "spec": { "nodeName": node },
        });
        api.patch(node, &params, &Patch::Apply(spec))
            .await
            .with_context(|| format!("NodeFrequencies {node}"))?;
        let gpus: Vec<Value> = (0..GPUS_PER_NODE)
            .map(|i| {
                json!({
                    "gpuId": topology::gpu_uuid(node, i), "index": i, "model": "Tesla V100-SXM2-16GB",
                    "minFrequency": plant::MIN_CLOCK_MHZ, "maxFrequency": plant::MAX_CLOCK_MHZ,
                    "supportedFrequencies": plant::supported_clocks(), "powerLimitWatts": 250.0,
                })
            })
            .collect();
        let status = json!({
            "apiVersion": "climatik.io/v1alpha1", "kind": "NodeFrequencies",
            "status": { "gpus": gpus, "backend": "sim" },
        });
        api.patch_status(node, &params, &Patch::Apply(status))
            .await
            .with_context(|| format!("NodeFrequencies {node} status"))?;
        Ok(())
    }

    async fn pod(
        client: &kube::Client,
        policy: &topology::Policy,
        pod: &topology::PodPlan,
    ) -> anyhow::Result<()> {
        let body: Pod = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": { "name": pod.name, "labels": { "app": policy.name } },
            "spec": {
                "nodeName": pod.node,
                "automountServiceAccountToken": false,
                // The nodes have no kubelet; keep the pods through the
                // not-ready taints the node lifecycle controller adds.
                "tolerations": [{ "operator": "Exists" }],
                "containers": [{
                    "name": "main", "image": "vllm/vllm-openai:latest",
                    "resources": { "limits": { "nvidia.com/gpu": "1" } },
                }],
            },
        }))?;
        create(
            Api::<Pod>::namespaced(client.clone(), &policy.namespace),
            &body,
            &pod.name,
        )
        .await
    }

    async fn policy(client: &kube::Client, p: &topology::Policy) -> anyhow::Result<()> {
        let body: PowerCappingPolicy = serde_json::from_value(json!({
            "apiVersion": "climatik.io/v1alpha1",
            "kind": "PowerCappingPolicy",
            "metadata": { "name": p.name },
            "spec": {
                "powerCapLimit": p.cap_watts,
                "selector": { "matchLabels": { "app": p.name } },
            },
        }))?;
        create(
            Api::<PowerCappingPolicy>::namespaced(client.clone(), &p.namespace),
            &body,
            &p.name,
        )
        .await
    }

    /// Creates, leaving an existing object (a rerun on the same cluster).
    async fn create<K>(api: Api<K>, object: &K, name: &str) -> anyhow::Result<()>
    where
        K: kube::Resource
            + Clone
            + serde::de::DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
    {
        match api.create(&PostParams::default(), object).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(anyhow::Error::new(e).context(format!("creating {name}"))),
        }
    }
}

/// A dcgm-exporter for every pod's GPU, in closed loop with the
/// NodeFrequencies targets.
mod dcgm {
    use super::*;

    struct Series {
        node: String,
        index: usize,
        uuid: String,
        pod: String,
        namespace: String,
        plant: GpuPlant,
    }

    pub struct Endpoint {
        pub addr: String,
    }

    impl Endpoint {
        pub async fn start(
            topology: &topology::Topology,
            store: Store<NodeFrequencies>,
        ) -> anyhow::Result<Self> {
            let series: Arc<Vec<Series>> = Arc::new(
                topology
                    .policies
                    .iter()
                    .flat_map(|p| {
                        p.pods.iter().map(|pod| Series {
                            node: pod.node.clone(),
                            index: pod.gpu_index,
                            uuid: pod.gpu_uuid.clone(),
                            pod: pod.name.clone(),
                            namespace: p.namespace.clone(),
                            plant: GpuPlant::with_load(pod.load),
                        })
                    })
                    .collect(),
            );
            let clocks = Arc::new(plant::supported_clocks());
            let app = Router::new().route(
                "/metrics",
                get(move || {
                    let series = series.clone();
                    let store = store.clone();
                    let clocks = clocks.clone();
                    async move { render(&series, &store, &clocks) }
                }),
            );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?.to_string();
            tokio::spawn(async move {
                if let Err(error) = axum::serve(listener, app).await {
                    tracing::error!(%error, "DCGM endpoint stopped");
                }
            });
            Ok(Self { addr })
        }
    }

    /// The clock a GPU runs at: the lowest unexpired target of its entries
    /// (or the clock under the lowest power budget), else the maximum.
    fn clock(store: &Store<NodeFrequencies>, s: &Series, clocks: &[i32], now: Timestamp) -> i32 {
        let Some(nf) = store.get(&ObjectRef::new(&s.node)) else {
            return plant::MAX_CLOCK_MHZ;
        };
        let live = nf
            .spec
            .gpu_frequencies
            .iter()
            .filter(|e| e.gpu_id == s.uuid && e.expires_at.as_ref().is_none_or(|t| t.0 > now));
        let mut clock = plant::MAX_CLOCK_MHZ;
        for entry in live {
            let mut target = entry.target_frequency;
            if let Some(budget) = entry.power_budget_watts {
                target = target.min(s.plant.clock_for_budget(clocks, budget));
            }
            clock = clock.min(target);
        }
        // Snap down to a supported clock, as the agent does.
        clocks
            .iter()
            .copied()
            .filter(|c| *c <= clock)
            .max()
            .unwrap_or(plant::MIN_CLOCK_MHZ)
    }

    fn render(series: &[Series], store: &Store<NodeFrequencies>, clocks: &[i32]) -> String {
        use std::fmt::Write as _;
        let now = Timestamp::now();
        let readings: Vec<(i32, f64)> = series
            .iter()
            .map(|s| {
                let c = clock(store, s, clocks, now);
                (c, s.plant.power(f64::from(c)))
            })
            .collect();
        let mut text = String::with_capacity(series.len() * 2 * 260);
        for (metric, help) in [
            ("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W)."),
            ("DCGM_FI_DEV_SM_CLOCK", "SM clock frequency (in MHz)."),
        ] {
            let _ = writeln!(text, "# HELP {metric} {help}\n# TYPE {metric} gauge");
            for (s, (clock, watts)) in series.iter().zip(&readings) {
                let value = if metric == "DCGM_FI_DEV_SM_CLOCK" {
                    f64::from(*clock)
                } else {
                    *watts
                };
                let _ = writeln!(
                    text,
                    "{metric}{{gpu=\"{i}\",UUID=\"{uuid}\",pci_bus_id=\"00000000:{i:02X}:00.0\",device=\"nvidia{i}\",modelName=\"Tesla V100-SXM2-16GB\",Hostname=\"{node}\",container=\"main\",namespace=\"{ns}\",pod=\"{pod}\"}} {value:.3}",
                    i = s.index,
                    uuid = s.uuid,
                    node = s.node,
                    ns = s.namespace,
                    pod = s.pod,
                );
            }
        }
        text
    }

    /// Adds the endpoint to Prometheus' file discovery (written whole, then
    /// renamed, so Prometheus never reads half a file).
    pub fn register(sd_dir: &Path, addr: &str) -> anyhow::Result<()> {
        std::fs::create_dir_all(sd_dir)?;
        let tmp = sd_dir.join(format!(".{SD_FILE}.tmp"));
        let body = json!([{ "targets": [addr], "labels": { "exporter": "scale-bench" } }]);
        std::fs::write(&tmp, serde_json::to_vec(&body)?)?;
        std::fs::rename(&tmp, sd_dir.join(SD_FILE))?;
        Ok(())
    }

    /// Waits until Prometheus has every pod's power series.
    pub async fn wait_scraped(prometheus: &Prometheus, series: usize) -> anyhow::Result<()> {
        let query = "count(DCGM_FI_DEV_POWER_USAGE{exporter=\"scale-bench\"})";
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(samples) = prometheus.instant(query).await
                && samples.first().map(|s| s.value as usize) == Some(series)
            {
                tracing::info!(series, "Prometheus scrapes the DCGM endpoint");
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("Prometheus did not scrape {series} DCGM series within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// The controllers as child processes.
mod children {
    use super::*;

    pub struct Controller {
        pub name: &'static str,
        pub child: Child,
        pub metrics_addr: String,
    }

    /// A free loopback port (bound, then released for the child to take).
    fn free_port() -> anyhow::Result<u16> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        Ok(listener.local_addr()?.port())
    }

    pub async fn start(
        bin_dir: &Path,
        env: &EnvArgs,
        run: &RunArgs,
    ) -> anyhow::Result<Vec<Controller>> {
        let interval = format!("{}ms", run.interval.as_millis());
        let ttl = format!("{}ms", run.entry_ttl.as_millis());
        let monitor_args = vec![
            "--prometheus-url".to_string(),
            env.prometheus_url.clone(),
            "--interval".to_string(),
            interval.clone(),
        ];
        let recommender_args = vec![
            "--interval".to_string(),
            interval,
            "--entry-ttl".to_string(),
            ttl,
        ];
        let mut started = Vec::new();
        for (name, extra) in [
            ("powercapping-controller", monitor_args),
            ("freqtuning-recommender", recommender_args),
        ] {
            let addr = format!("127.0.0.1:{}", free_port()?);
            let log = std::fs::File::create(env.log_dir.join(format!("{name}.log")))?;
            let child = Command::new(bin_dir.join(name))
                .args(&extra)
                .args([
                    "--metrics-listen",
                    &addr,
                    "--lease-namespace",
                    "climatik-system",
                    "--log-format",
                    "json",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(log))
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting {}", bin_dir.join(name).display()))?;
            started.push(Controller {
                name,
                child,
                metrics_addr: addr,
            });
        }
        for c in &started {
            wait_healthy(&c.metrics_addr, c.name).await?;
        }
        Ok(started)
    }

    async fn wait_healthy(addr: &str, name: &str) -> anyhow::Result<()> {
        let url = format!("http://{addr}/healthz");
        for _ in 0..100 {
            if let Ok(r) = reqwest::get(&url).await
                && r.status().is_success()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("{name} did not serve /healthz on {addr} within 10 s")
    }

    /// SIGTERM, then how long each took to exit and whether it exited cleanly.
    pub async fn stop(controllers: &mut [Controller]) -> Value {
        let mut out = serde_json::Map::new();
        for c in controllers.iter() {
            if let Some(pid) = c.child.id() {
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status();
            }
        }
        let started = Instant::now();
        for c in controllers.iter_mut() {
            let status = tokio::time::timeout(Duration::from_secs(20), c.child.wait()).await;
            let entry = match status {
                Ok(Ok(s)) => {
                    json!({ "seconds": round3(started.elapsed().as_secs_f64()), "exit_code": s.code() })
                }
                Ok(Err(e)) => json!({ "error": e.to_string() }),
                Err(_) => {
                    let _ = c.child.start_kill();
                    json!({ "error": "did not exit within 20 s of SIGTERM; killed" })
                }
            };
            out.insert(c.name.to_string(), entry);
        }
        Value::Object(out)
    }
}

/// Memory and CPU of processes, from `/proc`, once a second.
mod proc {
    use super::*;

    #[derive(Debug, Clone)]
    pub struct Window {
        pub start: f64,
        pub end: f64,
    }

    #[derive(Debug, Clone)]
    pub struct Sample {
        pub t: f64,
        pub rss_kib: u64,
        pub hwm_kib: u64,
        pub cpu_ticks: u64,
    }

    #[derive(Default)]
    pub struct Samples {
        pub names: Vec<(String, u32)>,
        pub by_name: HashMap<String, Vec<Sample>>,
    }

    pub struct Sampler {
        samples: Arc<Mutex<Samples>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Sampler {
        /// Starts sampling now; sample times are seconds since this call.
        pub fn start(names: Vec<(String, u32)>) -> Self {
            let samples = Arc::new(Mutex::new(Samples {
                names: names.clone(),
                by_name: HashMap::new(),
            }));
            let shared = samples.clone();
            let task = tokio::spawn(async move {
                let started = Instant::now();
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    let t = started.elapsed().as_secs_f64();
                    for (name, pid) in &names {
                        if let Some(sample) = read(*pid, t)
                            && let Ok(mut s) = shared.lock()
                        {
                            s.by_name.entry(name.clone()).or_default().push(sample);
                        }
                    }
                }
            });
            Self { samples, task }
        }

        pub async fn finish(self) -> Samples {
            self.task.abort();
            let _ = self.task.await;
            match Arc::try_unwrap(self.samples) {
                Ok(m) => m.into_inner().unwrap_or_else(|e| e.into_inner()),
                Err(shared) => {
                    let s = shared.lock().unwrap_or_else(|e| e.into_inner());
                    Samples {
                        names: s.names.clone(),
                        by_name: s.by_name.clone(),
                    }
                }
            }
        }
    }

    fn read(pid: u32, t: f64) -> Option<Sample> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name (which may contain spaces): state is
        // field 3, utime and stime are fields 14 and 15.
        let rest = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
        Some(Sample {
            t,
            rss_kib: field("VmRSS:")?,
            hwm_kib: field("VmHWM:")?,
            cpu_ticks: ticks(11)? + ticks(12)?,
        })
    }

    /// This process's nice value (the controllers and the cluster inherit
    /// the script's): field 19 of `/proc/self/stat`.
    pub fn own_nice() -> Option<i64> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let rest = stat.rsplit_once(')')?.1;
        rest.split_whitespace().nth(16)?.parse().ok()
    }

    pub fn summary(samples: &Samples, name: &str, window: &Window) -> Value {
        let Some(all) = samples.by_name.get(name) else {
            return json!({ "error": "no samples" });
        };
        let inside: Vec<&Sample> = all
            .iter()
            .filter(|s| s.t >= window.start && s.t <= window.end)
            .collect();
        let mut rss: Vec<f64> = inside.iter().map(|s| s.rss_kib as f64).collect();
        rss.sort_by(f64::total_cmp);
        let cpu = match (inside.first(), inside.last()) {
            (Some(a), Some(b)) if b.t > a.t => Some(
                b.cpu_ticks.saturating_sub(a.cpu_ticks) as f64 / TICKS_PER_SECOND / (b.t - a.t),
            ),
            _ => None,
        };
        let mib = |kib: f64| (kib / 1024.0 * 10.0).round() / 10.0;
        json!({
            "peak_rss_mib": all.iter().map(|s| s.hwm_kib).max().map(|k| mib(k as f64)),
            "steady_rss_mib": percentile(&rss, 0.5).map(mib),
            "window_max_rss_mib": rss.last().copied().map(mib),
            "window_cpu_cores": cpu.map(round3),
            "samples": all.len(),
        })
    }
}

/// Waiting for every policy to be measured and acted on; how fresh the
/// results stay.
mod converge {
    use super::*;

    /// Policies with a current status saying metrics are available.
    async fn measured(client: &kube::Client) -> anyhow::Result<Vec<PowerCappingPolicy>> {
        let mut out = Vec::new();
        let api = Api::<PowerCappingPolicy>::all(client.clone());
        let mut params = ListParams::default().limit(500);
        loop {
            let page = api.list(&params).await?;
            out.extend(page.items);
            match page.metadata.continue_ {
                Some(token) if !token.is_empty() => params = params.continue_token(&token),
                _ => break,
            }
        }
        Ok(out)
    }

    fn is_measured(p: &PowerCappingPolicy) -> bool {
        p.status.as_ref().is_some_and(|s| {
            s.observed_generation.is_some()
                && s.observed_generation == p.metadata.generation
                && is_true(&s.conditions, conditions::METRICS_AVAILABLE) == Some(true)
        })
    }

    /// Policy keys with at least one unexpired entry.
    fn with_entries(store: &Store<NodeFrequencies>) -> std::collections::HashSet<String> {
        let now = Timestamp::now();
        store
            .state()
            .iter()
            .flat_map(|nf| {
                nf.spec
                    .gpu_frequencies
                    .iter()
                    .filter(|e| e.expires_at.as_ref().is_none_or(|t| t.0 > now))
                    .map(|e| e.policy.clone())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    pub async fn wait(
        client: &kube::Client,
        topology: &topology::Topology,
        store: &Store<NodeFrequencies>,
        started: Instant,
        timeout: Duration,
    ) -> Value {
        let total = topology.policies.len();
        let keys: Vec<String> = topology
            .policies
            .iter()
            .map(|p| policy_key(&p.namespace, &p.name))
            .collect();
        let mut all_measured: Option<f64> = None;
        let mut all_entries: Option<f64> = None;
        // None until a list of the policies succeeds.
        let (mut measured_count, mut entries_count) = (None, 0);
        loop {
            let elapsed = started.elapsed().as_secs_f64();
            if all_measured.is_none() {
                // An overloaded API server times out now and then: count
                // that as "not yet", not as the end of the bench.
                match tokio::time::timeout(Duration::from_secs(20), measured(client))
                    .await
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out after 20 s")))
                {
                    Ok(policies) => {
                        let done = policies
                            .iter()
                            .filter(|p| {
                                p.namespace()
                                    .is_some_and(|ns| ns.starts_with("scale-bench-"))
                            })
                            .filter(|p| is_measured(p))
                            .count();
                        measured_count = Some(done);
                        if done >= total {
                            all_measured = Some(elapsed);
                        }
                    }
                    Err(error) => tracing::warn!(%error, "listing the policies failed"),
                }
            }
            if all_entries.is_none() {
                let have = with_entries(store);
                entries_count = keys.iter().filter(|k| have.contains(*k)).count();
                if entries_count >= total {
                    all_entries = Some(started.elapsed().as_secs_f64());
                }
            }
            tracing::info!(
                measured = ?measured_count,
                with_entries = entries_count,
                total,
                seconds = round3(elapsed),
                "warming up"
            );
            let converged = all_measured.is_some() && all_entries.is_some();
            if converged || started.elapsed() > timeout {
                if !converged {
                    tracing::warn!(?timeout, "not converged; measuring the window anyway");
                }
                return json!({
                    "converged": converged,
                    "all_policies_measured_s": all_measured.map(round3),
                    "all_policies_have_entries_s": all_entries.map(round3),
                    "policies_measured_at_end": measured_count,
                    "policies_with_entries_at_end": entries_count,
                    "timeout_s": timeout.as_secs_f64(),
                    "note": "seconds from starting both controllers with every object already created (a cold start or failover); measured = status for the current generation with MetricsAvailable=True",
                });
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    pub async fn freshness(
        client: &kube::Client,
        topology: &topology::Topology,
        store: &Store<NodeFrequencies>,
        ttl: Duration,
    ) -> anyhow::Result<Value> {
        let policies = measured(client).await?;
        // After the list: it may take seconds on a loaded server.
        let now = Timestamp::now();
        let ages: Vec<f64> = policies
            .iter()
            .filter_map(|p| p.status.as_ref()?.last_updated.as_ref())
            .map(|t| now.duration_since(t.0).as_secs_f64())
            .collect();
        let ttl = SignedDuration::try_from(ttl).unwrap_or(SignedDuration::from_secs(60));
        let keys: std::collections::HashSet<String> = topology
            .policies
            .iter()
            .map(|p| policy_key(&p.namespace, &p.name))
            .collect();
        let renewals: Vec<f64> = store
            .state()
            .iter()
            .flat_map(|nf| {
                nf.spec
                    .gpu_frequencies
                    .iter()
                    .filter(|e| keys.contains(&e.policy))
                    .filter_map(|e| e.expires_at.as_ref())
                    .map(|t| now.duration_since(t.0 - ttl).as_secs_f64().max(0.0))
                    .collect::<Vec<_>>()
            })
            .collect();
        Ok(json!({
            "status_age": distribution(ages),
            "entry_age": distribution(renewals),
            "note": "age at the end of the window of each policy's status.lastUpdated and of each NodeFrequencies entry's last renewal; with every policy served each interval both stay under interval + reconcile time",
        }))
    }
}

/// Reaction-latency probes: a cap drop travels through both controllers.
mod probe {
    use super::*;

    #[derive(Default)]
    pub struct Results {
        pub patches: usize,
        monitor: Vec<f64>,
        recommender: Vec<f64>,
        end_to_end: Vec<f64>,
        failures: Vec<String>,
    }

    impl Results {
        pub fn summary(&self) -> Value {
            json!({
                "probes": self.end_to_end.len(),
                "failed": self.failures.len(),
                "failures": self.failures.iter().take(5).collect::<Vec<_>>(),
                "monitor": distribution(self.monitor.clone()),
                "recommender": distribution(self.recommender.clone()),
                "end_to_end": distribution(self.end_to_end.clone()),
            })
        }
    }

    pub async fn run(
        client: &kube::Client,
        topology: &topology::Topology,
        store: &Store<NodeFrequencies>,
        deadline: Instant,
        hard_stop: Instant,
        concurrency: usize,
    ) -> Results {
        let results = Mutex::new(Results::default());
        let cursor = AtomicUsize::new(0);
        let n = topology.policies.len();
        // Visits the policies in a scattered but fixed order.
        let order = |i: usize| (i * 7919) % n.max(1);
        let workers = (0..concurrency.max(1)).map(|_| async {
            while Instant::now() < deadline {
                let i = cursor.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let policy = &topology.policies[order(i)];
                let Some(before) = targets(store, policy) else {
                    continue;
                };
                if before.values().any(|t| *t <= plant::MIN_CLOCK_MHZ) {
                    continue; // cannot go lower
                }
                // A probe still running at the hard stop is a failure, but
                // its cap patch was sent: count it.
                let outcome =
                    tokio::time::timeout_at(hard_stop.into(), one(client, store, policy, &before))
                        .await
                        .unwrap_or_else(|_| Outcome {
                            patches: 1,
                            latency: Err(anyhow::anyhow!("still waiting when the window ended")),
                        });
                let mut r = results.lock().unwrap_or_else(|e| e.into_inner());
                r.patches += outcome.patches;
                match outcome.latency {
                    Ok((monitor, recommender)) => {
                        r.monitor.push(monitor);
                        r.recommender.push(recommender);
                        r.end_to_end.push(monitor + recommender);
                    }
                    Err(e) => r
                        .failures
                        .push(format!("{}/{}: {e:#}", policy.namespace, policy.name)),
                }
            }
        });
        futures::future::join_all(workers).await;
        results.into_inner().unwrap_or_else(|e| e.into_inner())
    }

    /// The policy's entry target per GPU, if every GPU has one.
    fn targets(
        store: &Store<NodeFrequencies>,
        p: &topology::Policy,
    ) -> Option<BTreeMap<String, i32>> {
        let key = policy_key(&p.namespace, &p.name);
        p.pods
            .iter()
            .map(|pod| {
                let nf = store.get(&ObjectRef::new(&pod.node))?;
                let entry = nf
                    .spec
                    .gpu_frequencies
                    .iter()
                    .find(|e| e.gpu_id == pod.gpu_uuid && e.policy == key)?;
                Some((pod.gpu_uuid.clone(), entry.target_frequency))
            })
            .collect()
    }

    struct Outcome {
        patches: usize,
        latency: anyhow::Result<(f64, f64)>,
    }

    async fn one(
        client: &kube::Client,
        store: &Store<NodeFrequencies>,
        p: &topology::Policy,
        before: &BTreeMap<String, i32>,
    ) -> Outcome {
        let api = Api::<PowerCappingPolicy>::namespaced(client.clone(), &p.namespace);
        let mut patches = 0;
        let latency = measure(&api, store, p, before, &mut patches).await;
        // Put the cap back, whatever happened.
        let restore = json!({ "spec": { "powerCapLimit": p.cap_watts } });
        if api
            .patch(&p.name, &PatchParams::default(), &Patch::Merge(restore))
            .await
            .is_ok()
        {
            patches += 1;
        }
        Outcome { patches, latency }
    }

    async fn measure(
        api: &Api<PowerCappingPolicy>,
        store: &Store<NodeFrequencies>,
        p: &topology::Policy,
        before: &BTreeMap<String, i32>,
        patches: &mut usize,
    ) -> anyhow::Result<(f64, f64)> {
        let config = watcher::Config::default().fields(&format!("metadata.name={}", p.name));
        let mut watch = std::pin::pin!(watcher(api.clone(), config).applied_objects());
        // The first object comes from the initial list: from here on the
        // watch sees every change.
        tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .context("watch did not start")?;
        let t0 = Instant::now();
        let patch = json!({ "spec": { "powerCapLimit": PROBE_CAP_WATTS } });
        let patched = api
            .patch(&p.name, &PatchParams::default(), &Patch::Merge(patch))
            .await?;
        *patches += 1;
        let generation = patched.metadata.generation.context("no generation")?;
        let seen = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(item) = watch.next().await {
                if let Ok(policy) = item
                    && policy
                        .status
                        .as_ref()
                        .and_then(|s| s.observed_generation)
                        .is_some_and(|g| g >= generation)
                {
                    return true;
                }
            }
            false
        })
        .await;
        if seen != Ok(true) {
            bail!("status did not reach generation {generation} within 30 s");
        }
        let monitor = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let lowered = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if let Some(now) = targets(store, p)
                    && now
                        .iter()
                        .all(|(gpu, t)| before.get(gpu).is_some_and(|b| t < b))
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        if lowered.is_err() {
            bail!("entries were not lowered within 30 s of the status");
        }
        Ok((monitor, t1.elapsed().as_secs_f64()))
    }
}

/// Prometheus text from the API server and the controllers, before and
/// after the window.
mod snapshot {
    use super::*;

    /// One sample line: name, labels, value.
    pub type Line = (String, BTreeMap<String, String>, f64);

    pub struct Snapshot {
        pub apiserver: Vec<Line>,
        pub controllers: HashMap<&'static str, Vec<Line>>,
    }

    /// A snapshot, retried: an overloaded API server times requests out.
    pub async fn take(
        client: &kube::Client,
        controllers: &[children::Controller],
    ) -> anyhow::Result<Snapshot> {
        let mut last = None;
        for _ in 0..3 {
            match tokio::time::timeout(Duration::from_secs(20), try_take(client, controllers)).await
            {
                Ok(Ok(snapshot)) => return Ok(snapshot),
                Ok(Err(e)) => last = Some(e),
                Err(_) => last = Some(anyhow::anyhow!("timed out after 20 s")),
            }
            tracing::warn!(error = ?last, "metrics snapshot failed; retrying");
        }
        Err(last
            .unwrap_or_else(|| anyhow::anyhow!("no attempt"))
            .context("metrics snapshot"))
    }

    async fn try_take(
        client: &kube::Client,
        controllers: &[children::Controller],
    ) -> anyhow::Result<Snapshot> {
        let request = axum::http::Request::get("/metrics").body(Vec::new())?;
        let text = client
            .request_text(request)
            .await
            .context("reading the API server's /metrics")?;
        let apiserver = parse(&text, |name| name == "apiserver_request_total");
        let mut by_controller = HashMap::new();
        for c in controllers {
            let url = format!("http://{}/metrics", c.metrics_addr);
            let text = reqwest::get(&url)
                .await
                .with_context(|| url.clone())?
                .text()
                .await?;
            by_controller.insert(c.name, parse(&text, |n| n.starts_with("climatik_")));
        }
        Ok(Snapshot {
            apiserver,
            controllers: by_controller,
        })
    }

    /// Parses the lines of the metrics `keep` selects.
    pub fn parse(text: &str, keep: impl Fn(&str) -> bool) -> Vec<Line> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(parse_line)
            .filter(|(name, _, _)| keep(name))
            .collect()
    }

    fn parse_line(line: &str) -> Option<Line> {
        let (head, value) = line.trim().rsplit_once(' ')?;
        let value: f64 = value.parse().ok()?;
        let Some((name, rest)) = head.split_once('{') else {
            return Some((head.to_string(), BTreeMap::new(), value));
        };
        let body = rest.strip_suffix('}')?;
        let mut labels = BTreeMap::new();
        let mut chars = body.chars().peekable();
        loop {
            let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
            if key.is_empty() {
                break;
            }
            if chars.next() != Some('"') {
                return None;
            }
            let mut val = String::new();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            val.push(if n == 'n' { '\n' } else { n });
                        }
                    }
                    '"' => break,
                    c => val.push(c),
                }
            }
            labels.insert(key.trim_start_matches(',').trim().to_string(), val);
            if chars.peek() == Some(&',') {
                chars.next();
            }
        }
        Some((name.to_string(), labels, value))
    }

    fn label<'a>(labels: &'a BTreeMap<String, String>, key: &str) -> &'a str {
        labels.get(key).map_or("", String::as_str)
    }

    /// Counter increase per label set between two snapshots.
    fn deltas(before: &[Line], after: &[Line], name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let old: HashMap<&BTreeMap<String, String>, f64> = before
            .iter()
            .filter(|(n, _, _)| n == name)
            .map(|(_, l, v)| (l, *v))
            .collect();
        after
            .iter()
            .filter(|(n, _, _)| n == name)
            .map(|(_, l, v)| (l.clone(), v - old.get(l).copied().unwrap_or(0.0)))
            .filter(|(_, d)| *d >= 0.0)
            .collect()
    }

    pub fn api_rates(before: &[Line], after: &[Line], seconds: f64, bench_writes: f64) -> Value {
        let d = deltas(before, after, "apiserver_request_total");
        let mut by_resource: BTreeMap<(String, String), f64> = BTreeMap::new();
        let (mut writes, mut reads, mut ours) = (0.0, 0.0, 0.0);
        for (labels, n) in d.iter().filter(|(_, n)| *n > 0.0) {
            let verb = label(labels, "verb");
            let group = label(labels, "group");
            let resource = match label(labels, "subresource") {
                "" => label(labels, "resource").to_string(),
                sub => format!("{}/{sub}", label(labels, "resource")),
            };
            let qualified = if group.is_empty() {
                resource
            } else {
                format!("{resource}.{group}")
            };
            if WRITE_VERBS.contains(&verb) {
                writes += n;
                if group == "climatik.io" || group == "events.k8s.io" {
                    ours += n;
                }
            } else if READ_VERBS.contains(&verb) {
                reads += n;
            } else {
                continue;
            }
            *by_resource
                .entry((qualified, verb.to_string()))
                .or_default() += n;
        }
        let per_s = |x: f64| round3(x / seconds.max(1e-9));
        let breakdown: Vec<Value> = by_resource
            .iter()
            .map(|((resource, verb), n)| json!({ "resource": resource, "verb": verb, "count": n, "per_s": per_s(*n) }))
            .collect();
        json!({
            "window_s": round3(seconds),
            "writes_per_s": per_s(writes),
            "controller_writes_per_s": per_s((ours - bench_writes).max(0.0)),
            "reads_per_s": per_s(reads),
            "bench_probe_writes": bench_writes,
            "by_resource_and_verb": breakdown,
            "note": "writes_per_s: every write the API server served (includes the controller-manager and scheduler); controller_writes_per_s: writes to climatik.io and events.k8s.io resources, which only our two controllers write during the window, less the bench's probe patches",
        })
    }

    /// Reconciliations per second and duration percentiles from the
    /// histogram's buckets.
    pub fn reconcile_rates(before: &[Line], after: &[Line], seconds: f64, expected: f64) -> Value {
        let sum = |name: &str| -> f64 { deltas(before, after, name).iter().map(|(_, d)| d).sum() };
        let count = sum("climatik_reconcile_total");
        let errors: BTreeMap<String, f64> =
            deltas(before, after, "climatik_reconcile_errors_total")
                .into_iter()
                .map(|(l, d)| (label(&l, "error").to_string(), d))
                .collect();
        let mut buckets: Vec<(f64, f64)> =
            deltas(before, after, "climatik_reconcile_duration_seconds_bucket")
                .into_iter()
                .filter_map(|(l, d)| {
                    let le = label(&l, "le");
                    let bound = if le == "+Inf" {
                        f64::INFINITY
                    } else {
                        le.parse().ok()?
                    };
                    Some((bound, d))
                })
                .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let duration_sum = sum("climatik_reconcile_duration_seconds_sum");
        let duration_count = sum("climatik_reconcile_duration_seconds_count");
        json!({
            "reconciles": count,
            "reconciles_per_s": round3(count / seconds.max(1e-9)),
            "policies_per_interval_per_s": round3(expected),
            "errors": errors,
            "nodefrequencies_applies_per_s": round3(sum("climatik_nodefrequencies_applies_total") / seconds.max(1e-9)),
            "duration": {
                "p50_s": quantile(&buckets, 0.5).map(round3),
                "p99_s": quantile(&buckets, 0.99).map(round3),
                "p50_beyond_largest_bucket": beyond(&buckets, 0.5),
                "p99_beyond_largest_bucket": beyond(&buckets, 0.99),
                "mean_s": (duration_count > 0.0).then(|| round3(duration_sum / duration_count)),
                "note": "time inside one reconcile (API calls and Prometheus queries), from climatik_reconcile_duration_seconds; percentiles interpolated within buckets",
            },
        })
    }

    /// Whether the quantile falls in the +Inf bucket (then `quantile` gives
    /// only a lower bound, the largest finite bound).
    pub fn beyond(cumulative: &[(f64, f64)], q: f64) -> bool {
        let total = cumulative.last().map_or(0.0, |b| b.1);
        let finite = cumulative
            .iter()
            .filter(|b| b.0.is_finite())
            .map(|b| b.1)
            .fold(0.0, f64::max);
        total > 0.0 && finite < q * total
    }

    /// Like PromQL's histogram_quantile: linear inside the bucket holding
    /// the rank; the largest finite bound when it falls in +Inf.
    pub fn quantile(cumulative: &[(f64, f64)], q: f64) -> Option<f64> {
        let total = cumulative.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut lower = (0.0, 0.0);
        for &(bound, count) in cumulative {
            if count >= rank {
                if bound.is_infinite() {
                    return Some(lower.0);
                }
                let width = count - lower.1;
                let share = if width > 0.0 {
                    (rank - lower.1) / width
                } else {
                    1.0
                };
                return Some(lower.0 + (bound - lower.0) * share);
            }
            lower = (bound, count);
        }
        Some(lower.0)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn parses_labels_and_values() {
            let text = "# TYPE x counter\napiserver_request_total{code=\"200\",group=\"climatik.io\",resource=\"nodefrequencies\",subresource=\"\",verb=\"APPLY\"} 42\nother 1\n";
            let lines = parse(text, |n| n == "apiserver_request_total");
            assert_eq!(lines.len(), 1);
            let (_, labels, value) = &lines[0];
            assert_eq!(label(labels, "verb"), "APPLY");
            assert_eq!(label(labels, "subresource"), "");
            assert_eq!(*value, 42.0);
        }

        #[test]
        fn quantiles_interpolate_within_buckets() {
            let buckets = [
                (0.01, 10.0),
                (0.05, 90.0),
                (0.1, 100.0),
                (f64::INFINITY, 100.0),
            ];
            // Rank 50 is half way through the 0.01-0.05 bucket (10..90).
            let p50 = quantile(&buckets, 0.5).unwrap_or_default();
            assert!((p50 - 0.03).abs() < 1e-9, "{p50}");
            let p99 = quantile(&buckets, 0.99).unwrap_or_default();
            assert!((p99 - 0.095).abs() < 1e-9, "{p99}");
            assert_eq!(quantile(&[(f64::INFINITY, 0.0)], 0.5), None);
            assert!(!beyond(&buckets, 0.99));
            // Everything slower than the largest bound: a lower bound of 10 s.
            let slow = [(1.0, 0.0), (10.0, 0.0), (f64::INFINITY, 50.0)];
            assert_eq!(quantile(&slow, 0.5), Some(10.0));
            assert!(beyond(&slow, 0.5));
        }

        #[test]
        fn rates_count_writes_and_subtract_probes() {
            let line = |verb: &str, group: &str, v: f64| {
                let labels = BTreeMap::from([
                    ("verb".to_string(), verb.to_string()),
                    ("group".to_string(), group.to_string()),
                    ("resource".to_string(), "r".to_string()),
                ]);
                ("apiserver_request_total".to_string(), labels, v)
            };
            let before = vec![line("APPLY", "climatik.io", 10.0), line("LIST", "", 5.0)];
            let after = vec![
                line("APPLY", "climatik.io", 110.0),
                line("LIST", "", 25.0),
                line("PATCH", "", 10.0),
            ];
            let v = api_rates(&before, &after, 10.0, 20.0);
            assert_eq!(v["writes_per_s"], json!(11.0));
            assert_eq!(v["controller_writes_per_s"], json!(8.0));
            assert_eq!(v["reads_per_s"], json!(2.0));
        }
    }
}
