//! What the budget controller decides for one PowerBudget, as pure
//! functions of what it read: whether the budget is valid, which policies
//! it arbitrates, the allocations it writes to them and the status it
//! writes to the budget. [`crate::budget`] reads the cluster and writes
//! the results; everything here is unit-tested without one.
//!
//! Budgets may nest (`spec.parent`): a valid child draws its whole
//! `spec.watts` from its parent, which arbitrates what is left among the
//! policies outside its children. A policy belongs to the deepest budget
//! that covers its nodes; a policy whose nodes lie in budgets that are not
//! nested in each other belongs to none, and no budget lowers its cap.

use std::collections::{BTreeMap, BTreeSet};

use climatik_api::{BudgetAllocation, PowerBudgetStatus, names::conditions};

use crate::{
    arbitration::{self, Claim},
    conditions::Decided,
};

/// What decides a budget's place in the tree: its parent and the nodes its
/// selector covers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Shape {
    pub parent: Option<String>,
    pub nodes: BTreeSet<String>,
}

/// Why a budget is not arbitrated.
#[derive(Debug, Clone, PartialEq)]
pub struct Invalid {
    pub reason: &'static str,
    pub message: String,
}

/// Checks the chain of parents from `name` up: every parent exists, none
/// repeats, and each budget's nodes lie inside its parent's. An invalid
/// ancestor makes its descendants invalid too: what they draw from is not
/// arbitrated.
pub fn validity(name: &str, budgets: &BTreeMap<String, Shape>) -> Result<(), Invalid> {
    let mut seen = BTreeSet::from([name.to_string()]);
    let mut child = name;
    while let Some(shape) = budgets.get(child) {
        let Some(parent) = shape.parent.as_deref() else {
            return Ok(());
        };
        let Some(parent_shape) = budgets.get(parent) else {
            return Err(Invalid {
                reason: if child == name {
                    "UnknownParent"
                } else {
                    "InvalidAncestor"
                },
                message: format!("budget {child}'s parent {parent} does not exist"),
            });
        };
        if !seen.insert(parent.to_string()) {
            return Err(Invalid {
                reason: "ParentCycle",
                message: format!("the parents of budget {name} form a cycle through {parent}"),
            });
        }
        if let Some(outside) = shape.nodes.difference(&parent_shape.nodes).next() {
            return Err(Invalid {
                reason: if child == name {
                    "NotInsideParent"
                } else {
                    "InvalidAncestor"
                },
                message: format!(
                    "node {outside} of budget {child} is not covered by its parent {parent}"
                ),
            });
        }
        child = parent;
    }
    Ok(())
}

/// Which valid budget arbitrates a policy on `nodes`.
#[derive(Debug, Clone, PartialEq)]
pub enum Coverage {
    /// No budget covers any of its nodes.
    None,
    /// The deepest budget covering its nodes.
    One(String),
    /// Its nodes lie in budgets not nested in each other: none arbitrates
    /// it.
    Spans(Vec<String>),
}

/// The budget that arbitrates a policy on `nodes` among the `valid`
/// budgets: of those covering any of its nodes, the one every other is an
/// ancestor of.
pub fn coverage(nodes: &BTreeSet<String>, valid: &BTreeMap<String, Shape>) -> Coverage {
    let covering: Vec<&String> = valid
        .iter()
        .filter(|(_, shape)| !shape.nodes.is_disjoint(nodes))
        .map(|(name, _)| name)
        .collect();
    let ancestors = |name: &str| {
        let mut chain = BTreeSet::new();
        let mut at = valid.get(name).and_then(|s| s.parent.clone());
        while let Some(parent) = at {
            if !chain.insert(parent.clone()) {
                break;
            }
            at = valid.get(&parent).and_then(|s| s.parent.clone());
        }
        chain
    };
    let deepest = covering.iter().find(|candidate| {
        let above = ancestors(candidate);
        covering
            .iter()
            .all(|other| other == *candidate || above.contains(*other))
    });
    match (covering.is_empty(), deepest) {
        (true, _) => Coverage::None,
        (false, Some(name)) => Coverage::One((*name).clone()),
        (false, None) => Coverage::Spans(covering.into_iter().cloned().collect()),
    }
}

/// A policy the budget arbitrates, as its spec and status say.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub namespace: String,
    pub name: String,
    pub priority: i32,
    /// `spec.minWatts` (0 without one).
    pub min_watts: f64,
    /// `spec.powerCapLimit`.
    pub cap_watts: f64,
    /// `status.currentPower`, when measured.
    pub measured_watts: Option<f64>,
    /// `status.allocatedWatts` as this controller last wrote it.
    pub allocated_watts: Option<i64>,
    /// The demand the budget's status last recorded for it, so an unused
    /// probe is remembered ([`arbitration::estimate_demand`]).
    pub previous_demand_watts: Option<f64>,
    /// `spec.cappingThreshold` as a fraction: the algorithms hold a
    /// capped policy near this share of its effective cap, not at the cap
    /// itself, so its demand is its measured power over this share.
    pub held_share: f64,
}

/// What one period of a budget starts from.
#[derive(Debug, Clone, PartialEq)]
pub struct Inputs {
    /// `spec.watts`.
    pub watts: f64,
    /// `spec.reservedWatts`.
    pub reserved_watts: f64,
    /// The `spec.watts` of its valid children, drawn in full.
    pub children_watts: f64,
    /// Measured power of the covered GPUs none of its members holds;
    /// `None` when Prometheus could not be asked.
    pub unmanaged_watts: Option<f64>,
    /// The lowest power limits of the members' GPUs on its own nodes
    /// (outside its children), as the node agents report them.
    pub floor_watts: f64,
    /// Share of an allocation a policy held at it is assumed to want more.
    pub probe_fraction: f64,
    /// `spec.capUnmanaged`: report the share the unmanaged GPUs would get
    /// as the lowest priority ([`unmanaged_share`]).
    pub cap_unmanaged: bool,
    pub members: Vec<Member>,
}

/// What the controller writes for one budget.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The budget's status, conditions not rendered yet.
    pub status: PowerBudgetStatus,
    pub conditions: Vec<Decided>,
    /// `status.allocatedWatts` of each member, in `members`' order; `None`
    /// leaves the member to its own cap.
    pub allocations: Vec<Option<i64>>,
    pub overcommitted: bool,
}

/// Decides a valid budget's period: the watts to share, each member's
/// allocation and the status.
///
/// Allocations move so the sum of what the node agents may hold never
/// exceeds the budget, whether they run on this period's targets or the
/// last one's: cuts apply at once, raises only out of what the members'
/// previous allocations and this period's cuts leave free. Watts a cut
/// frees reach the others one period later. A member never allocated
/// before counts at its own cap until it is.
pub fn decide(inputs: &Inputs) -> Decision {
    let members = &inputs.members;
    let Some(unmanaged) = inputs.unmanaged_watts else {
        // Without the unmanaged power the room to share is unknown: hold
        // the allocations the members have.
        let allocations: Vec<Option<i64>> = members.iter().map(|m| m.allocated_watts).collect();
        let allocated: i64 = allocations.iter().flatten().sum();
        return Decision {
            status: PowerBudgetStatus {
                allocations: allocation_list(members, &allocations, &[]),
                headroom_watts: None,
                ..Default::default()
            },
            conditions: vec![Decided::new(
                conditions::METRICS_AVAILABLE,
                false,
                "PrometheusUnavailable",
                format!(
                    "the power of the covered GPUs no policy selects is unknown; {allocated} W of allocations held"
                ),
            )],
            allocations,
            overcommitted: false,
        };
    };
    let available =
        (inputs.watts - inputs.reserved_watts - inputs.children_watts - unmanaged).max(0.0);
    let measured_policies: f64 = members.iter().filter_map(|m| m.measured_watts).sum();
    let measured = measured_policies + unmanaged + inputs.reserved_watts;
    let mut decided = vec![Decided::new(
        conditions::METRICS_AVAILABLE,
        true,
        "MetricsFound",
        format!("{unmanaged:.0} W drawn by covered GPUs no policy selects"),
    )];
    let within = measured <= inputs.watts;
    decided.push(Decided::new(
        conditions::WITHIN_BUDGET,
        within,
        if within { "WithinBudget" } else { "OverBudget" },
        format!(
            "{measured:.0} W measured (policies, unmanaged GPUs, reserved) of {:.0} W",
            inputs.watts
        ),
    ));
    if available < inputs.floor_watts {
        let message = format!(
            "{available:.0} W to share is below the {:.0} W the covered GPUs' lowest power limits add up to; policies keep their own caps",
            inputs.floor_watts
        );
        decided.push(Decided::new(
            conditions::VALID,
            false,
            "BelowMinimumPowerLimits",
            message.clone(),
        ));
        decided.push(Decided::new(
            conditions::OVERCOMMITTED,
            false,
            "NotArbitrated",
            message,
        ));
        return Decision {
            status: PowerBudgetStatus {
                measured_watts: Some(round(measured)),
                unmanaged_watts: Some(round(unmanaged)),
                available_watts: Some(round(available)),
                ..Default::default()
            },
            conditions: decided,
            allocations: vec![None; members.len()],
            overcommitted: false,
        };
    }
    decided.push(Decided::new(
        conditions::VALID,
        true,
        "Arbitrated",
        format!("{} policies share {available:.0} W", members.len()),
    ));
    // In allocation terms: the algorithms hold a capped policy near its
    // capping threshold's share of its effective cap, so a policy drawing P
    // needs P / share allocated to run unthrottled, and one held by its
    // allocation measures about that share of it.
    let drawn = |m: &Member| m.measured_watts.unwrap_or(0.0) / m.held_share.max(0.01);
    let held_at = |m: &Member| m.allocated_watts.map(|w| w as f64);
    let demands: Vec<f64> = members
        .iter()
        .map(|m| {
            arbitration::estimate_demand(
                drawn(m),
                held_at(m),
                m.previous_demand_watts,
                inputs.probe_fraction,
            )
        })
        .collect();
    let claims: Vec<Claim> = members
        .iter()
        .zip(&demands)
        .map(|(m, demand)| Claim {
            priority: m.priority,
            min_watts: m.min_watts,
            cap_watts: m.cap_watts,
            demand_watts: *demand,
            held: arbitration::held_short(
                drawn(m),
                held_at(m),
                held_at(m),
                m.previous_demand_watts,
            ),
        })
        .collect();
    if inputs.cap_unmanaged {
        let room = inputs.watts - inputs.reserved_watts - inputs.children_watts;
        decided.push(unmanaged_share(room, &claims, unmanaged));
    }
    let arbitration = arbitration::allocate(available, &claims);
    let allocations = stage(available, members, &arbitration.watts);
    let allocated: i64 = allocations.iter().flatten().sum();
    decided.push(if arbitration.overcommitted {
        Decided::new(
            conditions::OVERCOMMITTED,
            true,
            "GuaranteesExceedBudget",
            format!("the policies' minWatts add up to more than the {available:.0} W to share"),
        )
    } else {
        Decided::new(
            conditions::OVERCOMMITTED,
            false,
            "GuaranteesMet",
            format!("every policy's minWatts fits in {available:.0} W"),
        )
    });
    Decision {
        status: PowerBudgetStatus {
            measured_watts: Some(round(measured)),
            unmanaged_watts: Some(round(unmanaged)),
            available_watts: Some(round(available)),
            headroom_watts: Some(round((available - allocated as f64).max(0.0))),
            allocations: allocation_list(members, &allocations, &demands),
            ..Default::default()
        },
        conditions: decided,
        allocations,
        overcommitted: arbitration.overcommitted,
    }
}

/// What `capUnmanaged` reports: `room` (the budget less reserved power and
/// its children) arbitrated among the members' `claims` and one more claim
/// of the lowest priority for the unmanaged GPUs (their draw as demand and
/// cap), and whether that claim's share covers their draw.
///
/// Only reported: nothing caps the unmanaged GPUs yet (that needs entries
/// for GPUs without a policy), so the members' allocations still come out
/// of what is left after their measured draw.
pub fn unmanaged_share(room: f64, claims: &[Claim], unmanaged_watts: f64) -> Decided {
    let mut all = claims.to_vec();
    all.push(Claim {
        // Below every policy: spec.priority is bounded well above it.
        priority: i32::MIN,
        min_watts: 0.0,
        cap_watts: unmanaged_watts,
        demand_watts: unmanaged_watts,
        held: false,
    });
    let share = arbitration::allocate(room, &all)
        .watts
        .last()
        .copied()
        .unwrap_or(0.0);
    // Rounding to whole watts keeps a share equal to the draw within.
    let within = unmanaged_watts.round() <= share.round();
    Decided::new(
        conditions::UNMANAGED_WITHIN_SHARE,
        within,
        if within { "WithinShare" } else { "OverShare" },
        format!(
            "the covered GPUs no policy selects draw {unmanaged_watts:.0} W; as the lowest priority they would be allotted {share:.0} W (reported only: capUnmanaged does not cap them yet)"
        ),
    )
}

/// This period's allocations on the way to `target`: cuts at once, raises
/// highest priority first out of what `available` has left beside what
/// every member may still hold (the larger of its previous and new
/// allocation; its own cap when it had none).
fn stage(available: f64, members: &[Member], target: &[f64]) -> Vec<Option<i64>> {
    let target: Vec<i64> = target.iter().map(|w| w.max(0.0).floor() as i64).collect();
    let held: Vec<i64> = members
        .iter()
        .map(|m| {
            m.allocated_watts
                .unwrap_or_else(|| m.cap_watts.max(0.0).ceil() as i64)
        })
        .collect();
    let mut free = available.floor() as i64 - held.iter().sum::<i64>();
    let mut staged: Vec<i64> = target
        .iter()
        .zip(&held)
        .map(|(t, h)| (*t).min(*h))
        .collect();
    let mut raising: Vec<usize> = (0..members.len())
        .filter(|&i| target[i] > held[i])
        .collect();
    raising.sort_by_key(|&i| std::cmp::Reverse(members[i].priority));
    for i in raising {
        let step = (target[i] - held[i]).min(free.max(0));
        staged[i] = held[i] + step;
        free -= step;
    }
    staged.into_iter().map(Some).collect()
}

/// `status.allocations`, highest priority first, at most what the schema
/// holds.
fn allocation_list(
    members: &[Member],
    allocations: &[Option<i64>],
    demands: &[f64],
) -> Vec<BudgetAllocation> {
    let mut list: Vec<BudgetAllocation> = members
        .iter()
        .zip(allocations)
        .enumerate()
        .filter_map(|(i, (m, a))| {
            a.map(|watts| BudgetAllocation {
                namespace: m.namespace.clone(),
                name: m.name.clone(),
                priority: m.priority,
                min_watts: m.min_watts,
                demand_watts: round(demands.get(i).copied().unwrap_or(0.0)),
                allocated_watts: watts,
            })
        })
        .collect();
    list.sort_by(|a, b| {
        b.priority
            .cmp(&a.priority)
            .then_with(|| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)))
    });
    list.truncate(climatik_api::bounds::MAX_BUDGET_ALLOCATIONS);
    list
}

fn round(watts: f64) -> f64 {
    (watts * 100.0).round() / 100.0
}

/// The conditions of a budget that is not arbitrated.
pub fn invalid_conditions(invalid: &Invalid) -> Vec<Decided> {
    vec![Decided::new(
        conditions::VALID,
        false,
        invalid.reason,
        format!("{}; the budget is ignored", invalid.message),
    )]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(parent: Option<&str>, nodes: &[&str]) -> Shape {
        Shape {
            parent: parent.map(str::to_string),
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
        }
    }

    fn nodes(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn parents_must_exist_form_no_cycle_and_contain_their_children() {
        let budgets = BTreeMap::from([
            ("row".to_string(), shape(None, &["a", "b", "c"])),
            ("rack".to_string(), shape(Some("row"), &["a", "b"])),
            ("shelf".to_string(), shape(Some("rack"), &["a"])),
            ("orphan".to_string(), shape(Some("gone"), &["a"])),
            ("wide".to_string(), shape(Some("rack"), &["a", "c"])),
            ("x".to_string(), shape(Some("y"), &["a"])),
            ("y".to_string(), shape(Some("x"), &["a"])),
            ("below-orphan".to_string(), shape(Some("orphan"), &["a"])),
        ]);
        assert_eq!(validity("row", &budgets), Ok(()));
        assert_eq!(validity("rack", &budgets), Ok(()));
        assert_eq!(validity("shelf", &budgets), Ok(()));
        let reason = |name: &str| validity(name, &budgets).err().map(|e| e.reason);
        assert_eq!(reason("orphan"), Some("UnknownParent"));
        assert_eq!(reason("wide"), Some("NotInsideParent"));
        assert_eq!(reason("x"), Some("ParentCycle"));
        assert_eq!(reason("below-orphan"), Some("InvalidAncestor"));
    }

    #[test]
    fn a_policy_belongs_to_the_deepest_budget_or_to_none_when_it_spans_two() {
        let valid = BTreeMap::from([
            ("row".to_string(), shape(None, &["a", "b", "c"])),
            ("rack".to_string(), shape(Some("row"), &["a", "b"])),
            ("other".to_string(), shape(None, &["z"])),
        ]);
        assert_eq!(
            coverage(&nodes(&["a"]), &valid),
            Coverage::One("rack".into())
        );
        assert_eq!(
            coverage(&nodes(&["c"]), &valid),
            Coverage::One("row".into())
        );
        assert_eq!(coverage(&nodes(&["q"]), &valid), Coverage::None);
        assert_eq!(
            coverage(&nodes(&["a", "z"]), &valid),
            Coverage::Spans(vec!["other".into(), "rack".into(), "row".into()])
        );
    }

    fn member(name: &str, priority: i32, measured: f64, allocated: Option<i64>) -> Member {
        Member {
            namespace: "ns".into(),
            name: name.into(),
            priority,
            min_watts: 0.0,
            cap_watts: 1000.0,
            measured_watts: Some(measured),
            allocated_watts: allocated,
            previous_demand_watts: None,
            held_share: 1.0,
        }
    }

    fn inputs(watts: f64, members: Vec<Member>) -> Inputs {
        Inputs {
            watts,
            reserved_watts: 0.0,
            children_watts: 0.0,
            unmanaged_watts: Some(0.0),
            floor_watts: 0.0,
            probe_fraction: 0.1,
            cap_unmanaged: false,
            members,
        }
    }

    #[test]
    fn cap_unmanaged_reports_unmanaged_gpus_over_their_lowest_priority_share() {
        // 1000 W; serving draws 600 W, the unmanaged GPUs 500 W: as the
        // lowest priority they would get only 400 W.
        let mut over = inputs(1000.0, vec![member("serving", 10, 600.0, None)]);
        over.unmanaged_watts = Some(500.0);
        let without = decide(&over);
        assert!(
            !without
                .conditions
                .iter()
                .any(|d| d.type_ == conditions::UNMANAGED_WITHIN_SHARE),
            "only with capUnmanaged: {without:?}"
        );
        over.cap_unmanaged = true;
        let decision = decide(&over);
        assert_eq!(
            condition(&decision, conditions::UNMANAGED_WITHIN_SHARE),
            (false, "OverShare".to_string())
        );
        // Reported only: serving's allocation still leaves their draw.
        assert!(
            decision.allocations[0].is_some_and(|w| w <= 500),
            "{decision:?}"
        );
        // With room for both they are within their share.
        let mut within = over.clone();
        within.watts = 1200.0;
        assert_eq!(
            condition(&decide(&within), conditions::UNMANAGED_WITHIN_SHARE),
            (true, "WithinShare".to_string())
        );
    }

    fn condition(decision: &Decision, type_: &str) -> (bool, String) {
        match decision.conditions.iter().find(|d| d.type_ == type_) {
            Some(d) => (d.status, d.reason.clone()),
            None => panic!("no {type_} in {:?}", decision.conditions),
        }
    }

    #[test]
    fn watts_a_falling_policy_frees_go_to_the_one_held_at_its_allocation() {
        // Serving (priority 10) fell to 100 W of its 600 W; training (0)
        // draws all of its 400 W and asked for 440. The cut lands at once,
        // the raise from the room it frees a period later: training then
        // gets the freed watts up to its cap, not a 10 % probe with the
        // rest left as serving's headroom.
        let asked = |mut m: Member, watts: f64| {
            m.previous_demand_watts = Some(watts);
            m
        };
        let first = decide(&inputs(
            1000.0,
            vec![
                asked(member("serving", 10, 100.0, Some(600)), 600.0),
                asked(member("training", 0, 400.0, Some(400)), 440.0),
            ],
        ));
        assert_eq!(first.allocations, [Some(100), Some(400)], "{first:?}");
        let demand = |i: usize| first.status.allocations[i].demand_watts;
        let second = decide(&inputs(
            1000.0,
            vec![
                asked(
                    member("serving", 10, 100.0, first.allocations[0]),
                    demand(0),
                ),
                asked(
                    member("training", 0, 400.0, first.allocations[1]),
                    demand(1),
                ),
            ],
        ));
        // Serving, held at the 100 W it asked for and got, probes 10 % as
        // usual; training, held short, takes the rest.
        assert_eq!(second.allocations, [Some(110), Some(890)], "{second:?}");
    }

    #[test]
    fn cuts_apply_at_once_and_raises_wait_for_the_room_they_free() {
        // Both held at 500 W of 1000 W; serving (priority 10) now draws
        // its whole allocation, training (0) 500 W too. The budget drops
        // to 600 W: training is cut first, serving keeps what it holds.
        let members = vec![
            member("serving", 10, 500.0, Some(500)),
            member("training", 0, 500.0, Some(500)),
        ];
        let cut = decide(&inputs(600.0, members.clone()));
        let [serving, training] = [cut.allocations[0], cut.allocations[1]];
        assert!(training < Some(500), "{cut:?}");
        assert!(serving <= Some(500), "{cut:?}");
        let total: i64 = cut.allocations.iter().flatten().sum();
        assert!(total <= 600, "{cut:?}");
        // Never more in flight than the budget: the larger of old and new.
        let in_flight: i64 = cut
            .allocations
            .iter()
            .zip(&members)
            .map(|(a, m)| a.unwrap_or(0).max(m.allocated_watts.unwrap_or(0)))
            .sum();
        assert!(in_flight <= 1000, "{cut:?}");
        assert_eq!(cut.status.available_watts, Some(600.0));
        assert!(!condition(&cut, conditions::WITHIN_BUDGET).0);
    }

    #[test]
    fn a_raise_never_puts_more_in_flight_than_the_budget() {
        // Serving bursts while training still holds 700 W: serving gets
        // only what training's cut frees, one period later.
        let members = vec![
            member("serving", 10, 300.0, Some(300)),
            member("training", 0, 700.0, Some(700)),
        ];
        let first = decide(&inputs(1000.0, members.clone()));
        // Training is cut, and serving cannot take those watts yet: they
        // are still held on training's GPUs.
        assert!(first.allocations[1] < Some(700), "{first:?}");
        assert_eq!(first.allocations[0], Some(300), "{first:?}");
        let in_flight: i64 = first
            .allocations
            .iter()
            .zip(&members)
            .map(|(a, m)| a.unwrap_or(0).max(m.allocated_watts.unwrap_or(0)))
            .sum();
        assert!(in_flight <= 1000, "{first:?}");
        // Next period, from what was staged: the sum stays within budget.
        let mut next = members;
        for (m, a) in next.iter_mut().zip(&first.allocations) {
            m.allocated_watts = *a;
        }
        let second = decide(&inputs(1000.0, next));
        let total: i64 = second.allocations.iter().flatten().sum();
        assert!(total <= 1000, "{second:?}");
    }

    #[test]
    fn a_budget_below_the_lowest_power_limits_allocates_nothing() {
        let mut below = inputs(200.0, vec![member("serving", 10, 150.0, Some(150))]);
        below.floor_watts = 400.0;
        let decision = decide(&below);
        assert_eq!(decision.allocations, vec![None]);
        assert_eq!(
            condition(&decision, conditions::VALID),
            (false, "BelowMinimumPowerLimits".into())
        );
        assert!(decision.status.allocations.is_empty());
    }

    #[test]
    fn without_prometheus_the_allocations_are_held() {
        let mut blind = inputs(
            1000.0,
            vec![
                member("serving", 10, 300.0, Some(400)),
                member("new", 0, 100.0, None),
            ],
        );
        blind.unmanaged_watts = None;
        let decision = decide(&blind);
        assert_eq!(decision.allocations, vec![Some(400), None]);
        assert_eq!(
            condition(&decision, conditions::METRICS_AVAILABLE),
            (false, "PrometheusUnavailable".into())
        );
    }

    #[test]
    fn unmanaged_reserved_and_children_come_off_the_top() {
        let mut i = inputs(1000.0, vec![member("serving", 10, 100.0, Some(100))]);
        i.unmanaged_watts = Some(150.0);
        i.reserved_watts = 50.0;
        i.children_watts = 300.0;
        let decision = decide(&i);
        assert_eq!(decision.status.available_watts, Some(500.0));
        assert_eq!(decision.status.measured_watts, Some(300.0));
        let total: i64 = decision.allocations.iter().flatten().sum();
        assert!(total <= 500, "{decision:?}");
    }
}
