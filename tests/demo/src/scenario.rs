//! Sampling the running loop and driving the demo's timeline.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use anyhow::Context;
use climatik_api::{PowerCappingPolicy, names};
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::ListParams};

use crate::samples::{GpuPoint, PolicyPoint, parse_dcgm};

/// Reads, once a second, what the exporters and the API server say.
pub struct Sampler {
    http: reqwest::Client,
    client: kube::Client,
    /// `node -> metrics address` of each simulated agent.
    freqtuners: BTreeMap<String, String>,
    namespaces: Vec<String>,
    start: Instant,
}

impl Sampler {
    pub fn new(
        client: kube::Client,
        freqtuners: BTreeMap<String, String>,
        namespaces: Vec<String>,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .context("building an HTTP client")?;
        Ok(Sampler {
            http,
            client,
            freqtuners,
            namespaces,
            start: Instant::now(),
        })
    }

    /// Seconds since the sampler started.
    pub fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// One sample of every policy and every GPU.
    pub async fn sample(&self) -> anyhow::Result<(Vec<PolicyPoint>, Vec<GpuPoint>)> {
        let t = self.elapsed();
        let mut policy_of_pod: BTreeMap<(String, String), String> = BTreeMap::new();
        let mut policies = Vec::new();
        for namespace in &self.namespaces {
            let pods = Api::<Pod>::namespaced(self.client.clone(), namespace)
                .list(&ListParams::default().labels(names::LABEL_POLICY))
                .await
                .with_context(|| format!("listing pods in {namespace}"))?;
            for pod in pods {
                let name = pod.metadata.name.clone().unwrap_or_default();
                if let Some(policy) = pod
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(names::LABEL_POLICY))
                {
                    policy_of_pod.insert(
                        (namespace.clone(), name),
                        names::policy_key(namespace, policy),
                    );
                }
            }
            let listed = Api::<PowerCappingPolicy>::namespaced(self.client.clone(), namespace)
                .list(&ListParams::default())
                .await
                .with_context(|| format!("listing policies in {namespace}"))?;
            for policy in listed {
                let status = policy.status.clone().unwrap_or_default();
                policies.push(PolicyPoint {
                    t,
                    policy: names::policy_key(
                        namespace,
                        policy.metadata.name.as_deref().unwrap_or_default(),
                    ),
                    cap_watts: policy.spec.power_cap_limit as f64,
                    power_watts: 0.0,
                    reported_watts: status.current_power,
                    capping: status.capping_action_required,
                });
            }
        }

        let mut gpus = Vec::new();
        let mut seen = BTreeSet::new();
        for (node, addr) in &self.freqtuners {
            let text = match self.http.get(format!("http://{addr}/metrics")).send().await {
                Ok(response) => response.text().await.unwrap_or_default(),
                Err(_) => continue,
            };
            for reading in parse_dcgm(node, &text) {
                if !seen.insert(reading.uuid.clone()) {
                    continue;
                }
                let policy = match (&reading.namespace, &reading.pod) {
                    (Some(ns), Some(pod)) => policy_of_pod.get(&(ns.clone(), pod.clone())).cloned(),
                    _ => None,
                };
                if let Some(policy) = &policy
                    && let Some(point) = policies.iter_mut().find(|p| &p.policy == policy)
                {
                    point.power_watts += reading.power_watts;
                }
                gpus.push(GpuPoint {
                    t,
                    node: reading.node,
                    uuid: reading.uuid,
                    policy,
                    power_watts: reading.power_watts,
                    clock_mhz: reading.clock_mhz,
                });
            }
        }
        Ok((policies, gpus))
    }
}

/// The clock each GPU reports, by UUID.
pub fn clocks(gpus: &[GpuPoint]) -> BTreeMap<String, f64> {
    gpus.iter()
        .filter_map(|g| g.clock_mhz.map(|c| (g.uuid.clone(), c)))
        .collect()
}

/// A Deployment of one pod pinned to `node` that keeps `gpus` simulated
/// GPUs fully loaded, capped by the `climatik.io/power-cap` annotation
/// when `cap` is given (e.g. `"900W"`). Its strategy is Recreate: a
/// changed cap relabels the pod template, and the new pod then takes the
/// GPUs the old one had. JSON, which `kubectl apply -f -` reads as well.
pub fn sim_deployment(
    namespace: &str,
    name: &str,
    node: &str,
    gpus: u32,
    cap: Option<&str>,
) -> String {
    let annotations: Vec<(&str, &str)> = cap
        .map(|cap| vec![(names::ANNOTATION_POWER_CAP, cap)])
        .unwrap_or_default();
    sim_deployment_annotated(namespace, name, node, gpus, &annotations, "full")
}

/// [`sim_deployment`] with the workload's own `annotations` (what a user
/// writes: cap, algorithm, priority) and its pods' simulated `load` (a
/// `climatik.io/sim-load` profile such as `"0.3"` or `"full"`).
pub fn sim_deployment_annotated(
    namespace: &str,
    name: &str,
    node: &str,
    gpus: u32,
    annotations: &[(&str, &str)],
    load: &str,
) -> String {
    let annotations: serde_json::Map<String, serde_json::Value> = annotations
        .iter()
        .map(|(key, value)| (key.to_string(), serde_json::Value::from(*value)))
        .collect();
    serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "annotations": annotations},
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {
                    "labels": {"app": name},
                    "annotations": {SIM_LOAD: load}
                },
                "spec": {
                    "nodeSelector": {"kubernetes.io/hostname": node},
                    "containers": [{
                        "name": name,
                        "image": "vllm/vllm-openai:v0.6.3",
                        "resources": {"limits": {"nvidia.com/gpu": gpus}}
                    }]
                }
            }
        }
    })
    .to_string()
}

/// The annotation the simulated agents read a pod's load from; changing it
/// on a running pod changes its GPUs' load at once, without a restart.
pub const SIM_LOAD: &str = "climatik.io/sim-load";
