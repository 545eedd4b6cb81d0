//! When an entry stops counting: at its `expiresAt`, but never later than
//! the agent's maximum entry lifetime after the agent first saw that exact
//! entry. A far-future `expiresAt` (a typo, a forgotten manual entry, a
//! faulty writer) so cannot hold a device forever, while a renewal (the
//! recommender writing a new `expiresAt`) restarts the lifetime.
//!
//! First sightings are kept in memory only: after an agent restart every
//! entry is seen for the first time again, so the bound is "max TTL after
//! the agent last (re)started or the entry last changed".
//!
//! An entry `keptByLease` also counts until the time the agent's entry
//! Lease keeps such entries alive ([`crate::keepalive`]), when that is
//! later.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::jiff::Timestamp;

/// Default `--max-entry-ttl`: far above the recommender's renewal period
/// (an entry it keeps renewing never reaches the cap) and short enough that
/// a stuck entry releases its device within minutes.
pub const DEFAULT_MAX_ENTRY_TTL: Duration = Duration::from_secs(600);

/// The device an entry names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Device {
    Gpu(String),
    Cpu(u32),
}

/// One entry: its device and the policy that wrote it (the list-map key).
pub type EntryKey = (Device, String);

/// When an entry stops counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    pub at: Timestamp,
    /// The entry's own `expiresAt` was further away than the cap allows.
    pub capped: bool,
}

/// First sightings of the entries with an `expiresAt` beyond the cap.
#[derive(Debug, Clone)]
pub struct Lifetimes {
    max_ttl: Duration,
    /// Entry -> (its `expiresAt`, when this agent first saw it so).
    seen: BTreeMap<EntryKey, (Timestamp, Timestamp)>,
    /// Until when the entry Lease keeps `keptByLease` entries alive.
    kept_until: Option<Timestamp>,
}

impl Default for Lifetimes {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_ENTRY_TTL)
    }
}

impl Lifetimes {
    pub fn new(max_ttl: Duration) -> Self {
        Self {
            max_ttl,
            seen: BTreeMap::new(),
            kept_until: None,
        }
    }

    pub fn max_ttl(&self) -> Duration {
        self.max_ttl
    }

    /// Until when `keptByLease` entries count whatever their own deadline;
    /// `None`: only their own deadline counts.
    pub fn keep_alive_until(&mut self, until: Option<Timestamp>) {
        self.kept_until = until;
    }

    /// Starts a pass over a spec at `now`. Entries the pass does not look
    /// up are forgotten when it finishes, so a removed entry that comes
    /// back gets a fresh lifetime and nothing piles up.
    pub fn pass(&mut self, now: Timestamp) -> Pass<'_> {
        Pass {
            lifetimes: self,
            now,
            next: BTreeMap::new(),
        }
    }
}

/// One pass over a spec's entries; see [`Lifetimes::pass`].
pub struct Pass<'a> {
    lifetimes: &'a mut Lifetimes,
    now: Timestamp,
    next: BTreeMap<EntryKey, (Timestamp, Timestamp)>,
}

impl Pass<'_> {
    /// The deadline of the entry `key` that says `expires_at`; `kept`: it
    /// is `keptByLease`.
    pub fn deadline(&mut self, key: EntryKey, expires_at: Timestamp, kept: bool) -> Deadline {
        let own = self.own_deadline(key, expires_at);
        match self.lifetimes.kept_until {
            Some(until) if kept && until > own.at => Deadline {
                at: until,
                capped: false,
            },
            _ => own,
        }
    }

    /// The deadline from the entry's own `expiresAt` and the cap.
    fn own_deadline(&mut self, key: EntryKey, expires_at: Timestamp) -> Deadline {
        let cap_from = |start: Timestamp| {
            start
                .checked_add(self.lifetimes.max_ttl)
                .unwrap_or(Timestamp::MAX)
        };
        if expires_at <= cap_from(self.now) {
            return Deadline {
                at: expires_at,
                capped: false,
            };
        }
        // The same entry as before keeps its first sighting; a changed
        // `expiresAt` is a renewal and starts over.
        let first_seen = match self.lifetimes.seen.get(&key) {
            Some((seen_expiry, first)) if *seen_expiry == expires_at => *first,
            _ => self.now,
        };
        self.next.insert(key, (expires_at, first_seen));
        Deadline {
            at: cap_from(first_seen),
            capped: true,
        }
    }

    /// Ends the pass: only the entries it looked up are remembered.
    pub fn finish(self) {
        self.lifetimes.seen = self.next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).expect("ts")
    }

    fn gpu(policy: &str) -> EntryKey {
        (Device::Gpu("GPU-a".into()), policy.into())
    }

    fn deadline(lifetimes: &mut Lifetimes, now: i64, expires: i64) -> Deadline {
        let mut pass = lifetimes.pass(at(now));
        let d = pass.deadline(gpu("manual"), at(expires), false);
        pass.finish();
        d
    }

    #[test]
    fn an_expiry_within_the_cap_is_kept() {
        let mut lifetimes = Lifetimes::new(Duration::from_secs(600));
        let d = deadline(&mut lifetimes, 1_000, 1_600);
        assert_eq!((d.at, d.capped), (at(1_600), false));
    }

    #[test]
    fn a_far_expiry_ends_max_ttl_after_the_first_sighting_until_renewed() {
        let mut lifetimes = Lifetimes::new(Duration::from_secs(600));
        let far = 1_000_000;
        assert_eq!(
            deadline(&mut lifetimes, 1_000, far),
            Deadline {
                at: at(1_600),
                capped: true
            }
        );
        // Seen again, unchanged: still measured from the first sighting.
        assert_eq!(deadline(&mut lifetimes, 1_500, far).at, at(1_600));
        assert_eq!(deadline(&mut lifetimes, 1_700, far).at, at(1_600));
        // A renewal (a new expiresAt) starts a new lifetime.
        assert_eq!(deadline(&mut lifetimes, 1_800, far + 1).at, at(2_400));
    }

    #[test]
    fn an_entry_that_went_away_starts_over_when_it_comes_back() {
        let mut lifetimes = Lifetimes::new(Duration::from_secs(600));
        deadline(&mut lifetimes, 1_000, 1_000_000);
        lifetimes.pass(at(1_100)).finish();
        assert_eq!(deadline(&mut lifetimes, 1_200, 1_000_000).at, at(1_800));
    }

    #[test]
    fn a_kept_entry_counts_while_the_lease_keeps_it_alive() {
        let mut lifetimes = Lifetimes::new(Duration::from_secs(600));
        lifetimes.keep_alive_until(Some(at(2_000)));
        let mut pass = lifetimes.pass(at(1_500));
        // Long expired, but kept: counts until the Lease stops keeping it.
        assert_eq!(pass.deadline(gpu("ns/p"), at(1_000), true).at, at(2_000));
        // Its own later expiresAt still counts when that is later.
        assert_eq!(pass.deadline(gpu("ns/q"), at(2_100), true).at, at(2_100));
        // Not kept: only its own expiresAt.
        assert_eq!(pass.deadline(gpu("ns/r"), at(1_000), false).at, at(1_000));
        pass.finish();
        // No Lease seen: a kept entry is an ordinary one.
        lifetimes.keep_alive_until(None);
        let mut pass = lifetimes.pass(at(1_500));
        assert_eq!(pass.deadline(gpu("ns/p"), at(1_000), true).at, at(1_000));
    }

    #[test]
    fn a_huge_cap_does_not_overflow() {
        let mut lifetimes = Lifetimes::new(Duration::from_secs(u64::MAX));
        let d = deadline(&mut lifetimes, 1_000, 1_000_000);
        assert_eq!((d.at, d.capped), (at(1_000_000), false));
    }
}
