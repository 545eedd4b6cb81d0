//! The simulated node: GPUs whose power and throughput follow the reference
//! model, loaded by the pods the API server placed on the node. Shared by
//! the `sim` GPU backend (which locks clocks), the pod watcher (which knows
//! the pods and their loads), the PodResources poller (which says which
//! container the kubelet gave each GPU, with the device plugin) and
//! `/metrics` (which serves DCGM-exporter series).

pub mod dcgm;
pub mod load;
pub mod pods;

/// The GPU model, shared with the benchmarks and the controller's tests.
pub use climatik_sim_gpu::node as model;

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{Arc, Mutex},
    time::Instant,
};

use serde::Deserialize;

use crate::{
    error::{Error, Result},
    gpu::{GpuInfo, PowerLimits, stable_uuid},
};
use load::LoadProfile;
use model::GpuModel;
use pods::{Allocation, Assigner, Claim, PodGpus};

/// The simulation, shared between tasks.
pub type SharedWorld = Arc<Mutex<SimWorld>>;

/// Loads from a scenario file (`--sim-scenario`), which override pod
/// annotations:
///
/// ```yaml
/// pods:            # by namespace/name
///   default/vllm-0: bursty
/// gpus:            # by index, for GPUs no pod holds
///   0: "0.3"
/// ```
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Scenario {
    pub pods: BTreeMap<String, LoadProfile>,
    pub gpus: BTreeMap<u32, LoadProfile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    #[serde(default)]
    pods: BTreeMap<String, String>,
    #[serde(default)]
    gpus: BTreeMap<u32, String>,
}

impl Scenario {
    pub fn parse(text: &str) -> Result<Self> {
        let file: ScenarioFile =
            serde_yaml::from_str(text).map_err(|e| Error::Sim(format!("scenario: {e}")))?;
        let parse = |v: &String| {
            v.parse::<LoadProfile>()
                .map_err(|e| Error::Sim(format!("scenario: {e}")))
        };
        Ok(Self {
            pods: file
                .pods
                .iter()
                .map(|(k, v)| Ok((k.clone(), parse(v)?)))
                .collect::<Result<_>>()?,
            gpus: file
                .gpus
                .iter()
                .map(|(k, v)| Ok((*k, parse(v)?)))
                .collect::<Result<_>>()?,
        })
    }

    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("reading", path, e))?;
        Self::parse(&text)
    }
}

/// Who holds a GPU and how hard it works.
#[derive(Debug, Clone, PartialEq)]
pub struct Owner {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub load: LoadProfile,
    /// When the pod was first seen (profiles count from here).
    pub since: Instant,
}

#[derive(Debug)]
struct SimGpu {
    info: GpuInfo,
    locked: Option<u32>,
    power_limit: Option<f64>,
    energy_mj: f64,
    last_update: Instant,
    owner: Option<Owner>,
}

/// One GPU's readings at an instant.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuReading {
    pub info: GpuInfo,
    pub clock_mhz: u32,
    pub power_watts: f64,
    pub energy_mj: u64,
    pub utilization: f64,
    pub tokens_per_second: f64,
    pub owner: Option<Owner>,
}

/// Who decides which container holds which simulated GPU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Assignment {
    /// The agent, from the pods bound to the node (no kubelet serves the
    /// GPUs, as on the test clusters' fake nodes).
    #[default]
    Agent,
    /// The kubelet, through the device plugin; learned from PodResources
    /// ([`SimWorld::set_allocations`]).
    Kubelet,
}

/// How a simulated node is built.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub node: String,
    pub gpus: u32,
    pub model: GpuModel,
    pub driver_version: String,
    pub scenario: Scenario,
    /// Load of a pod holding GPUs without a `climatik.io/sim-load` annotation.
    pub default_load: LoadProfile,
    pub assignment: Assignment,
}

/// The simulated node.
#[derive(Debug)]
pub struct SimWorld {
    config: SimConfig,
    gpus: Vec<SimGpu>,
    assigner: Assigner,
    /// The pods on the node that hold GPUs, as last watched.
    pods: Vec<PodGpus>,
    /// What PodResources last said ([`Assignment::Kubelet`]).
    allocations: Vec<Allocation>,
    first_seen: BTreeMap<String, Instant>,
    started: Instant,
}

impl SimWorld {
    /// A node whose GPUs boot unlocked at their defaults.
    pub fn new(config: SimConfig, now: Instant) -> Result<Self> {
        config
            .model
            .validate()
            .map_err(|e| Error::Sim(e.to_string()))?;
        let supported = config.model.supported_clocks();
        let gpus = (0..config.gpus)
            .map(|index| SimGpu {
                info: GpuInfo {
                    uuid: stable_uuid(&config.node, index),
                    index,
                    model: config.model.name.clone(),
                    pci_bus_id: format!("00000000:{:02X}:00.0", 0x07 + index * 0x10),
                    supported_mhz: supported.clone(),
                    power_limits: Some(PowerLimits {
                        min_watts: (config.model.tdp_watts * 0.3).round(),
                        max_watts: config.model.tdp_watts,
                        default_watts: config.model.tdp_watts,
                    }),
                },
                locked: None,
                power_limit: None,
                energy_mj: 0.0,
                last_update: now,
                owner: None,
            })
            .collect();
        Ok(Self {
            config,
            gpus,
            assigner: Assigner::default(),
            pods: Vec::new(),
            allocations: Vec::new(),
            first_seen: BTreeMap::new(),
            started: now,
        })
    }

    pub fn shared(self) -> SharedWorld {
        Arc::new(Mutex::new(self))
    }

    pub fn node(&self) -> &str {
        &self.config.node
    }

    pub fn driver_version(&self) -> &str {
        &self.config.driver_version
    }

    pub fn infos(&self) -> Vec<GpuInfo> {
        self.gpus.iter().map(|g| g.info.clone()).collect()
    }

    fn index_of(&self, uuid: &str) -> Result<usize> {
        self.gpus
            .iter()
            .position(|g| g.info.uuid == uuid)
            .ok_or_else(|| Error::Unsupported(format!("no GPU {uuid} on this node")))
    }

    /// Replaces the pods on the node and re-derives GPU ownership.
    pub fn set_pods(&mut self, pods: &[PodGpus], now: Instant) {
        self.advance(now);
        self.first_seen
            .retain(|uid, _| pods.iter().any(|p| &p.uid == uid));
        for pod in pods {
            self.first_seen.entry(pod.uid.clone()).or_insert(now);
        }
        self.pods = pods.to_vec();
        self.reassign(now);
    }

    /// Replaces what the kubelet allocated ([`Assignment::Kubelet`]) and
    /// re-derives GPU ownership.
    pub fn set_allocations(&mut self, allocations: &[Allocation], now: Instant) {
        self.advance(now);
        self.allocations = allocations.to_vec();
        self.reassign(now);
    }

    /// GPU index -> claim, by whoever assigns GPUs.
    fn claims(&mut self) -> BTreeMap<u32, Claim> {
        match self.config.assignment {
            Assignment::Agent => {
                let count = u32::try_from(self.gpus.len()).unwrap_or(u32::MAX);
                self.assigner.assign(&self.pods, count).clone()
            }
            // Held only while the watch knows the pod unfinished: one it
            // does not list has finished or is gone, and loads no GPU even
            // if the kubelet still reports its devices.
            Assignment::Kubelet => self
                .allocations
                .iter()
                .filter_map(|a| {
                    let index = self.gpus.iter().position(|g| g.info.uuid == a.uuid)?;
                    let pod = self
                        .pods
                        .iter()
                        .find(|p| p.namespace == a.namespace && p.name == a.pod)?;
                    Some((
                        u32::try_from(index).ok()?,
                        Claim {
                            uid: pod.uid.clone(),
                            namespace: a.namespace.clone(),
                            pod: a.pod.clone(),
                            container: a.container.clone(),
                        },
                    ))
                })
                .collect(),
        }
    }

    fn reassign(&mut self, now: Instant) {
        let claims = self.claims();
        let pods = &self.pods;
        for (index, gpu) in self.gpus.iter_mut().enumerate() {
            let index = u32::try_from(index).unwrap_or(u32::MAX);
            gpu.owner = claims.get(&index).map(|claim| {
                let key = format!("{}/{}", claim.namespace, claim.pod);
                let annotation = pods
                    .iter()
                    .find(|p| p.uid == claim.uid)
                    .and_then(|p| p.load.as_deref());
                let load = match self.config.scenario.pods.get(&key) {
                    Some(profile) => profile.clone(),
                    None => match annotation.map(str::parse::<LoadProfile>) {
                        Some(Ok(profile)) => profile,
                        Some(Err(e)) => {
                            tracing::warn!(pod = %key, error = %e, "ignoring the pod's sim-load annotation");
                            self.config.default_load.clone()
                        }
                        None => self.config.default_load.clone(),
                    },
                };
                Owner {
                    namespace: claim.namespace.clone(),
                    pod: claim.pod.clone(),
                    container: claim.container.clone(),
                    load,
                    since: self.first_seen.get(&claim.uid).copied().unwrap_or(now),
                }
            });
        }
    }

    fn load(&self, index: usize, now: Instant) -> f64 {
        let Some(gpu) = self.gpus.get(index) else {
            return 0.0;
        };
        let salt = crate::gpu::fnv1a64(gpu.info.uuid.as_bytes());
        match &gpu.owner {
            Some(owner) => owner
                .load
                .at(now.saturating_duration_since(owner.since), salt),
            None => self
                .config
                .scenario
                .gpus
                .get(&gpu.info.index)
                .map_or(0.0, |p| {
                    p.at(now.saturating_duration_since(self.started), salt)
                }),
        }
    }

    /// The SM clock the GPU runs at: the locked clock, else the maximum
    /// under load and the minimum when idle; lowered further, step by step,
    /// while the GPU's own power limit would be exceeded.
    fn clock(&self, index: usize, load: f64) -> u32 {
        let Some(gpu) = self.gpus.get(index) else {
            return 0;
        };
        let model = &self.config.model;
        let mut clock = match gpu.locked {
            Some(locked) => locked,
            None if load > 0.01 => model.max_mhz,
            None => model.min_mhz,
        };
        if let Some(limit) = gpu.power_limit {
            let supported = &gpu.info.supported_mhz;
            while model.power_watts(clock, load) > limit {
                match supported.iter().rev().find(|c| **c < clock) {
                    Some(lower) => clock = *lower,
                    None => break,
                }
            }
        }
        clock
    }

    /// Integrates energy up to `now` (at the power of `now`: loads change
    /// at most once a second, readings come about as often).
    fn advance(&mut self, now: Instant) {
        for index in 0..self.gpus.len() {
            let load = self.load(index, now);
            let power = self.config.model.power_watts(self.clock(index, load), load);
            let gpu = &mut self.gpus[index];
            let dt = now.saturating_duration_since(gpu.last_update).as_secs_f64();
            gpu.energy_mj += power * dt * 1000.0;
            gpu.last_update = gpu.last_update.max(now);
        }
    }

    /// Every GPU's readings at `now`.
    pub fn readings(&mut self, now: Instant) -> Vec<GpuReading> {
        self.advance(now);
        (0..self.gpus.len())
            .map(|index| self.reading(index, now))
            .collect()
    }

    fn reading(&self, index: usize, now: Instant) -> GpuReading {
        let load = self.load(index, now);
        let clock = self.clock(index, load);
        let gpu = &self.gpus[index];
        GpuReading {
            info: gpu.info.clone(),
            clock_mhz: clock,
            power_watts: self.config.model.power_watts(clock, load),
            energy_mj: gpu.energy_mj as u64,
            utilization: load,
            tokens_per_second: self.config.model.tokens_per_second(clock, load),
            owner: gpu.owner.clone(),
        }
    }

    /// One GPU's readings at `now`.
    pub fn reading_of(&mut self, uuid: &str, now: Instant) -> Result<GpuReading> {
        let index = self.index_of(uuid)?;
        self.advance(now);
        Ok(self.reading(index, now))
    }

    /// Locks (or with `None` unlocks) a GPU's SM clock.
    pub fn lock(&mut self, uuid: &str, clock: Option<u32>, now: Instant) -> Result<()> {
        let index = self.index_of(uuid)?;
        if let Some(mhz) = clock
            && !self.gpus[index].info.supported_mhz.contains(&mhz)
        {
            return Err(Error::InvalidTarget(format!(
                "{mhz} MHz is not a supported clock of {uuid}"
            )));
        }
        self.advance(now);
        self.gpus[index].locked = clock;
        Ok(())
    }

    /// Sets (or with `None` clears) a GPU's own power limit.
    pub fn limit_power(&mut self, uuid: &str, watts: Option<f64>, now: Instant) -> Result<()> {
        let index = self.index_of(uuid)?;
        self.advance(now);
        self.gpus[index].power_limit = watts;
        Ok(())
    }

    /// The locked clock, if any.
    pub fn locked(&self, uuid: &str) -> Option<u32> {
        self.gpus
            .iter()
            .find(|g| g.info.uuid == uuid)
            .and_then(|g| g.locked)
    }

    /// The power limit set, if any (else the default is in force).
    pub fn power_limit(&self, uuid: &str) -> Option<f64> {
        self.gpus
            .iter()
            .find(|g| g.info.uuid == uuid)
            .and_then(|g| g.power_limit)
    }

    /// Someone other than the agent resets every GPU: clocks unlocked and
    /// power limits back to the default, as `nvidia-smi -rgc -rpl` or a
    /// GPU reset would (the agent is expected to notice and re-apply).
    pub fn reset_all(&mut self, now: Instant) {
        self.advance(now);
        for gpu in &mut self.gpus {
            gpu.locked = None;
            gpu.power_limit = None;
        }
    }

    pub fn model(&self) -> &GpuModel {
        &self.config.model
    }
}

/// Resets every simulated GPU on each SIGUSR1, standing for someone on the
/// node running `nvidia-smi -rgc -rpl` (or a GPU reset) behind the agent's
/// back: the demo and the tests use it to show the agent set them again.
pub async fn reset_on_sigusr1(world: SharedWorld) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut resets = match signal(SignalKind::user_defined1()) {
        Ok(stream) => stream,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGUSR1: no simulated outside resets");
            return;
        }
    };
    while resets.recv().await.is_some() {
        match world.lock() {
            Ok(mut world) => {
                world.reset_all(Instant::now());
                tracing::warn!(
                    "SIGUSR1: every simulated GPU reset (clocks unlocked, default power limit)"
                );
            }
            Err(_) => return,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use super::*;

    pub(crate) fn world(gpus: u32) -> SimWorld {
        SimWorld::new(
            SimConfig {
                node: "sim-node".into(),
                gpus,
                model: GpuModel::h100().expect("model"),
                driver_version: "550.54.15".into(),
                scenario: Scenario::default(),
                default_load: LoadProfile::Constant(1.0),
                assignment: Assignment::Agent,
            },
            Instant::now(),
        )
        .expect("world")
    }

    pub(crate) fn busy_pod(uid: &str, load: Option<&str>) -> PodGpus {
        PodGpus {
            uid: uid.into(),
            namespace: "team".into(),
            name: format!("vllm-{uid}"),
            created: "2025-01-01T00:00:00Z".into(),
            containers: vec![("vllm".into(), 1)],
            load: load.map(str::to_string),
        }
    }

    #[test]
    fn with_the_kubelet_assigning_owners_follow_pod_resources() {
        let mut w = world(3);
        w.config.assignment = Assignment::Kubelet;
        let t0 = Instant::now();
        let uuids: Vec<String> = w.infos().into_iter().map(|i| i.uuid).collect();
        w.set_pods(&[busy_pod("a", Some("0.5"))], t0);
        // Nothing allocated yet: the agent assigns nothing by itself.
        assert!(w.readings(t0).iter().all(|r| r.owner.is_none()));

        let allocation = |uuid: &str, pod: &str| Allocation {
            uuid: uuid.into(),
            namespace: "team".into(),
            pod: pod.into(),
            container: "vllm".into(),
        };
        w.set_allocations(
            &[
                allocation(&uuids[2], "vllm-a"),
                allocation(&uuids[1], "gone"),
            ],
            t0,
        );
        let r = w.readings(t0);
        assert_eq!(r[2].owner.as_ref().map(|o| o.pod.as_str()), Some("vllm-a"));
        assert_eq!(r[2].utilization, 0.5);
        // A pod the watch does not know (finished) holds nothing.
        assert!(r[0].owner.is_none() && r[1].owner.is_none());

        // The pod finishes: its GPU idles although the kubelet still lists it.
        w.set_pods(&[], t0);
        assert!(w.readings(t0)[2].owner.is_none());
    }

    #[test]
    fn idle_gpus_draw_the_idle_floor_at_minimum_clock() {
        let mut w = world(2);
        let r = w.readings(Instant::now());
        assert!(
            r.iter()
                .all(|g| g.power_watts == 70.0 && g.clock_mhz == 345)
        );
        assert!(r.iter().all(|g| g.owner.is_none()));
    }

    /// Locking a lower clock lowers power as the reference says: the ratio
    /// at 990/1980 MHz equals the CSV's at 690/1380 MHz (interpolated
    /// between 630 and 705 MHz).
    #[test]
    fn locking_a_lower_clock_lowers_power_as_the_reference_data_says() {
        let mut w = world(1);
        let t0 = Instant::now();
        w.set_pods(&[busy_pod("a", Some("1.0"))], t0);
        let uuid = w.infos()[0].uuid.clone();
        let full = w.reading_of(&uuid, t0).expect("reading");
        assert_eq!(full.clock_mhz, 1980);
        assert!((full.power_watts - 700.0).abs() < 1e-6);
        assert_eq!(full.owner.as_ref().map(|o| o.pod.as_str()), Some("vllm-a"));

        w.lock(&uuid, Some(990), t0).expect("lock");
        let capped = w.reading_of(&uuid, t0).expect("reading");
        assert_eq!(capped.clock_mhz, 990);
        // Reference: 630 MHz 43.50 W, 705 MHz 46.00 W; 690 MHz interpolates
        // to 45.50 W, against 67.73 W at 1380 MHz.
        let expected = 45.50 / 67.73;
        let ratio = capped.power_watts / full.power_watts;
        assert!((ratio - expected).abs() < 0.01, "{ratio} vs {expected}");
        assert!(capped.tokens_per_second < full.tokens_per_second);

        assert!(w.lock(&uuid, Some(1000), t0).is_err());
        w.lock(&uuid, None, t0).expect("unlock");
        assert_eq!(w.reading_of(&uuid, t0).expect("reading").clock_mhz, 1980);
    }

    #[test]
    fn energy_integrates_power_over_time() {
        let mut w = world(1);
        let t0 = Instant::now();
        w.set_pods(&[busy_pod("a", None)], t0);
        let uuid = w.infos()[0].uuid.clone();
        let e0 = w.reading_of(&uuid, t0).expect("reading").energy_mj;
        let e1 = w
            .reading_of(&uuid, t0 + Duration::from_secs(2))
            .expect("reading")
            .energy_mj;
        assert_eq!(e1 - e0, 1_400_000); // 700 W for 2 s, in mJ
    }

    #[test]
    fn power_limit_throttles_the_clock_like_the_gpu_would() {
        let mut w = world(1);
        let t0 = Instant::now();
        w.set_pods(&[busy_pod("a", None)], t0);
        let uuid = w.infos()[0].uuid.clone();
        w.limit_power(&uuid, Some(500.0), t0).expect("limit");
        let r = w.reading_of(&uuid, t0).expect("reading");
        assert!(r.power_watts <= 500.0 && r.clock_mhz < 1980, "{r:?}");
    }

    #[test]
    fn scenario_overrides_annotations_and_loads_free_gpus() {
        let scenario = Scenario::parse("pods:\n  team/vllm-a: \"0\"\ngpus:\n  1: \"0.5\"\n")
            .expect("scenario");
        let mut w = world(2);
        w.config.scenario = scenario;
        let t0 = Instant::now();
        w.set_pods(&[busy_pod("a", Some("1.0"))], t0);
        let r = w.readings(t0);
        assert_eq!(r[0].utilization, 0.0);
        assert_eq!(r[1].utilization, 0.5);
        assert!(Scenario::parse("pods: {a: nonsense}").is_err());
        assert!(Scenario::parse("podz: {}").is_err());
    }
}
