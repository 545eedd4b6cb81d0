//! `make demo`: starts the whole loop on the local control plane with
//! simulated GPU nodes, applies annotated workloads, changes a cap mid-run,
//! adds a second workload on a shared node, and shows it all live; then
//! shares a PowerBudget between a serving and a training workload
//! (`budget.rs`); writes samples, summaries and a plot under `target/demo/`.

use std::{io::IsTerminal, path::PathBuf, time::Duration};

use anyhow::Context;
use clap::Parser;
use climatik_demo::{
    budget::BudgetScene,
    dashboard, plot,
    samples::Recording,
    scenario::Sampler,
    stack::{self, Stack, StackConfig},
    view,
};
use climatik_test_support::repo_root;

#[derive(Parser, Debug)]
#[command(about = "Run the Climatik loop on simulated GPU nodes")]
struct Args {
    /// Simulated GPU nodes to use (the local cluster's gpu-node-N).
    #[arg(long, env = "DEMO_NODES", default_value_t = 3)]
    nodes: usize,
    /// Length of the run.
    #[arg(long, env = "DEMO_SECONDS", default_value_t = 240)]
    seconds: u64,
    /// Controller and recommender period, seconds.
    #[arg(long, env = "DEMO_INTERVAL", default_value_t = 5)]
    interval: u64,
    /// Output directory (samples, summary, plot, logs).
    #[arg(long, default_value = "target/demo")]
    out: PathBuf,
    /// Directory with the component binaries; defaults to this binary's.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Leave everything running at the end.
    #[arg(long, env = "KEEP")]
    keep: bool,
}

const NAMESPACE: &str = "demo-inference";
/// The shared-budget scene's namespace and PowerBudget.
const BUDGET_NAMESPACE: &str = "demo-budget";
const BUDGET: &str = "demo-shared";
const SERVING: &str = "vllm";
const TRAINING: &str = "trainer";
/// The serving workload's cap, as in `manifests/demo/vllm-sim.yaml`, and
/// the cap it is lowered to. The simulated GPUs follow the reference sweep,
/// where a fully loaded GPU still draws 53 % of its 700 W at the lowest
/// clock: four of them cannot go below about 1480 W, so the caps stay
/// above that.
const SERVING_CAP: &str = "2400W";
const LOWERED_CAP: &str = "1800W";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    climatik_runtime::crypto::install();
    let args = Args::parse();
    let out = stack::out_dir(&args.out);
    let bin_dir = stack::bin_dir(args.bin_dir.as_deref())?;

    eprintln!("demo: bringing up the local control plane and Prometheus");
    let cluster = climatik_test_support::cluster().await?;
    let config = StackConfig {
        nodes: (0..args.nodes).map(|i| format!("gpu-node-{i}")).collect(),
        bin_dir,
        work_dir: out.clone(),
        interval: Duration::from_secs(args.interval),
        entry_ttl: Duration::from_secs(args.interval * 6),
        scope: "demo".into(),
        gpu_power_limit: true,
    };
    eprintln!("demo: starting agents, webhook, controller and recommender");
    let mut stack = Stack::start(&cluster, config).await?;
    let result = run(&cluster, &mut stack, &args, &out).await;
    if args.keep {
        eprintln!(
            "demo: KEEP set; everything is still running. export KUBECONFIG={}",
            cluster.kubeconfig().display()
        );
        // Keep the processes alive until interrupted.
        let _ = tokio::signal::ctrl_c().await;
    }
    stack.stop().await;
    result
}

async fn run(
    cluster: &climatik_test_support::TestCluster,
    stack: &mut Stack,
    args: &Args,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    wait_namespace_gone(cluster).await?;
    stack.namespace(NAMESPACE).await?;
    let manifests = repo_root().join("manifests/demo");
    cluster
        .kubectl([
            "apply",
            "-n",
            NAMESPACE,
            "-f",
            manifests.join("vllm-sim.yaml").to_str().context("path")?,
        ])
        .await
        .context("applying the serving workload")?;

    let sampler = Sampler::new(
        cluster.client.clone(),
        stack.freqtuners.clone(),
        vec![NAMESPACE.to_string()],
    )?;
    let ansi = std::io::stdout().is_terminal();
    let mut recording = Recording::default();
    let total = args.seconds as f64;
    let cap_change_at = total * 0.4;
    let second_workload_at = total * 0.6;
    let mut cap_changed = false;
    let mut second_started = false;
    let mut notes = vec![format!(
        "{NAMESPACE}/{SERVING} annotated climatik.io/power-cap={SERVING_CAP}"
    )];
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        ticker.tick().await;
        stack.check_alive()?;
        let t = sampler.elapsed();
        if t >= total {
            break;
        }
        if !cap_changed && t >= cap_change_at {
            cluster
                .kubectl([
                    "annotate",
                    "--overwrite",
                    "-n",
                    NAMESPACE,
                    &format!("deployment/{SERVING}"),
                    &format!("climatik.io/power-cap={LOWERED_CAP}"),
                ])
                .await
                .context("changing the cap")?;
            recording
                .events
                .push((t, format!("cap {SERVING_CAP} -> {LOWERED_CAP}")));
            notes.push(format!(
                "t={t:.0}s: cap lowered to {LOWERED_CAP} with kubectl annotate --overwrite"
            ));
            cap_changed = true;
        }
        if !second_started && t >= second_workload_at {
            let node = serving_node(cluster).await?;
            let manifest = std::fs::read_to_string(manifests.join("trainer-sim.yaml"))?;
            let pinned = manifest.replace("NODE_NAME_PLACEHOLDER", &node);
            cluster
                .kubectl_with_stdin(["apply", "-n", NAMESPACE, "-f", "-"], &pinned)
                .await
                .context("applying the training workload")?;
            recording.events.push((t, format!("trainer joins {node}")));
            notes.push(format!(
                "t={t:.0}s: {TRAINING} (900W) started on {node}, sharing it with {SERVING}"
            ));
            second_started = true;
        }
        match sampler.sample().await {
            Ok((policies, gpus)) => {
                print!("{}", view::frame(t, &policies, &gpus, &notes, ansi));
                recording.policies.extend(policies);
                recording.gpus.extend(gpus);
            }
            Err(err) => eprintln!("demo: sample failed: {err:#}"),
        }
    }

    recording.write(out)?;
    let png = out.join("power.png");
    plot::draw(&recording, &png)?;
    println!("\n{}", recording.summary_table());
    println!(
        "samples: {}  plot: {}",
        out.join("samples.json").display(),
        png.display()
    );
    println!(
        "dashboard queries ({}) on the local Prometheus:\n  {}",
        dashboard::DASHBOARD_PATH,
        dashboard_url(cluster)?
    );

    budget_scene(cluster, stack, args, out).await
}

/// The second act: the first act's workloads make way, and a PowerBudget
/// over one node is shared by a serving and a training workload.
async fn budget_scene(
    cluster: &climatik_test_support::TestCluster,
    stack: &mut Stack,
    args: &Args,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    println!("\n== a shared PowerBudget: serving's burst takes watts from training");
    // The budget counts every GPU on its node: nothing else may run there.
    // Foreground: done once their pods are gone.
    cluster
        .kubectl([
            "delete",
            "deployments",
            "--all",
            "-n",
            NAMESPACE,
            "--cascade=foreground",
        ])
        .await
        .context("removing the first act's workloads")?;
    stack.namespace(BUDGET_NAMESPACE).await?;
    let scene = BudgetScene {
        namespace: BUDGET_NAMESPACE.to_string(),
        node: (stack.freqtuners.keys().next())
            .context("the demo runs no simulated node")?
            .clone(),
        budget: BUDGET.to_string(),
        interval: Duration::from_secs(args.interval),
    };
    let record = scene.run(cluster, &mut |line| println!("{line}")).await?;
    stack.check_alive()?;
    record.write(out)?;
    println!("\n{}", record.summary_table());
    println!("budget looks: {}", out.join("budget.json").display());
    Ok(())
}

/// Prometheus' graph page with the queries of the dashboard's key panels,
/// for this demo's namespace and every policy in it.
fn dashboard_url(cluster: &climatik_test_support::TestCluster) -> anyhow::Result<String> {
    let dashboard = dashboard::Dashboard::load()?;
    let values = std::collections::BTreeMap::from([
        ("namespace", NAMESPACE.to_string()),
        ("policy", ".*".to_string()),
        ("__rate_interval", "1m".to_string()),
        ("__interval", "15s".to_string()),
        ("__range", "1h".to_string()),
    ]);
    let mut exprs = Vec::new();
    for title in dashboard::KEY_PANELS {
        for target in dashboard.panel(title)? {
            exprs.push(dashboard::substitute(&target.expr, &values)?);
        }
    }
    dashboard::graph_url(cluster.prometheus_url(), &exprs)
}

/// A previous run's namespace may still be terminating; wait it out.
async fn wait_namespace_gone(cluster: &climatik_test_support::TestCluster) -> anyhow::Result<()> {
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> =
        kube::Api::all(cluster.client.clone());
    climatik_test_support::eventually(
        "the previous demo namespace to be deleted",
        Duration::from_secs(120),
        || async {
            let terminating = namespaces
                .get_opt(NAMESPACE)
                .await?
                .is_some_and(|ns| ns.metadata.deletion_timestamp.is_some());
            Ok((!terminating).then_some(()))
        },
    )
    .await
}

/// The node of the first serving pod, so the trainer shares it.
async fn serving_node(cluster: &climatik_test_support::TestCluster) -> anyhow::Result<String> {
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(cluster.client.clone(), NAMESPACE);
    let list = pods
        .list(&kube::api::ListParams::default().labels(&format!("app={SERVING}")))
        .await?;
    list.items
        .iter()
        .filter_map(|p| p.spec.as_ref().and_then(|s| s.node_name.clone()))
        .next()
        .context("no serving pod has been scheduled yet")
}
