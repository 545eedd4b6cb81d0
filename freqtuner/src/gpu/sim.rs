//! The `sim` GPU backend: clock locks and readings on the simulated node.
//! A simulated GPU boots unlocked, so there is nothing left to restore when
//! the agent starts.

use std::{collections::BTreeSet, time::Instant};

use super::{GpuBackend, GpuInfo};
use crate::{
    error::{Error, Result},
    sim::{SharedWorld, SimWorld},
};

pub struct SimGpus {
    world: SharedWorld,
    infos: Vec<GpuInfo>,
    touched: BTreeSet<String>,
}

impl SimGpus {
    pub fn new(world: SharedWorld) -> Result<Self> {
        let infos = lock(&world)?.infos();
        Ok(Self {
            world,
            infos,
            touched: BTreeSet::new(),
        })
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
        self.touched.insert(uuid.to_string());
        Ok(())
    }

    fn reset(&mut self, uuid: &str) -> Result<()> {
        let mut world = lock(&self.world)?;
        world.lock(uuid, None, Instant::now())?;
        world.limit_power(uuid, None, Instant::now())?;
        self.touched.remove(uuid);
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
        self.touched.insert(uuid.to_string());
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
        self.touched.iter().cloned().collect()
    }

    fn restore_leftovers(&mut self) -> Result<Vec<String>> {
        Ok(Vec::new())
    }
}
