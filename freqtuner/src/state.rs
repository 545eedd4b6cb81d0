//! The restore state: what the agent changed and the values it found before,
//! written to disk *before* each change so an agent killed with SIGKILL can
//! be followed by one that puts the hardware back.

use std::{
    fs,
    path::{Path, PathBuf},
};

use serde::{Serialize, de::DeserializeOwned};

use crate::error::{Error, Result};

/// A JSON file holding one backend's restore state.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// `<dir>/<backend>-<node>.json`: several agents (one per simulated
    /// node) may share a state directory.
    pub fn for_backend(dir: &Path, backend: &str, node: &str) -> Self {
        Self::new(dir.join(format!("{backend}-{node}.json")))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved state, or the default when there is none.
    pub fn load<T: DeserializeOwned + Default>(&self) -> Result<T> {
        match fs::read(&self.path) {
            Ok(bytes) if bytes.is_empty() => Ok(T::default()),
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| Error::State {
                path: self.path.clone(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
            Err(e) => Err(Error::io("reading", &self.path, e)),
        }
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
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn round_trips_and_defaults_when_absent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = StateFile::for_backend(&dir.path().join("sub"), "cpufreq", "node-a");
        let empty: BTreeMap<u32, u64> = file.load().expect("absent is default");
        assert!(empty.is_empty());
        let state: BTreeMap<u32, u64> = [(0, 3_500_000), (3, 2_000_000)].into();
        file.store(&state).expect("store");
        assert_eq!(file.load::<BTreeMap<u32, u64>>().expect("load"), state);
        assert!(file.path().ends_with("sub/cpufreq-node-a.json"));
    }

    #[test]
    fn corrupt_state_is_an_error_not_a_silent_default() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = StateFile::new(dir.path().join("s.json"));
        fs::write(file.path(), "{not json").expect("write");
        let err = file.load::<BTreeMap<u32, u64>>().expect_err("corrupt");
        assert_eq!(err.metric_label(), "state");
    }
}
