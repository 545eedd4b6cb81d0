//! The one duration grammar of every flag and of the chart's values.
//!
//! A duration is one or more `<number><unit>` terms, summed: `15s`, `500ms`,
//! `1.5s`, `2m`, `1h30m`. The number is decimal digits with an optional
//! fraction (`0.5`, not `.5` or `5.`); the unit is `ms`, `s`, `m` or `h`.
//! The total must be above zero (a zero interval would spin a loop or panic
//! a timer). There is no sign, no space, and no bare number: `30` could mean
//! seconds or milliseconds, so it is refused rather than guessed.
//!
//! [`PATTERN`] is the same grammar as a regular expression; the chart's
//! `values.schema.json` uses it for every value passed to a binary, and a
//! test checks both against one accept/reject table. The only thing the
//! pattern cannot say is the upper bound: totals that do not fit a
//! [`Duration`] (about 584 years) are refused by the parser alone.

use std::time::Duration;

/// [`parse_duration`]'s grammar as a regular expression (RE2/ECMA syntax):
/// zero terms, then a term with a non-zero digit, then any terms.
pub const PATTERN: &str = r"^(0+(\.0+)?(ms|s|m|h))*(0*[1-9][0-9]*(\.[0-9]+)?|0+\.0*[1-9][0-9]*)(ms|s|m|h)([0-9]+(\.[0-9]+)?(ms|s|m|h))*$";

const NANOS_PER_SECOND: u128 = 1_000_000_000;
/// Fraction digits beyond this are below a nanosecond for every unit.
const MAX_FRACTION_DIGITS: u32 = 18;

/// Parses a duration such as `15s`, `500ms`, `1.5s` or `1h30m` (see the
/// module docs for the grammar).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || format!("{text:?} is not a duration such as 500ms, 15s, 1.5m or 1h30m");
    let mut rest = text;
    let mut total: u128 = 0;
    if rest.is_empty() {
        return Err(invalid());
    }
    while !rest.is_empty() {
        let (whole, after) = split_digits(rest);
        if whole.is_empty() {
            return Err(invalid());
        }
        let (fraction, after) = match after.strip_prefix('.') {
            Some(after) => {
                let (fraction, after) = split_digits(after);
                if fraction.is_empty() {
                    return Err(invalid());
                }
                (fraction, after)
            }
            None => ("", after),
        };
        // `ms` before `m` and `s`: a term always starts with a digit, so
        // `1ms` cannot be `1m` followed by a term `s`.
        let (unit_nanos, after) = if let Some(a) = after.strip_prefix("ms") {
            (NANOS_PER_SECOND / 1000, a)
        } else if let Some(a) = after.strip_prefix('s') {
            (NANOS_PER_SECOND, a)
        } else if let Some(a) = after.strip_prefix('m') {
            (60 * NANOS_PER_SECOND, a)
        } else if let Some(a) = after.strip_prefix('h') {
            (3600 * NANOS_PER_SECOND, a)
        } else {
            return Err(invalid());
        };
        let term = term_nanos(whole, fraction, unit_nanos)
            .ok_or_else(|| format!("{text:?} is too long a duration"))?;
        total = total
            .checked_add(term)
            .ok_or_else(|| format!("{text:?} is too long a duration"))?;
        rest = after;
    }
    if total == 0 {
        return Err(format!("{text:?} must be longer than zero"));
    }
    let seconds = u64::try_from(total / NANOS_PER_SECOND)
        .map_err(|_| format!("{text:?} is too long a duration"))?;
    // The remainder is below one second, so it fits a u32.
    let nanos = u32::try_from(total % NANOS_PER_SECOND).unwrap_or(0);
    Ok(Duration::new(seconds, nanos))
}

/// Leading ASCII digits, and what follows them.
fn split_digits(text: &str) -> (&str, &str) {
    let end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    text.split_at(end)
}

/// `whole.fraction` units in nanoseconds; `None` on overflow.
fn term_nanos(whole: &str, fraction: &str, unit_nanos: u128) -> Option<u128> {
    let mut nanos = digits_value(whole)?.checked_mul(unit_nanos)?;
    if !fraction.is_empty() {
        let kept = &fraction[..fraction.len().min(MAX_FRACTION_DIGITS as usize)];
        let scale = 10u128.pow(kept.len() as u32);
        nanos = nanos.checked_add(digits_value(kept)?.checked_mul(unit_nanos)? / scale)?;
    }
    Some(nanos)
}

fn digits_value(digits: &str) -> Option<u128> {
    digits.bytes().try_fold(0u128, |acc, d| {
        acc.checked_mul(10)?.checked_add(u128::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Text, and the duration it means (`None`: refused).
    const TABLE: &[(&str, Option<Duration>)] = &[
        ("15s", Some(Duration::from_secs(15))),
        ("2m", Some(Duration::from_secs(120))),
        ("1h", Some(Duration::from_secs(3600))),
        ("500ms", Some(Duration::from_millis(500))),
        ("1.5s", Some(Duration::from_millis(1500))),
        ("0.5m", Some(Duration::from_secs(30))),
        ("0.001s", Some(Duration::from_millis(1))),
        ("1m30s", Some(Duration::from_secs(90))),
        ("1h0m", Some(Duration::from_secs(3600))),
        ("0s250ms", Some(Duration::from_millis(250))),
        ("007s", Some(Duration::from_secs(7))),
        ("120s", Some(Duration::from_secs(120))),
        ("2160h", Some(Duration::from_secs(2160 * 3600))),
        ("", None),
        ("0s", None),
        ("0ms", None),
        ("0.000s", None),
        ("0s0m", None),
        ("30", None),
        ("1.5", None),
        ("s", None),
        ("ms", None),
        ("1.s", None),
        (".5s", None),
        ("-1s", None),
        ("+1s", None),
        ("1d", None),
        ("1S", None),
        ("1ns", None),
        ("1us", None),
        ("1µs", None),
        ("1e3s", None),
        ("1h 30m", None),
        (" 1s", None),
        ("1s ", None),
        ("1.5.5s", None),
        ("1,5s", None),
        ("fast", None),
    ];

    #[test]
    fn the_parser_follows_the_table() {
        for (text, expected) in TABLE {
            assert_eq!(parse_duration(text).ok(), *expected, "{text:?}");
        }
    }

    #[test]
    fn the_pattern_follows_the_table() {
        let pattern = regex::Regex::new(PATTERN).expect("valid pattern");
        for (text, expected) in TABLE {
            assert_eq!(pattern.is_match(text), expected.is_some(), "{text:?}");
        }
    }

    #[test]
    fn too_long_is_refused_not_a_panic() {
        assert!(parse_duration("99999999999999999999999999999999999999999h").is_err());
        assert!(parse_duration("9999999999999999999999h").is_err());
        assert!(parse_duration("1.0000000000000000000000000001s").is_ok());
    }

    /// Chart values passed to a binary's duration flag.
    const CHART_DURATIONS: &[&str] = &[
        "/properties/controller/properties/prometheus/properties/timeout",
        "/properties/controller/properties/interval",
        "/properties/recommender/properties/interval",
        "/properties/recommender/properties/entryTtl",
        "/properties/freqtuner/properties/fastLoopInterval",
    ];

    #[test]
    fn the_chart_schema_uses_the_same_grammar() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../charts/climatik/values.schema.json"
        );
        let text = std::fs::read_to_string(path).expect("the chart's schema");
        let schema: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        for pointer in CHART_DURATIONS {
            let field = schema
                .pointer(pointer)
                .unwrap_or_else(|| panic!("{pointer}"));
            let pattern = field["pattern"]
                .as_str()
                .unwrap_or_else(|| panic!("{pointer}"));
            assert_eq!(pattern, PATTERN, "{pointer}");
            let regex = regex::Regex::new(pattern).expect("valid pattern");
            for (text, expected) in TABLE {
                assert_eq!(
                    regex.is_match(text),
                    expected.is_some(),
                    "{pointer}: {text:?}"
                );
            }
        }
    }
}
