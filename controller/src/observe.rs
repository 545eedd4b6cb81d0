//! From pods and Prometheus series to per-node, per-device power.
//!
//! DCGM exporter series name the pod a GPU is given to; the labels come as
//! `pod`/`namespace`, or as `exported_pod`/`exported_namespace` when
//! Prometheus does not honour the exporter's labels (then `pod` is the
//! exporter's own pod, so the `exported_` form wins). A GPU shared by
//! time-slicing repeats its reading for every pod, so devices are keyed by
//! UUID and counted once.

use std::collections::{BTreeMap, BTreeSet};

use climatik_api::{DevicePower, NodePower};

use crate::prom::Sample;

/// GPU power per device (DCGM, watts).
pub const GPU_POWER: &str = "DCGM_FI_DEV_POWER_USAGE";
/// SM clock per device (DCGM, MHz).
pub const GPU_CLOCK: &str = "DCGM_FI_DEV_SM_CLOCK";
/// CPU power per pod (Kepler, watts).
pub const KEPLER_CPU: &str = "kepler_pod_cpu_watts";
/// Device id of a node's CPUs in `status.nodes[].devices`.
pub const CPU_DEVICE: &str = "cpu";

const POD_LABELS: [&str; 2] = ["exported_pod", "pod"];
const NAMESPACE_LABELS: [&str; 2] = ["exported_namespace", "namespace"];
const HOSTNAME_LABELS: [&str; 2] = ["Hostname", "hostname"];

/// The DCGM query for one namespace, under either label spelling.
pub fn dcgm_query(metric: &str, namespace: &str) -> String {
    format!(
        "{metric}{{namespace=\"{ns}\"}} or {metric}{{exported_namespace=\"{ns}\"}}",
        ns = escape(namespace)
    )
}

/// Kepler's CPU power for one namespace: the package zone only (zones
/// overlap, summing them would double count).
pub fn kepler_query(namespace: &str) -> String {
    format!(
        "{KEPLER_CPU}{{zone=\"package\",pod_namespace=\"{}\"}}",
        escape(namespace)
    )
}

fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"")
}

/// A matched pod: its name and the node it is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodOnNode {
    pub name: String,
    pub node: Option<String>,
}

/// One GPU of the workload.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuReading {
    pub node: String,
    pub uuid: String,
    pub power_watts: f64,
    pub clock_mhz: Option<f64>,
}

/// The GPUs the pods use, each once, with power and SM clock.
pub fn gpus(
    namespace: &str,
    pods: &[PodOnNode],
    power: &[Sample],
    clock: &[Sample],
) -> Vec<GpuReading> {
    let by_name: BTreeMap<&str, &PodOnNode> = pods.iter().map(|p| (p.name.as_str(), p)).collect();
    // (node, uuid) -> reading; the first series of a device wins, repeats
    // from time-sliced pods are the same reading.
    let mut devices: BTreeMap<(String, String), GpuReading> = BTreeMap::new();
    for sample in power {
        let Some((node, uuid)) = locate(namespace, &by_name, sample) else {
            continue;
        };
        devices
            .entry((node.clone(), uuid.clone()))
            .or_insert(GpuReading {
                node,
                uuid,
                power_watts: sample.value,
                clock_mhz: None,
            });
    }
    for sample in clock {
        if let Some(key) = locate(namespace, &by_name, sample)
            && let Some(reading) = devices.get_mut(&key)
        {
            reading.clock_mhz.get_or_insert(sample.value);
        }
    }
    devices.into_values().collect()
}

/// The (node, UUID) of a DCGM series, if it belongs to one of `pods`.
fn locate(
    namespace: &str,
    pods: &BTreeMap<&str, &PodOnNode>,
    sample: &Sample,
) -> Option<(String, String)> {
    if sample.label(&NAMESPACE_LABELS)? != namespace {
        return None;
    }
    let pod = pods.get(sample.label(&POD_LABELS)?)?;
    let node = pod
        .node
        .clone()
        .or_else(|| sample.label(&HOSTNAME_LABELS).map(str::to_string))?;
    let uuid = match sample.label(&["UUID", "uuid"]) {
        Some(uuid) => uuid.to_string(),
        // Without a UUID the index on the node still identifies the GPU.
        None => format!("{node}/gpu{}", sample.label(&["gpu"])?),
    };
    Some((node, uuid))
}

/// CPU power per node: the package zone of every matched pod, summed (pods
/// are disjoint, unlike time-sliced GPUs).
pub fn cpu(pods: &[PodOnNode], kepler: &[Sample]) -> BTreeMap<String, f64> {
    let by_name: BTreeMap<&str, &PodOnNode> = pods.iter().map(|p| (p.name.as_str(), p)).collect();
    let mut nodes = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for sample in kepler {
        if sample.label(&["zone"]) != Some("package")
            || sample.label(&["state"]) == Some("terminated")
        {
            continue;
        }
        let Some(pod) = sample.label(&["pod_name"]).and_then(|p| by_name.get(p)) else {
            continue;
        };
        let Some(node) = pod
            .node
            .clone()
            .or_else(|| sample.label(&["node_name"]).map(str::to_string))
        else {
            continue;
        };
        // One series per pod and state: several container ids of one pod
        // would repeat otherwise.
        let key = (
            pod.name.clone(),
            sample.label(&["state"]).unwrap_or("").to_string(),
        );
        if seen.insert(key) {
            *nodes.entry(node).or_insert(0.0) += sample.value;
        }
    }
    nodes
}

/// `status.nodes`: GPUs and (if measured) the CPU per node, sorted.
pub fn node_powers(gpus: &[GpuReading], cpu: &BTreeMap<String, f64>) -> Vec<NodePower> {
    let mut nodes: BTreeMap<String, NodePower> = BTreeMap::new();
    for gpu in gpus {
        let node = nodes.entry(gpu.node.clone()).or_insert_with(|| NodePower {
            node_name: gpu.node.clone(),
            ..Default::default()
        });
        node.power_watts += gpu.power_watts;
        node.devices.push(DevicePower {
            device_id: gpu.uuid.clone(),
            power_watts: gpu.power_watts,
            frequency_mhz: gpu.clock_mhz,
        });
    }
    for (name, watts) in cpu {
        let node = nodes.entry(name.clone()).or_insert_with(|| NodePower {
            node_name: name.clone(),
            ..Default::default()
        });
        node.power_watts += watts;
        node.devices.push(DevicePower {
            device_id: CPU_DEVICE.to_string(),
            power_watts: *watts,
            frequency_mhz: None,
        });
    }
    nodes.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(labels: &[(&str, &str)], value: f64) -> Sample {
        Sample {
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            value,
        }
    }

    fn pod(name: &str, node: Option<&str>) -> PodOnNode {
        PodOnNode {
            name: name.to_string(),
            node: node.map(str::to_string),
        }
    }

    #[test]
    fn accepts_every_label_spelling_and_counts_shared_gpus_once() {
        let pods = [pod("a", Some("n1")), pod("b", Some("n1")), pod("c", None)];
        let power = [
            sample(
                &[("UUID", "GPU-1"), ("pod", "a"), ("namespace", "ns")],
                100.0,
            ),
            // time-sliced: the same GPU again for pod b
            sample(
                &[("UUID", "GPU-1"), ("pod", "b"), ("namespace", "ns")],
                100.0,
            ),
            // exported_ spelling; `pod` is the exporter's own pod
            sample(
                &[
                    ("UUID", "GPU-2"),
                    ("pod", "dcgm-exporter-x"),
                    ("namespace", "gpu-operator"),
                    ("exported_pod", "b"),
                    ("exported_namespace", "ns"),
                ],
                50.0,
            ),
            // unscheduled pod: node from the lower-case hostname label
            sample(
                &[
                    ("UUID", "GPU-3"),
                    ("pod", "c"),
                    ("namespace", "ns"),
                    ("hostname", "n2"),
                ],
                30.0,
            ),
            // someone else's pod and namespace
            sample(
                &[("UUID", "GPU-4"), ("pod", "z"), ("namespace", "ns")],
                70.0,
            ),
            sample(
                &[("UUID", "GPU-5"), ("pod", "a"), ("namespace", "other")],
                70.0,
            ),
        ];
        let clock = [sample(
            &[("UUID", "GPU-1"), ("pod", "b"), ("namespace", "ns")],
            1200.0,
        )];
        let gpus = gpus("ns", &pods, &power, &clock);
        let summary: Vec<_> = gpus
            .iter()
            .map(|g| (g.node.as_str(), g.uuid.as_str(), g.power_watts, g.clock_mhz))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("n1", "GPU-1", 100.0, Some(1200.0)),
                ("n1", "GPU-2", 50.0, None),
                ("n2", "GPU-3", 30.0, None),
            ]
        );
        let nodes = node_powers(&gpus, &BTreeMap::new());
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[0].power_watts, 150.0);
    }

    #[test]
    fn cpu_uses_the_package_zone_only() {
        let pods = [pod("a", Some("n1")), pod("b", Some("n1"))];
        let kepler = [
            sample(
                &[("pod_name", "a"), ("zone", "package"), ("state", "running")],
                20.0,
            ),
            sample(
                &[("pod_name", "a"), ("zone", "core"), ("state", "running")],
                15.0,
            ),
            sample(
                &[("pod_name", "a"), ("zone", "dram"), ("state", "running")],
                5.0,
            ),
            sample(
                &[("pod_name", "b"), ("zone", "package"), ("state", "running")],
                10.0,
            ),
            sample(
                &[("pod_name", "x"), ("zone", "package"), ("state", "running")],
                99.0,
            ),
        ];
        let cpu = cpu(&pods, &kepler);
        assert_eq!(cpu.get("n1"), Some(&30.0));
        let nodes = node_powers(&[], &cpu);
        assert_eq!(nodes[0].devices[0].device_id, CPU_DEVICE);
    }

    #[test]
    fn queries_cover_both_spellings() {
        let q = dcgm_query(GPU_POWER, "ns");
        assert!(q.contains("{namespace=\"ns\"}") && q.contains("{exported_namespace=\"ns\"}"));
        assert_eq!(
            kepler_query("ns"),
            "kepler_pod_cpu_watts{zone=\"package\",pod_namespace=\"ns\"}"
        );
    }
}
