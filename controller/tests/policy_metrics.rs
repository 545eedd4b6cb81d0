//! The monitor's per-policy series, against the real API server and the
//! real Prometheus, read from its `/metrics` page: the cap, the power the
//! status reports, energy and capping time that add up between
//! measurements, 0 for MetricsAvailable when no series names the pods, and
//! every series of a deleted policy gone.

mod common;

use std::{sync::Arc, time::Duration};

use climatik_api::PowerCappingPolicy;
use climatik_controller::{metrics::Metrics, power_cache::QUERY_NAME};
use common::*;
use kube::{
    Api,
    api::{DeleteParams, PostParams},
};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(60);

/// Every per-policy family, as the page names its samples.
const FAMILIES: [&str; 6] = [
    "climatik_policy_cap_watts",
    "climatik_policy_power_watts",
    "climatik_policy_energy_joules_total",
    "climatik_policy_capping_seconds_total",
    "climatik_policy_metrics_available",
    "climatik_policy_matched_pods",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_policy_series_follow_the_status_and_go_with_the_policy() -> anyhow::Result<()> {
    with_one_node("ctrl-policy-metrics", run).await
}

async fn run(
    cluster: &climatik_test_support::TestCluster,
    ns: &str,
    node: &str,
    exporter: &str,
) -> anyhow::Result<()> {
    let admin = cluster.client.clone();
    // hot draws 250 W under a 150 W cap, cool 50 W under 1000 W; no
    // exporter series names dark's pod.
    for app in ["hot", "cool", "dark"] {
        create_pod(&admin, ns, app, node, app).await?;
    }
    report_inventory(&admin, node, &["GPU-HOT", "GPU-COOL", "GPU-DARK"]).await?;
    let dcgm = DcgmServer::start().await?;
    dcgm.set(vec![
        gpu("GPU-HOT", "pod", "hot", ns, node, 250.0),
        gpu("GPU-COOL", "pod", "cool", ns, node, 50.0),
    ]);
    scrape_dcgm(cluster, exporter, &dcgm)?;
    wait_for_power_series(cluster, ns, &["GPU-HOT", "GPU-COOL"]).await?;
    let metrics = Metrics::new("powercapping-controller");
    while_monitoring(
        &admin,
        cluster.prometheus_url(),
        ns,
        &metrics,
        check(&admin, ns, &metrics),
    )
    .await
}

async fn check(admin: &kube::Client, ns: &str, metrics: &Arc<Metrics>) -> anyhow::Result<()> {
    let policies = Api::<PowerCappingPolicy>::namespaced(admin.clone(), ns);
    for (name, cap) in [("hot", 150), ("cool", 1000), ("dark", 100)] {
        policies
            .create(&PostParams::default(), &policy(name, name, cap, json!({}))?)
            .await?;
    }
    // Two measurements in a row of each measured policy: time has been
    // counted.
    let page = wait_for("energy counted for hot and cool", TIMEOUT, || async {
        let page = read_page(metrics)?;
        let counted = |p| value(&page, "climatik_policy_energy_joules_total", p) > Some(0.0);
        Ok((counted("hot") && counted("cool")).then_some(page))
    })
    .await?;

    assert_eq!(
        value(&page, "climatik_policy_cap_watts", "hot"),
        Some(150.0)
    );
    assert_eq!(
        value(&page, "climatik_policy_power_watts", "hot"),
        Some(250.0)
    );
    assert_eq!(
        value(&page, "climatik_policy_metrics_available", "hot"),
        Some(1.0)
    );
    assert_eq!(
        value(&page, "climatik_policy_matched_pods", "hot"),
        Some(1.0)
    );
    // hot capped over every interval counted, at 250 W throughout.
    let energy = value(&page, "climatik_policy_energy_joules_total", "hot").unwrap_or(0.0);
    let capping = value(&page, "climatik_policy_capping_seconds_total", "hot").unwrap_or(0.0);
    assert!(capping > 0.0, "{page:?}");
    assert!(
        (energy - 250.0 * capping).abs() < 1e-6,
        "{energy} J in {capping} s"
    );
    // The measurements asked Prometheus, timed: one query for both
    // policies (a reconcile within half a period of it, such as the one
    // the first status write triggers, reuses its answer).
    let timed = page.find(
        "climatik_prometheus_query_duration_seconds_count",
        &[("query", QUERY_NAME), ("result", "ok")],
    );
    assert!(timed.first().is_some_and(|s| s.value >= 1.0), "{timed:?}");
    // cool never capped, but used energy.
    assert_eq!(
        value(&page, "climatik_policy_power_watts", "cool"),
        Some(50.0)
    );
    assert_eq!(
        value(&page, "climatik_policy_capping_seconds_total", "cool"),
        Some(0.0)
    );

    // dark: its pod matched, no power to report.
    let page = wait_for("dark measured", TIMEOUT, || async {
        let page = read_page(metrics)?;
        Ok(value(&page, "climatik_policy_matched_pods", "dark")
            .is_some()
            .then_some(page))
    })
    .await?;
    assert_eq!(
        value(&page, "climatik_policy_metrics_available", "dark"),
        Some(0.0)
    );
    assert_eq!(
        value(&page, "climatik_policy_cap_watts", "dark"),
        Some(100.0)
    );
    assert_eq!(value(&page, "climatik_policy_power_watts", "dark"), None);

    // A deleted policy's series go; the others stay.
    policies.delete("hot", &DeleteParams::default()).await?;
    let page = wait_for("hot's series removed", TIMEOUT, || async {
        let page = read_page(metrics)?;
        let left = FAMILIES.iter().any(|f| value(&page, f, "hot").is_some());
        Ok((!left).then_some(page))
    })
    .await?;
    for family in FAMILIES {
        assert!(value(&page, family, "cool").is_some(), "{family} of cool");
        let dark = value(&page, family, "dark");
        assert_eq!(
            dark.is_some(),
            family != "climatik_policy_power_watts",
            "{family} of dark"
        );
    }
    Ok(())
}
