//! The monitor and the recommender against the real API server and a real
//! Prometheus scraping a DCGM-format endpoint this test controls, running
//! with ServiceAccount kubeconfigs that carry exactly the RBAC of
//! docs/components.md.

mod common;

use std::time::Duration;

use anyhow::Context;
use climatik_api::{
    NodeFrequencies, PowerCappingPolicy,
    bounds::MAX_DEVICE_WATTS,
    names::{LEGACY_FINALIZER_POLICY, MANAGER_CONTROLLER},
};
use climatik_controller::{
    lease::{LeaseConfig, Timing},
    metrics::Metrics,
    monitor::{self, MonitorConfig},
    recommender::{self, RecommenderConfig},
};
use common::*;
use k8s_openapi::api::{
    core::v1::ServiceAccount,
    events::v1::Event,
    rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding},
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;
use tokio::sync::oneshot;

const TIMEOUT: Duration = Duration::from_secs(60);

/// The chart's RBAC for one component, from docs/components.md.
fn cluster_rules(component: &str) -> serde_json::Value {
    let policies = |verbs: &[&str]| json!({ "apiGroups": ["climatik.io"], "resources": ["powercappingpolicies"], "verbs": verbs });
    let events = json!({ "apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"] });
    match component {
        "monitor" => json!([
            policies(&["get", "list", "watch", "patch", "update"]),
            { "apiGroups": ["climatik.io"], "resources": ["powercappingpolicies/status"], "verbs": ["get", "patch", "update"] },
            { "apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"] },
            { "apiGroups": ["climatik.io"], "resources": ["nodefrequencies"], "verbs": ["get", "list", "watch"] },
            { "apiGroups": ["apps"], "resources": ["deployments", "statefulsets"], "verbs": ["get"] },
            { "apiGroups": ["batch"], "resources": ["jobs", "cronjobs"], "verbs": ["get"] },
            events,
        ]),
        _ => json!([
            policies(&["get", "list", "watch", "patch"]),
            { "apiGroups": ["climatik.io"], "resources": ["powercappingpolicies/status"], "verbs": ["get", "patch"] },
            { "apiGroups": ["climatik.io"], "resources": ["nodefrequencies"],
              "verbs": ["get", "list", "watch", "create", "patch", "update", "delete"] },
            { "apiGroups": [""], "resources": ["nodes"], "verbs": ["get"] },
            events,
        ]),
    }
}

/// ServiceAccount + ClusterRole(Binding) + lease Role in `ns`; returns a
/// client with that identity.
async fn service_account_client(
    cluster: &climatik_test_support::TestCluster,
    ns: &str,
    component: &str,
) -> anyhow::Result<kube::Client> {
    let client = &cluster.client;
    let sa = component.to_string();
    let role_name = format!("{ns}-{component}");
    Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({ "metadata": { "name": sa } }))?,
        )
        .await?;
    let role: ClusterRole = serde_json::from_value(json!({
        "metadata": { "name": role_name, "labels": { "climatik.io/test": "true" } },
        "rules": cluster_rules(component),
    }))?;
    Api::<ClusterRole>::all(client.clone())
        .create(&PostParams::default(), &role)
        .await?;
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": { "name": role_name, "labels": { "climatik.io/test": "true" } },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role_name },
        "subjects": [{ "kind": "ServiceAccount", "name": sa, "namespace": ns }],
    }))?;
    Api::<ClusterRoleBinding>::all(client.clone())
        .create(&PostParams::default(), &binding)
        .await?;
    let lease_role: Role = serde_json::from_value(json!({
        "metadata": { "name": format!("{component}-leases") },
        "rules": [{ "apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                    "verbs": ["get", "create", "update", "patch"] }],
    }))?;
    Api::<Role>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &lease_role)
        .await?;
    let lease_binding: RoleBinding = serde_json::from_value(json!({
        "metadata": { "name": format!("{component}-leases") },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": format!("{component}-leases") },
        "subjects": [{ "kind": "ServiceAccount", "name": sa, "namespace": ns }],
    }))?;
    Api::<RoleBinding>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &lease_binding)
        .await?;
    let kubeconfig = cluster.service_account_kubeconfig(ns, &sa).await?;
    cluster.client_for(&kubeconfig).await
}

async fn delete_cluster_rbac(client: &kube::Client, ns: &str) {
    for component in ["monitor", "recommender"] {
        let name = format!("{ns}-{component}");
        let _ = Api::<ClusterRoleBinding>::all(client.clone())
            .delete(&name, &DeleteParams::default())
            .await;
        let _ = Api::<ClusterRole>::all(client.clone())
            .delete(&name, &DeleteParams::default())
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn policies_drive_node_frequencies_with_chart_rbac() -> anyhow::Result<()> {
    let cluster = climatik_test_support::cluster().await?;
    cluster.install_crds().await?;
    let ns = cluster.namespace("ctrl-loop").await?;
    let ns_name = ns.name().to_string();
    let client = cluster.client.clone();
    let nodes: Vec<String> = (0..3).map(|i| format!("{ns_name}-node-{i}")).collect();
    for node in &nodes {
        create_node(&client, node, 8).await?;
    }
    let result = run_loop_test(&cluster, &ns_name, &nodes).await;
    delete_all_pods(&client, &ns_name).await;
    delete_nodes(&client, &nodes).await;
    delete_cluster_rbac(&client, &ns_name).await;
    cluster.remove_prometheus_target(&ns_name)?;
    if result.is_ok() {
        ns.cleanup().await?;
    }
    result
}

async fn run_loop_test(
    cluster: &climatik_test_support::TestCluster,
    ns: &str,
    nodes: &[String],
) -> anyhow::Result<()> {
    let admin = cluster.client.clone();
    let dcgm = DcgmServer::start().await?;
    // Pods a0 on node 0, a1 and a2 on node 1 (a2 time-slices a1's GPU), none on node 2.
    for (pod, node) in [("a0", &nodes[0]), ("a1", &nodes[1]), ("a2", &nodes[1])] {
        create_pod(&admin, ns, pod, node, "a").await?;
    }
    let mut series = vec![
        gpu("GPU-A0", "pod", "a0", ns, &nodes[0], 200.0),
        gpu("GPU-A1", "exported_pod", "a1", ns, &nodes[1], 150.0),
        gpu("GPU-A1", "pod", "a2", ns, &nodes[1], 150.0),
    ];
    dcgm.set(series.clone());
    scrape_dcgm(cluster, ns, &dcgm)?;
    report_inventory(&admin, &nodes[0], &["GPU-A0"]).await?;
    report_inventory(&admin, &nodes[1], &["GPU-A1"]).await?;

    // The components run as their ServiceAccounts, with leader election.
    let monitor_client = service_account_client(cluster, ns, "monitor").await?;
    let recommender_client = service_account_client(cluster, ns, "recommender").await?;
    let (stop_monitor, monitor_stopped) = oneshot::channel::<()>();
    let (stop_recommender, recommender_stopped) = oneshot::channel::<()>();
    let lease = |name: &str| LeaseConfig {
        namespace: ns.to_string(),
        name: name.to_string(),
        identity: format!("test-{name}"),
        timing: Timing::new(Duration::from_secs(6), None, None).expect("valid lease timing"),
    };
    let monitor_task = tokio::spawn(monitor::run(
        monitor_client,
        MonitorConfig {
            lease: Some(lease("monitor")),
            ..monitor_config(cluster.prometheus_url(), ns)
        },
        Metrics::new("powercapping-controller"),
        async move {
            let _ = monitor_stopped.await;
        },
    ));
    let recommender_metrics = Metrics::new("freqtuning-recommender");
    let recommender_task = tokio::spawn(recommender::run(
        recommender_client,
        RecommenderConfig {
            interval: Duration::from_secs(1),
            entry_ttl: Duration::from_secs(60),
            lease: Some(lease("recommender")),
            namespace: Some(ns.to_string()),
            identity: "test-recommender".into(),
        },
        recommender_metrics.clone(),
        async move {
            let _ = recommender_stopped.await;
        },
    ));

    let policies = Api::<PowerCappingPolicy>::namespaced(admin.clone(), ns);
    policies
        .create(&PostParams::default(), &policy("a", "a", 300, json!({}))?)
        .await?;

    // Status: 350 W (the shared GPU counted once) over a 300 W cap.
    let status = wait_for("policy a measured", TIMEOUT, || async {
        let p = policies.get("a").await?;
        Ok(p.status
            .clone()
            .filter(|s| s.current_power == Some(350.0) && condition(&p, "AlgorithmValid").is_some())
            .map(|s| (p, s)))
    })
    .await?;
    let (a, status) = status;
    assert!(status.capping_action_required);
    assert_eq!(status.gpu_power, Some(350.0));
    assert_eq!(status.power_cap_limit, Some(300));
    assert_eq!(status.matched_pod_count, 3);
    assert_eq!(status.matched_pods, vec!["a0", "a1", "a2"]);
    assert_eq!(status.observed_generation, a.metadata.generation);
    assert_eq!(status.nodes.len(), 2);
    for (type_, expected) in [
        ("Ready", "True"),
        ("MetricsAvailable", "True"),
        ("Capping", "True"),
        ("AlgorithmValid", "True"),
    ] {
        assert_eq!(
            condition(&a, type_).map(|c| c.0),
            Some(expected.to_string()),
            "{type_}"
        );
    }
    assert!(a.finalizers().is_empty(), "{:?}", a.finalizers());
    // A policy an earlier version left its finalizer on: lifted with the
    // chart's RBAC (patch, no update), so it deletes.
    let mut legacy = policy("legacy", "legacy", 100, json!({}))?;
    legacy.metadata.finalizers = Some(vec![LEGACY_FINALIZER_POLICY.to_string()]);
    policies.create(&PostParams::default(), &legacy).await?;
    wait_for("the legacy finalizer lifted", TIMEOUT, || async {
        let p = policies.get("legacy").await?;
        Ok(p.finalizers().is_empty().then_some(()))
    })
    .await?;
    policies.delete("legacy", &DeleteParams::default()).await?;
    let fields = a.metadata.managed_fields.clone().unwrap_or_default();
    assert!(
        fields
            .iter()
            .any(|m| m.manager.as_deref() == Some(MANAGER_CONTROLLER))
    );

    // NodeFrequencies for exactly the nodes hosting the pods, lowered below max.
    let key = format!("{ns}/a");
    let entries = wait_for("entries of policy a", TIMEOUT, || async {
        let e0 = gpu_entries(&admin, &nodes[0]).await?;
        let e1 = gpu_entries(&admin, &nodes[1]).await?;
        Ok((!e0.is_empty() && !e1.is_empty()).then_some((e0, e1)))
    })
    .await?;
    assert_eq!(entries.0.len(), 1);
    assert_eq!(
        (entries.0[0].0.as_str(), entries.0[0].1.as_str()),
        ("GPU-A0", key.as_str())
    );
    assert_eq!(
        (entries.1[0].0.as_str(), entries.1[0].1.as_str()),
        ("GPU-A1", key.as_str())
    );
    assert!(
        entries.0[0].2 < 2100 && entries.1[0].2 < 2100,
        "{entries:?}"
    );
    assert!(gpu_entries(&admin, &nodes[2]).await?.is_empty());

    // An event tells people capping started.
    let events = Api::<Event>::namespaced(admin.clone(), ns);
    wait_for("CappingStarted event", TIMEOUT, || async {
        let list = events.list(&ListParams::default()).await?;
        Ok(list
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("CappingStarted"))
            .then_some(()))
    })
    .await?;

    // Policy b shares GPU-A1 through its pod b1: both entries on node 1.
    create_pod(&admin, ns, "b1", &nodes[1], "b").await?;
    series.push(gpu("GPU-A1", "pod", "b1", ns, &nodes[1], 150.0));
    dcgm.set(series.clone());
    policies
        .create(&PostParams::default(), &policy("b", "b", 100, json!({}))?)
        .await?;
    let key_b = format!("{ns}/b");
    let merged = wait_for("both policies on node 1", TIMEOUT, || async {
        let e1 = gpu_entries(&admin, &nodes[1]).await?;
        Ok((e1.len() == 2).then_some(e1))
    })
    .await?;
    assert_eq!(
        merged
            .iter()
            .map(|e| (e.0.as_str(), e.1.as_str()))
            .collect::<Vec<_>>(),
        vec![("GPU-A1", key.as_str()), ("GPU-A1", key_b.as_str())]
    );

    // The recommender estimates what capping sheds: a's GPUs run at
    // 1380 MHz of the fallback range's highest clock, so more than 0 W.
    const SHED: &str = "climatik_policy_shed_watts";
    let shed = wait_for("watts shed estimated for a and b", TIMEOUT, || async {
        let page = read_page(&recommender_metrics)?;
        Ok(value(&page, SHED, "a")
            .zip(value(&page, SHED, "b"))
            .filter(|(a, _)| *a > 0.0))
    })
    .await?;
    assert!(shed.0 < 350.0 * 2.0, "{shed:?}");

    // Deleting b removes exactly its entries, a's stay, and its series.
    policies.delete("b", &DeleteParams::default()).await?;
    wait_for("policy b gone with its entries", TIMEOUT, || async {
        let e1 = gpu_entries(&admin, &nodes[1]).await?;
        let gone = policies.get_opt("b").await?.is_none();
        Ok((gone && e1.iter().all(|e| e.1 == key) && e1.len() == 1).then_some(()))
    })
    .await?;
    wait_for("b's estimate removed, a's kept", TIMEOUT, || async {
        let page = read_page(&recommender_metrics)?;
        Ok((value(&page, SHED, "b").is_none() && value(&page, SHED, "a").is_some()).then_some(()))
    })
    .await?;

    // The pods of a go away: NoMatchingPods, and the nodes return to defaults.
    for pod in ["a0", "a1", "a2", "b1"] {
        delete_pod(&admin, ns, pod).await?;
    }
    wait_for("policy a reports no pods", TIMEOUT, || async {
        let p = policies.get("a").await?;
        Ok(
            (condition(&p, "Ready") == Some(("False".into(), "NoMatchingPods".into())))
                .then_some(()),
        )
    })
    .await?;
    wait_for("entries of a removed", TIMEOUT, || async {
        let e0 = gpu_entries(&admin, &nodes[0]).await?;
        let e1 = gpu_entries(&admin, &nodes[1]).await?;
        Ok((e0.is_empty() && e1.is_empty()).then_some(()))
    })
    .await?;

    // Leader election ran through the Leases.
    let leases = Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(admin.clone(), ns);
    let lease = leases.get("recommender").await?;
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("test-recommender")
    );

    // Deleting a needs nobody (no finalizer).
    policies.delete("a", &DeleteParams::default()).await?;
    wait_until_gone(&policies, "a", TIMEOUT).await?;

    let _ = stop_monitor.send(());
    let _ = stop_recommender.send(());
    monitor_task.await?.context("monitor")?;
    recommender_task.await?.context("recommender")?;
    // Stepping down released the Lease.
    let released = leases.get("recommender").await?;
    assert_eq!(released.spec.and_then(|s| s.holder_identity), None);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_algorithm_changes_no_frequencies_and_annotated_workloads_get_their_policy()
-> anyhow::Result<()> {
    let cluster = climatik_test_support::cluster().await?;
    cluster.install_crds().await?;
    let ns = cluster.namespace("ctrl-algo").await?;
    let ns_name = ns.name().to_string();
    let admin = cluster.client.clone();
    let node = format!("{ns_name}-node-0");
    create_node(&admin, &node, 4).await?;
    let result = async {
        let dcgm = DcgmServer::start().await?;
        create_pod(&admin, &ns_name, "x0", &node, "x").await?;
        dcgm.set(vec![gpu("GPU-X0", "pod", "x0", &ns_name, &node, 250.0)]);
        scrape_dcgm(&cluster, &ns_name, &dcgm)?;
        report_inventory(&admin, &node, &["GPU-X0"]).await?;
        let running = InProcessLoop::start(&admin, cluster.prometheus_url(), Duration::from_secs(3), Duration::from_secs(60), &ns_name);
        // `/readyz` follows the policy watches: both sync on an empty list.
        wait_for("both controllers ready", TIMEOUT, || async {
            Ok(running.is_ready().then_some(()))
        })
        .await?;
        let policies = Api::<PowerCappingPolicy>::namespaced(admin.clone(), &ns_name);
        policies
            .create(
                &PostParams::default(),
                &policy("x", "x", 100, json!({ "customAlgorithms": [{ "name": "pid-magic" }] }))?,
            )
            .await?;
        let p = wait_for("AlgorithmValid=False", TIMEOUT, || async {
            let p = policies.get("x").await?;
            let measured = p.status.as_ref().is_some_and(|s| s.current_power == Some(250.0));
            Ok((measured && condition(&p, "AlgorithmValid").is_some()).then_some(p))
        })
        .await?;
        assert_eq!(
            condition(&p, "AlgorithmValid"),
            Some(("False".to_string(), "UnknownAlgorithm".to_string()))
        );
        // Measured and over the cap, yet no frequencies were written.
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(gpu_entries(&admin, &node).await?.is_empty());

        // Fixing the algorithm (a bad parameter first) makes it act.
        let fix = |params: serde_json::Value| {
            json!({ "spec": { "customAlgorithms": [{ "name": "budget-allocator", "parameters": params }] } })
        };
        policies.patch("x", &PatchParams::default(), &Patch::Merge(fix(json!({ "target": "140" })))).await?;
        wait_for("InvalidParameter", TIMEOUT, || async {
            let p = policies.get("x").await?;
            Ok((condition(&p, "AlgorithmValid").map(|c| c.1).as_deref() == Some("InvalidParameter")).then_some(()))
        })
        .await?;
        policies.patch("x", &PatchParams::default(), &Patch::Merge(fix(json!({ "target": "95" })))).await?;
        let budget = wait_for("a power budget", TIMEOUT, || async {
            let nf = Api::<NodeFrequencies>::all(admin.clone()).get_opt(&node).await?;
            Ok(nf.and_then(|nf| nf.spec.gpu_frequencies.first().and_then(|e| e.power_budget_watts)))
        })
        .await?;
        assert!(budget <= 95.0 && budget > 50.0, "{budget}");
        // A cap far above what the GPU draws: its budget is the largest the
        // NodeFrequencies schema accepts, so the API server takes the write.
        let set_cap = |watts: i64| json!({ "spec": { "powerCapLimit": watts } });
        policies.patch("x", &PatchParams::default(), &Patch::Merge(set_cap(1_000_000))).await?;
        wait_for("the largest budget the schema accepts", TIMEOUT, || async {
            let nf = Api::<NodeFrequencies>::all(admin.clone()).get_opt(&node).await?;
            let budget = nf.and_then(|nf| nf.spec.gpu_frequencies.first().and_then(|e| e.power_budget_watts));
            Ok((budget == Some(MAX_DEVICE_WATTS)).then_some(()))
        })
        .await?;
        policies.patch("x", &PatchParams::default(), &Patch::Merge(set_cap(100))).await?;

        // feedback-budget: budgets add up to the whole cap, and feedback
        // lowers the clock ceiling of a GPU measured over it.
        policies
            .patch(
                "x",
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": { "customAlgorithms": [{ "name": "feedback-budget" }] } })),
            )
            .await?;
        // No inventory on this node: the recommender plans on its fallback
        // range, whose top is 2100 MHz.
        let (budget, clock) = wait_for("feedback-budget's entry", TIMEOUT, || async {
            let nf = Api::<NodeFrequencies>::all(admin.clone()).get_opt(&node).await?;
            let entry = nf.and_then(|nf| nf.spec.gpu_frequencies.first().cloned());
            Ok(entry.and_then(|e| {
                e.power_budget_watts
                    .filter(|b| *b > 99.0 && e.target_frequency < 2100)
                    .map(|b| (b, e.target_frequency))
            }))
        })
        .await?;
        assert!(budget <= 100.0 && clock >= 210, "{budget} W, {clock} MHz");

        // node-resplit: the entries name the policy as their budget group,
        // so the node agent re-splits the policy's watts on the node; a
        // value that is not a flag is refused like any bad parameter.
        let resplit = |value: &str| {
            json!({ "spec": { "customAlgorithms": [{ "name": "feedback-budget", "parameters": { "node-resplit": value } }] } })
        };
        policies.patch("x", &PatchParams::default(), &Patch::Merge(resplit("yes"))).await?;
        let p = wait_for("node-resplit=yes refused", TIMEOUT, || async {
            let p = policies.get("x").await?;
            Ok((condition(&p, "AlgorithmValid").map(|c| c.1).as_deref() == Some("InvalidParameter")).then_some(p))
        })
        .await?;
        let message = p
            .status
            .iter()
            .flat_map(|s| &s.conditions)
            .find(|c| c.type_ == "AlgorithmValid")
            .map(|c| c.message.clone())
            .unwrap_or_default();
        assert!(message.contains("node-resplit") && message.contains("true or false"), "{message}");
        policies.patch("x", &PatchParams::default(), &Patch::Merge(resplit("true"))).await?;
        let group = wait_for("the entry's budget group", TIMEOUT, || async {
            let nf = Api::<NodeFrequencies>::all(admin.clone()).get_opt(&node).await?;
            Ok(nf
                .and_then(|nf| nf.spec.gpu_frequencies.first().cloned())
                .filter(|e| e.power_budget_watts.is_some())
                .and_then(|e| e.budget_group))
        })
        .await?;
        assert_eq!(group, format!("{ns_name}/x"));

        // An annotated workload gets its generated policy, owned by it, from
        // the monitor's policy generator; dropping the annotation removes it.
        let deployment: k8s_openapi::api::apps::v1::Deployment = serde_json::from_value(json!({
            "metadata": { "name": "web", "annotations": { "climatik.io/power-cap": "500W" } },
            "spec": {
                "replicas": 0,
                "selector": { "matchLabels": { "app": "web" } },
                "template": {
                    "metadata": { "labels": { "app": "web" } },
                    "spec": { "containers": [{ "name": "main", "image": "registry.k8s.io/pause:3.10" }] },
                },
            },
        }))?;
        let deployments = Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(admin.clone(), &ns_name);
        let created = deployments.create(&PostParams::default(), &deployment).await?;
        wait_for("the generated policy, owned by its Deployment", TIMEOUT, || async {
            let Some(p) = policies.get_opt("deployment-web").await? else {
                return Ok(None);
            };
            let owned = p
                .owner_references()
                .iter()
                .any(|o| o.kind == "Deployment" && o.name == "web" && Some(&o.uid) == created.metadata.uid.as_ref());
            Ok((owned && p.spec.power_cap_limit == 500 && p.labels().get("climatik.io/generated").map(String::as_str) == Some("true")).then_some(()))
        })
        .await?;
        deployments
            .patch(
                "web",
                &PatchParams::default(),
                &Patch::Merge(json!({ "metadata": { "annotations": { "climatik.io/power-cap": null } } })),
            )
            .await?;
        wait_for("the generated policy to go with the annotation", TIMEOUT, || async {
            Ok(policies.get_opt("deployment-web").await?.is_none().then_some(()))
        })
        .await?;

        running.stop().await?;
        anyhow::Ok(())
    }
    .await;
    delete_all_pods(&admin, &ns_name).await;
    delete_nodes(&admin, std::slice::from_ref(&node)).await;
    cluster.remove_prometheus_target(&ns_name)?;
    if result.is_ok() {
        ns.cleanup().await?;
    }
    result
}

/// A restarted recommender (or a new leader) continues from the budgets
/// its entries hold: a GPU drawing at its budget still counts as held back
/// by it, so the new process writes the budgets the old one would have,
/// instead of reading the GPU as wanting only what it draws and handing
/// its watts to the idle GPU for a period. Here with `node-resplit`, where
/// the entries' sum is the node budget the agent re-splits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_recommender_continues_from_the_budgets_of_its_entries() -> anyhow::Result<()> {
    with_one_node("ctrl-warm", warm_start).await
}

async fn warm_start(
    cluster: &climatik_test_support::TestCluster,
    ns: &str,
    node: &str,
    _exporter: &str,
) -> anyhow::Result<()> {
    use climatik_api::{CustomAlgorithm, DeviceKind};
    use climatik_controller::algorithm::{self, Clocks, Device, Observation};

    let admin = cluster.client.clone();
    let gpus = ["GPU-W0", "GPU-W1"];
    report_inventory(&admin, node, &gpus).await?;
    let spec = CustomAlgorithm {
        name: "feedback-budget".into(),
        parameters: [("node-resplit".to_string(), "true".to_string())].into(),
    };
    Api::<PowerCappingPolicy>::namespaced(admin.clone(), ns)
        .create(
            &PostParams::default(),
            &policy(
                "warm",
                "warm",
                1000,
                json!({ "customAlgorithms": [serde_json::to_value(&spec)?] }),
            )?,
        )
        .await?;
    let key = format!("{ns}/warm");
    // The budgets of the policy's entries on the node, once both have one.
    let budgets = || async {
        let nf = Api::<NodeFrequencies>::all(admin.clone()).get(node).await?;
        let of = |gpu: &str| {
            nf.spec
                .gpu_frequencies
                .iter()
                .find(|e| e.gpu_id == gpu && e.policy == key)
                .filter(|e| e.budget_group.as_deref() == Some(key.as_str()))
                .and_then(|e| e.power_budget_watts)
        };
        anyhow::Ok(of(gpus[0]).zip(of(gpus[1])))
    };

    // What the monitor would write: the busy GPU at 500 W, the idle one at
    // 100 W, then the busy one drawing all of the budget it was handed.
    let first = [(gpus[0], 500.0), (gpus[1], 100.0)];
    write_status(&admin, ns, "warm", measured_gpus(node, &first)).await?;
    let recommender = InProcessRecommender::start(&admin, Duration::from_secs(60), ns);
    let handed = wait_for("budgets of the first period", TIMEOUT, || async {
        budgets().await
    })
    .await;
    recommender.stop().await?;
    let handed = handed?;
    let second = [(gpus[0], handed.0), (gpus[1], 100.0)];
    // A new `lastUpdated` (whole seconds): a measurement of its own.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    write_status(&admin, ns, "warm", measured_gpus(node, &second)).await?;

    // The recommender that was not restarted, fed the same two periods.
    let mut kept = algorithm::from_spec(Some(&spec))?;
    let Some(clocks) = Clocks::range(210, 2100, 15) else {
        anyhow::bail!("the fallback clock range");
    };
    let observe = |readings: &[(&str, f64)]| Observation {
        cap_watts: 1000.0,
        threshold_percent: 90.0,
        devices: readings
            .iter()
            .map(|(gpu, watts)| Device {
                id: gpu.to_string(),
                node: node.to_string(),
                kind: DeviceKind::Gpu,
                power_watts: *watts,
                clock_mhz: Some(1380.0),
                clocks: clocks.clone(),
                min_power_limit_watts: None,
                entry_mhz: None,
                entry_budget_watts: None,
            })
            .collect(),
    };
    let planned = |observation: &Observation, kept: &mut Box<dyn algorithm::Algorithm>| {
        let budgets: Vec<Option<f64>> = kept
            .plan(observation)
            .iter()
            .map(|t| t.power_budget_watts)
            .collect();
        budgets
    };
    assert_eq!(
        planned(&observe(&first), &mut kept),
        vec![Some(handed.0), Some(handed.1)],
        "the test's observation is the recommender's"
    );
    let expected = planned(&observe(&second), &mut kept);

    let recommender = InProcessRecommender::start(&admin, Duration::from_secs(60), ns);
    let after = wait_for("budgets after the restart", TIMEOUT, || async {
        Ok(budgets().await?.filter(|b| *b != handed))
    })
    .await;
    recommender.stop().await?;
    let after = after?;
    assert_eq!(
        vec![Some(after.0), Some(after.1)],
        expected,
        "after the restart (before it: {handed:?})"
    );
    Ok(())
}
