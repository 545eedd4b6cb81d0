//! Merging the entries of a NodeFrequencies into one target per device:
//! entries from different policies for the same device combine so the most
//! restrictive wins (lowest `targetFrequency`, lowest `powerBudgetWatts`);
//! entries whose `expiresAt` has passed (and that no entry Lease keeps
//! alive), or whose lifetime reached the agent's cap ([`crate::expiry`]),
//! are ignored. Entries of one policy
//! that name the same `budgetGroup` pool their budgets into one
//! [`BudgetGroup`], which the actuator re-splits by demand each second.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use climatik_api::NodeFrequenciesSpec;
use k8s_openapi::jiff::Timestamp;

use crate::expiry::{Deadline, Device, EntryKey, Lifetimes};

/// The merged wish for one device.
#[derive(Debug, Clone, PartialEq)]
pub struct Want {
    /// Lowest target among live entries, in MHz.
    pub target_mhz: u32,
    /// Lowest valid budget among live entries, in watts.
    pub budget_watts: Option<f64>,
    /// The policies whose entries are live, sorted.
    pub policies: Vec<String>,
    /// Entries that were skipped, and why.
    pub notes: Vec<String>,
}

/// A budget group on this node: the policy and the group's name, so two
/// policies never pool each other's watts.
pub type GroupKey = (String, String);

/// The budget a group of GPUs shares.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BudgetGroup {
    /// The sum of the live entries' `powerBudgetWatts`.
    pub total_watts: f64,
    /// The GPUs named, sorted, each once.
    pub gpus: Vec<String>,
}

/// Merged targets for a node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Desired {
    /// Per GPU; a grouped entry's budget is not in its GPU's `budget_watts`
    /// but in [`Self::groups`].
    pub gpus: BTreeMap<String, Want>,
    pub cpus: BTreeMap<u32, Want>,
    /// The budget groups with at least one live entry.
    pub groups: BTreeMap<GroupKey, BudgetGroup>,
    /// Devices named only by expired or invalid entries (their defaults are
    /// restored).
    pub inactive_gpus: BTreeSet<String>,
    pub inactive_cpus: BTreeSet<u32>,
    /// Entries that name no device this agent could ever act on.
    pub invalid: Vec<String>,
    /// When the first live entry stops counting (its deadline after the
    /// lifetime cap): until then, every device setting wanted now is
    /// still wanted. `None` when no entry is live.
    pub first_deadline: Option<Timestamp>,
    /// The entries that count now.
    pub live: BTreeSet<EntryKey>,
    /// The entries still in the spec whose deadline has passed: one that
    /// was live in the pass before expired without being renewed.
    pub lapsed: BTreeSet<EntryKey>,
}

impl Desired {
    fn live_until(&mut self, deadline: Timestamp) {
        self.first_deadline = Some(self.first_deadline.map_or(deadline, |d| d.min(deadline)));
    }
}

/// Why a capped entry still counts, for the device's status message.
fn note_capped(want: Option<&mut Want>, policy: &str, deadline: &Deadline, max_ttl: Duration) {
    if let (Some(want), true) = (want, deadline.capped) {
        want.notes.push(format!(
            "expiresAt of {policy} is more than {}s away: held until {} unless renewed",
            max_ttl.as_secs(),
            deadline.at
        ));
    }
}

fn add(
    wants: &mut BTreeMap<String, Want>,
    key: String,
    target: i32,
    budget: Option<f64>,
    policy: &str,
) {
    let Ok(target) = u32::try_from(target) else {
        // Unreachable through the CRD's schema (minimum 1); kept safe anyway.
        return;
    };
    if target == 0 {
        return;
    }
    let budget_ok = budget.filter(|b| b.is_finite() && *b > 0.0);
    let want = wants.entry(key).or_insert_with(|| Want {
        target_mhz: target,
        budget_watts: None,
        policies: Vec::new(),
        notes: Vec::new(),
    });
    want.target_mhz = want.target_mhz.min(target);
    if let Some(b) = budget_ok {
        want.budget_watts = Some(want.budget_watts.map_or(b, |w| w.min(b)));
    } else if let Some(b) = budget {
        want.notes
            .push(format!("ignored power budget {b} W of {policy}"));
    }
    want.policies.push(policy.to_string());
    want.policies.sort();
    want.policies.dedup();
}

/// Merges the live entries of `spec` at `now`; `lifetimes` remembers when
/// entries beyond the lifetime cap were first seen.
pub fn merge(spec: &NodeFrequenciesSpec, now: Timestamp, lifetimes: &mut Lifetimes) -> Desired {
    let mut desired = Desired::default();
    let max_ttl = lifetimes.max_ttl();
    let mut pass = lifetimes.pass(now);
    let mut named_gpus = BTreeSet::new();
    for entry in &spec.gpu_frequencies {
        named_gpus.insert(entry.gpu_id.clone());
        if entry.target_frequency <= 0 {
            desired.invalid.push(format!(
                "GPU {} ({}): target {} MHz is not positive",
                entry.gpu_id, entry.policy, entry.target_frequency
            ));
            continue;
        }
        let key = (Device::Gpu(entry.gpu_id.clone()), entry.policy.clone());
        let deadline = pass.deadline(key.clone(), entry.expires_at.0, entry.kept_by_lease);
        if deadline.at <= now {
            desired.lapsed.insert(key);
            continue;
        }
        desired.live.insert(key);
        desired.live_until(deadline.at);
        let pooled = entry.budget_group.as_ref().zip(
            entry
                .power_budget_watts
                .filter(|b| b.is_finite() && *b > 0.0),
        );
        if let Some((group, budget)) = pooled {
            let group = desired
                .groups
                .entry((entry.policy.clone(), group.clone()))
                .or_default();
            group.total_watts += budget;
            if let Err(at) = group.gpus.binary_search(&entry.gpu_id) {
                group.gpus.insert(at, entry.gpu_id.clone());
            }
        }
        add(
            &mut desired.gpus,
            entry.gpu_id.clone(),
            entry.target_frequency,
            entry.power_budget_watts.filter(|_| pooled.is_none()),
            &entry.policy,
        );
        let want = desired.gpus.get_mut(&entry.gpu_id);
        note_capped(want, &entry.policy, &deadline, max_ttl);
    }
    desired.inactive_gpus = named_gpus
        .into_iter()
        .filter(|g| !desired.gpus.contains_key(g))
        .collect();

    let mut cpus: BTreeMap<String, Want> = BTreeMap::new();
    let mut named_cpus = BTreeSet::new();
    for entry in &spec.cpu_frequencies {
        let Ok(cpu) = u32::try_from(entry.cpu_id) else {
            desired.invalid.push(format!(
                "CPU {} ({}): not a CPU number",
                entry.cpu_id, entry.policy
            ));
            continue;
        };
        named_cpus.insert(cpu);
        if entry.target_frequency <= 0 {
            desired.invalid.push(format!(
                "CPU {cpu} ({}): target {} MHz is not positive",
                entry.policy, entry.target_frequency
            ));
            continue;
        }
        let key = (Device::Cpu(cpu), entry.policy.clone());
        let deadline = pass.deadline(key.clone(), entry.expires_at.0, entry.kept_by_lease);
        if deadline.at <= now {
            desired.lapsed.insert(key);
            continue;
        }
        desired.live.insert(key);
        desired.live_until(deadline.at);
        add(
            &mut cpus,
            cpu.to_string(),
            entry.target_frequency,
            None,
            &entry.policy,
        );
        note_capped(
            cpus.get_mut(&cpu.to_string()),
            &entry.policy,
            &deadline,
            max_ttl,
        );
    }
    pass.finish();
    desired.cpus = cpus
        .into_iter()
        .filter_map(|(k, v)| Some((k.parse().ok()?, v)))
        .collect();
    desired.inactive_cpus = named_cpus
        .into_iter()
        .filter(|c| !desired.cpus.contains_key(c))
        .collect();
    desired
}

#[cfg(test)]
mod tests {
    use climatik_api::{CpuFrequency, GpuFrequency};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use proptest::prelude::*;

    use super::*;
    use crate::expiry::DEFAULT_MAX_ENTRY_TTL;

    /// One merge with a fresh agent's memory.
    fn merge(spec: &NodeFrequenciesSpec, now: Timestamp) -> Desired {
        super::merge(spec, now, &mut Lifetimes::default())
    }

    fn gpu(id: &str, target: i32, budget: Option<f64>, policy: &str, expires: i64) -> GpuFrequency {
        GpuFrequency {
            gpu_id: id.into(),
            target_frequency: target,
            power_budget_watts: budget,
            budget_group: None,
            policy: policy.into(),
            expires_at: at(expires),
            kept_by_lease: false,
        }
    }

    fn cpu(id: i32, target: i32, policy: &str, expires: i64) -> CpuFrequency {
        CpuFrequency {
            cpu_id: id,
            target_frequency: target,
            policy: policy.into(),
            expires_at: at(expires),
            kept_by_lease: false,
        }
    }

    fn at(second: i64) -> Time {
        Time(Timestamp::from_second(second).expect("ts"))
    }

    /// An expiry a renewing writer would set: shortly after [`now`].
    const RENEWED: i64 = 1_060;

    fn now() -> Timestamp {
        Timestamp::from_second(1_000).expect("ts")
    }

    #[test]
    fn lowest_target_and_lowest_budget_win() {
        let spec = NodeFrequenciesSpec {
            node_name: "n".into(),
            gpu_frequencies: vec![
                gpu("GPU-a", 1500, Some(400.0), "ns/p1", RENEWED),
                gpu("GPU-a", 1200, None, "ns/p2", 2_000),
                gpu("GPU-a", 1800, Some(300.0), "manual", RENEWED),
                gpu("GPU-b", 900, None, "ns/p1", RENEWED),
            ],
            cpu_frequencies: vec![
                cpu(0, 2000, "ns/p1", RENEWED),
                cpu(0, 1800, "ns/p2", RENEWED),
            ],
        };
        let d = merge(&spec, now());
        let a = &d.gpus["GPU-a"];
        assert_eq!(a.target_mhz, 1200);
        assert_eq!(a.budget_watts, Some(300.0));
        assert_eq!(a.policies, vec!["manual", "ns/p1", "ns/p2"]);
        assert_eq!(d.gpus["GPU-b"].target_mhz, 900);
        assert_eq!(d.cpus[&0].target_mhz, 1800);
        assert!(d.inactive_gpus.is_empty() && d.inactive_cpus.is_empty());
    }

    #[test]
    fn grouped_budgets_pool_per_policy_and_group_and_leave_the_gpu_budget_alone() {
        let grouped =
            |id: &str, budget: f64, policy: &str, group: &str, expires: i64| GpuFrequency {
                budget_group: Some(group.into()),
                ..gpu(id, 1500, Some(budget), policy, expires)
            };
        let spec = NodeFrequenciesSpec {
            node_name: "n".into(),
            gpu_frequencies: vec![
                grouped("GPU-a", 300.0, "ns/p1", "g", RENEWED),
                grouped("GPU-b", 400.0, "ns/p1", "g", RENEWED),
                // Same group name, another policy: a group of its own.
                grouped("GPU-b", 250.0, "ns/p2", "g", RENEWED),
                // Expired: not in the total.
                grouped("GPU-c", 500.0, "ns/p1", "g", 10),
                gpu("GPU-b", 1500, Some(380.0), "manual", RENEWED),
            ],
            cpu_frequencies: vec![],
        };
        let d = merge(&spec, now());
        let p1 = &d.groups[&("ns/p1".to_string(), "g".to_string())];
        assert_eq!(p1.total_watts, 700.0);
        assert_eq!(p1.gpus, vec!["GPU-a", "GPU-b"]);
        assert_eq!(
            d.groups[&("ns/p2".to_string(), "g".to_string())].total_watts,
            250.0
        );
        // Only the ungrouped entry's budget is the GPU's own.
        assert_eq!(d.gpus["GPU-a"].budget_watts, None);
        assert_eq!(d.gpus["GPU-b"].budget_watts, Some(380.0));
    }

    #[test]
    fn expired_entries_are_ignored() {
        let spec = NodeFrequenciesSpec {
            node_name: "n".into(),
            gpu_frequencies: vec![
                gpu("GPU-a", 600, Some(100.0), "ns/old", 999),
                gpu("GPU-a", 1500, None, "ns/live", 1_001),
                gpu("GPU-b", 900, None, "ns/old", 1_000),
            ],
            cpu_frequencies: vec![cpu(3, 1000, "ns/old", 10)],
        };
        let d = merge(&spec, now());
        assert_eq!(d.gpus["GPU-a"].target_mhz, 1500);
        assert_eq!(d.gpus["GPU-a"].budget_watts, None);
        assert!(!d.gpus.contains_key("GPU-b"));
        assert_eq!(d.inactive_gpus, ["GPU-b".to_string()].into());
        assert!(d.cpus.is_empty());
        assert_eq!(d.inactive_cpus, [3].into());
        assert_eq!(
            d.first_deadline,
            Some(at(1_001).0),
            "only live entries count"
        );
    }

    #[test]
    fn the_first_deadline_is_the_earliest_live_one_after_the_lifetime_cap() {
        let far = 1_000_000;
        let spec = NodeFrequenciesSpec {
            node_name: "n".into(),
            gpu_frequencies: vec![gpu("GPU-a", 1500, None, "manual", far)],
            cpu_frequencies: vec![cpu(0, 2000, "ns/p", 1_000 + 700)],
        };
        let d = merge(&spec, now());
        // The far entry counts until the cap (600 s after it was seen).
        assert_eq!(d.first_deadline, Some(at(1_600).0));
        let empty = NodeFrequenciesSpec {
            node_name: "n".into(),
            gpu_frequencies: vec![],
            cpu_frequencies: vec![],
        };
        let none = merge(&empty, now());
        assert_eq!(none.first_deadline, None);
    }

    #[test]
    fn nonsense_entries_are_reported_not_applied() {
        let spec = NodeFrequenciesSpec {
            node_name: "n".into(),
            gpu_frequencies: vec![
                gpu("GPU-a", 0, None, "x", RENEWED),
                gpu("GPU-b", 1000, Some(f64::NAN), "x", RENEWED),
            ],
            cpu_frequencies: vec![cpu(-1, 1000, "x", RENEWED)],
        };
        let d = merge(&spec, now());
        assert_eq!(d.invalid.len(), 2);
        assert!(!d.gpus.contains_key("GPU-a"));
        assert_eq!(d.gpus["GPU-b"].budget_watts, None);
        assert_eq!(d.gpus["GPU-b"].notes.len(), 1);
    }

    #[test]
    fn a_far_future_entry_ends_max_ttl_after_it_was_first_seen() {
        let far = 10_000_000;
        let spec = NodeFrequenciesSpec {
            node_name: "n".into(),
            gpu_frequencies: vec![gpu("GPU-a", 900, None, "manual", far)],
            cpu_frequencies: vec![cpu(1, 1000, "manual", far)],
        };
        let mut lifetimes = Lifetimes::default();
        let first = super::merge(&spec, now(), &mut lifetimes);
        assert_eq!(first.gpus["GPU-a"].target_mhz, 900);
        assert!(
            first.gpus["GPU-a"].notes[0].contains("held until"),
            "{first:?}"
        );
        let before_cap = now() + DEFAULT_MAX_ENTRY_TTL - Duration::from_secs(1);
        let d = super::merge(&spec, before_cap, &mut lifetimes);
        assert_eq!(d.cpus[&1].target_mhz, 1000);
        let later = now() + DEFAULT_MAX_ENTRY_TTL + Duration::from_secs(1);
        let d = super::merge(&spec, later, &mut lifetimes);
        assert!(d.gpus.is_empty() && d.cpus.is_empty(), "{d:?}");
        assert_eq!(d.inactive_gpus, ["GPU-a".to_string()].into());
        assert_eq!(d.inactive_cpus, [1].into());

        // Renewed by its writer (a new expiresAt): live again, for another
        // max TTL.
        let renewed = NodeFrequenciesSpec {
            gpu_frequencies: vec![gpu("GPU-a", 900, None, "manual", far + 1)],
            ..spec
        };
        let d = super::merge(&renewed, later, &mut lifetimes);
        assert_eq!(d.gpus["GPU-a"].target_mhz, 900);
    }

    /// Seconds around [`now`] an expiry is drawn from: expired, live within
    /// the lifetime cap, or far beyond it (held until the cap).
    fn expiry() -> impl Strategy<Value = i64> {
        prop_oneof![0i64..=1_000, 1_001i64..=1_600, Just(10_000_000i64),]
    }

    /// A spec as the API server would store it: one entry per (device,
    /// policy), as the list-map keys require; targets within the schema
    /// and, for a few, out of it; budgets of every kind a writer could send.
    fn spec() -> impl Strategy<Value = NodeFrequenciesSpec> {
        let target = prop_oneof![8 => 1i32..4_000, 1 => -5i32..=0];
        let budget = prop::option::of(prop_oneof![
            4 => 1.0f64..1_000.0,
            1 => Just(0.0),
            1 => Just(-50.0),
            1 => Just(f64::NAN),
        ]);
        let gpus = prop::collection::btree_map(
            (0u8..3, 0u8..4),
            (target.clone(), budget, expiry()),
            0..10,
        );
        let cpus = prop::collection::btree_map((-1i32..3, 0u8..4), (target, expiry()), 0..10);
        (gpus, cpus).prop_map(|(gpus, cpus)| NodeFrequenciesSpec {
            node_name: "n".into(),
            gpu_frequencies: gpus
                .into_iter()
                .map(|((g, p), (t, b, e))| gpu(&format!("GPU-{g}"), t, b, &format!("ns/p{p}"), e))
                .collect(),
            cpu_frequencies: cpus
                .into_iter()
                .map(|((c, p), (t, e))| cpu(c, t, &format!("ns/p{p}"), e))
                .collect(),
        })
    }

    /// A spec and the same entries in another order.
    fn spec_and_shuffled() -> impl Strategy<Value = (NodeFrequenciesSpec, NodeFrequenciesSpec)> {
        spec().prop_flat_map(|spec| {
            let gpus = Just(spec.gpu_frequencies.clone()).prop_shuffle();
            let cpus = Just(spec.cpu_frequencies.clone()).prop_shuffle();
            (Just(spec), gpus, cpus).prop_map(|(spec, gpu_frequencies, cpu_frequencies)| {
                let shuffled = NodeFrequenciesSpec {
                    gpu_frequencies,
                    cpu_frequencies,
                    ..spec.clone()
                };
                (spec, shuffled)
            })
        })
    }

    /// `desired` with its lists in a canonical order, for comparing merges
    /// whose notes were collected in a different entry order.
    fn canonical(mut desired: Desired) -> Desired {
        for want in desired.gpus.values_mut().chain(desired.cpus.values_mut()) {
            want.notes.sort();
        }
        desired.invalid.sort();
        desired
    }

    /// Whether an entry counts at `now`: the schema's target and an expiry
    /// not yet passed (a far expiry counts on a first sighting).
    fn live(target: i32, expires: &Time) -> bool {
        target > 0 && expires.0 > now()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn the_most_restrictive_live_entry_wins(spec in spec()) {
            let d = merge(&spec, now());
            for (id, want) in &d.gpus {
                let live: Vec<&GpuFrequency> = spec
                    .gpu_frequencies
                    .iter()
                    .filter(|e| &e.gpu_id == id && live(e.target_frequency, &e.expires_at))
                    .collect();
                prop_assert!(!live.is_empty(), "{id} merged from no live entry: {d:?}");
                // Never above any live entry, and what one of them asked for.
                prop_assert!(live.iter().all(|e| i64::from(want.target_mhz) <= i64::from(e.target_frequency)));
                prop_assert!(live.iter().any(|e| i64::from(want.target_mhz) == i64::from(e.target_frequency)));
                let budgets: Vec<f64> = live
                    .iter()
                    .filter_map(|e| e.power_budget_watts)
                    .filter(|b| b.is_finite() && *b > 0.0)
                    .collect();
                match want.budget_watts {
                    Some(b) => {
                        prop_assert!(budgets.iter().all(|l| b <= *l));
                        prop_assert!(budgets.contains(&b));
                    }
                    None => prop_assert!(budgets.is_empty(), "{budgets:?} dropped"),
                }
                let mut policies: Vec<String> = live.iter().map(|e| e.policy.clone()).collect();
                policies.sort();
                prop_assert_eq!(&want.policies, &policies);
            }
            for (id, want) in &d.cpus {
                let live: Vec<&CpuFrequency> = spec
                    .cpu_frequencies
                    .iter()
                    .filter(|e| i64::from(e.cpu_id) == i64::from(*id) && live(e.target_frequency, &e.expires_at))
                    .collect();
                prop_assert!(live.iter().all(|e| i64::from(want.target_mhz) <= i64::from(e.target_frequency)));
                prop_assert!(live.iter().any(|e| i64::from(want.target_mhz) == i64::from(e.target_frequency)));
            }
            // Every device with a live entry is merged; the others that are
            // named are restored.
            for e in &spec.gpu_frequencies {
                let merged = d.gpus.contains_key(&e.gpu_id);
                if live(e.target_frequency, &e.expires_at) {
                    prop_assert!(merged);
                } else {
                    prop_assert!(merged || d.inactive_gpus.contains(&e.gpu_id));
                }
                prop_assert!(!(merged && d.inactive_gpus.contains(&e.gpu_id)));
            }
            for e in &spec.cpu_frequencies {
                let Ok(id) = u32::try_from(e.cpu_id) else { continue };
                let merged = d.cpus.contains_key(&id);
                prop_assert_eq!(merged, spec.cpu_frequencies.iter().any(|o| o.cpu_id == e.cpu_id && live(o.target_frequency, &o.expires_at)));
                prop_assert_eq!(merged, !d.inactive_cpus.contains(&id));
            }
        }

        #[test]
        fn the_order_of_entries_does_not_matter((spec, shuffled) in spec_and_shuffled()) {
            prop_assert_eq!(canonical(merge(&spec, now())), canonical(merge(&shuffled, now())));
        }

        #[test]
        fn expired_entries_never_count(spec in spec(), expired in spec()) {
            // The expired entries come from policies the spec does not
            // have, so the list-map keys stay unique.
            let stale = |policy: &str| format!("{policy}-old");
            let mut with_expired = spec.clone();
            with_expired.gpu_frequencies.extend(expired.gpu_frequencies.into_iter().map(|e| GpuFrequency {
                policy: stale(&e.policy),
                expires_at: at(1_000),
                kept_by_lease: false,
                ..e
            }));
            with_expired.cpu_frequencies.extend(expired.cpu_frequencies.into_iter().map(|e| CpuFrequency {
                policy: stale(&e.policy),
                expires_at: at(999),
                kept_by_lease: false,
                ..e
            }));
            let plain = merge(&spec, now());
            let d = merge(&with_expired, now());
            prop_assert_eq!(d.gpus, plain.gpus);
            prop_assert_eq!(d.cpus, plain.cpus);
        }

        #[test]
        fn another_live_entry_only_restricts(spec in spec(), extra in spec()) {
            let mut more = spec.clone();
            more.gpu_frequencies.extend(extra.gpu_frequencies.into_iter().map(|e| GpuFrequency {
                policy: format!("{}-more", e.policy),
                ..e
            }));
            more.cpu_frequencies.extend(extra.cpu_frequencies.into_iter().map(|e| CpuFrequency {
                policy: format!("{}-more", e.policy),
                ..e
            }));
            let before = merge(&spec, now());
            let after = merge(&more, now());
            for (id, want) in &before.gpus {
                let now_want = &after.gpus[id];
                prop_assert!(now_want.target_mhz <= want.target_mhz);
                if let Some(b) = want.budget_watts {
                    prop_assert!(now_want.budget_watts.is_some_and(|n| n <= b));
                }
            }
            for (id, want) in &before.cpus {
                prop_assert!(after.cpus[id].target_mhz <= want.target_mhz);
            }
        }

        #[test]
        fn merging_again_changes_nothing(spec in spec(), later in 0u64..700) {
            let mut lifetimes = Lifetimes::default();
            let first = super::merge(&spec, now(), &mut lifetimes);
            prop_assert_eq!(&super::merge(&spec, now(), &mut lifetimes), &first);
            // Later, a held entry keeps the deadline of its first sighting.
            let t = now() + Duration::from_secs(later);
            let again = super::merge(&spec, t, &mut lifetimes);
            prop_assert_eq!(super::merge(&spec, t, &mut lifetimes), again);
        }
    }
}
