//! The annotations a user writes on a workload, validated: the webhook
//! refuses a workload whose annotations fail here, and the policy generator
//! reads the same settings from the stored workload.

use std::collections::BTreeMap;

use crate::{
    bounds::{MAX_PRIORITY, MIN_PRIORITY},
    names::{
        ALGORITHMS, ANNOTATION_ALGORITHM, ANNOTATION_CAPPING_THRESHOLD, ANNOTATION_DRY_RUN,
        ANNOTATION_MIN_POWER, ANNOTATION_POWER_CAP, ANNOTATION_PRIORITY,
    },
    parse_power,
    policy::DEFAULT_CAPPING_THRESHOLD,
    power::format_power,
};

/// What the annotations ask for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapSettings {
    /// The cap in whole watts.
    pub watts: u64,
    /// Percent of the cap at which capping starts.
    pub threshold: i32,
    /// Observe only.
    pub dry_run: bool,
    /// The algorithm asked for; `None` leaves the recommender's default.
    pub algorithm: Option<String>,
    /// Priority in a shared PowerBudget; `None` leaves the default.
    pub priority: Option<i32>,
    /// Guarantee in a shared PowerBudget, in whole watts, at most the cap.
    pub min_watts: Option<u64>,
}

/// Every annotation a user writes for Climatik on a workload. An update
/// that leaves all of them as they were does not change the cap.
pub const USER_ANNOTATIONS: [&str; 6] = [
    ANNOTATION_POWER_CAP,
    ANNOTATION_CAPPING_THRESHOLD,
    ANNOTATION_DRY_RUN,
    ANNOTATION_ALGORITHM,
    ANNOTATION_PRIORITY,
    ANNOTATION_MIN_POWER,
];

/// Longest part of a rejected value echoed back in an error, in characters:
/// an annotation may be up to 256 KiB, and a denial message or log line
/// that repeats all of it helps nobody.
pub const ECHO_CHARS: usize = 64;

/// `value` quoted for an error message, cut to [`ECHO_CHARS`] characters.
pub fn quoted(value: &str) -> String {
    let mut chars = value.chars();
    let head: String = chars.by_ref().take(ECHO_CHARS).collect();
    if chars.next().is_some() {
        format!("{head:?}… ({} bytes)", value.len())
    } else {
        format!("{head:?}")
    }
}

/// Accepted forms of the threshold annotation, quoted in errors.
pub const THRESHOLD_FORMS: &str = "a whole percentage from 1 to 100, e.g. \"90\" or \"90%\"";
/// Accepted forms of the dry-run annotation, quoted in errors.
pub const DRY_RUN_FORMS: &str = "\"true\" or \"false\"";
/// Accepted forms of the priority annotation, quoted in errors.
pub const PRIORITY_FORMS: &str =
    "a whole number from -1000000000 to 1000000000, e.g. \"100\" or \"-10\"";

/// Reads the settings from a workload's annotations: `Ok(None)` when the
/// workload has not opted in, `Err` with one message per bad annotation.
pub fn from_annotations(
    annotations: &BTreeMap<String, String>,
) -> Result<Option<CapSettings>, Vec<String>> {
    let Some(cap) = annotations.get(ANNOTATION_POWER_CAP) else {
        return Ok(None);
    };
    let mut errors = Vec::new();
    let watts = parse_power(cap)
        .map_err(|e| errors.push(format!("annotation {ANNOTATION_POWER_CAP}: {e}")))
        .ok();
    let threshold = match annotations.get(ANNOTATION_CAPPING_THRESHOLD) {
        None => Some(DEFAULT_CAPPING_THRESHOLD),
        Some(value) => parse_threshold(value)
            .ok_or_else(|| {
                errors.push(format!(
                    "annotation {ANNOTATION_CAPPING_THRESHOLD}: invalid value {}; accepted: {THRESHOLD_FORMS}",
                    quoted(value)
                ))
            })
            .ok(),
    };
    let dry_run = match annotations.get(ANNOTATION_DRY_RUN) {
        None => Some(false),
        Some(value) => parse_bool(value)
            .ok_or_else(|| {
                errors.push(format!(
                    "annotation {ANNOTATION_DRY_RUN}: invalid value {}; accepted: {DRY_RUN_FORMS}",
                    quoted(value)
                ))
            })
            .ok(),
    };
    let algorithm = match annotations.get(ANNOTATION_ALGORITHM) {
        None => None,
        Some(value) => {
            let name = value.trim();
            if !ALGORITHMS.contains(&name) {
                errors.push(format!(
                    "annotation {ANNOTATION_ALGORITHM}: unknown algorithm {}; accepted: {}",
                    quoted(value),
                    ALGORITHMS.join(", ")
                ));
            }
            Some(name.to_string())
        }
    };
    let priority = annotations.get(ANNOTATION_PRIORITY).and_then(|value| {
        let parsed = parse_priority(value);
        if parsed.is_none() {
            errors.push(format!(
                "annotation {ANNOTATION_PRIORITY}: invalid value {}; accepted: {PRIORITY_FORMS}",
                quoted(value)
            ));
        }
        parsed
    });
    let min_watts = annotations.get(ANNOTATION_MIN_POWER).and_then(|value| {
        match parse_power(value) {
            Err(e) => {
                errors.push(format!("annotation {ANNOTATION_MIN_POWER}: {e}"));
                None
            }
            Ok(min) if watts.is_some_and(|cap| min > cap) => {
                errors.push(format!(
                    "annotation {ANNOTATION_MIN_POWER}: the guarantee {} is above the cap {} of {ANNOTATION_POWER_CAP}",
                    format_power(min),
                    watts.map(format_power).unwrap_or_default()
                ));
                None
            }
            Ok(min) => Some(min),
        }
    });
    match (watts, threshold, dry_run) {
        (Some(watts), Some(threshold), Some(dry_run)) if errors.is_empty() => {
            Ok(Some(CapSettings {
                watts,
                threshold,
                dry_run,
                algorithm,
                priority,
                min_watts,
            }))
        }
        _ => Err(errors),
    }
}

/// A whole number, optionally signed, within the bounds of `spec.priority`.
fn parse_priority(value: &str) -> Option<i32> {
    let text = value.trim();
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    // Eleven digits reach past the bounds; longer strings are refused
    // before parsing.
    if digits.is_empty() || digits.len() > 11 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<i64>()
        .ok()
        .filter(|p| (i64::from(MIN_PRIORITY)..=i64::from(MAX_PRIORITY)).contains(p))
        .and_then(|p| i32::try_from(p).ok())
}

fn parse_threshold(value: &str) -> Option<i32> {
    let digits = value.trim();
    let digits = digits.strip_suffix('%').unwrap_or(digits).trim_end();
    if digits.is_empty() || digits.len() > 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|p| (1..=100).contains(p))
}

fn parse_bool(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn no_cap_annotation_means_not_opted_in() {
        assert_eq!(from_annotations(&annotations(&[("other", "x")])), Ok(None));
        // Companions alone do nothing.
        assert_eq!(
            from_annotations(&annotations(&[(ANNOTATION_DRY_RUN, "maybe")])),
            Ok(None)
        );
    }

    #[test]
    fn defaults_apply_when_companions_are_absent() {
        assert_eq!(
            from_annotations(&annotations(&[(ANNOTATION_POWER_CAP, "1.5kW")])),
            Ok(Some(CapSettings {
                watts: 1500,
                threshold: DEFAULT_CAPPING_THRESHOLD,
                dry_run: false,
                algorithm: None,
                priority: None,
                min_watts: None,
            }))
        );
    }

    #[test]
    fn companions_are_parsed() {
        assert_eq!(
            from_annotations(&annotations(&[
                (ANNOTATION_POWER_CAP, "300W"),
                (ANNOTATION_CAPPING_THRESHOLD, "80%"),
                (ANNOTATION_DRY_RUN, "True"),
            ])),
            Ok(Some(CapSettings {
                watts: 300,
                threshold: 80,
                dry_run: true,
                algorithm: None,
                priority: None,
                min_watts: None,
            }))
        );
    }

    #[test]
    fn every_bad_annotation_is_named_with_its_value_and_the_accepted_forms() {
        let errors = from_annotations(&annotations(&[
            (ANNOTATION_POWER_CAP, "300 watts"),
            (ANNOTATION_CAPPING_THRESHOLD, "0"),
            (ANNOTATION_DRY_RUN, "yes"),
        ]))
        .err()
        .unwrap_or_default();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].contains(ANNOTATION_POWER_CAP) && errors[0].contains("\"300 watts\""));
        assert!(errors[0].contains("1.5kW"));
        assert!(errors[1].contains(ANNOTATION_CAPPING_THRESHOLD) && errors[1].contains("\"0\""));
        assert!(errors[1].contains(THRESHOLD_FORMS));
        assert!(errors[2].contains(ANNOTATION_DRY_RUN) && errors[2].contains("\"yes\""));
    }

    #[test]
    fn long_values_are_cut_in_errors() {
        let long = "9".repeat(100_000);
        let errors = from_annotations(&annotations(&[
            (ANNOTATION_POWER_CAP, "300"),
            (ANNOTATION_DRY_RUN, long.as_str()),
        ]))
        .err()
        .unwrap_or_default();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].len() < 400, "{}", errors[0]);
        assert!(errors[0].contains("100000 bytes"), "{}", errors[0]);
        let errors = from_annotations(&annotations(&[(ANNOTATION_POWER_CAP, long.as_str())]))
            .err()
            .unwrap_or_default();
        assert!(errors[0].len() < 400, "{}", errors[0]);
        assert_eq!(quoted("300 watts"), "\"300 watts\"");
    }

    #[test]
    fn the_algorithm_must_be_one_the_recommender_knows() {
        let with = |value: &str| {
            from_annotations(&annotations(&[
                (ANNOTATION_POWER_CAP, "300W"),
                (ANNOTATION_ALGORITHM, value),
            ]))
        };
        for name in ALGORITHMS {
            assert_eq!(
                with(name).map(|s| s.and_then(|s| s.algorithm)),
                Ok(Some(name.to_string()))
            );
        }
        let errors = with("pid").err().unwrap_or_default();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains(ANNOTATION_ALGORITHM) && errors[0].contains("\"pid\""));
        assert!(errors[0].contains("budget-allocator"));
    }

    #[test]
    fn priority_and_guarantee_are_read_and_bounded() {
        let with = |pairs: &[(&str, &str)]| {
            let mut all = vec![(ANNOTATION_POWER_CAP, "1kW")];
            all.extend_from_slice(pairs);
            from_annotations(&annotations(&all))
        };
        let settings = with(&[
            (ANNOTATION_PRIORITY, " -10 "),
            (ANNOTATION_MIN_POWER, "0.4kW"),
        ])
        .ok()
        .flatten()
        .expect("accepted");
        assert_eq!(
            (settings.priority, settings.min_watts),
            (Some(-10), Some(400))
        );
        // The guarantee may equal the cap, never exceed it.
        let settings = with(&[(ANNOTATION_MIN_POWER, "1000W")]).ok().flatten();
        assert_eq!(settings.and_then(|s| s.min_watts), Some(1000));
        let errors = with(&[(ANNOTATION_MIN_POWER, "1001W")])
            .err()
            .unwrap_or_default();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains(ANNOTATION_MIN_POWER) && errors[0].contains("above the cap 1kW"),
            "{errors:?}"
        );
        let errors = with(&[(ANNOTATION_MIN_POWER, "lots")])
            .err()
            .unwrap_or_default();
        assert!(errors[0].contains(ANNOTATION_MIN_POWER) && errors[0].contains("1.5kW"));
        let errors = with(&[(ANNOTATION_PRIORITY, "high")])
            .err()
            .unwrap_or_default();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains(ANNOTATION_PRIORITY) && errors[0].contains("\"high\""));
        assert!(errors[0].contains(PRIORITY_FORMS));
    }

    #[test]
    fn priorities_beyond_the_bounds_are_rejected() {
        for bad in [
            "",
            "-",
            "1.5",
            "1e3",
            "1000000001",
            "-1000000001",
            "99999999999999999999",
            "--1",
            "0x10",
        ] {
            assert_eq!(parse_priority(bad), None, "{bad}");
        }
        for (good, value) in [
            ("0", 0),
            ("+7", 7),
            ("-1000000000", MIN_PRIORITY),
            ("1000000000", MAX_PRIORITY),
            (" 42 ", 42),
        ] {
            assert_eq!(parse_priority(good), Some(value), "{good}");
        }
    }

    #[test]
    fn thresholds_outside_one_to_hundred_are_rejected() {
        for bad in ["", "101", "-5", "50.5", "1e2", "%", "0100"] {
            assert_eq!(parse_threshold(bad), None, "{bad}");
        }
        for (good, value) in [("1", 1), ("100", 100), (" 75 % ", 75), ("075", 75)] {
            assert_eq!(parse_threshold(good), Some(value), "{good}");
        }
    }
}
