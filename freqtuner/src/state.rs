//! The restore state: what the agent changed and the values it found before,
//! written to disk *before* each change so an agent killed with SIGKILL can
//! be followed by one that puts the hardware back.
//!
//! A state file that does not parse is never a reason to run without
//! restoring: it is moved aside (`<file>.corrupt-<unix ms>`, kept for a
//! person to read), counted, and whatever records in it still parse are
//! restored (see [`Salvage`]).

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use k8s_openapi::jiff::Timestamp;
use prometheus_client::metrics::counter::Counter;
use serde::{Serialize, de::DeserializeOwned};

use crate::error::{Error, Result};

/// A state whose records can be read one by one from a file that does not
/// parse as a whole (a record of a newer or older format, a hand edit).
pub trait Salvage: Sized {
    /// The records of `value` that parse; the count of those that did not.
    fn salvage(value: serde_json::Value) -> (Self, usize);
}

/// The entries of a JSON object that parse as `V`, by key; the count of
/// those that do not (everything, when `value` is not an object).
pub fn salvage_map<V: DeserializeOwned>(value: serde_json::Value) -> (BTreeMap<String, V>, usize) {
    match value {
        serde_json::Value::Object(entries) => {
            let mut lost = 0;
            let mut kept = BTreeMap::new();
            for (key, entry) in entries {
                match serde_json::from_value(entry) {
                    Ok(record) => {
                        kept.insert(key, record);
                    }
                    Err(_) => lost += 1,
                }
            }
            (kept, lost)
        }
        _ => (BTreeMap::new(), 1),
    }
}

/// A JSON file holding one backend's restore state.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
    /// Counts files moved aside (`climatik_freqtuner_state_quarantined_total`).
    quarantined: Counter,
}

impl StateFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            quarantined: Counter::default(),
        }
    }

    /// `<dir>/<backend>-<node>.json`: several agents (one per simulated
    /// node) may share a state directory.
    pub fn for_backend(dir: &Path, backend: &str, node: &str) -> Self {
        Self::new(dir.join(format!("{backend}-{node}.json")))
    }

    /// Counts each quarantined file on `counter`.
    pub fn counting_quarantines(mut self, counter: Counter) -> Self {
        self.quarantined = counter;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved state, or the default when there is none. A file that
    /// does not parse is moved aside and what can still be read of it is
    /// returned (and written back, so the file on disk is what is in
    /// memory); only a file that cannot be read at all is an error.
    pub fn load<T: DeserializeOwned + Serialize + Default + Salvage>(&self) -> Result<T> {
        let bytes = match fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(T::default()),
            Err(e) => return Err(Error::io("reading", &self.path, e)),
        };
        if bytes.is_empty() {
            return Ok(T::default());
        }
        let error = match serde_json::from_slice(&bytes) {
            Ok(state) => return Ok(state),
            Err(e) => e,
        };
        let aside = self.quarantine()?;
        let (state, lost) = match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(value) => T::salvage(value),
            // Not JSON at all (truncated, overwritten): nothing to salvage.
            Err(_) => (T::default(), 1),
        };
        tracing::error!(
            path = %self.path.display(),
            moved_to = %aside.display(),
            error = %error,
            unreadable_records = lost,
            "the restore state was corrupt: moved it aside, restoring what could be read"
        );
        self.store(&state)?;
        Ok(state)
    }

    /// Moves the file to `<file>.corrupt-<unix ms>` and counts it.
    fn quarantine(&self) -> Result<PathBuf> {
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!(".corrupt-{}", Timestamp::now().as_millisecond()));
        let aside = PathBuf::from(name);
        fs::rename(&self.path, &aside).map_err(|e| Error::io("moving aside", &self.path, e))?;
        self.quarantined.inc();
        Ok(aside)
    }

    /// Saves atomically (temporary file, fsync, rename): a crash leaves
    /// either the old or the new state, never half a file.
    pub fn store<T: Serialize>(&self, value: &T) -> Result<()> {
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir).map_err(|e| Error::io("creating", dir, e))?;
        }
        let bytes = serde_json::to_vec_pretty(value).map_err(|source| Error::State {
            path: self.path.clone(),
            source,
        })?;
        // Readable by node admins, as before (it holds no secrets).
        climatik_runtime::fs::write_atomic(&self.path, &bytes, 0o644)
            .map_err(|e| Error::io("writing", &self.path, e))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A state of plain records, as the backends keep theirs.
    type Records = BTreeMap<String, u64>;

    impl Salvage for Records {
        fn salvage(value: serde_json::Value) -> (Self, usize) {
            salvage_map(value)
        }
    }

    /// The state files moved aside in `dir`.
    pub(crate) fn corrupt_files(dir: &Path) -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = fs::read_dir(dir)
            .expect("read dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.to_string_lossy().contains(".corrupt-"))
            .collect();
        found.sort();
        found
    }

    #[test]
    fn round_trips_and_defaults_when_absent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = StateFile::for_backend(&dir.path().join("sub"), "cpufreq", "node-a");
        let empty: Records = file.load().expect("absent is default");
        assert!(empty.is_empty());
        let state: Records = [("0".into(), 3_500_000), ("3".into(), 2_000_000)].into();
        file.store(&state).expect("store");
        assert_eq!(file.load::<Records>().expect("load"), state);
        assert!(file.path().ends_with("sub/cpufreq-node-a.json"));
    }

    #[test]
    fn a_corrupt_file_is_moved_aside_and_its_readable_records_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let counter = Counter::default();
        let file = StateFile::new(dir.path().join("s.json")).counting_quarantines(counter.clone());
        let written = r#"{"cpu0": 3000000, "cpu1": "fast", "cpu2": 2000000}"#;
        fs::write(file.path(), written).expect("write");

        let state: Records = file.load().expect("salvaged");
        assert_eq!(
            state,
            Records::from([("cpu0".into(), 3_000_000), ("cpu2".into(), 2_000_000)])
        );
        assert_eq!(counter.get(), 1);
        let aside = corrupt_files(dir.path());
        assert_eq!(aside.len(), 1, "{aside:?}");
        assert_eq!(fs::read_to_string(&aside[0]).expect("read"), written);
        // What is in memory is on disk again, in the current format.
        assert_eq!(file.load::<Records>().expect("reload"), state);
        assert_eq!(counter.get(), 1);
    }

    #[test]
    fn a_file_that_is_not_json_is_moved_aside_and_nothing_restored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let counter = Counter::default();
        let file = StateFile::new(dir.path().join("s.json")).counting_quarantines(counter.clone());
        fs::write(file.path(), "{\"cpu0\": 30").expect("write");
        let state: Records = file.load().expect("a corrupt file is no error");
        assert!(state.is_empty());
        assert_eq!(counter.get(), 1);
        assert_eq!(corrupt_files(dir.path()).len(), 1);
    }

    #[test]
    fn an_unreadable_file_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A directory where the file should be: reading it fails.
        let file = StateFile::new(dir.path());
        let err = file.load::<Records>().expect_err("unreadable");
        assert_eq!(err.metric_label(), "io");
    }
}
