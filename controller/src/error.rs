//! Errors of a reconciliation, with a short label for metrics.

/// Why a reconciliation failed. The controller logs it, counts it under
/// [`Error::metric_label`] and retries later; nothing here is fatal.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API error: {0}")]
    Kube(#[from] kube::Error),

    #[error("Prometheus query failed: {0}")]
    Prometheus(String),

    #[error("the policy has no namespace")]
    MissingNamespace,

    #[error("invalid label selector: {0}")]
    Selector(String),

    #[error("could not encode an object: {0}")]
    Serialization(#[from] serde_json::Error),
}

impl Error {
    /// A low-cardinality label for the `error` dimension of metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Prometheus(_) => "prometheus",
            Error::MissingNamespace => "missing_namespace",
            Error::Selector(_) => "selector",
            Error::Serialization(_) => "serialization",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_distinct_and_short() {
        let errors = [
            Error::Prometheus("down".into()),
            Error::MissingNamespace,
            Error::Selector("x".into()),
        ];
        let labels: Vec<_> = errors.iter().map(Error::metric_label).collect();
        assert_eq!(labels, ["prometheus", "missing_namespace", "selector"]);
    }
}
