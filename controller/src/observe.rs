//! From pods and Prometheus series to per-node, per-device power.
//!
//! DCGM exporter series name the pod a GPU is given to; the labels come as
//! `pod`/`namespace`, or as `exported_pod`/`exported_namespace` when
//! Prometheus does not honour the exporter's labels (then `pod` is the
//! exporter's own pod, so the `exported_` form wins). A GPU shared by
//! time-slicing repeats its reading for every pod, so devices are keyed by
//! UUID and counted once.
//!
//! Any scrape target can export a series that names any pod, so the labels
//! are trusted only as far as they can be checked: the queries keep to the
//! exporters' Prometheus jobs, a series counts only for a pod the API
//! server binds to a node, and only for a GPU that node's agent lists in
//! its inventory (NodeFrequencies `status.gpus`). What is left out is
//! counted by [`IgnoredReason`].

use std::collections::{BTreeMap, BTreeSet, HashMap};

use climatik_api::{DevicePower, GpuInventory, NodePower};

use crate::prom::Sample;

/// GPU power per device (DCGM, watts).
pub const GPU_POWER: &str = "DCGM_FI_DEV_POWER_USAGE";
/// SM clock per device (DCGM, MHz).
pub const GPU_CLOCK: &str = "DCGM_FI_DEV_SM_CLOCK";
/// CPU power per pod (Kepler, watts).
pub const KEPLER_CPU: &str = "kepler_pod_cpu_watts";
/// Device id of a node's CPUs in `status.nodes[].devices`.
pub const CPU_DEVICE: &str = "cpu";

const METRIC_NAME: &str = "__name__";
const POD_LABELS: [&str; 2] = ["exported_pod", "pod"];
const NAMESPACE_LABELS: [&str; 2] = ["exported_namespace", "namespace"];
const UUID_LABELS: [&str; 2] = ["UUID", "uuid"];
/// A DCGM series' GPU index, for exporters that leave the UUID out.
const GPU_INDEX: &str = "gpu";
/// The namespace label of Kepler's pod series.
const KEPLER_NAMESPACE: &str = "pod_namespace";
const KEPLER_POD: &str = "pod_name";
const KEPLER_NODE: &str = "node_name";
const KEPLER_ZONE: &str = "zone";
const KEPLER_STATE: &str = "state";

/// Whether a power series' label `name` is one the monitor reads. The
/// others (the exporter's instance, driver version, model, PCI bus...)
/// are dropped from the answer it keeps for a period: at 1500 GPUs they
/// were most of it.
fn read_label(name: &str) -> bool {
    [
        METRIC_NAME,
        GPU_INDEX,
        KEPLER_NAMESPACE,
        KEPLER_POD,
        KEPLER_NODE,
    ]
    .into_iter()
    .chain([KEPLER_ZONE, KEPLER_STATE])
    .chain(POD_LABELS)
    .chain(NAMESPACE_LABELS)
    .chain(UUID_LABELS)
    .any(|read| read == name)
}

/// The Prometheus jobs of the DCGM exporter in a standard install: the
/// Service of the GPU Operator's exporter, and of the dcgm-exporter chart
/// installed as release `dcgm-exporter` (a ServiceMonitor names the job
/// after the Service).
pub const DEFAULT_DCGM_JOBS: &[&str] = &["nvidia-dcgm-exporter", "dcgm-exporter"];
/// The Prometheus job of Kepler in a standard install (the Service of the
/// Kepler chart installed as release `kepler`).
pub const DEFAULT_KEPLER_JOBS: &[&str] = &["kepler"];

/// The one query of every power series the monitor reads, for all
/// policies at once: DCGM power and SM clock from the exporters' `dcgm_jobs`,
/// and, when `kepler_jobs` is given, Kepler's package-zone CPU power (zones
/// overlap, summing them would double count). Each part keeps to its jobs
/// (any job when empty) and, for a monitor of one namespace, to that
/// namespace under either label spelling. The series keep `__name__`, so
/// [`PowerSeries::split`] can tell them apart. Kepler's series carry `zone`,
/// DCGM's never do, so `or` cannot drop one for the other.
pub fn power_query(
    namespace: Option<&str>,
    dcgm_jobs: &[String],
    kepler_jobs: Option<&[String]>,
) -> String {
    let dcgm = |ns_label: Option<&str>| {
        let ns = match (ns_label, namespace) {
            (Some(label), Some(ns)) => format!(",{label}=\"{}\"", escape(ns)),
            _ => String::new(),
        };
        format!(
            "{{__name__=~\"{GPU_POWER}|{GPU_CLOCK}\"{ns}{}}}",
            job_matcher(dcgm_jobs)
        )
    };
    let mut query = match namespace {
        Some(_) => format!(
            "{} or {}",
            dcgm(Some(NAMESPACE_LABELS[1])),
            dcgm(Some(NAMESPACE_LABELS[0]))
        ),
        None => dcgm(None),
    };
    if let Some(jobs) = kepler_jobs {
        let ns = namespace
            .map(|ns| format!(",{KEPLER_NAMESPACE}=\"{}\"", escape(ns)))
            .unwrap_or_default();
        query.push_str(&format!(
            " or {KEPLER_CPU}{{zone=\"package\"{ns}{}}}",
            job_matcher(jobs)
        ));
    }
    query
}

/// `metric` of the GPUs `uuids`, one series per GPU (a time-sliced GPU
/// repeats its reading for every pod), from the series of `jobs` only (any
/// job when empty): the power of GPUs no policy measures.
pub fn dcgm_gpus_query(metric: &str, uuids: &[&str], jobs: &[String]) -> String {
    let alternatives: Vec<String> = uuids.iter().map(|u| regex_literal(u)).collect();
    format!(
        "max by (UUID) ({metric}{{UUID=~\"{}\"{}}})",
        escape(&alternatives.join("|")),
        job_matcher(jobs)
    )
}

/// One answer of [`power_query`], by metric and namespace, so each policy
/// reads its own namespace's series only.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PowerSeries {
    gpu_power: HashMap<String, Vec<Sample>>,
    gpu_clock: HashMap<String, Vec<Sample>>,
    cpu: HashMap<String, Vec<Sample>>,
}

impl PowerSeries {
    /// Sorts `samples` by metric (`__name__`) and by the namespace of the
    /// pod they name, keeping only the labels the monitor reads; series of
    /// other metrics or naming no namespace are dropped.
    pub fn split(samples: Vec<Sample>) -> Self {
        let mut series = Self::default();
        for mut sample in samples {
            sample.labels.retain(|name, _| read_label(name));
            sample.labels.shrink_to_fit();
            let (by_namespace, ns_labels): (_, &[&str]) = match sample.label(&[METRIC_NAME]) {
                Some(GPU_POWER) => (&mut series.gpu_power, &NAMESPACE_LABELS),
                Some(GPU_CLOCK) => (&mut series.gpu_clock, &NAMESPACE_LABELS),
                Some(KEPLER_CPU) => (&mut series.cpu, &[KEPLER_NAMESPACE]),
                _ => continue,
            };
            let Some(ns) = sample.label(ns_labels).map(str::to_string) else {
                continue;
            };
            by_namespace.entry(ns).or_default().push(sample);
        }
        series
    }

    /// DCGM power series about pods of `namespace`.
    pub fn gpu_power(&self, namespace: &str) -> &[Sample] {
        self.gpu_power.get(namespace).map_or(&[], Vec::as_slice)
    }

    /// DCGM SM clock series about pods of `namespace`.
    pub fn gpu_clock(&self, namespace: &str) -> &[Sample] {
        self.gpu_clock.get(namespace).map_or(&[], Vec::as_slice)
    }

    /// Kepler CPU power series about pods of `namespace`.
    pub fn cpu(&self, namespace: &str) -> &[Sample] {
        self.cpu.get(namespace).map_or(&[], Vec::as_slice)
    }
}

/// The `job` matcher for `jobs`, with its leading comma: an exact match for
/// one job, an anchored alternation of literals for several, nothing for
/// none.
fn job_matcher(jobs: &[String]) -> String {
    match jobs {
        [] => String::new(),
        [job] => format!(",job=\"{}\"", escape(job)),
        jobs => {
            let alternatives: Vec<String> = jobs.iter().map(|j| regex_literal(j)).collect();
            format!(",job=~\"{}\"", escape(&alternatives.join("|")))
        }
    }
}

/// A PromQL string literal's content for `value`.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"")
}

/// `value` as a regular expression (RE2) that matches it literally.
fn regex_literal(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The GPUs each node's agent reported (NodeFrequencies `status.gpus`):
/// only these are measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Inventory {
    /// Node -> each GPU the agent listed.
    nodes: BTreeMap<String, Vec<KnownGpu>>,
}

/// One GPU of an inventory, with the limits a cap has to respect.
#[derive(Debug, Clone, PartialEq)]
struct KnownGpu {
    index: i32,
    uuid: String,
    floor: GpuFloor,
}

/// The least a GPU can be held to, as its agent reported it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GpuFloor {
    /// Lowest power limit the GPU accepts, in watts.
    pub min_power_limit_watts: Option<f64>,
    /// Lowest supported SM clock, in MHz.
    pub min_clock_mhz: Option<f64>,
}

impl Inventory {
    /// Records what the agent of `node` reported. A node with an empty list
    /// stays unknown: its agent has not reported GPUs (yet).
    pub fn insert(&mut self, node: &str, gpus: &[GpuInventory]) {
        if gpus.is_empty() {
            return;
        }
        self.nodes.insert(
            node.to_string(),
            gpus.iter()
                .map(|g| KnownGpu {
                    index: g.index,
                    uuid: g.gpu_id.clone(),
                    floor: GpuFloor {
                        min_power_limit_watts: g.min_power_limit_watts,
                        min_clock_mhz: Some(f64::from(g.min_frequency)),
                    },
                })
                .collect(),
        );
    }

    /// The GPU a series names on `node`: by its `UUID` label if the node
    /// has that GPU; without one (exporters that leave it out) the GPU with
    /// the series' `gpu` index.
    fn resolve(&self, node: &str, sample: &Sample) -> Result<&KnownGpu, IgnoredReason> {
        let gpus = self.nodes.get(node).ok_or(IgnoredReason::NoInventory)?;
        let found = match sample.label(&UUID_LABELS) {
            Some(uuid) => gpus.iter().find(|g| g.uuid == uuid),
            None => {
                let index = sample
                    .label(&[GPU_INDEX])
                    .and_then(|i| i.parse::<i32>().ok());
                gpus.iter().find(|g| Some(g.index) == index)
            }
        };
        found.ok_or(IgnoredReason::UnknownGpu)
    }
}

/// Why a GPU series that names one of the policy's pods was not counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IgnoredReason {
    /// The pod is not bound to a node: it cannot hold a GPU.
    UnscheduledPod,
    /// The pod's node has no GPU inventory: its agent has not reported one.
    NoInventory,
    /// The series names a GPU the node's inventory does not list.
    UnknownGpu,
}

impl IgnoredReason {
    /// A low-cardinality label for the `reason` dimension of metrics.
    pub fn metric_label(self) -> &'static str {
        match self {
            Self::UnscheduledPod => "unscheduled_pod",
            Self::NoInventory => "no_inventory",
            Self::UnknownGpu => "unknown_gpu",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::UnscheduledPod => "for a pod bound to no node",
            Self::NoInventory => {
                "on a node whose agent has not reported its GPUs (NodeFrequencies status.gpus)"
            }
            Self::UnknownGpu => "for a GPU its node's inventory does not list",
        }
    }
}

/// Ignored series, counted by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ignored(pub BTreeMap<IgnoredReason, u64>);

impl Ignored {
    fn add(&mut self, reason: IgnoredReason) {
        *self.0.entry(reason).or_insert(0) += 1;
    }

    /// `message`, followed by what was ignored (if anything): for a
    /// condition message.
    pub fn appended_to(&self, message: String) -> String {
        match self.describe() {
            Some(ignored) => format!("{message}; {ignored}"),
            None => message,
        }
    }

    /// What was ignored; `None` when nothing was.
    pub fn describe(&self) -> Option<String> {
        if self.0.is_empty() {
            return None;
        }
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(reason, n)| format!("{n} {}", reason.describe()))
            .collect();
        Some(format!("ignored {GPU_POWER} series: {}", parts.join(", ")))
    }
}

/// A matched pod: its name, the node it is bound to, and its priority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodOnNode {
    pub name: String,
    pub node: Option<String>,
    /// `spec.priority`: the API server resolves `priorityClassName` into
    /// it at admission.
    pub priority: Option<i32>,
}

/// One GPU of the workload.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuReading {
    pub node: String,
    pub uuid: String,
    pub power_watts: f64,
    pub clock_mhz: Option<f64>,
    /// What its node's inventory says the GPU can be held to.
    pub floor: GpuFloor,
}

/// The GPUs the pods use, each once, with power and SM clock, and the
/// power series left out (see [`Inventory`]).
pub fn gpus(
    namespace: &str,
    pods: &[PodOnNode],
    inventory: &Inventory,
    power: &[Sample],
    clock: &[Sample],
) -> (Vec<GpuReading>, Ignored) {
    let by_name: BTreeMap<&str, &PodOnNode> = pods.iter().map(|p| (p.name.as_str(), p)).collect();
    // (node, uuid) -> reading; the first series of a device wins, repeats
    // from time-sliced pods are the same reading.
    let mut devices: BTreeMap<(String, String), GpuReading> = BTreeMap::new();
    let mut ignored = Ignored::default();
    for sample in power {
        let (node, uuid, floor) = match locate(namespace, &by_name, inventory, sample) {
            Located::Gpu(node, uuid, floor) => (node, uuid, floor),
            Located::NotOurs => continue,
            Located::Ignored(reason) => {
                ignored.add(reason);
                continue;
            }
        };
        devices
            .entry((node.clone(), uuid.clone()))
            .or_insert(GpuReading {
                node,
                uuid,
                power_watts: sample.value,
                clock_mhz: None,
                floor,
            });
    }
    for sample in clock {
        if let Located::Gpu(node, uuid, _) = locate(namespace, &by_name, inventory, sample)
            && let Some(reading) = devices.get_mut(&(node, uuid))
        {
            reading.clock_mhz.get_or_insert(sample.value);
        }
    }
    (devices.into_values().collect(), ignored)
}

/// What a DCGM series is to a policy.
enum Located {
    /// GPU `.1` on node `.0` of one of the pods, and its floor.
    Gpu(String, String, GpuFloor),
    /// About another namespace or pod.
    NotOurs,
    /// About one of the pods, but not believed.
    Ignored(IgnoredReason),
}

/// The (node, UUID) of a DCGM series about one of `pods`. The node is the
/// one the API server binds the pod to, never a label of the series.
fn locate(
    namespace: &str,
    pods: &BTreeMap<&str, &PodOnNode>,
    inventory: &Inventory,
    sample: &Sample,
) -> Located {
    if sample.label(&NAMESPACE_LABELS) != Some(namespace) {
        return Located::NotOurs;
    }
    let Some(pod) = sample.label(&POD_LABELS).and_then(|p| pods.get(p)) else {
        return Located::NotOurs;
    };
    let Some(node) = pod.node.as_deref() else {
        return Located::Ignored(IgnoredReason::UnscheduledPod);
    };
    match inventory.resolve(node, sample) {
        Ok(gpu) => Located::Gpu(node.to_string(), gpu.uuid.clone(), gpu.floor),
        Err(reason) => Located::Ignored(reason),
    }
}

/// CPU power per node: the package zone of every matched pod, summed (pods
/// are disjoint, unlike time-sliced GPUs).
pub fn cpu(pods: &[PodOnNode], kepler: &[Sample]) -> BTreeMap<String, f64> {
    let by_name: BTreeMap<&str, &PodOnNode> = pods.iter().map(|p| (p.name.as_str(), p)).collect();
    let mut nodes = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for sample in kepler {
        if sample.label(&[KEPLER_ZONE]) != Some("package")
            || sample.label(&[KEPLER_STATE]) == Some("terminated")
        {
            continue;
        }
        let Some(pod) = sample.label(&[KEPLER_POD]).and_then(|p| by_name.get(p)) else {
            continue;
        };
        let Some(node) = pod
            .node
            .clone()
            .or_else(|| sample.label(&[KEPLER_NODE]).map(str::to_string))
        else {
            continue;
        };
        // One series per pod and state: several container ids of one pod
        // would repeat otherwise.
        let key = (
            pod.name.clone(),
            sample.label(&[KEPLER_STATE]).unwrap_or("").to_string(),
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
            priority: None,
        }
    }

    fn inventory(nodes: &[(&str, &[(i32, &str)])]) -> Inventory {
        let mut inventory = Inventory::default();
        for (node, gpus) in nodes {
            let gpus: Vec<GpuInventory> = gpus
                .iter()
                .map(|(index, uuid)| GpuInventory {
                    gpu_id: uuid.to_string(),
                    index: *index,
                    ..GpuInventory::default()
                })
                .collect();
            inventory.insert(node, &gpus);
        }
        inventory
    }

    fn summary(gpus: &[GpuReading]) -> Vec<(&str, &str, f64, Option<f64>)> {
        gpus.iter()
            .map(|g| (g.node.as_str(), g.uuid.as_str(), g.power_watts, g.clock_mhz))
            .collect()
    }

    #[test]
    fn accepts_every_label_spelling_and_counts_shared_gpus_once() {
        let pods = [pod("a", Some("n1")), pod("b", Some("n1"))];
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
        let known = inventory(&[("n1", &[(0, "GPU-1"), (1, "GPU-2")])]);
        let (gpus, ignored) = gpus("ns", &pods, &known, &power, &clock);
        assert_eq!(
            summary(&gpus),
            vec![
                ("n1", "GPU-1", 100.0, Some(1200.0)),
                ("n1", "GPU-2", 50.0, None),
            ]
        );
        // Other pods' series are not ours to ignore.
        assert_eq!(ignored, Ignored::default());
        assert_eq!(ignored.describe(), None);
        let nodes = node_powers(&gpus, &BTreeMap::new());
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0].power_watts, 150.0);
    }

    #[test]
    fn only_gpus_in_the_pods_nodes_inventory_count() {
        let pods = [
            pod("a", Some("n1")),
            pod("b", Some("n2")),
            pod("pending", None),
        ];
        let series = |labels: &[(&str, &str)], watts: f64| {
            let mut labels = labels.to_vec();
            labels.push(("namespace", "ns"));
            sample(&labels, watts)
        };
        let power = [
            series(&[("UUID", "GPU-1"), ("pod", "a")], 100.0),
            // a UUID nobody reported, claiming pod a
            series(&[("UUID", "GPU-FAKE"), ("pod", "a")], 9000.0),
            // a real GPU, but of another node than pod a's
            series(&[("UUID", "GPU-9"), ("pod", "a")], 9000.0),
            // no UUID: the node's GPU with that index
            series(&[("gpu", "1"), ("pod", "a")], 40.0),
            // no UUID and an index the node does not have
            series(&[("gpu", "7"), ("pod", "a")], 9000.0),
            // the hostname label does not place a pod that has no node
            series(
                &[("UUID", "GPU-1"), ("pod", "pending"), ("Hostname", "n1")],
                9000.0,
            ),
            // pod b's node has not reported an inventory
            series(&[("UUID", "GPU-5"), ("pod", "b")], 9000.0),
        ];
        let clock = [
            series(&[("gpu", "1"), ("pod", "a")], 1100.0),
            series(&[("UUID", "GPU-FAKE"), ("pod", "a")], 1.0),
        ];
        let known = inventory(&[
            ("n1", &[(0, "GPU-1"), (1, "GPU-2")]),
            ("n3", &[(0, "GPU-9")]),
            // reported, but no GPUs: as unknown as a node never reported
            ("n2", &[]),
        ]);
        let (gpus, ignored) = gpus("ns", &pods, &known, &power, &clock);
        assert_eq!(
            summary(&gpus),
            vec![
                ("n1", "GPU-1", 100.0, None),
                ("n1", "GPU-2", 40.0, Some(1100.0))
            ]
        );
        let counts: Vec<(&str, u64)> = ignored
            .0
            .iter()
            .map(|(reason, n)| (reason.metric_label(), *n))
            .collect();
        assert_eq!(
            counts,
            vec![
                ("unscheduled_pod", 1),
                ("no_inventory", 1),
                ("unknown_gpu", 3)
            ]
        );
        let message = ignored.describe().unwrap_or_default();
        assert!(
            message.contains("3 for a GPU its node's inventory does not list"),
            "{message}"
        );
        assert!(
            message.contains("1 on a node whose agent has not reported"),
            "{message}"
        );
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
    fn one_query_covers_both_spellings_and_keeps_to_the_jobs() {
        let jobs = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(
            power_query(None, &jobs(&["dcgm"]), None),
            "{__name__=~\"DCGM_FI_DEV_POWER_USAGE|DCGM_FI_DEV_SM_CLOCK\",job=\"dcgm\"}"
        );
        assert_eq!(
            power_query(Some("ns"), &[], Some(&jobs(&["kepler"]))),
            "{__name__=~\"DCGM_FI_DEV_POWER_USAGE|DCGM_FI_DEV_SM_CLOCK\",namespace=\"ns\"} or \
             {__name__=~\"DCGM_FI_DEV_POWER_USAGE|DCGM_FI_DEV_SM_CLOCK\",exported_namespace=\"ns\"} or \
             kepler_pod_cpu_watts{zone=\"package\",pod_namespace=\"ns\",job=\"kepler\"}"
        );
        // Several jobs: literal alternatives (the dot is no wildcard), then
        // escaped for the PromQL string; a quote cannot end the string.
        assert_eq!(
            power_query(None, &[], Some(&jobs(&["a.b", "c\"d"]))),
            "{__name__=~\"DCGM_FI_DEV_POWER_USAGE|DCGM_FI_DEV_SM_CLOCK\"} or \
             kepler_pod_cpu_watts{zone=\"package\",job=~\"a\\\\.b|c\\\"d\"}"
        );
        // The GPUs no policy measures: one series per UUID, literally.
        assert_eq!(
            dcgm_gpus_query(GPU_POWER, &["GPU-1", "GPU.2"], &jobs(&["dcgm"])),
            "max by (UUID) (DCGM_FI_DEV_POWER_USAGE{UUID=~\"GPU-1|GPU\\\\.2\",job=\"dcgm\"})"
        );
    }

    #[test]
    fn one_answer_is_split_by_metric_and_namespace() {
        let series = PowerSeries::split(vec![
            sample(&[("__name__", GPU_POWER), ("namespace", "a")], 1.0),
            sample(
                &[
                    ("__name__", GPU_POWER),
                    ("namespace", "gpu-operator"),
                    ("exported_namespace", "b"),
                ],
                2.0,
            ),
            sample(&[("__name__", GPU_CLOCK), ("namespace", "a")], 3.0),
            sample(&[("__name__", KEPLER_CPU), ("pod_namespace", "b")], 4.0),
            // no namespace, or another metric: not anyone's
            sample(&[("__name__", GPU_POWER)], 5.0),
            sample(&[("__name__", "up"), ("namespace", "a")], 6.0),
        ]);
        let values = |s: &[Sample]| s.iter().map(|s| s.value).collect::<Vec<_>>();
        assert_eq!(values(series.gpu_power("a")), [1.0]);
        assert_eq!(values(series.gpu_power("b")), [2.0]);
        assert!(series.gpu_power("gpu-operator").is_empty());
        assert_eq!(values(series.gpu_clock("a")), [3.0]);
        assert_eq!(values(series.cpu("b")), [4.0]);
        assert!(series.cpu("a").is_empty());
    }

    #[test]
    fn the_answer_keeps_only_the_labels_the_monitor_reads() {
        let series = PowerSeries::split(vec![sample(
            &[
                ("__name__", GPU_POWER),
                ("namespace", "a"),
                ("pod", "p"),
                ("UUID", "GPU-1"),
                ("gpu", "0"),
                ("Hostname", "node-1"),
                ("instance", "10.0.0.1:9400"),
                ("modelName", "NVIDIA H200"),
                ("DCGM_FI_DRIVER_VERSION", "570.1"),
            ],
            1.0,
        )]);
        let mut kept: Vec<&str> = series.gpu_power("a")[0]
            .labels
            .keys()
            .map(String::as_str)
            .collect();
        kept.sort_unstable();
        assert_eq!(kept, ["UUID", "__name__", "gpu", "namespace", "pod"]);
    }
}
