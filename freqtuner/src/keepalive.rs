//! The Lease that keeps `keptByLease` entries alive (`--entry-lease`).
//!
//! The recommender's leader renews its election Lease every few seconds
//! anyway. An agent that watches that Lease can keep the recommender's
//! entries alive past their `expiresAt` for as long as the Lease is
//! renewed, so the recommender writes an entry when its target changes
//! and never just to renew it. When no replica renews the Lease any more
//! (both gone, or the API server unreachable from here), the entries
//! lapse `--entry-lease-grace` after the last renewal this agent saw, as
//! they would at their `expiresAt`.
//!
//! Renewals are timed on this agent's clock: a renewal is a new
//! `(holderIdentity, renewTime)` pair seen by the watch, dated when it
//! was seen. Only the first sighting uses the Lease's own `renewTime`
//! (never later than now), so a Lease left behind by a recommender that
//! died long ago does not count as a fresh renewal.

use std::{fmt, str::FromStr, time::Duration};

use k8s_openapi::{api::coordination::v1::Lease, jiff::Timestamp};

/// Default `--entry-lease-grace`: the recommender's default entry
/// lifetime, so kept entries outlast the recommender by as long as
/// renewed ones did.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(120);

/// `namespace/name` of a Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseName {
    pub namespace: String,
    pub name: String,
}

impl FromStr for LeaseName {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.split_once('/') {
            Some((namespace, name))
                if !namespace.is_empty() && !name.is_empty() && !name.contains('/') =>
            {
                Ok(Self {
                    namespace: namespace.into(),
                    name: name.into(),
                })
            }
            _ => Err(format!(
                "expected NAMESPACE/NAME of a Lease (the recommender's leader-election Lease), got {text:?}"
            )),
        }
    }
}

impl fmt::Display for LeaseName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Which Lease keeps entries alive, and for how long after its last
/// renewal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryLease {
    pub lease: LeaseName,
    pub grace: Duration,
}

/// What this agent has seen of the Lease.
#[derive(Debug, Clone, Default)]
pub struct Liveness {
    grace: Duration,
    /// The last renewal seen: holder and `renewTime`.
    last: Option<(String, Timestamp)>,
    /// When it was seen, on this agent's clock.
    seen_at: Option<Timestamp>,
}

impl Liveness {
    pub fn new(grace: Duration) -> Self {
        Self {
            grace,
            ..Self::default()
        }
    }

    /// Takes in the Lease as the watch delivered it at `now`. A Lease
    /// without a holder (released on a clean shutdown) renews nothing:
    /// the successor's first renewal will.
    pub fn observe(&mut self, lease: &Lease, now: Timestamp) {
        let Some(spec) = lease.spec.as_ref() else {
            return;
        };
        let (Some(holder), Some(renewed)) = (
            spec.holder_identity.as_ref().filter(|h| !h.is_empty()),
            spec.renew_time.as_ref(),
        ) else {
            return;
        };
        let renewal = (holder.clone(), renewed.0);
        if self.last.as_ref() == Some(&renewal) {
            return;
        }
        self.seen_at = Some(match self.last {
            None => renewed.0.min(now),
            Some(_) => now,
        });
        self.last = Some(renewal);
    }

    /// Until when `keptByLease` entries count, whatever their `expiresAt`
    /// says; `None` before any renewal was seen.
    pub fn kept_until(&self) -> Option<Timestamp> {
        let grace = k8s_openapi::jiff::SignedDuration::try_from(self.grace).ok()?;
        self.seen_at?.checked_add(grace).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::{
        api::coordination::v1::LeaseSpec, apimachinery::pkg::apis::meta::v1::MicroTime,
    };

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).expect("ts")
    }

    fn lease(holder: Option<&str>, renewed: i64) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_string),
                renew_time: Some(MicroTime(at(renewed))),
                ..LeaseSpec::default()
            }),
            ..Lease::default()
        }
    }

    #[test]
    fn names_parse_as_namespace_slash_name() {
        let name: LeaseName = "climatik/climatik-freqtuning-recommender"
            .parse()
            .expect("ok");
        assert_eq!(name.to_string(), "climatik/climatik-freqtuning-recommender");
        for bad in ["", "x", "/x", "x/", "a/b/c"] {
            assert!(bad.parse::<LeaseName>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn renewals_keep_entries_alive_for_the_grace_after_the_last_one_seen() {
        let mut liveness = Liveness::new(Duration::from_secs(120));
        assert_eq!(liveness.kept_until(), None);
        // First sighting: dated by the Lease's own renewTime.
        liveness.observe(&lease(Some("a"), 990), at(1_000));
        assert_eq!(liveness.kept_until(), Some(at(1_110)));
        // A renewal: dated when seen.
        liveness.observe(&lease(Some("a"), 1_002), at(1_003));
        assert_eq!(liveness.kept_until(), Some(at(1_123)));
        // The same renewal delivered again extends nothing.
        liveness.observe(&lease(Some("a"), 1_002), at(1_050));
        assert_eq!(liveness.kept_until(), Some(at(1_123)));
        // A new holder that took over with the same renewTime is a renewal.
        liveness.observe(&lease(Some("b"), 1_002), at(1_060));
        assert_eq!(liveness.kept_until(), Some(at(1_180)));
    }

    #[test]
    fn a_released_lease_or_one_left_long_ago_keeps_nothing_alive() {
        let mut liveness = Liveness::new(Duration::from_secs(120));
        liveness.observe(&lease(None, 1_000), at(1_000));
        liveness.observe(&lease(Some(""), 1_000), at(1_000));
        assert_eq!(liveness.kept_until(), None);
        // Renewed an hour before the agent first saw it: long over.
        liveness.observe(&lease(Some("a"), 1_000), at(4_600));
        assert_eq!(liveness.kept_until(), Some(at(1_120)));
        // A clock ahead of ours on the recommender's side is not trusted.
        let mut liveness = Liveness::new(Duration::from_secs(120));
        liveness.observe(&lease(Some("a"), 9_000), at(1_000));
        assert_eq!(liveness.kept_until(), Some(at(1_120)));
    }
}
