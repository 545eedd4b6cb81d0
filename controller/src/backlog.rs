//! How far behind the monitor is: how many policies are due for a
//! measurement and have not had it, and how long the least recently
//! measured policy has waited. Under overload every policy must still be
//! served in turn; these two gauges show it (the oldest age stays under
//! two periods when none is starved), where the reconcile count alone would
//! not tell a policy measured twice from two measured once.
//!
//! The monitor's reconciles are scheduled by kube-runtime's controller: a
//! policy is requeued a period after its measurement, and the scheduler
//! hands out the earliest deadline first as reconcile slots free up, so a
//! backlog is worked off oldest first.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use climatik_api::PowerCappingPolicy;
use kube::runtime::reflector::Store;

use crate::{
    driver,
    lease::Leadership,
    metrics::{Metrics, PolicyLabels},
};

/// How often the gauges are brought up to date.
const SURVEY_EVERY: Duration = Duration::from_secs(1);

/// When each policy was last measured (or, never measured, first seen).
#[derive(Debug, Default)]
pub(crate) struct Backlog {
    since: Mutex<HashMap<PolicyLabels, Instant>>,
}

/// What [`Backlog::survey`] found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Survey {
    /// Policies whose last measurement is a period or more ago.
    pub due: usize,
    /// Age of the least recently measured policy.
    pub oldest: Duration,
}

impl Backlog {
    /// Records that `policy` was measured at `at`.
    pub(crate) fn measured(&self, policy: &PolicyLabels, at: Instant) {
        self.lock().insert(policy.clone(), at);
    }

    /// Surveys `policies` (those that exist now) at `now`; a policy seen
    /// for the first time counts from now. Policies not listed are
    /// forgotten.
    pub(crate) fn survey(
        &self,
        policies: impl IntoIterator<Item = PolicyLabels>,
        now: Instant,
        interval: Duration,
    ) -> Survey {
        let mut since = self.lock();
        let mut current = HashMap::with_capacity(since.len());
        let mut survey = Survey {
            due: 0,
            oldest: Duration::ZERO,
        };
        for policy in policies {
            let at = since.get(&policy).copied().unwrap_or(now);
            let age = now.saturating_duration_since(at);
            if age >= interval {
                survey.due += 1;
            }
            survey.oldest = survey.oldest.max(age);
            current.insert(policy, at);
        }
        *since = current;
        survey
    }

    /// How many policies are known: those the last survey found, and any
    /// measured since.
    pub(crate) fn policies(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PolicyLabels, Instant>> {
        self.since.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Keeps the backlog gauges of `metrics` current for the policies of
/// `policies` until `shutdown`: zero while this replica does not lead (it
/// measures nothing, so nothing of its own is late).
pub(crate) async fn report(
    backlog: &Backlog,
    policies: Store<PowerCappingPolicy>,
    leadership: Leadership,
    metrics: &Metrics,
    interval: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let surveys = async {
        if !driver::synced(&policies).await {
            return;
        }
        let mut ticks = tokio::time::interval(SURVEY_EVERY);
        loop {
            ticks.tick().await;
            let listed = if leadership.is_leader() {
                policies.state()
            } else {
                Vec::new()
            };
            let survey = backlog.survey(
                listed.iter().map(|p| PolicyLabels::of(p)),
                Instant::now(),
                interval,
            );
            metrics.set_backlog(survey.due, survey.oldest);
        }
    };
    tokio::select! {
        _ = surveys => {}
        _ = shutdown => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(name: &str) -> PolicyLabels {
        PolicyLabels {
            namespace: "ns".into(),
            policy: name.into(),
        }
    }

    #[test]
    fn the_least_recently_measured_policy_sets_the_age() {
        let backlog = Backlog::default();
        let period = Duration::from_secs(10);
        let start = Instant::now();
        let at = |secs| start + Duration::from_secs(secs);
        // First seen: nothing is due yet.
        let first = backlog.survey([labels("a"), labels("b")], at(0), period);
        assert_eq!(
            first,
            Survey {
                due: 0,
                oldest: Duration::ZERO
            }
        );
        backlog.measured(&labels("a"), at(5));
        // b was never measured: it has waited since it was first seen.
        let later = backlog.survey([labels("a"), labels("b")], at(12), period);
        assert_eq!(
            later,
            Survey {
                due: 1,
                oldest: Duration::from_secs(12)
            }
        );
        backlog.measured(&labels("b"), at(13));
        let served = backlog.survey([labels("a"), labels("b")], at(16), period);
        assert_eq!(
            served,
            Survey {
                due: 1,
                oldest: Duration::from_secs(11)
            }
        );
        // A deleted policy no longer counts, and a new one starts afresh.
        let gone = backlog.survey([labels("b"), labels("c")], at(20), period);
        assert_eq!(
            gone,
            Survey {
                due: 0,
                oldest: Duration::from_secs(7)
            }
        );
    }
}
