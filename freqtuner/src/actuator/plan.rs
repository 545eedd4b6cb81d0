//! The pure half of the actuator: from the merged wish for a device, what
//! the device offers and what this agent already set on it, decide what to
//! write and what to put back. Nothing here touches hardware, metrics or
//! logs, so the safety rules (never above the target, only named devices,
//! nothing rewritten that is already in force) are property-tested below.

use std::collections::BTreeMap;

use climatik_api::DeviceState;

use crate::{
    cpu::CpuApplied,
    fastloop::BudgetLoop,
    gpu::{GpuInfo, snap_clock},
    merge::Want,
};

/// What the agent has put in force on one GPU.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GpuSet {
    /// Clock locked, or `None` when the last write failed (state unknown)
    /// or nothing is locked.
    pub locked: Option<u32>,
    /// Power limit set in power-limit mode.
    pub power_limit: Option<f64>,
}

/// The devices to put back to their defaults: every one in `first` or
/// `second` that is no longer wanted, in that order. Duplicates are kept,
/// as the backends treat a second restore as a no-op.
pub fn stale<K: Ord>(
    first: impl IntoIterator<Item = K>,
    second: impl IntoIterator<Item = K>,
    wanted: &BTreeMap<K, Want>,
) -> Vec<K> {
    first
        .into_iter()
        .chain(second)
        .filter(|k| !wanted.contains_key(k))
        .collect()
}

/// An entry the plan will not act on, and the status that says why.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub state: DeviceState,
    pub message: String,
}

/// A GPU entry turned into a clock the device supports; the first step of
/// planning, before the power reading a budget needs is taken.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuTarget {
    /// The entry's target snapped to a supported clock, in MHz.
    pub target_mhz: u32,
    /// Why the target differs from the request, if it does.
    pub note: Option<String>,
    pub budget_watts: Option<f64>,
    /// Supported clocks, ascending.
    supported_mhz: Vec<u32>,
}

/// Snaps `want` to what `device` supports, or says why it cannot be acted
/// on (`None`: the backend has no GPU of that UUID).
pub fn gpu_target(uuid: &str, want: &Want, device: Option<&GpuInfo>) -> Result<GpuTarget, Refusal> {
    let Some(info) = device else {
        return Err(Refusal {
            state: DeviceState::Unsupported,
            message: format!("no GPU {uuid} on this node"),
        });
    };
    match snap_clock(i64::from(want.target_mhz), &info.supported_mhz) {
        Ok(snapped) => Ok(GpuTarget {
            target_mhz: snapped.mhz,
            note: snapped.note,
            budget_watts: want.budget_watts,
            supported_mhz: info.supported_mhz.clone(),
        }),
        Err(e) => Err(Refusal {
            state: if e.is_unsupported() {
                DeviceState::Unsupported
            } else {
                DeviceState::Failed
            },
            message: e.to_string(),
        }),
    }
}

/// The writes for one GPU in one pass, in the order they are made.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuPlan {
    /// The snapped target (the ceiling of the budget loop), in MHz.
    pub target_mhz: u32,
    /// The clock to have locked after this pass: the target, or with a
    /// budget, one loop step from the clock in force.
    pub clock_mhz: u32,
    pub budget_watts: Option<f64>,
    /// Reset the GPU first: it leaves power-limit mode. After a successful
    /// reset nothing is locked, so the clock is then always locked again.
    pub reset_first: bool,
    /// Lock `clock_mhz` even without a reset: it is not what is in force.
    pub lock: bool,
    /// The power limit to set (power-limit mode, changed budget).
    pub power_limit: Option<f64>,
    /// The lowest supported clock: a budget still exceeded there is held
    /// as well as it can be.
    pub floor_mhz: Option<u32>,
    /// Why the target differs from the request, if it does.
    pub note: Option<String>,
}

impl GpuTarget {
    /// Whether this pass reads the GPU's power before planning: only a
    /// budget needs it, and only on a step of the budget loop.
    pub fn samples_power(&self, step_budget: bool) -> bool {
        step_budget && self.budget_watts.is_some()
    }

    /// The writes that take the GPU from `previous` (what this agent set)
    /// to this target. `sample` is the power just read, when
    /// [`Self::samples_power`] asked for one and the read succeeded.
    pub fn plan(
        &self,
        previous: GpuSet,
        sample: Option<f64>,
        power_limit_mode: bool,
        control: &BudgetLoop,
    ) -> GpuPlan {
        let clock_mhz = match self.budget_watts {
            None => self.target_mhz,
            Some(budget) => {
                // Step from the clock in force, never above the target.
                let from = previous
                    .locked
                    .unwrap_or(self.target_mhz)
                    .min(self.target_mhz);
                match sample {
                    Some(watts) => control.next_clock(
                        from,
                        watts,
                        budget,
                        self.target_mhz,
                        &self.supported_mhz,
                    ),
                    None => from,
                }
            }
        };
        let wants_limit = self.budget_watts.filter(|_| power_limit_mode);
        GpuPlan {
            target_mhz: self.target_mhz,
            clock_mhz,
            budget_watts: self.budget_watts,
            reset_first: previous.power_limit.is_some() && wants_limit.is_none(),
            lock: previous.locked != Some(clock_mhz),
            power_limit: wants_limit.filter(|b| previous.power_limit != Some(*b)),
            floor_mhz: self.supported_mhz.first().copied(),
            note: self.note.clone(),
        }
    }
}

/// The write for one CPU in one pass.
#[derive(Debug, Clone, PartialEq)]
pub enum CpuPlan {
    /// The same target was applied before: report that, write nothing.
    Keep(CpuApplied),
    /// Set the ceiling to this many MHz.
    Set(u32),
}

/// `cached` is what this agent requested and got for the CPU last time.
pub fn cpu_plan(want: &Want, cached: Option<&(u32, CpuApplied)>) -> CpuPlan {
    match cached {
        Some((requested, applied)) if *requested == want.target_mhz => {
            CpuPlan::Keep(applied.clone())
        }
        _ => CpuPlan::Set(want.target_mhz),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    fn want(target_mhz: u32, budget_watts: Option<f64>) -> Want {
        Want {
            target_mhz,
            budget_watts,
            policies: vec!["ns/p".into()],
            notes: Vec::new(),
        }
    }

    fn info(supported_mhz: Vec<u32>) -> GpuInfo {
        GpuInfo {
            uuid: "GPU-a".into(),
            index: 0,
            model: "sim".into(),
            pci_bus_id: "00000000:07:00.0".into(),
            supported_mhz,
            power_limits: None,
        }
    }

    /// Supported clocks as a GPU reports them: distinct, ascending.
    fn clocks() -> impl Strategy<Value = Vec<u32>> {
        prop::collection::btree_set(100u32..3000, 1..12)
            .prop_map(|s: BTreeSet<u32>| s.into_iter().collect())
    }

    /// A previous state drawn from the GPU's own clocks (what an earlier
    /// pass could have locked).
    fn previous(supported: &[u32]) -> impl Strategy<Value = GpuSet> + use<> {
        let supported = supported.to_vec();
        (
            prop::option::of(prop::sample::select(supported)),
            prop::option::of(50.0f64..1000.0),
        )
            .prop_map(|(locked, power_limit)| GpuSet {
                locked,
                power_limit,
            })
    }

    fn case() -> impl Strategy<Value = (Vec<u32>, GpuSet, u32, Option<f64>, Option<f64>, bool)> {
        clocks().prop_flat_map(|supported| {
            (
                previous(&supported),
                Just(supported),
                1u32..4000,
                prop::option::of(50.0f64..1000.0),
                prop::option::of(0.0f64..1500.0),
                any::<bool>(),
            )
                .prop_map(|(prev, supported, target, budget, sample, mode)| {
                    (supported, prev, target, budget, sample, mode)
                })
        })
    }

    /// What a pass leaves in force when every write succeeds.
    fn after(previous: GpuSet, plan: &GpuPlan) -> GpuSet {
        let mut set = previous;
        if plan.reset_first {
            set = GpuSet::default();
        }
        if plan.reset_first || plan.lock {
            set.locked = Some(plan.clock_mhz);
        }
        if let Some(limit) = plan.power_limit {
            set.power_limit = Some(limit);
        }
        set
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn the_clock_is_supported_and_never_above_the_target(
            (supported, prev, target, budget, sample, mode) in case()
        ) {
            let gpu = info(supported.clone());
            let t = gpu_target("GPU-a", &want(target, budget), Some(&gpu))
                .expect("a GPU with clocks always gets a target");
            prop_assert!(supported.contains(&t.target_mhz));
            prop_assert!(t.target_mhz <= target.max(supported[0]));
            let plan = t.plan(prev, sample, mode, &BudgetLoop::default());
            prop_assert!(supported.contains(&plan.clock_mhz), "{plan:?}");
            prop_assert!(plan.clock_mhz <= plan.target_mhz, "{plan:?}");
            if budget.is_none() {
                prop_assert_eq!(plan.clock_mhz, plan.target_mhz);
            }
            prop_assert_eq!(plan.floor_mhz, supported.first().copied());
        }

        #[test]
        fn power_limits_are_set_only_in_power_limit_mode_and_left_by_a_reset(
            (supported, prev, target, budget, sample, mode) in case()
        ) {
            let gpu = info(supported);
            let t = gpu_target("GPU-a", &want(target, budget), Some(&gpu))
                .expect("target");
            let plan = t.plan(prev, sample, mode, &BudgetLoop::default());
            let wants_limit = mode && budget.is_some();
            prop_assert_eq!(plan.reset_first, prev.power_limit.is_some() && !wants_limit);
            if let Some(limit) = plan.power_limit {
                prop_assert!(wants_limit);
                prop_assert_eq!(Some(limit), budget);
                prop_assert_ne!(prev.power_limit, Some(limit));
            } else if wants_limit {
                prop_assert_eq!(prev.power_limit, budget);
            }
            prop_assert!(!(plan.reset_first && plan.power_limit.is_some()));
        }

        #[test]
        fn nothing_in_force_is_written_again(
            (supported, prev, target, budget, sample, mode) in case()
        ) {
            let gpu = info(supported);
            let t = gpu_target("GPU-a", &want(target, budget), Some(&gpu))
                .expect("target");
            let first = t.plan(prev, sample, mode, &BudgetLoop::default());
            prop_assert_eq!(first.lock, prev.locked != Some(first.clock_mhz));
            // Without a new power reading the next pass holds the clock, so
            // once the first plan is in force there is nothing left to do.
            let second = t.plan(after(prev, &first), None, mode, &BudgetLoop::default());
            prop_assert_eq!(second.clock_mhz, first.clock_mhz);
            prop_assert!(!second.reset_first && !second.lock, "{second:?}");
            prop_assert_eq!(second.power_limit, None);
        }

        #[test]
        fn only_devices_no_longer_wanted_are_restored(
            set in prop::collection::vec(0u32..16, 0..8),
            touched in prop::collection::vec(0u32..16, 0..8),
            wanted in prop::collection::btree_set(0u32..16, 0..8),
        ) {
            let wanted: BTreeMap<u32, Want> =
                wanted.into_iter().map(|k| (k, want(1000, None))).collect();
            let out = stale(set.iter().copied(), touched.iter().copied(), &wanted);
            prop_assert!(out.iter().all(|k| !wanted.contains_key(k)));
            for k in set.iter().chain(&touched) {
                prop_assert_eq!(out.contains(k), !wanted.contains_key(k));
            }
            let expected: Vec<u32> = set
                .iter()
                .chain(&touched)
                .copied()
                .filter(|k| !wanted.contains_key(k))
                .collect();
            prop_assert_eq!(out, expected);
        }

        #[test]
        fn a_cpu_is_written_only_when_its_target_changes(
            target in 1u32..6000,
            cached in prop::option::of((1u32..6000, 1u32..6000)),
        ) {
            let cached = cached.map(|(requested, got)| {
                (requested, CpuApplied { target_mhz: got, current_mhz: got, note: None })
            });
            match cpu_plan(&want(target, None), cached.as_ref()) {
                CpuPlan::Keep(applied) => {
                    let (requested, before) = cached.expect("kept only what was applied");
                    prop_assert_eq!(requested, target);
                    prop_assert_eq!(applied, before);
                }
                CpuPlan::Set(mhz) => {
                    prop_assert_eq!(mhz, target);
                    prop_assert!(cached.is_none_or(|(requested, _)| requested != target));
                }
            }
        }
    }

    #[test]
    fn entries_without_a_usable_device_are_refused() {
        let w = want(990, None);
        let refused = gpu_target("GPU-x", &w, None).expect_err("refused");
        assert_eq!(refused.state, DeviceState::Unsupported);
        assert_eq!(refused.message, "no GPU GPU-x on this node");
        let no_clocks = info(Vec::new());
        let refused = gpu_target("GPU-a", &w, Some(&no_clocks)).expect_err("refused");
        assert_eq!(refused.state, DeviceState::Unsupported);
    }

    #[test]
    fn a_budget_steps_from_the_clock_in_force() {
        let gpu = info(vec![300, 600, 900, 1200]);
        let t = gpu_target("GPU-a", &want(1200, Some(900.0)), Some(&gpu)).expect("target");
        let prev = GpuSet {
            locked: Some(1200),
            power_limit: None,
        };
        let control = BudgetLoop::default();
        // Over budget: one step down, and the lock follows.
        let down = t.plan(prev, Some(1000.0), false, &control);
        assert_eq!((down.clock_mhz, down.lock), (900, true));
        // No reading (between loop ticks): hold the clock in force.
        let hold = t.plan(prev, None, false, &control);
        assert_eq!((hold.clock_mhz, hold.lock), (1200, false));
        // In power-limit mode the budget also goes to the GPU's own limit.
        let limited = t.plan(prev, None, true, &control);
        assert_eq!(limited.power_limit, Some(900.0));
    }
}
