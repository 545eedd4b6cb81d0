//! A policy's `status.energy`: joules over its life, joules and the share
//! of time spent capping over the last hour.
//!
//! The lifetime figure lives in the status: each measurement adds the
//! interval since the previous one to the stored value, so a restart or a
//! new leader carries on from what was written. The last hour is kept in
//! memory, in one-minute slots ([`HourWindow`], 60 of them whatever the
//! period, so memory per policy is fixed). A controller that has no window
//! for a policy yet (it just started, or just became the leader) seeds one
//! with the stored hour as a single slot at the time it was written: those
//! joules age out an hour later, all at once, instead of minute by minute.
//!
//! Intervals follow the per-policy series' rule ([`crate::policy_metrics`]):
//! an interval counts with the power of its later measurement, only when
//! both measurements are fresh and no longer apart than the caller's
//! `max_gap`.
//!
//! The status is not written after every measurement (see [`crate::due`]),
//! so the window, not the stored status, knows when the previous
//! measurement was taken and the lifetime that includes the measurements
//! not written yet; the stored status only seeds a new window. A restart
//! loses what was measured since the last write, at most a heartbeat.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use climatik_api::{
    PolicyEnergy, PowerCappingPolicyStatus,
    bounds::{MAX_HOUR_JOULES, MAX_LIFETIME_JOULES},
    names::conditions,
};
use k8s_openapi::jiff::Timestamp;

use crate::{conditions::is_true, metrics::PolicyLabels};

/// Seconds in the window `lastHourJoules` and `throttledFraction` cover.
pub const HOUR_SECONDS: f64 = 3600.0;
/// One slot per minute of the hour.
const SLOTS: usize = 60;
const SLOT_SECONDS: i64 = 60;

/// The energy and capping time of one minute.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Slot {
    /// Minutes since the epoch this slot holds; slots of older minutes are
    /// stale and count for nothing.
    minute: i64,
    joules: f64,
    capping_seconds: f64,
}

/// The last hour of one policy, in a fixed ring of one-minute slots.
#[derive(Debug, Clone, PartialEq)]
pub struct HourWindow {
    slots: [Slot; SLOTS],
    /// The end of the last interval added, in milliseconds since the
    /// epoch: an interval that overlaps it (a status read from a cache
    /// that had not seen our last write yet) counts only from there.
    counted_until_ms: Option<i64>,
    /// The last measurement this window saw: when (milliseconds since the
    /// epoch) and whether it was fresh. `None` for a window just seeded.
    last_measured: Option<(i64, bool)>,
    /// The lifetime joules last computed, measurements not yet written
    /// included; `None` until the first one (the stored value counts).
    lifetime_joules: Option<f64>,
}

impl Default for HourWindow {
    fn default() -> Self {
        Self {
            slots: [Slot {
                minute: i64::MIN,
                ..Slot::default()
            }; SLOTS],
            counted_until_ms: None,
            last_measured: None,
            lifetime_joules: None,
        }
    }
}

/// One interval between two fresh measurements.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    /// Start: when the previous measurement was written.
    pub from: Timestamp,
    /// End: this measurement.
    pub to: Timestamp,
    /// Power of this measurement, in watts.
    pub watts: f64,
    /// The Capping condition this measurement sets is True.
    pub capping: bool,
}

fn minute_of(at: Timestamp) -> i64 {
    at.as_second().div_euclid(SLOT_SECONDS)
}

fn slot_index(minute: i64) -> usize {
    // rem_euclid of a positive modulus is in 0..SLOTS.
    usize::try_from(minute.rem_euclid(SLOTS as i64)).unwrap_or(0)
}

impl HourWindow {
    /// A window that holds `stored`'s hour as one slot at `written`.
    pub fn seeded(stored: &PolicyEnergy, written: Timestamp) -> Self {
        let mut window = Self::default();
        window.put(
            minute_of(written),
            finite(stored.last_hour_joules),
            finite(stored.throttled_fraction) * HOUR_SECONDS,
        );
        window.counted_until_ms = Some(written.as_millisecond());
        window
    }

    fn put(&mut self, minute: i64, joules: f64, capping_seconds: f64) {
        let slot = &mut self.slots[slot_index(minute)];
        if slot.minute != minute {
            *slot = Slot {
                minute,
                ..Slot::default()
            };
        }
        slot.joules += joules;
        slot.capping_seconds += capping_seconds;
    }

    /// Adds `interval`, less any part already counted, to the minute it
    /// ends in; returns the joules added.
    pub fn add(&mut self, interval: &Interval) -> f64 {
        let to_ms = interval.to.as_millisecond();
        let from_ms = interval
            .from
            .as_millisecond()
            .max(self.counted_until_ms.unwrap_or(i64::MIN));
        if to_ms <= from_ms {
            return 0.0;
        }
        let seconds = (to_ms - from_ms) as f64 / 1000.0;
        let joules = finite(interval.watts).max(0.0) * seconds;
        let capping = if interval.capping { seconds } else { 0.0 };
        self.put(minute_of(interval.to), joules, capping);
        self.counted_until_ms = Some(to_ms);
        joules
    }

    /// Joules and capping seconds of the hour up to `now`: the slots of the
    /// current minute and the 59 before it.
    pub fn totals(&self, now: Timestamp) -> (f64, f64) {
        let current = minute_of(now);
        self.slots
            .iter()
            .filter(|s| s.minute <= current && s.minute > current - SLOTS as i64)
            .fold((0.0, 0.0), |(j, c), s| {
                (j + s.joules, c + s.capping_seconds)
            })
    }
}

fn finite(value: f64) -> f64 {
    if value.is_finite() { value } else { 0.0 }
}

/// When the previous measurement was taken, if it was fresh: the last one
/// `window` saw, or for a window that saw none, the one of the stored
/// status (`previous`, fresh when its MetricsAvailable is True).
pub fn previous_fresh(
    window: &HourWindow,
    previous: &PowerCappingPolicyStatus,
) -> Option<Timestamp> {
    match window.last_measured {
        Some((at_ms, fresh)) => fresh
            .then(|| Timestamp::from_millisecond(at_ms).ok())
            .flatten(),
        None => (is_true(&previous.conditions, conditions::METRICS_AVAILABLE) == Some(true))
            .then(|| previous.last_updated.as_ref().map(|t| t.0))
            .flatten(),
    }
}

/// The interval since the previous measurement that counts towards
/// energy: `None` when this measurement is not fresh, the previous one was
/// not or is unknown (`previous_fresh` is `None`), or they lie further
/// apart than `max_gap` (or in the wrong order: clock skew).
pub fn interval(
    previous_fresh: Option<Timestamp>,
    fresh: bool,
    now: Timestamp,
    max_gap: Duration,
) -> Option<(Timestamp, Timestamp)> {
    if !fresh {
        return None;
    }
    let from = previous_fresh?;
    let elapsed_ms = now.as_millisecond() - from.as_millisecond();
    let max_ms = i64::try_from(max_gap.as_millis()).unwrap_or(i64::MAX);
    (elapsed_ms > 0 && elapsed_ms <= max_ms).then_some((from, now))
}

/// `status.energy` after `counted` (if any) was added: the lifetime the
/// window last computed (the stored one for a new window) plus what the
/// window took, the window's hour, each within the schema's bounds.
pub fn next(
    stored: Option<&PolicyEnergy>,
    window: &mut HourWindow,
    counted: Option<&Interval>,
    now: Timestamp,
) -> PolicyEnergy {
    let added = counted.map_or(0.0, |i| window.add(i));
    let base = window
        .lifetime_joules
        .unwrap_or_else(|| stored.map_or(0.0, |e| e.lifetime_joules));
    let lifetime = round(
        (finite(base).max(0.0) + added).min(MAX_LIFETIME_JOULES),
        100.0,
    );
    window.lifetime_joules = Some(lifetime);
    let (hour_joules, capping_seconds) = window.totals(now);
    PolicyEnergy {
        lifetime_joules: lifetime,
        last_hour_joules: round(hour_joules.clamp(0.0, MAX_HOUR_JOULES), 100.0),
        throttled_fraction: round((capping_seconds / HOUR_SECONDS).clamp(0.0, 1.0), 10_000.0),
    }
}

fn round(value: f64, per_unit: f64) -> f64 {
    (value * per_unit).round() / per_unit
}

/// Every policy's window on this replica. Boxed: a window is 1.5 KiB,
/// and the table is copied whole each time it grows.
#[derive(Default)]
pub struct Windows(Mutex<HashMap<PolicyLabels, Box<HourWindow>>>);

/// One measurement of a policy, as its energy counts it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    /// Prometheus answered about the policy's pods this time.
    pub fresh: bool,
    /// The policy's power, in watts.
    pub watts: f64,
    /// The Capping condition this measurement sets is True.
    pub capping: bool,
}

impl Windows {
    /// `policy`'s energy after `reading`, taken at `now`, seeding its
    /// window from `previous` (the stored status) the first time. The
    /// interval since the previous fresh measurement counts when it is no
    /// longer than `max_gap`.
    pub fn update(
        &self,
        policy: &PolicyLabels,
        previous: &PowerCappingPolicyStatus,
        reading: Reading,
        now: Timestamp,
        max_gap: Duration,
    ) -> PolicyEnergy {
        let mut windows = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let window = windows.entry(policy.clone()).or_insert_with(|| {
            Box::new(
                match (previous.energy.as_ref(), previous.last_updated.as_ref()) {
                    (Some(stored), Some(written)) => HourWindow::seeded(stored, written.0),
                    _ => HourWindow::default(),
                },
            )
        });
        let counted = interval(
            previous_fresh(window, previous),
            reading.fresh,
            now,
            max_gap,
        )
        .map(|(from, to)| Interval {
            from,
            to,
            watts: reading.watts,
            capping: reading.capping,
        });
        window.last_measured = Some((now.as_millisecond(), reading.fresh));
        next(previous.energy.as_ref(), window, counted.as_ref(), now)
    }

    /// Drops the windows of every policy for which `keep` is false.
    pub fn retain(&self, keep: impl Fn(&PolicyLabels) -> bool) {
        let mut windows = self.0.lock().unwrap_or_else(|p| p.into_inner());
        windows.retain(|policy, _| keep(policy));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use proptest::prelude::*;

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn span(from: i64, to: i64, watts: f64, capping: bool) -> Interval {
        Interval {
            from: at(from),
            to: at(to),
            watts,
            capping,
        }
    }

    const GAP: Duration = Duration::from_secs(45);

    fn measured_at(second: i64, metrics: bool) -> PowerCappingPolicyStatus {
        PowerCappingPolicyStatus {
            last_updated: Some(Time(at(second))),
            conditions: vec![Condition {
                type_: conditions::METRICS_AVAILABLE.into(),
                status: if metrics { "True" } else { "False" }.into(),
                reason: "r".into(),
                message: String::new(),
                observed_generation: None,
                last_transition_time: Time(at(0)),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn only_intervals_between_fresh_measurements_close_together_count() {
        let new = HourWindow::default();
        let previous = previous_fresh(&new, &measured_at(1000, true));
        assert_eq!(previous, Some(at(1000)));
        assert_eq!(
            interval(previous, true, at(1015), GAP),
            Some((at(1000), at(1015)))
        );
        // This measurement held old readings.
        assert_eq!(interval(previous, false, at(1015), GAP), None);
        // The previous one had no metrics.
        assert_eq!(previous_fresh(&new, &measured_at(1000, false)), None);
        assert_eq!(
            previous_fresh(&new, &PowerCappingPolicyStatus::default()),
            None
        );
        // Too far apart, or in the wrong order.
        assert_eq!(interval(previous, true, at(1100), GAP), None);
        assert_eq!(interval(previous, true, at(990), GAP), None);
        // A window that saw a measurement goes by it, not by the status.
        let mut seen = HourWindow {
            last_measured: Some((at(1030).as_millisecond(), true)),
            ..HourWindow::default()
        };
        assert_eq!(
            previous_fresh(&seen, &measured_at(1000, true)),
            Some(at(1030))
        );
        seen.last_measured = Some((at(1030).as_millisecond(), false));
        assert_eq!(previous_fresh(&seen, &measured_at(1000, true)), None);
    }

    #[test]
    fn measurements_not_written_still_count_once() {
        let windows = Windows::default();
        let key = PolicyLabels {
            namespace: "ns".into(),
            policy: "p".into(),
        };
        let reading = Reading {
            fresh: true,
            watts: 100.0,
            capping: false,
        };
        // Written at 1000; measured at 1015, 1030 and 1045 without a write
        // in between: each 15 s counts once, the lifetime keeps them all.
        let stored = measured_at(1000, true);
        let mut e = None;
        for second in [1015, 1030, 1045] {
            e = Some(windows.update(&key, &stored, reading, at(second), GAP));
        }
        let e = e.expect("measured");
        assert_eq!(e.lifetime_joules, 4500.0);
        assert_eq!(e.last_hour_joules, 4500.0);
    }

    #[test]
    fn lifetime_adds_to_the_stored_value_and_the_hour_forgets() {
        let mut window = HourWindow::default();
        // 15 s at 200 W, capping; then 15 s at 100 W, not capping.
        let e = next(None, &mut window, Some(&span(0, 15, 200.0, true)), at(15));
        let e = next(
            Some(&e),
            &mut window,
            Some(&span(15, 30, 100.0, false)),
            at(30),
        );
        assert_eq!(e.lifetime_joules, 4500.0);
        assert_eq!(e.last_hour_joules, 4500.0);
        assert_eq!(e.throttled_fraction, round(15.0 / 3600.0, 10_000.0));
        // An hour later nothing is left of the hour, all of the lifetime.
        let later = next(Some(&e), &mut window, None, at(30 + 3600));
        assert_eq!(later.lifetime_joules, 4500.0);
        assert_eq!(later.last_hour_joules, 0.0);
        assert_eq!(later.throttled_fraction, 0.0);
    }

    #[test]
    fn a_new_controller_carries_on_from_the_stored_energy() {
        let stored = PolicyEnergy {
            lifetime_joules: 1e6,
            last_hour_joules: 7200.0,
            throttled_fraction: 0.5,
        };
        let windows = Windows::default();
        let key = PolicyLabels {
            namespace: "ns".into(),
            policy: "p".into(),
        };
        let mut previous = measured_at(1000, true);
        previous.energy = Some(stored);
        let reading = Reading {
            fresh: true,
            watts: 100.0,
            capping: true,
        };
        let e = windows.update(&key, &previous, reading, at(1010), GAP);
        assert_eq!(e.lifetime_joules, 1e6 + 1000.0);
        assert_eq!(e.last_hour_joules, 8200.0);
        assert_eq!(e.throttled_fraction, round(1810.0 / 3600.0, 10_000.0));
        // The seeded hour ages out an hour after it was written.
        let e = windows.update(&key, &previous, reading, at(1000 + 3660), GAP);
        assert_eq!(e.last_hour_joules, 0.0);
        assert_eq!(e.lifetime_joules, 1e6 + 1000.0);
    }

    #[test]
    fn an_interval_read_from_a_stale_status_is_not_counted_twice() {
        let mut window = HourWindow::default();
        assert_eq!(window.add(&span(0, 10, 100.0, false)), 1000.0);
        // The cache still had the status written at 0: only 10..20 is new.
        assert_eq!(window.add(&span(0, 20, 100.0, false)), 1000.0);
        assert_eq!(window.totals(at(20)).0, 2000.0);
    }

    #[test]
    fn figures_stay_within_the_schema() {
        let stored = PolicyEnergy {
            lifetime_joules: f64::NAN,
            last_hour_joules: f64::INFINITY,
            throttled_fraction: 7.0,
        };
        let mut window = HourWindow::seeded(&stored, at(0));
        let e = next(
            Some(&stored),
            &mut window,
            Some(&span(0, 3600, 1e12, true)),
            at(3600),
        );
        assert_eq!(e.last_hour_joules, MAX_HOUR_JOULES);
        assert_eq!(e.throttled_fraction, 1.0);
        assert!(e.lifetime_joules <= MAX_LIFETIME_JOULES);
    }

    proptest! {
        /// Whatever the periods, the hour holds exactly what was added in
        /// its minutes, and the lifetime never falls.
        #[test]
        fn the_hour_is_the_sum_of_its_intervals(
            steps in prop::collection::vec((1i64..120, 0.0f64..2000.0, any::<bool>()), 1..200),
        ) {
            let mut window = HourWindow::default();
            let mut energy: Option<PolicyEnergy> = None;
            let mut t = 0i64;
            let mut added: Vec<(i64, f64, f64)> = Vec::new();
            for (dt, watts, capping) in steps {
                let e = next(energy.as_ref(), &mut window, Some(&span(t, t + dt, watts, capping)), at(t + dt));
                t += dt;
                added.push((t, watts * dt as f64, if capping { dt as f64 } else { 0.0 }));
                if let Some(before) = &energy {
                    prop_assert!(e.lifetime_joules >= before.lifetime_joules);
                }
                let minute = t.div_euclid(60);
                let (joules, capping): (f64, f64) = added
                    .iter()
                    .filter(|(end, _, _)| end.div_euclid(60) > minute - 60)
                    .fold((0.0, 0.0), |(j, c), (_, dj, dc)| (j + dj, c + dc));
                prop_assert!((e.last_hour_joules - round(joules, 100.0)).abs() < 0.02 + joules * 1e-12);
                prop_assert!((e.throttled_fraction - round(capping / HOUR_SECONDS, 10_000.0)).abs() < 1e-9);
                energy = Some(e);
            }
        }
    }
}
