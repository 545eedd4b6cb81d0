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
//! over the cap for a second or two. Each such GPU gets its floor first (any
//! other GPU the 1 W minimum) and the rest is water-filled over demand above
//! the floors. When the floors
//! alone exceed the cap, the plain split is used and the clock loop holds.
//!
//! No budget is above [`MAX_DEVICE_WATTS`], the most the NodeFrequencies
//! schema accepts: a large cap over a few GPUs adds up to less than the cap.

use std::collections::HashMap;

use climatik_api::{DeviceKind, bounds::MAX_DEVICE_WATTS};

use super::{Algorithm, AlgorithmError, Device, Observation, Params, Target};

/// Smallest budget written (the CRD requires at least 1 W).
const MIN_BUDGET_WATTS: f64 = 1.0;
/// A GPU within this share of its budget counts as held back by it.
const AT_BUDGET: f64 = 0.95;

#[derive(Debug, Clone)]
pub struct BudgetAllocator {
    target: f64,
    headroom: f64,
    /// `node-resplit`: the node agent re-splits each node's budgets.
    node_resplit: bool,
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
            node_resplit: params.flag("node-resplit", false)?,
            budgets: HashMap::new(),
        })
    }

    /// What a GPU wants: a GPU at its budget may be held back by it. The
    /// budget is the one last planned, else the one its entry holds (set
    /// before this algorithm existed: after a restart or a change of
    /// leader, a GPU held at its budget must not read as wanting only what
    /// it draws, which would hand its watts to idle GPUs for a period).
    fn demand(&self, device: &Device) -> f64 {
        let budget = self
            .budgets
            .get(&device.key())
            .copied()
            .or(device.entry_budget_watts.filter(|w| w.is_finite()));
        match budget {
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

    fn pools_node_budgets(&self) -> bool {
        self.node_resplit
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
        // A GPU without a reported floor still needs the schema's minimum:
        // water-filling above a floor of 0 W could hand it less.
        let floors: Vec<f64> = gpus
            .iter()
            .map(|d| {
                d.min_power_limit_watts
                    .filter(|w| w.is_finite())
                    .map_or(MIN_BUDGET_WATTS, |w| w.max(MIN_BUDGET_WATTS))
            })
            .collect();
        let floor_sum: f64 = floors.iter().sum();
        let shares = if floor_sum <= total {
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
                power_budget_watts: self.budgets.get(&d.key()).map(|b| {
                    // Within the range the NodeFrequencies schema accepts: a
                    // large cap over few GPUs would otherwise hand one more
                    // than any GPU draws, and the whole write be refused.
                    ((b * 10.0).floor() / 10.0).clamp(MIN_BUDGET_WATTS, MAX_DEVICE_WATTS)
                }),
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
    use super::{MAX_DEVICE_WATTS, MIN_BUDGET_WATTS, water_fill};
    use climatik_api::{CustomAlgorithm, DeviceKind};
    use proptest::prelude::*;

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
                entry_budget_watts: None,
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

    /// A new instance (a restarted recommender, a new leader) reads the
    /// budgets the entries hold: a GPU held at its budget still counts as
    /// held back, so it plans what the old instance would have.
    #[test]
    fn a_new_instance_continues_from_the_entries_budgets() {
        let loads = [1.0, 1.0, 0.3, 0.2];
        let (mut kept, mut restarted) = (rig(&loads, 500.0), rig(&loads, 500.0));
        kept.run(4);
        restarted.run(4);
        assert!(
            kept.budgets
                .iter()
                .zip(&kept.gpus)
                .zip(&kept.clocks)
                .any(|((b, g), c)| b.is_some_and(|b| g.power(f64::from(*c)) >= 0.95 * b)),
            "some GPU must be held at its budget: {:?}",
            kept.budgets
        );
        restarted.restart_algorithm(BUDGET_ALLOCATOR);
        kept.step();
        restarted.step();
        assert_eq!(restarted.budgets, kept.budgets);
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

    /// A budget-allocator handing out `target` percent of the cap.
    fn allocator(target: u32) -> Box<dyn super::super::Algorithm> {
        let spec = CustomAlgorithm {
            name: BUDGET_ALLOCATOR.to_string(),
            parameters: [("target".to_string(), target.to_string())].into(),
        };
        match from_spec(Some(&spec)) {
            Ok(allocator) => allocator,
            Err(e) => panic!("{e}"),
        }
    }

    /// A GPU's (power, lowest power limit) and a CPU's power.
    type Readings = (Vec<(f64, Option<f64>)>, Vec<f64>);

    fn observation(cap: f64, (gpus, cpus): &Readings) -> Observation {
        let Some(clocks) = Clocks::range(345, 1980, 15) else {
            panic!("clocks");
        };
        let device = |id: String, kind, power_watts, min_power_limit_watts| Device {
            id,
            node: "node-0".into(),
            kind,
            power_watts,
            clock_mhz: None,
            entry_mhz: None,
            entry_budget_watts: None,
            clocks: clocks.clone(),
            min_power_limit_watts,
        };
        let gpus = gpus
            .iter()
            .enumerate()
            .map(|(i, (watts, floor))| device(format!("GPU-{i}"), DeviceKind::Gpu, *watts, *floor));
        let cpus = cpus
            .iter()
            .enumerate()
            .map(|(i, watts)| device(format!("cpu-{i}"), DeviceKind::Cpu, *watts, None));
        Observation {
            cap_watts: cap,
            threshold_percent: 90.0,
            devices: gpus.chain(cpus).collect(),
        }
    }

    /// Readings a policy's status can hold (the schema keeps device power
    /// within 0..=MAX_DEVICE_WATTS); floors as NVML reports them.
    fn readings() -> impl Strategy<Value = Readings> {
        let watts = prop_oneof![4 => 0.0f64..1_000.0, 1 => 0.0f64..=MAX_DEVICE_WATTS];
        let floor = prop::option::of(prop_oneof![50.0f64..400.0, Just(0.0)]);
        (
            prop::collection::vec((watts.clone(), floor), 1..8),
            prop::collection::vec(watts, 0..3),
        )
    }

    /// Caps as a policy can have them (1 W ..= 10 MW), mostly in the range
    /// of a few GPUs.
    fn cap() -> impl Strategy<Value = f64> {
        prop_oneof![3 => 1u32..5_000, 1 => 1u32..=10_000_000].prop_map(f64::from)
    }

    fn budgets(targets: &[super::super::Target]) -> Vec<f64> {
        targets
            .iter()
            .filter_map(|t| t.power_budget_watts)
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn budgets_fit_the_cap_and_the_devices(
            readings in readings(),
            cap in cap(),
            target in 50u32..=100,
        ) {
            let observation = observation(cap, &readings);
            let targets = allocator(target).plan(&observation);
            prop_assert_eq!(targets.len(), observation.devices.len());
            for (t, d) in targets.iter().zip(&observation.devices) {
                prop_assert_eq!((&t.node, &t.id, t.kind), (&d.node, &d.id, d.kind));
                prop_assert!(d.clocks.as_slice().contains(&t.frequency_mhz));
                match (d.kind, t.power_budget_watts) {
                    (DeviceKind::Gpu, Some(b)) => {
                        // The range the NodeFrequencies schema accepts.
                        prop_assert!((MIN_BUDGET_WATTS..=MAX_DEVICE_WATTS).contains(&b), "{b}");
                    }
                    (DeviceKind::Gpu, None) => prop_assert!(false, "GPU {} without a budget", d.id),
                    (_, budget) => prop_assert_eq!(budget, None),
                }
            }
            // What the GPUs may draw: the policy's share of the cap less the
            // CPUs' power; only when that is below 1 W a GPU do the budgets
            // (at least 1 W each) add up to more.
            let gpus = readings.0.len() as f64;
            let room = cap * f64::from(target) / 100.0 - readings.1.iter().sum::<f64>();
            let planned: f64 = budgets(&targets).iter().sum();
            prop_assert!(planned <= room.max(gpus * MIN_BUDGET_WATTS) + 1e-9 * cap, "{planned} > {room}");
            // A GPU's own lowest limit is respected whenever the floors, and
            // 1 W for every GPU without one, fit (less the 0.1 W the budgets
            // are rounded down to).
            let floors: Vec<f64> = readings
                .0
                .iter()
                .map(|(_, f)| f.unwrap_or(0.0).max(MIN_BUDGET_WATTS))
                .collect();
            if floors.iter().sum::<f64>() <= room {
                for (b, f) in budgets(&targets).iter().zip(&floors) {
                    prop_assert!(*b >= f.min(MAX_DEVICE_WATTS) - 0.1, "{b} below the floor {f}");
                }
            }
        }

        #[test]
        fn a_higher_cap_never_hands_out_less(
            readings in readings(),
            caps in (cap(), cap()),
            target in 50u32..=100,
        ) {
            let (low, high) = (caps.0.min(caps.1), caps.0.max(caps.1));
            let under_low = budgets(&allocator(target).plan(&observation(low, &readings)));
            let under_high = budgets(&allocator(target).plan(&observation(high, &readings)));
            // Each budget is rounded down to 0.1 W; allow that per GPU.
            let slack = 0.1 * under_low.len() as f64 + 1e-9 * high;
            prop_assert!(
                under_high.iter().sum::<f64>() >= under_low.iter().sum::<f64>() - slack,
                "{under_low:?} -> {under_high:?}"
            );
            // Without floors (the split is plain max-min fairness) no single
            // GPU loses either.
            if readings.0.iter().all(|(_, floor)| floor.is_none()) {
                for (l, h) in under_low.iter().zip(&under_high) {
                    prop_assert!(h >= &(l - 0.1 - 1e-9 * high), "{under_low:?} -> {under_high:?}");
                }
            }
        }

        #[test]
        fn any_reading_gives_budgets_the_schema_accepts(
            gpus in prop::collection::vec(
                (any::<f64>(), prop::option::of(any::<f64>())),
                1..6,
            ),
            cpus in prop::collection::vec(any::<f64>(), 0..3),
            cap in cap(),
        ) {
            // Readings straight from Prometheus: negative, NaN or infinite
            // when an exporter misbehaves.
            let targets = allocator(97).plan(&observation(cap, &(gpus, cpus)));
            for b in budgets(&targets) {
                prop_assert!((MIN_BUDGET_WATTS..=MAX_DEVICE_WATTS).contains(&b), "{b}");
            }
        }
    }
}
