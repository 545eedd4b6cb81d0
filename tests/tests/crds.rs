//! The generated CRDs install into a real API server, their schemas
//! validate and default for real, and status is a subresource.

use climatik_api::{NodeFrequencies, PowerBudget, PowerCappingPolicy, names};
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

    // Lists and maps are bounded, map keys by a CEL rule.
    let long_key = "k".repeat(65);
    for (algorithms, what) in [
        (
            vec![serde_json::json!({"name": "feedback"}); 9],
            "must have at most 8 items",
        ),
        (
            vec![serde_json::json!({"name": "feedback", "parameters": {long_key.as_str(): "1"}})],
            "parameter names are at most 64 characters",
        ),
    ] {
        let policy = serde_json::json!({
            "apiVersion": "climatik.io/v1alpha1",
            "kind": "PowerCappingPolicy",
            "metadata": {"name": "bad"},
            "spec": {"powerCapLimit": 300, "selector": {"matchLabels": {"app": "x"}},
                     "customAlgorithms": algorithms}
        });
        let err = policies
            .patch(
                "bad",
                &PatchParams::apply(FIELD_MANAGER),
                &Patch::Apply(&policy),
            )
            .await
            .expect_err("an out-of-bounds policy must be rejected");
        assert!(err.to_string().contains(what), "{what}: {err}");
    }
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
                 "gpuFrequencies": [{"gpuId": "GPU-1", "targetFrequency": 1200, "expiresAt": EXPIRES},
                                    {"gpuId": "GPU-1", "targetFrequency": 900, "policy": "ns/other",
                                     "expiresAt": EXPIRES}]}
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

    for (entry, field) in [
        (
            serde_json::json!({"gpuId": "GPU-1", "targetFrequency": 0, "expiresAt": EXPIRES}),
            "targetFrequency",
        ),
        (
            serde_json::json!({"gpuId": "GPU-1", "targetFrequency": 10_001, "expiresAt": EXPIRES}),
            "targetFrequency",
        ),
        // No entry holds a device without saying until when.
        (
            serde_json::json!({"gpuId": "GPU-1", "targetFrequency": 1200}),
            "expiresAt",
        ),
        (
            serde_json::json!({"gpuId": "G".repeat(129), "targetFrequency": 1200, "expiresAt": EXPIRES}),
            "gpuId",
        ),
    ] {
        let invalid = serde_json::json!({
            "apiVersion": "climatik.io/v1alpha1",
            "kind": "NodeFrequencies",
            "metadata": {"name": name},
            "spec": {"nodeName": name, "gpuFrequencies": [entry]}
        });
        let err = api
            .patch(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&invalid),
            )
            .await
            .expect_err("an out-of-bounds entry must be rejected");
        assert!(err.to_string().contains(field), "{field}: {err}");
    }

    // The status is bounded too: an inventory whose clock range would make
    // the recommender build a huge list never gets in.
    let gpu = |min: i32, max: i32, supported: Vec<i32>| {
        serde_json::json!({
            "apiVersion": "climatik.io/v1alpha1",
            "kind": "NodeFrequencies",
            "metadata": {"name": name},
            "status": {"gpus": [{"gpuId": "GPU-1", "minFrequency": min, "maxFrequency": max,
                                 "supportedFrequencies": supported}]}
        })
    };
    let status_params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch_status(
        name,
        &status_params,
        &Patch::Apply(&gpu(345, 1980, vec![345, 1980])),
    )
    .await?;
    for (status, what) in [
        (
            gpu(1, i32::MAX, vec![]),
            "should be less than or equal to 10000",
        ),
        (
            gpu(1980, 345, vec![]),
            "minFrequency must not exceed maxFrequency",
        ),
        (
            gpu(345, 1980, vec![345; 1025]),
            "must have at most 1024 items",
        ),
        (
            gpu(345, 1980, vec![100]),
            "supportedFrequencies must lie within",
        ),
    ] {
        let err = api
            .patch_status(name, &status_params, &Patch::Apply(&status))
            .await
            .expect_err("an out-of-bounds inventory must be rejected");
        assert!(err.to_string().contains(what), "{what}: {err}");
    }
    api.delete(name, &Default::default()).await?;
    Ok(())
}

#[tokio::test]
async fn power_budgets_are_cluster_scoped_defaulted_and_validated() -> anyhow::Result<()> {
    let cluster = cluster().await?;
    cluster.install_crds().await?;
    let api = Api::<PowerBudget>::all(cluster.client.clone());
    let name = "crd-test-rack";
    let budget = |spec: serde_json::Value| {
        serde_json::json!({
            "apiVersion": "climatik.io/v1alpha1",
            "kind": "PowerBudget",
            "metadata": {"name": name},
            "spec": spec
        })
    };
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let stored = api
        .patch(
            name,
            &params,
            &Patch::Apply(&budget(serde_json::json!({
                "watts": 20_000, "nodeSelector": {"matchLabels": {"rack": "a"}}
            }))),
        )
        .await?;
    assert_eq!(stored.spec.watts, 20_000);
    // Defaults come from the schema, applied by the API server.
    assert_eq!(stored.spec.reserved_watts, 0);
    assert!(!stored.spec.cap_unmanaged);

    for (spec, what) in [
        (
            serde_json::json!({"watts": 0, "nodeSelector": {}}),
            "spec.watts",
        ),
        (
            serde_json::json!({"watts": 10_000_001, "nodeSelector": {}}),
            "spec.watts",
        ),
        (
            serde_json::json!({"watts": 1000, "reservedWatts": -1, "nodeSelector": {}}),
            "spec.reservedWatts",
        ),
        (
            serde_json::json!({"watts": 1000, "parent": "", "nodeSelector": {}}),
            "spec.parent",
        ),
        (serde_json::json!({"watts": 1000}), "nodeSelector"),
    ] {
        let err = api
            .patch(name, &params, &Patch::Apply(&budget(spec.clone())))
            .await
            .expect_err("an invalid budget must be rejected");
        assert!(err.to_string().contains(what), "{spec}: {err}");
    }

    // The status is a subresource and `kubectl get pb` shows its columns.
    let status = serde_json::json!({
        "apiVersion": "climatik.io/v1alpha1",
        "kind": "PowerBudget",
        "status": {"measuredWatts": 18_250.5, "headroomWatts": 1_749.5,
                   "allocations": [{"namespace": "serving", "name": "llm", "priority": 100,
                                    "minWatts": 0.0, "demandWatts": 9000.0,
                                    "allocatedWatts": 9000}]}
    });
    let with_status = api
        .patch_status(name, &params, &Patch::Apply(&status))
        .await?;
    assert_eq!(with_status.spec.watts, 20_000);
    let read = with_status.status.unwrap_or_default();
    assert_eq!(read.allocations.len(), 1);
    let table = cluster.kubectl(["get", "pb", name]).await?;
    let header = table.lines().next().unwrap_or_default();
    for column in [
        "NAME",
        "WATTS",
        "MEASURED",
        "HEADROOM",
        "WITHINBUDGET",
        "AGE",
    ] {
        assert!(header.contains(column), "missing {column} in {header:?}");
    }
    assert!(table.contains("18250.5"), "{table}");
    api.delete(name, &Default::default()).await?;
    Ok(())
}

#[tokio::test]
async fn a_policy_guarantee_above_its_cap_or_an_absurd_priority_is_rejected() -> anyhow::Result<()>
{
    let cluster = cluster().await?;
    cluster.install_crds().await?;
    let ns = cluster.namespace("crd-priority").await?;
    let policies = Api::<PowerCappingPolicy>::namespaced(cluster.client.clone(), ns.name());
    let policy = |extra: serde_json::Value| {
        let mut spec =
            serde_json::json!({"powerCapLimit": 300, "selector": {"matchLabels": {"app": "x"}}});
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
            spec.extend(extra.clone());
        }
        serde_json::json!({
            "apiVersion": "climatik.io/v1alpha1",
            "kind": "PowerCappingPolicy",
            "metadata": {"name": "p"},
            "spec": spec
        })
    };
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let stored = policies
        .patch(
            "p",
            &params,
            &Patch::Apply(&policy(
                serde_json::json!({"priority": 100, "minWatts": 300}),
            )),
        )
        .await?;
    assert_eq!(stored.spec.priority, Some(100));
    assert_eq!(stored.spec.min_watts, Some(300));
    for (extra, what) in [
        (
            serde_json::json!({"minWatts": 301}),
            "minWatts must not exceed powerCapLimit",
        ),
        (serde_json::json!({"minWatts": -1}), "spec.minWatts"),
        (
            serde_json::json!({"priority": 1_000_000_001}),
            "spec.priority",
        ),
    ] {
        let err = policies
            .patch("p", &params, &Patch::Apply(&policy(extra.clone())))
            .await
            .expect_err("an invalid priority or guarantee must be rejected");
        assert!(err.to_string().contains(what), "{extra}: {err}");
    }
    ns.cleanup().await
}

/// A far-future expiry: the schema asks for one, these tests do not run an
/// agent that would act on it.
const EXPIRES: &str = "2099-01-01T00:00:00Z";
