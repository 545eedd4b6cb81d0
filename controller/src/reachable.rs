//! Whether a policy's cap is one its GPUs can be held to: the
//! `CapReachable` condition.
//!
//! Two things show a cap out of reach. The GPUs accept no power limit below
//! their minimum (NodeFrequencies `status.gpus[].minPowerLimitWatts`), so a
//! cap under the sum of those minimums is one the GPUs' own limits cannot
//! hold. And GPUs already at their lowest SM clock that still draw more
//! than the cap have nothing left to give: that is decided only when two
//! measurements in a row (this one and the previous status) show it, since
//! DCGM samples power and clock at slightly different moments and one
//! reading taken just as the clock came down would look the same.
//!
//! The condition is True when nothing shows the cap out of reach, which
//! includes GPUs whose agent reports no minimum power limit.

use std::collections::BTreeMap;

use climatik_api::{PowerCappingPolicyStatus, names::conditions};

use crate::{conditions::Decided, observe::GpuReading};

/// The cap is below the sum of the GPUs' minimum power limits.
pub const BELOW_MINIMUM_POWER_LIMIT: &str = "BelowMinimumPowerLimit";
/// The GPUs draw more than the cap at their lowest clock.
pub const ABOVE_CAP_AT_LOWEST_CLOCK: &str = "AboveCapAtLowestClock";

/// A clock this close to the lowest one counts as the lowest: DCGM reports
/// whole MHz, the inventory the driver's table.
const CLOCK_TOLERANCE_MHZ: f64 = 1.0;

/// `CapReachable` for a policy with cap `cap_watts` whose GPUs read
/// `gpus` now; `previous` is the status of the measurement before. `None`
/// when the policy measured no GPU: nothing to tell.
pub fn decide(
    cap_watts: i64,
    gpus: &[GpuReading],
    previous: &PowerCappingPolicyStatus,
) -> Option<Decided> {
    if gpus.is_empty() {
        return None;
    }
    let cap = cap_watts as f64;
    let count = gpus.len();
    let floor: Option<f64> = gpus.iter().map(|g| g.floor.min_power_limit_watts).sum();
    if let Some(floor) = floor
        && cap < floor
    {
        return Some(Decided::new(
            conditions::CAP_REACHABLE,
            false,
            BELOW_MINIMUM_POWER_LIMIT,
            format!(
                "the cap of {cap_watts} W is below {floor:.0} W, the sum of the minimum power \
                 limits of the policy's {count} GPU(s)"
            ),
        ));
    }
    let power: f64 = gpus.iter().map(|g| g.power_watts).sum();
    if power > cap && all_at_lowest_clock(gpus) && previous_at_lowest_clock(gpus, previous, cap) {
        return Some(Decided::new(
            conditions::CAP_REACHABLE,
            false,
            ABOVE_CAP_AT_LOWEST_CLOCK,
            format!(
                "the policy's {count} GPU(s) draw {power:.1} W at their lowest clock, above the \
                 cap of {cap_watts} W, in two measurements in a row"
            ),
        ));
    }
    let message = match floor {
        Some(floor) => format!(
            "the cap of {cap_watts} W is at or above {floor:.0} W, the sum of the minimum power \
             limits of the policy's {count} GPU(s)"
        ),
        None => format!(
            "not every one of the policy's {count} GPU(s) reports a minimum power limit; \
             nothing shows the cap of {cap_watts} W out of reach"
        ),
    };
    Some(Decided::new(
        conditions::CAP_REACHABLE,
        true,
        if floor.is_some() {
            "AboveMinimumPowerLimit"
        } else {
            "MinimumPowerLimitUnknown"
        },
        message,
    ))
}

fn at_lowest(clock: Option<f64>, lowest: Option<f64>) -> bool {
    matches!((clock, lowest), (Some(c), Some(l)) if c <= l + CLOCK_TOLERANCE_MHZ)
}

fn all_at_lowest_clock(gpus: &[GpuReading]) -> bool {
    gpus.iter()
        .all(|g| at_lowest(g.clock_mhz, g.floor.min_clock_mhz))
}

/// Whether the previous status shows the same GPUs, all at their lowest
/// clock, drawing more than `cap` together.
fn previous_at_lowest_clock(
    gpus: &[GpuReading],
    previous: &PowerCappingPolicyStatus,
    cap: f64,
) -> bool {
    let before: BTreeMap<(&str, &str), (f64, Option<f64>)> = previous
        .nodes
        .iter()
        .flat_map(|n| {
            n.devices.iter().map(|d| {
                (
                    (n.node_name.as_str(), d.device_id.as_str()),
                    (d.power_watts, d.frequency_mhz),
                )
            })
        })
        .collect();
    let mut power = 0.0;
    for gpu in gpus {
        match before.get(&(gpu.node.as_str(), gpu.uuid.as_str())) {
            Some((watts, clock)) if at_lowest(*clock, gpu.floor.min_clock_mhz) => power += watts,
            _ => return false,
        }
    }
    power > cap
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::{GpuFloor, node_powers};

    fn gpu(uuid: &str, watts: f64, clock: f64, min_limit: Option<f64>) -> GpuReading {
        GpuReading {
            node: "n1".into(),
            uuid: uuid.into(),
            power_watts: watts,
            clock_mhz: Some(clock),
            floor: GpuFloor {
                min_power_limit_watts: min_limit,
                min_clock_mhz: Some(345.0),
            },
        }
    }

    fn status_of(gpus: &[GpuReading]) -> PowerCappingPolicyStatus {
        PowerCappingPolicyStatus {
            nodes: node_powers(gpus, &BTreeMap::new()),
            ..Default::default()
        }
    }

    fn verdict(d: Option<Decided>) -> Option<(bool, String)> {
        d.map(|d| (d.status, d.reason))
    }

    #[test]
    fn a_cap_below_the_sum_of_minimum_power_limits_is_unreachable() {
        let gpus = [
            gpu("A", 150.0, 1980.0, Some(200.0)),
            gpu("B", 150.0, 1980.0, Some(200.0)),
        ];
        let none = PowerCappingPolicyStatus::default();
        let below = decide(399, &gpus, &none);
        assert_eq!(
            verdict(below.clone()),
            Some((false, BELOW_MINIMUM_POWER_LIMIT.into()))
        );
        let message = below.map(|d| d.message).unwrap_or_default();
        assert!(
            message.contains("399 W") && message.contains("400 W"),
            "{message}"
        );
        assert_eq!(
            verdict(decide(400, &gpus, &none)),
            Some((true, "AboveMinimumPowerLimit".into()))
        );
        // One GPU without a reported minimum: the sum is unknown.
        let partial = [gpus[0].clone(), gpu("C", 150.0, 1980.0, None)];
        assert_eq!(
            verdict(decide(100, &partial, &none)),
            Some((true, "MinimumPowerLimitUnknown".into()))
        );
        assert_eq!(decide(100, &[], &none), None);
    }

    #[test]
    fn over_the_cap_at_the_lowest_clock_twice_in_a_row_is_unreachable() {
        let low = [
            gpu("A", 160.0, 345.0, Some(100.0)),
            gpu("B", 160.0, 345.0, Some(100.0)),
        ];
        // The first such reading alone decides nothing.
        let fast = [
            gpu("A", 400.0, 1980.0, Some(100.0)),
            gpu("B", 400.0, 1980.0, Some(100.0)),
        ];
        assert_eq!(
            verdict(decide(300, &low, &status_of(&fast))),
            Some((true, "AboveMinimumPowerLimit".into()))
        );
        assert_eq!(
            verdict(decide(300, &low, &status_of(&low))),
            Some((false, ABOVE_CAP_AT_LOWEST_CLOCK.into()))
        );
        // Within the cap at the lowest clock: reachable.
        assert_eq!(
            verdict(decide(330, &low, &status_of(&low))),
            Some((true, "AboveMinimumPowerLimit".into()))
        );
        // One GPU above its lowest clock still has room to go down.
        let mixed = [low[0].clone(), gpu("B", 160.0, 900.0, Some(100.0))];
        assert_eq!(
            verdict(decide(300, &mixed, &status_of(&mixed))),
            Some((true, "AboveMinimumPowerLimit".into()))
        );
    }
}
