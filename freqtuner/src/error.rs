//! Errors of the node agent, each with a short label for the
//! `climatik_freqtuner_actuation_errors_total` metric.

use std::path::PathBuf;

/// Everything that can go wrong while reading or driving a device, talking
/// to the API server, or keeping the restore state.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A sysfs or state file could not be read or written.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A sysfs file held something the kernel would never write there.
    #[error("unexpected value {value:?} in {path}: {reason}")]
    BadSysfsValue {
        path: PathBuf,
        value: String,
        reason: &'static str,
    },

    /// The attribute exists but the kernel offers no way to write it.
    #[error("{0} is read-only")]
    ReadOnly(PathBuf),

    /// A target that no device can honour (zero, negative, not finite).
    #[error("invalid target: {0}")]
    InvalidTarget(String),

    /// The device is not on this node, or cannot do what was asked.
    #[error("{0}")]
    Unsupported(String),

    /// NVML refused or failed.
    #[error("NVML {op}: {source}")]
    Nvml {
        op: &'static str,
        #[source]
        source: nvml_wrapper::error::NvmlError,
    },

    /// The simulated backend was configured inconsistently.
    #[error("simulation: {0}")]
    Sim(String),

    /// The restore state file is corrupt.
    #[error("state file {path}: {source}")]
    State {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// A call to the API server failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

impl Error {
    /// Short, bounded label for metrics (never contains device names).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Io { .. } => "io",
            Error::BadSysfsValue { .. } => "bad_sysfs_value",
            Error::ReadOnly(_) => "read_only",
            Error::InvalidTarget(_) => "invalid_target",
            Error::Unsupported(_) => "unsupported",
            Error::Nvml { .. } => "nvml",
            Error::Sim(_) => "sim",
            Error::State { .. } => "state",
            Error::Kube(_) => "kube",
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// Whether the device cannot do this at all (as opposed to a failure
    /// that may go away), which the status reports as `Unsupported`.
    pub fn is_unsupported(&self) -> bool {
        matches!(self, Error::Unsupported(_))
            || matches!(
                self,
                Error::Nvml {
                    source: nvml_wrapper::error::NvmlError::NotSupported,
                    ..
                }
            )
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
