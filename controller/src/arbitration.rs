//! The arbitration of a shared PowerBudget: how the watts available to the
//! policies it covers are divided among them. Pure, so the rules are
//! unit- and property-tested, and the budget bench calls the same code the
//! controller runs.
//!
//! Each [`Claim`] is one policy: its priority, its guarantee (`minWatts`),
//! its own cap and its estimated demand. [`allocate`] gives every claim a
//! share in `0 ..= cap` by these rules, in this order:
//!
//! 1. **Guarantees.** Each claim is first given its guarantee,
//!    `min(min_watts, cap_watts)`. When the guarantees together exceed the
//!    available watts the budget is *overcommitted*: guarantees are granted
//!    by priority, highest first, equal priorities pro rata to their
//!    guarantees, and the lower tiers get what is left, possibly nothing.
//!    Nothing else is handed out then. Guarantees are never cut otherwise.
//! 2. **Demand.** What is left goes to the tiers highest priority first,
//!    each claim up to `min(demand, cap)` (never below its guarantee).
//!    Within a tier the watts are shared max-min fair (water-filling): every
//!    claim is raised to one common level, none beyond its demand, so a
//!    small demand is met in full before a large one gets more than it.
//! 3. **Headroom, to the held first.** What is left once every demand is
//!    met goes first to the claims *held short*: held at their allocation
//!    (measured within [`HELD_FRACTION`] of the level it holds them to)
//!    while that allocation is less than they last asked for, so they may
//!    need more than they can draw; highest priority first and max-min
//!    fair within a tier, up to each one's cap. Watts a falling workload
//!    frees so go at once to the workloads its allocation held back,
//!    instead of waiting for their probes to climb to them a step a
//!    period. A policy that got all it asked for and draws it is held too,
//!    but not short: it probes as usual.
//! 4. **Headroom, to the rest.** What is still left is spread the same
//!    way over every claim up to its cap: a workload that bursts, or probes
//!    above its measured power, finds the watts there.
//!
//! Invariants: the shares sum to at most `max(available, 0)`, also when
//! the budget is overcommitted (within floating-point rounding, a few ulps
//! of the sum); each share lies in `[0, cap]`; more available watts never
//! give any claim less. A NaN, infinite or negative input counts as zero
//! (an infinite `available` counts as the largest finite number, and any
//! watt value above 10^15 as that), so no share is ever NaN.
//!
//! [`allocate_tree`] divides a tree of budgets (a row over its racks) as
//! one by the same rules, so priorities hold across the tree while no
//! budget's subtree gets more than its own watts; its doc gives the rule.
//!
//! [`estimate_demand`] turns a policy's measured power into its demand: a
//! policy held at its allocation may need more than it is allowed to draw,
//! so it asks for a little more than it measures (a probe). When the
//! probe is granted and the workload does not use it, the policy keeps
//! that demand while it draws about what it drew when it probed, so the
//! allocation stays put at constant load; its demand falls back to what
//! it measures once the workload draws clearly less.

/// What one policy asks of a budget.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Claim {
    /// Higher is served first and cut last.
    pub priority: i32,
    /// The guarantee, in watts; only as much of it as the cap counts.
    pub min_watts: f64,
    /// The policy's own cap, in watts: no share exceeds it.
    pub cap_watts: f64,
    /// The estimated demand, in watts ([`estimate_demand`]).
    pub demand_watts: f64,
    /// The policy draws what its allocation holds it to, and that
    /// allocation is less than it last asked for ([`held_short`]): it gets
    /// headroom before the others.
    pub held: bool,
}

/// The shares decided by [`allocate`].
#[derive(Clone, Debug, PartialEq)]
pub struct Arbitration {
    /// One share per claim, in watts, in the order of the claims.
    pub watts: Vec<f64>,
    /// The guarantees alone exceed the available watts.
    pub overcommitted: bool,
}

/// How close to its allocation a policy's measured power must be for the
/// policy to count as held there: within 3 %, about the noise of a
/// feedback loop holding a cap.
pub const HELD_FRACTION: f64 = 0.97;

/// Divides `available_watts` among `claims` by the rules in the module
/// header.
pub fn allocate(available_watts: f64, claims: &[Claim]) -> Arbitration {
    let available = if available_watts.is_nan() {
        0.0
    } else {
        available_watts.clamp(0.0, f64::MAX)
    };
    let caps: Vec<f64> = claims.iter().map(|c| watts(c.cap_watts)).collect();
    let guarantees: Vec<f64> = claims
        .iter()
        .zip(&caps)
        .map(|(c, cap)| watts(c.min_watts).min(*cap))
        .collect();
    let targets: Vec<f64> = claims
        .iter()
        .zip(&caps)
        .zip(&guarantees)
        .map(|((c, cap), guarantee)| watts(c.demand_watts).min(*cap).max(*guarantee))
        .collect();
    // The held claims' ceiling in the first headroom pass: their caps; the
    // others stay at their demand there.
    let held_caps: Vec<f64> = claims
        .iter()
        .zip(&caps)
        .zip(&targets)
        .map(|((c, cap), target)| if c.held { *cap } else { *target })
        .collect();
    let tiers = tiers(claims);

    let guaranteed: f64 = guarantees.iter().sum();
    if guaranteed > available {
        return Arbitration {
            watts: cut_guarantees(available, &tiers, &guarantees),
            overcommitted: true,
        };
    }
    let mut shares = guarantees;
    let mut left = available - guaranteed;
    // Demand first, then headroom to the held claims, then to everyone:
    // each pass raises the shares it reaches towards its ceilings, tier by
    // tier, until nothing is left.
    for ceilings in [&targets, &held_caps, &caps] {
        for tier in &tiers {
            if left <= 0.0 {
                break;
            }
            let floor: Vec<f64> = tier.iter().map(|&i| shares[i]).collect();
            let ceiling: Vec<f64> = tier.iter().map(|&i| ceilings[i]).collect();
            let filled = water_fill(&floor, &ceiling, left);
            let added: f64 = filled.iter().zip(&floor).map(|(f, l)| f - l).sum();
            for (&i, share) in tier.iter().zip(filled) {
                shares[i] = share;
            }
            left = (left - added).max(0.0);
        }
    }
    Arbitration {
        watts: shares,
        overcommitted: false,
    }
}

/// The demand of a policy measured at `measured_watts` whose allocation
/// holds it at `allocated_watts` (`None`: no allocation holds it), where
/// the last period estimated `previous_demand_watts` (`None`: unknown).
///
/// - A policy [`held`] at the level its allocation holds it to may need
///   more, so its demand is its measured power plus `probe_fraction` of it
///   (a probe).
/// - A policy not held that still draws about what its last demand was
///   probed from (at least [`HELD_FRACTION`] of `previous / (1 + probe)`)
///   keeps that demand, at most a probe above what it measures now. This
///   is the hysteresis that keeps an allocation still at constant load:
///   without it a probe granted and not used lowers the demand to the
///   measured power, the allocation follows, the policy is held again and
///   probes again, and its allocation flips between the two every period.
///   A workload that really drops falls out of the band and its demand
///   with it.
/// - Otherwise its demand is what it measures.
///
/// `allocated_watts` is the level the policy is actually held to: where
/// the controller keeps a policy below its cap (a capping threshold), that
/// level, not the cap.
pub fn estimate_demand(
    measured_watts: f64,
    allocated_watts: Option<f64>,
    previous_demand_watts: Option<f64>,
    probe_fraction: f64,
) -> f64 {
    let measured = watts(measured_watts);
    // Read like a watt value: NaN or a negative fraction means no probe.
    let probe = watts(probe_fraction);
    let probed = (measured * (1.0 + probe)).min(MAX_WATTS);
    if held(measured, allocated_watts) {
        return probed;
    }
    match previous_demand_watts.map(watts) {
        Some(previous)
            if previous > measured && measured >= previous / (1.0 + probe) * HELD_FRACTION =>
        {
            previous.min(probed)
        }
        _ => measured,
    }
}

/// Whether a policy measured at `measured_watts` is held at the level its
/// allocation holds it to, `held_at_watts` (`None`: no allocation holds
/// it): measured at or within [`HELD_FRACTION`] of it.
pub fn held(measured_watts: f64, held_at_watts: Option<f64>) -> bool {
    held_at_watts
        .map(watts)
        .is_some_and(|at| at > 0.0 && watts(measured_watts) >= at * HELD_FRACTION)
}

/// Whether a policy is held short: [`held`] at `held_at_watts` while its
/// allocation, `allocated_watts`, is less than it asked for last period,
/// `previous_demand_watts`. Such a policy gets headroom first.
pub fn held_short(
    measured_watts: f64,
    held_at_watts: Option<f64>,
    allocated_watts: Option<f64>,
    previous_demand_watts: Option<f64>,
) -> bool {
    held(measured_watts, held_at_watts)
        && allocated_watts
            .zip(previous_demand_watts)
            .is_some_and(|(allocated, asked)| watts(asked) > watts(allocated))
}

/// Largest watt value the arbitration reads: far above any budget (a
/// PowerBudget stops at 10 MW), and small enough that sums over any number
/// of claims stay finite.
const MAX_WATTS: f64 = 1e15;

/// A watt value as the arbitration reads it: NaN, infinite and negative
/// values count as zero, values above [`MAX_WATTS`] as that.
fn watts(value: f64) -> f64 {
    if value.is_finite() && value > 0.0 {
        value.min(MAX_WATTS)
    } else {
        0.0
    }
}

/// Indices of the claims grouped by priority, highest first.
fn tiers(claims: &[Claim]) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..claims.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(claims[i].priority));
    let mut tiers: Vec<Vec<usize>> = Vec::new();
    for i in order {
        match tiers.last_mut() {
            Some(tier) if claims[tier[0]].priority == claims[i].priority => tier.push(i),
            _ => tiers.push(vec![i]),
        }
    }
    tiers
}

/// The overcommitted case: guarantees granted highest tier first; the tier
/// that does not fit shares what is left pro rata to its guarantees, and
/// the tiers below it get nothing.
fn cut_guarantees(available: f64, tiers: &[Vec<usize>], guarantees: &[f64]) -> Vec<f64> {
    let mut shares = vec![0.0; guarantees.len()];
    let mut left = available;
    for tier in tiers {
        let wanted: f64 = tier.iter().map(|&i| guarantees[i]).sum();
        if wanted <= left {
            for &i in tier {
                shares[i] = guarantees[i];
            }
            left -= wanted;
        } else {
            // wanted > left >= 0, so the division is by a positive number.
            let fraction = left / wanted;
            for &i in tier {
                shares[i] = guarantees[i] * fraction;
            }
            break;
        }
    }
    shares
}

/// Max-min fair water-filling: raises every share from `floor` towards its
/// `ceiling` to one common level `L` (share = `clamp(L, floor, ceiling)`),
/// using at most `extra` watts. `floor[i] <= ceiling[i]` for every `i`.
fn water_fill(floor: &[f64], ceiling: &[f64], extra: f64) -> Vec<f64> {
    let added = |level: f64| -> f64 {
        floor
            .iter()
            .zip(ceiling)
            .map(|(lo, hi)| (level.min(*hi) - lo).max(0.0))
            .sum()
    };
    let room: f64 = floor.iter().zip(ceiling).map(|(lo, hi)| hi - lo).sum();
    if extra >= room {
        return ceiling.to_vec();
    }
    if extra <= 0.0 {
        return floor.to_vec();
    }
    // `added` is piecewise linear and non-decreasing with its kinks at the
    // floors and ceilings: find the last kink it does not pass `extra` at,
    // then the level on the straight piece after it.
    let mut kinks: Vec<f64> = floor.iter().chain(ceiling).copied().collect();
    kinks.sort_by(f64::total_cmp);
    kinks.dedup();
    let below = kinks.partition_point(|&k| added(k) <= extra);
    // added(max ceiling) = room > extra, so `below` < kinks.len(); and
    // added(min floor) = 0 <= extra, so `below` >= 1.
    let from = kinks[below.saturating_sub(1)];
    let rising = floor
        .iter()
        .zip(ceiling)
        .filter(|(lo, hi)| **lo <= from && **hi > from)
        .count();
    let level = if rising == 0 {
        from
    } else {
        from + (extra - added(from)) / rising as f64
    };
    floor
        .iter()
        .zip(ceiling)
        .map(|(lo, hi)| level.max(*lo).min(*hi))
        .collect()
}

/// One budget of a tree, as [`allocate_tree`] reads it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TreeBudget {
    /// Index of the budget it draws from; `None` for the root. A parent
    /// index out of range or on a cycle counts as none.
    pub parent: Option<usize>,
    /// What the claims in its subtree (its own and its descendants') may
    /// take together, in watts: its `spec.watts` less the reserved and
    /// unmanaged power of its subtree.
    pub room_watts: f64,
}

/// The shares decided by [`allocate_tree`].
#[derive(Clone, Debug, PartialEq)]
pub struct TreeArbitration {
    /// One share per claim, in watts, in the order of the claims.
    pub watts: Vec<f64>,
    /// Per budget: the guarantees in its subtree alone exceed the watts it
    /// may give them (its own room, or an ancestor's when that is smaller).
    pub overcommitted: Vec<bool>,
}

/// Divides a tree of budgets among `claims`, where `owners[i]` is the
/// index in `budgets` of the budget claim `i` belongs to (one out of range
/// gets nothing).
///
/// A tree is arbitrated as one, so priorities hold across it, and no
/// budget's subtree takes more than its `room_watts`:
///
/// 1. The claims of the whole tree are arbitrated flat, by [`allocate`],
///    within the root's room.
/// 2. A budget whose subtree's claims then take more than its own room
///    (the outermost such budgets, where they nest) is *bound*: its
///    claims are arbitrated within its room alone, by these same rules
///    (so a binding grandchild is bound inside it), and fixed there.
/// 3. The fixed shares are taken out of the root's room and the other
///    claims arbitrated again flat in what is left, which only gives them
///    more; repeat from 2 until no budget is over its room.
///
/// Each round binds a budget not bound before, so it ends after at most
/// as many rounds as there are budgets. A tree of one budget gives exactly
/// what [`allocate`] gives; so does a tree whose children never bind.
pub fn allocate_tree(
    budgets: &[TreeBudget],
    owners: &[usize],
    claims: &[Claim],
) -> TreeArbitration {
    let parents = tree_parents(&budgets.iter().map(|b| b.parent).collect::<Vec<_>>());
    let mut watts = vec![0.0; claims.len()];
    let mut overcommitted = vec![false; budgets.len()];
    for root in (0..budgets.len()).filter(|&b| parents[b].is_none()) {
        let tree = Tree {
            parents: &parents,
            budgets,
            owners,
            claims,
        };
        let members: Vec<usize> = (0..claims.len())
            .filter(|&i| tree.within(tree.owner(i), root))
            .collect();
        for (i, share) in tree.fill(root, watts_of(budgets[root].room_watts), &members) {
            watts[i] = share;
        }
        tree.mark_overcommitted(root, f64::MAX, &mut overcommitted);
    }
    TreeArbitration {
        watts,
        overcommitted,
    }
}

/// Each budget's parent index, with those out of range or on a cycle
/// dropped (the budget becomes a root), so every chain of parents ends.
pub fn tree_parents(parents: &[Option<usize>]) -> Vec<Option<usize>> {
    let n = parents.len();
    let mut parents: Vec<Option<usize>> = parents.iter().map(|p| p.filter(|&p| p < n)).collect();
    for b in 0..n {
        // A chain longer than the number of budgets repeats one.
        let mut at = parents[b];
        let mut steps = 0;
        while let Some(p) = at {
            steps += 1;
            if p == b || steps > n {
                parents[b] = None;
                break;
            }
            at = parents[p];
        }
    }
    parents
}

/// A room as [`allocate`] reads its available watts: NaN and negative
/// values count as zero.
fn watts_of(room: f64) -> f64 {
    if room.is_nan() { 0.0 } else { room.max(0.0) }
}

/// Budget `b` is `top` or lies below it, in `parents` as [`tree_parents`]
/// makes them.
pub fn within(parents: &[Option<usize>], b: usize, top: usize) -> bool {
    let mut at = Some(b);
    while let Some(x) = at {
        if x == top {
            return true;
        }
        at = parents.get(x).copied().flatten();
    }
    false
}

/// What [`allocate_tree`] works on, its parents made acyclic.
struct Tree<'a> {
    parents: &'a [Option<usize>],
    budgets: &'a [TreeBudget],
    owners: &'a [usize],
    claims: &'a [Claim],
}

impl Tree<'_> {
    /// The budget claim `i` belongs to; one out of range lies in no tree.
    fn owner(&self, i: usize) -> usize {
        self.owners.get(i).copied().unwrap_or(usize::MAX)
    }

    fn within(&self, b: usize, top: usize) -> bool {
        within(self.parents, b, top)
    }

    /// Shares of the claims `members` (all in `top`'s subtree) within
    /// `room`, binding the budgets below `top` that would exceed theirs.
    fn fill(&self, top: usize, room: f64, members: &[usize]) -> Vec<(usize, f64)> {
        let below: Vec<usize> = (0..self.budgets.len())
            .filter(|&b| b != top && self.within(b, top))
            .collect();
        // Bound budgets and their members' fixed shares.
        let mut bound: Vec<(usize, Vec<(usize, f64)>)> = Vec::new();
        loop {
            let is_bound = |i: usize| bound.iter().any(|(b, _)| self.within(self.owner(i), *b));
            let free: Vec<usize> = members.iter().copied().filter(|&i| !is_bound(i)).collect();
            let fixed: f64 = bound.iter().flat_map(|(_, s)| s).map(|(_, w)| w).sum();
            let flat: Vec<Claim> = free.iter().map(|&i| self.claims[i]).collect();
            let mut shares: Vec<(usize, f64)> = free
                .iter()
                .copied()
                .zip(allocate((room - fixed).max(0.0), &flat).watts)
                .collect();
            shares.extend(bound.iter().flat_map(|(_, s)| s.iter().copied()));
            let taken = |b: usize| -> f64 {
                shares
                    .iter()
                    .filter(|(i, _)| self.within(self.owner(*i), b))
                    .map(|(_, w)| w)
                    .sum()
            };
            let over: Vec<usize> = below
                .iter()
                .copied()
                .filter(|&b| exceeds(taken(b), watts_of(self.budgets[b].room_watts)))
                .collect();
            // The outermost: none of their ancestors below `top` is over.
            let outermost: Vec<usize> = over
                .iter()
                .copied()
                .filter(|&b| !over.iter().any(|&a| a != b && self.within(b, a)))
                .collect();
            if outermost.is_empty() {
                return shares;
            }
            for b in outermost {
                // Binding `b` replaces whatever was bound inside it.
                bound.retain(|(inner, _)| !self.within(*inner, b));
                let inside: Vec<usize> = members
                    .iter()
                    .copied()
                    .filter(|&i| self.within(self.owner(i), b))
                    .collect();
                bound.push((
                    b,
                    self.fill(b, watts_of(self.budgets[b].room_watts), &inside),
                ));
            }
        }
    }

    /// Marks the budgets in `b`'s subtree whose guarantees exceed the
    /// smaller of their room and `limit` (what their ancestors allow).
    fn mark_overcommitted(&self, b: usize, limit: f64, marks: &mut [bool]) {
        let limit = limit.min(watts_of(self.budgets[b].room_watts));
        let guaranteed: f64 = (0..self.claims.len())
            .filter(|&i| self.within(self.owner(i), b))
            .map(|i| {
                let c = &self.claims[i];
                watts(c.min_watts).min(watts(c.cap_watts))
            })
            .sum();
        marks[b] = guaranteed > limit;
        for child in (0..self.budgets.len()).filter(|&c| self.parents[c] == Some(b)) {
            self.mark_overcommitted(child, limit, marks);
        }
    }
}

/// `taken` is above `room` by more than the rounding of a sum of shares.
fn exceeds(taken: f64, room: f64) -> bool {
    taken > room + room.abs() * 1e-12 + 1e-9
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(super) fn claim(priority: i32, min: f64, cap: f64, demand: f64) -> Claim {
        Claim {
            priority,
            min_watts: min,
            cap_watts: cap,
            demand_watts: demand,
            held: false,
        }
    }

    fn held_claim(priority: i32, min: f64, cap: f64, demand: f64) -> Claim {
        Claim {
            held: true,
            ..claim(priority, min, cap, demand)
        }
    }

    fn close(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6)
    }

    #[test]
    fn guarantees_come_before_any_demand() {
        // 500 W: the low-priority guarantee of 200 W is kept although the
        // high-priority claim would take all 500.
        let result = allocate(
            500.0,
            &[
                claim(10, 0.0, 1000.0, 800.0),
                claim(0, 200.0, 1000.0, 800.0),
            ],
        );
        assert!(!result.overcommitted);
        assert!(close(&result.watts, &[300.0, 200.0]), "{result:?}");
    }

    #[test]
    fn a_guarantee_above_the_cap_counts_as_the_cap() {
        let result = allocate(
            1000.0,
            &[claim(0, 900.0, 300.0, 0.0), claim(0, 0.0, 1000.0, 1000.0)],
        );
        assert!(close(&result.watts, &[300.0, 700.0]), "{result:?}");
    }

    #[test]
    fn overcommitted_guarantees_are_cut_lowest_priority_first_and_pro_rata_in_a_tier() {
        let result = allocate(
            700.0,
            &[
                claim(5, 400.0, 1000.0, 1000.0),
                claim(1, 300.0, 1000.0, 1000.0),
                claim(1, 100.0, 1000.0, 1000.0),
                claim(0, 100.0, 1000.0, 1000.0),
            ],
        );
        assert!(result.overcommitted);
        // 400 to the top tier; the 300 left shared 3:1 by the next; none below.
        assert!(
            close(&result.watts, &[400.0, 225.0, 75.0, 0.0]),
            "{result:?}"
        );
    }

    #[test]
    fn higher_tiers_get_their_demand_before_lower_tiers_get_any() {
        let result = allocate(
            1000.0,
            &[claim(0, 0.0, 1000.0, 600.0), claim(100, 0.0, 1000.0, 700.0)],
        );
        assert!(close(&result.watts, &[300.0, 700.0]), "{result:?}");
    }

    #[test]
    fn equal_priorities_share_max_min_fair_up_to_demand() {
        // 900 W among demands 100, 500, 800: the small one is met, the
        // other two meet at 400 each.
        let result = allocate(
            900.0,
            &[
                claim(0, 0.0, 1000.0, 100.0),
                claim(0, 0.0, 1000.0, 500.0),
                claim(0, 0.0, 1000.0, 800.0),
            ],
        );
        assert!(close(&result.watts, &[100.0, 400.0, 400.0]), "{result:?}");
    }

    #[test]
    fn a_guarantee_above_the_fair_level_is_kept() {
        let result = allocate(
            600.0,
            &[claim(0, 400.0, 1000.0, 800.0), claim(0, 0.0, 1000.0, 800.0)],
        );
        assert!(close(&result.watts, &[400.0, 200.0]), "{result:?}");
    }

    #[test]
    fn what_is_left_after_demand_is_headroom_by_priority_up_to_the_caps() {
        let result = allocate(
            2000.0,
            &[
                claim(0, 0.0, 1000.0, 100.0),
                claim(9, 0.0, 700.0, 200.0),
                claim(0, 0.0, 300.0, 100.0),
            ],
        );
        // Demands take 400; the high tier grows to its cap of 700 (+500);
        // the 1100 left fill the low tier: 300 to its cap, 1000 to its cap
        // would need 1200, so level 800 for the first.
        assert!(close(&result.watts, &[1000.0, 700.0, 300.0]), "{result:?}");
        let result = allocate(
            1300.0,
            &[
                claim(0, 0.0, 1000.0, 100.0),
                claim(9, 0.0, 700.0, 200.0),
                claim(0, 0.0, 300.0, 100.0),
            ],
        );
        // 400 demand, 500 to the high tier, 400 left: water level 300 in
        // the low tier (both at 300; the second at its cap).
        assert!(close(&result.watts, &[300.0, 700.0, 300.0]), "{result:?}");
    }

    #[test]
    fn no_share_exceeds_its_cap_even_with_watts_to_spare() {
        let result = allocate(
            1e6,
            &[claim(0, 0.0, 300.0, 5000.0), claim(1, 50.0, 200.0, 0.0)],
        );
        assert!(close(&result.watts, &[300.0, 200.0]), "{result:?}");
    }

    #[test]
    fn bad_input_never_gives_nan_or_more_than_available() {
        for available in [f64::NAN, -100.0, f64::NEG_INFINITY] {
            let result = allocate(available, &[claim(0, 10.0, 100.0, 100.0)]);
            assert_eq!(result.watts, [0.0]);
        }
        let result = allocate(
            500.0,
            &[
                claim(0, f64::NAN, f64::INFINITY, -5.0),
                claim(0, -1.0, f64::NAN, 100.0),
                claim(0, 100.0, 1000.0, f64::NAN),
            ],
        );
        assert!(result.watts.iter().all(|w| w.is_finite()), "{result:?}");
        // An infinite or NaN cap counts as zero: only the third gets watts.
        assert!(close(&result.watts, &[0.0, 0.0, 500.0]), "{result:?}");
        let result = allocate(f64::INFINITY, &[claim(0, 0.0, 300.0, 300.0)]);
        assert_eq!(result.watts, [300.0]);
        assert_eq!(allocate(100.0, &[]).watts, Vec::<f64>::new());
    }

    #[test]
    fn a_policy_held_at_its_allocation_probes_upward() {
        // Held: within 3 % of the allocation.
        assert!((estimate_demand(300.0, Some(300.0), None, 0.1) - 330.0).abs() < 1e-9);
        assert!((estimate_demand(295.0, Some(300.0), None, 0.1) - 324.5).abs() < 1e-9);
        // Not held: below the allocation, or no allocation at all.
        assert_eq!(estimate_demand(200.0, Some(300.0), None, 0.1), 200.0);
        assert_eq!(estimate_demand(300.0, None, None, 0.1), 300.0);
        // Bad input counts as zero.
        assert_eq!(estimate_demand(f64::NAN, Some(300.0), None, 0.1), 0.0);
        assert_eq!(estimate_demand(300.0, Some(f64::NAN), None, 0.1), 300.0);
        assert_eq!(estimate_demand(300.0, Some(300.0), None, f64::NAN), 300.0);
        assert_eq!(estimate_demand(300.0, Some(300.0), None, -1.0), 300.0);
        assert_eq!(estimate_demand(300.0, None, Some(f64::NAN), 0.1), 300.0);
    }

    #[test]
    fn an_unused_probe_is_kept_while_the_workload_draws_what_it_probed_from() {
        // Probed from 150 W to 165 W, granted, and the workload draws 155 W:
        // not held at 165 W, but still the workload that probed.
        assert_eq!(estimate_demand(155.0, Some(165.0), Some(165.0), 0.1), 165.0);
        // Never more than a probe above what it measures now.
        assert!((estimate_demand(146.0, Some(165.0), Some(165.0), 0.1) - 160.6).abs() < 1e-9);
        // A workload that drops clearly below what it probed from lets go.
        assert_eq!(estimate_demand(100.0, Some(165.0), Some(165.0), 0.1), 100.0);
        // A last demand at or below the measured power adds nothing.
        assert_eq!(estimate_demand(155.0, Some(200.0), Some(150.0), 0.1), 155.0);
    }

    /// One budget period of a simple plant: each policy draws its load up
    /// to its allocation, its demand is estimated from that, and the
    /// budget is arbitrated again. Returns the new allocations and
    /// demands.
    fn period(
        available: f64,
        claims: &[Claim],
        loads: &[f64],
        allocations: &[f64],
        previous: &[Option<f64>],
    ) -> (Vec<f64>, Vec<Option<f64>>) {
        let demands: Vec<f64> = loads
            .iter()
            .zip(allocations)
            .zip(previous)
            .map(|((load, allocated), asked)| {
                estimate_demand(load.min(*allocated), Some(*allocated), *asked, 0.1)
            })
            .collect();
        let claims: Vec<Claim> = claims
            .iter()
            .zip(&demands)
            .zip(loads.iter().zip(allocations))
            .zip(previous)
            .map(|(((c, d), (load, allocated)), asked)| Claim {
                demand_watts: *d,
                held: held_short(
                    load.min(*allocated),
                    Some(*allocated),
                    Some(*allocated),
                    *asked,
                ),
                ..*c
            })
            .collect();
        (
            allocate(available, &claims).watts,
            demands.into_iter().map(Some).collect(),
        )
    }

    #[test]
    fn at_constant_load_the_allocations_settle_without_flipping() {
        // Serving (priority 10) draws 155 W and starts held at 150 W;
        // batch (priority 0) would draw all it gets. 320 W to share.
        let claims = [claim(10, 0.0, 300.0, 0.0), claim(0, 0.0, 300.0, 0.0)];
        let loads = [155.0, 1000.0];
        let history = simulate(320.0, &claims, |_| loads.to_vec(), vec![150.0, 170.0], 10);
        // Settled after the first probe: every later period the same.
        for later in &history[2..] {
            assert!(close(later, &history[1]), "{history:?}");
        }
        // And serving is not held below what it draws.
        assert!(history[1][0] >= loads[0], "{history:?}");
    }

    #[test]
    fn headroom_goes_to_a_held_claim_before_a_higher_priority_that_is_not() {
        // 1000 W; demands take 600. The held low-priority claim gets the
        // 400 W left up to its cap of 450 W, although the high-priority
        // claim's cap would take them all.
        let result = allocate(
            1000.0,
            &[
                claim(10, 0.0, 1000.0, 300.0),
                held_claim(0, 0.0, 450.0, 300.0),
            ],
        );
        assert!(close(&result.watts, &[550.0, 450.0]), "{result:?}");
        // Held or not, the demands come first and by priority.
        let result = allocate(
            500.0,
            &[
                claim(10, 0.0, 1000.0, 300.0),
                held_claim(0, 0.0, 450.0, 300.0),
            ],
        );
        assert!(close(&result.watts, &[300.0, 200.0]), "{result:?}");
    }

    /// Runs `periods` budget periods of [`period`] from `allocations` at
    /// the loads `loads(k)` of period `k`; the allocations after each.
    fn simulate(
        available: f64,
        claims: &[Claim],
        loads: impl Fn(usize) -> Vec<f64>,
        mut allocations: Vec<f64>,
        periods: usize,
    ) -> Vec<Vec<f64>> {
        let mut demands = vec![None; claims.len()];
        let mut history = Vec::new();
        for k in 0..periods {
            (allocations, demands) = period(available, claims, &loads(k), &allocations, &demands);
            history.push(allocations.clone());
        }
        history
    }

    #[test]
    fn watts_a_falling_workload_frees_return_within_two_periods() {
        // Serving (priority 10) bursts to 500 W for periods 5 to 9, then
        // falls to 50 W; training (0) wants 500 W all along. 800 W.
        let claims = [claim(10, 0.0, 600.0, 0.0), claim(0, 0.0, 600.0, 0.0)];
        let burst = 5..10;
        let loads = |k: usize| vec![if burst.contains(&k) { 500.0 } else { 50.0 }, 500.0];
        let history = simulate(800.0, &claims, loads, vec![100.0, 500.0], 20);
        assert!(
            history[burst.start - 1][1] >= 500.0,
            "training had its need: {history:?}"
        );
        assert!(
            history[burst.end - 1][1] < 450.0,
            "the burst took watts from training: {history:?}"
        );
        // The first period that sees the fall measures it (period 10), the
        // next is the second: from then on training has its need again.
        for (k, later) in history.iter().enumerate().skip(burst.end + 1) {
            assert!(
                later[1] >= 500.0,
                "period {k}: not back within two periods: {history:?}"
            );
        }
    }

    #[test]
    fn with_headroom_to_spare_the_allocations_settle_without_flipping() {
        // Serving draws 100 W; training needs 450 W of a 600 W cap and
        // starts held at 300 W; 1000 W leave headroom. Training is held,
        // gets the headroom, draws less than it, and must not flip between
        // its need and its cap from then on.
        let claims = [claim(10, 0.0, 1000.0, 0.0), claim(0, 0.0, 600.0, 0.0)];
        let history = simulate(
            1000.0,
            &claims,
            |_| vec![100.0, 450.0],
            vec![100.0, 300.0],
            16,
        );
        for later in &history[6..] {
            assert!(close(later, &history[5]), "{history:?}");
        }
        assert!(history[5][1] >= 450.0, "training has its need: {history:?}");
    }

    /// Sum of the shares may exceed the available watts by rounding only.
    const SLACK: f64 = 1e-6;

    fn claims() -> impl Strategy<Value = Vec<Claim>> {
        let one = (
            0i32..4,
            prop_oneof![Just(0.0), 0.0..800.0f64],
            1.0..1000.0f64,
            0.0..1200.0f64,
            any::<bool>(),
        )
            .prop_map(|(priority, min, cap, demand, held)| Claim {
                held,
                ..claim(priority, min, cap, demand)
            });
        prop::collection::vec(one, 0..12)
    }

    pub(super) fn guarantee(c: &Claim) -> f64 {
        c.min_watts.min(c.cap_watts)
    }

    pub(super) fn target(c: &Claim) -> f64 {
        c.demand_watts.min(c.cap_watts).max(guarantee(c))
    }

    proptest! {
        #[test]
        fn shares_conserve_the_budget_and_respect_the_caps(
            available in -100.0..8000.0f64,
            claims in claims(),
        ) {
            let result = allocate(available, &claims);
            prop_assert_eq!(result.watts.len(), claims.len());
            let sum: f64 = result.watts.iter().sum();
            prop_assert!(sum <= available.max(0.0) + SLACK, "{} > {}", sum, available);
            for (w, c) in result.watts.iter().zip(&claims) {
                prop_assert!(w.is_finite() && *w >= 0.0 && *w <= c.cap_watts, "{:?}", result);
            }
        }

        #[test]
        fn guarantees_are_honoured_when_they_fit(available in 0.0..8000.0f64, claims in claims()) {
            let result = allocate(available, &claims);
            let guaranteed: f64 = claims.iter().map(guarantee).sum();
            prop_assert_eq!(result.overcommitted, guaranteed > available);
            if !result.overcommitted {
                for (w, c) in result.watts.iter().zip(&claims) {
                    prop_assert!(*w >= guarantee(c) - SLACK, "{:?}", result);
                }
            }
        }

        /// A claim short of its demand means every strictly lower-priority
        /// claim is held at (or, overcommitted, below) its guarantee.
        #[test]
        fn lower_priorities_give_way_first(available in 0.0..8000.0f64, claims in claims()) {
            let result = allocate(available, &claims);
            for (i, ci) in claims.iter().enumerate() {
                if result.watts[i] >= target(ci) - SLACK {
                    continue;
                }
                for (j, cj) in claims.iter().enumerate() {
                    if cj.priority < ci.priority {
                        prop_assert!(
                            result.watts[j] <= guarantee(cj) + SLACK,
                            "claim {} short, yet claim {} of lower priority above its guarantee: {:?}",
                            i, j, result
                        );
                    }
                }
            }
        }

        /// Overcommitted, a guarantee is cut only once every strictly
        /// lower-priority claim has nothing.
        #[test]
        fn overcommitted_budgets_cut_the_lowest_priorities_first(
            available in 0.0..2000.0f64,
            claims in claims(),
        ) {
            let result = allocate(available, &claims);
            prop_assume!(result.overcommitted);
            for (i, ci) in claims.iter().enumerate() {
                if result.watts[i] >= guarantee(ci) - SLACK {
                    continue;
                }
                for (j, cj) in claims.iter().enumerate() {
                    if cj.priority < ci.priority {
                        prop_assert!(result.watts[j] <= SLACK, "{:?}", result);
                    }
                }
            }
        }

        /// Within a tier, one claim gets less than another only if it
        /// cannot take more: it is at its demand while the other is within
        /// its own (or held, where it is not: headroom goes to the held
        /// first), or at its cap, or the other is held at its guarantee.
        #[test]
        fn equal_priorities_are_max_min_fair(available in 0.0..8000.0f64, claims in claims()) {
            let result = allocate(available, &claims);
            prop_assume!(!result.overcommitted);
            for (i, ci) in claims.iter().enumerate() {
                for (j, cj) in claims.iter().enumerate() {
                    let (wi, wj) = (result.watts[i], result.watts[j]);
                    if ci.priority != cj.priority || wi >= wj - SLACK {
                        continue;
                    }
                    let i_at_demand = wi >= target(ci) - SLACK;
                    let j_within_demand = wj <= target(cj) + SLACK;
                    let i_at_cap = wi >= ci.cap_watts - SLACK;
                    let j_at_guarantee = wj <= guarantee(cj) + SLACK;
                    let j_held_first = cj.held && !ci.held;
                    prop_assert!(
                        (i_at_demand && (j_within_demand || j_held_first)) || i_at_cap || j_at_guarantee,
                        "claims {} and {} unfair: {:?}", i, j, result
                    );
                }
            }
        }

        #[test]
        fn more_watts_never_give_anyone_less(
            available in 0.0..8000.0f64,
            more in 0.0..4000.0f64,
            claims in claims(),
        ) {
            let less = allocate(available, &claims);
            let plenty = allocate(available + more, &claims);
            for (a, b) in less.watts.iter().zip(&plenty.watts) {
                prop_assert!(*b >= a - SLACK, "{:?} then {:?}", less, plenty);
            }
        }

        /// Headroom goes to the held claims first: a claim not held gets
        /// more than its demand only once every held claim is at its cap.
        #[test]
        fn headroom_goes_to_the_held_first(available in 0.0..8000.0f64, claims in claims()) {
            let result = allocate(available, &claims);
            prop_assume!(!result.overcommitted);
            for (i, ci) in claims.iter().enumerate() {
                if ci.held || result.watts[i] <= target(ci) + SLACK {
                    continue;
                }
                for (j, cj) in claims.iter().enumerate() {
                    if cj.held {
                        prop_assert!(result.watts[j] >= cj.cap_watts - SLACK, "{:?}", result);
                    }
                }
            }
        }

        /// No watt is left over while a claim could take it.
        #[test]
        fn nothing_is_held_back_below_the_caps(available in 0.0..8000.0f64, claims in claims()) {
            let result = allocate(available, &claims);
            let sum: f64 = result.watts.iter().sum();
            let caps: f64 = claims.iter().map(|c| c.cap_watts).sum();
            prop_assert!(sum >= available.min(caps) - SLACK, "{} of {}: {:?}", sum, available, result);
        }

        #[test]
        fn demand_is_measured_power_or_a_probe_above_it(
            measured in 0.0..2000.0f64,
            allocated in prop::option::of(0.0..2000.0f64),
            previous in prop::option::of(0.0..2000.0f64),
            probe in 0.0..0.5f64,
        ) {
            let demand = estimate_demand(measured, allocated, previous, probe);
            let held = allocated.is_some_and(|a| a > 0.0 && measured >= a * HELD_FRACTION);
            let probed = measured * (1.0 + probe);
            if held {
                prop_assert!((demand - probed).abs() < 1e-9);
            } else {
                // Never below what it measures, never above a probe, and
                // above what it measures only by an earlier demand.
                prop_assert!(demand >= measured && demand <= probed + 1e-9);
                prop_assert!(demand == measured || previous.is_some_and(|p| (demand - p.min(probed)).abs() < 1e-9));
            }
        }
    }
}

#[cfg(test)]
mod tree_tests {
    use super::tests::{claim, guarantee, target};
    use super::*;
    use proptest::prelude::*;

    fn budget(parent: Option<usize>, room: f64) -> TreeBudget {
        TreeBudget {
            parent,
            room_watts: room,
        }
    }

    fn close(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6)
    }

    /// A row of 1000 W over two racks, each with a high- and a
    /// low-priority claim of 500 W demand.
    fn row(rack_a: f64, rack_b: f64) -> (Vec<TreeBudget>, Vec<usize>, Vec<Claim>) {
        (
            vec![
                budget(None, 1000.0),
                budget(Some(0), rack_a),
                budget(Some(0), rack_b),
            ],
            vec![1, 1, 2, 2],
            vec![
                claim(10, 0.0, 500.0, 500.0),
                claim(0, 0.0, 500.0, 500.0),
                claim(5, 0.0, 500.0, 500.0),
                claim(1, 0.0, 500.0, 500.0),
            ],
        )
    }

    #[test]
    fn a_row_cut_reaches_the_lowest_priority_of_every_rack_first() {
        let (budgets, owners, claims) = row(2000.0, 2000.0);
        // 1000 W: the two high tiers of both racks are met, nothing left.
        let result = allocate_tree(&budgets, &owners, &claims);
        assert!(
            close(&result.watts, &[500.0, 0.0, 500.0, 0.0]),
            "{result:?}"
        );
        let mut larger = budgets.clone();
        larger[0].room_watts = 1300.0;
        // 300 W more go to rack B's priority 1 before rack A's priority 0.
        let result = allocate_tree(&larger, &owners, &claims);
        assert!(
            close(&result.watts, &[500.0, 0.0, 500.0, 300.0]),
            "{result:?}"
        );
    }

    #[test]
    fn a_binding_rack_is_arbitrated_within_its_watts_and_the_rest_goes_elsewhere() {
        // Rack A may take 300 W: its high-priority claim gets them, and
        // the 700 W left serve rack B, its low priority included.
        let (budgets, owners, claims) = row(300.0, 2000.0);
        let result = allocate_tree(&budgets, &owners, &claims);
        assert!(
            close(&result.watts, &[300.0, 0.0, 500.0, 200.0]),
            "{result:?}"
        );
        assert_eq!(result.overcommitted, [false, false, false]);
    }

    #[test]
    fn a_child_larger_than_its_parent_gets_only_what_the_parent_has() {
        let budgets = [budget(None, 400.0), budget(Some(0), 5000.0)];
        let result = allocate_tree(
            &budgets,
            &[1, 1],
            &[claim(1, 0.0, 1000.0, 1000.0), claim(0, 0.0, 1000.0, 1000.0)],
        );
        assert!(close(&result.watts, &[400.0, 0.0]), "{result:?}");
    }

    #[test]
    fn a_binding_grandchild_inside_a_free_child_is_bound_too() {
        // Row 1000, rack 900, shelf 100: the shelf's claim is cut to 100
        // although the rack and row have room for it.
        let budgets = [
            budget(None, 1000.0),
            budget(Some(0), 900.0),
            budget(Some(1), 100.0),
        ];
        let result = allocate_tree(
            &budgets,
            &[2, 1, 0],
            &[
                claim(9, 0.0, 500.0, 500.0),
                claim(5, 0.0, 500.0, 500.0),
                claim(0, 0.0, 500.0, 500.0),
            ],
        );
        assert!(close(&result.watts, &[100.0, 500.0, 400.0]), "{result:?}");
    }

    #[test]
    fn overcommitted_is_told_per_budget() {
        let budgets = [budget(None, 1000.0), budget(Some(0), 200.0)];
        let result = allocate_tree(
            &budgets,
            &[1, 0],
            &[claim(0, 300.0, 500.0, 500.0), claim(0, 100.0, 500.0, 500.0)],
        );
        assert_eq!(result.overcommitted, [false, true]);
        assert!(close(&result.watts, &[200.0, 500.0]), "{result:?}");
    }

    #[test]
    fn bad_parents_and_owners_never_panic_or_loop() {
        // A cycle and an out-of-range parent count as roots; an owner out
        // of range gets nothing.
        let budgets = [
            budget(Some(1), 100.0),
            budget(Some(0), 100.0),
            budget(Some(7), f64::NAN),
        ];
        let result = allocate_tree(
            &budgets,
            &[0, 1, 2, 9],
            &[
                claim(0, 0.0, 500.0, 500.0),
                claim(0, 0.0, 500.0, 500.0),
                claim(0, 0.0, 500.0, 500.0),
                claim(0, 0.0, 500.0, 500.0),
            ],
        );
        assert!(
            result.watts.iter().all(|w| w.is_finite() && *w >= 0.0),
            "{result:?}"
        );
        assert_eq!(result.watts[2], 0.0);
        assert_eq!(result.watts[3], 0.0);
        assert_eq!(allocate_tree(&[], &[], &[]).watts, Vec::<f64>::new());
    }

    const SLACK: f64 = 1e-6;

    /// Up to five budgets, each drawing from one before it.
    fn trees() -> impl Strategy<Value = Vec<TreeBudget>> {
        prop::collection::vec((any::<prop::sample::Index>(), 0.0..4000.0f64), 1..6).prop_map(
            |budgets| {
                budgets
                    .into_iter()
                    .enumerate()
                    .map(|(b, (parent, room))| budget((b > 0).then(|| parent.index(b)), room))
                    .collect()
            },
        )
    }

    fn owned_claims() -> impl Strategy<Value = Vec<(prop::sample::Index, Claim)>> {
        let one = (
            any::<prop::sample::Index>(),
            0i32..4,
            prop_oneof![Just(0.0), 0.0..800.0f64],
            1.0..1000.0f64,
            0.0..1200.0f64,
        )
            .prop_map(|(owner, priority, min, cap, demand)| {
                (owner, claim(priority, min, cap, demand))
            });
        prop::collection::vec(one, 0..12)
    }

    fn split(
        budgets: &[TreeBudget],
        owned: &[(prop::sample::Index, Claim)],
    ) -> (Vec<usize>, Vec<Claim>) {
        owned
            .iter()
            .map(|(owner, c)| (owner.index(budgets.len()), *c))
            .unzip()
    }

    fn within(budgets: &[TreeBudget], b: usize, top: usize) -> bool {
        let mut at = Some(b);
        while let Some(x) = at {
            if x == top {
                return true;
            }
            at = budgets[x].parent;
        }
        false
    }

    proptest! {
        #[test]
        fn every_budget_of_the_tree_conserves_its_watts(
            budgets in trees(),
            owned in owned_claims(),
        ) {
            let (owners, claims) = split(&budgets, &owned);
            let result = allocate_tree(&budgets, &owners, &claims);
            prop_assert_eq!(result.watts.len(), claims.len());
            for (w, c) in result.watts.iter().zip(&claims) {
                prop_assert!(w.is_finite() && *w >= 0.0 && *w <= c.cap_watts, "{:?}", result);
            }
            for (b, tb) in budgets.iter().enumerate() {
                let taken: f64 = owners
                    .iter()
                    .zip(&result.watts)
                    .filter(|(o, _)| within(&budgets, **o, b))
                    .map(|(_, w)| w)
                    .sum();
                prop_assert!(taken <= tb.room_watts + SLACK, "budget {} takes {}: {:?}", b, taken, result);
            }
        }

        #[test]
        fn a_single_budget_is_allocate(available in -100.0..8000.0f64, owned in owned_claims()) {
            let budgets = [budget(None, available)];
            let (owners, claims) = split(&budgets, &owned);
            let tree = allocate_tree(&budgets, &owners, &claims);
            let flat = allocate(available, &claims);
            prop_assert_eq!(&tree.watts, &flat.watts);
            prop_assert_eq!(tree.overcommitted, vec![flat.overcommitted]);
        }

        /// With no child's watts binding, the tree is one flat budget:
        /// priorities hold across the children, a claim short of its
        /// demand only when every lower priority in the whole tree is at
        /// its guarantee.
        #[test]
        fn priorities_hold_across_children_that_do_not_bind(
            budgets in trees(),
            owned in owned_claims(),
        ) {
            let mut budgets = budgets;
            let root = budgets[0].room_watts;
            for b in budgets.iter_mut().skip(1) {
                b.room_watts += root;
            }
            let (owners, claims) = split(&budgets, &owned);
            let result = allocate_tree(&budgets, &owners, &claims);
            prop_assert_eq!(&result.watts, &allocate(root, &claims).watts);
            for (i, ci) in claims.iter().enumerate() {
                if result.watts[i] >= target(ci) - SLACK {
                    continue;
                }
                for (j, cj) in claims.iter().enumerate() {
                    if cj.priority < ci.priority {
                        prop_assert!(result.watts[j] <= guarantee(cj) + SLACK, "{:?}", result);
                    }
                }
            }
        }

        #[test]
        fn more_watts_at_the_root_never_give_anyone_less(
            budgets in trees(),
            more in 0.0..4000.0f64,
            owned in owned_claims(),
        ) {
            let (owners, claims) = split(&budgets, &owned);
            let less = allocate_tree(&budgets, &owners, &claims);
            let mut richer = budgets.clone();
            richer[0].room_watts += more;
            let plenty = allocate_tree(&richer, &owners, &claims);
            for (a, b) in less.watts.iter().zip(&plenty.watts) {
                prop_assert!(*b >= a - SLACK, "{:?} then {:?}", less, plenty);
            }
        }
    }
}
