//! The monitor's reads are shared by all policies, against the real API
//! server and the real Prometheus: with several policies measured period
//! after period, Prometheus is asked once a period for all of them (not per
//! policy), and the pods come from a watch (no pod LIST per measurement).
//! The backlog gauges report every policy as recently measured.

mod common;

use std::time::Duration;

use climatik_api::PowerCappingPolicy;
use climatik_controller::{metrics::Metrics, power_cache::QUERY_NAME};
use climatik_test_support::exposition::{self, Exposition};
use common::*;
use kube::{Api, api::PostParams};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(60);
/// Policies measured side by side, each with its own pod and GPU.
const POLICIES: usize = 6;
/// Measurements of each policy the counts are compared over.
const MEASUREMENTS_EACH: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn policies_share_one_query_a_period_and_a_pod_watch() -> anyhow::Result<()> {
    with_one_node("ctrl-shared", run).await
}

async fn run(
    cluster: &climatik_test_support::TestCluster,
    ns: &str,
    node: &str,
    exporter: &str,
) -> anyhow::Result<()> {
    let admin = cluster.client.clone();
    let uuids: Vec<String> = (0..POLICIES).map(|i| format!("GPU-S{i}")).collect();
    let uuid_refs: Vec<&str> = uuids.iter().map(String::as_str).collect();
    report_gpus(&admin, node, &uuid_refs, None).await?;
    let dcgm = DcgmServer::start().await?;
    dcgm.set(
        (0..POLICIES)
            .map(|i| gpu(&uuids[i], "pod", &format!("w{i}"), ns, node, watts(i)))
            .collect(),
    );
    scrape_dcgm(cluster, exporter, &dcgm)?;
    wait_for_power_series(cluster, ns, &uuid_refs).await?;
    let policies = Api::<PowerCappingPolicy>::namespaced(admin.clone(), ns);
    for i in 0..POLICIES {
        create_pod(&admin, ns, &format!("w{i}"), node, &format!("app{i}")).await?;
        policies
            .create(
                &PostParams::default(),
                &policy(&format!("p{i}"), &format!("app{i}"), 1000, json!({}))?,
            )
            .await?;
    }
    let metrics = Metrics::new("powercapping-controller");
    while_monitoring(&admin, cluster.prometheus_url(), ns, &metrics, async {
        check(&admin, &policies, &metrics).await
    })
    .await
}

/// Policy `i`'s GPU draws this much, so each status shows its own pod was
/// matched and measured.
fn watts(i: usize) -> f64 {
    100.0 + 10.0 * i as f64
}

async fn check(
    admin: &kube::Client,
    policies: &Api<PowerCappingPolicy>,
    metrics: &Metrics,
) -> anyhow::Result<()> {
    wait_for("every policy measured", TIMEOUT, || async {
        for i in 0..POLICIES {
            let status = policies.get(&format!("p{i}")).await?.status;
            if status.and_then(|s| s.current_power) != Some(watts(i)) {
                return Ok(None);
            }
        }
        Ok(Some(()))
    })
    .await?;
    let before = Counts::read(admin, metrics).await?;
    let wanted = before.measurements + (POLICIES * MEASUREMENTS_EACH) as f64;
    wait_for("more measurements", TIMEOUT, || async {
        let page = read_page(metrics)?;
        Ok((measurements(&page) >= wanted).then_some(()))
    })
    .await?;
    let after = Counts::read(admin, metrics).await?;
    let measured = after.measurements - before.measurements;
    let queries = after.queries - before.queries;
    let lists = after.pod_lists - before.pod_lists;
    // Each policy is measured once a period, so `measured / POLICIES`
    // periods went by. One query serves a period; two when the policies'
    // measurements straddle the moment the answer turns half a period old.
    let periods = measured / POLICIES as f64;
    assert!(
        queries <= 2.0 * periods + 2.0,
        "{queries} Prometheus queries for {measured} measurements of {POLICIES} policies (about {periods} periods)"
    );
    // Before the pod watch each measurement listed the pods. The API
    // server counts every namespaced pod LIST of the cluster (a namespace
    // being deleted is listed too), so a few may not be ours.
    assert!(
        lists * 10.0 < measured,
        "{lists} namespaced pod LISTs for {measured} measurements"
    );
    // All measured just now: none waits for more than a couple of periods.
    let page = read_page(metrics)?;
    let oldest = page.find("climatik_monitor_oldest_measurement_age_seconds", &[]);
    assert!(oldest.first().is_some_and(|s| s.value < 3.0), "{oldest:?}");
    Ok(())
}

/// What the counts are compared over.
struct Counts {
    measurements: f64,
    queries: f64,
    pod_lists: f64,
}

impl Counts {
    async fn read(admin: &kube::Client, metrics: &Metrics) -> anyhow::Result<Self> {
        let page = read_page(metrics)?;
        let queries = page
            .find(
                "climatik_prometheus_query_duration_seconds_count",
                &[("query", QUERY_NAME)],
            )
            .iter()
            .map(|s| s.value)
            .sum();
        Ok(Self {
            measurements: measurements(&page),
            queries,
            pod_lists: pod_lists(admin).await?,
        })
    }
}

/// Reconciliations that measured a policy.
fn measurements(page: &Exposition) -> f64 {
    page.find("climatik_reconcile_total", &[])
        .iter()
        .map(|s| s.value)
        .sum()
}

/// Namespaced pod LISTs the API server has answered, from its own
/// `/metrics`.
async fn pod_lists(admin: &kube::Client) -> anyhow::Result<f64> {
    let request = axum::http::Request::get("/metrics").body(Vec::new())?;
    let text = admin.request_text(request).await?;
    Ok(exposition::samples(&text)
        .filter(|s| s.name == "apiserver_request_total")
        .filter(|s| {
            let label = |name: &str| s.labels.get(name).map(String::as_str);
            label("resource") == Some("pods")
                && label("verb") == Some("LIST")
                && label("scope") == Some("namespace")
                && label("subresource").unwrap_or("").is_empty()
        })
        .map(|s| s.value)
        .sum())
}
