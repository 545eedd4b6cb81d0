//! `make chaos`: the whole loop on the local control plane with a simulated
//! GPU node, a steady capped workload and a victim workload whose cap comes
//! and goes, while one fault at a time is injected, several rounds: kill -9
//! of each component, restarts of the API server and of etcd, a Prometheus
//! outage, the agent partitioned from the API server, its NodeFrequencies
//! deleted, and a flood of forged AdmissionReviews. After each fault it
//! checks, by measurement, that no policy was lost or doubled, that nothing
//! the removed cap set outlived its entries' TTL, that the cap held again
//! within three periods, and that no component went over its chart memory
//! limit. Writes `target/chaos/report.json` and `summary.md`; exits non-zero
//! when any check failed.

mod checks;
mod faults;
mod forged;
mod memory;
mod observe;
mod report;
mod run;

use std::{collections::BTreeMap, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::Parser;
use climatik_api::{PowerCappingPolicy, names};
use climatik_demo::{
    scenario::sim_deployment,
    stack::{self, Stack, StackConfig},
};
use climatik_test_support::{Forwarder, TestCluster, eventually, repo_root};
use kube::Api;

use crate::{
    checks::{Baseline, Workloads},
    faults::{Durations, Fault, Target},
    memory::Limits,
    observe::{Observer, is_of},
    report::Report,
    run::Run,
};

#[derive(Parser, Debug)]
#[command(about = "Inject faults into the Climatik loop and check that it recovers")]
struct Args {
    /// Rounds: every fault once per round.
    #[arg(long, env = "CHAOS_ROUNDS", default_value_t = 3)]
    rounds: usize,
    /// Controller and recommender period, seconds.
    #[arg(long, env = "CHAOS_INTERVAL", default_value_t = 3)]
    interval: u64,
    /// NodeFrequencies entry TTL, seconds.
    #[arg(long, env = "CHAOS_ENTRY_TTL", default_value_t = 60)]
    entry_ttl: u64,
    /// How long Prometheus stays down, seconds.
    #[arg(long, env = "CHAOS_PROMETHEUS_OUTAGE", default_value_t = 120)]
    prometheus_outage: u64,
    /// How long a killed component or a stopped etcd / API server stays
    /// down, seconds.
    #[arg(long, env = "CHAOS_OUTAGE", default_value_t = 5)]
    outage: u64,
    /// How long the agent is partitioned, seconds (below the entry TTL: a
    /// longer partition lets its entries expire, by design).
    #[arg(long, env = "CHAOS_PARTITION", default_value_t = 30)]
    partition: u64,
    /// Forged AdmissionReviews per round.
    #[arg(long, env = "CHAOS_FORGED", default_value_t = 10_000)]
    forged: usize,
    /// Only the faults whose name contains one of these (comma-separated).
    #[arg(long, env = "CHAOS_FAULTS", value_delimiter = ',')]
    only: Vec<String>,
    /// Output directory (report, logs).
    #[arg(long, default_value = "target/chaos")]
    out: PathBuf,
    /// Directory with the component binaries; defaults to this binary's.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

/// The simulated node everything runs on (four GPUs).
const NODE: &str = "gpu-node-0";
/// The steady workload's cap: two fully loaded GPUs draw ~1400 W.
const STEADY_CAP_WATTS: f64 = 900.0;
const STEADY: &str = "steady";
const VICTIM: &str = "victim";

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    climatik_runtime::crypto::install();
    let args = Args::parse();
    let root = repo_root();
    let out = stack::out_dir(&args.out);
    let _ = std::fs::remove_dir_all(out.join("logs"));
    let bin_dir = stack::bin_dir(args.bin_dir.as_deref())?;
    let limits = Limits::from_values(&root.join("charts/climatik/values.yaml"))?;
    let cluster = climatik_test_support::cluster().await?;
    let interval = Duration::from_secs(args.interval.max(1));
    let entry_ttl = Duration::from_secs(args.entry_ttl.max(1));
    let config = StackConfig {
        nodes: vec![NODE.to_string()],
        bin_dir,
        work_dir: out.clone(),
        interval,
        entry_ttl,
        scope: "chaos".into(),
        gpu_power_limit: true,
    };
    eprintln!("chaos: starting agents, webhook, controller and recommender");
    let mut stack = Stack::start(&cluster, config).await?;
    let result = chaos(&cluster, &mut stack, &args, &out, limits).await;
    stack.stop().await;
    let report = result?;
    report.write(&out)?;
    println!("{}", report.table());
    println!("report: {}", out.join("report.json").display());
    if !report.passed {
        for r in report.results.iter().filter(|r| !r.passed) {
            eprintln!(
                "FAILED {} (round {}): {}",
                r.fault,
                r.round,
                r.reasons.join("; ")
            );
        }
        eprintln!("chaos: some checks failed; see the report");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

async fn chaos(
    cluster: &TestCluster,
    stack: &mut Stack,
    args: &Args,
    out: &std::path::Path,
    limits: Limits,
) -> anyhow::Result<Report> {
    let agent = format!("freqtuner-{NODE}");
    // The agent reaches the API server through a forwarder the partition
    // fault cuts.
    let forwarder = Forwarder::start(cluster.apiserver_authority()?).await?;
    stack.restart_via(&agent, forwarder.addr()).await?;
    let observer = Observer::start(stack.freqtuners.clone())?;

    let namespace = format!("chaos-{}", std::process::id());
    stack.namespace(&namespace).await?;
    apply_workloads(cluster, &namespace).await?;
    let workloads = Workloads {
        namespace: namespace.clone(),
        steady: STEADY.into(),
        victim: VICTIM.into(),
    };
    let baseline = baseline(&observer, &workloads).await?;
    eprintln!("chaos: uncapped baseline {baseline:?}");
    let steady_policy = names::generated_policy_name("Deployment", STEADY);
    let policies = Api::<PowerCappingPolicy>::namespaced(cluster.client.clone(), &namespace);
    let uid = eventually("the steady policy", Duration::from_secs(60), || async {
        Ok(policies
            .get_opt(&steady_policy)
            .await?
            .and_then(|p| p.metadata.uid))
    })
    .await?;

    let faults = faults(args, &agent);
    let durations = Durations {
        killed: Duration::from_secs(args.outage),
        control_plane: Duration::from_secs(args.outage),
        prometheus: Duration::from_secs(args.prometheus_outage),
        partition: Duration::from_secs(args.partition),
        forged: args.forged,
    };
    let mut settings = BTreeMap::new();
    for (key, value) in [
        ("rounds", args.rounds.to_string()),
        ("interval_seconds", args.interval.to_string()),
        ("entry_ttl_seconds", args.entry_ttl.to_string()),
        ("outage_seconds", args.outage.to_string()),
        (
            "prometheus_outage_seconds",
            args.prometheus_outage.to_string(),
        ),
        ("partition_seconds", args.partition.to_string()),
        ("forged_reviews", args.forged.to_string()),
        ("steady_cap_watts", STEADY_CAP_WATTS.to_string()),
        ("victim_cap", run::VICTIM_CAP.to_string()),
    ] {
        settings.insert(key.to_string(), value);
    }
    let memory_limits_mib = stack
        .component_names()
        .iter()
        .filter_map(|c| limits.of(c).map(|l| (c.clone(), l)))
        .collect();
    let log = out.join("logs").join("cluster-scripts.log");
    let mut run = Run {
        target: Target {
            cluster,
            stack,
            forwarder: &forwarder,
            namespace: &namespace,
            log: &log,
        },
        observer: &observer,
        workloads,
        baseline,
        cap_watts: STEADY_CAP_WATTS,
        expected: BTreeMap::from([(steady_policy, uid)]),
        limits,
        interval: Duration::from_secs(args.interval.max(1)),
        entry_ttl: Duration::from_secs(args.entry_ttl.max(1)),
        durations,
    };
    let mut report = Report {
        settings,
        memory_limits_mib,
        results: Vec::new(),
        passed: true,
    };
    for round in 1..=args.rounds {
        for fault in &faults {
            eprintln!("chaos: round {round}: {}", fault.name());
            let result = run.fault(fault, round).await;
            eprintln!(
                "chaos:   {} (recovery {:?} s, cleared {:?} s){}",
                if result.passed { "passed" } else { "FAILED" },
                result.recovery_seconds.map(|s| s.round()),
                result.cleared_seconds.map(|s| s.round()),
                if result.reasons.is_empty() {
                    String::new()
                } else {
                    format!(": {}", result.reasons.join("; "))
                }
            );
            report.passed &= result.passed;
            report.results.push(result);
            // Written as it goes, so an interrupted run leaves its figures.
            report.write(out)?;
        }
    }
    Ok(report)
}

/// Every fault, or those `--only` names.
fn faults(args: &Args, agent: &str) -> Vec<Fault> {
    let all = vec![
        Fault::Kill("webhook".into()),
        Fault::Kill("powercapping-controller".into()),
        Fault::Kill("freqtuning-recommender".into()),
        Fault::Kill(agent.to_string()),
        Fault::RestartControlPlane("kube-apiserver"),
        Fault::RestartControlPlane("etcd"),
        Fault::StopPrometheus,
        Fault::PartitionAgent(NODE.into()),
        Fault::RecreateNodeFrequencies(NODE.into()),
        Fault::ForgedReviews,
    ];
    all.into_iter()
        .filter(|f| args.only.is_empty() || args.only.iter().any(|o| f.name().contains(o.as_str())))
        .collect()
}

/// The steady workload (capped, two GPUs) and the victim (one GPU, its cap
/// set and removed by each fault), both fully loaded on [`NODE`].
async fn apply_workloads(cluster: &TestCluster, namespace: &str) -> anyhow::Result<()> {
    let steady_cap = format!("{STEADY_CAP_WATTS}W");
    for manifest in [
        sim_deployment(namespace, STEADY, NODE, 2, Some(&steady_cap)),
        sim_deployment(namespace, VICTIM, NODE, 1, None),
    ] {
        cluster
            .kubectl_with_stdin(["apply", "-f", "-"], &manifest)
            .await
            .context("applying the workloads")?;
    }
    Ok(())
}

/// The victim's fully loaded, uncapped GPU: what "back to default" means
/// afterwards.
async fn baseline(observer: &Observer, workloads: &Workloads) -> anyhow::Result<Baseline> {
    let victim = format!("{}-", workloads.victim);
    eventually(
        "the victim's GPU to be busy",
        Duration::from_secs(120),
        || async {
            let Some(reading) = observer.since(observer.now() - 1.5).pop() else {
                return Ok(None);
            };
            let gpu = reading
                .gpus
                .iter()
                .find(|g| is_of(g, &workloads.namespace, &victim));
            // Drawing well over idle: the load has started.
            Ok(gpu.filter(|g| g.power_watts > 300.0).and_then(|g| {
                g.clock_mhz.map(|clock| Baseline {
                    loaded_clock_mhz: clock,
                    loaded_watts: g.power_watts,
                })
            }))
        },
    )
    .await
}
