//! `budget-allocator`: splits the policy's watts across its GPUs by observed
//! demand and hands each GPU a `powerBudgetWatts` that the node agent holds
//! with its own ~1 Hz loop between controller updates.
//!
//! The budget is `target` percent of the cap less the measured CPU power.
//! A GPU's demand is its power plus a small margin; a GPU running at its
//! budget is assumed to want `headroom` percent more (it may be held back).
//! The split is max-min fair (water-filling): GPUs that want less than an
//! equal share get what they want, the rest share what is left. Budget left
//! over when every demand is met is shared equally, so the budgets always
//! add up to the target and a lightly loaded GPU keeps room for a burst. Clock targets stay at the maximum:
//! the budget does the limiting. CPU devices are measured, not tuned.
//!
//! A GPU that reports the lowest power limit it accepts never gets less:
//! its own limiter holds a budget within milliseconds, but one below that
//! floor only through the agent's 1 Hz clock loop, so a burst would run
//! over the cap for a second or two. Each such GPU gets its floor first and
//! the rest is water-filled over demand above the floors. When the floors
//! alone exceed the cap, the plain split is used and the clock loop holds.

use std::collections::HashMap;

use climatik_api::DeviceKind;

use super::{Algorithm, AlgorithmError, Device, Observation, Params, Target};

/// Smallest budget written (the CRD requires at least 1 W).
const MIN_BUDGET_WATTS: f64 = 1.0;
/// A GPU within this share of its budget counts as held back by it.
const AT_BUDGET: f64 = 0.95;

#[derive(Debug, Clone)]
pub struct BudgetAllocator {
    target: f64,
    headroom: f64,
    budgets: HashMap<(String, String), f64>,
}

impl BudgetAllocator {
    pub(crate) fn new(params: &Params<'_>) -> Result<Self, AlgorithmError> {
        Self::with_target(params, "target", 97.0)
    }

    /// Reads the share of the cap to hand out from `key` (default
    /// `default` percent).
    pub(crate) fn with_target(
        params: &Params<'_>,
        key: &str,
        default: f64,
    ) -> Result<Self, AlgorithmError> {
        Ok(Self {
            target: params.number(key, default, 50.0..=100.0)? / 100.0,
            headroom: params.number("headroom", 10.0, 0.0..=100.0)? / 100.0,
            budgets: HashMap::new(),
        })
    }

    fn demand(&self, device: &Device) -> f64 {
        match self.budgets.get(&device.key()) {
            Some(budget) if device.power_watts >= budget * AT_BUDGET => {
                budget * (1.0 + self.headroom)
            }
            _ => device.power_watts * (1.0 + self.headroom / 2.0),
        }
        .max(MIN_BUDGET_WATTS)
    }
}

impl Algorithm for BudgetAllocator {
    fn name(&self) -> &'static str {
        super::BUDGET_ALLOCATOR
    }

    fn plan(&mut self, observation: &Observation) -> Vec<Target> {
        let gpus: Vec<&Device> = observation
            .devices
            .iter()
            .filter(|d| d.kind == DeviceKind::Gpu)
            .collect();
        let cpu_power: f64 = observation
            .devices
            .iter()
            .filter(|d| d.kind != DeviceKind::Gpu)
            .map(|d| d.power_watts)
            .sum();
        let total = (observation.cap_watts * self.target - cpu_power)
            .max(MIN_BUDGET_WATTS * gpus.len() as f64);
        let demands: Vec<f64> = gpus.iter().map(|d| self.demand(d)).collect();
        let floors: Vec<f64> = gpus
            .iter()
            .map(|d| {
                d.min_power_limit_watts
                    .filter(|w| w.is_finite() && *w > 0.0)
                    .unwrap_or(0.0)
            })
            .collect();
        let floor_sum: f64 = floors.iter().sum();
        let shares = if floor_sum > 0.0 && floor_sum <= total {
            let above: Vec<f64> = demands
                .iter()
                .zip(&floors)
                .map(|(d, f)| (d - f).max(0.0))
                .collect();
            water_fill(&above, total - floor_sum, 0.0)
                .iter()
                .zip(&floors)
                .map(|(share, floor)| share + floor)
                .collect()
        } else {
            water_fill(&demands, total, MIN_BUDGET_WATTS)
        };

        self.budgets = gpus
            .iter()
            .zip(&shares)
            .map(|(d, s)| (d.key(), *s))
            .collect();
        observation
            .devices
            .iter()
            .map(|d| Target {
                node: d.node.clone(),
                id: d.id.clone(),
                kind: d.kind,
                frequency_mhz: d.clocks.max(),
                power_budget_watts: self
                    .budgets
                    .get(&d.key())
                    .map(|b| (b * 10.0).floor() / 10.0),
            })
            .collect()
    }
}

/// Max-min fair split of `total` across `demands`, no share below
/// `least`; any surplus is shared equally.
fn water_fill(demands: &[f64], total: f64, least: f64) -> Vec<f64> {
    let sum: f64 = demands.iter().sum();
    if demands.is_empty() {
        return Vec::new();
    }
    if sum <= total {
        let extra = (total - sum) / demands.len() as f64;
        return demands.iter().map(|d| (d + extra).max(least)).collect();
    }
    let mut order: Vec<usize> = (0..demands.len()).collect();
    order.sort_by(|a, b| demands[*a].total_cmp(&demands[*b]));
    let mut shares = vec![0.0; demands.len()];
    let mut left = total;
    for (served, &i) in order.iter().enumerate() {
        let equal = left / (demands.len() - served) as f64;
        shares[i] = demands[i].min(equal).max(least);
        left -= shares[i];
    }
    shares
}

#[cfg(test)]
mod tests {
    use super::super::{BUDGET_ALLOCATOR, Clocks, Device, Observation, from_spec, sim::Rig};
    use super::water_fill;
    use climatik_api::{CustomAlgorithm, DeviceKind};

    fn rig(loads: &[f64], cap: f64) -> Rig {
        Rig::for_algorithm(BUDGET_ALLOCATOR, &[], loads, cap)
    }

    fn assert_settles(trace: &[f64], cap: f64) {
        assert!(
            trace[0] <= cap,
            "not under {cap} W after one period: {trace:?}"
        );
        assert!(trace.iter().all(|p| *p < cap * 1.05), "{trace:?}");
        let tail = &trace[trace.len() - 3..];
        assert!(
            tail.iter().all(|p| *p >= cap * 0.9 && *p <= cap),
            "{trace:?}"
        );
    }

    #[test]
    fn water_fill_is_max_min_fair() {
        assert_eq!(
            water_fill(&[50.0, 300.0, 300.0], 350.0, 1.0),
            vec![50.0, 150.0, 150.0]
        );
        assert_eq!(water_fill(&[50.0, 100.0], 300.0, 1.0), vec![125.0, 175.0]);
        let shares = water_fill(&[10.0, 20.0, 400.0], 100.0, 1.0);
        assert_eq!(shares, vec![10.0, 20.0, 70.0]);
    }

    /// Budgets for four H200-like GPUs (power limit 200–700 W): one busy,
    /// three idle. Returns the budgets planned under `cap`.
    fn budgets_for(cap: f64, floor: Option<f64>) -> Vec<f64> {
        let spec = CustomAlgorithm {
            name: BUDGET_ALLOCATOR.to_string(),
            parameters: Default::default(),
        };
        let Ok(mut allocator) = from_spec(Some(&spec)) else {
            panic!("budget-allocator builds");
        };
        let Some(clocks) = Clocks::range(345, 1980, 15) else {
            panic!("clocks");
        };
        let devices = [650.0, 70.0, 70.0, 70.0]
            .iter()
            .enumerate()
            .map(|(i, watts)| Device {
                id: format!("GPU-{i}"),
                node: "node-0".into(),
                kind: DeviceKind::Gpu,
                power_watts: *watts,
                clock_mhz: None,
                clocks: clocks.clone(),
                min_power_limit_watts: floor,
                entry_mhz: None,
            })
            .collect();
        let observation = Observation {
            cap_watts: cap,
            threshold_percent: 90.0,
            devices,
        };
        allocator
            .plan(&observation)
            .iter()
            .filter_map(|t| t.power_budget_watts)
            .collect()
    }

    #[test]
    fn no_budget_below_what_the_gpu_can_enforce() {
        let budgets = budgets_for(900.0, Some(200.0));
        assert_eq!(budgets.len(), 4);
        assert!(budgets.iter().all(|b| *b >= 200.0), "{budgets:?}");
        let total: f64 = budgets.iter().sum();
        assert!(total <= 900.0 * 0.97 + 1e-6, "{budgets:?}");
        // The busy GPU gets what the floors leave.
        assert!((budgets[0] - (873.0 - 600.0)).abs() < 0.2, "{budgets:?}");
        // Without a reported floor, idle GPUs get budgets near their demand.
        let plain = budgets_for(900.0, None);
        assert!(plain[1] < 100.0, "{plain:?}");
        // Floors that add up to more than the cap: the plain split (held by
        // the clock loop), still within the cap.
        let over = budgets_for(500.0, Some(200.0));
        let total: f64 = over.iter().sum();
        assert!(total <= 500.0 * 0.97 + 1e-6, "{over:?}");
        assert!(over[1] < 200.0, "{over:?}");
    }

    #[test]
    fn settles_under_the_cap_from_uncapped() {
        for (loads, cap) in [
            (vec![1.0], 150.0),
            (vec![1.0, 1.0], 300.0),
            (vec![1.0, 0.3], 300.0),
            (vec![1.0, 0.9, 0.5, 0.2], 500.0),
        ] {
            let mut rig = rig(&loads, cap);
            assert!(rig.power() > cap);
            assert_settles(&rig.run(8), cap);
        }
    }

    #[test]
    fn busy_gpus_get_what_idle_ones_leave() {
        let mut rig = rig(&[1.0, 0.2], 300.0);
        rig.run(6);
        // The lightly loaded GPU is not throttled; the busy one gets the rest.
        assert_eq!(rig.clocks[1], climatik_sim_gpu::plant::MAX_CLOCK_MHZ);
        assert!(rig.clocks[0] < climatik_sim_gpu::plant::MAX_CLOCK_MHZ);
    }

    #[test]
    fn resettles_after_a_cap_change_and_relaxes_on_load_drop() {
        let mut rig = rig(&[1.0, 1.0], 400.0);
        assert_settles(&rig.run(6), 400.0);
        rig.cap = 260.0;
        assert_settles(&rig.run(6), 260.0);
        for gpu in &mut rig.gpus {
            gpu.load = 0.4;
        }
        let trace = rig.run(6);
        assert!(trace.iter().all(|p| *p <= 260.0), "{trace:?}");
        assert!(
            rig.clocks
                .iter()
                .all(|c| *c == climatik_sim_gpu::plant::MAX_CLOCK_MHZ),
            "{:?}",
            rig.clocks
        );
    }
}
