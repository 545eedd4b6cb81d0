//! The workload kinds a power-cap annotation may sit on, and where their
//! pod template is: the webhook labels that template, the policy generator
//! watches these kinds.

use kube::core::GroupVersionKind;

/// A workload kind that carries a pod template.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
    Job,
    CronJob,
}

impl WorkloadKind {
    /// Every kind, for watching them all.
    pub const ALL: [Self; 4] = [
        Self::Deployment,
        Self::StatefulSet,
        Self::Job,
        Self::CronJob,
    ];

    /// The kind for an admission request's `kind`, if it is one we handle.
    pub fn from_gvk(gvk: &GroupVersionKind) -> Option<Self> {
        match (gvk.group.as_str(), gvk.version.as_str(), gvk.kind.as_str()) {
            ("apps", "v1", "Deployment") => Some(Self::Deployment),
            ("apps", "v1", "StatefulSet") => Some(Self::StatefulSet),
            ("batch", "v1", "Job") => Some(Self::Job),
            ("batch", "v1", "CronJob") => Some(Self::CronJob),
            _ => None,
        }
    }

    pub fn kind(self) -> &'static str {
        match self {
            Self::Deployment => "Deployment",
            Self::StatefulSet => "StatefulSet",
            Self::Job => "Job",
            Self::CronJob => "CronJob",
        }
    }

    pub fn group(self) -> &'static str {
        match self {
            Self::Deployment | Self::StatefulSet => "apps",
            Self::Job | Self::CronJob => "batch",
        }
    }

    pub fn api_version(self) -> &'static str {
        match self {
            Self::Deployment | Self::StatefulSet => "apps/v1",
            Self::Job | Self::CronJob => "batch/v1",
        }
    }

    pub fn plural(self) -> &'static str {
        match self {
            Self::Deployment => "deployments",
            Self::StatefulSet => "statefulsets",
            Self::Job => "jobs",
            Self::CronJob => "cronjobs",
        }
    }

    /// JSON pointer tokens from the object root to the pod template.
    pub fn template_path(self) -> &'static [&'static str] {
        match self {
            Self::CronJob => &["spec", "jobTemplate", "spec", "template"],
            _ => &["spec", "template"],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_four_workload_kinds_in_their_v1_groups() {
        let gvk = |g: &str, v: &str, k: &str| GroupVersionKind::gvk(g, v, k);
        assert_eq!(
            WorkloadKind::from_gvk(&gvk("apps", "v1", "Deployment")),
            Some(WorkloadKind::Deployment)
        );
        assert_eq!(
            WorkloadKind::from_gvk(&gvk("batch", "v1", "CronJob")),
            Some(WorkloadKind::CronJob)
        );
        assert_eq!(WorkloadKind::from_gvk(&gvk("", "v1", "Pod")), None);
        assert_eq!(
            WorkloadKind::from_gvk(&gvk("apps", "v1", "DaemonSet")),
            None
        );
    }
}
