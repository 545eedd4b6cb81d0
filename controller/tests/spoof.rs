//! Spoofed GPU series, against the real API server and the real Prometheus:
//! a tenant's scrape target in another job, and a series in the exporter's
//! job with a UUID no node agent reported, both claim the victim's pod with
//! a huge power. The monitor measures the victim's real power only, says
//! what it ignored, and counts it; a node whose agent has not reported its
//! GPUs yet counts once it has.

mod common;

use std::{sync::Arc, time::Duration};

use climatik_api::PowerCappingPolicy;
use climatik_controller::metrics::Metrics;
use common::*;
use kube::{Api, api::PostParams};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(60);
/// What the spoofed series claim the victim draws.
const SPOOFED_WATTS: f64 = 5000.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spoofed_series_do_not_change_the_measured_power() -> anyhow::Result<()> {
    let cluster = climatik_test_support::cluster().await?;
    cluster.install_crds().await?;
    let ns = cluster.namespace("ctrl-spoof").await?;
    let ns_name = ns.name().to_string();
    let admin = cluster.client.clone();
    let nodes: Vec<String> = (0..2).map(|i| format!("{ns_name}-node-{i}")).collect();
    for node in &nodes {
        create_node(&admin, node, 4).await?;
    }
    let exporter = format!("{ns_name}-exporter");
    let tenant = format!("{ns_name}-tenant");
    let result = run(&cluster, &ns_name, &nodes, &exporter, &tenant).await;
    delete_all_pods(&admin, &ns_name).await;
    delete_nodes(&admin, &nodes).await;
    cluster.remove_prometheus_target(&exporter)?;
    cluster.remove_prometheus_target(&tenant)?;
    if result.is_ok() {
        ns.cleanup().await?;
    }
    result
}

async fn run(
    cluster: &climatik_test_support::TestCluster,
    ns: &str,
    nodes: &[String],
    exporter: &str,
    tenant: &str,
) -> anyhow::Result<()> {
    let admin = cluster.client.clone();
    // The victim's pod v0 on node 0 (GPU-V0; GPU-V1 idle beside it), its
    // pod v1 on node 1, whose agent has not reported yet.
    create_pod(&admin, ns, "v0", &nodes[0], "v").await?;
    create_pod(&admin, ns, "v1", &nodes[1], "v").await?;
    report_inventory(&admin, &nodes[0], &["GPU-V0", "GPU-V1"]).await?;

    // The DCGM exporter's job: the real readings, and one series whose
    // UUID no agent reported.
    let dcgm = DcgmServer::start().await?;
    dcgm.set(vec![
        gpu("GPU-V0", "pod", "v0", ns, &nodes[0], 200.0),
        gpu("GPU-W0", "pod", "v1", ns, &nodes[1], 100.0),
        gpu("GPU-FAKE", "pod", "v0", ns, &nodes[0], SPOOFED_WATTS),
    ]);
    scrape_dcgm(cluster, exporter, &dcgm)?;
    // A tenant's target in its own job claims the victim's pod on the
    // real, idle GPU beside it.
    let spoofer = DcgmServer::start().await?;
    spoofer.set(vec![gpu(
        "GPU-V1",
        "pod",
        "v0",
        ns,
        &nodes[0],
        SPOOFED_WATTS,
    )]);
    cluster.register_prometheus_target(tenant, spoofer.addr(), &[("job", "tenant-metrics")])?;
    // Every series is in Prometheus before the first measurement.
    wait_for_power_series(cluster, ns, &["GPU-V0", "GPU-W0", "GPU-FAKE", "GPU-V1"]).await?;
    let metrics = Metrics::new("powercapping-controller");
    while_monitoring(
        &admin,
        cluster.prometheus_url(),
        ns,
        &metrics,
        check(cluster, ns, nodes, &metrics),
    )
    .await
}

async fn check(
    cluster: &climatik_test_support::TestCluster,
    ns: &str,
    nodes: &[String],
    metrics: &Arc<Metrics>,
) -> anyhow::Result<()> {
    let admin = cluster.client.clone();
    let policies = Api::<PowerCappingPolicy>::namespaced(admin.clone(), ns);
    policies
        .create(&PostParams::default(), &policy("v", "v", 1000, json!({}))?)
        .await?;
    let p = wait_for("policy v measured", TIMEOUT, || async {
        let p = policies.get("v").await?;
        Ok(p.status
            .as_ref()
            .is_some_and(|s| s.current_power.is_some())
            .then_some(p))
    })
    .await?;
    let status = p.status.clone().unwrap_or_default();
    // GPU-V0 only: not the tenant's job, not the unreported UUID, not the
    // node without an inventory.
    assert_eq!(status.current_power, Some(200.0), "{status:?}");
    assert!(!status.capping_action_required);
    let devices = status.device_powers();
    assert_eq!(devices, vec![(nodes[0].as_str(), "GPU-V0", 200.0)]);
    let message = p
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "MetricsAvailable"))
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(
        message.contains("1 on a node whose agent has not reported its GPUs")
            && message.contains("1 for a GPU its node's inventory does not list"),
        "{message}"
    );
    let page =
        climatik_test_support::exposition::parse(&metrics.encode()).map_err(anyhow::Error::msg)?;
    for reason in ["no_inventory", "unknown_gpu"] {
        let counted = page.find("climatik_ignored_gpu_series_total", &[("reason", reason)]);
        assert!(
            counted.iter().any(|s| s.value >= 1.0),
            "{reason}: {counted:?}"
        );
    }

    // Node 1's agent reports its GPU: from then on it counts.
    report_inventory(&admin, &nodes[1], &["GPU-W0"]).await?;
    wait_for("node 1's GPU counted", TIMEOUT, || async {
        let p = policies.get("v").await?;
        Ok(p.status
            .filter(|s| s.current_power == Some(300.0))
            .map(|_| ()))
    })
    .await?;
    Ok(())
}
