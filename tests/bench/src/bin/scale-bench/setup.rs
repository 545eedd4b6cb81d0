//! Creating the CRDs and every object, a bounded number of requests at once.

use super::*;
use topology::Topology;

pub async fn create_all(
    client: &kube::Client,
    topology: &Topology,
    concurrency: usize,
    entry_lease: Option<&str>,
) -> anyhow::Result<usize> {
    install_crds(client).await?;
    let mut namespaces: Vec<String> = topology.namespaces.clone();
    // The controllers' Leases live here.
    namespaces.push("climatik-system".to_string());
    let count = namespaces.len();
    all(
        namespaces.iter().map(|ns| namespace(client, ns)),
        concurrency,
    )
    .await?;
    all(
        topology
            .namespaces
            .iter()
            .map(|ns| service_account(client, ns)),
        concurrency,
    )
    .await?;
    all(topology.nodes.iter().map(|n| node(client, n)), concurrency).await?;
    all(
        topology
            .nodes
            .iter()
            .map(|n| node_frequencies(client, n, entry_lease)),
        concurrency,
    )
    .await?;
    let pods = topology
        .policies
        .iter()
        .flat_map(|p| p.pods.iter().map(move |pod| (p, pod)));
    all(pods.map(|(p, pod)| self::pod(client, p, pod)), concurrency).await?;
    all(
        topology.policies.iter().map(|p| policy(client, p)),
        concurrency,
    )
    .await?;
    Ok(2 + count
        + topology.namespaces.len()
        + 2 * topology.nodes.len()
        + topology.pod_count()
        + topology.policies.len())
}

async fn all<F>(futures: impl Iterator<Item = F>, concurrency: usize) -> anyhow::Result<()>
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut results = stream::iter(futures).buffer_unordered(concurrency.max(1));
    while let Some(result) = results.next().await {
        result?;
    }
    Ok(())
}

fn apply() -> PatchParams {
    PatchParams::apply(MANAGER).force()
}

async fn install_crds(client: &kube::Client) -> anyhow::Result<()> {
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    for (_, crd) in climatik_api::crd::all() {
        let name = crd.name_any();
        api.patch(&name, &apply(), &Patch::Apply(&crd))
            .await
            .with_context(|| format!("applying CRD {name}"))?;
        tokio::time::timeout(
            Duration::from_secs(30),
            await_condition(api.clone(), &name, is_crd_established()),
        )
        .await
        .with_context(|| format!("CRD {name} not established"))??;
    }
    Ok(())
}

async fn namespace(client: &kube::Client, name: &str) -> anyhow::Result<()> {
    let body = json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": name } });
    Api::<Namespace>::all(client.clone())
        .patch(name, &apply(), &Patch::Apply(body))
        .await
        .with_context(|| format!("namespace {name}"))?;
    Ok(())
}

/// Pods need their namespace's default ServiceAccount; apply it rather
/// than wait for the controller-manager to create it.
async fn service_account(client: &kube::Client, ns: &str) -> anyhow::Result<()> {
    let body =
        json!({ "apiVersion": "v1", "kind": "ServiceAccount", "metadata": { "name": "default" } });
    Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .patch("default", &apply(), &Patch::Apply(body))
        .await
        .with_context(|| format!("default ServiceAccount in {ns}"))?;
    Ok(())
}

async fn node(client: &kube::Client, name: &str) -> anyhow::Result<()> {
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": { "name": name, "labels": {
            "kubernetes.io/hostname": name,
            "climatik.io/scale-bench": "true",
        } },
        // Capacity is status, which a create keeps (what a kubelet sends).
        "status": { "capacity": {
            "cpu": "32", "memory": "256Gi", "pods": "110",
            "nvidia.com/gpu": GPUS_PER_NODE.to_string(),
        } },
    }))?;
    create(Api::<Node>::all(client.clone()), &node, name).await
}

/// The NodeFrequencies a node agent creates and the inventory it reports.
/// A node's NodeFrequencies with the inventory its agent would report and,
/// with `entry_lease`, the Lease the agent would say keeps entries alive.
async fn node_frequencies(
    client: &kube::Client,
    node: &str,
    entry_lease: Option<&str>,
) -> anyhow::Result<()> {
    let api = Api::<NodeFrequencies>::all(client.clone());
    let params = PatchParams::apply(MANAGER_FREQTUNER).force();
    let spec = json!({
        "apiVersion": "climatik.io/v1alpha1", "kind": "NodeFrequencies",
        "metadata": { "name": node }, "spec": { "nodeName": node },
    });
    api.patch(node, &params, &Patch::Apply(spec))
        .await
        .with_context(|| format!("NodeFrequencies {node}"))?;
    let gpus: Vec<Value> = (0..GPUS_PER_NODE)
        .map(|i| {
            json!({
                "gpuId": topology::gpu_uuid(node, i), "index": i, "model": "Tesla V100-SXM2-16GB",
                "minFrequency": plant::MIN_CLOCK_MHZ, "maxFrequency": plant::MAX_CLOCK_MHZ,
                "supportedFrequencies": plant::supported_clocks(), "powerLimitWatts": 250.0,
            })
        })
        .collect();
    let status = json!({
        "apiVersion": "climatik.io/v1alpha1", "kind": "NodeFrequencies",
        "status": { "gpus": gpus, "backend": "sim", "entryLease": entry_lease },
    });
    api.patch_status(node, &params, &Patch::Apply(status))
        .await
        .with_context(|| format!("NodeFrequencies {node} status"))?;
    Ok(())
}

async fn pod(
    client: &kube::Client,
    policy: &topology::Policy,
    pod: &topology::PodPlan,
) -> anyhow::Result<()> {
    let body: Pod = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": pod.name, "labels": { "app": policy.name } },
        "spec": {
            "nodeName": pod.node,
            "automountServiceAccountToken": false,
            // The nodes have no kubelet; keep the pods through the
            // not-ready taints the node lifecycle controller adds.
            "tolerations": [{ "operator": "Exists" }],
            "containers": [{
                "name": "main", "image": "vllm/vllm-openai:latest",
                "resources": { "limits": { "nvidia.com/gpu": "1" } },
            }],
        },
    }))?;
    create(
        Api::<Pod>::namespaced(client.clone(), &policy.namespace),
        &body,
        &pod.name,
    )
    .await
}

async fn policy(client: &kube::Client, p: &topology::Policy) -> anyhow::Result<()> {
    let body: PowerCappingPolicy = serde_json::from_value(json!({
        "apiVersion": "climatik.io/v1alpha1",
        "kind": "PowerCappingPolicy",
        "metadata": { "name": p.name },
        "spec": {
            "powerCapLimit": p.cap_watts,
            "selector": { "matchLabels": { "app": p.name } },
        },
    }))?;
    create(
        Api::<PowerCappingPolicy>::namespaced(client.clone(), &p.namespace),
        &body,
        &p.name,
    )
    .await
}

/// Creates, leaving an existing object (a rerun on the same cluster).
async fn create<K>(api: Api<K>, object: &K, name: &str) -> anyhow::Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    match api.create(&PostParams::default(), object).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(anyhow::Error::new(e).context(format!("creating {name}"))),
    }
}
