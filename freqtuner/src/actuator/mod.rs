//! Turns the merged targets of a NodeFrequencies into device settings and
//! per-device status. Synchronous and free of API-server concerns, so every
//! safety rule is tested against the fake sysfs and simulated GPUs:
//! only devices named in the spec are touched, every write is bounded by the
//! hardware's limits, and anything no longer wanted is put back.
//!
//! A pass is split three ways: [`plan`] decides what to write from the
//! wish, the device and what is in force (pure, property-tested);
//! [`execute`] makes those writes through the backends; [`report`] turns
//! the outcome into status text, gauges and de-duplicated logs. This module
//! only sequences them and keeps what is in force between passes. Budget
//! groups get their GPUs' budgets for the pass from [`groups`], which
//! re-splits each group's total by the readings of the pass before.

mod execute;
mod groups;
mod plan;
mod report;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use climatik_api::{
    CpuFrequencyStatus, DeviceState, GpuFrequencyStatus, GpuInventory, NodeFrequenciesSpec,
    NodeFrequenciesSummary,
};
use climatik_sim_gpu::resplit;
use k8s_openapi::jiff::Timestamp;

use crate::{
    cpu::{CpuApplied, CpuBackend},
    expiry::{Device, EntryKey, Lifetimes},
    fastloop::BudgetLoop,
    gpu::GpuBackend,
    hold::HoldRecord,
    merge::{Desired, Want, merge},
    metrics::Metrics,
};

pub use self::report::Notice;
use self::{
    plan::{CpuPlan, GpuSet},
    report::Reporter,
};

/// The per-device results of one pass.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub gpus: Vec<GpuFrequencyStatus>,
    pub cpus: Vec<CpuFrequencyStatus>,
    /// Entries that could not be understood.
    pub invalid: Vec<String>,
    /// GPU entries in the spec, live or not.
    pub gpu_entries: usize,
    /// Device failures that are news in this pass (first seen or changed).
    pub notices: Vec<Notice>,
}

impl Report {
    /// The counts `kubectl get nodefrequencies` shows.
    pub fn summary(&self) -> NodeFrequenciesSummary {
        let states = self
            .gpus
            .iter()
            .map(|g| (g.state, g.target_frequency))
            .chain(self.cpus.iter().map(|c| (c.state, c.target_frequency)));
        let (mut applied, mut failed) = (0, 0);
        for (state, target) in states {
            match state {
                DeviceState::Applied if target.is_some() => applied += 1,
                DeviceState::Failed => failed += 1,
                _ => {}
            }
        }
        let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
        NodeFrequenciesSummary {
            gpu_entries: count(self.gpu_entries),
            applied: count(applied),
            failed: count(failed),
        }
    }

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

/// Applies targets through the configured backends: each pass plans
/// ([`plan`]), carries the plan out ([`execute`]) and reports ([`report`]).
pub struct Actuator {
    gpu: Option<Box<dyn GpuBackend>>,
    cpu: Option<Box<dyn CpuBackend>>,
    gpus: BTreeMap<String, GpuSet>,
    /// CPU -> (requested MHz, what was applied).
    cpus: BTreeMap<u32, (u32, CpuApplied)>,
    control: BudgetLoop,
    power_limit_mode: bool,
    reporter: Reporter,
    /// When entries beyond the lifetime cap were first seen.
    lifetimes: Lifetimes,
    /// Until when the settings in force are wanted, for a successor.
    hold: Option<HoldRecord>,
    /// The entries live in the last pass, to tell an expiry (live then,
    /// lapsed now) from an entry that was already over when first read.
    live: BTreeSet<EntryKey>,
    /// The last reading of each grouped GPU, its demand for the next split.
    seen: BTreeMap<String, resplit::Reading>,
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
            reporter: Reporter::new(metrics),
            lifetimes: Lifetimes::default(),
            hold: None,
            live: BTreeSet::new(),
            seen: BTreeMap::new(),
        }
    }

    /// Keeps `hold` current, so an agent that follows a killed one knows
    /// how long it may leave the devices as this one set them.
    pub fn with_hold(mut self, hold: HoldRecord) -> Self {
        self.hold = Some(hold);
        self
    }

    /// Until when the settings a killed predecessor left may be kept while
    /// this agent has not yet read its entries: the time the predecessor
    /// recorded, if it is still ahead and anything was left changed.
    /// `None`: restore them now.
    pub fn leftovers_held_until(&self, now: Timestamp) -> Option<Timestamp> {
        let until = self.hold.as_ref()?.until(now)?;
        let left = self.gpu.as_ref().is_some_and(|g| !g.touched().is_empty())
            || self.cpu.as_ref().is_some_and(|c| !c.touched().is_empty());
        left.then_some(until)
    }

    /// Caps every entry's lifetime at `max_ttl` after it was first seen
    /// (default [`crate::expiry::DEFAULT_MAX_ENTRY_TTL`]).
    pub fn with_max_entry_ttl(mut self, max_ttl: std::time::Duration) -> Self {
        self.lifetimes = Lifetimes::new(max_ttl);
        self
    }

    /// Until when `keptByLease` entries count ([`crate::keepalive`]);
    /// takes effect from the next pass.
    pub fn keep_alive_until(&mut self, until: Option<Timestamp>) {
        self.lifetimes.keep_alive_until(until);
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

    /// Restores what a killed predecessor left changed. Returns how many
    /// devices were restored.
    pub fn restore_leftovers(&mut self) -> usize {
        let metrics = &self.reporter.metrics;
        let mut restored = 0;
        if let Some(gpu) = self.gpu.as_mut() {
            match gpu.restore_leftovers() {
                Ok(list) => {
                    for uuid in &list {
                        tracing::info!(gpu = %uuid, "reset a GPU a previous agent left locked");
                    }
                    restored += list.len();
                }
                Err(e) => metrics.error("gpu", &e),
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
                    metrics.error("cpu", &e);
                }
            }
        }
        metrics.restores.inc_by(restored as u64);
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
        self.reporter.metrics.reconciles.inc();
        let desired = spec
            .map(|s| merge(s, now, &mut self.lifetimes))
            .unwrap_or_default();
        self.count_expired(&desired);
        // Before any device is set: a successor must never find a record
        // longer than the entries behind the settings it finds.
        self.record_hold(&desired, now);
        let mut report = Report {
            invalid: desired.invalid.clone(),
            gpu_entries: spec.map_or(0, |s| s.gpu_frequencies.len()),
            ..Report::default()
        };
        self.reconcile_gpus(&desired, step_budget, &mut report);
        self.reconcile_cpus(&desired, &mut report);
        report.notices = self.reporter.finish_pass();
        report
    }

    /// Counts the entries live in the last pass that lapsed in this one
    /// while still in the spec: their writer stopped renewing them. An
    /// entry removed from the spec, or a deleted object, is no expiry.
    fn count_expired(&mut self, desired: &Desired) {
        let (mut gpus, mut cpus) = (0, 0);
        for (device, _) in self.live.intersection(&desired.lapsed) {
            match device {
                Device::Gpu(_) => gpus += 1,
                Device::Cpu(_) => cpus += 1,
            }
        }
        let metrics = &self.reporter.metrics;
        for (kind, n) in [("gpu", gpus), ("cpu", cpus)] {
            if n > 0 {
                metrics.expired(kind, n);
            }
        }
        self.live.clone_from(&desired.live);
    }

    fn record_hold(&mut self, desired: &Desired, now: Timestamp) {
        let Some(hold) = self.hold.as_mut() else {
            return;
        };
        let in_force = !desired.gpus.is_empty() || !desired.cpus.is_empty();
        if let Err(e) = hold.record(desired.first_deadline.filter(|_| in_force), now) {
            tracing::warn!(error = %e, "could not record until when the settings in force are wanted");
            self.reporter.metrics.error("hold", &e);
        }
    }

    fn reconcile_gpus(&mut self, desired: &Desired, step_budget: bool, report: &mut Report) {
        // Put back GPUs no longer wanted first, so a failure there never
        // blocks the rest.
        let touched = self.gpu.as_ref().map(|g| g.touched()).unwrap_or_default();
        let stale = plan::stale(self.gpus.keys().cloned(), touched, &desired.gpus);
        let mut restored_now = BTreeMap::new();
        for uuid in stale {
            let Some(backend) = self.gpu.as_mut() else {
                break;
            };
            match backend.reset(&uuid) {
                Ok(()) => {
                    let was_set = self.gpus.remove(&uuid).is_some();
                    self.reporter.gpu_restored(&uuid, was_set);
                    restored_now.insert(uuid, None);
                }
                Err(e) => {
                    self.reporter.gpu_restore_failed(&uuid, &e);
                    restored_now.insert(uuid, Some(e.to_string()));
                }
            }
        }

        let backend = self.gpu.as_deref();
        let shares = groups::shares(
            &desired.groups,
            &desired.gpus,
            |uuid| backend.and_then(|b| b.device(uuid)).cloned(),
            &self.seen,
        );
        self.seen.retain(|uuid, _| shares.contains_key(uuid));
        for (uuid, want) in &desired.gpus {
            let status = match shares.get(uuid) {
                Some(share) => {
                    // The group's share, unless an ungrouped entry for the
                    // GPU wants less.
                    let budget = want.budget_watts.map_or(*share, |b| b.min(*share));
                    let grouped = Want {
                        budget_watts: Some(budget),
                        ..want.clone()
                    };
                    self.apply_gpu(uuid, &grouped, step_budget, true)
                }
                None => self.apply_gpu(uuid, want, step_budget, false),
            };
            report.gpus.push(status);
        }

        for uuid in &desired.inactive_gpus {
            let present = self.gpu.as_ref().is_some_and(|g| g.device(uuid).is_some());
            let current = if present {
                self.gpu.as_mut().and_then(|g| g.current_clock(uuid).ok())
            } else {
                None
            };
            report.gpus.push(report::inactive_gpu(
                uuid,
                present,
                current,
                restored_now.get(uuid),
            ));
        }
    }

    /// Plan, execute and report one wanted GPU; a `grouped` GPU's reading
    /// is kept for the next split of its group.
    fn apply_gpu(
        &mut self,
        uuid: &str,
        want: &Want,
        step_budget: bool,
        grouped: bool,
    ) -> GpuFrequencyStatus {
        let Some(backend) = self.gpu.as_mut() else {
            let status = report::gpu_without_backend(uuid, want);
            self.reporter
                .refused(uuid, "gpu", status.state, &status.message);
            return status;
        };
        let target = match plan::gpu_target(uuid, want, backend.device(uuid)) {
            Ok(target) => target,
            Err(refusal) => {
                self.reporter
                    .refused(uuid, "gpu", refusal.state, &refusal.message);
                return report::refused_gpu(uuid, want, refusal);
            }
        };
        let previous = self.gpus.get(uuid).copied().unwrap_or_default();
        let mut errors = Vec::new();
        let sample = execute::sample_power(
            backend.as_mut(),
            uuid,
            target.samples_power(step_budget),
            &mut errors,
        );
        if let (Some(power_watts), true) = (sample, grouped)
            && let Ok(clock_mhz) = backend.current_clock(uuid)
        {
            self.seen.insert(
                uuid.to_string(),
                resplit::Reading {
                    power_watts,
                    clock_mhz,
                },
            );
        }
        let mut plan = target.plan(previous, sample, self.power_limit_mode, &self.control);
        if let Some(what) = execute::drift(backend.as_mut(), uuid, previous) {
            // Someone else changed the GPU: write again what is planned,
            // whether or not it differs from what this agent last set.
            self.reporter.gpu_drifted(uuid, &what);
            plan.lock = true;
            if plan.power_limit.is_none() && !plan.reset_first {
                plan.power_limit = previous.power_limit;
            }
        }
        let outcome = execute::gpu(backend.as_mut(), uuid, &plan, previous, sample, errors);
        self.gpus.insert(uuid.to_string(), outcome.set);
        self.reporter.gpu(uuid, want, &plan, &outcome);
        report::gpu(uuid, want, &plan, &outcome)
    }

    fn reconcile_cpus(&mut self, desired: &Desired, report: &mut Report) {
        let touched = self.cpu.as_ref().map(|c| c.touched()).unwrap_or_default();
        let stale = plan::stale(touched, self.cpus.keys().copied(), &desired.cpus);
        let mut restored_now = BTreeMap::new();
        for cpu in stale {
            let Some(backend) = self.cpu.as_mut() else {
                break;
            };
            match backend.restore(cpu) {
                Ok(()) => {
                    let was_set = self.cpus.remove(&cpu).is_some();
                    self.reporter.cpu_restored(cpu, was_set);
                    restored_now.insert(cpu, None);
                }
                Err(e) => {
                    self.reporter.cpu_restore_failed(cpu, &e);
                    restored_now.insert(cpu, Some(e.to_string()));
                }
            }
        }

        for (&cpu, want) in &desired.cpus {
            let status = self.apply_cpu(cpu, want);
            report.cpus.push(status);
        }

        for &cpu in &desired.inactive_cpus {
            report
                .cpus
                .push(report::inactive_cpu(cpu, restored_now.get(&cpu)));
        }
    }

    /// Plan, execute and report one wanted CPU.
    fn apply_cpu(&mut self, cpu: u32, want: &Want) -> CpuFrequencyStatus {
        let Some(backend) = self.cpu.as_mut() else {
            let status = report::cpu_without_backend(cpu);
            self.reporter
                .refused(&report::cpu_key(cpu), "cpu", status.state, &status.message);
            return status;
        };
        let mut plan = plan::cpu_plan(want, self.cpus.get(&cpu));
        if let CpuPlan::Keep(applied) = &plan
            && let Some(what) = execute::cpu_drift(backend.as_mut(), cpu, applied)
        {
            self.reporter.cpu_drifted(cpu, &what);
            plan = CpuPlan::Set(want.target_mhz);
        }
        let result = execute::cpu(backend.as_mut(), cpu, plan);
        self.reporter.cpu(cpu, &result);
        match &result {
            Ok(applied) => {
                self.cpus.insert(cpu, (want.target_mhz, applied.clone()));
            }
            Err(_) => {
                self.cpus.remove(&cpu);
            }
        }
        report::cpu(cpu, want, &result)
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
        hold::HoldRecord,
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
        let gpu = SimGpus::new(
            world.clone(),
            StateFile::for_backend(state.path(), "sim", "n"),
        )
        .expect("sim");
        Rig {
            actuator: Actuator::new(
                Some(Box::new(gpu)),
                Some(Box::new(cpu)),
                false,
                Arc::new(Metrics::default()),
            )
            .with_hold(HoldRecord::open(HoldRecord::for_node(state.path(), "n")).expect("hold")),
            world,
            sysfs,
            uuids,
            _dirs: (root, state),
        }
    }

    /// The actuator an agent started after `rig`'s would build: a new
    /// simulated node (the old one lived in the killed process), the same
    /// state directory and CPUs.
    fn successor(rig: &Rig) -> (Actuator, SharedWorld) {
        let mut w = world(2);
        w.set_pods(&[busy_pod("a", Some("1.0"))], Instant::now());
        let world = w.shared();
        let state = rig._dirs.1.path();
        let gpu =
            SimGpus::new(world.clone(), StateFile::for_backend(state, "sim", "n")).expect("sim");
        let cpu = Cpufreq::new(
            rig.sysfs.root(),
            StateFile::for_backend(state, "cpufreq", "n"),
        )
        .expect("cpufreq");
        let actuator = Actuator::new(
            Some(Box::new(gpu)),
            Some(Box::new(cpu)),
            false,
            Arc::new(Metrics::default()),
        )
        .with_hold(HoldRecord::open(HoldRecord::for_node(state, "n")).expect("hold"));
        (actuator, world)
    }

    /// A second actuator on `rig`'s simulated GPUs, in power-limit mode,
    /// without CPUs; `name` keeps its state file apart from the rig's.
    fn power_limit_actuator(rig: &Rig, name: &str) -> Actuator {
        let gpu = SimGpus::new(
            rig.world.clone(),
            StateFile::for_backend(rig._dirs.1.path(), "sim", name),
        )
        .expect("sim");
        Actuator::new(
            Some(Box::new(gpu)),
            None,
            true,
            Arc::new(Metrics::default()),
        )
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
            budget_group: None,
            policy: "ns/p".into(),
            expires_at: Time(expires.unwrap_or_else(renewed)),
            kept_by_lease: false,
        }
    }

    /// The expiry of an entry its writer keeps renewing: a minute ahead.
    fn renewed() -> Timestamp {
        Timestamp::now() + std::time::Duration::from_secs(60)
    }

    fn cpu_entry(cpu: i32, target: i32, expires: Option<Timestamp>) -> CpuFrequency {
        CpuFrequency {
            cpu_id: cpu,
            target_frequency: target,
            policy: "ns/p".into(),
            expires_at: Time(expires.unwrap_or_else(renewed)),
            kept_by_lease: false,
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
        assert_eq!(
            report.summary(),
            NodeFrequenciesSummary {
                gpu_entries: 1,
                applied: 2,
                failed: 0
            }
        );

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
        // Restored devices are no targets in force.
        assert_eq!(
            report.summary(),
            NodeFrequenciesSummary {
                gpu_entries: 1,
                applied: 0,
                failed: 0
            }
        );
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
        // Each is news once: the refusal as much as the failed write.
        let news: Vec<(&str, &str)> = report
            .notices
            .iter()
            .map(|n| (n.device.as_str(), n.reason))
            .collect();
        assert_eq!(
            news,
            vec![
                (
                    "gpu GPU-00000000-0000-0000-0000-000000000000",
                    "DeviceUnsupported"
                ),
                ("cpu 1", "DeviceUnsupported"),
                ("cpu 2", "ActuationFailed"),
                ("cpu 7", "DeviceUnsupported"),
            ]
        );
        let again = rig.actuator.reconcile(Some(&s), Timestamp::now(), true);
        assert_eq!(again.notices, vec![]);
        assert_eq!(
            report.summary(),
            NodeFrequenciesSummary {
                gpu_entries: 1,
                applied: 0,
                failed: 1
            }
        );
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

    fn drift_count(actuator: &Actuator) -> u64 {
        actuator
            .reporter
            .metrics
            .drift
            .get_or_create(&crate::metrics::DeviceLabels {
                device: "gpu".into(),
            })
            .get()
    }

    #[test]
    fn a_gpu_reset_by_someone_else_is_locked_again() {
        let mut rig = rig(FakeCpu::uniform(1));
        let uuid = rig.uuids[0].clone();
        let s = spec(vec![gpu_entry(&uuid, 990, None, None)], vec![]);
        rig.actuator.reconcile(Some(&s), Timestamp::now(), true);
        assert_eq!(locked(&rig, 0), Some(990));
        // Nothing changed: nothing counted.
        rig.actuator.reconcile(Some(&s), Timestamp::now(), true);
        assert_eq!(drift_count(&rig.actuator), 0);

        // `nvidia-smi -rgc` behind the agent's back: the loaded GPU boosts.
        rig.world.lock().expect("world").reset_all(Instant::now());
        assert_eq!(locked(&rig, 0), None);
        let report = rig.actuator.reconcile(Some(&s), Timestamp::now(), true);
        assert_eq!(locked(&rig, 0), Some(990));
        assert_eq!(report.gpus[0].current_frequency, Some(990));
        assert_eq!(drift_count(&rig.actuator), 1);
        rig.actuator.reconcile(Some(&s), Timestamp::now(), true);
        assert_eq!(drift_count(&rig.actuator), 1);
    }

    #[test]
    fn a_power_limit_reset_by_someone_else_is_set_again() {
        let rig = rig(FakeCpu::uniform(1));
        let uuid = rig.uuids[0].clone();
        let mut actuator = power_limit_actuator(&rig, "second");
        let s = spec(vec![gpu_entry(&uuid, 1980, Some(450.0), None)], vec![]);
        actuator.reconcile(Some(&s), Timestamp::now(), true);
        let limit = |rig: &Rig| rig.world.lock().expect("world").power_limit(&uuid);
        assert_eq!(limit(&rig), Some(450.0));

        rig.world.lock().expect("world").reset_all(Instant::now());
        assert_eq!(limit(&rig), None);
        actuator.reconcile(Some(&s), Timestamp::now(), true);
        assert_eq!(limit(&rig), Some(450.0));
        assert!(locked(&rig, 0).is_some());
        assert_eq!(drift_count(&actuator), 1);
    }

    /// The value of the agent's series `name` for GPU `uuid`, as a scrape
    /// reads it; `None` when the series is absent.
    fn gpu_series(actuator: &Actuator, name: &str, uuid: &str) -> Option<f64> {
        let text = actuator.reporter.metrics.encode();
        let scrape = climatik_test_support::exposition::parse(&text).expect("valid exposition");
        scrape.find(name, &[("gpu", uuid)]).first().map(|s| s.value)
    }

    #[test]
    fn each_gpu_exports_its_target_settings_and_power_until_restored() {
        let rig = rig(FakeCpu::uniform(1));
        let uuid = rig.uuids[0].clone();
        let mut actuator = power_limit_actuator(&rig, "gauges");
        let series = |actuator: &Actuator, name: &str| gpu_series(actuator, name, &uuid);
        let s = spec(vec![gpu_entry(&uuid, 1250, Some(450.0), None)], vec![]);
        let report = actuator.reconcile(Some(&s), Timestamp::now(), true);
        let status = &report.gpus[0];

        let target = series(&actuator, "climatik_freqtuner_gpu_target_mhz");
        assert_eq!(target, status.target_frequency.map(f64::from));
        assert!(target.is_some_and(|t| t != 1250.0), "snapped: {target:?}");
        let locked_now = locked(&rig, 0).map(f64::from);
        assert!(locked_now.is_some());
        assert_eq!(
            series(&actuator, "climatik_freqtuner_gpu_locked_clock_mhz"),
            locked_now
        );
        let limit = rig.world.lock().expect("world").power_limit(&uuid);
        assert_eq!(limit, Some(450.0));
        assert_eq!(
            series(&actuator, "climatik_freqtuner_gpu_power_limit_watts"),
            limit
        );
        assert_eq!(
            series(&actuator, "climatik_freqtuner_gpu_power_budget_watts"),
            Some(450.0)
        );
        let watts = series(&actuator, "climatik_freqtuner_gpu_power_watts");
        let reported = status.power_watts.expect("a reading");
        assert!(
            watts.is_some_and(|w| w > 0.0 && (w - reported).abs() <= 0.05),
            "{watts:?} vs {reported}"
        );

        // A pass that keeps the limit keeps its series.
        actuator.reconcile(Some(&s), Timestamp::now(), true);
        assert_eq!(
            series(&actuator, "climatik_freqtuner_gpu_power_limit_watts"),
            limit
        );

        // The entry gone, the GPU is restored and its series with it.
        actuator.reconcile(Some(&spec(vec![], vec![])), Timestamp::now(), true);
        assert_eq!(locked(&rig, 0), None);
        for name in [
            "climatik_freqtuner_gpu_target_mhz",
            "climatik_freqtuner_gpu_locked_clock_mhz",
            "climatik_freqtuner_gpu_power_limit_watts",
            "climatik_freqtuner_gpu_power_budget_watts",
            "climatik_freqtuner_gpu_power_watts",
        ] {
            assert_eq!(series(&actuator, name), None, "{name} after restore");
        }
    }

    fn expired_count(actuator: &Actuator, device: &str) -> u64 {
        actuator
            .reporter
            .metrics
            .entries_expired
            .get_or_create(&crate::metrics::DeviceLabels {
                device: device.into(),
            })
            .get()
    }

    #[test]
    fn entries_that_lapse_without_renewal_are_counted_once() {
        let mut rig = rig(FakeCpu::uniform(2));
        let (a, b) = (rig.uuids[0].clone(), rig.uuids[1].clone());
        let t0 = Timestamp::now();
        let soon = Some(t0 + std::time::Duration::from_secs(10));
        let over = Some(t0 - std::time::Duration::from_secs(1));
        let s = spec(
            // `b`'s entry was over before the agent read it: no expiry
            // this agent saw happen.
            vec![
                gpu_entry(&a, 990, None, soon),
                gpu_entry(&b, 990, None, over),
            ],
            vec![cpu_entry(1, 1200, soon)],
        );
        rig.actuator.reconcile(Some(&s), t0, true);
        assert_eq!(
            (
                expired_count(&rig.actuator, "gpu"),
                expired_count(&rig.actuator, "cpu")
            ),
            (0, 0)
        );

        let at = |secs| t0 + std::time::Duration::from_secs(secs);
        rig.actuator.reconcile(Some(&s), at(11), true);
        rig.actuator.reconcile(Some(&s), at(12), true);
        assert_eq!(
            (
                expired_count(&rig.actuator, "gpu"),
                expired_count(&rig.actuator, "cpu")
            ),
            (1, 1)
        );

        // Renewed, then removed from the spec or deleted with the object:
        // taken back, not expired.
        let renewed_spec = spec(
            vec![gpu_entry(&a, 990, None, None)],
            vec![cpu_entry(1, 1200, None)],
        );
        rig.actuator.reconcile(Some(&renewed_spec), at(13), true);
        rig.actuator
            .reconcile(Some(&spec(vec![], vec![])), at(14), true);
        rig.actuator.reconcile(Some(&renewed_spec), at(15), true);
        rig.actuator.reconcile(None, at(16), true);
        assert_eq!(
            (
                expired_count(&rig.actuator, "gpu"),
                expired_count(&rig.actuator, "cpu")
            ),
            (1, 1)
        );
    }

    #[test]
    fn a_cpu_ceiling_raised_by_someone_else_is_capped_again() {
        let mut rig = rig(FakeCpu::uniform(2));
        let s = spec(vec![], vec![cpu_entry(1, 2000, None)]);
        rig.actuator.reconcile(Some(&s), Timestamp::now(), true);
        assert_eq!(rig.sysfs.scaling_max_khz(1).expect("read"), 2_000_000);

        // A tuning daemon puts the maximum back.
        rig.sysfs
            .overwrite(
                "devices/system/cpu/cpufreq/policy1/scaling_max_freq",
                "4800000",
            )
            .expect("write");
        rig.actuator.reconcile(Some(&s), Timestamp::now(), true);
        assert_eq!(rig.sysfs.scaling_max_khz(1).expect("read"), 2_000_000);
        let drift = rig
            .actuator
            .reporter
            .metrics
            .drift
            .get_or_create(&crate::metrics::DeviceLabels {
                device: "cpu".into(),
            })
            .get();
        assert_eq!(drift, 1);
        // Restoring still puts back the value found before the first change.
        rig.actuator.restore_all();
        assert_eq!(rig.sysfs.scaling_max_khz(1).expect("read"), 4_800_000);
    }

    #[test]
    fn a_killed_agents_settings_are_held_only_until_their_entries_end() {
        let mut rig = rig(FakeCpu::uniform(2));
        let second = |s: i64| Timestamp::from_second(s).expect("ts");
        let now = second(Timestamp::now().as_second());
        let soon = second(now.as_second() + 60);
        let later = second(now.as_second() + 120);
        let s = spec(
            vec![gpu_entry(&rig.uuids[0], 990, None, Some(later))],
            vec![cpu_entry(1, 2000, Some(soon))],
        );
        rig.actuator.reconcile(Some(&s), now, true);

        // Killed without restoring: its successor finds the GPU still
        // locked (kept in the state directory, as hardware keeps it) and
        // may keep both settings until the first entry ends.
        let (mut next, world) = successor(&rig);
        assert_eq!(
            world.lock().expect("world").locked(&rig.uuids[0]),
            Some(990)
        );
        assert_eq!(rig.sysfs.scaling_max_khz(1).expect("read"), 2_000_000);
        assert_eq!(next.leftovers_held_until(now), Some(soon));
        assert_eq!(next.leftovers_held_until(soon), None);

        // Its first pass keeps what is still wanted and restores the rest.
        let gpu_only = spec(
            vec![gpu_entry(&rig.uuids[0], 990, None, Some(later))],
            vec![],
        );
        next.reconcile(Some(&gpu_only), now, true);
        assert_eq!(
            world.lock().expect("world").locked(&rig.uuids[0]),
            Some(990)
        );
        assert_eq!(rig.sysfs.scaling_max_khz(1).expect("read"), 4_800_000);

        // A clean stop leaves nothing to hold or restore.
        next.restore_all();
        let (after_stop, world) = successor(&rig);
        assert_eq!(after_stop.leftovers_held_until(now), None);
        assert_eq!(world.lock().expect("world").locked(&rig.uuids[0]), None);
    }
}
