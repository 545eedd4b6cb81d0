//! The controllers are quiet at scale, against the real API server and the
//! real Prometheus: a policy whose power holds steady is measured every
//! period but its status is written only for the heartbeat, and a power
//! move larger than the configured share of the cap is written for what it
//! is; the recommender leaves targets that did not change alone until a
//! quarter of their lifetime has passed, and for good on a node whose agent
//! keeps them alive by the recommender's Lease.

mod common;

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use climatik_api::{NodeFrequencies, PowerCappingPolicy, names::policy_key};
use climatik_controller::{due::StatusWrites, metrics::Metrics};
use climatik_test_support::exposition;
use common::*;
use kube::{Api, api::PostParams};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(60);
/// Periods of steady power watched for writes (the tests' period is 1 s).
const WATCHED_PERIODS: u32 = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn steady_power_is_written_only_for_the_heartbeat() -> anyhow::Result<()> {
    with_one_node("ctrl-quiet", run).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn steady_targets_are_renewed_only_after_half_their_lifetime() -> anyhow::Result<()> {
    with_one_node("ctrl-quiet-nf", renew).await
}

async fn renew(
    cluster: &climatik_test_support::TestCluster,
    ns: &str,
    node: &str,
    _exporter: &str,
) -> anyhow::Result<()> {
    let admin = cluster.client.clone();
    measured_policy(&admin, ns, node, "GPU-R1").await?;
    // Entries live 60 s: none is due for renewal while we watch.
    let recommender = InProcessRecommender::start(&admin, Duration::from_secs(60), ns);
    let watched = watch_generations(&admin, node, &policy_key(ns, "steady")).await;
    recommender.stop().await?;
    let (first, later) = watched?;
    assert!(
        later.is_empty(),
        "the NodeFrequencies went from generation {first} to {later:?} in {WATCHED_PERIODS} periods of unchanged targets"
    );
    Ok(())
}

/// Policy `steady` (1000 W) on `node`'s GPU `gpu`, which the node agent
/// reports, measured once at 500 W, standing for a monitor that saw
/// nothing worth writing since.
async fn measured_policy(
    admin: &kube::Client,
    ns: &str,
    node: &str,
    gpu: &str,
) -> anyhow::Result<()> {
    report_inventory(admin, node, &[gpu]).await?;
    Api::<PowerCappingPolicy>::namespaced(admin.clone(), ns)
        .create(
            &PostParams::default(),
            &policy("steady", "steady", 1000, json!({}))?,
        )
        .await?;
    write_status(admin, ns, "steady", measured_status(node, gpu, 500.0)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn entries_kept_by_the_lease_are_written_on_change_only() -> anyhow::Result<()> {
    with_one_node("ctrl-quiet-kept", kept).await
}

async fn kept(
    cluster: &climatik_test_support::TestCluster,
    ns: &str,
    node: &str,
    _exporter: &str,
) -> anyhow::Result<()> {
    use kube::api::{Patch, PatchParams};
    let admin = cluster.client.clone();
    measured_policy(&admin, ns, node, "GPU-K1").await?;
    // The node's agent says the recommender's Lease keeps entries alive.
    let nfs = Api::<NodeFrequencies>::all(admin.clone());
    nfs.patch_status(
        node,
        &PatchParams::apply("climatik-test-agent-lease").force(),
        &Patch::Apply(json!({
            "apiVersion": "climatik.io/v1alpha1",
            "kind": "NodeFrequencies",
            "status": { "entryLease": format!("{ns}/recommender") },
        })),
    )
    .await?;
    // Entries live 4 s: renewed ones would be rewritten every second, and
    // would have expired long before the watch ends.
    let recommender =
        InProcessRecommender::start_leading(&admin, Duration::from_secs(4), ns, "recommender")?;
    let key = policy_key(ns, "steady");
    let result = async {
        let (first, later) = watch_generations(&admin, node, &key).await?;
        anyhow::ensure!(
            later.is_empty(),
            "the NodeFrequencies went from generation {first} to {later:?} in {WATCHED_PERIODS} periods of unchanged, kept targets"
        );
        let nf = nfs.get(node).await?;
        let entry = nf.spec.gpu_frequencies.iter().find(|e| e.policy == key);
        anyhow::ensure!(
            entry.is_some_and(|e| e.kept_by_lease),
            "the entry is not keptByLease: {entry:?}"
        );
        // Metrics go away: the targets are held, and the entry gets its own
        // lifetime back so it lapses like any other.
        let mut unavailable = measured_status(node, "GPU-K1", 500.0);
        unavailable["conditions"][1]["status"] = json!("False");
        unavailable["conditions"][1]["reason"] = json!("NoMetrics");
        write_status(&admin, ns, "steady", unavailable).await?;
        wait_for("the held entry no longer kept", TIMEOUT, || async {
            let nf = nfs.get(node).await?;
            let now = k8s_openapi::jiff::Timestamp::now();
            Ok(nf
                .spec
                .gpu_frequencies
                .iter()
                .find(|e| e.policy == key)
                .filter(|e| !e.kept_by_lease && e.expires_at.0 > now)
                .map(|_| ()))
        })
        .await
    }
    .await;
    recommender.stop().await?;
    result
}

/// The generation of `node`'s NodeFrequencies once it holds an entry of
/// policy `key`, and every later generation seen over [`WATCHED_PERIODS`]
/// periods.
async fn watch_generations(
    admin: &kube::Client,
    node: &str,
    key: &str,
) -> anyhow::Result<(i64, BTreeSet<i64>)> {
    let nfs = Api::<NodeFrequencies>::all(admin.clone());
    let first = wait_for("the policy's entry", TIMEOUT, || async {
        let nf = nfs.get(node).await?;
        let held = nf.spec.gpu_frequencies.iter().any(|e| e.policy == key);
        Ok(held.then_some(nf.metadata.generation.unwrap_or_default()))
    })
    .await?;
    let mut later = BTreeSet::new();
    for _ in 0..WATCHED_PERIODS * 5 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let generation = nfs.get(node).await?.metadata.generation.unwrap_or_default();
        if generation != first {
            later.insert(generation);
        }
    }
    Ok((first, later))
}

async fn run(
    cluster: &climatik_test_support::TestCluster,
    ns: &str,
    node: &str,
    exporter: &str,
) -> anyhow::Result<()> {
    let admin = cluster.client.clone();
    create_pod(&admin, ns, "steady", node, "steady").await?;
    report_gpus(&admin, node, &["GPU-Q1"], None).await?;
    let dcgm = DcgmServer::start().await?;
    let reading = |watts| vec![gpu("GPU-Q1", "pod", "steady", ns, node, watts)];
    dcgm.set(reading(250.0));
    scrape_dcgm(cluster, exporter, &dcgm)?;
    wait_for_power_series(cluster, ns, &["GPU-Q1"]).await?;
    let policies = Api::<PowerCappingPolicy>::namespaced(admin.clone(), ns);
    // 250 W under a 1000 W cap: below the capping threshold, so nothing
    // but the power could change.
    policies
        .create(
            &PostParams::default(),
            &policy("steady", "steady", 1000, json!({}))?,
        )
        .await?;
    let metrics = Metrics::new("powercapping-controller");
    let prometheus_url = cluster.prometheus_url();
    while_monitoring(&admin, prometheus_url, ns, &metrics, async {
        check(&policies, &metrics, &dcgm, reading(800.0)).await
    })
    .await
}

/// `status.lastUpdated` of policy `steady`, once it is measured at
/// `watts`.
async fn written_at(
    policies: &Api<PowerCappingPolicy>,
    watts: f64,
) -> anyhow::Result<Option<String>> {
    let status = policies.get("steady").await?.status.unwrap_or_default();
    Ok(status
        .last_updated
        .filter(|_| status.current_power == Some(watts))
        .map(|t| t.0.to_string()))
}

async fn check(
    policies: &Api<PowerCappingPolicy>,
    metrics: &Arc<Metrics>,
    dcgm: &DcgmServer,
    moved: Vec<Gpu>,
) -> anyhow::Result<()> {
    let first = wait_for("the first status at 250 W", TIMEOUT, || {
        written_at(policies, 250.0)
    })
    .await?;
    // Every status written while the power holds: each write stamps a new
    // lastUpdated, and writes lie at least a period apart, so polling more
    // often than that sees each one.
    let mut seen = BTreeSet::from([first.clone()]);
    for _ in 0..WATCHED_PERIODS * 5 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Some(at) = written_at(policies, 250.0).await? {
            seen.insert(at);
        }
    }
    let writes = seen.len() - 1;
    // A heartbeat falls due half a period before its number of periods.
    let heartbeat = f64::from(StatusWrites::default().heartbeat_periods) - 0.5;
    let most = (f64::from(WATCHED_PERIODS) / heartbeat).floor() as usize;
    assert!(
        writes <= most,
        "{writes} status writes in {WATCHED_PERIODS} periods of steady power (heartbeats: at most {most}): {seen:?}"
    );
    // The heartbeat keeps lastUpdated current.
    wait_for("a heartbeat write", TIMEOUT, || async {
        let at = written_at(policies, 250.0).await?;
        Ok(at.filter(|at| *at != first))
    })
    .await?;
    let page = exposition::parse(&metrics.encode()).map_err(anyhow::Error::msg)?;
    let decisions = |decision: &str, reason: &str| -> f64 {
        page.find(
            "climatik_write_decisions_total",
            &[
                ("resource", "powercappingpolicies/status"),
                ("decision", decision),
                ("reason", reason),
            ],
        )
        .iter()
        .map(|s| s.value)
        .sum()
    };
    // Measured every period all the same.
    assert!(decisions("skip", "unchanged") >= 1.0, "{page:?}");
    assert!(decisions("write", "heartbeat") >= 1.0, "{page:?}");

    // 550 W more, over 5 % of the cap: written as a power move.
    dcgm.set(moved);
    wait_for("the status at 800 W", TIMEOUT, || {
        written_at(policies, 800.0)
    })
    .await?;
    let page = exposition::parse(&metrics.encode()).map_err(anyhow::Error::msg)?;
    let power_writes: f64 = page
        .find(
            "climatik_write_decisions_total",
            &[("decision", "write"), ("reason", "power")],
        )
        .iter()
        .map(|s| s.value)
        .sum();
    assert_eq!(power_writes, 1.0, "{page:?}");
    Ok(())
}
