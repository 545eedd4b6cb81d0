//! Which simulated GPUs each pod on the node holds. The pods (and their
//! `climatik.io/sim-load` annotations) are learned from the API server (pods
//! with `spec.nodeName` = this node). Without a kubelet the agent assigns
//! GPUs itself, deterministically and stable while a pod lives; with the
//! device plugin the kubelet assigns them and says so through PodResources
//! ([`Allocation`]).

use std::collections::{BTreeMap, BTreeSet};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api,
    runtime::{WatchStreamExt, watcher},
};

use super::SharedWorld;

/// Annotation carrying a pod's simulated load (see [`super::load`]).
pub const ANNOTATION_SIM_LOAD: &str = "climatik.io/sim-load";

/// Extended resource name of NVIDIA GPUs.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";

/// A pod's GPU demand, as far as the simulation cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodGpus {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    /// RFC 3339 creation time, for a stable order.
    pub created: String,
    /// `(container, GPUs)` for containers that request GPUs, in spec order.
    pub containers: Vec<(String, u32)>,
    /// The `climatik.io/sim-load` annotation, if any.
    pub load: Option<String>,
}

impl PodGpus {
    /// `None` for pods that hold no GPUs: finished, or requesting none.
    pub fn from_pod(pod: &Pod) -> Option<Self> {
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) {
            return None;
        }
        let spec = pod.spec.as_ref()?;
        let containers: Vec<(String, u32)> = spec
            .containers
            .iter()
            .filter_map(|c| {
                let resources = c.resources.as_ref()?;
                // Extended resources must have limits; requests equal them.
                let quantity = resources
                    .limits
                    .as_ref()
                    .and_then(|l| l.get(GPU_RESOURCE))
                    .or_else(|| resources.requests.as_ref()?.get(GPU_RESOURCE))?;
                let count: u32 = quantity.0.trim().parse().ok()?;
                (count > 0).then(|| (c.name.clone(), count))
            })
            .collect();
        if containers.is_empty() {
            return None;
        }
        Some(Self {
            uid: pod.metadata.uid.clone()?,
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone()?,
            created: pod
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.to_string())
                .unwrap_or_default(),
            containers,
            load: pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ANNOTATION_SIM_LOAD))
                .cloned(),
        })
    }
}

/// A GPU the kubelet allocated to a container, as PodResources reports it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Allocation {
    pub uuid: String,
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

/// One container's claim on a GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub uid: String,
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

/// Assigns GPU indices to pods: pods keep what they got; new pods (oldest
/// first, then by namespace and name) take the lowest free indices; a pod
/// that does not fit gets none (the scheduler would not have placed it).
#[derive(Debug, Default)]
pub struct Assigner {
    /// GPU index -> claim.
    claims: BTreeMap<u32, Claim>,
}

impl Assigner {
    /// Updates the assignment for the pods now on the node; returns GPU
    /// index -> claim.
    pub fn assign(&mut self, pods: &[PodGpus], gpus: u32) -> &BTreeMap<u32, Claim> {
        let live: BTreeSet<&str> = pods.iter().map(|p| p.uid.as_str()).collect();
        self.claims
            .retain(|index, claim| *index < gpus && live.contains(claim.uid.as_str()));
        let placed: BTreeSet<String> = self.claims.values().map(|c| c.uid.clone()).collect();

        let mut new: Vec<&PodGpus> = pods.iter().filter(|p| !placed.contains(&p.uid)).collect();
        new.sort_by(|a, b| {
            (&a.created, &a.namespace, &a.name).cmp(&(&b.created, &b.namespace, &b.name))
        });
        for pod in new {
            let wanted: u32 = pod.containers.iter().map(|(_, n)| *n).sum();
            let free: Vec<u32> = (0..gpus).filter(|i| !self.claims.contains_key(i)).collect();
            if (free.len() as u64) < u64::from(wanted) {
                tracing::warn!(
                    pod = %format!("{}/{}", pod.namespace, pod.name),
                    wanted,
                    free = free.len(),
                    "not enough simulated GPUs for pod"
                );
                continue;
            }
            let mut free = free.into_iter();
            for (container, count) in &pod.containers {
                for index in free.by_ref().take(*count as usize) {
                    self.claims.insert(
                        index,
                        Claim {
                            uid: pod.uid.clone(),
                            namespace: pod.namespace.clone(),
                            pod: pod.name.clone(),
                            container: container.clone(),
                        },
                    );
                }
            }
        }
        &self.claims
    }
}

/// Watches the pods bound to `node` and keeps the simulation's GPU
/// assignment current. Runs until the stream ends (never, normally).
pub async fn watch_pods(client: kube::Client, node: String, world: SharedWorld) {
    let api = Api::<Pod>::all(client);
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut pods: BTreeMap<String, PodGpus> = BTreeMap::new();
    let mut pending: Option<BTreeMap<String, PodGpus>> = None;
    let mut stream = watcher(api, config).default_backoff().boxed();
    loop {
        let event = match stream.try_next().await {
            Ok(Some(event)) => event,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "watching pods of the node");
                continue;
            }
        };
        let changed = match event {
            watcher::Event::Init => {
                pending = Some(BTreeMap::new());
                false
            }
            watcher::Event::InitApply(pod) => {
                if let (Some(p), Some(gpus)) = (pending.as_mut(), PodGpus::from_pod(&pod)) {
                    p.insert(gpus.uid.clone(), gpus);
                }
                false
            }
            watcher::Event::InitDone => {
                pods = pending.take().unwrap_or_default();
                true
            }
            watcher::Event::Apply(pod) => {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                match PodGpus::from_pod(&pod) {
                    Some(gpus) => pods.insert(uid, gpus.clone()).as_ref() != Some(&gpus),
                    None => pods.remove(&uid).is_some(),
                }
            }
            watcher::Event::Delete(pod) => {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                pods.remove(&uid).is_some()
            }
        };
        if changed {
            let list: Vec<PodGpus> = pods.values().cloned().collect();
            if let Ok(mut world) = world.lock() {
                world.set_pods(&list, std::time::Instant::now());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str, created: &str, gpus: &[u32]) -> PodGpus {
        PodGpus {
            uid: uid.into(),
            namespace: "ns".into(),
            name: format!("pod-{uid}"),
            created: created.into(),
            containers: gpus
                .iter()
                .enumerate()
                .map(|(i, n)| (format!("c{i}"), *n))
                .collect(),
            load: None,
        }
    }

    fn owners(claims: &BTreeMap<u32, Claim>) -> Vec<(u32, String, String)> {
        claims
            .iter()
            .map(|(i, c)| (*i, c.uid.clone(), c.container.clone()))
            .collect()
    }

    #[test]
    fn oldest_pods_get_the_lowest_indices_per_container() {
        let mut a = Assigner::default();
        let pods = [
            pod("b", "2025-01-02", &[1]),
            pod("a", "2025-01-01", &[1, 2]),
        ];
        let claims = owners(a.assign(&pods, 4));
        assert_eq!(
            claims,
            vec![
                (0, "a".into(), "c0".into()),
                (1, "a".into(), "c1".into()),
                (2, "a".into(), "c1".into()),
                (3, "b".into(), "c0".into()),
            ]
        );
    }

    #[test]
    fn assignments_are_stable_and_freed_gpus_are_reused() {
        let mut a = Assigner::default();
        a.assign(&[pod("a", "1", &[1]), pod("b", "2", &[1])], 2);
        // "a" leaves; an older-looking newcomer does not displace "b".
        let claims = owners(a.assign(&[pod("b", "2", &[1]), pod("c", "0", &[1])], 2));
        assert_eq!(
            claims,
            vec![(0, "c".into(), "c0".into()), (1, "b".into(), "c0".into())]
        );
    }

    #[test]
    fn pods_that_do_not_fit_get_nothing() {
        let mut a = Assigner::default();
        let claims = owners(a.assign(&[pod("a", "1", &[3]), pod("b", "2", &[2])], 4));
        assert_eq!(claims.len(), 3);
        assert!(claims.iter().all(|(_, uid, _)| uid == "a"));
    }

    #[test]
    fn reads_gpu_limits_and_the_load_annotation_from_pods() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "n", "uid": "u1",
                         "creationTimestamp": "2025-01-01T00:00:00Z",
                         "annotations": {"climatik.io/sim-load": "bursty"}},
            "spec": {"containers": [
                {"name": "sidecar"},
                {"name": "vllm", "resources": {"limits": {"nvidia.com/gpu": "2"}}}
            ]}
        }))
        .expect("pod");
        let gpus = PodGpus::from_pod(&pod).expect("has GPUs");
        assert_eq!(gpus.containers, vec![("vllm".to_string(), 2)]);
        assert_eq!(gpus.load.as_deref(), Some("bursty"));

        let mut done = pod.clone();
        done.status = Some(k8s_openapi::api::core::v1::PodStatus {
            phase: Some("Succeeded".into()),
            ..Default::default()
        });
        assert_eq!(PodGpus::from_pod(&done), None);
    }
}
