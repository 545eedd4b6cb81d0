//! What the budget controller decides for one PowerBudget, as pure
//! functions of what it read: whether the budget is valid, which policies
//! it arbitrates, the allocations it writes to them and the status it
//! writes to the budget. [`crate::budget`] reads the cluster and writes
//! the results; everything here is unit-tested without one.
//!
//! Budgets may nest (`spec.parent`): a tree of valid budgets is decided
//! as one ([`decide_tree`]), so a cut of the parent reaches the policies
//! of every child lowest priority first, and no budget's subtree takes
//! more than its watts. A policy belongs to the deepest budget that covers
//! its nodes; a policy whose nodes lie in budgets that are not nested in
//! each other belongs to none, and no budget lowers its cap.

use std::collections::{BTreeMap, BTreeSet};

use climatik_api::{BudgetAllocation, BudgetChild, PowerBudgetStatus, names::conditions};

use crate::{
    arbitration::{self, Claim, TreeBudget},
    conditions::Decided,
    unmanaged::Unmanaged,
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
    /// The budget's name, as its parent's `status.children` lists it.
    pub name: String,
    /// Index of the budget it draws from among those decided with it
    /// ([`decide_tree`]); `None` for the root.
    pub parent: Option<usize>,
    /// `spec.watts`.
    pub watts: f64,
    /// `spec.reservedWatts`.
    pub reserved_watts: f64,
    /// Measured power of the GPUs on its own nodes (outside its children)
    /// none of its members holds; `None` when Prometheus could not be
    /// asked.
    pub unmanaged_watts: Option<f64>,
    /// The lowest power limits of the members' GPUs on its own nodes
    /// (outside its children), as the node agents report them.
    pub floor_watts: f64,
    /// Share of an allocation a policy held at it is assumed to want more.
    pub probe_fraction: f64,
    /// `spec.capUnmanaged`: arbitrate the unmanaged GPUs as one claim of
    /// the lowest priority ([`unmanaged_share`]) and hold them to its share.
    pub cap_unmanaged: bool,
    /// What holds the unmanaged GPUs now and their power limits; read only
    /// with `cap_unmanaged`.
    pub unmanaged: Unmanaged,
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
    /// With `capUnmanaged`, the watts the unmanaged GPUs' entries add up to
    /// this period; `None` holds the entries as they are (nothing to go
    /// on) or, without `capUnmanaged`, wants none.
    pub unmanaged_share_watts: Option<f64>,
    pub overcommitted: bool,
}

/// Decides one period of a tree of budgets (its root first or not, each
/// `parent` an index into `budgets`), one [`Decision`] per budget in
/// `budgets`' order.
///
/// The tree is arbitrated as one ([`arbitration::allocate_tree`]): each
/// budget's policies, and its children's, may take together its
/// `spec.watts` less the reserved and unmanaged power of its subtree, and
/// priorities hold across the tree. A budget has the smaller of its
/// `spec.watts` and what its parent grants it: what its subtree is
/// allocated plus what the parent leaves unallocated.
///
/// A budget whose watts to share are below the lowest power limits of the
/// members' GPUs in its subtree is not arbitrated, nor is anything below
/// it (`Valid` False); its parent counts its whole `spec.watts` as taken.
/// Without the unmanaged power of every budget the room is unknown, and
/// every member holds the allocation it has.
///
/// Allocations move so the sum of what the node agents may hold never
/// exceeds any budget of the tree, whether they run on this period's
/// targets or the last one's: cuts apply at once, raises only out of what
/// the members' previous allocations and this period's cuts leave free in
/// every budget above them. Watts a cut frees reach the others one period
/// later. A member never allocated before counts at its own cap until it
/// is.
pub fn decide_tree(budgets: &[Inputs]) -> Vec<Decision> {
    let unmanaged: Option<Vec<f64>> = budgets.iter().map(|b| b.unmanaged_watts).collect();
    let Some(unmanaged) = unmanaged else {
        return budgets.iter().map(hold).collect();
    };
    let shape = TreeShape::new(budgets);
    let n = budgets.len();
    let demands: Vec<Vec<f64>> = budgets.iter().map(demands).collect();
    // What the reserved power and the unmanaged GPUs draw, and under
    // capUnmanaged what they are held to: its own room
    // ([`unmanaged_room`]) arbitrated with the unmanaged GPUs as the
    // lowest priority, decided before the members share what it leaves.
    let drawn: Vec<f64> = (0..n)
        .map(|b| budgets[b].reserved_watts + unmanaged[b])
        .collect();
    let unmanaged_rooms: Vec<f64> = (0..n).map(|b| unmanaged_room(&shape, budgets, b)).collect();
    let unmanaged_targets: Vec<Option<(Decided, f64)>> = (0..n)
        .map(|b| {
            let budget = &budgets[b];
            budget.cap_unmanaged.then(|| {
                let demand = arbitration::estimate_demand(
                    unmanaged[b],
                    budget.unmanaged.held_watts,
                    None,
                    budget.probe_fraction,
                );
                let own_claims: Vec<Claim> = budget
                    .members
                    .iter()
                    .zip(&demands[b])
                    .map(|(m, d)| claim(m, *d))
                    .collect();
                unmanaged_share(unmanaged_rooms[b], &own_claims, demand, &budget.unmanaged)
            })
        })
        .collect();
    // Held by entries, the unmanaged GPUs may draw up to what the entries
    // allow even while they draw less: that much, or the share they are
    // to grow to, is not the members' to share.
    let counted: Vec<f64> = (0..n)
        .map(|b| {
            let budget = &budgets[b];
            if budget.cap_unmanaged {
                unmanaged[b].max(budget.unmanaged.held_watts.unwrap_or(0.0))
            } else {
                unmanaged[b]
            }
        })
        .collect();
    let off: Vec<f64> = (0..n)
        .map(|b| {
            let target = unmanaged_targets[b].as_ref().map_or(0.0, |(_, t)| *t);
            budgets[b].reserved_watts + counted[b].max(target)
        })
        .collect();
    // Capped, the unmanaged GPUs can be held down to their lowest limits
    // but no further: the policies' GPUs must fit beside those.
    let off_at_floor: Vec<f64> = (0..n)
        .map(|b| {
            let budget = &budgets[b];
            let unmanaged = if budget.cap_unmanaged {
                budget.unmanaged.floor_watts
            } else {
                unmanaged[b]
            };
            budget.reserved_watts + unmanaged
        })
        .collect();
    // Bottom-up: what each subtree takes off its parent's top before any
    // policy, its floor, and whether it can be arbitrated at all.
    let mut off_below = off.clone();
    let mut floor_off_below = off_at_floor;
    let mut floor = vec![0.0; n];
    let mut failed = vec![false; n];
    for &b in shape.order.iter().rev() {
        floor[b] += budgets[b].floor_watts;
        failed[b] = budgets[b].watts - floor_off_below[b] < floor[b];
        if let Some(p) = shape.parents[b] {
            off_below[p] += if failed[b] {
                budgets[b].watts
            } else {
                off_below[b]
            };
            floor_off_below[p] += if failed[b] {
                budgets[b].watts
            } else {
                floor_off_below[b]
            };
            if !failed[b] {
                floor[p] += floor[b];
            }
        }
    }
    let room: Vec<f64> = (0..n)
        .map(|b| (budgets[b].watts - off_below[b]).max(0.0))
        .collect();
    // Top-down: below a budget that is not arbitrated, nothing is.
    let mut skipped_by: Vec<Option<usize>> = vec![None; n];
    for &b in &shape.order {
        skipped_by[b] = match shape.parents[b] {
            Some(p) if skipped_by[p].is_some() => skipped_by[p],
            _ => failed[b].then_some(b),
        };
    }

    let mut owners = Vec::new();
    let mut claims = Vec::new();
    let mut claimed = Vec::new();
    for (b, budget) in budgets.iter().enumerate() {
        if skipped_by[b].is_some() {
            continue;
        }
        for (m, member) in budget.members.iter().enumerate() {
            owners.push(b);
            claims.push(claim(member, demands[b][m]));
            claimed.push((b, m));
        }
    }
    let tree: Vec<TreeBudget> = (0..n)
        .map(|b| TreeBudget {
            parent: shape.parents[b],
            room_watts: room[b],
        })
        .collect();
    let arbitration = arbitration::allocate_tree(&tree, &owners, &claims);
    let staged = stage(&shape, &room, budgets, &claimed, &arbitration.watts);
    let mut allocations: Vec<Vec<Option<i64>>> = budgets
        .iter()
        .map(|b| vec![None; b.members.len()])
        .collect();
    for ((b, m), watts) in claimed.iter().zip(staged) {
        allocations[*b][*m] = Some(watts);
    }

    // Bottom-up again: what each subtree asks for, takes and measures.
    let own_allocated: Vec<f64> = allocations
        .iter()
        .map(|a| a.iter().flatten().sum::<i64>() as f64)
        .collect();
    let mut taken: Vec<f64> = (0..n).map(|b| off[b] + own_allocated[b]).collect();
    let mut demanded: Vec<f64> = (0..n)
        .map(|b| drawn[b] + demands[b].iter().sum::<f64>())
        .collect();
    let mut measured: Vec<f64> = (0..n)
        .map(|b| {
            let policies: f64 = budgets[b]
                .members
                .iter()
                .filter_map(|m| m.measured_watts)
                .sum();
            policies + drawn[b]
        })
        .collect();
    let mut children_taken = vec![0.0; n];
    for &b in shape.order.iter().rev() {
        if failed[b] {
            taken[b] = budgets[b].watts;
        }
        if let Some(p) = shape.parents[b] {
            taken[p] += taken[b];
            children_taken[p] += taken[b];
            demanded[p] += demanded[b];
            measured[p] += measured[b];
        }
    }
    // Top-down: what each parent grants each child.
    let mut granted: Vec<Option<f64>> = vec![None; n];
    let mut watts: Vec<f64> = budgets.iter().map(|b| b.watts).collect();
    for &b in &shape.order {
        if let Some(p) = shape.parents[b] {
            let left = watts[p] - taken[p] + taken[b];
            let grant = budgets[b].watts.min(left).max(0.0);
            granted[b] = Some(grant);
            watts[b] = grant;
        }
    }

    (0..n)
        .map(|b| {
            let budget = &budgets[b];
            let available = (watts[b] - off[b] - children_taken[b]).max(0.0);
            let mut status = PowerBudgetStatus {
                granted_watts: granted[b].map(round),
                measured_watts: Some(round(measured[b])),
                unmanaged_watts: Some(round(unmanaged[b])),
                available_watts: Some(round(available)),
                children: children_list(&shape, budgets, b, &demanded, &taken),
                ..Default::default()
            };
            let mut decided = vec![
                Decided::new(
                    conditions::METRICS_AVAILABLE,
                    true,
                    "MetricsFound",
                    format!(
                        "{:.0} W drawn by covered GPUs no policy selects",
                        unmanaged[b]
                    ),
                ),
                within_budget(measured[b], watts[b]),
            ];
            if let Some(at) = skipped_by[b] {
                let message = if at == b {
                    format!(
                        "{:.0} W to share is below the {:.0} W the covered GPUs' lowest power limits add up to; policies keep their own caps",
                        (budgets[b].watts - floor_off_below[b]).max(0.0),
                        floor[b]
                    )
                } else {
                    format!(
                        "budget {} above it is below its GPUs' lowest power limits; policies keep their own caps",
                        budgets[at].name
                    )
                };
                let reason = if at == b {
                    "BelowMinimumPowerLimits"
                } else {
                    "InvalidAncestor"
                };
                decided.push(Decided::new(conditions::VALID, false, reason, &message));
                decided.push(Decided::new(
                    conditions::OVERCOMMITTED,
                    false,
                    "NotArbitrated",
                    message,
                ));
                status.children.clear();
                return Decision {
                    status,
                    conditions: decided,
                    allocations: allocations[b].clone(),
                    unmanaged_share_watts: None,
                    overcommitted: false,
                };
            }
            decided.push(Decided::new(
                conditions::VALID,
                true,
                "Arbitrated",
                format!(
                    "{} policies share {available:.0} W",
                    budget.members.len()
                ),
            ));
            let unmanaged_share_watts = unmanaged_targets[b].as_ref().map(|(condition, target)| {
                decided.push(condition.clone());
                stage_unmanaged(
                    unmanaged_rooms[b],
                    &budget.members,
                    &allocations[b],
                    *target,
                    counted[b],
                )
            });
            let overcommitted = arbitration.overcommitted.get(b).copied().unwrap_or(false);
            decided.push(if overcommitted {
                Decided::new(
                    conditions::OVERCOMMITTED,
                    true,
                    "GuaranteesExceedBudget",
                    format!(
                        "the policies' minWatts add up to more than the {:.0} W to share",
                        room[b]
                    ),
                )
            } else {
                Decided::new(
                    conditions::OVERCOMMITTED,
                    false,
                    "GuaranteesMet",
                    format!("every policy's minWatts fits in {:.0} W", room[b]),
                )
            });
            status.headroom_watts = Some(round((available - own_allocated[b]).max(0.0)));
            status.allocations = allocation_list(&budget.members, &allocations[b], &demands[b]);
            Decision {
                status,
                conditions: decided,
                allocations: allocations[b].clone(),
                unmanaged_share_watts,
                overcommitted,
            }
        })
        .collect()
}

/// Without the unmanaged power the room to share is unknown: the members
/// hold the allocations they have.
fn hold(budget: &Inputs) -> Decision {
    let members = &budget.members;
    let allocations: Vec<Option<i64>> = members.iter().map(|m| m.allocated_watts).collect();
    let allocated: i64 = allocations.iter().flatten().sum();
    Decision {
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
                "the power of the covered GPUs no policy selects (in this budget or another of its tree) is unknown; {allocated} W of allocations held"
            ),
        )],
        allocations,
        unmanaged_share_watts: None,
        overcommitted: false,
    }
}

fn within_budget(measured: f64, watts: f64) -> Decided {
    let within = measured <= watts;
    Decided::new(
        conditions::WITHIN_BUDGET,
        within,
        if within { "WithinBudget" } else { "OverBudget" },
        format!("{measured:.0} W measured (policies, unmanaged GPUs, reserved) of {watts:.0} W"),
    )
}

/// Each member's demand in allocation terms: the algorithms hold a capped
/// policy near its capping threshold's share of its effective cap, so a
/// policy drawing P needs P / share allocated to run unthrottled, and one
/// held by its allocation measures about that share of it.
fn demands(budget: &Inputs) -> Vec<f64> {
    budget
        .members
        .iter()
        .map(|m| {
            arbitration::estimate_demand(
                drawn(m),
                held_at(m),
                m.previous_demand_watts,
                budget.probe_fraction,
            )
        })
        .collect()
}

/// What a member draws, in allocation terms.
fn drawn(member: &Member) -> f64 {
    member.measured_watts.unwrap_or(0.0) / member.held_share.max(0.01)
}

/// The allocation a member is held at, if any.
fn held_at(member: &Member) -> Option<f64> {
    member.allocated_watts.map(|w| w as f64)
}

fn claim(member: &Member, demand: f64) -> Claim {
    Claim {
        priority: member.priority,
        min_watts: member.min_watts,
        cap_watts: member.cap_watts,
        demand_watts: demand,
        held: arbitration::held_short(
            drawn(member),
            held_at(member),
            held_at(member),
            member.previous_demand_watts,
        ),
    }
}

/// The parents of the budgets decided together, and an order that lists
/// every parent before its children. A parent out of range, or on a cycle,
/// counts as none ([`arbitration::tree_parents`]).
struct TreeShape {
    parents: Vec<Option<usize>>,
    order: Vec<usize>,
}

impl TreeShape {
    fn new(budgets: &[Inputs]) -> Self {
        let parents =
            arbitration::tree_parents(&budgets.iter().map(|b| b.parent).collect::<Vec<_>>());
        // Breadth first from the roots: with no cycle left, every budget
        // is reached once.
        let mut order: Vec<usize> = (0..parents.len())
            .filter(|&b| parents[b].is_none())
            .collect();
        let mut next = 0;
        while let Some(&at) = order.get(next) {
            order.extend((0..parents.len()).filter(|&c| parents[c] == Some(at)));
            next += 1;
        }
        Self { parents, order }
    }

    /// Budget `b` is `top` or lies below it.
    fn within(&self, b: usize, top: usize) -> bool {
        arbitration::within(&self.parents, b, top)
    }
}

/// `status.children` of budget `b`: each child's `spec.watts`, what its
/// subtree asks for and takes, by name, at most what the schema holds.
fn children_list(
    shape: &TreeShape,
    budgets: &[Inputs],
    b: usize,
    demanded: &[f64],
    taken: &[f64],
) -> Vec<BudgetChild> {
    let mut list: Vec<BudgetChild> = (0..budgets.len())
        .filter(|&c| shape.parents[c] == Some(b))
        .map(|c| BudgetChild {
            name: budgets[c].name.clone(),
            watts: budgets[c].watts.max(0.0).round() as i64,
            demand_watts: round(demanded[c]),
            allocated_watts: round(taken[c]),
        })
        .collect();
    list.sort_by(|x, y| x.name.cmp(&y.name));
    list.truncate(climatik_api::bounds::MAX_BUDGET_CHILDREN);
    list
}

/// The unmanaged GPUs' share under `capUnmanaged`: `room`
/// ([`unmanaged_room`]) arbitrated among the members' `claims`
/// and one more claim of the lowest priority for the unmanaged GPUs: their
/// estimated `demand_watts` within their power limits, guaranteed their
/// lowest limits. Capped at the demand, the claim leaves headroom to the
/// members; held at its share, its demand probes above it, so the GPUs
/// get watts back as the members free them. Also the condition that says
/// whether the share covers the demand.
pub fn unmanaged_share(
    room: f64,
    claims: &[Claim],
    demand_watts: f64,
    unmanaged: &Unmanaged,
) -> (Decided, f64) {
    let mut all = claims.to_vec();
    all.push(Claim {
        // Below every policy: spec.priority is bounded well above it.
        priority: i32::MIN,
        min_watts: unmanaged.floor_watts,
        cap_watts: demand_watts
            .min(unmanaged.limit_watts)
            .max(unmanaged.floor_watts),
        demand_watts,
        held: false,
    });
    let share = arbitration::allocate(room, &all)
        .watts
        .last()
        .copied()
        .unwrap_or(0.0);
    // Rounding to whole watts keeps a share equal to the demand within.
    let within = demand_watts.round() <= share.round();
    let condition = Decided::new(
        conditions::UNMANAGED_WITHIN_SHARE,
        within,
        if within { "WithinShare" } else { "OverShare" },
        format!(
            "the covered GPUs no policy selects want {demand_watts:.0} W; as the lowest priority they are allotted {share:.0} W, which their NodeFrequencies entries hold them to"
        ),
    );
    (condition, share)
}

/// This period's unmanaged share on the way to `target`, like [`stage`]:
/// `held` is what the GPUs may draw now (the larger of their draw and
/// their entries' sum). A cut applies at once; a raise only into what the
/// members may still hold leaves of `room` (each
/// member the larger of its previous and new allocation, its own cap when
/// it has none), so the entries and the allocations never add up to more
/// than the budget, whether the agents run on this period's or the last.
fn stage_unmanaged(
    room: f64,
    members: &[Member],
    allocations: &[Option<i64>],
    target: f64,
    held: f64,
) -> f64 {
    if target <= held {
        return target;
    }
    let members_hold: f64 = members
        .iter()
        .zip(allocations)
        .map(|(m, new)| {
            let cap = m.cap_watts.max(0.0).ceil() as i64;
            m.allocated_watts.unwrap_or(cap).max(new.unwrap_or(cap)) as f64
        })
        .sum();
    target.min(held.max(room - members_hold))
}

/// The room the unmanaged GPUs of budget `b` are arbitrated in: its
/// `spec.watts` less its reserved power and its children's `spec.watts`.
/// What its parent grants it is decided only with its members' shares, so
/// the unmanaged claim is sized within its own watts; the members then
/// share the granted watts less that claim.
fn unmanaged_room(shape: &TreeShape, budgets: &[Inputs], b: usize) -> f64 {
    let children: f64 = (0..budgets.len())
        .filter(|&c| shape.parents[c] == Some(b))
        .map(|c| budgets[c].watts)
        .sum();
    budgets[b].watts - budgets[b].reserved_watts - children
}

/// This period's allocations on the way to `target` (one per claimed
/// `(budget, member)`): cuts at once, raises highest priority first out of
/// what every budget above the member has left of its `room` beside what
/// each of its members may still hold (the larger of its previous and new
/// allocation; its own cap when it had none).
fn stage(
    shape: &TreeShape,
    room: &[f64],
    budgets: &[Inputs],
    claimed: &[(usize, usize)],
    target: &[f64],
) -> Vec<i64> {
    let member = |k: usize| &budgets[claimed[k].0].members[claimed[k].1];
    let target: Vec<i64> = target.iter().map(|w| w.max(0.0).floor() as i64).collect();
    let held: Vec<i64> = (0..claimed.len())
        .map(|k| {
            let m = member(k);
            m.allocated_watts
                .unwrap_or_else(|| m.cap_watts.max(0.0).ceil() as i64)
        })
        .collect();
    let mut free: Vec<i64> = (0..budgets.len())
        .map(|b| {
            let below: i64 = (0..claimed.len())
                .filter(|&k| shape.within(claimed[k].0, b))
                .map(|k| held[k])
                .sum();
            room[b].floor() as i64 - below
        })
        .collect();
    let mut staged: Vec<i64> = target
        .iter()
        .zip(&held)
        .map(|(t, h)| (*t).min(*h))
        .collect();
    let mut raising: Vec<usize> = (0..claimed.len())
        .filter(|&k| target[k] > held[k])
        .collect();
    raising.sort_by_key(|&k| std::cmp::Reverse(member(k).priority));
    for k in raising {
        let above: Vec<usize> = (0..budgets.len())
            .filter(|&b| shape.within(claimed[k].0, b))
            .collect();
        let left = above.iter().map(|&b| free[b]).min().unwrap_or(0).max(0);
        let step = (target[k] - held[k]).min(left);
        staged[k] = held[k] + step;
        for b in above {
            free[b] -= step;
        }
    }
    staged
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
            name: "rack".into(),
            parent: None,
            watts,
            reserved_watts: 0.0,
            unmanaged_watts: Some(0.0),
            floor_watts: 0.0,
            probe_fraction: 0.1,
            cap_unmanaged: false,
            unmanaged: Unmanaged::default(),
            members,
        }
    }

    /// A budget on its own: a tree of one.
    fn decide(inputs: &Inputs) -> Decision {
        decide_tree(std::slice::from_ref(inputs)).remove(0)
    }

    #[test]
    fn cap_unmanaged_holds_unmanaged_gpus_to_their_lowest_priority_share() {
        // 1000 W; serving draws 600 W, the unmanaged GPUs 500 W: as the
        // lowest priority they would get only 400 W.
        let mut over = inputs(1000.0, vec![member("serving", 10, 600.0, None)]);
        over.unmanaged_watts = Some(500.0);
        over.unmanaged.limit_watts = 1400.0;
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
        // Their draw still comes off the top until their entries cut it;
        // the entries get what serving leaves, so both fit the budget.
        assert_eq!(without.unmanaged_share_watts, None);
        let serving = decision.allocations[0].unwrap_or(0);
        assert!(serving <= 500, "{decision:?}");
        let share = decision.unmanaged_share_watts.unwrap_or(f64::NAN);
        assert!(share < 500.0, "{decision:?}");
        assert!(serving as f64 + share <= 1000.0, "{decision:?}");

        // Next period the entries hold them at that share and they draw
        // it: serving, at its 500 W allocation, is raised into what the
        // entries no longer allow; the entries stay as they are, and the
        // two still fit.
        let mut held = over.clone();
        held.members = vec![member("serving", 10, 600.0, Some(serving))];
        held.unmanaged_watts = Some(share);
        held.unmanaged.held_watts = Some(share);
        let next = decide(&held);
        let serving_next = next.allocations[0].unwrap_or(0);
        let share_next = next.unmanaged_share_watts.unwrap_or(f64::NAN);
        assert!(serving_next > serving, "{next:?}");
        assert!(share_next <= share, "{next:?}");
        assert!(serving_next as f64 + share_next <= 1000.0, "{next:?}");
        // With room for both they are within their share.
        let mut within = over.clone();
        within.watts = 1200.0;
        assert_eq!(
            condition(&decide(&within), conditions::UNMANAGED_WITHIN_SHARE),
            (true, "WithinShare".to_string())
        );
    }

    #[test]
    fn capped_unmanaged_gpus_keep_their_lowest_limits_beside_the_policies() {
        // The policies' GPUs need 600 W; the unmanaged ones draw 100 W but
        // cannot be held below 500 W: capping them leaves too little.
        let mut inputs = inputs(1000.0, vec![member("serving", 10, 300.0, None)]);
        inputs.floor_watts = 600.0;
        inputs.unmanaged_watts = Some(100.0);
        inputs.unmanaged.floor_watts = 500.0;
        assert_eq!(
            condition(&decide(&inputs), conditions::VALID),
            (true, "Arbitrated".to_string())
        );
        inputs.cap_unmanaged = true;
        let decision = decide(&inputs);
        assert_eq!(
            condition(&decision, conditions::VALID),
            (false, "BelowMinimumPowerLimits".to_string())
        );
        assert_eq!(decision.unmanaged_share_watts, None);
    }

    #[test]
    fn unmanaged_entries_rise_only_into_what_the_members_leave() {
        // Held at 200 W and drawing it, the unmanaged GPUs probe for more;
        // serving holds 850 W of 1000 W and now draws 300 W. Its cut
        // applies at once, making room for the probe, but the entries rise
        // only a period later, once serving's agents run on the cut.
        let mut inputs = inputs(1000.0, vec![member("serving", 10, 300.0, Some(850))]);
        inputs.cap_unmanaged = true;
        inputs.unmanaged_watts = Some(200.0);
        inputs.unmanaged.held_watts = Some(200.0);
        inputs.unmanaged.limit_watts = 2000.0;
        let decision = decide(&inputs);
        let serving = decision.allocations[0].unwrap_or(0);
        assert_eq!(serving, 780, "{decision:?}");
        assert_eq!(decision.unmanaged_share_watts, Some(200.0), "{decision:?}");
        // With the room there a period later, they get their probe.
        inputs.members = vec![member("serving", 10, 300.0, Some(serving))];
        let later = decide(&inputs);
        assert_eq!(later.unmanaged_share_watts, Some(220.0), "{later:?}");
        assert!(later.allocations[0].is_some_and(|w| w as f64 + 220.0 <= 1000.0));
        // Guaranteed their lowest power limits (a period to make room).
        inputs.unmanaged.floor_watts = 400.0;
        let first = decide(&inputs);
        inputs.members = vec![member("serving", 10, 300.0, first.allocations[0])];
        inputs.unmanaged.held_watts = first.unmanaged_share_watts;
        let floored = decide(&inputs);
        assert!(
            floored.unmanaged_share_watts.is_some_and(|w| w >= 400.0),
            "{floored:?}"
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
    fn unmanaged_and_reserved_come_off_the_top() {
        let mut i = inputs(1000.0, vec![member("serving", 10, 100.0, Some(100))]);
        i.unmanaged_watts = Some(150.0);
        i.reserved_watts = 50.0;
        let decision = decide(&i);
        assert_eq!(decision.status.available_watts, Some(800.0));
        assert_eq!(decision.status.measured_watts, Some(300.0));
        assert_eq!(decision.status.granted_watts, None);
        let total: i64 = decision.allocations.iter().flatten().sum();
        assert!(total <= 800, "{decision:?}");
    }

    /// A row of 1000 W (50 W reserved) over two racks of 600 W, each
    /// with a high- and a low-priority policy that want 400 W, every
    /// policy held where the last period left it.
    fn row(held: [i64; 4]) -> Vec<Inputs> {
        let mut row = inputs(1000.0, vec![]);
        row.name = "row".into();
        row.reserved_watts = 50.0;
        let rack = |name: &str, high: i64, low: i64| {
            let mut rack = inputs(
                600.0,
                vec![
                    member(&format!("{name}-serving"), 10, 400.0, Some(high)),
                    member(&format!("{name}-batch"), 0, 400.0, Some(low)),
                ],
            );
            rack.name = name.into();
            rack.parent = Some(0);
            rack.unmanaged_watts = Some(20.0);
            rack
        };
        vec![
            row,
            rack("a", held[0], held[1]),
            rack("b", held[2], held[3]),
        ]
    }

    fn allocated(decisions: &[Decision]) -> Vec<i64> {
        decisions
            .iter()
            .flat_map(|d| d.allocations.iter().flatten().copied())
            .collect()
    }

    #[test]
    fn a_row_cut_reaches_the_batch_of_both_racks_before_any_serving() {
        // 1000 W less 50 reserved and 2 x 20 unmanaged: 910 W for four
        // policies wanting 440 W each (their probe): both serving get
        // theirs, the batch of both racks share the 30 W left.
        let decisions = decide_tree(&row([200, 200, 200, 200]));
        let watts = allocated(&decisions);
        assert_eq!(watts.len(), 4, "{decisions:?}");
        assert!(watts[0] > watts[1] && watts[2] > watts[3], "{watts:?}");
        assert!(watts.iter().sum::<i64>() <= 910, "{watts:?}");
        // The next period, from what was staged: serving at its demand.
        let next = row([watts[0], watts[1], watts[2], watts[3]]);
        let decisions = decide_tree(&next);
        let watts = allocated(&decisions);
        assert_eq!((watts[0], watts[2]), (440, 440), "{decisions:?}");
        assert!(watts[1] + watts[3] <= 30, "{watts:?}");
        // The row lists both racks; each rack's status says what it got.
        let children = &decisions[0].status.children;
        let names: Vec<&str> = children.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        for (rack, child) in decisions[1..].iter().zip(children) {
            assert_eq!(child.watts, 600);
            let policies: i64 = rack.allocations.iter().flatten().sum();
            assert_eq!(child.allocated_watts, policies as f64 + 20.0);
            let granted = rack.status.granted_watts.unwrap_or_default();
            assert!(
                granted <= 600.0 && granted >= child.allocated_watts,
                "{rack:?}"
            );
            assert_eq!(
                rack.status.available_watts,
                Some(granted - 20.0),
                "{rack:?}"
            );
        }
    }

    #[test]
    fn a_rack_never_gets_more_than_its_own_watts() {
        // Rack a may take only 300 W: its serving gets what is left of them,
        // its batch nothing, while rack b's batch takes the row's rest.
        let mut tree = row([0, 0, 0, 0]);
        tree[1].watts = 300.0;
        let watts = allocated(&decide_tree(&tree));
        assert!(watts[0] + watts[1] <= 280, "{watts:?}");
        assert_eq!(watts[1], 0, "{watts:?}");
    }

    #[test]
    fn a_child_below_its_lowest_power_limits_is_not_arbitrated_and_takes_its_watts() {
        let mut tree = row([200, 200, 200, 200]);
        tree[1].floor_watts = 700.0;
        let decisions = decide_tree(&tree);
        assert_eq!(decisions[1].allocations, vec![None, None]);
        assert_eq!(
            condition(&decisions[1], conditions::VALID),
            (false, "BelowMinimumPowerLimits".into())
        );
        // The row counts rack a at its whole 600 W: 1000 - 50 - 600 - 20
        // leaves 330 W for rack b.
        let b: i64 = decisions[2].allocations.iter().flatten().sum();
        assert!(b <= 330, "{decisions:?}");
        assert!(condition(&decisions[2], conditions::VALID).0);
    }
}
