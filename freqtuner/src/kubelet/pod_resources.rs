//! Which container holds which simulated GPU, as the kubelet's PodResources
//! API (`v1`, `<kubelet root>/pod-resources/kubelet.sock`) says: polled
//! and handed to the simulation, which labels the DCGM series with the pod,
//! namespace and container, as dcgm-exporter's Kubernetes mode does. Only
//! devices of our resource whose IDs are our GPUs' UUIDs count.

use std::{collections::BTreeSet, path::PathBuf, time::Duration};

use anyhow::Context;
use tokio::sync::watch;
use tonic::transport::Channel;

use super::{
    Backoff,
    pb::v1::{
        ListPodResourcesRequest, ListPodResourcesResponse,
        pod_resources_lister_client::PodResourcesListerClient,
    },
};
use crate::sim::{SharedWorld, pods::Allocation};

/// How long one List call may take.
const LIST_TIMEOUT: Duration = Duration::from_secs(10);

/// The allocations of `known` devices of `resource` in a List answer, sorted.
/// A device listed twice (the kubelet reuses an init container's devices for
/// the app containers) goes to the first container listing it.
pub fn allocations(
    response: &ListPodResourcesResponse,
    resource: &str,
    known: &BTreeSet<String>,
) -> Vec<Allocation> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for pod in &response.pod_resources {
        for container in &pod.containers {
            for devices in container
                .devices
                .iter()
                .filter(|d| d.resource_name == resource)
            {
                for id in &devices.device_ids {
                    if known.contains(id) && seen.insert(id.clone()) {
                        out.push(Allocation {
                            uuid: id.clone(),
                            namespace: pod.namespace.clone(),
                            pod: pod.name.clone(),
                            container: container.name.clone(),
                        });
                    }
                }
            }
        }
    }
    out.sort();
    out
}

/// Polls the kubelet's PodResources socket.
#[derive(Debug, Clone)]
pub struct Poller {
    pub socket: PathBuf,
    pub resource_name: String,
    pub interval: Duration,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

impl Poller {
    /// The defaults for a real kubelet.
    pub fn new(socket: PathBuf, interval: Duration) -> Self {
        Self {
            socket,
            resource_name: crate::sim::pods::GPU_RESOURCE.into(),
            interval,
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
        }
    }

    async fn list(
        &self,
        client: &mut Option<PodResourcesListerClient<Channel>>,
    ) -> anyhow::Result<ListPodResourcesResponse> {
        let call = async {
            if client.is_none() {
                let channel = super::connect(&self.socket)
                    .await
                    .with_context(|| format!("connecting to {}", self.socket.display()))?;
                *client = Some(PodResourcesListerClient::new(channel));
            }
            let Some(c) = client.as_mut() else {
                anyhow::bail!("no PodResources client");
            };
            let response = c
                .list(ListPodResourcesRequest {})
                .await
                .map_err(|s| anyhow::anyhow!("PodResources List: {}", s.message()))?;
            anyhow::Ok(response.into_inner())
        };
        let result = tokio::time::timeout(LIST_TIMEOUT, call)
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer in time")));
        if result.is_err() {
            // Reconnect next time: the kubelet may have restarted.
            *client = None;
        }
        result
    }

    /// Keeps `world`'s allocations current until `shutdown` turns true (or
    /// its sender goes away). Never fails: an absent or failing kubelet is
    /// logged and retried with backoff, and the last answer is kept.
    pub async fn run(self, world: SharedWorld, mut shutdown: watch::Receiver<bool>) {
        let known: BTreeSet<String> = match world.lock() {
            Ok(w) => w.infos().into_iter().map(|i| i.uuid).collect(),
            Err(_) => return,
        };
        let mut backoff = Backoff::new(self.min_backoff, self.max_backoff);
        let mut client = None;
        let mut last: Option<Vec<Allocation>> = None;
        tracing::info!(socket = %self.socket.display(), interval = ?self.interval, "reading GPU allocations from the kubelet's PodResources API");
        loop {
            let delay = match self.list(&mut client).await {
                Ok(response) => {
                    if backoff.failures > 0 {
                        tracing::info!("PodResources API reachable again");
                    }
                    backoff.reset();
                    let now = allocations(&response, &self.resource_name, &known);
                    if last.as_ref() != Some(&now) {
                        tracing::info!(allocated = now.len(), "simulated GPU allocations changed");
                        if let Ok(mut w) = world.lock() {
                            w.set_allocations(&now, std::time::Instant::now());
                        }
                        last = Some(now);
                    }
                    self.interval
                }
                Err(e) => backoff.fail_logged(
                    &e,
                    "cannot read GPU allocations from the kubelet; keeping the last known",
                ),
            };
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = super::until_set(&mut shutdown) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubelet::pb::v1::{ContainerDevices, ContainerResources, PodResources};

    fn container(name: &str, resource: &str, ids: &[&str]) -> ContainerResources {
        ContainerResources {
            name: name.into(),
            devices: vec![ContainerDevices {
                resource_name: resource.into(),
                device_ids: ids.iter().map(|s| s.to_string()).collect(),
            }],
        }
    }

    #[test]
    fn keeps_our_devices_of_our_resource_only() {
        let response = ListPodResourcesResponse {
            pod_resources: vec![
                PodResources {
                    name: "vllm-0".into(),
                    namespace: "team".into(),
                    containers: vec![
                        container("vllm", "nvidia.com/gpu", &["GPU-b", "GPU-x"]),
                        container("sidecar", "example.com/nic", &["GPU-a"]),
                    ],
                },
                PodResources {
                    name: "train".into(),
                    namespace: "ml".into(),
                    containers: vec![
                        container("main", "nvidia.com/gpu", &["GPU-a"]),
                        container("again", "nvidia.com/gpu", &["GPU-a"]),
                    ],
                },
            ],
        };
        let known: BTreeSet<String> = ["GPU-a", "GPU-b", "GPU-c"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let got: Vec<(String, String, String)> = allocations(&response, "nvidia.com/gpu", &known)
            .into_iter()
            .map(|a| (a.uuid, format!("{}/{}", a.namespace, a.pod), a.container))
            .collect();
        assert_eq!(
            got,
            vec![
                ("GPU-a".into(), "ml/train".into(), "main".into()),
                ("GPU-b".into(), "team/vllm-0".into(), "vllm".into()),
            ]
        );
    }
}
