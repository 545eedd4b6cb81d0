//! How long the device settings of a killed agent may stay as they are.
//!
//! A restarted agent (a crash, an OOM kill, a DaemonSet upgrade) finds the
//! GPUs and CPUs still capped by its predecessor. Restoring them at once
//! would lift every cap on the node for as long as the new agent takes to
//! read its NodeFrequencies: seconds of uncapped power on every restart.
//! Keeping them is safe for as long as the entries behind them were
//! certain to count, so after each pass the agent records the earliest
//! deadline of the live entries (after the lifetime cap) in
//! `<state-dir>/hold-<node>.json`. A successor keeps what it finds until it
//! has read its entries (its first pass then sets what they want and
//! restores the rest) or until that recorded time, whichever comes first;
//! without a record, or past it, it restores at once.
//!
//! The record is written when the deadline moves earlier (at once: a
//! shorter hold must never be lost) or later by more than [`SLACK`] (so a
//! renewal every few seconds is not a disk write every few seconds; the
//! recorded hold is then at most [`SLACK`] shorter than it could be), or
//! later while the recorded one ends within [`SLACK`]: deadlines that stay
//! close ahead (entries kept by a Lease with a short grace) would otherwise
//! leave a record that has already passed.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::{
    error::Result,
    state::{Salvage, StateFile},
};

/// How much later the deadline must move before the record follows.
pub const SLACK: Duration = Duration::from_secs(30);

/// The file's content.
#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Hold {
    /// Until when the settings in force are wanted, in Unix milliseconds;
    /// absent when nothing is in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    until_ms: Option<i64>,
}

impl Salvage for Hold {
    /// A record that does not parse holds nothing: the successor restores.
    fn salvage(_: serde_json::Value) -> (Self, usize) {
        (Self::default(), 1)
    }
}

/// The record of one node's agent.
#[derive(Debug)]
pub struct HoldRecord {
    file: StateFile,
    stored: Option<Timestamp>,
}

impl HoldRecord {
    /// Reads what a predecessor recorded (nothing when there is no file).
    pub fn open(file: StateFile) -> Result<Self> {
        let hold: Hold = file.load()?;
        let stored = hold
            .until_ms
            .and_then(|ms| Timestamp::from_millisecond(ms).ok());
        Ok(Self { file, stored })
    }

    /// `<dir>/hold-<node>.json`.
    pub fn for_node(dir: &std::path::Path, node: &str) -> StateFile {
        StateFile::new(dir.join(format!("hold-{node}.json")))
    }

    /// The recorded time, if it is still ahead of `now`.
    pub fn until(&self, now: Timestamp) -> Option<Timestamp> {
        self.stored.filter(|until| *until > now)
    }

    /// Records that the settings in force are wanted until `until`
    /// (`None`: nothing is in force) at `now`. Writes only when that
    /// shortens the recorded hold, lengthens it by more than [`SLACK`], or
    /// lengthens one that ends within [`SLACK`] of `now`.
    pub fn record(&mut self, until: Option<Timestamp>, now: Timestamp) -> Result<()> {
        let due = match (self.stored, until) {
            (None, None) => false,
            (Some(stored), Some(new)) => {
                let ends_soon = now.checked_add(SLACK).is_ok_and(|soon| stored <= soon);
                new < stored
                    || new.duration_since(stored).unsigned_abs() > SLACK
                    || (new > stored && ends_soon)
            }
            _ => true,
        };
        if !due {
            return Ok(());
        }
        self.file.store(&Hold {
            until_ms: until.map(Timestamp::as_millisecond),
        })?;
        self.stored = until;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).expect("ts")
    }

    fn on_disk(file: &StateFile) -> Option<Timestamp> {
        HoldRecord::open(file.clone()).expect("open").stored
    }

    #[test]
    fn shorter_holds_are_written_at_once_longer_ones_past_the_slack() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = HoldRecord::for_node(dir.path(), "n");
        let mut record = HoldRecord::open(file.clone()).expect("open");
        assert_eq!(record.until(at(0)), None, "no file holds nothing");

        record.record(Some(at(1_000)), at(900)).expect("record");
        assert_eq!(on_disk(&file), Some(at(1_000)));
        // A renewal a few seconds later: not worth a write.
        record.record(Some(at(1_010)), at(900)).expect("record");
        assert_eq!(on_disk(&file), Some(at(1_000)));
        // Past the slack: written.
        record.record(Some(at(1_031)), at(900)).expect("record");
        assert_eq!(on_disk(&file), Some(at(1_031)));
        // Earlier, even by a second: written at once.
        record.record(Some(at(1_030)), at(900)).expect("record");
        assert_eq!(on_disk(&file), Some(at(1_030)));
        record.record(None, at(900)).expect("record");
        assert_eq!(on_disk(&file), None);
    }

    #[test]
    fn a_deadline_close_ahead_is_followed_at_every_step() {
        // Entries kept alive by a Lease with a 6 s grace: the deadline is
        // always about 6 s ahead, and the record must keep up with it.
        let dir = tempfile::tempdir().expect("tempdir");
        let file = HoldRecord::for_node(dir.path(), "n");
        let mut record = HoldRecord::open(file.clone()).expect("open");
        for now in 1_000..1_040 {
            record.record(Some(at(now + 6)), at(now)).expect("record");
            assert_eq!(on_disk(&file), Some(at(now + 6)));
        }
    }

    #[test]
    fn a_successor_holds_only_until_the_recorded_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = HoldRecord::for_node(dir.path(), "n");
        HoldRecord::open(file.clone())
            .expect("open")
            .record(Some(at(1_000)), at(900))
            .expect("record");
        let successor = HoldRecord::open(file).expect("open");
        assert_eq!(successor.until(at(999)), Some(at(1_000)));
        assert_eq!(successor.until(at(1_000)), None);
    }

    #[test]
    fn an_unreadable_record_holds_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = HoldRecord::for_node(dir.path(), "n");
        std::fs::write(file.path(), "{\"until_ms\": \"soon\"").expect("write");
        let record = HoldRecord::open(file).expect("a corrupt record is no error");
        assert_eq!(record.until(at(0)), None);
    }
}
