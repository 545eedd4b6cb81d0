//! Turns the merged targets of a NodeFrequencies into device settings and
//! per-device status. Synchronous and free of API-server concerns, so every
//! safety rule is tested against the fake sysfs and simulated GPUs:
//! only devices named in the spec are touched, every write is bounded by the
//! hardware's limits, and anything no longer wanted is put back.

use std::{collections::BTreeMap, sync::Arc};

use climatik_api::{
    CpuFrequencyStatus, DeviceState, GpuFrequencyStatus, GpuInventory, NodeFrequenciesSpec,
};
use k8s_openapi::jiff::Timestamp;

use crate::{
    cpu::{CpuApplied, CpuBackend},
    error::Error,
    fastloop::BudgetLoop,
    gpu::{GpuBackend, snap_clock},
    merge::{Desired, Want, merge},
    metrics::{CpuLabels, GpuLabels, Metrics},
};

/// What the agent has done to one GPU.
#[derive(Debug, Clone, Default)]
struct GpuSet {
    /// Clock locked, or `None` when the last write failed (state unknown).
    locked: Option<u32>,
    /// Power limit set in power-limit mode.
    power_limit: Option<f64>,
}

/// The per-device results of one pass.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub gpus: Vec<GpuFrequencyStatus>,
    pub cpus: Vec<CpuFrequencyStatus>,
    /// Entries that could not be understood.
    pub invalid: Vec<String>,
}

impl Report {
    /// Whether any device failed.
    pub fn failures(&self) -> usize {
        self.gpus
            .iter()
            .filter(|g| g.state == DeviceState::Failed)
            .count()
            + self
                .cpus
                .iter()
                .filter(|c| c.state == DeviceState::Failed)
                .count()
    }
}

/// Applies targets through the configured backends.
pub struct Actuator {
    gpu: Option<Box<dyn GpuBackend>>,
    cpu: Option<Box<dyn CpuBackend>>,
    gpus: BTreeMap<String, GpuSet>,
    /// CPU -> (requested MHz, what was applied).
    cpus: BTreeMap<u32, (u32, CpuApplied)>,
    control: BudgetLoop,
    power_limit_mode: bool,
    metrics: Arc<Metrics>,
    /// Last error logged per device, so a persistent failure logs once.
    last_errors: BTreeMap<String, String>,
}

fn mhz(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

fn join(parts: impl IntoIterator<Item = String>) -> String {
    parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

impl Actuator {
    pub fn new(
        gpu: Option<Box<dyn GpuBackend>>,
        cpu: Option<Box<dyn CpuBackend>>,
        power_limit_mode: bool,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            gpu,
            cpu,
            gpus: BTreeMap::new(),
            cpus: BTreeMap::new(),
            control: BudgetLoop::default(),
            power_limit_mode,
            metrics,
            last_errors: BTreeMap::new(),
        }
    }

    /// The GPU backend, for direct reads (the `nvml-probe` check).
    pub fn gpu_backend(&mut self) -> Option<&mut (dyn GpuBackend + 'static)> {
        self.gpu.as_deref_mut()
    }

    /// `sim`, `nvml,cpufreq`, …: the backends in use.
    pub fn backend_name(&self) -> String {
        let names: Vec<&str> = [
            self.gpu.as_ref().map(|g| g.name()),
            self.cpu.as_ref().map(|c| c.name()),
        ]
        .into_iter()
        .flatten()
        .collect();
        let mut names = names;
        names.dedup();
        names.join(",")
    }

    /// The node's GPUs for `status.gpus`.
    pub fn inventory(&self) -> Vec<GpuInventory> {
        self.gpu
            .as_ref()
            .map(|g| g.devices().iter().map(|d| d.inventory()).collect())
            .unwrap_or_default()
    }

    fn note_error(&mut self, key: &str, kind: &str, error: &Error) {
        self.metrics.error(kind, error);
        let text = error.to_string();
        if self.last_errors.get(key) != Some(&text) {
            tracing::warn!(device = key, error = %text, "actuation failed");
            self.last_errors.insert(key.to_string(), text);
        }
    }

    fn note_ok(&mut self, key: &str) {
        self.last_errors.remove(key);
    }

    /// Restores what a killed predecessor left changed. Returns how many
    /// devices were restored.
    pub fn restore_leftovers(&mut self) -> usize {
        let mut restored = 0;
        if let Some(gpu) = self.gpu.as_mut() {
            match gpu.restore_leftovers() {
                Ok(list) => {
                    for uuid in &list {
                        tracing::info!(gpu = %uuid, "reset a GPU a previous agent left locked");
                    }
                    restored += list.len();
                }
                Err(e) => self.metrics.error("gpu", &e),
            }
        }
        if let Some(cpu) = self.cpu.as_mut() {
            match cpu.restore_leftovers() {
                Ok(list) => {
                    for n in &list {
                        tracing::info!(cpu = n, "restored a CPU a previous agent left capped");
                    }
                    restored += list.len();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not restore CPUs a previous agent left capped");
                    self.metrics.error("cpu", &e);
                }
            }
        }
        self.metrics.restores.inc_by(restored as u64);
        restored
    }

    /// Puts every device this agent changed back to its default (shutdown,
    /// or the NodeFrequencies is gone). Returns the number of failures.
    pub fn restore_all(&mut self) -> usize {
        self.reconcile(None, Timestamp::now(), false).failures()
    }

    /// One pass: merge `spec` at `now`, set what changed, put back what is
    /// no longer wanted, and report per device. `step_budget` runs one step
    /// of the power-budget loop (once per fast-loop tick).
    pub fn reconcile(
        &mut self,
        spec: Option<&NodeFrequenciesSpec>,
        now: Timestamp,
        step_budget: bool,
    ) -> Report {
        self.metrics.reconciles.inc();
        let desired = spec.map(|s| merge(s, now)).unwrap_or_default();
        let mut report = Report {
            invalid: desired.invalid.clone(),
            ..Report::default()
        };
        self.reconcile_gpus(&desired, step_budget, &mut report);
        self.reconcile_cpus(&desired, &mut report);
        report
    }

    fn reconcile_gpus(&mut self, desired: &Desired, step_budget: bool, report: &mut Report) {
        // Put back GPUs no longer wanted first, so a failure there never
        // blocks the rest.
        let mut restored_now = BTreeMap::new();
        let stale: Vec<String> = self
            .gpus
            .keys()
            .cloned()
            .chain(self.gpu.as_ref().map(|g| g.touched()).unwrap_or_default())
            .filter(|uuid| !desired.gpus.contains_key(uuid))
            .collect();
        for uuid in stale {
            let Some(backend) = self.gpu.as_mut() else {
                break;
            };
            match backend.reset(&uuid) {
                Ok(()) => {
                    if self.gpus.remove(&uuid).is_some() {
                        tracing::info!(gpu = %uuid, "restored the GPU's default clocks");
                        self.metrics.restores.inc();
                    }
                    let labels = GpuLabels { gpu: uuid.clone() };
                    self.metrics.gpu_locked_mhz.remove(&labels);
                    self.metrics.gpu_budget_watts.remove(&labels);
                    self.note_ok(&uuid);
                    restored_now.insert(uuid, None);
                }
                Err(e) => {
                    self.note_error(&uuid, "gpu", &e);
                    restored_now.insert(uuid, Some(e.to_string()));
                }
            }
        }

        for (uuid, want) in &desired.gpus {
            let status = self.apply_gpu(uuid, want, step_budget);
            report.gpus.push(status);
        }

        for uuid in &desired.inactive_gpus {
            let present = self.gpu.as_ref().is_some_and(|g| g.device(uuid).is_some());
            let current = if present {
                self.gpu
                    .as_mut()
                    .and_then(|g| g.current_clock(uuid).ok())
                    .map(mhz)
            } else {
                None
            };
            let (state, message) = match restored_now.get(uuid) {
                Some(Some(error)) => (
                    DeviceState::Failed,
                    format!("no live entry, but restoring the defaults failed: {error}"),
                ),
                _ if !present => (
                    DeviceState::Unsupported,
                    format!("no live entry; no GPU {uuid} on this node"),
                ),
                _ => (
                    DeviceState::Applied,
                    "no live entry (expired or invalid); defaults restored".to_string(),
                ),
            };
            report.gpus.push(GpuFrequencyStatus {
                gpu_id: uuid.clone(),
                current_frequency: current,
                target_frequency: None,
                power_budget_watts: None,
                power_watts: None,
                state,
                message,
            });
        }
    }

    fn apply_gpu(&mut self, uuid: &str, want: &Want, step_budget: bool) -> GpuFrequencyStatus {
        let mut status = GpuFrequencyStatus {
            gpu_id: uuid.to_string(),
            current_frequency: None,
            target_frequency: None,
            power_budget_watts: want.budget_watts,
            power_watts: None,
            state: DeviceState::Pending,
            message: String::new(),
        };
        let Some(backend) = self.gpu.as_mut() else {
            status.state = DeviceState::Unsupported;
            status.message = "this agent runs without a GPU backend".into();
            return status;
        };
        let Some(info) = backend.device(uuid).cloned() else {
            status.state = DeviceState::Unsupported;
            status.message = format!("no GPU {uuid} on this node");
            return status;
        };
        let snapped = match snap_clock(i64::from(want.target_mhz), &info.supported_mhz) {
            Ok(s) => s,
            Err(e) => {
                status.state = if e.is_unsupported() {
                    DeviceState::Unsupported
                } else {
                    DeviceState::Failed
                };
                status.message = e.to_string();
                return status;
            }
        };
        status.target_frequency = Some(mhz(snapped.mhz));
        let previous = self.gpus.get(uuid).cloned().unwrap_or_default();
        let mut errors: Vec<Error> = Vec::new();
        let mut notes: Vec<String> = snapped.note.into_iter().collect();

        // The clock: the snapped target, or with a budget, one loop step
        // from the clock in force, never above the target.
        let mut clock = snapped.mhz;
        let mut power = None;
        if let Some(budget) = want.budget_watts {
            let from = previous.locked.unwrap_or(snapped.mhz).min(snapped.mhz);
            clock = from;
            if step_budget {
                match backend.power_watts(uuid) {
                    Ok(watts) => {
                        power = Some(watts);
                        clock = self.control.next_clock(
                            from,
                            watts,
                            budget,
                            snapped.mhz,
                            &info.supported_mhz,
                        );
                    }
                    Err(e) => errors.push(e),
                }
            }
        }

        // Leaving power-limit mode for this GPU: reset first, then relock.
        let wants_limit = want.budget_watts.filter(|_| self.power_limit_mode);
        let mut locked = previous.locked;
        let mut power_limit = previous.power_limit;
        if power_limit.is_some() && wants_limit.is_none() {
            match backend.reset(uuid) {
                Ok(()) => {
                    power_limit = None;
                    locked = None;
                }
                Err(e) => errors.push(e),
            }
        }
        if locked != Some(clock) {
            match backend.set_locked_clock(uuid, clock) {
                Ok(()) => locked = Some(clock),
                Err(e) => {
                    locked = None;
                    errors.push(e);
                }
            }
        }
        if let Some(budget) = wants_limit
            && power_limit != Some(budget)
        {
            match backend.set_power_limit(uuid, budget) {
                Ok(set) => {
                    power_limit = Some(budget);
                    if (set - budget).abs() > 0.5 {
                        notes.push(format!("power limit clamped {budget:.0} -> {set:.0} W"));
                    }
                }
                Err(e) => errors.push(e),
            }
        }

        status.current_frequency = backend.current_clock(uuid).ok().map(mhz);
        if power.is_none() {
            power = backend.power_watts(uuid).ok();
        }
        status.power_watts = power.map(|p| (p * 10.0).round() / 10.0);
        self.gpus.insert(
            uuid.to_string(),
            GpuSet {
                locked,
                power_limit,
            },
        );

        let labels = GpuLabels {
            gpu: uuid.to_string(),
        };
        match locked {
            Some(c) => {
                self.metrics
                    .gpu_locked_mhz
                    .get_or_create(&labels)
                    .set(i64::from(c));
            }
            None => {
                self.metrics.gpu_locked_mhz.remove(&labels);
            }
        }
        match want.budget_watts {
            Some(b) => {
                self.metrics.gpu_budget_watts.get_or_create(&labels).set(b);
            }
            None => {
                self.metrics.gpu_budget_watts.remove(&labels);
            }
        }

        if let Some(budget) = want.budget_watts {
            let at = power.map_or(String::new(), |p| format!(" at {p:.0} W"));
            notes.push(format!("holding {budget:.0} W: locked {clock} MHz{at}"));
        }
        notes.extend(want.notes.iter().cloned());
        if let Some(first) = errors.first() {
            let unsupported = errors.iter().all(Error::is_unsupported);
            status.state = if unsupported {
                DeviceState::Unsupported
            } else {
                DeviceState::Failed
            };
            let text = errors.iter().map(Error::to_string).collect::<Vec<_>>();
            notes.insert(0, text.join("; "));
            for e in &errors {
                self.metrics.error("gpu", e);
            }
            let first = first.to_string();
            if self.last_errors.get(uuid) != Some(&first) {
                tracing::warn!(gpu = uuid, error = %first, "actuation failed");
                self.last_errors.insert(uuid.to_string(), first);
            }
        } else {
            self.note_ok(uuid);
            let above = want
                .budget_watts
                .zip(power)
                .is_some_and(|(b, p)| p > b && Some(clock) != info.min_mhz());
            status.state = if above {
                DeviceState::Pending
            } else {
                DeviceState::Applied
            };
        }
        status.message = join(notes);
        status
    }

    fn reconcile_cpus(&mut self, desired: &Desired, report: &mut Report) {
        let stale: Vec<u32> = self
            .cpu
            .as_ref()
            .map(|c| c.touched())
            .unwrap_or_default()
            .into_iter()
            .chain(self.cpus.keys().copied())
            .filter(|cpu| !desired.cpus.contains_key(cpu))
            .collect();
        let mut restored_now = BTreeMap::new();
        for cpu in stale {
            let Some(backend) = self.cpu.as_mut() else {
                break;
            };
            let key = format!("cpu{cpu}");
            match backend.restore(cpu) {
                Ok(()) => {
                    if self.cpus.remove(&cpu).is_some() {
                        tracing::info!(cpu, "restored the CPU's frequency ceiling");
                        self.metrics.restores.inc();
                    }
                    self.metrics.cpu_max_mhz.remove(&CpuLabels {
                        cpu: cpu.to_string(),
                    });
                    self.note_ok(&key);
                    restored_now.insert(cpu, None);
                }
                Err(e) => {
                    self.note_error(&key, "cpu", &e);
                    restored_now.insert(cpu, Some(e.to_string()));
                }
            }
        }

        for (&cpu, want) in &desired.cpus {
            let status = self.apply_cpu(cpu, want);
            report.cpus.push(status);
        }

        for &cpu in &desired.inactive_cpus {
            let (state, message) = match restored_now.get(&cpu) {
                Some(Some(error)) => (
                    DeviceState::Failed,
                    format!("no live entry, but restoring the default failed: {error}"),
                ),
                _ => (
                    DeviceState::Applied,
                    "no live entry (expired or invalid); default restored".to_string(),
                ),
            };
            report.cpus.push(CpuFrequencyStatus {
                cpu_id: i32::try_from(cpu).unwrap_or(i32::MAX),
                current_frequency: None,
                target_frequency: None,
                state,
                message,
            });
        }
    }

    fn apply_cpu(&mut self, cpu: u32, want: &Want) -> CpuFrequencyStatus {
        let mut status = CpuFrequencyStatus {
            cpu_id: i32::try_from(cpu).unwrap_or(i32::MAX),
            current_frequency: None,
            target_frequency: None,
            state: DeviceState::Pending,
            message: String::new(),
        };
        let key = format!("cpu{cpu}");
        let Some(backend) = self.cpu.as_mut() else {
            status.state = DeviceState::Unsupported;
            status.message = "this agent runs without a CPU backend".into();
            return status;
        };
        let result = match self.cpus.get(&cpu) {
            Some((requested, applied)) if *requested == want.target_mhz => Ok(applied.clone()),
            _ => backend.set_max_frequency(cpu, want.target_mhz),
        };
        match result {
            Ok(applied) => {
                self.note_ok(&key);
                self.metrics
                    .cpu_max_mhz
                    .get_or_create(&CpuLabels {
                        cpu: cpu.to_string(),
                    })
                    .set(i64::from(applied.target_mhz));
                status.current_frequency = Some(mhz(applied.current_mhz));
                status.target_frequency = Some(mhz(applied.target_mhz));
                status.state = DeviceState::Applied;
                status.message = join(applied.note.clone().into_iter().chain(want.notes.clone()));
                self.cpus.insert(cpu, (want.target_mhz, applied));
            }
            Err(e) => {
                self.note_error(&key, "cpu", &e);
                status.state = if e.is_unsupported() {
                    DeviceState::Unsupported
                } else {
                    DeviceState::Failed
                };
                status.message = e.to_string();
                self.cpus.remove(&cpu);
            }
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use climatik_api::{CpuFrequency, GpuFrequency};
    use climatik_test_support::fake_sysfs::{FakeCpu, FakeDriver, FakeSysfs};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::{
        cpu::cpufreq::Cpufreq,
        gpu::sim::SimGpus,
        sim::{
            SharedWorld,
            tests::{busy_pod, world},
        },
        state::StateFile,
    };

    struct Rig {
        actuator: Actuator,
        world: SharedWorld,
        sysfs: FakeSysfs,
        uuids: Vec<String>,
        _dirs: (tempfile::TempDir, tempfile::TempDir),
    }

    fn rig(cpus: Vec<FakeCpu>) -> Rig {
        let root = tempfile::tempdir().expect("tempdir");
        let state = tempfile::tempdir().expect("tempdir");
        let sysfs = FakeSysfs::create(root.path(), &FakeDriver::IntelPstate, &cpus).expect("sysfs");
        let mut w = world(2);
        w.set_pods(&[busy_pod("a", Some("1.0"))], Instant::now());
        let uuids = w.infos().into_iter().map(|i| i.uuid).collect();
        let world = w.shared();
        let cpu = Cpufreq::new(
            sysfs.root(),
            StateFile::for_backend(state.path(), "cpufreq", "n"),
        )
        .expect("cpufreq");
        let gpu = SimGpus::new(world.clone()).expect("sim");
        Rig {
            actuator: Actuator::new(
                Some(Box::new(gpu)),
                Some(Box::new(cpu)),
                false,
                Arc::new(Metrics::default()),
            ),
            world,
            sysfs,
            uuids,
            _dirs: (root, state),
        }
    }

    fn locked(rig: &Rig, gpu: usize) -> Option<u32> {
        rig.world.lock().expect("world").locked(&rig.uuids[gpu])
    }

    fn power(rig: &Rig, gpu: usize) -> f64 {
        rig.world
            .lock()
            .expect("world")
            .reading_of(&rig.uuids[gpu], Instant::now())
            .expect("reading")
            .power_watts
    }

    fn gpu_entry(
        uuid: &str,
        target: i32,
        budget: Option<f64>,
        expires: Option<Timestamp>,
    ) -> GpuFrequency {
        GpuFrequency {
            gpu_id: uuid.into(),
            target_frequency: target,
            power_budget_watts: budget,
            policy: "ns/p".into(),
            expires_at: expires.map(Time),
        }
    }

    fn cpu_entry(cpu: i32, target: i32, expires: Option<Timestamp>) -> CpuFrequency {
        CpuFrequency {
            cpu_id: cpu,
            target_frequency: target,
            policy: "ns/p".into(),
            expires_at: expires.map(Time),
        }
    }

    fn spec(gpus: Vec<GpuFrequency>, cpus: Vec<CpuFrequency>) -> NodeFrequenciesSpec {
        NodeFrequenciesSpec {
            node_name: "n".into(),
            gpu_frequencies: gpus,
            cpu_frequencies: cpus,
        }
    }

    #[test]
    fn applies_clamped_targets_and_touches_only_named_devices() {
        let mut rig = rig(FakeCpu::uniform(4));
        let uuid = rig.uuids[0].clone();
        let s = spec(
            vec![gpu_entry(&uuid, 250, None, None)],
            vec![cpu_entry(1, 2000, None)],
        );
        let report = rig.actuator.reconcile(Some(&s), Timestamp::now(), true);

        let gpu = &report.gpus[0];
        assert_eq!(gpu.state, DeviceState::Applied, "{gpu:?}");
        assert_eq!(gpu.target_frequency, Some(345));
        assert_eq!(gpu.current_frequency, Some(345));
        assert_eq!(
            gpu.message,
            "clamped 250 -> 345 MHz, below the supported minimum"
        );
        assert_eq!(locked(&rig, 0), Some(345));
        assert_eq!(locked(&rig, 1), None);

        let cpu = &report.cpus[0];
        assert_eq!((cpu.cpu_id, cpu.state), (1, DeviceState::Applied));
        assert_eq!(cpu.current_frequency, Some(2000));
        assert_eq!(rig.sysfs.scaling_max_khz(1).expect("read"), 2_000_000);
        for other in [0, 2, 3] {
            assert_eq!(rig.sysfs.scaling_max_khz(other).expect("read"), 4_800_000);
        }
    }

    #[test]
    fn removed_entries_and_a_deleted_object_restore_defaults() {
        let mut rig = rig(FakeCpu::uniform(2));
        let (a, b) = (rig.uuids[0].clone(), rig.uuids[1].clone());
        let both = spec(
            vec![
                gpu_entry(&a, 990, None, None),
                gpu_entry(&b, 1200, None, None),
            ],
            vec![cpu_entry(0, 1000, None), cpu_entry(1, 1000, None)],
        );
        rig.actuator.reconcile(Some(&both), Timestamp::now(), true);
        assert_eq!((locked(&rig, 0), locked(&rig, 1)), (Some(990), Some(1200)));

        let one = spec(
            vec![gpu_entry(&b, 1200, None, None)],
            vec![cpu_entry(1, 1000, None)],
        );
        rig.actuator.reconcile(Some(&one), Timestamp::now(), true);
        assert_eq!((locked(&rig, 0), locked(&rig, 1)), (None, Some(1200)));
        assert_eq!(rig.sysfs.scaling_max_khz(0).expect("read"), 4_800_000);
        assert_eq!(rig.sysfs.scaling_max_khz(1).expect("read"), 1_000_000);

        rig.actuator.reconcile(None, Timestamp::now(), true);
        assert_eq!(locked(&rig, 1), None);
        assert_eq!(rig.sysfs.scaling_max_khz(1).expect("read"), 4_800_000);
    }

    #[test]
    fn expiry_restores_defaults_without_a_spec_change() {
        let mut rig = rig(FakeCpu::uniform(2));
        let uuid = rig.uuids[0].clone();
        let t0 = Timestamp::now();
        let expires = Some(t0 + std::time::Duration::from_secs(10));
        let s = spec(
            vec![gpu_entry(&uuid, 990, None, expires)],
            vec![cpu_entry(1, 1200, expires)],
        );
        rig.actuator.reconcile(Some(&s), t0, true);
        assert_eq!(locked(&rig, 0), Some(990));

        let later = t0 + std::time::Duration::from_secs(11);
        let report = rig.actuator.reconcile(Some(&s), later, true);
        assert_eq!(locked(&rig, 0), None);
        assert_eq!(rig.sysfs.scaling_max_khz(1).expect("read"), 4_800_000);
        assert_eq!(report.gpus[0].state, DeviceState::Applied);
        assert!(
            report.gpus[0].message.contains("defaults restored"),
            "{:?}",
            report.gpus[0]
        );
        assert!(report.cpus[0].message.contains("default restored"));
    }

    #[test]
    fn shutdown_restores_everything_changed() {
        let mut rig = rig(FakeCpu::uniform(2));
        let uuid = rig.uuids[1].clone();
        let s = spec(
            vec![gpu_entry(&uuid, 700, None, None)],
            vec![cpu_entry(0, 900, None)],
        );
        rig.actuator.reconcile(Some(&s), Timestamp::now(), true);
        assert_eq!(rig.actuator.restore_all(), 0);
        assert_eq!(locked(&rig, 1), None);
        assert_eq!(rig.sysfs.scaling_max_khz(0).expect("read"), 4_800_000);
    }

    #[test]
    fn a_power_budget_is_held_below_the_target_clock() {
        let mut rig = rig(FakeCpu::uniform(1));
        let uuid = rig.uuids[0].clone();
        let s = spec(vec![gpu_entry(&uuid, 1800, Some(450.0), None)], vec![]);
        let mut last = Report::default();
        for _ in 0..15 {
            last = rig.actuator.reconcile(Some(&s), Timestamp::now(), true);
            assert!(locked(&rig, 0).is_some_and(|c| c <= 1800));
        }
        let p = power(&rig, 0);
        assert!((450.0 * 0.95..=450.0).contains(&p), "power {p}");
        let gpu = &last.gpus[0];
        assert_eq!(gpu.state, DeviceState::Applied, "{gpu:?}");
        assert_eq!(gpu.target_frequency, Some(1800));
        assert_eq!(gpu.power_budget_watts, Some(450.0));
        assert!(gpu.message.starts_with("holding 450 W"), "{gpu:?}");

        // Dropping the budget goes back to the plain target.
        let plain = spec(vec![gpu_entry(&uuid, 1800, None, None)], vec![]);
        rig.actuator.reconcile(Some(&plain), Timestamp::now(), true);
        assert_eq!(locked(&rig, 0), Some(1800));
    }

    #[test]
    fn unknown_devices_and_refusals_are_reported_not_hidden() {
        let mut cpus = FakeCpu::uniform(3);
        cpus[1].online = false;
        cpus[2].read_only_max = true;
        let mut rig = rig(cpus);
        let s = spec(
            vec![gpu_entry(
                "GPU-00000000-0000-0000-0000-000000000000",
                990,
                None,
                None,
            )],
            vec![
                cpu_entry(1, 1000, None),
                cpu_entry(2, 1000, None),
                cpu_entry(7, 1000, None),
            ],
        );
        let report = rig.actuator.reconcile(Some(&s), Timestamp::now(), true);
        assert_eq!(report.gpus[0].state, DeviceState::Unsupported);
        assert!(report.gpus[0].message.contains("no GPU"));
        let states: Vec<_> = report.cpus.iter().map(|c| (c.cpu_id, c.state)).collect();
        assert_eq!(
            states,
            vec![
                (1, DeviceState::Unsupported),
                (2, DeviceState::Failed),
                (7, DeviceState::Unsupported)
            ]
        );
        assert!(report.cpus[1].message.contains("read-only"));
        assert_eq!(report.failures(), 1);
        assert_eq!(locked(&rig, 0), None);
        assert_eq!(locked(&rig, 1), None);

        let mut bare = Actuator::new(None, None, false, Arc::new(Metrics::default()));
        let report = bare.reconcile(Some(&s), Timestamp::now(), true);
        assert!(
            report
                .gpus
                .iter()
                .all(|g| g.state == DeviceState::Unsupported)
        );
        assert!(
            report
                .cpus
                .iter()
                .all(|c| c.state == DeviceState::Unsupported)
        );
    }
}
