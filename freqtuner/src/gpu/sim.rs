//! The `sim` GPU backend: clock locks and readings on the simulated node.
//! Like a real GPU, a simulated one keeps its clock lock and power limit
//! when the agent dies: they are kept in the state directory and put back
//! on the simulated GPUs when an agent starts, so a killed agent leaves its
//! successor the same leftovers a real node would.

use std::{collections::BTreeMap, time::Instant};

use serde::{Deserialize, Serialize};

use super::{GpuBackend, GpuInfo};
use crate::{
    error::{Error, Result},
    sim::{SharedWorld, SimWorld},
    state::{Salvage, StateFile, salvage_map},
};

/// What the simulated GPUs hold beyond their defaults, by UUID.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
struct Settings {
    #[serde(default)]
    locked_mhz: BTreeMap<String, u32>,
    #[serde(default)]
    power_limit_watts: BTreeMap<String, f64>,
}

impl Salvage for Settings {
    fn salvage(value: serde_json::Value) -> (Self, usize) {
        let field = |name: &str| value.get(name).cloned().unwrap_or_default();
        let (locked_mhz, a) = salvage_map(field("locked_mhz"));
        let (power_limit_watts, b) = salvage_map(field("power_limit_watts"));
        (
            Self {
                locked_mhz,
                power_limit_watts,
            },
            a + b,
        )
    }
}

pub struct SimGpus {
    world: SharedWorld,
    infos: Vec<GpuInfo>,
    file: StateFile,
    settings: Settings,
}

impl SimGpus {
    /// The node's simulated GPUs, with what a previous agent left set on
    /// them (from `file`).
    pub fn new(world: SharedWorld, file: StateFile) -> Result<Self> {
        let mut settings: Settings = file.load()?;
        let infos = {
            let mut world = lock(&world)?;
            let infos = world.infos();
            // GPUs of another simulated node (a reused state directory)
            // are not this node's to hold.
            settings
                .locked_mhz
                .retain(|uuid, _| infos.iter().any(|i| &i.uuid == uuid));
            settings
                .power_limit_watts
                .retain(|uuid, _| infos.iter().any(|i| &i.uuid == uuid));
            let now = Instant::now();
            for (uuid, mhz) in &settings.locked_mhz {
                world.lock(uuid, Some(*mhz), now)?;
            }
            for (uuid, watts) in &settings.power_limit_watts {
                world.limit_power(uuid, Some(*watts), now)?;
            }
            infos
        };
        Ok(Self {
            world,
            infos,
            file,
            settings,
        })
    }

    fn save(&self) -> Result<()> {
        self.file.store(&self.settings)
    }
}

fn lock(world: &SharedWorld) -> Result<std::sync::MutexGuard<'_, SimWorld>> {
    world
        .lock()
        .map_err(|_| Error::Sim("the simulation state was poisoned by a panic".into()))
}

impl GpuBackend for SimGpus {
    fn name(&self) -> &'static str {
        "sim"
    }

    fn devices(&self) -> &[GpuInfo] {
        &self.infos
    }

    fn set_locked_clock(&mut self, uuid: &str, mhz: u32) -> Result<()> {
        lock(&self.world)?.lock(uuid, Some(mhz), Instant::now())?;
        if self.settings.locked_mhz.insert(uuid.to_string(), mhz) != Some(mhz) {
            self.save()?;
        }
        Ok(())
    }

    fn reset(&mut self, uuid: &str) -> Result<()> {
        {
            let mut world = lock(&self.world)?;
            world.lock(uuid, None, Instant::now())?;
            world.limit_power(uuid, None, Instant::now())?;
        }
        let changed = self.settings.locked_mhz.remove(uuid).is_some()
            | self.settings.power_limit_watts.remove(uuid).is_some();
        if changed {
            self.save()?;
        }
        Ok(())
    }

    fn current_clock(&mut self, uuid: &str) -> Result<u32> {
        Ok(lock(&self.world)?
            .reading_of(uuid, Instant::now())?
            .clock_mhz)
    }

    fn power_watts(&mut self, uuid: &str) -> Result<f64> {
        Ok(lock(&self.world)?
            .reading_of(uuid, Instant::now())?
            .power_watts)
    }

    fn energy_mj(&mut self, uuid: &str) -> Result<u64> {
        Ok(lock(&self.world)?
            .reading_of(uuid, Instant::now())?
            .energy_mj)
    }

    fn set_power_limit(&mut self, uuid: &str, watts: f64) -> Result<f64> {
        if !watts.is_finite() || watts <= 0.0 {
            return Err(Error::InvalidTarget(format!("{watts} W")));
        }
        let limits = self
            .device(uuid)
            .and_then(|d| d.power_limits)
            .ok_or_else(|| Error::Unsupported(format!("no GPU {uuid} on this node")))?;
        let clamped = watts.clamp(limits.min_watts, limits.max_watts);
        lock(&self.world)?.limit_power(uuid, Some(clamped), Instant::now())?;
        if self
            .settings
            .power_limit_watts
            .insert(uuid.to_string(), clamped)
            != Some(clamped)
        {
            self.save()?;
        }
        Ok(clamped)
    }

    fn power_limit_watts(&mut self, uuid: &str) -> Result<f64> {
        let default = self
            .device(uuid)
            .and_then(|d| d.power_limits)
            .ok_or_else(|| Error::Unsupported(format!("no GPU {uuid} on this node")))?
            .default_watts;
        Ok(lock(&self.world)?.power_limit(uuid).unwrap_or(default))
    }

    fn touched(&self) -> Vec<String> {
        let mut uuids: Vec<String> = self
            .settings
            .locked_mhz
            .keys()
            .chain(self.settings.power_limit_watts.keys())
            .cloned()
            .collect();
        uuids.sort();
        uuids.dedup();
        uuids
    }

    fn restore_leftovers(&mut self) -> Result<Vec<String>> {
        let left = self.touched();
        for uuid in &left {
            self.reset(uuid)?;
        }
        Ok(left)
    }
}
