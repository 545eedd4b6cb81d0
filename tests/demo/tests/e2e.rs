//! The whole loop, end to end, at minute scale: one simulated GPU node, one
//! annotated workload, every component as a local process with its chart
//! ServiceAccount. Power must converge under the cap, and removing the cap
//! annotation must delete the generated policy and return the GPUs to
//! their default clocks. While it is capped, every query of the chart's
//! Grafana dashboard must run on the local Prometheus and find data.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context, bail};
use climatik_api::{NodeFrequencies, PowerCappingPolicy};
use climatik_demo::{
    dashboard::{Dashboard, substitute},
    scenario::{Sampler, clocks, sim_deployment},
    stack::{self, Stack, StackConfig},
};
use kube::Api;

const NODE: &str = "gpu-node-2";
const CAP_WATTS: f64 = 900.0;
/// The simulated H100-class GPU's maximum (default) SM clock.
const DEFAULT_CLOCK_MHZ: f64 = 1980.0;
/// Above any idle GPU's draw, below a fully loaded one's (700 W uncapped).
const LOADED_WATTS: f64 = 300.0;
/// The dashboard's queries that may rightly return nothing in this run,
/// by (panel, refId), and why.
const MAY_BE_EMPTY: [(&str, &str, &str); 3] = [
    (
        "GPU power and budget by GPU",
        "B",
        "budgets exist only with the agents' --gpu-power-limit, which this stack leaves off",
    ),
    (
        "Actuation errors by reason and device",
        "A",
        "the simulated GPUs accept every setting, so no error is counted",
    ),
    (
        "Drift re-applied",
        "A",
        "nothing changes the simulated GPUs behind the agent's back",
    ),
];

#[tokio::test]
async fn power_converges_under_the_cap_and_clocks_restore_once_the_cap_is_removed()
-> anyhow::Result<()> {
    let cluster = climatik_test_support::cluster().await?;
    let work_dir = climatik_test_support::repo_root().join("target/e2e");
    let _ = std::fs::remove_dir_all(&work_dir);
    let config = StackConfig {
        nodes: vec![NODE.to_string()],
        bin_dir: climatik_test_support::workspace_binaries(&stack::BINARIES)?,
        work_dir,
        interval: Duration::from_secs(3),
        entry_ttl: Duration::from_secs(30),
        scope: "e2e".into(),
        gpu_power_limit: false,
    };
    let mut stack = Stack::start(&cluster, config).await?;
    let namespace = format!("e2e-{}", std::process::id());
    // Stopping the stack deletes the namespace, whatever happened.
    let result = scenario(&cluster, &mut stack, &namespace).await;
    stack.stop().await;
    result
}

async fn scenario(
    cluster: &climatik_test_support::TestCluster,
    stack: &mut Stack,
    namespace: &str,
) -> anyhow::Result<()> {
    let namespace = namespace.to_string();
    stack.namespace(&namespace).await?;
    let manifest = sim_deployment(&namespace, "serve", NODE, 2, Some(&format!("{CAP_WATTS}W")));
    cluster
        .kubectl_with_stdin(["apply", "-f", "-"], &manifest)
        .await?;

    let sampler = Sampler::new(
        cluster.client.clone(),
        stack.freqtuners.clone(),
        vec![namespace.clone()],
    )?;
    let policy_key = format!("{namespace}/deployment-serve");

    // Uncapped, two GPUs at full load draw ~1400 W; the loop must bring
    // them under 900 W and keep them there.
    let mut under_since: Option<f64> = None;
    let mut peak = 0.0_f64;
    let converged_at = loop {
        stack.check_alive()?;
        let (policies, _) = sampler.sample().await?;
        let t = sampler.elapsed();
        if let Some(p) = policies.iter().find(|p| p.policy == policy_key)
            && p.power_watts > 0.0
        {
            peak = peak.max(p.power_watts);
            if p.power_watts <= CAP_WATTS {
                let since = *under_since.get_or_insert(t);
                if t - since >= 20.0 {
                    break since;
                }
            } else {
                under_since = None;
            }
        }
        if t > 150.0 {
            bail!(
                "power did not stay under {CAP_WATTS} W for 20 s within 150 s (peak {peak:.0} W)"
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert!(
        peak > CAP_WATTS,
        "the workload never exceeded the cap ({peak:.0} W), so capping was not exercised"
    );
    eprintln!("e2e: under the cap from t={converged_at:.0}s (peak {peak:.0} W)");

    // Clocks are lowered while capped...
    let (_, gpus) = sampler.sample().await?;
    let capped: Vec<f64> = gpus
        .iter()
        .filter(|g| g.policy.as_deref() == Some(policy_key.as_str()))
        .filter_map(|g| g.clock_mhz)
        .collect();
    assert_eq!(
        capped.len(),
        2,
        "both GPUs of the pod are reported: {gpus:?}"
    );
    assert!(capped.iter().any(|c| *c < DEFAULT_CLOCK_MHZ), "{capped:?}");

    dashboard_queries_find_data(cluster, namespace.as_str(), "deployment-serve").await?;

    // ...and restored once the cap is gone. The annotation is what a user
    // removes: the generator then deletes its policy (deleting the policy
    // by hand would only see it put back, the annotation still asking).
    cluster
        .kubectl([
            "-n",
            &namespace,
            "annotate",
            "deployment",
            "serve",
            "climatik.io/power-cap-",
        ])
        .await
        .context("removing the cap annotation")?;
    // The webhook drops the policy label with the annotation, so the pod is
    // replaced; its GPUs may differ. Restored means: the policy is gone, no
    // NodeFrequencies entry of it is left (the agent then restores every
    // GPU it locked), and the GPUs under load run at their default clock.
    let policies = Api::<PowerCappingPolicy>::namespaced(cluster.client.clone(), &namespace);
    let node_frequencies = Api::<NodeFrequencies>::all(cluster.client.clone());
    let deadline = sampler.elapsed() + 60.0;
    loop {
        let gone = policies.get_opt("deployment-serve").await?.is_none();
        let entries_left = node_frequencies
            .get_opt(NODE)
            .await?
            .map(|nf| {
                nf.spec
                    .gpu_frequencies
                    .iter()
                    .filter(|e| e.policy == policy_key)
                    .count()
            })
            .unwrap_or(0);
        let (_, gpus) = sampler.sample().await?;
        // Only GPUs under load: idle ones may sit at low clocks, as real
        // GPUs do.
        let loaded: Vec<_> = gpus
            .iter()
            .filter(|g| g.power_watts > LOADED_WATTS)
            .cloned()
            .collect();
        let clocks = clocks(&loaded);
        if gone
            && entries_left == 0
            && clocks.len() == 2
            && clocks.values().all(|c| *c >= DEFAULT_CLOCK_MHZ)
        {
            break;
        }
        if sampler.elapsed() > deadline {
            bail!(
                "not restored within 60 s of removing the cap: policy gone {gone}, \
                 {entries_left} entries left, loaded GPUs' clocks {clocks:?}"
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(())
}

/// Runs every query of the chart's dashboard, with its variables set to this
/// run's policy, until each one that must find data does. A query
/// Prometheus rejects fails at once; one still empty after the deadline
/// fails with every empty query named.
async fn dashboard_queries_find_data(
    cluster: &climatik_test_support::TestCluster,
    namespace: &str,
    policy: &str,
) -> anyhow::Result<()> {
    let dashboard = Dashboard::load()?;
    for (panel, ref_id, _) in MAY_BE_EMPTY {
        if !dashboard
            .targets
            .iter()
            .any(|t| t.panel == panel && t.ref_id == ref_id)
        {
            bail!("MAY_BE_EMPTY names {panel:?} {ref_id}, which the dashboard does not have");
        }
    }
    let values = BTreeMap::from([
        ("namespace", namespace.to_string()),
        ("policy", policy.to_string()),
        // Prometheus scrapes every second here: a window of 30 s holds
        // enough samples for rate() and increase().
        ("__rate_interval", "30s".to_string()),
        ("__interval", "15s".to_string()),
        // The whole run so far.
        ("__range", "10m".to_string()),
    ]);
    // (what, query, the label value a variable query must offer)
    let mut queries: Vec<(String, String, Option<String>)> = Vec::new();
    for v in &dashboard.variables {
        let want = match v.label.as_str() {
            "namespace" => namespace,
            "policy" => policy,
            other => bail!(
                "variable {} lists label {other}, which this test cannot check",
                v.name
            ),
        };
        queries.push((
            format!("variable {}", v.name),
            substitute(&v.query(), &values)?,
            Some(want.to_string()),
        ));
    }
    for t in &dashboard.targets {
        if MAY_BE_EMPTY
            .iter()
            .any(|(panel, ref_id, _)| t.panel == *panel && t.ref_id == *ref_id)
        {
            // Still run: a query Prometheus rejects is wrong even when empty.
            let expr = substitute(&t.expr, &values)?;
            cluster
                .prometheus_query(&expr)
                .await
                .with_context(|| format!("panel {:?} {}", t.panel, t.ref_id))?;
            continue;
        }
        queries.push((
            format!("panel {:?} {}", t.panel, t.ref_id),
            substitute(&t.expr, &values)?,
            None,
        ));
    }

    // The empty ones of the latest round, for the failure message.
    let last_empty = std::sync::Mutex::new(Vec::<String>::new());
    climatik_test_support::eventually(
        "every dashboard query to find data",
        Duration::from_secs(60),
        || async {
            let mut empty = Vec::new();
            for (what, expr, want) in &queries {
                let samples = cluster
                    .prometheus_query(expr)
                    .await
                    .with_context(|| format!("{what}: {expr}"))?;
                let found = match want {
                    Some(value) => samples
                        .iter()
                        .any(|s| s.labels.values().any(|v| v == value)),
                    None => !samples.is_empty(),
                };
                if !found {
                    empty.push(format!("{what}: {expr}"));
                }
            }
            let done = empty.is_empty();
            *last_empty.lock().unwrap_or_else(|e| e.into_inner()) = empty;
            Ok(done.then_some(()))
        },
    )
    .await
    .with_context(|| {
        let empty = last_empty.lock().unwrap_or_else(|e| e.into_inner());
        format!("without data:\n  {}", empty.join("\n  "))
    })
}
