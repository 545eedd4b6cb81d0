//! The NVML backend. The calls into the driver sit behind [`NvmlDevice`],
//! so the bookkeeping around them (discovery, refusing unsupported clocks,
//! clamping power limits, remembering what to reset after a crash) is tested
//! with a fake device; [`RealDevice`] is the thin layer over nvml-wrapper.
//!
//! The power limit put back is the one in force before the agent first
//! changed it, read from the GPU (an administrator's `nvidia-smi -pl`
//! survives), not the factory default.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use nvml_wrapper::{
    Nvml, enum_wrappers::device::Clock, enums::device::GpuLockedClocksSetting, error::NvmlError,
};
use serde::{Deserialize, Serialize};

use super::{GpuBackend, GpuInfo, PowerLimits};
use crate::{
    error::{Error, Result},
    state::{Salvage, StateFile, salvage_map},
};

/// The NVML calls the backend makes, one GPU each.
pub trait NvmlDevice: Send {
    fn uuid(&self) -> Result<String, NvmlError>;
    fn name(&self) -> Result<String, NvmlError>;
    fn pci_bus_id(&self) -> Result<String, NvmlError>;
    fn supported_memory_clocks(&self) -> Result<Vec<u32>, NvmlError>;
    fn supported_graphics_clocks(&self, memory_mhz: u32) -> Result<Vec<u32>, NvmlError>;
    fn set_locked_clocks(&mut self, min_mhz: u32, max_mhz: u32) -> Result<(), NvmlError>;
    fn reset_locked_clocks(&mut self) -> Result<(), NvmlError>;
    fn sm_clock(&self) -> Result<u32, NvmlError>;
    fn power_usage_mw(&self) -> Result<u32, NvmlError>;
    fn total_energy_mj(&self) -> Result<u64, NvmlError>;
    /// `(min, max)` in milliwatts.
    fn power_limit_constraints_mw(&self) -> Result<(u32, u32), NvmlError>;
    fn power_limit_default_mw(&self) -> Result<u32, NvmlError>;
    /// The power-management limit in force now, in milliwatts.
    fn power_limit_mw(&self) -> Result<u32, NvmlError>;
    fn set_power_limit_mw(&mut self, milliwatts: u32) -> Result<(), NvmlError>;
}

/// One GPU through the real library. Looks the device up by index on every
/// call, which avoids holding a `Device` that borrows the `Nvml` handle.
pub struct RealDevice {
    nvml: Arc<Nvml>,
    index: u32,
}

impl RealDevice {
    /// Every GPU NVML sees; fails cleanly without the driver.
    pub fn all(nvml: Arc<Nvml>) -> Result<Vec<RealDevice>> {
        let count = nvml.device_count().map_err(|source| Error::Nvml {
            op: "device_count",
            source,
        })?;
        Ok((0..count)
            .map(|index| RealDevice {
                nvml: nvml.clone(),
                index,
            })
            .collect())
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&nvml_wrapper::Device<'_>) -> Result<T, NvmlError>,
    ) -> Result<T, NvmlError> {
        f(&self.nvml.device_by_index(self.index)?)
    }

    fn with_mut<T>(
        &mut self,
        f: impl FnOnce(&mut nvml_wrapper::Device<'_>) -> Result<T, NvmlError>,
    ) -> Result<T, NvmlError> {
        f(&mut self.nvml.device_by_index(self.index)?)
    }
}

impl NvmlDevice for RealDevice {
    fn uuid(&self) -> Result<String, NvmlError> {
        self.with(|d| d.uuid())
    }
    fn name(&self) -> Result<String, NvmlError> {
        self.with(|d| d.name())
    }
    fn pci_bus_id(&self) -> Result<String, NvmlError> {
        self.with(|d| d.pci_info().map(|p| p.bus_id))
    }
    fn supported_memory_clocks(&self) -> Result<Vec<u32>, NvmlError> {
        self.with(|d| d.supported_memory_clocks())
    }
    fn supported_graphics_clocks(&self, memory_mhz: u32) -> Result<Vec<u32>, NvmlError> {
        self.with(|d| d.supported_graphics_clocks(memory_mhz))
    }
    fn set_locked_clocks(&mut self, min_mhz: u32, max_mhz: u32) -> Result<(), NvmlError> {
        self.with_mut(|d| {
            d.set_gpu_locked_clocks(GpuLockedClocksSetting::Numeric {
                min_clock_mhz: min_mhz,
                max_clock_mhz: max_mhz,
            })
        })
    }
    fn reset_locked_clocks(&mut self) -> Result<(), NvmlError> {
        self.with_mut(|d| d.reset_gpu_locked_clocks())
    }
    fn sm_clock(&self) -> Result<u32, NvmlError> {
        self.with(|d| d.clock_info(Clock::SM))
    }
    fn power_usage_mw(&self) -> Result<u32, NvmlError> {
        self.with(|d| d.power_usage())
    }
    fn total_energy_mj(&self) -> Result<u64, NvmlError> {
        self.with(|d| d.total_energy_consumption())
    }
    fn power_limit_constraints_mw(&self) -> Result<(u32, u32), NvmlError> {
        self.with(|d| {
            d.power_management_limit_constraints()
                .map(|c| (c.min_limit, c.max_limit))
        })
    }
    fn power_limit_default_mw(&self) -> Result<u32, NvmlError> {
        self.with(|d| d.power_management_limit_default())
    }
    fn power_limit_mw(&self) -> Result<u32, NvmlError> {
        self.with(|d| d.power_management_limit())
    }
    fn set_power_limit_mw(&mut self, milliwatts: u32) -> Result<(), NvmlError> {
        self.with_mut(|d| d.set_power_management_limit(milliwatts))
    }
}

/// What must be undone after a crash: locked GPUs and changed power limits
/// (with the limit found before the first change, in mW), by UUID.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
struct NvmlState {
    #[serde(default)]
    locked: BTreeSet<String>,
    #[serde(default)]
    power_limits_mw: BTreeMap<String, u32>,
}

impl Salvage for NvmlState {
    fn salvage(value: serde_json::Value) -> (Self, usize) {
        let mut lost = usize::from(!value.is_object());
        let locked = match value.get("locked") {
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .filter_map(|item| {
                    let uuid = item.as_str().map(str::to_string);
                    lost += usize::from(uuid.is_none());
                    uuid
                })
                .collect(),
            Some(_) => {
                lost += 1;
                BTreeSet::new()
            }
            None => BTreeSet::new(),
        };
        let (power_limits_mw, unreadable) = value
            .get("power_limits_mw")
            .cloned()
            .map(salvage_map)
            .unwrap_or_default();
        (
            Self {
                locked,
                power_limits_mw,
            },
            lost + unreadable,
        )
    }
}

/// GPU control through NVML (or anything implementing [`NvmlDevice`]).
pub struct NvmlBackend<D> {
    devices: Vec<(GpuInfo, D)>,
    infos: Vec<GpuInfo>,
    file: StateFile,
    state: NvmlState,
}

/// Opens the real library and every GPU behind it.
pub fn open_real(state: StateFile) -> Result<NvmlBackend<RealDevice>> {
    let nvml = Nvml::init().map_err(|source| Error::Nvml {
        op: "init (is the NVIDIA driver installed and libnvidia-ml.so.1 loadable?)",
        source,
    })?;
    NvmlBackend::new(RealDevice::all(Arc::new(nvml))?, state)
}

impl<D: NvmlDevice> NvmlBackend<D> {
    /// Reads each device's identity and clock table; loads what a previous
    /// agent left to restore.
    pub fn new(devices: Vec<D>, file: StateFile) -> Result<Self> {
        let mut found = Vec::with_capacity(devices.len());
        for (index, device) in devices.into_iter().enumerate() {
            let index = u32::try_from(index).unwrap_or(u32::MAX);
            found.push((discover(index, &device)?, device));
        }
        let state = file.load()?;
        let infos = found.iter().map(|(info, _)| info.clone()).collect();
        Ok(Self {
            devices: found,
            infos,
            file,
            state,
        })
    }

    fn find(&mut self, uuid: &str) -> Result<(&GpuInfo, &mut D)> {
        self.devices
            .iter_mut()
            .find(|(info, _)| info.uuid == uuid)
            .map(|(info, device)| (&*info, device))
            .ok_or_else(|| Error::Unsupported(format!("no GPU {uuid} on this node")))
    }

    fn save(&self) -> Result<()> {
        self.file.store(&self.state)
    }
}

fn nvml(op: &'static str) -> impl FnOnce(NvmlError) -> Error {
    move |source| Error::Nvml { op, source }
}

fn discover<D: NvmlDevice>(index: u32, device: &D) -> Result<GpuInfo> {
    let uuid = device.uuid().map_err(nvml("uuid"))?;
    let model = device.name().unwrap_or_default();
    let pci_bus_id = device.pci_bus_id().unwrap_or_default();
    // Graphics clocks are listed per memory clock; the highest memory clock
    // is the one the GPU runs at under load.
    let supported_mhz = match device.supported_memory_clocks() {
        Ok(memory) => match memory.iter().max() {
            Some(&mem) => device.supported_graphics_clocks(mem).unwrap_or_default(),
            None => Vec::new(),
        },
        Err(_) => Vec::new(),
    };
    let mut supported_mhz: Vec<u32> = supported_mhz.into_iter().filter(|c| *c > 0).collect();
    supported_mhz.sort_unstable();
    supported_mhz.dedup();
    let power_limits = match (
        device.power_limit_constraints_mw(),
        device.power_limit_default_mw(),
    ) {
        (Ok((min, max)), Ok(default)) if min > 0 && min <= max => Some(PowerLimits {
            min_watts: f64::from(min) / 1000.0,
            max_watts: f64::from(max) / 1000.0,
            default_watts: f64::from(default) / 1000.0,
        }),
        _ => None,
    };
    Ok(GpuInfo {
        uuid,
        index,
        model,
        pci_bus_id,
        supported_mhz,
        power_limits,
    })
}

impl<D: NvmlDevice> GpuBackend for NvmlBackend<D> {
    fn name(&self) -> &'static str {
        "nvml"
    }

    fn devices(&self) -> &[GpuInfo] {
        &self.infos
    }

    fn set_locked_clock(&mut self, uuid: &str, mhz: u32) -> Result<()> {
        let (info, _) = self.find(uuid)?;
        if info.supported_mhz.is_empty() {
            return Err(Error::Unsupported(format!(
                "{uuid} reports no supported clocks, so its clocks cannot be locked"
            )));
        }
        if !info.supported_mhz.contains(&mhz) {
            // The agent snaps first; this guards the hardware regardless.
            return Err(Error::InvalidTarget(format!(
                "{mhz} MHz is not a supported clock of {uuid}"
            )));
        }
        if self.state.locked.insert(uuid.to_string()) {
            self.save()?;
        }
        let (_, device) = self.find(uuid)?;
        device
            .set_locked_clocks(mhz, mhz)
            .map_err(nvml("set_gpu_locked_clocks"))
    }

    fn reset(&mut self, uuid: &str) -> Result<()> {
        let original = self.state.power_limits_mw.get(uuid).copied();
        let (_, device) = self.find(uuid)?;
        device
            .reset_locked_clocks()
            .map_err(nvml("reset_gpu_locked_clocks"))?;
        if let Some(milliwatts) = original {
            device
                .set_power_limit_mw(milliwatts)
                .map_err(nvml("set_power_management_limit"))?;
        }
        let changed =
            self.state.locked.remove(uuid) | self.state.power_limits_mw.remove(uuid).is_some();
        if changed {
            self.save()?;
        }
        Ok(())
    }

    fn current_clock(&mut self, uuid: &str) -> Result<u32> {
        self.find(uuid)?.1.sm_clock().map_err(nvml("clock_info"))
    }

    fn power_watts(&mut self, uuid: &str) -> Result<f64> {
        let mw = self
            .find(uuid)?
            .1
            .power_usage_mw()
            .map_err(nvml("power_usage"))?;
        Ok(f64::from(mw) / 1000.0)
    }

    fn energy_mj(&mut self, uuid: &str) -> Result<u64> {
        self.find(uuid)?
            .1
            .total_energy_mj()
            .map_err(nvml("total_energy_consumption"))
    }

    fn set_power_limit(&mut self, uuid: &str, watts: f64) -> Result<f64> {
        if !watts.is_finite() || watts <= 0.0 {
            return Err(Error::InvalidTarget(format!("{watts} W")));
        }
        let (info, _) = self.find(uuid)?;
        let limits = info.power_limits.ok_or_else(|| {
            Error::Unsupported(format!("{uuid} does not allow changing its power limit"))
        })?;
        let clamped = watts.clamp(limits.min_watts, limits.max_watts);
        if !self.state.power_limits_mw.contains_key(uuid) {
            // What is in force before the first change, which may be an
            // administrator's and not the default; a record already there
            // (a restarted agent) holds the original, so it is kept.
            let (_, device) = self.find(uuid)?;
            let original = device
                .power_limit_mw()
                .map_err(nvml("power_management_limit"))?;
            self.state
                .power_limits_mw
                .insert(uuid.to_string(), original);
            self.save()?;
        }
        let (_, device) = self.find(uuid)?;
        // In range [min, max] of u32 milliwatts, so the cast is exact.
        device
            .set_power_limit_mw((clamped * 1000.0).round() as u32)
            .map_err(nvml("set_power_management_limit"))?;
        Ok(clamped)
    }

    fn power_limit_watts(&mut self, uuid: &str) -> Result<f64> {
        let mw = self
            .find(uuid)?
            .1
            .power_limit_mw()
            .map_err(nvml("power_management_limit"))?;
        Ok(f64::from(mw) / 1000.0)
    }

    fn touched(&self) -> Vec<String> {
        self.state
            .locked
            .iter()
            .chain(self.state.power_limits_mw.keys())
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    fn restore_leftovers(&mut self) -> Result<Vec<String>> {
        let mut restored = Vec::new();
        for uuid in self.touched() {
            if self.device(&uuid).is_none() {
                // Gone from the node (replaced GPU): nothing left to reset.
                self.state.locked.remove(&uuid);
                self.state.power_limits_mw.remove(&uuid);
                self.save()?;
                continue;
            }
            match self.reset(&uuid) {
                Ok(()) => restored.push(uuid),
                Err(e) => {
                    tracing::warn!(gpu = %uuid, error = %e, "could not reset a GPU left locked")
                }
            }
        }
        Ok(restored)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    };

    use super::*;

    /// A GPU that records the calls made to it. Clones are the same GPU
    /// (as seen by a second agent): they share the power limit in force.
    #[derive(Clone)]
    struct FakeGpu {
        uuid: String,
        log: Arc<Mutex<Vec<String>>>,
        deny_writes: bool,
        power_limits: bool,
        /// The limit in force, mW; 700 W (the default) at boot.
        limit_mw: Arc<AtomicU32>,
    }

    impl FakeGpu {
        fn new(uuid: &str, log: &Arc<Mutex<Vec<String>>>) -> Self {
            Self {
                uuid: uuid.into(),
                log: log.clone(),
                deny_writes: false,
                power_limits: true,
                limit_mw: Arc::new(AtomicU32::new(700_000)),
            }
        }

        /// An administrator's `nvidia-smi -pl`, not recorded as our call.
        fn admin_sets_limit(&self, milliwatts: u32) {
            self.limit_mw.store(milliwatts, Ordering::SeqCst);
        }

        fn record(&self, call: String) {
            if let Ok(mut log) = self.log.lock() {
                log.push(call);
            }
        }

        fn write(&self, call: String) -> Result<(), NvmlError> {
            if self.deny_writes {
                return Err(NvmlError::NoPermission);
            }
            self.record(call);
            Ok(())
        }
    }

    impl NvmlDevice for FakeGpu {
        fn uuid(&self) -> Result<String, NvmlError> {
            Ok(self.uuid.clone())
        }
        fn name(&self) -> Result<String, NvmlError> {
            Ok("NVIDIA H100 80GB HBM3".into())
        }
        fn pci_bus_id(&self) -> Result<String, NvmlError> {
            Ok("00000000:07:00.0".into())
        }
        fn supported_memory_clocks(&self) -> Result<Vec<u32>, NvmlError> {
            Ok(vec![1593, 2619])
        }
        fn supported_graphics_clocks(&self, memory_mhz: u32) -> Result<Vec<u32>, NvmlError> {
            // Descending, as NVML lists them; only the top memory clock
            // has the full range.
            Ok(if memory_mhz == 2619 {
                vec![1980, 1965, 1500, 990, 345]
            } else {
                vec![1200, 345]
            })
        }
        fn set_locked_clocks(&mut self, min_mhz: u32, max_mhz: u32) -> Result<(), NvmlError> {
            self.write(format!("lock {min_mhz}-{max_mhz}"))
        }
        fn reset_locked_clocks(&mut self) -> Result<(), NvmlError> {
            self.write("reset".into())
        }
        fn sm_clock(&self) -> Result<u32, NvmlError> {
            Ok(1980)
        }
        fn power_usage_mw(&self) -> Result<u32, NvmlError> {
            Ok(312_500)
        }
        fn total_energy_mj(&self) -> Result<u64, NvmlError> {
            Ok(42)
        }
        fn power_limit_constraints_mw(&self) -> Result<(u32, u32), NvmlError> {
            if self.power_limits {
                Ok((200_000, 700_000))
            } else {
                Err(NvmlError::NotSupported)
            }
        }
        fn power_limit_default_mw(&self) -> Result<u32, NvmlError> {
            Ok(700_000)
        }
        fn power_limit_mw(&self) -> Result<u32, NvmlError> {
            Ok(self.limit_mw.load(Ordering::SeqCst))
        }
        fn set_power_limit_mw(&mut self, milliwatts: u32) -> Result<(), NvmlError> {
            self.write(format!("limit {milliwatts}"))?;
            self.limit_mw.store(milliwatts, Ordering::SeqCst);
            Ok(())
        }
    }

    fn log() -> Arc<Mutex<Vec<String>>> {
        Arc::new(Mutex::new(Vec::new()))
    }

    fn calls(log: &Arc<Mutex<Vec<String>>>) -> Vec<String> {
        log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    fn state(dir: &tempfile::TempDir) -> StateFile {
        StateFile::for_backend(dir.path(), "nvml", "n")
    }

    #[test]
    fn discovers_clocks_of_the_top_memory_clock_ascending() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = log();
        let backend =
            NvmlBackend::new(vec![FakeGpu::new("GPU-a", &log)], state(&dir)).expect("new");
        let info = &backend.devices()[0];
        assert_eq!(info.supported_mhz, vec![345, 990, 1500, 1965, 1980]);
        assert_eq!(info.min_mhz(), Some(345));
        assert_eq!(info.power_limits.map(|l| l.max_watts), Some(700.0));
        let inventory = info.inventory();
        assert_eq!(
            (inventory.min_frequency, inventory.max_frequency),
            (345, 1980)
        );
    }

    #[test]
    fn locks_only_supported_clocks_and_resets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = log();
        let mut backend =
            NvmlBackend::new(vec![FakeGpu::new("GPU-a", &log)], state(&dir)).expect("new");
        assert!(matches!(
            backend.set_locked_clock("GPU-a", 1000),
            Err(Error::InvalidTarget(_))
        ));
        assert!(
            backend
                .set_locked_clock("GPU-zzz", 990)
                .is_err_and(|e| e.is_unsupported())
        );
        backend.set_locked_clock("GPU-a", 990).expect("lock");
        assert_eq!(backend.touched(), vec!["GPU-a".to_string()]);
        backend.reset("GPU-a").expect("reset");
        assert!(backend.touched().is_empty());
        assert_eq!(calls(&log), vec!["lock 990-990", "reset"]);
        assert_eq!(backend.power_watts("GPU-a").expect("power"), 312.5);
    }

    #[test]
    fn power_limits_are_clamped_to_the_constraints_and_restored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = log();
        let mut backend =
            NvmlBackend::new(vec![FakeGpu::new("GPU-a", &log)], state(&dir)).expect("new");
        assert_eq!(
            backend.set_power_limit("GPU-a", 50.0).expect("limit"),
            200.0
        );
        assert_eq!(
            backend.set_power_limit("GPU-a", 450.4).expect("limit"),
            450.4
        );
        assert!(backend.set_power_limit("GPU-a", f64::NAN).is_err());
        backend.reset("GPU-a").expect("reset");
        assert_eq!(
            calls(&log),
            vec!["limit 200000", "limit 450400", "reset", "limit 700000"]
        );

        let mut no_limits = FakeGpu::new("GPU-b", &log);
        no_limits.power_limits = false;
        let mut backend = NvmlBackend::new(vec![no_limits], state(&dir)).expect("new");
        assert!(
            backend
                .set_power_limit("GPU-b", 300.0)
                .is_err_and(|e| e.is_unsupported())
        );
    }

    #[test]
    fn permission_errors_surface_and_nothing_is_half_done() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = log();
        let mut gpu = FakeGpu::new("GPU-a", &log);
        gpu.deny_writes = true;
        let mut backend = NvmlBackend::new(vec![gpu], state(&dir)).expect("new");
        let err = backend.set_locked_clock("GPU-a", 990).expect_err("denied");
        assert_eq!(err.metric_label(), "nvml");
        assert!(err.to_string().contains("set_gpu_locked_clocks"), "{err}");
        // Remembered anyway: a failed call may still have taken effect, and
        // a reset of an unlocked GPU is harmless.
        assert_eq!(backend.touched(), vec!["GPU-a".to_string()]);
    }

    #[test]
    fn a_new_agent_resets_what_a_killed_one_locked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = log();
        {
            let mut first = NvmlBackend::new(
                vec![FakeGpu::new("GPU-a", &log), FakeGpu::new("GPU-b", &log)],
                state(&dir),
            )
            .expect("new");
            first.set_locked_clock("GPU-b", 345).expect("lock");
            first.set_power_limit("GPU-b", 300.0).expect("limit");
        }
        let mut second = NvmlBackend::new(
            vec![FakeGpu::new("GPU-a", &log), FakeGpu::new("GPU-b", &log)],
            state(&dir),
        )
        .expect("new");
        assert_eq!(second.restore_leftovers().expect("restore"), vec!["GPU-b"]);
        assert_eq!(
            calls(&log),
            vec!["lock 345-345", "limit 300000", "reset", "limit 700000"]
        );
        assert!(second.touched().is_empty());
    }

    #[test]
    fn restores_the_limit_an_administrator_set_not_the_default() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = log();
        let gpu = FakeGpu::new("GPU-a", &log);
        gpu.admin_sets_limit(550_000);
        let mut backend = NvmlBackend::new(vec![gpu.clone()], state(&dir)).expect("new");
        backend.set_power_limit("GPU-a", 300.0).expect("limit");
        assert_eq!(backend.power_limit_watts("GPU-a").expect("read"), 300.0);
        backend.reset("GPU-a").expect("reset");
        assert_eq!(calls(&log), vec!["limit 300000", "reset", "limit 550000"]);
        assert_eq!(backend.power_limit_watts("GPU-a").expect("read"), 550.0);
    }

    #[test]
    fn a_restarted_agent_keeps_the_recorded_original_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = log();
        let gpu = FakeGpu::new("GPU-a", &log);
        gpu.admin_sets_limit(550_000);
        {
            let mut first = NvmlBackend::new(vec![gpu.clone()], state(&dir)).expect("new");
            first.set_power_limit("GPU-a", 300.0).expect("limit");
            // Killed: the GPU keeps 300 W.
        }
        // The successor finds 300 W in force, which Climatik set: setting
        // a limit again must not take that for the original.
        let mut second = NvmlBackend::new(vec![gpu.clone()], state(&dir)).expect("new");
        second.set_power_limit("GPU-a", 250.0).expect("limit");
        second.reset("GPU-a").expect("reset");
        assert_eq!(gpu.power_limit_mw().expect("read"), 550_000);

        {
            let mut third = NvmlBackend::new(vec![gpu.clone()], state(&dir)).expect("new");
            third.set_power_limit("GPU-a", 300.0).expect("limit");
        }
        let mut fourth = NvmlBackend::new(vec![gpu.clone()], state(&dir)).expect("new");
        assert_eq!(fourth.restore_leftovers().expect("restore"), vec!["GPU-a"]);
        assert_eq!(gpu.power_limit_mw().expect("read"), 550_000);
    }

    #[test]
    fn a_corrupt_state_restores_the_records_that_parse() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = log();
        let file = state(&dir);
        std::fs::write(
            file.path(),
            r#"{"locked": ["GPU-b", 7], "power_limits_mw": {"GPU-b": 450000, "GPU-a": "x"}}"#,
        )
        .expect("write");
        let (a, b) = (FakeGpu::new("GPU-a", &log), FakeGpu::new("GPU-b", &log));
        let mut backend =
            NvmlBackend::new(vec![a, b.clone()], file).expect("a corrupt state is no error");
        assert_eq!(backend.touched(), vec!["GPU-b".to_string()]);
        assert_eq!(backend.restore_leftovers().expect("restore"), vec!["GPU-b"]);
        assert_eq!(calls(&log), vec!["reset", "limit 450000"]);
        assert_eq!(b.power_limit_mw().expect("read"), 450_000);
        assert_eq!(crate::state::tests::corrupt_files(dir.path()).len(), 1);
    }
}
