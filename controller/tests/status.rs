//! What a policy's status tells its owner, against the real API server and
//! the real Prometheus: the effective cap, the `CapReachable` condition
//! (and its one Event) for a cap below the GPUs' minimum power limits, and
//! `status.energy`, carried on by a monitor started after the first one
//! stopped.

mod common;

use std::time::Duration;

use climatik_api::{PolicyEnergy, PowerCappingPolicy};
use climatik_controller::{metrics::Metrics, monitor};
use common::*;
use k8s_openapi::api::core::v1::Event;
use kube::{
    Api,
    api::{ListParams, PostParams},
};
use serde_json::json;
use tokio::{sync::oneshot, task::JoinHandle};

const TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_reports_energy_effective_cap_and_an_unreachable_cap() -> anyhow::Result<()> {
    with_one_node("ctrl-status", run).await
}

/// The monitor running in-process until the sender is used.
fn start_monitor(
    cluster: &climatik_test_support::TestCluster,
    ns: &str,
) -> (
    oneshot::Sender<()>,
    JoinHandle<climatik_controller::Result<()>>,
) {
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(monitor::run(
        cluster.client.clone(),
        monitor_config(cluster.prometheus_url(), ns),
        Metrics::new("powercapping-controller"),
        async move {
            let _ = stopped.await;
        },
    ));
    (stop, task)
}

async fn run(
    cluster: &climatik_test_support::TestCluster,
    ns: &str,
    node: &str,
    exporter: &str,
) -> anyhow::Result<()> {
    let admin = cluster.client.clone();
    // "big" holds two GPUs that accept no less than 200 W each, under a
    // 300 W cap; "small" one of them under 1000 W.
    for app in ["big", "small"] {
        create_pod(&admin, ns, app, node, app).await?;
    }
    report_gpus(&admin, node, &["GPU-B1", "GPU-B2", "GPU-S1"], Some(200.0)).await?;
    let dcgm = DcgmServer::start().await?;
    dcgm.set(vec![
        gpu("GPU-B1", "pod", "big", ns, node, 250.0),
        gpu("GPU-B2", "pod", "big", ns, node, 250.0),
        gpu("GPU-S1", "pod", "small", ns, node, 100.0),
    ]);
    scrape_dcgm(cluster, exporter, &dcgm)?;
    wait_for_power_series(cluster, ns, &["GPU-B1", "GPU-B2", "GPU-S1"]).await?;
    let policies = Api::<PowerCappingPolicy>::namespaced(admin.clone(), ns);
    for (name, cap) in [("big", 300), ("small", 1000)] {
        policies
            .create(&PostParams::default(), &policy(name, name, cap, json!({}))?)
            .await?;
    }

    let (stop, task) = start_monitor(cluster, ns);
    let first = check_first_monitor(&admin, &policies, ns).await;
    let _ = stop.send(());
    task.await??;
    let stored = first?;

    // A second monitor (a restart, a new leader) adds to what the first
    // one stored instead of starting again from nothing.
    let (stop, task) = start_monitor(cluster, ns);
    let carried = wait_for(
        "big's lifetime energy to grow after the restart",
        TIMEOUT,
        || {
            let policies = policies.clone();
            async move {
                let energy = energy_of(&policies.get("big").await?);
                Ok(energy.filter(|e| e.lifetime_joules > stored.lifetime_joules))
            }
        },
    )
    .await;
    let _ = stop.send(());
    task.await??;
    let carried = carried?;
    // The stored hour was the seed: the new monitor only added to it.
    assert!(
        carried.last_hour_joules >= stored.last_hour_joules,
        "{carried:?} after {stored:?}"
    );
    assert!(
        carried.throttled_fraction >= stored.throttled_fraction,
        "{carried:?} after {stored:?}"
    );
    Ok(())
}

fn energy_of(policy: &PowerCappingPolicy) -> Option<PolicyEnergy> {
    policy.status.as_ref()?.energy.clone()
}

/// What the first monitor writes; returns big's energy as it stopped.
async fn check_first_monitor(
    admin: &kube::Client,
    policies: &Api<PowerCappingPolicy>,
    ns: &str,
) -> anyhow::Result<PolicyEnergy> {
    let big = wait_for("big's energy over a few measurements", TIMEOUT, || async {
        let big = policies.get("big").await?;
        let counted = energy_of(&big).is_some_and(|e| e.lifetime_joules >= 1500.0);
        Ok(counted.then_some(big))
    })
    .await?;
    assert_eq!(
        condition(&big, "CapReachable"),
        Some(("False".into(), "BelowMinimumPowerLimit".into())),
        "{:?}",
        big.status
    );
    let status = big.status.clone().unwrap_or_default();
    assert_eq!(status.effective_cap_watts, Some(300));
    let energy = status.energy.unwrap_or_default();
    // 500 W, capping (above 90 % of 300 W) all along: the hour holds all
    // of the lifetime, and some of the hour was spent capping.
    assert!(
        (energy.last_hour_joules - energy.lifetime_joules).abs() < 1.0,
        "{energy:?}"
    );
    assert!(energy.throttled_fraction > 0.0, "{energy:?}");

    let small = policies.get("small").await?;
    assert_eq!(
        condition(&small, "CapReachable"),
        Some(("True".into(), "AboveMinimumPowerLimit".into()))
    );
    assert_eq!(
        small.status.as_ref().and_then(|s| s.effective_cap_watts),
        Some(1000)
    );

    // One Warning for big, on the transition only, however many
    // measurements have passed since.
    let events = wait_for("the BelowMinimumPowerLimit event", TIMEOUT, || async {
        let events = Api::<Event>::namespaced(admin.clone(), ns)
            .list(&ListParams::default().fields("involvedObject.name=big"))
            .await?;
        let found: Vec<Event> = events
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("BelowMinimumPowerLimit"))
            .collect();
        Ok((!found.is_empty()).then_some(found))
    })
    .await?;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].type_.as_deref(), Some("Warning"));
    assert!(
        events[0]
            .message
            .as_deref()
            .is_some_and(|m| m.contains("300 W") && m.contains("400 W")),
        "{events:?}"
    );
    assert!(
        events[0].count.unwrap_or(1) <= 1,
        "published again: {events:?}"
    );
    Ok(policies
        .get("big")
        .await
        .map(|p| energy_of(&p).unwrap_or_default())?)
}
