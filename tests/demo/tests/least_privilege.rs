//! Least privilege, proven on the real API server: every component runs as
//! its chart ServiceAccount through a workload's whole life (annotated,
//! capped, re-capped, un-annotated), a CPU policy (CPU targets read the
//! Node), a PowerBudget over the node (allocated, its unmanaged GPUs
//! capped, then deleted), a policy
//! of an older version (its finalizer lifted, its
//! events repeated) and a hand-written entry the node agent cannot apply
//! (its Event, then the same Event again). What each component asked of the API server, read
//! from the audit log, must equal what the chart grants it: a verb never
//! used is a grant too many, a refused request one too few.

use std::{collections::BTreeSet, time::Duration};

use anyhow::{Context, bail};
use climatik_api::{
    NodeFrequencies, PowerBudget, PowerCappingPolicy,
    names::{self, LEGACY_FINALIZER_POLICY},
};
use climatik_demo::{
    scenario::sim_deployment,
    stack::{self, SYSTEM_NAMESPACE, Stack, StackConfig},
};
use climatik_test_support::{
    ScrapeTarget, TestCluster, eventually,
    rbac::{self, Permission},
};
use k8s_openapi::api::{core::v1::Pod, events::v1::Event};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams},
};

const NODE: &str = "gpu-node-1";

#[tokio::test]
async fn each_component_is_granted_exactly_the_verbs_it_uses() -> anyhow::Result<()> {
    let cluster = climatik_test_support::cluster().await?;
    cluster.install_crds().await?;
    // The agent creates its node's NodeFrequencies when it is missing:
    // start without one so that path runs too.
    let node_frequencies = Api::<NodeFrequencies>::all(cluster.client.clone());
    let _ = node_frequencies
        .delete(NODE, &DeleteParams::default())
        .await;
    eventually(
        "the old NodeFrequencies to go",
        Duration::from_secs(30),
        || async {
            Ok(node_frequencies
                .get_opt(NODE)
                .await?
                .is_none()
                .then_some(()))
        },
    )
    .await?;

    let work_dir = climatik_test_support::repo_root().join("target/least-privilege");
    let _ = std::fs::remove_dir_all(&work_dir);
    // A scope of its own: the accounts' user names are this run's alone, so
    // the audit log's earlier lines cannot count.
    let scope = format!("rbac-{}", std::process::id());
    let config = StackConfig {
        nodes: vec![NODE.to_string()],
        bin_dir: climatik_test_support::workspace_binaries(&stack::BINARIES)?,
        work_dir,
        interval: Duration::from_secs(2),
        entry_ttl: Duration::from_secs(20),
        scope: scope.clone(),
        gpu_power_limit: false,
    };
    let mut stack = Stack::start(&cluster, config).await?;
    let namespace = format!("{scope}-workload");
    let (manifest, accounts) = stack.chart_rbac();
    let granted = rbac::granted(manifest)?;
    let users: Vec<(&str, String)> = [
        ("webhook", &accounts.webhook),
        ("powercapping-controller", &accounts.controller),
        ("freqtuning-recommender", &accounts.recommender),
        ("freqtuner", &accounts.freqtuner),
    ]
    .into_iter()
    .map(|(component, account)| {
        (
            component,
            rbac::service_account_user(SYSTEM_NAMESPACE, account),
        )
    })
    .collect();
    let result = lifecycle(&cluster, &mut stack, &namespace).await;
    // Stopped before reading the log: shutdown requests count too.
    stack.stop().await;
    result?;

    let user_names: BTreeSet<String> = users.iter().map(|(_, user)| user.clone()).collect();
    let requested = rbac::requested(&cluster.audit_log()?, &user_names)?;
    let mut problems = Vec::new();
    for (component, user) in &users {
        let asked = requested.get(user).cloned().unwrap_or_default();
        let grants = granted.get(user).cloned().unwrap_or_default();
        let needed = asked.needed();
        let unused: Vec<&Permission> = grants.difference(&needed).collect();
        let missing: Vec<&Permission> = needed.difference(&grants).collect();
        eprintln!(
            "{component}: uses {}",
            needed
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
        if !unused.is_empty() {
            problems.push(format!(
                "{component} is granted what it never used: {}",
                join(&unused)
            ));
        }
        if !missing.is_empty() {
            problems.push(format!(
                "{component} needs what the chart does not grant: {}",
                join(&missing)
            ));
        }
        if !asked.denied.is_empty() {
            let denied: Vec<&Permission> = asked.denied.iter().collect();
            problems.push(format!("{component} was refused: {}", join(&denied)));
        }
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    Ok(())
}

fn join(permissions: &[&Permission]) -> String {
    permissions
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A workload from annotation to removal, plus a policy left by an older
/// version with its finalizer; waits for each step's effect so that every
/// component has done its part.
async fn lifecycle(
    cluster: &TestCluster,
    stack: &mut Stack,
    namespace: &str,
) -> anyhow::Result<()> {
    stack.namespace(namespace).await?;
    let policies = Api::<PowerCappingPolicy>::namespaced(cluster.client.clone(), namespace);
    let node_frequencies = Api::<NodeFrequencies>::all(cluster.client.clone());

    // A hand-written policy as an earlier version left it: with the
    // finalizer the recommender now lifts. It matches no pod and names an
    // algorithm that does not exist, so both controllers report it (an
    // event each, repeated below: a repeated event is a patch).
    apply_legacy_policy(cluster, namespace, "nothing-here", "no-such-algorithm").await?;

    apply_workload(cluster, namespace, Some("900W")).await?;
    let policy = "deployment-serve";
    let entry = format!("{namespace}/{policy}");
    eventually(
        "the policy to be measured and its clocks set",
        Duration::from_secs(120),
        || async {
            let measured = policies
                .get_opt(policy)
                .await?
                .and_then(|p| p.status)
                .is_some_and(|s| s.current_power.unwrap_or(0.0) > 0.0);
            let targeted = node_frequencies.get_opt(NODE).await?.is_some_and(|nf| {
                nf.spec
                    .gpu_frequencies
                    .iter()
                    .any(|target| target.policy == entry)
            });
            Ok((measured && targeted).then_some(()))
        },
    )
    .await?;
    eventually(
        "the legacy finalizer to be lifted",
        Duration::from_secs(60),
        || async {
            Ok(policies
                .get_opt("legacy")
                .await?
                .is_some_and(|p| p.metadata.finalizers.unwrap_or_default().is_empty())
                .then_some(()))
        },
    )
    .await?;

    // The legacy policy now matches the workload and names another unknown
    // algorithm, then matches nothing again: the same events once more.
    apply_legacy_policy(cluster, namespace, "serve", "still-no-such-algorithm").await?;
    eventually(
        "the legacy policy to match the workload",
        Duration::from_secs(60),
        || async {
            let status = policies.get_opt("legacy").await?.and_then(|p| p.status);
            Ok(status
                .filter(|s| {
                    s.matched_pod_count > 0
                        && s.conditions
                            .iter()
                            .any(|c| c.message.contains("still-no-such-algorithm"))
                })
                .map(|_| ()))
        },
    )
    .await?;
    apply_legacy_policy(
        cluster,
        namespace,
        "nothing-here",
        "still-no-such-algorithm",
    )
    .await?;
    eventually(
        "the legacy policy to match nothing again",
        Duration::from_secs(60),
        || async {
            let status = policies.get_opt("legacy").await?.and_then(|p| p.status);
            Ok(status
                .filter(|s| {
                    s.matched_pod_count == 0
                        && s.conditions.iter().any(|c| c.reason == "NoMatchingPods")
                })
                .map(|_| ()))
        },
    )
    .await?;

    // CPU power for the workload's pod (as Kepler reports it) and a policy
    // over its CPUs: CPU targets cover every core, read from the Node.
    let pods = Api::<Pod>::namespaced(cluster.client.clone(), namespace);
    let pod = pods
        .list(&ListParams::default().labels("app=serve"))
        .await?
        .items
        .into_iter()
        .next()
        .map(|p| p.name_any())
        .context("the workload has no pod")?;
    let kepler = ScrapeTarget::start(format!(
        "kepler_pod_cpu_watts{{zone=\"package\",pod_namespace=\"{namespace}\",pod_name=\"{pod}\",node_name=\"{NODE}\"}} 150\n"
    ))
    .await?;
    let kepler_target = format!("{namespace}-kepler");
    cluster.register_prometheus_target(&kepler_target, &kepler.addr, &[])?;
    cluster
        .wait_for_prometheus(
            &format!("kepler_pod_cpu_watts{{pod_namespace=\"{namespace}\"}}"),
            Duration::from_secs(30),
        )
        .await?;
    let cpu_policy = serde_json::json!({
        "apiVersion": "climatik.io/v1alpha1",
        "kind": "PowerCappingPolicy",
        "metadata": {"name": "cpu", "namespace": namespace},
        "spec": {"powerCapLimit": 50, "devices": ["CPU"],
                 "selector": {"matchLabels": {"app": "serve"}}}
    });
    cluster
        .kubectl_with_stdin(["apply", "-f", "-"], &cpu_policy.to_string())
        .await?;
    let cpu_entry = format!("{namespace}/cpu");
    let cpu_targets = eventually(
        "CPU targets for the CPU policy",
        Duration::from_secs(90),
        || async {
            Ok(node_frequencies.get_opt(NODE).await?.and_then(|nf| {
                nf.spec
                    .cpu_frequencies
                    .iter()
                    .any(|target| target.policy == cpu_entry)
                    .then_some(())
            }))
        },
    )
    .await;
    let _ = cluster.remove_prometheus_target(&kepler_target);
    cpu_targets?;
    policies.delete("cpu", &DeleteParams::default()).await?;

    // A new cap: the generator updates its policy.
    apply_workload(cluster, namespace, Some("800W")).await?;
    eventually(
        "the policy to follow the new cap",
        Duration::from_secs(60),
        || async {
            Ok(policies
                .get_opt(policy)
                .await?
                .is_some_and(|p| p.spec.power_cap_limit == 800)
                .then_some(()))
        },
    )
    .await?;

    // A PowerBudget over the node: the controller watches budgets and node
    // labels, writes the budget's status, the policy's allocation and
    // (capUnmanaged) entries for the GPUs the workload does not use, and
    // gives the allocation and the entries up once the budget is gone.
    let budgets = Api::<PowerBudget>::all(cluster.client.clone());
    let budget_name = format!("{namespace}-rack");
    let key = names::budget_key(&budget_name);
    let budget = serde_json::json!({
        "apiVersion": "climatik.io/v1alpha1",
        "kind": "PowerBudget",
        "metadata": {"name": budget_name},
        "spec": {"watts": 1200, "capUnmanaged": true,
                 "nodeSelector": {"matchLabels": {"kubernetes.io/hostname": NODE}}}
    });
    cluster
        .kubectl_with_stdin(["apply", "-f", "-"], &budget.to_string())
        .await?;
    let allocated = eventually(
        "the budget's allocation to reach the policy",
        Duration::from_secs(60),
        || async {
            let budget_written = budgets
                .get_opt(&budget_name)
                .await?
                .and_then(|b| b.status)
                .is_some_and(|s| !s.allocations.is_empty());
            let allocation = policies
                .get_opt(policy)
                .await?
                .and_then(|p| p.status)
                .and_then(|s| s.allocated_watts);
            // capUnmanaged: the node's GPUs outside the workload held too.
            let unmanaged_held = node_frequencies
                .get_opt(NODE)
                .await?
                .is_some_and(|nf| nf.spec.gpu_frequencies.iter().any(|e| e.policy == key));
            Ok(allocation
                .filter(|_| budget_written && unmanaged_held)
                .map(|_| ()))
        },
    )
    .await;
    budgets
        .delete(&budget_name, &DeleteParams::default())
        .await?;
    allocated?;
    eventually(
        "the allocation and the entries given up with the budget",
        Duration::from_secs(60),
        || async {
            let entries = node_frequencies
                .get_opt(NODE)
                .await?
                .is_some_and(|nf| nf.spec.gpu_frequencies.iter().any(|e| e.policy == key));
            Ok(policies
                .get_opt(policy)
                .await?
                .and_then(|p| p.status)
                .is_some_and(|s| s.allocated_watts.is_none() && !entries)
                .then_some(()))
        },
    )
    .await?;

    // No annotation: the generator deletes its policy and the recommender
    // takes the node's targets back.
    apply_workload(cluster, namespace, None).await?;
    eventually(
        "the policy and its targets to go",
        Duration::from_secs(60),
        || async {
            let gone = policies.get_opt(policy).await?.is_none();
            let released = node_frequencies.get_opt(NODE).await?.is_some_and(|nf| {
                !nf.spec
                    .gpu_frequencies
                    .iter()
                    .any(|target| target.policy == entry)
            });
            Ok((gone && released).then_some(()))
        },
    )
    .await?;
    agent_failure_events(cluster).await?;

    let _ = policies
        .patch(
            "legacy",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"finalizers": null}})),
        )
        .await;
    Ok(())
}

/// A hand-written entry for a GPU the node lacks: the agent reports it in
/// an Event on the NodeFrequencies. The entry removed and written again,
/// the same failure is reported again, which patches that Event.
async fn agent_failure_events(cluster: &TestCluster) -> anyhow::Result<()> {
    const MISSING_GPU: &str = "GPU-00000000-0000-0000-0000-000000000000";
    let node_frequencies = Api::<NodeFrequencies>::all(cluster.client.clone());
    let events = Api::<Event>::namespaced(cluster.client.clone(), "default");
    let event = || async {
        let list = events.list(&ListParams::default()).await?;
        Ok::<_, anyhow::Error>(list.items.into_iter().find(|e| {
            e.regarding
                .as_ref()
                .is_some_and(|r| r.name.as_deref() == Some(NODE))
                && e.note.as_deref().is_some_and(|n| n.contains(MISSING_GPU))
        }))
    };
    apply_manual_entry(cluster, Some(MISSING_GPU)).await?;
    eventually(
        "an Event about the missing GPU",
        Duration::from_secs(60),
        event,
    )
    .await?;
    apply_manual_entry(cluster, None).await?;
    eventually(
        "the agent to drop the missing GPU",
        Duration::from_secs(60),
        || async {
            let status = node_frequencies
                .get_opt(NODE)
                .await?
                .and_then(|nf| nf.status);
            Ok(status
                .filter(|s| !s.gpu_frequencies.iter().any(|g| g.gpu_id == MISSING_GPU))
                .map(|_| ()))
        },
    )
    .await?;
    apply_manual_entry(cluster, Some(MISSING_GPU)).await?;
    eventually(
        "the Event about the missing GPU repeated",
        Duration::from_secs(60),
        || async { Ok(event().await?.filter(|e| e.series.is_some()).map(|_| ())) },
    )
    .await?;
    apply_manual_entry(cluster, None).await
}

/// Server-side applies the node's hand-written GPU entry: one for `gpu`,
/// or none.
async fn apply_manual_entry(cluster: &TestCluster, gpu: Option<&str>) -> anyhow::Result<()> {
    let expires = k8s_openapi::jiff::Timestamp::now() + Duration::from_secs(300);
    let entries: Vec<serde_json::Value> = gpu
        .into_iter()
        .map(|gpu| {
            serde_json::json!({"gpuId": gpu, "targetFrequency": 1200,
                               "policy": "manual", "expiresAt": expires.to_string()})
        })
        .collect();
    let manifest = serde_json::json!({
        "apiVersion": "climatik.io/v1alpha1",
        "kind": "NodeFrequencies",
        "metadata": {"name": NODE},
        "spec": {"nodeName": NODE, "gpuFrequencies": entries}
    });
    cluster
        .kubectl_with_stdin(
            [
                "apply",
                "--server-side",
                "--field-manager=least-privilege-manual",
                "-f",
                "-",
            ],
            &manifest.to_string(),
        )
        .await?;
    Ok(())
}

/// The hand-written policy with the finalizer of earlier versions.
async fn apply_legacy_policy(
    cluster: &TestCluster,
    namespace: &str,
    app: &str,
    algorithm: &str,
) -> anyhow::Result<()> {
    let legacy = serde_json::json!({
        "apiVersion": "climatik.io/v1alpha1",
        "kind": "PowerCappingPolicy",
        "metadata": {"name": "legacy", "namespace": namespace,
                     "finalizers": [LEGACY_FINALIZER_POLICY]},
        "spec": {"powerCapLimit": 500, "selector": {"matchLabels": {"app": app}},
                 "customAlgorithms": [{"name": algorithm}]}
    });
    cluster
        .kubectl_with_stdin(["apply", "-f", "-"], &legacy.to_string())
        .await?;
    Ok(())
}

async fn apply_workload(
    cluster: &TestCluster,
    namespace: &str,
    cap: Option<&str>,
) -> anyhow::Result<()> {
    let manifest = sim_deployment(namespace, "serve", NODE, 2, cap);
    // Server-side apply with one field manager: removing the annotation
    // from the manifest removes it from the object.
    cluster
        .kubectl_with_stdin(
            [
                "apply",
                "--server-side",
                "--field-manager=least-privilege-test",
                "-f",
                "-",
            ],
            &manifest,
        )
        .await?;
    Ok(())
}
