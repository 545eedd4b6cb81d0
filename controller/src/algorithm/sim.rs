//! Closed-loop test rig: an algorithm driving plant-model GPUs, one control
//! period per step. The node agent is modelled as applying the target clock
//! and, when a power budget is set, settling at the highest clock that fits
//! the budget (its ~1 Hz loop converges well within a 15 s period).

use climatik_api::DeviceKind;

use climatik_api::CustomAlgorithm;

use super::{Algorithm, Clocks, Device, Observation, from_spec};
use climatik_sim_gpu::plant::{self, GpuPlant};

pub(crate) struct Rig {
    pub gpus: Vec<GpuPlant>,
    pub clocks: Vec<i32>,
    /// The budgets of the last plan.
    pub budgets: Vec<Option<f64>>,
    /// The clock targets of the last plan: the entries on the nodes.
    pub entries: Vec<Option<i32>>,
    supported: Clocks,
    pub cap: f64,
    pub threshold: f64,
    algorithm: Box<dyn Algorithm>,
}

impl Rig {
    /// The named algorithm with `params`, over GPUs with the given loads;
    /// panics when the spec is refused (a test's own mistake).
    pub fn for_algorithm(name: &str, params: &[(&str, &str)], loads: &[f64], cap: f64) -> Self {
        let spec = CustomAlgorithm {
            name: name.to_string(),
            parameters: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        match from_spec(Some(&spec)) {
            Ok(algorithm) => Self::new(algorithm, loads, cap),
            Err(e) => panic!("{e}"),
        }
    }

    /// GPUs with the given loads, uncapped (at the maximum clock).
    pub fn new(algorithm: Box<dyn Algorithm>, loads: &[f64], cap: f64) -> Self {
        let supported = match Clocks::from_supported(plant::supported_clocks()) {
            Some(c) => c,
            None => unreachable!("the plant has clocks"),
        };
        Self {
            gpus: loads.iter().map(|l| GpuPlant::with_load(*l)).collect(),
            clocks: vec![supported.max(); loads.len()],
            budgets: vec![None; loads.len()],
            entries: vec![None; loads.len()],
            supported,
            cap,
            threshold: 90.0,
            algorithm,
        }
    }

    /// Total power at the clocks now in force.
    pub fn power(&self) -> f64 {
        self.gpus
            .iter()
            .zip(&self.clocks)
            .map(|(g, c)| g.power(f64::from(*c)))
            .sum()
    }

    /// One control period: observe, plan, apply. Returns the power of the
    /// period that follows.
    pub fn step(&mut self) -> f64 {
        let observation = Observation {
            cap_watts: self.cap,
            threshold_percent: self.threshold,
            devices: self
                .gpus
                .iter()
                .zip(&self.clocks)
                .enumerate()
                .map(|(i, (g, c))| Device {
                    id: format!("GPU-{i}"),
                    node: format!("node-{}", i / 4),
                    kind: DeviceKind::Gpu,
                    power_watts: g.power(f64::from(*c)),
                    clock_mhz: Some(f64::from(*c)),
                    clocks: self.supported.clone(),
                    min_power_limit_watts: None,
                    entry_mhz: self.entries[i],
                    entry_budget_watts: self.budgets[i],
                })
                .collect(),
        };
        let targets = self.algorithm.plan(&observation);
        assert_eq!(targets.len(), self.gpus.len(), "a target per device");
        for target in targets {
            let i: usize = target
                .id
                .trim_start_matches("GPU-")
                .parse()
                .unwrap_or(usize::MAX);
            assert!(
                i < self.gpus.len(),
                "target for an unknown device {target:?}"
            );
            assert!(
                self.supported.as_slice().contains(&target.frequency_mhz),
                "{target:?} is not a supported clock"
            );
            self.budgets[i] = target.power_budget_watts;
            self.entries[i] = Some(target.frequency_mhz);
            self.clocks[i] = match target.power_budget_watts {
                Some(budget) => {
                    let fits = self.gpus[i].clock_for_budget(self.supported.as_slice(), budget);
                    fits.min(target.frequency_mhz)
                }
                None => target.frequency_mhz,
            };
        }
        self.power()
    }

    /// A new instance of the named algorithm takes over, as after a
    /// recommender restart or a change of leader: the clocks and the
    /// entries stay as the old one left them.
    pub fn restart_algorithm(&mut self, name: &str) {
        let spec = CustomAlgorithm {
            name: name.to_string(),
            parameters: Default::default(),
        };
        match from_spec(Some(&spec)) {
            Ok(algorithm) => self.algorithm = algorithm,
            Err(e) => panic!("{e}"),
        }
    }

    /// Runs `periods` steps, returning the power of each following period.
    pub fn run(&mut self, periods: usize) -> Vec<f64> {
        (0..periods).map(|_| self.step()).collect()
    }
}
