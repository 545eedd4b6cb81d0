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
use climatik_controller::{conditions::is_true, prom::Prometheus};
use climatik_runtime::{duration::parse_duration, logging, shutdown};
use climatik_sim_gpu::plant::{self, GpuPlant};
use futures::{StreamExt, stream};
use k8s_openapi::{
    api::core::v1::{Namespace, Node, Pod, ServiceAccount},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams, PostParams},
    runtime::{
        WatchStreamExt,
        reflector::{self, ObjectRef, Store},
        wait::{await_condition, conditions::is_crd_established},
        watcher,
    },
};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

mod children;
mod converge;
mod dcgm;
mod probe;
mod proc;
mod setup;
mod snapshot;
mod topology;

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
(freqtuner/sim-gpu/src/plant.rs, calibrated on the vLLM SM-clock sweep) gives at that clock and the \
pod's load. Prometheus scrapes it every second. The shipped powercapping-controller and \
freqtuning-recommender binaries (release build, leader election on, JSON logs at info) run as \
child processes with the cluster's admin kubeconfig (not the chart's RBAC; the bench measures \
load, tests/loop.rs covers permissions). After every policy is measured and has entries \
(convergence, checked every second on the bench's own watches of the policies and \
NodeFrequencies) and --settle (default 150 s, at least an interval: the clocks start at their maximum and take several periods to settle under the caps), two measurement windows of --window each follow: a steady one with no probe running (steady.api, steady.reconcile: writes with nothing changing but the measured power), then one with the probes (api, reconcile, reaction_latency). Reconcile rate and duration \
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
    /// The simulated agents announce that the recommender's Lease keeps
    /// its entries alive (as the chart's agents do), so entries are written
    /// on change only; false: every entry is renewed each quarter TTL.
    #[arg(long, env = "SCALE_ENTRY_LEASE", default_value_t = true, action = clap::ArgAction::Set)]
    entry_lease: bool,
}

/// The recommender's Lease as the bench starts it (namespace from
/// `--lease-namespace`, the binary's default name).
const RECOMMENDER_LEASE: &str = "climatik-system/climatik-freqtuning-recommender";

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
    /// Wait after convergence before the steady window: the clocks, which
    /// start at their maximum, take several periods to settle under the
    /// caps, and every step is a write. At least one interval.
    #[arg(long, env = "SCALE_SETTLE", default_value = "150s", value_parser = parse_duration)]
    settle: Duration,
    /// The whole run (setup, warm-up, window) ends within about this; a
    /// control plane that cannot keep up gives a partial result.
    #[arg(long, env = "SCALE_DEADLINE", default_value = "660s", value_parser = parse_duration)]
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
    climatik_runtime::crypto::install();
    let args = Args::parse();
    logging::init_text_from_env();
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
    let created = setup::create_all(
        &client,
        &topology,
        args.load.setup_concurrency,
        args.load.entry_lease.then_some(RECOMMENDER_LEASE),
    )
    .await?;
    let setup_s = setup_started.elapsed().as_secs_f64();
    tracing::info!(created, seconds = setup_s, "objects created");

    let (nf_store, nf_task) = watched(Api::<NodeFrequencies>::all(client.clone()));
    // The policies' progress from a watch: a LIST of a thousand policies
    // timed out (20 s) while the API server took the cold start's writes,
    // which hid when they were measured.
    let (policy_store, policy_task) = watched(Api::<PowerCappingPolicy>::all(client.clone()));
    policy_store.wait_until_ready().await?;
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
        Watched {
            nodes: &nf_store,
            policies: &policy_store,
        },
        &controllers,
        started,
        deadline,
    )
    .await;
    let stop = children::stop(&mut controllers).await;
    let samples = sampler.finish().await;
    nf_task.abort();
    policy_task.abort();
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
            "entry_lease": args.load.entry_lease,
            "settle_s": args.run.settle.max(args.run.interval).as_secs_f64(),
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
        "steady": measured.steady,
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
    /// API and reconcile rates of the window without probes.
    steady: Value,
    reconcile: Value,
    reaction: Value,
    api: Value,
    freshness: Value,
}

fn error_value(e: &anyhow::Error) -> Value {
    json!({ "error": format!("{e:#}") })
}

/// What the bench's own watches hold.
#[derive(Clone, Copy)]
struct Watched<'a> {
    nodes: &'a Store<NodeFrequencies>,
    policies: &'a Store<PowerCappingPolicy>,
}

/// Warm-up, then the window; ends by `deadline` whatever the cluster does.
async fn measure(
    args: &Args,
    client: &kube::Client,
    topology: &topology::Topology,
    watched: Watched<'_>,
    controllers: &[children::Controller],
    started: Instant,
    deadline: Instant,
) -> Measured {
    // Leave room for the settling, both windows and three snapshots.
    let settle = args.run.settle.max(args.run.interval);
    let reserve = settle + 2 * args.run.window + Duration::from_secs(60);
    let warmup_until = (Instant::now() + args.run.warmup_timeout)
        .min(deadline.checked_sub(reserve).unwrap_or(deadline));
    let warmup = warmup_until.saturating_duration_since(started);
    let convergence = converge::wait(topology, watched, started, warmup).await;
    tracing::info!(%convergence, ?settle, "warm-up over; settling");
    tokio::time::sleep_until((Instant::now() + settle).min(deadline).into()).await;

    let window_start = started.elapsed().as_secs_f64();
    let take = || async {
        tokio::time::timeout_at(deadline.into(), snapshot::take(client, controllers))
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("no metrics snapshot before the deadline")))
    };
    // The steady state first: no probe (each is a spec change, with the
    // status, entry and Event writes it brings and the clocks' climb back
    // after it) disturbs this window.
    tracing::info!(window = ?args.run.window, "measuring the steady state");
    let steady_before = take().await;
    let t0 = Instant::now();
    let steady_end = (t0 + args.run.window).min(
        deadline
            .checked_sub(args.run.window + Duration::from_secs(40))
            .unwrap_or(deadline),
    );
    tokio::time::sleep_until(steady_end.into()).await;
    let before = take().await;
    let steady_seconds = t0.elapsed().as_secs_f64();
    let steady = match (&steady_before, &before) {
        (Ok(b), Ok(a)) => {
            let (api, reconcile) = rates(args, topology, controllers, b, a, steady_seconds, 0.0);
            json!({
                "note": "the same rates as api and reconcile, over a window of the same length just before theirs, with no probe running: what the controllers write with nothing changing but the measured power",
                "window_s": round3(steady_seconds),
                "api": api,
                "reconcile": reconcile,
            })
        }
        (Err(e), _) | (_, Err(e)) => error_value(e),
    };

    tracing::info!(window = ?args.run.window, "measuring with probes");
    let t0 = Instant::now();
    let window_end = (t0 + args.run.window).min(
        deadline
            .checked_sub(Duration::from_secs(40))
            .unwrap_or(deadline),
    );
    let probes = probe::run(
        client,
        topology,
        watched.nodes,
        window_end,
        window_end + Duration::from_secs(20),
        args.run.probes,
    )
    .await;
    let after = take().await;
    let seconds = t0.elapsed().as_secs_f64();
    let window = proc::Window {
        start: window_start,
        end: started.elapsed().as_secs_f64(),
    };
    let freshness = converge::freshness(topology, watched, args.run.entry_ttl);

    let (api, reconcile) = match (&before, &after) {
        (Ok(before), Ok(after)) => rates(
            args,
            topology,
            controllers,
            before,
            after,
            seconds,
            probes.patches as f64,
        ),
        (Err(e), _) | (_, Err(e)) => (error_value(e), error_value(e)),
    };
    Measured {
        window,
        convergence,
        steady,
        reconcile,
        reaction: probes.summary(),
        api,
        freshness,
    }
}

/// API server and controller rates between two snapshots `seconds` apart,
/// less the bench's own `probe_patches`.
fn rates(
    args: &Args,
    topology: &topology::Topology,
    controllers: &[children::Controller],
    before: &snapshot::Snapshot,
    after: &snapshot::Snapshot,
    seconds: f64,
    probe_patches: f64,
) -> (Value, Value) {
    let api = snapshot::api_rates(&before.apiserver, &after.apiserver, seconds, probe_patches);
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

/// Watches every object of `api` into a store, without `managedFields`:
/// the NodeFrequencies for the DCGM endpoint's clocks and the probes'
/// "entries lowered", the policies for convergence and freshness.
fn watched<K>(api: Api<K>) -> (Store<K>, tokio::task::JoinHandle<()>)
where
    K: kube::Resource
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (store, writer) = reflector::store::<K>();
    let stream = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default())
            .default_backoff()
            .modify(|object| object.meta_mut().managed_fields = None),
    );
    let task = tokio::spawn(async move {
        stream.for_each(|_| async {}).await;
    });
    (store, task)
}

/// The GPU entries of a node that an agent would count now: not expired,
/// or kept by the Lease the node announces (the recommender runs, and so
/// renews it, for the whole bench). Entries kept by the Lease are written
/// on change only, so their `expiresAt` passes while they still hold.
fn live_gpu_entries(
    nf: &NodeFrequencies,
    now: Timestamp,
) -> impl Iterator<Item = &climatik_api::GpuFrequency> {
    let lease_kept = nf
        .status
        .as_ref()
        .is_some_and(|st| st.entry_lease.is_some());
    nf.spec
        .gpu_frequencies
        .iter()
        .filter(move |e| e.expires_at.0 > now || (e.kept_by_lease && lease_kept))
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
