//! Shared pieces of the integration tests: a DCGM-format metrics endpoint
//! whose values the test controls, scraped under the exporter's job, the
//! GPU inventory a node agent would report, exclusive Node objects, pods
//! bound to them, policies, and polling.

#![allow(dead_code)]

use std::{future::Future, time::Duration};

use anyhow::{Context, bail};
use climatik_api::{NodeFrequencies, PowerCappingPolicy};
use climatik_controller::{metrics::Metrics, observe::DEFAULT_DCGM_JOBS};
use climatik_sim_gpu::dcgm;
use climatik_test_support::{
    ScrapeTarget,
    exposition::{self, Exposition},
};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{
    Api,
    api::{DeleteParams, PostParams},
};
use serde_json::json;

/// One DCGM series: (UUID, pod label name, pod, namespace label name,
/// namespace, hostname, power W, clock MHz).
#[derive(Clone, Debug)]
pub struct Gpu {
    pub uuid: String,
    pub pod_label: &'static str,
    pub pod: String,
    pub namespace_label: &'static str,
    pub namespace: String,
    pub hostname: String,
    pub watts: f64,
    pub clock: f64,
}

/// A tiny dcgm-exporter: serves the series of the GPUs the test last set.
pub struct DcgmServer {
    target: ScrapeTarget,
}

impl DcgmServer {
    pub async fn start() -> anyhow::Result<Self> {
        Ok(Self {
            target: ScrapeTarget::start(render(&[])).await?,
        })
    }

    /// `host:port`, to register with Prometheus.
    pub fn addr(&self) -> &str {
        &self.target.addr
    }

    pub fn set(&self, gpus: Vec<Gpu>) {
        self.target.set(render(&gpus));
    }
}

fn render(gpus: &[Gpu]) -> String {
    let pci: Vec<String> = (0..gpus.len())
        .map(|i| format!("00000000:0{i}:00.0"))
        .collect();
    let workloads: Vec<[(&str, &str); 3]> = gpus
        .iter()
        .map(|g| {
            [
                (g.pod_label, g.pod.as_str()),
                (g.namespace_label, g.namespace.as_str()),
                ("container", "main"),
            ]
        })
        .collect();
    let values: Vec<[f64; 2]> = gpus.iter().map(|g| [g.watts, g.clock]).collect();
    let series: Vec<dcgm::Gpu<'_>> = gpus
        .iter()
        .enumerate()
        .map(|(i, g)| dcgm::Gpu {
            index: i as u64,
            uuid: &g.uuid,
            pci_bus_id: &pci[i],
            model: "Tesla V100",
            hostname: &g.hostname,
            driver_version: None,
            workload: &workloads[i],
            values: &values[i],
        })
        .collect();
    dcgm::render(&[dcgm::POWER_USAGE, dcgm::SM_CLOCK], &series)
}

/// The Prometheus job the test DCGM endpoints are scraped under: the
/// controller's default, as in a standard install.
pub const DCGM_JOB: &str = DEFAULT_DCGM_JOBS[0];

/// One DCGM series of GPU `uuid` on `node`, for `pod` in `ns` under the
/// label spelling `pod_label` (`pod` or `exported_pod`), at 1380 MHz.
pub fn gpu(
    uuid: &str,
    pod_label: &'static str,
    pod: &str,
    ns: &str,
    node: &str,
    watts: f64,
) -> Gpu {
    Gpu {
        uuid: uuid.into(),
        pod_label,
        pod: pod.into(),
        namespace_label: if pod_label == "pod" {
            "namespace"
        } else {
            "exported_namespace"
        },
        namespace: ns.into(),
        hostname: node.into(),
        watts,
        clock: 1380.0,
    }
}

/// The monitor as these tests run it: policies of `namespace`, a 1 s
/// period, a 3 s query timeout, the default DCGM jobs, no Kepler, no leader
/// election, no policy generator, no budget controller.
pub fn monitor_config(
    prometheus_url: &str,
    namespace: &str,
) -> climatik_controller::monitor::MonitorConfig {
    climatik_controller::monitor::MonitorConfig {
        prometheus_url: prometheus_url.to_string(),
        prometheus_timeout: Duration::from_secs(3),
        kepler: false,
        dcgm_jobs: DEFAULT_DCGM_JOBS.iter().map(|j| j.to_string()).collect(),
        kepler_jobs: vec![],
        interval: Duration::from_secs(1),
        lease: None,
        namespace: Some(namespace.to_string()),
        identity: "test-monitor".into(),
        generator_resync: None,
        status_writes: Default::default(),
        power_budgets: false,
    }
}

/// Makes the cluster's Prometheus scrape `dcgm` as target `name` under the
/// exporter's job.
pub fn scrape_dcgm(
    cluster: &climatik_test_support::TestCluster,
    name: &str,
    dcgm: &DcgmServer,
) -> anyhow::Result<()> {
    cluster.register_prometheus_target(name, dcgm.addr(), &[("job", DCGM_JOB)])?;
    Ok(())
}

/// Waits until the cluster's Prometheus has a power series of each GPU of
/// `uuids` in namespace `ns`, so the first measurement sees them all.
pub async fn wait_for_power_series(
    cluster: &climatik_test_support::TestCluster,
    ns: &str,
    uuids: &[&str],
) -> anyhow::Result<()> {
    for uuid in uuids {
        cluster
            .wait_for_prometheus(
                &format!("DCGM_FI_DEV_POWER_USAGE{{UUID=\"{uuid}\",namespace=\"{ns}\"}}"),
                Duration::from_secs(60),
            )
            .await?;
    }
    Ok(())
}

/// Runs the monitor as [`monitor_config`] sets it up for `ns` while
/// `check` runs, then stops it: the check's result, else the monitor's
/// error.
pub async fn while_monitoring<T>(
    client: &kube::Client,
    prometheus_url: &str,
    ns: &str,
    metrics: &std::sync::Arc<climatik_controller::metrics::Metrics>,
    check: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let monitor = tokio::spawn(climatik_controller::monitor::run(
        client.clone(),
        monitor_config(prometheus_url, ns),
        metrics.clone(),
        async move {
            let _ = stopped.await;
        },
    ));
    let checked = check.await;
    let _ = stop.send(());
    monitor.await??;
    checked
}

/// Reports `gpus` (UUIDs, indexed in order) as the GPU inventory of `node`,
/// as its agent would: creates the node's NodeFrequencies if needed and
/// writes its status. The clock range is the recommender's fallback, so
/// plans come out as without an inventory.
pub async fn report_inventory(
    client: &kube::Client,
    node: &str,
    gpus: &[&str],
) -> anyhow::Result<()> {
    report_gpus(client, node, gpus, None).await
}

/// [`report_inventory`], each GPU accepting no power limit below
/// `min_power_limit_watts`.
pub async fn report_gpus(
    client: &kube::Client,
    node: &str,
    gpus: &[&str],
    min_power_limit_watts: Option<f64>,
) -> anyhow::Result<()> {
    use kube::api::{Patch, PatchParams};
    let nfs = Api::<NodeFrequencies>::all(client.clone());
    let created = nfs
        .create(
            &PostParams::default(),
            &NodeFrequencies::new(
                node,
                climatik_api::NodeFrequenciesSpec {
                    node_name: node.to_string(),
                    gpu_frequencies: vec![],
                    cpu_frequencies: vec![],
                },
            ),
        )
        .await;
    match created {
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        other => {
            other.with_context(|| format!("creating the NodeFrequencies of {node}"))?;
        }
    }
    let gpus: Vec<serde_json::Value> = gpus
        .iter()
        .enumerate()
        .map(|(index, uuid)| {
            let mut gpu =
                json!({ "gpuId": uuid, "index": index, "minFrequency": 210, "maxFrequency": 2100 });
            if let Some(watts) = min_power_limit_watts {
                gpu["minPowerLimitWatts"] = json!(watts);
            }
            gpu
        })
        .collect();
    nfs.patch_status(
        node,
        &PatchParams::apply("climatik-test-agent").force(),
        &Patch::Apply(json!({
            "apiVersion": "climatik.io/v1alpha1",
            "kind": "NodeFrequencies",
            "status": { "gpus": gpus, "backend": "sim" },
        })),
    )
    .await
    .with_context(|| format!("reporting the inventory of {node}"))?;
    Ok(())
}

/// Runs `body(cluster, namespace, node, exporter)` in a throwaway
/// namespace named after `prefix`, with one node of 4 CPUs and the name of
/// a Prometheus target for its exporter; removes the pods, the node and
/// the target afterwards, and the namespace when the body passed (a failed
/// one is kept to look at).
pub async fn with_one_node(
    prefix: &str,
    body: impl AsyncFnOnce(&climatik_test_support::TestCluster, &str, &str, &str) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let cluster = climatik_test_support::cluster().await?;
    cluster.install_crds().await?;
    let ns = cluster.namespace(prefix).await?;
    let ns_name = ns.name().to_string();
    let admin = cluster.client.clone();
    let node = format!("{ns_name}-node-0");
    create_node(&admin, &node, 4).await?;
    let exporter = format!("{ns_name}-exporter");
    let result = body(&cluster, &ns_name, &node, &exporter).await;
    delete_all_pods(&admin, &ns_name).await;
    delete_nodes(&admin, std::slice::from_ref(&node)).await;
    cluster.remove_prometheus_target(&exporter)?;
    if result.is_ok() {
        ns.cleanup().await?;
    }
    result
}

/// Creates a Node object (no kubelet behind it) with `cpus` CPUs.
pub async fn create_node(client: &kube::Client, name: &str, cpus: u32) -> anyhow::Result<()> {
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": { "name": name, "labels": { "climatik.io/test": "true" } },
        "spec": { "taints": [{ "key": "climatik.io/test-node", "effect": "NoSchedule" }] },
        "status": { "capacity": { "cpu": cpus.to_string(), "memory": "64Gi", "pods": "110" } },
    }))?;
    let nodes = Api::<Node>::all(client.clone());
    let _ = nodes.delete(name, &DeleteParams::default()).await;
    wait_for("old node gone", Duration::from_secs(20), || async {
        Ok(nodes.get_opt(name).await?.is_none().then_some(()))
    })
    .await?;
    nodes
        .create(&PostParams::default(), &node)
        .await
        .with_context(|| format!("creating node {name}"))?;
    // Capacity is status: creating a Node keeps what the kubelet would send.
    create_node_frequencies(client, name).await
}

/// The empty NodeFrequencies a node agent creates for its node at start-up
/// (the recommender only adds entries to an existing one).
pub async fn create_node_frequencies(client: &kube::Client, node: &str) -> anyhow::Result<()> {
    let object: NodeFrequencies = serde_json::from_value(json!({
        "apiVersion": "climatik.io/v1alpha1",
        "kind": "NodeFrequencies",
        "metadata": { "name": node },
        "spec": { "nodeName": node },
    }))?;
    let api = Api::<NodeFrequencies>::all(client.clone());
    match api.create(&PostParams::default(), &object).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(error) => Err(error).with_context(|| format!("creating NodeFrequencies {node}")),
    }
}

/// Deletes Nodes and their NodeFrequencies.
pub async fn delete_nodes(client: &kube::Client, names: &[String]) {
    let nodes = Api::<Node>::all(client.clone());
    let nfs = Api::<NodeFrequencies>::all(client.clone());
    for name in names {
        let _ = nodes.delete(name, &DeleteParams::default()).await;
        let _ = nfs.delete(name, &DeleteParams::default()).await;
    }
}

/// A pod bound directly to `node` (the scheduler is not involved).
pub async fn create_pod(
    client: &kube::Client,
    ns: &str,
    name: &str,
    node: &str,
    app: &str,
) -> anyhow::Result<()> {
    create_pod_with(client, ns, name, node, app, json!({})).await
}

/// [`create_pod`] with `extra` merged into the pod's spec.
pub async fn create_pod_with(
    client: &kube::Client,
    ns: &str,
    name: &str,
    node: &str,
    app: &str,
    extra: serde_json::Value,
) -> anyhow::Result<()> {
    let mut spec = json!({
        "nodeName": node,
        "automountServiceAccountToken": false,
        "tolerations": [{ "operator": "Exists" }],
        "containers": [{ "name": "main", "image": "registry.k8s.io/pause:3.10" }],
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "labels": { "app": app } },
        "spec": spec,
    }))?;
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    // The namespace's default ServiceAccount may not exist yet.
    wait_for("pod created", Duration::from_secs(30), || async {
        match pods.create(&PostParams::default(), &pod).await {
            Ok(_) => Ok(Some(())),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Some(())),
            Err(kube::Error::Api(s)) if s.message.contains("serviceaccount") => Ok(None),
            Err(e) => Err(e.into()),
        }
    })
    .await
}

/// Deletes a pod at once (no kubelet would ever confirm a graceful delete).
pub async fn delete_pod(client: &kube::Client, ns: &str, name: &str) -> anyhow::Result<()> {
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    pods.delete(name, &DeleteParams::default().grace_period(0))
        .await?;
    Ok(())
}

pub fn policy(
    name: &str,
    app: &str,
    cap: i64,
    extra: serde_json::Value,
) -> anyhow::Result<PowerCappingPolicy> {
    let mut spec = json!({
        "powerCapLimit": cap,
        "selector": { "matchLabels": { "app": app } },
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    Ok(serde_json::from_value(json!({
        "apiVersion": "climatik.io/v1alpha1",
        "kind": "PowerCappingPolicy",
        "metadata": { "name": name },
        "spec": spec,
    }))?)
}

/// Polls `check` every 250 ms until it yields a value.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        if tokio::time::Instant::now() >= deadline {
            match last_error {
                Some(e) => return Err(e.context(format!("waiting for {what}"))),
                None => bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until policy `name` no longer exists.
pub async fn wait_until_gone(
    policies: &Api<PowerCappingPolicy>,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    wait_for(&format!("policy {name} gone"), timeout, || async {
        Ok(policies.get_opt(name).await?.is_none().then_some(()))
    })
    .await
}

/// The condition of a policy, as (status, reason).
pub fn condition(policy: &PowerCappingPolicy, type_: &str) -> Option<(String, String)> {
    policy
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

/// The GPU entries of a node's NodeFrequencies: (gpuId, policy, target).
pub async fn gpu_entries(
    client: &kube::Client,
    node: &str,
) -> anyhow::Result<Vec<(String, String, i32)>> {
    let nf = Api::<NodeFrequencies>::all(client.clone())
        .get_opt(node)
        .await?;
    let mut entries: Vec<_> = nf
        .map(|nf| {
            nf.spec
                .gpu_frequencies
                .into_iter()
                .map(|e| (e.gpu_id, e.policy, e.target_frequency))
                .collect()
        })
        .unwrap_or_default();
    entries.sort();
    Ok(entries)
}

/// Deletes every pod in `ns` at once: no kubelet confirms graceful
/// deletion on the test's own nodes, which would hold up the namespace.
pub async fn delete_all_pods(client: &kube::Client, ns: &str) {
    use kube::{ResourceExt, api::ListParams};
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    let items = pods
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    for pod in items {
        let _ = pods
            .delete(&pod.name_any(), &DeleteParams::default().grace_period(0))
            .await;
    }
}

/// A status as the power usage monitor writes it: measured now, metrics
/// available, `watts` on one GPU `gpu` of `node`. For tests of the
/// recommender alone.
pub fn measured_status(node: &str, gpu: &str, watts: f64) -> serde_json::Value {
    measured_gpus(node, &[(gpu, watts)])
}

/// [`measured_status`] with several GPUs of `node`, each `(id, watts)`.
pub fn measured_gpus(node: &str, gpus: &[(&str, f64)]) -> serde_json::Value {
    // As the API server stores it: whole seconds.
    let now = json!(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now()
    ));
    let condition = |type_: &str, reason: &str| {
        json!({ "type": type_, "status": "True", "reason": reason, "message": "",
                "lastTransitionTime": now })
    };
    let watts: f64 = gpus.iter().map(|(_, w)| w).sum();
    let devices: Vec<serde_json::Value> = gpus
        .iter()
        .map(|(gpu, watts)| json!({ "deviceId": gpu, "powerWatts": watts, "frequencyMhz": 1380.0 }))
        .collect();
    json!({
        "currentPower": watts,
        "gpuPower": watts,
        "nodes": [{ "nodeName": node, "powerWatts": watts, "devices": devices }],
        "matchedPodCount": 1,
        "lastUpdated": now,
        "conditions": [condition("Ready", "Observed"), condition("MetricsAvailable", "MetricsFound")],
    })
}

/// Writes `status` on policy `name` as a stand-in for the monitor.
pub async fn write_status(
    client: &kube::Client,
    ns: &str,
    name: &str,
    status: serde_json::Value,
) -> anyhow::Result<()> {
    use kube::api::{Patch, PatchParams};
    Api::<PowerCappingPolicy>::namespaced(client.clone(), ns)
        .patch_status(
            name,
            &PatchParams::apply("climatik-test-monitor").force(),
            &Patch::Apply(json!({
                "apiVersion": "climatik.io/v1alpha1",
                "kind": "PowerCappingPolicy",
                "status": status,
            })),
        )
        .await?;
    Ok(())
}

/// The recommender running in-process as admin, watching one namespace,
/// with a 1 s period.
pub struct InProcessRecommender {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<climatik_controller::Result<()>>,
    /// What its `/readyz` reports.
    ready: climatik_runtime::ReadyFlag,
}

impl InProcessRecommender {
    pub fn start(admin: &kube::Client, entry_ttl: Duration, namespace: &str) -> Self {
        Self::start_with_lease(admin, entry_ttl, namespace, None)
    }

    /// [`Self::start`], electing itself leader through Lease `lease` in
    /// `namespace` (4 s lease duration).
    pub fn start_leading(
        admin: &kube::Client,
        entry_ttl: Duration,
        namespace: &str,
        lease: &str,
    ) -> anyhow::Result<Self> {
        use climatik_controller::lease::{LeaseConfig, Timing};
        let lease = LeaseConfig {
            namespace: namespace.to_string(),
            name: lease.to_string(),
            identity: "test".into(),
            timing: Timing::new(Duration::from_secs(4), None, None)?,
        };
        Ok(Self::start_with_lease(
            admin,
            entry_ttl,
            namespace,
            Some(lease),
        ))
    }

    fn start_with_lease(
        admin: &kube::Client,
        entry_ttl: Duration,
        namespace: &str,
        lease: Option<climatik_controller::lease::LeaseConfig>,
    ) -> Self {
        use climatik_controller::{
            metrics::Metrics,
            recommender::{self, RecommenderConfig},
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let ready = climatik_runtime::ReadyFlag::default();
        let task = tokio::spawn(recommender::run_with_readiness(
            admin.clone(),
            RecommenderConfig {
                interval: Duration::from_secs(1),
                entry_ttl,
                lease,
                namespace: Some(namespace.to_string()),
                identity: "test".into(),
            },
            Metrics::new("freqtuning-recommender"),
            async move {
                let _ = stopped.await;
            },
            ready.clone(),
        ));
        Self { stop, task, ready }
    }

    /// Stops it and surfaces any error it ended with.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task.await??;
        Ok(())
    }
}

/// The monitor and the recommender running in-process as admin, watching
/// one namespace, with 1 s periods.
pub struct InProcessLoop {
    stop_monitor: tokio::sync::oneshot::Sender<()>,
    monitor: tokio::task::JoinHandle<climatik_controller::Result<()>>,
    /// What the monitor's `/readyz` reports.
    monitor_ready: climatik_runtime::ReadyFlag,
    recommender: InProcessRecommender,
}

impl InProcessLoop {
    pub fn start(
        admin: &kube::Client,
        prometheus_url: &str,
        prometheus_timeout: Duration,
        entry_ttl: Duration,
        namespace: &str,
    ) -> Self {
        use climatik_controller::{
            metrics::Metrics,
            monitor::{self, MonitorConfig},
        };
        let (stop_monitor, monitor_stopped) = tokio::sync::oneshot::channel::<()>();
        let monitor_ready = climatik_runtime::ReadyFlag::default();
        let monitor = tokio::spawn(monitor::run_with_readiness(
            admin.clone(),
            MonitorConfig {
                prometheus_timeout,
                // Generated policies come from annotated workloads; tests
                // that write policies by hand have none.
                generator_resync: Some(Duration::from_secs(60)),
                ..monitor_config(prometheus_url, namespace)
            },
            Metrics::new("powercapping-controller"),
            async move {
                let _ = monitor_stopped.await;
            },
            monitor_ready.clone(),
        ));
        Self {
            stop_monitor,
            monitor,
            monitor_ready,
            recommender: InProcessRecommender::start(admin, entry_ttl, namespace),
        }
    }

    /// Both report ready (their policy watches have synced).
    pub fn is_ready(&self) -> bool {
        self.monitor_ready.is_set() && self.recommender.ready.is_set()
    }

    /// Both are still running (neither crashed).
    pub fn is_running(&self) -> bool {
        !self.monitor.is_finished() && !self.recommender.task.is_finished()
    }

    /// Stops both and surfaces any error they ended with.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop_monitor.send(());
        let recommender = self.recommender.stop().await;
        self.monitor.await??;
        recommender
    }
}

/// The one sample of `family` for policy `policy`, if the page has it.
pub fn value(page: &Exposition, family: &str, policy: &str) -> Option<f64> {
    match page.find(family, &[("policy", policy)]).as_slice() {
        [sample] => Some(sample.value),
        _ => None,
    }
}

/// A component's `/metrics` page, parsed.
pub fn read_page(metrics: &Metrics) -> anyhow::Result<Exposition> {
    exposition::parse(&metrics.encode()).map_err(anyhow::Error::msg)
}
