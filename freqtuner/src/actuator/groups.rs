//! Budget groups: each second, a group's total split across its GPUs by
//! the demand their last readings show, estimated and split by the rules
//! the loop bench measures ([`climatik_sim_gpu::resplit`]). Pure: the readings come in,
//! each GPU's share of its groups goes out.

use std::collections::BTreeMap;

use climatik_sim_gpu::resplit::{self, Demand, Reading};

use crate::{
    gpu::GpuInfo,
    merge::{BudgetGroup, GroupKey, Want},
};

/// Each grouped GPU's budget for this second: its share of every group it
/// is in (the smallest, when two policies group it). Only GPUs the node
/// has and that are wanted take part; the range is the GPU's power-limit
/// range, or `0..total` when it reports none.
pub fn shares(
    groups: &BTreeMap<GroupKey, BudgetGroup>,
    wants: &BTreeMap<String, Want>,
    device: impl Fn(&str) -> Option<GpuInfo>,
    seen: &BTreeMap<String, Reading>,
) -> BTreeMap<String, f64> {
    let mut out: BTreeMap<String, f64> = BTreeMap::new();
    for group in groups.values() {
        let members: Vec<(&String, Demand)> = group
            .gpus
            .iter()
            .filter_map(|uuid| {
                let want = wants.get(uuid)?;
                let info = device(uuid)?;
                let ceiling = info
                    .max_mhz()
                    .map_or(want.target_mhz, |m| m.min(want.target_mhz));
                let (lowest, highest) = info
                    .power_limits
                    .map_or((0.0, group.total_watts), |l| (l.min_watts, l.max_watts));
                Some((
                    uuid,
                    Demand::estimate(seen.get(uuid).copied(), ceiling, lowest, highest),
                ))
            })
            .collect();
        let demands: Vec<Demand> = members.iter().map(|(_, d)| *d).collect();
        for ((uuid, _), share) in members
            .iter()
            .zip(resplit::split(group.total_watts, &demands))
        {
            let entry = out.entry((*uuid).clone()).or_insert(share);
            *entry = entry.min(share);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::PowerLimits;

    fn want(target_mhz: u32) -> Want {
        Want {
            target_mhz,
            budget_watts: None,
            policies: vec!["ns/p".into()],
            notes: Vec::new(),
        }
    }

    fn info(uuid: &str) -> GpuInfo {
        GpuInfo {
            uuid: uuid.into(),
            index: 0,
            model: "sim".into(),
            pci_bus_id: String::new(),
            supported_mhz: vec![600, 1200, 1800],
            power_limits: Some(PowerLimits {
                min_watts: 100.0,
                max_watts: 700.0,
                default_watts: 700.0,
            }),
        }
    }

    fn group(total_watts: f64, gpus: &[&str]) -> BTreeMap<GroupKey, BudgetGroup> {
        BTreeMap::from([(
            ("ns/p".to_string(), "ns/p".to_string()),
            BudgetGroup {
                total_watts,
                gpus: gpus.iter().map(|g| g.to_string()).collect(),
            },
        )])
    }

    #[test]
    fn the_gpu_held_back_gets_more_and_the_total_is_kept() {
        let wants = BTreeMap::from([("a".to_string(), want(1800)), ("b".to_string(), want(1800))]);
        // a is held at half its ceiling drawing 300 W; b idles at its
        // ceiling drawing 150 W.
        let seen = BTreeMap::from([
            (
                "a".to_string(),
                Reading {
                    power_watts: 300.0,
                    clock_mhz: 900,
                },
            ),
            (
                "b".to_string(),
                Reading {
                    power_watts: 150.0,
                    clock_mhz: 1800,
                },
            ),
        ]);
        let got = shares(&group(600.0, &["a", "b"]), &wants, |u| Some(info(u)), &seen);
        assert!(got["a"] > 300.0 && got["a"] > got["b"], "{got:?}");
        assert!(got["a"] + got["b"] <= 600.0 + 1e-6, "{got:?}");
        assert!(got["b"] >= 100.0, "{got:?}");
    }

    #[test]
    fn without_readings_the_group_starts_even_and_absent_gpus_take_nothing() {
        let wants = BTreeMap::from([("a".to_string(), want(1800)), ("b".to_string(), want(1800))]);
        let got = shares(
            &group(600.0, &["a", "b", "gone"]),
            &wants,
            |u| (u != "gone").then(|| info(u)),
            &BTreeMap::new(),
        );
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(
            (got["a"] - 300.0).abs() < 1e-6 && (got["b"] - 300.0).abs() < 1e-6,
            "{got:?}"
        );
    }
}
