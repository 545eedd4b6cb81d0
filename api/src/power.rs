//! Parser for power values written by people, as in the
//! `climatik.io/power-cap` annotation.
//!
//! Accepted: a plain positive decimal number of watts with an optional unit
//! `W` or `kW` (case-insensitive, optional space): `300`, `300W`, `300 W`,
//! `1.5kW`, `0.3 kW`. Values are rounded to the nearest watt and must lie in
//! `1 ..= MAX_POWER_WATTS`. Everything else — signs, exponents, `NaN`,
//! milliwatts, spelled-out units — is rejected, because a cap that was
//! misread is worse than no cap.

use std::fmt;

/// Largest accepted cap: 10 MW, about 14 000 H100-class GPUs at full power.
/// Anything larger is almost certainly a typo (a unit slip of 1000x).
pub const MAX_POWER_WATTS: u64 = 10_000_000;

/// The forms accepted, quoted in every error so a user can fix the value.
pub const ACCEPTED_FORMS: &str = "a positive number of watts with an optional unit W or kW, \
     e.g. \"300\", \"300W\", \"300 W\", \"1.5kW\", \"0.3 kW\" (at most 10 MW)";

/// Why a power value was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PowerParseError {
    /// The value as given.
    pub input: String,
    /// What is wrong with it.
    pub reason: PowerParseReason,
}

/// The specific defect of a rejected power value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerParseReason {
    /// Nothing but whitespace.
    Empty,
    /// Not a plain decimal number followed by an accepted unit.
    Malformed,
    /// A unit other than W or kW.
    UnknownUnit,
    /// Zero, or rounds to zero watts.
    NotPositive,
    /// Above [`MAX_POWER_WATTS`].
    TooLarge,
}

impl fmt::Display for PowerParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = match self.reason {
            PowerParseReason::Empty => "the value is empty",
            PowerParseReason::Malformed => "it is not a plain decimal number",
            PowerParseReason::UnknownUnit => "the unit is not W or kW",
            PowerParseReason::NotPositive => "it is not above zero watts",
            PowerParseReason::TooLarge => "it is above the 10 MW limit",
        };
        write!(
            f,
            "invalid power value {}: {why}; accepted: {ACCEPTED_FORMS}",
            crate::annotations::quoted(&self.input)
        )
    }
}

/// Parses a power value into whole watts.
pub fn parse_power(input: &str) -> Result<u64, PowerParseError> {
    let fail = |reason| PowerParseError {
        input: input.to_string(),
        reason,
    };
    let trimmed = input.trim();
    if trimmed.is_empty() {
        return Err(fail(PowerParseReason::Empty));
    }
    let number_len = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, rest) = trimmed.split_at(number_len);
    if !is_plain_decimal(number) {
        return Err(fail(PowerParseReason::Malformed));
    }
    let scale = match rest.trim_start().to_ascii_lowercase().as_str() {
        "" | "w" => 1.0,
        "kw" => 1000.0,
        _ if rest.starts_with(|c: char| c.is_ascii_alphabetic() || c == ' ') => {
            return Err(fail(PowerParseReason::UnknownUnit));
        }
        _ => return Err(fail(PowerParseReason::Malformed)),
    };
    // Digits and one dot only, so this parse cannot yield NaN or infinity,
    // but a very long digit string can still be huge.
    let value: f64 = number
        .parse()
        .map_err(|_| fail(PowerParseReason::Malformed))?;
    let watts = (value * scale).round();
    if watts < 1.0 {
        return Err(fail(PowerParseReason::NotPositive));
    }
    if watts > MAX_POWER_WATTS as f64 {
        return Err(fail(PowerParseReason::TooLarge));
    }
    // In range 1..=1e7 after the checks above, so the cast is exact.
    Ok(watts as u64)
}

/// `123`, `1.5`, `.5`, `2.`: digits with at most one dot and at least one digit.
fn is_plain_decimal(number: &str) -> bool {
    number.chars().filter(|c| *c == '.').count() <= 1 && number.chars().any(|c| c.is_ascii_digit())
}

/// Formats watts the way users write them: `300W`, `1.5kW`.
pub fn format_power(watts: u64) -> String {
    if watts >= 1000 && watts.is_multiple_of(100) {
        let kw = watts as f64 / 1000.0;
        format!("{kw}kW")
    } else {
        format!("{watts}W")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_the_documented_forms() {
        for (input, watts) in [
            ("300", 300),
            ("300W", 300),
            ("300 W", 300),
            ("300w", 300),
            ("1.5kW", 1500),
            ("0.3 kW", 300),
            ("2KW", 2000),
            (" 450W ", 450),
            ("299.6", 300),
            ("10000kW", 10_000_000),
        ] {
            assert_eq!(parse_power(input), Ok(watts), "{input}");
        }
    }

    #[test]
    fn rejects_nonsense_with_a_reason() {
        use PowerParseReason::*;
        for (input, reason) in [
            ("", Empty),
            ("   ", Empty),
            ("-300", Malformed),
            ("+300", Malformed),
            ("0", NotPositive),
            ("0W", NotPositive),
            ("0.4W", NotPositive),
            ("NaN", Malformed),
            ("inf", Malformed),
            ("1e3", UnknownUnit),
            ("300mW", UnknownUnit),
            ("300MW", UnknownUnit),
            ("300 watts", UnknownUnit),
            ("300W extra", UnknownUnit),
            ("1.2.3", Malformed),
            (".", Malformed),
            ("300%", Malformed),
            ("10001kW", TooLarge),
            ("99999999999999999999999999", TooLarge),
        ] {
            let err = parse_power(input).expect_err(input);
            assert_eq!(err.reason, reason, "{input}");
        }
    }

    #[test]
    fn errors_name_the_value_and_the_accepted_forms() {
        let message = parse_power("300 watts").expect_err("rejected").to_string();
        assert!(message.contains("\"300 watts\""), "{message}");
        assert!(message.contains("1.5kW"), "{message}");
    }

    #[test]
    fn formats_round_values_in_kilowatts() {
        assert_eq!(format_power(300), "300W");
        assert_eq!(format_power(1500), "1.5kW");
        assert_eq!(format_power(1234), "1234W");
    }

    proptest! {
        #[test]
        fn every_whole_watt_value_round_trips(watts in 1u64..=MAX_POWER_WATTS) {
            prop_assert_eq!(parse_power(&watts.to_string()), Ok(watts));
            prop_assert_eq!(parse_power(&format!("{watts}W")), Ok(watts));
            prop_assert_eq!(parse_power(&format!("{watts} W")), Ok(watts));
            prop_assert_eq!(parse_power(&format_power(watts)), Ok(watts));
        }

        #[test]
        fn kilowatts_are_a_thousand_watts(milli in 1u64..=10_000_000u64) {
            // milli-kilowatts, i.e. whole watts written as kW with 3 decimals
            let text = format!("{}.{:03}kW", milli / 1000, milli % 1000);
            prop_assert_eq!(parse_power(&text), Ok(milli));
        }

        #[test]
        fn never_panics_and_accepts_only_in_range(input in "\\PC{0,24}") {
            if let Ok(watts) = parse_power(&input) {
                prop_assert!((1..=MAX_POWER_WATTS).contains(&watts));
            }
        }

        /// Any text, control characters and long values included: a value
        /// in range, or an error that quotes the value as given.
        #[test]
        fn any_text_parses_or_is_refused_by_name(
            input in prop_oneof!["\\PC{0,24}", any::<String>(), "[0-9. kKwW]{0,40}"],
        ) {
            match parse_power(&input) {
                Ok(watts) => prop_assert!((1..=MAX_POWER_WATTS).contains(&watts)),
                Err(e) => {
                    prop_assert_eq!(&e.input, &input);
                    let message = e.to_string();
                    let named = crate::annotations::quoted(&input);
                    prop_assert!(message.contains(&named), "{message}");
                }
            }
        }

        /// Whatever a user wrote, the canonical form of what it meant reads
        /// back the same.
        #[test]
        fn an_accepted_value_reads_back_from_its_canonical_form(
            input in "[0-9]{0,8}\\.?[0-9]{0,4} ?(W|w|kW|KW|kw)?",
        ) {
            if let Ok(watts) = parse_power(&input) {
                prop_assert_eq!(parse_power(&format_power(watts)), Ok(watts));
            }
        }

        /// Decimal watts are rounded to the nearest watt: in range they are
        /// taken, beyond either bound refused for that reason.
        #[test]
        fn decimals_round_to_the_nearest_watt_within_the_bounds(
            whole in 0u64..=2 * MAX_POWER_WATTS,
            tenths in 0u64..10,
            kilo in any::<bool>(),
        ) {
            let (text, watts) = if kilo {
                // Tenths of a kilowatt are whole watts.
                (format!("{whole}.{tenths}kW"), whole * 1000 + tenths * 100)
            } else {
                (format!("{whole}.{tenths}"), whole + u64::from(tenths >= 5))
            };
            match parse_power(&text) {
                Ok(parsed) => {
                    prop_assert_eq!(parsed, watts);
                    prop_assert!((1..=MAX_POWER_WATTS).contains(&watts));
                }
                Err(e) if watts == 0 => prop_assert_eq!(e.reason, PowerParseReason::NotPositive),
                Err(e) => {
                    prop_assert!(watts > MAX_POWER_WATTS, "{text} refused: {e}");
                    prop_assert_eq!(e.reason, PowerParseReason::TooLarge);
                }
            }
        }

        #[test]
        fn negative_values_are_rejected(watts in 1u64..=MAX_POWER_WATTS) {
            let text = format!("-{}W", watts);
            prop_assert!(parse_power(&text).is_err());
        }

        #[test]
        fn unknown_units_are_rejected(unit in "[a-zA-Z]{1,6}") {
            let lower = unit.to_ascii_lowercase();
            prop_assume!(lower != "w" && lower != "kw");
            let text = format!("300{}", unit);
            prop_assert!(parse_power(&text).is_err());
        }
    }
}
