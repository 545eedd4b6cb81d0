//! The objects of the bench and how they relate; deterministic.

use super::*;

pub struct Topology {
    pub nodes: Vec<String>,
    pub namespaces: Vec<String>,
    pub policies: Vec<Policy>,
}

pub struct Policy {
    pub namespace: String,
    pub name: String,
    pub cap_watts: i64,
    pub pods: Vec<PodPlan>,
}

pub struct PodPlan {
    pub name: String,
    pub node: String,
    pub gpu_index: usize,
    pub gpu_uuid: String,
    /// Share of the GPU the pod keeps busy.
    pub load: f64,
}

impl Topology {
    /// Policy `i` selects 1 pod when `i` is even, 2 when odd; pods go
    /// round-robin over the nodes, each to the next free GPU.
    pub fn new(load: &LoadArgs) -> Self {
        let node_count = load.nodes.max(1);
        let nodes: Vec<String> = (0..node_count).map(|n| format!("scale-node-{n}")).collect();
        let namespaces: Vec<String> = (0..load.namespaces.max(1))
            .map(|n| format!("scale-bench-{n}"))
            .collect();
        let mut next_pod = 0usize;
        let policies = (0..load.policies)
            .map(|i| {
                let name = format!("pcp-{i}");
                let pods: Vec<PodPlan> = (0..1 + i % 2)
                    .map(|j| {
                        let k = next_pod;
                        next_pod += 1;
                        let node = nodes[k % node_count].clone();
                        let gpu_index = (k / node_count) % GPUS_PER_NODE;
                        PodPlan {
                            name: format!("{name}-{j}"),
                            gpu_uuid: gpu_uuid(&node, gpu_index),
                            node,
                            gpu_index,
                            load: 0.55 + 0.45 * unit(k as u64),
                        }
                    })
                    .collect();
                // 140-240 W per GPU against 154-250 W drawn unclocked:
                // most policies cap, some do not.
                let per_gpu = 140.0 + 100.0 * unit(1_000_003 + i as u64);
                Policy {
                    namespace: namespaces[i % namespaces.len()].clone(),
                    cap_watts: (per_gpu * pods.len() as f64).round() as i64,
                    name,
                    pods,
                }
            })
            .collect();
        Self {
            nodes,
            namespaces,
            policies,
        }
    }

    pub fn pod_count(&self) -> usize {
        self.policies.iter().map(|p| p.pods.len()).sum()
    }
}

pub fn gpu_uuid(node: &str, index: usize) -> String {
    format!("GPU-{node}-{index}")
}

/// A reproducible number in [0, 1) (splitmix64).
fn unit(seed: u64) -> f64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}
