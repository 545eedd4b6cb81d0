//! When a write to the API server is due: the material-change rules that
//! keep the controllers quiet at scale. Every period each policy is
//! measured and its targets computed, but a policy's status and a node's
//! entries are written only when something that matters changed, or when
//! a heartbeat is due. Each rule is a pure function over the object as the
//! API server holds it (the last write) and what would be written now, so
//! the rules are unit-tested and their answer names a reason for the
//! `climatik_write_decisions_total` metric.

use std::time::Duration;

use climatik_api::{CpuFrequency, GpuFrequency, PowerCappingPolicyStatus};
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

/// The configurable part of [`StatusRules`], as the monitor's flags set it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StatusWrites {
    /// See [`StatusRules::power_fraction`].
    pub power_fraction: f64,
    /// The heartbeat, in measuring periods.
    pub heartbeat_periods: u32,
    /// At most this many heartbeats a second over all policies: with more
    /// policies than `heartbeat_periods` allows at that rate, the heartbeat
    /// stretches to `policies / heartbeats_per_second`.
    pub heartbeats_per_second: f64,
}

impl Default for StatusWrites {
    /// 5 % of the cap: within the dead band of the `feedback` algorithm
    /// (it holds clocks between 92 % and 99 % of the cap), so a move it
    /// would act on is written. Three periods: a status at most 45 s old
    /// at the default period, and a restart loses at most that much of the
    /// energy. Two heartbeats a second: a small part of the API server's
    /// churn budget (about 20 mutating calls a second for a whole cluster),
    /// reached from 90 policies (2/s times 45 s) at the default period; at 1000 the
    /// heartbeat is 500 s.
    fn default() -> Self {
        Self {
            power_fraction: 0.05,
            heartbeat_periods: 3,
            heartbeats_per_second: 2.0,
        }
    }
}

impl StatusWrites {
    /// The rules for a monitor measuring `policies` every `period`.
    pub fn rules(&self, period: Duration, policies: usize) -> StatusRules {
        let in_periods = period * self.heartbeat_periods.max(1);
        // A rate of zero or less (or not a number) sets no bound.
        let spread = Duration::try_from_secs_f64(policies as f64 / self.heartbeats_per_second)
            .unwrap_or(Duration::ZERO);
        StatusRules {
            power_fraction: self.power_fraction,
            heartbeat: in_periods.max(spread),
            period,
        }
    }
}

/// What makes a policy's status worth writing.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusRules {
    /// Power (the policy's, or one device's) that moved by more than this
    /// fraction of the cap since the last write is written.
    pub power_fraction: f64,
    /// A status is written at least this often, so `lastUpdated` and
    /// `status.energy` stay current and a reader can tell a live monitor
    /// from a stopped one.
    pub heartbeat: Duration,
    /// The measuring period: a heartbeat is due half a period early, as the
    /// periods do not fall exactly on it.
    pub period: Duration,
}

/// Why a policy's status is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusReason {
    /// Nothing written yet (or written before `lastUpdated` existed).
    First,
    /// A new spec generation, cap or effective cap.
    Spec,
    /// A condition's status or reason.
    Condition,
    /// The matched pods, or the nodes and devices measured.
    Pods,
    /// Power moved by more than the configured share of the cap.
    Power,
    /// Power above the cap: the recommender lowers clocks each period on
    /// each measurement, so every one is written.
    OverCap,
    /// No write for the heartbeat.
    Heartbeat,
}

impl StatusReason {
    pub fn metric_label(self) -> &'static str {
        match self {
            Self::First => "first",
            Self::Spec => "spec",
            Self::Condition => "condition",
            Self::Pods => "pods",
            Self::Power => "power",
            Self::OverCap => "over_cap",
            Self::Heartbeat => "heartbeat",
        }
    }
}

/// Whether `next` (built from this period's measurement) is worth writing
/// over `previous` (the status as the API server holds it), and why; `None`
/// leaves the stored status as it is. Energy, clocks, messages and
/// `lastUpdated` alone never make a write: they change every period.
pub fn status_due(
    previous: &PowerCappingPolicyStatus,
    next: &PowerCappingPolicyStatus,
    now: Timestamp,
    rules: &StatusRules,
) -> Option<StatusReason> {
    let Some(written) = previous.last_updated.as_ref() else {
        return Some(StatusReason::First);
    };
    if previous.observed_generation != next.observed_generation
        || previous.power_cap_limit != next.power_cap_limit
        || previous.effective_cap_watts != next.effective_cap_watts
        || previous.effective_priority != next.effective_priority
    {
        return Some(StatusReason::Spec);
    }
    // Only the conditions this write carries: the stored status also holds
    // other writers' (the recommender's AlgorithmValid).
    let changed = next.conditions.iter().any(|c| {
        !previous
            .conditions
            .iter()
            .any(|p| p.type_ == c.type_ && p.status == c.status && p.reason == c.reason)
    });
    if changed {
        return Some(StatusReason::Condition);
    }
    if previous.matched_pod_count != next.matched_pod_count
        || previous.matched_pods != next.matched_pods
        || previous.pod_priority != next.pod_priority
        || ids(previous) != ids(next)
    {
        return Some(StatusReason::Pods);
    }
    let cap = next
        .effective_cap_watts
        .or(next.power_cap_limit)
        .unwrap_or(0) as f64;
    if next.current_power.is_some_and(|w| w > cap) {
        return Some(StatusReason::OverCap);
    }
    let step = rules.power_fraction * cap;
    let moved = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => (a - b).abs() > step,
        (None, None) => false,
        _ => true,
    };
    let device_moved = previous
        .device_powers()
        .iter()
        .zip(next.device_powers().iter())
        .any(|(a, b)| moved(Some(a.2), Some(b.2)));
    if moved(previous.current_power, next.current_power) || device_moved {
        return Some(StatusReason::Power);
    }
    heartbeat_due(written, now, rules.heartbeat, rules.period).then_some(StatusReason::Heartbeat)
}

/// `(node, device)` of every device measured, in a fixed order.
fn ids(status: &PowerCappingPolicyStatus) -> Vec<(&str, &str)> {
    status
        .device_powers()
        .into_iter()
        .map(|(n, d, _)| (n, d))
        .collect()
}

/// Whether `heartbeat` has passed since `written`, less half a `period`
/// (the measurement falling due just before it would otherwise wait a whole
/// period more). A time in our future (clock skew) is due. `lastUpdated`
/// is stored in whole seconds, so the write may have come up to a second
/// after the time it shows: counted from its end, so that short periods
/// (a second in the tests) do not bring the heartbeat forward a period.
fn heartbeat_due(written: &Time, now: Timestamp, heartbeat: Duration, period: Duration) -> bool {
    let written_ms = written.0.as_millisecond();
    let stored_in_seconds = written_ms % 1000 == 0;
    let age_ms = now.as_millisecond() - written_ms - if stored_in_seconds { 999 } else { 0 };
    let Ok(age) = u64::try_from(age_ms).map(Duration::from_millis) else {
        return true;
    };
    age + period / 2 >= heartbeat
}

/// Why one policy's entries on one node are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntriesReason {
    /// A target, budget or device differs from what the node holds.
    Changed,
    /// A quarter of the entries' lifetime has passed since they were renewed.
    Renew,
}

impl EntriesReason {
    pub fn metric_label(self) -> &'static str {
        match self {
            Self::Changed => "changed",
            Self::Renew => "renew",
        }
    }
}

/// Whether one policy's entries on a node are worth writing: `held_*` are
/// its entries the node's NodeFrequencies holds now, `wanted_*` this
/// period's. Entries that ask for the same as the held ones are renewed
/// once a quarter of `ttl` has passed since the earliest of them was
/// written: a renewal every quarter lifetime instead of every period, while
/// an outage of the API server or the recommender still finds at least
/// three quarters of a lifetime left. (Renewing at half the lifetime lifted
/// the caps in the chaos suite: a 29 s API server restart plus the
/// recommender's re-election outlasted the 30 s left of a 60 s entry.)
/// Entries `keptByLease` are never renewed (their agent keeps them alive
/// while the recommender's Lease is renewed); a change of that flag is a
/// change like any other.
pub fn entries_due(
    held: (&[GpuFrequency], &[CpuFrequency]),
    wanted: (&[GpuFrequency], &[CpuFrequency]),
    now: Timestamp,
    ttl: Duration,
) -> Option<EntriesReason> {
    let gpus = |entries: &[GpuFrequency]| {
        let mut v: Vec<_> = entries
            .iter()
            .map(|e| {
                (
                    e.gpu_id.clone(),
                    e.target_frequency,
                    e.power_budget_watts.map(f64::to_bits),
                    e.budget_group.clone(),
                    e.kept_by_lease,
                )
            })
            .collect();
        v.sort();
        v
    };
    let cpus = |entries: &[CpuFrequency]| {
        let mut v: Vec<(i32, i32, bool)> = entries
            .iter()
            .map(|e| (e.cpu_id, e.target_frequency, e.kept_by_lease))
            .collect();
        v.sort();
        v
    };
    if gpus(held.0) != gpus(wanted.0) || cpus(held.1) != cpus(wanted.1) {
        return Some(EntriesReason::Changed);
    }
    let earliest = held
        .0
        .iter()
        .filter(|e| !e.kept_by_lease)
        .map(|e| &e.expires_at)
        .chain(
            held.1
                .iter()
                .filter(|e| !e.kept_by_lease)
                .map(|e| &e.expires_at),
        )
        .map(|t| t.0.as_millisecond())
        .min()?;
    let left_ms = earliest - now.as_millisecond();
    let renew_below_ms = i64::try_from(ttl.as_millis() * 3 / 4).unwrap_or(i64::MAX);
    (left_ms <= renew_below_ms).then_some(EntriesReason::Renew)
}

#[cfg(test)]
mod tests {
    use super::*;
    use climatik_api::{DevicePower, NodePower};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    const RULES: StatusRules = StatusRules {
        power_fraction: 0.05,
        heartbeat: Duration::from_secs(45),
        period: Duration::from_secs(15),
    };

    fn condition(type_: &str, status: &str, reason: &str, message: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            observed_generation: Some(1),
            last_transition_time: Time(at(0)),
        }
    }

    /// A measured status of a 1000 W cap: two GPUs on one node.
    fn status(written: i64, gpu_watts: [f64; 2]) -> PowerCappingPolicyStatus {
        let total = gpu_watts[0] + gpu_watts[1];
        PowerCappingPolicyStatus {
            observed_generation: Some(1),
            power_cap_limit: Some(1000),
            effective_cap_watts: Some(1000),
            current_power: Some(total),
            matched_pods: vec!["a".into()],
            matched_pod_count: 1,
            nodes: vec![NodePower {
                node_name: "n1".into(),
                power_watts: total,
                devices: gpu_watts
                    .iter()
                    .enumerate()
                    .map(|(i, w)| DevicePower {
                        device_id: format!("GPU-{i}"),
                        power_watts: *w,
                        frequency_mhz: Some(1400.0 + written as f64),
                    })
                    .collect(),
            }],
            conditions: vec![
                condition("Ready", "True", "Observed", "measuring"),
                condition("Capping", "True", "AboveThreshold", &format!("{total} W")),
            ],
            last_updated: Some(Time(at(written))),
            ..Default::default()
        }
    }

    #[test]
    fn the_heartbeat_stretches_to_keep_the_fleet_under_its_rate() {
        let writes = StatusWrites::default();
        let period = Duration::from_secs(15);
        // Few policies: three periods.
        assert_eq!(writes.rules(period, 10).heartbeat, Duration::from_secs(45));
        assert_eq!(writes.rules(period, 90).heartbeat, Duration::from_secs(45));
        // 1000 policies at two heartbeats a second: one each 500 s.
        assert_eq!(
            writes.rules(period, 1000).heartbeat,
            Duration::from_secs(500)
        );
        // No bound when the rate is not a positive number.
        for rate in [0.0, -1.0, f64::NAN] {
            let unbounded = StatusWrites {
                heartbeats_per_second: rate,
                ..writes
            };
            assert_eq!(
                unbounded.rules(period, 1000).heartbeat,
                Duration::from_secs(45)
            );
        }
    }

    #[test]
    fn steady_power_is_written_only_for_the_heartbeat() {
        let previous = status(100, [400.0, 450.0]);
        // Power within 5 % of the cap (50 W), clocks, messages and the
        // time changed: nothing to write.
        let next = status(115, [420.0, 470.0]);
        assert_eq!(status_due(&previous, &next, at(115), &RULES), None);
        assert_eq!(status_due(&previous, &next, at(138), &RULES), None);
        // Half a period before the heartbeat, counted from the end of the
        // second lastUpdated shows: due.
        assert_eq!(
            status_due(&previous, &next, at(139), &RULES),
            Some(StatusReason::Heartbeat)
        );
        // A status stamped in our future (clock skew) is rewritten.
        assert_eq!(
            status_due(&previous, &next, at(50), &RULES),
            Some(StatusReason::Heartbeat)
        );
    }

    #[test]
    fn power_that_moved_by_more_than_the_share_of_the_cap_is_written() {
        let previous = status(100, [400.0, 450.0]);
        // The policy's power moved by 60 W.
        assert_eq!(
            status_due(&previous, &status(115, [430.0, 480.0]), at(115), &RULES),
            Some(StatusReason::Power)
        );
        // The total is the same but 60 W moved from one GPU to the other.
        assert_eq!(
            status_due(&previous, &status(115, [460.0, 390.0]), at(115), &RULES),
            Some(StatusReason::Power)
        );
        // Over the cap: every measurement, however small the move.
        let over = status(100, [500.0, 510.0]);
        assert_eq!(
            status_due(&over, &status(115, [501.0, 510.0]), at(115), &RULES),
            Some(StatusReason::OverCap)
        );
    }

    #[test]
    fn spec_conditions_and_pods_are_written_at_once() {
        let previous = status(100, [400.0, 450.0]);
        let steady = || status(115, [400.0, 450.0]);
        assert_eq!(
            status_due(
                &PowerCappingPolicyStatus::default(),
                &steady(),
                at(115),
                &RULES
            ),
            Some(StatusReason::First)
        );
        let mut next = steady();
        next.observed_generation = Some(2);
        assert_eq!(
            status_due(&previous, &next, at(115), &RULES),
            Some(StatusReason::Spec)
        );
        let mut next = steady();
        next.effective_cap_watts = Some(900);
        assert_eq!(
            status_due(&previous, &next, at(115), &RULES),
            Some(StatusReason::Spec)
        );
        let mut next = steady();
        next.conditions[1] = condition("Capping", "False", "BelowThreshold", "");
        assert_eq!(
            status_due(&previous, &next, at(115), &RULES),
            Some(StatusReason::Condition)
        );
        // Another writer's condition in the stored status is none of ours.
        let mut theirs = previous.clone();
        theirs
            .conditions
            .push(condition("AlgorithmValid", "True", "Valid", ""));
        assert_eq!(status_due(&theirs, &steady(), at(115), &RULES), None);
        let mut next = steady();
        next.conditions.push(condition(
            "CapReachable",
            "True",
            "AboveMinimumPowerLimit",
            "",
        ));
        assert_eq!(
            status_due(&previous, &next, at(115), &RULES),
            Some(StatusReason::Condition)
        );
        let mut next = steady();
        next.matched_pods.push("b".into());
        next.matched_pod_count = 2;
        assert_eq!(
            status_due(&previous, &next, at(115), &RULES),
            Some(StatusReason::Pods)
        );
        let mut next = steady();
        next.nodes[0].devices[1].device_id = "GPU-9".into();
        assert_eq!(
            status_due(&previous, &next, at(115), &RULES),
            Some(StatusReason::Pods)
        );
    }

    fn gpu(id: &str, mhz: i32, expires: i64) -> GpuFrequency {
        GpuFrequency {
            gpu_id: id.into(),
            target_frequency: mhz,
            power_budget_watts: None,
            budget_group: None,
            policy: "ns/p".into(),
            expires_at: Time(at(expires)),
            kept_by_lease: false,
        }
    }

    fn cpu(id: i32, mhz: i32, expires: i64) -> CpuFrequency {
        CpuFrequency {
            cpu_id: id,
            target_frequency: mhz,
            policy: "ns/p".into(),
            expires_at: Time(at(expires)),
            kept_by_lease: false,
        }
    }

    #[test]
    fn entries_are_written_when_they_change_or_a_quarter_of_their_life_is_gone() {
        let ttl = Duration::from_secs(120);
        let held = [gpu("GPU-0", 1400, 220), gpu("GPU-1", 1300, 220)];
        let cpus = [cpu(0, 2000, 220)];
        // Renewed at 100 for 120 s: the same targets wait until 130.
        let same = [gpu("GPU-1", 1300, 235), gpu("GPU-0", 1400, 235)];
        let wanted_cpus = [cpu(0, 2000, 235)];
        assert_eq!(
            entries_due((&held, &cpus), (&same, &wanted_cpus), at(115), ttl),
            None
        );
        assert_eq!(
            entries_due((&held, &cpus), (&same, &wanted_cpus), at(129), ttl),
            None
        );
        assert_eq!(
            entries_due((&held, &cpus), (&same, &wanted_cpus), at(130), ttl),
            Some(EntriesReason::Renew)
        );
        // A CPU entry renewed earlier than the GPUs' counts.
        let older = [cpu(0, 2000, 170)];
        assert_eq!(
            entries_due((&held, &older), (&same, &wanted_cpus), at(115), ttl),
            Some(EntriesReason::Renew)
        );
        // A new target, budget, budget group, device or CPU target: at once.
        let lower = [gpu("GPU-0", 1385, 235), gpu("GPU-1", 1300, 235)];
        let mut budget = same.clone();
        budget[0].power_budget_watts = Some(350.0);
        let mut grouped = same.clone();
        grouped[0].budget_group = Some("ns/p".into());
        let fewer = [gpu("GPU-0", 1400, 235)];
        for wanted in [&lower[..], &budget[..], &grouped[..], &fewer[..]] {
            assert_eq!(
                entries_due((&held, &cpus), (wanted, &wanted_cpus), at(115), ttl),
                Some(EntriesReason::Changed)
            );
        }
        let slower = [cpu(0, 1800, 235)];
        assert_eq!(
            entries_due((&held, &cpus), (&same, &slower), at(115), ttl),
            Some(EntriesReason::Changed)
        );
        // Nothing held yet: written.
        assert_eq!(
            entries_due((&[], &[]), (&same, &wanted_cpus), at(115), ttl),
            Some(EntriesReason::Changed)
        );
        // Nothing held and nothing wanted: nothing to write.
        assert_eq!(entries_due((&[], &[]), (&[], &[]), at(115), ttl), None);
    }

    fn kept<T: Clone>(entries: &[T], set: impl Fn(&mut T)) -> Vec<T> {
        entries
            .iter()
            .cloned()
            .map(|mut e| {
                set(&mut e);
                e
            })
            .collect()
    }

    #[test]
    fn entries_kept_by_the_lease_are_written_on_change_only() {
        let ttl = Duration::from_secs(120);
        let keep_gpu = |e: &mut GpuFrequency| e.kept_by_lease = true;
        let keep_cpu = |e: &mut CpuFrequency| e.kept_by_lease = true;
        // Written at 100, long expired by 1000: still not due.
        let held = kept(&[gpu("GPU-0", 1400, 220)], keep_gpu);
        let held_cpus = kept(&[cpu(0, 2000, 220)], keep_cpu);
        let same = kept(&[gpu("GPU-0", 1400, 1120)], keep_gpu);
        let same_cpus = kept(&[cpu(0, 2000, 1120)], keep_cpu);
        assert_eq!(
            entries_due((&held, &held_cpus), (&same, &same_cpus), at(1000), ttl),
            None
        );
        // A new target is written at once, kept or not.
        let lower = kept(&[gpu("GPU-0", 1300, 1120)], keep_gpu);
        assert_eq!(
            entries_due((&held, &held_cpus), (&lower, &same_cpus), at(1000), ttl),
            Some(EntriesReason::Changed)
        );
        // The agent stopped announcing the Lease: written unkept at once.
        let unkept = [gpu("GPU-0", 1400, 1120)];
        let unkept_cpus = [cpu(0, 2000, 1120)];
        assert_eq!(
            entries_due((&held, &held_cpus), (&unkept, &unkept_cpus), at(1000), ttl),
            Some(EntriesReason::Changed)
        );
        // And kept again once it announces it: no renewal in between.
        assert_eq!(
            entries_due((&unkept, &unkept_cpus), (&same, &same_cpus), at(1000), ttl),
            Some(EntriesReason::Changed)
        );
        // One unkept entry among kept ones is renewed as before.
        let mixed_cpus = [cpu(0, 2000, 220)];
        assert_eq!(
            entries_due((&held, &mixed_cpus), (&same, &mixed_cpus), at(130), ttl),
            Some(EntriesReason::Renew)
        );
    }
}
