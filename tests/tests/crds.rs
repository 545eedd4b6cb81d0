//! The generated CRDs install into a real API server, their schemas
//! validate and default for real, and status is a subresource.

use climatik_api::{NodeFrequencies, PowerCappingPolicy, names};
use climatik_test_support::cluster;
use kube::{
    Api,
    api::{Patch, PatchParams},
};

const FIELD_MANAGER: &str = "climatik-crd-test";

#[tokio::test]
async fn policy_round_trips_through_server_side_apply() -> anyhow::Result<()> {
    let cluster = cluster().await?;
    cluster.install_crds().await?;
    let ns = cluster.namespace("crd").await?;
    let api = Api::<PowerCappingPolicy>::namespaced(cluster.client.clone(), ns.name());
    let applied = serde_json::json!({
        "apiVersion": "climatik.io/v1alpha1",
        "kind": "PowerCappingPolicy",
        "metadata": {"name": "llm"},
        "spec": {
            "powerCapLimit": 300,
            "selector": {"matchLabels": {names::LABEL_POLICY: "llm"}},
            "customAlgorithms": [{"name": "dynamic-frequency-scaler",
                                  "parameters": {"scaling-factor": "0.8"}}]
        }
    });
    let stored = api
        .patch(
            "llm",
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(&applied),
        )
        .await?;
    assert_eq!(stored.spec.power_cap_limit, 300);
    // Defaults come from the schema, applied by the API server.
    assert_eq!(stored.spec.capping_threshold, 90);
    assert_eq!(stored.spec.devices, vec![climatik_api::DeviceKind::Gpu]);
    assert!(!stored.spec.dry_run);

    // Status is a subresource: a status apply does not touch spec.
    let status = serde_json::json!({
        "apiVersion": "climatik.io/v1alpha1",
        "kind": "PowerCappingPolicy",
        "status": {"cappingActionRequired": true, "currentPower": 312.5, "matchedPodCount": 2}
    });
    let with_status = api
        .patch_status(
            "llm",
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(&status),
        )
        .await?;
    let read = with_status.status.unwrap_or_default();
    assert!(read.capping_action_required);
    assert_eq!(read.current_power, Some(312.5));
    assert_eq!(with_status.spec.power_cap_limit, 300);

    // `kubectl get pcp` shows the printer columns.
    let table = cluster.kubectl(["get", "pcp", "-n", ns.name()]).await?;
    let header = table.lines().next().unwrap_or_default();
    for column in ["NAME", "CAP", "POWER", "CAPPING", "AGE"] {
        assert!(header.contains(column), "missing {column} in {header:?}");
    }
    assert!(table.contains("312.5"), "{table}");
    ns.cleanup().await
}

#[tokio::test]
async fn invalid_policies_are_rejected_by_the_schema() -> anyhow::Result<()> {
    let cluster = cluster().await?;
    cluster.install_crds().await?;
    let ns = cluster.namespace("crd-invalid").await?;
    let manifest = format!(
        "apiVersion: climatik.io/v1alpha1\nkind: PowerCappingPolicy\nmetadata:\n  name: bad\n  namespace: {}\nspec:\n  powerCapLimit: -5\n  cappingThreshold: 150\n  selector: {{matchLabels: {{app: x}}}}\n",
        ns.name()
    );
    let err = cluster
        .kubectl_with_stdin(["apply", "-f", "-"], &manifest)
        .await
        .expect_err("the API server must reject a negative cap and a threshold of 150");
    let message = format!("{err:#}");
    assert!(message.contains("spec.powerCapLimit"), "{message}");
    assert!(
        message.contains("should be greater than or equal to 1"),
        "{message}"
    );
    assert!(message.contains("spec.cappingThreshold"), "{message}");
    assert!(
        message.contains("should be less than or equal to 100"),
        "{message}"
    );
    let policies = Api::<PowerCappingPolicy>::namespaced(cluster.client.clone(), ns.name());
    assert!(policies.get_opt("bad").await?.is_none());
    ns.cleanup().await
}

#[tokio::test]
async fn node_frequencies_are_cluster_scoped_and_validated() -> anyhow::Result<()> {
    let cluster = cluster().await?;
    cluster.install_crds().await?;
    let api = Api::<NodeFrequencies>::all(cluster.client.clone());
    let name = "crd-test-node";
    let valid = serde_json::json!({
        "apiVersion": "climatik.io/v1alpha1",
        "kind": "NodeFrequencies",
        "metadata": {"name": name},
        "spec": {"nodeName": name,
                 "gpuFrequencies": [{"gpuId": "GPU-1", "targetFrequency": 1200},
                                    {"gpuId": "GPU-1", "targetFrequency": 900, "policy": "ns/other"}]}
    });
    let stored = api
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(&valid),
        )
        .await?;
    // Two entries for one GPU from different policies coexist (map keys gpuId+policy).
    assert_eq!(stored.spec.gpu_frequencies.len(), 2);
    assert_eq!(stored.spec.gpu_frequencies[0].policy, "manual");

    let invalid = serde_json::json!({
        "apiVersion": "climatik.io/v1alpha1",
        "kind": "NodeFrequencies",
        "metadata": {"name": name},
        "spec": {"nodeName": name, "gpuFrequencies": [{"gpuId": "GPU-1", "targetFrequency": 0}]}
    });
    let err = api
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&invalid),
        )
        .await
        .expect_err("a zero frequency must be rejected");
    assert!(err.to_string().contains("targetFrequency"), "{err}");
    api.delete(name, &Default::default()).await?;
    Ok(())
}
