//! `budget-allocator`: splits the policy's watts across its GPUs by observed
//! demand and hands each GPU a `powerBudgetWatts` that the node agent holds
//! with its own ~1 Hz loop between controller updates.
//!
//! The budget is `target` percent of the cap less the measured CPU power.
//! A GPU's demand is its power plus a small margin; a GPU running at its
//! budget is assumed to want `headroom` percent more (it may be held back).
//! The split is max-min fair (water-filling): GPUs that want less than an
//! equal share get what they want, the rest share what is left. Budget left
//! over when every demand is met is shared in proportion to demand, so the
//! budgets always add up to the target. Clock targets stay at the maximum:
//! the budget does the limiting. CPU devices are measured, not tuned.

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
        Ok(Self {
            target: params.number("target", 97.0, 50.0..=100.0)? / 100.0,
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
        let shares = water_fill(&demands, total);

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

/// Max-min fair split of `total` across `demands`; any surplus is shared in
/// proportion to demand.
fn water_fill(demands: &[f64], total: f64) -> Vec<f64> {
    let sum: f64 = demands.iter().sum();
    if demands.is_empty() {
        return Vec::new();
    }
    if sum <= total {
        let scale = if sum > 0.0 { total / sum } else { 1.0 };
        return demands
            .iter()
            .map(|d| (d * scale).max(MIN_BUDGET_WATTS))
            .collect();
    }
    let mut order: Vec<usize> = (0..demands.len()).collect();
    order.sort_by(|a, b| demands[*a].total_cmp(&demands[*b]));
    let mut shares = vec![0.0; demands.len()];
    let mut left = total;
    for (served, &i) in order.iter().enumerate() {
        let equal = left / (demands.len() - served) as f64;
        shares[i] = demands[i].min(equal).max(MIN_BUDGET_WATTS);
        left -= shares[i];
    }
    shares
}

#[cfg(test)]
mod tests {
    use super::super::{BUDGET_ALLOCATOR, from_spec, sim::Rig};
    use super::water_fill;
    use climatik_api::CustomAlgorithm;

    fn rig(loads: &[f64], cap: f64) -> Rig {
        let spec = CustomAlgorithm {
            name: BUDGET_ALLOCATOR.to_string(),
            parameters: Default::default(),
        };
        match from_spec(Some(&spec)) {
            Ok(a) => Rig::new(a, loads, cap),
            Err(e) => panic!("{e}"),
        }
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
            water_fill(&[50.0, 300.0, 300.0], 350.0),
            vec![50.0, 150.0, 150.0]
        );
        assert_eq!(water_fill(&[50.0, 100.0], 300.0), vec![100.0, 200.0]);
        let shares = water_fill(&[10.0, 20.0, 400.0], 100.0);
        assert_eq!(shares, vec![10.0, 20.0, 70.0]);
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
        assert_eq!(rig.clocks[1], crate::plant::MAX_CLOCK_MHZ);
        assert!(rig.clocks[0] < crate::plant::MAX_CLOCK_MHZ);
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
            rig.clocks.iter().all(|c| *c == crate::plant::MAX_CLOCK_MHZ),
            "{:?}",
            rig.clocks
        );
    }
}
