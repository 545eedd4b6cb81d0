//! Status conditions that keep their `lastTransitionTime` while their
//! status stays the same.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// A condition as a reconciler decides it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided {
    pub type_: &'static str,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

impl Decided {
    pub fn new(
        type_: &'static str,
        status: bool,
        reason: &str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status,
            reason: reason.to_string(),
            message: message.into(),
        }
    }
}

fn status_text(status: bool) -> &'static str {
    if status { "True" } else { "False" }
}

/// The condition to write: `lastTransitionTime` is `now` if the status
/// changed (or the condition is new), else the previous one.
pub fn render(
    previous: &[Condition],
    decided: &Decided,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let status = status_text(decided.status);
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == decided.type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: decided.type_.to_string(),
        status: status.to_string(),
        reason: decided.reason.clone(),
        message: decided.message.chars().take(1024).collect(),
        observed_generation: generation,
        last_transition_time,
    }
}

/// Whether the condition of this type flips (or appears) with `decided`.
pub fn transitions(previous: &[Condition], decided: &Decided) -> bool {
    previous
        .iter()
        .find(|c| c.type_ == decided.type_)
        .is_none_or(|c| c.status != status_text(decided.status))
}

/// The status of a condition type, if present: `Some(true)` for "True".
pub fn is_true(conditions: &[Condition], type_: &str) -> Option<bool> {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn time(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH))
    }

    #[test]
    fn keeps_transition_time_while_status_is_unchanged() {
        let first = render(
            &[],
            &Decided::new("Capping", true, "AboveThreshold", "a"),
            Some(1),
            &time(100),
        );
        assert_eq!(first.last_transition_time, time(100));
        let again = render(
            std::slice::from_ref(&first),
            &Decided::new("Capping", true, "AboveThreshold", "b"),
            Some(2),
            &time(200),
        );
        assert_eq!(again.last_transition_time, time(100));
        assert_eq!(again.message, "b");
        let flipped = render(
            &[again],
            &Decided::new("Capping", false, "BelowThreshold", "c"),
            Some(2),
            &time(300),
        );
        assert_eq!(flipped.last_transition_time, time(300));
        assert_eq!(flipped.status, "False");
    }

    #[test]
    fn detects_transitions() {
        let c = render(
            &[],
            &Decided::new("Ready", true, "Observed", ""),
            None,
            &time(1),
        );
        assert!(!transitions(
            std::slice::from_ref(&c),
            &Decided::new("Ready", true, "Observed", "")
        ));
        assert!(transitions(
            std::slice::from_ref(&c),
            &Decided::new("Ready", false, "NoMatchingPods", "")
        ));
        assert!(transitions(
            &[],
            &Decided::new("Ready", true, "Observed", "")
        ));
        assert_eq!(is_true(&[c], "Ready"), Some(true));
    }
}
