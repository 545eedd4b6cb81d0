//! Deleting policies never waits for the recommender: policies carry no
//! finalizer, so they and their namespaces go whether or not it runs; the
//! recommender removes a deleted policy's NodeFrequencies entries on its
//! own, also after it was down; and it lifts the finalizer that older
//! versions put on policies. The recommender runs alone, in-process; a
//! stand-in writes the status the monitor would.

mod common;

use std::time::Duration;

use climatik_api::{NodeFrequencies, PowerCappingPolicy, names::LEGACY_FINALIZER_POLICY};
use common::*;
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(60);
/// Long enough that no entry expires during a test: what goes, the
/// recommender removed.
const ENTRY_TTL: Duration = Duration::from_secs(600);

/// Creates policy `name` (cap 150 W) measured at 250 W on GPU `gpu` of `node`.
async fn measured_policy(
    admin: &kube::Client,
    ns: &str,
    name: &str,
    node: &str,
    gpu: &str,
) -> anyhow::Result<()> {
    Api::<PowerCappingPolicy>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &policy(name, name, 150, json!({}))?)
        .await?;
    write_status(admin, ns, name, measured_status(node, gpu, 250.0)).await
}

/// Waits until `node` holds exactly the GPU entries of `policies` (keys
/// `namespace/name`, or `manual`), in any order.
async fn wait_for_entries(
    admin: &kube::Client,
    node: &str,
    policies: &[&str],
) -> anyhow::Result<()> {
    let mut want: Vec<String> = policies.iter().map(|p| p.to_string()).collect();
    want.sort();
    wait_for(
        &format!("entries of {want:?} on {node}"),
        TIMEOUT,
        || async {
            let mut have: Vec<String> = gpu_entries(admin, node)
                .await?
                .into_iter()
                .map(|e| e.1)
                .collect();
            have.sort();
            Ok((have == want).then_some(()))
        },
    )
    .await
}

/// Runs `test` in a fresh namespace with one (Node-less) NodeFrequencies,
/// as its agent would have created it, and cleans up; the namespace's deletion is part of the test.
async fn in_namespace<F, Fut>(prefix: &str, test: F) -> anyhow::Result<()>
where
    F: FnOnce(kube::Client, String, String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let cluster = climatik_test_support::cluster().await?;
    cluster.install_crds().await?;
    let ns = cluster.namespace(prefix).await?;
    let ns_name = ns.name().to_string();
    let node = format!("{ns_name}-node-0");
    let admin = cluster.client.clone();
    let result = match create_node_frequencies(&admin, &node).await {
        Ok(()) => test(admin.clone(), ns_name, node.clone()).await,
        Err(error) => Err(error),
    };
    delete_nodes(&admin, std::slice::from_ref(&node)).await;
    result?;
    ns.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn policies_and_their_namespace_delete_after_the_recommender_stopped() -> anyhow::Result<()> {
    in_namespace("ctrl-del-stopped", |admin, ns, node| async move {
        measured_policy(&admin, &ns, "p", &node, "GPU-P").await?;
        measured_policy(&admin, &ns, "q", &node, "GPU-Q").await?;
        let recommender = InProcessRecommender::start(&admin, ENTRY_TTL, &ns);
        wait_for_entries(&admin, &node, &[&format!("{ns}/p"), &format!("{ns}/q")]).await?;
        recommender.stop().await?;

        // Nobody is left to clean up: the policy goes at once (its entries
        // expire by themselves), and q goes with its namespace (in_namespace).
        let policies = Api::<PowerCappingPolicy>::namespaced(admin.clone(), &ns);
        policies.delete("p", &DeleteParams::default()).await?;
        wait_until_gone(&policies, "p", TIMEOUT).await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleting_a_policy_removes_exactly_its_entries() -> anyhow::Result<()> {
    in_namespace("ctrl-del-running", |admin, ns, node| async move {
        measured_policy(&admin, &ns, "p", &node, "GPU-P").await?;
        measured_policy(&admin, &ns, "q", &node, "GPU-Q").await?;
        let recommender = InProcessRecommender::start(&admin, ENTRY_TTL, &ns);
        let (p, q) = (format!("{ns}/p"), format!("{ns}/q"));
        wait_for_entries(&admin, &node, &[&p, &q]).await?;

        let policies = Api::<PowerCappingPolicy>::namespaced(admin.clone(), &ns);
        policies.delete("p", &DeleteParams::default()).await?;
        wait_for_entries(&admin, &node, &[&q]).await?;
        recommender.stop().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn entries_of_a_policy_deleted_while_the_recommender_was_down_are_removed()
-> anyhow::Result<()> {
    in_namespace("ctrl-del-down", |admin, ns, node| async move {
        measured_policy(&admin, &ns, "p", &node, "GPU-P").await?;
        let recommender = InProcessRecommender::start(&admin, ENTRY_TTL, &ns);
        let p = format!("{ns}/p");
        wait_for_entries(&admin, &node, &[&p]).await?;
        // Entries the recommender must leave alone: a manual one, and one
        // of a policy outside the namespace it watches.
        let elsewhere = format!("{ns}-elsewhere/x");
        let foreign = json!({
            "apiVersion": "climatik.io/v1alpha1",
            "kind": "NodeFrequencies",
            "metadata": { "name": node },
            "spec": { "nodeName": node, "gpuFrequencies": [
                { "gpuId": "GPU-M", "targetFrequency": 1200, "policy": "manual",
                  "expiresAt": "2099-01-01T00:00:00Z" },
                { "gpuId": "GPU-E", "targetFrequency": 1200, "policy": elsewhere,
                  "expiresAt": "2099-01-01T00:00:00Z" },
            ] },
        });
        Api::<NodeFrequencies>::all(admin.clone())
            .patch(
                &node,
                &PatchParams::apply("climatik-test-operator"),
                &Patch::Apply(foreign),
            )
            .await?;
        recommender.stop().await?;

        let policies = Api::<PowerCappingPolicy>::namespaced(admin.clone(), &ns);
        policies.delete("p", &DeleteParams::default()).await?;
        // Nobody removed them while the recommender was down.
        let mut left: Vec<String> = gpu_entries(&admin, &node)
            .await?
            .into_iter()
            .map(|e| e.1)
            .collect();
        left.sort();
        let mut all = vec![p.clone(), elsewhere.clone(), "manual".to_string()];
        all.sort();
        assert_eq!(left, all);

        let recommender = InProcessRecommender::start(&admin, ENTRY_TTL, &ns);
        wait_for_entries(&admin, &node, &[&elsewhere, "manual"]).await?;
        recommender.stop().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_finalizer_of_older_versions_is_lifted() -> anyhow::Result<()> {
    in_namespace("ctrl-del-upgrade", |admin, ns, _node| async move {
        // As an older recommender left them: one policy live, one deleted
        // while no recommender ran (Terminating, held by the finalizer).
        let policies = Api::<PowerCappingPolicy>::namespaced(admin.clone(), &ns);
        for name in ["live", "terminating"] {
            let mut p = policy(name, name, 150, json!({}))?;
            p.metadata.finalizers = Some(vec![LEGACY_FINALIZER_POLICY.to_string()]);
            policies.create(&PostParams::default(), &p).await?;
        }
        policies
            .delete("terminating", &DeleteParams::default())
            .await?;
        let held = policies.get("terminating").await?;
        assert!(held.metadata.deletion_timestamp.is_some());

        let recommender = InProcessRecommender::start(&admin, ENTRY_TTL, &ns);
        wait_for("the finalizer lifted from policy live", TIMEOUT, || async {
            let p = policies.get("live").await?;
            Ok(p.finalizers().is_empty().then_some(()))
        })
        .await?;
        wait_until_gone(&policies, "terminating", TIMEOUT).await?;
        recommender.stop().await
    })
    .await
}
