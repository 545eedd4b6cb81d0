//! Load profiles of simulated pods, as written in the `climatik.io/sim-load`
//! annotation or a scenario file:
//!
//! - `0.8`: constant utilisation (0..=1);
//! - `idle`: 0; `full`: 1;
//! - `bursty`: mostly light load with bursts to 0.6–1.0 lasting a few
//!   seconds (deterministic per GPU);
//! - `trace`: replays, at 1 Hz in a loop, the shape of the serving GPU in
//!   the reference 1380 MHz power log (idle, then bursts);
//! - `step:0.2,0.9@60s`: 0.2 for the first 60 s after the pod was first
//!   seen, 0.9 after (durations in `ms`, `s`, `m`).

use std::{fmt, str::FromStr, sync::OnceLock, time::Duration};

use climatik_sim_gpu::sweep::RAW_TRACE_CSV;

/// A utilisation over time.
#[derive(Debug, Clone, PartialEq)]
pub enum LoadProfile {
    Constant(f64),
    Bursty,
    Trace,
    Step {
        before: f64,
        after: f64,
        at: Duration,
    },
}

/// Why a load profile was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid sim load {input:?}: {reason}; accepted: a number in 0..=1, idle, full, bursty, trace, or step:<before>,<after>@<duration>"
)]
pub struct LoadParseError {
    pub input: String,
    pub reason: &'static str,
}

impl FromStr for LoadProfile {
    type Err = LoadParseError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let fail = |reason| LoadParseError {
            input: input.to_string(),
            reason,
        };
        let text = input.trim();
        match text {
            "idle" => return Ok(LoadProfile::Constant(0.0)),
            "full" => return Ok(LoadProfile::Constant(1.0)),
            "bursty" => return Ok(LoadProfile::Bursty),
            "trace" => return Ok(LoadProfile::Trace),
            _ => {}
        }
        if let Some(rest) = text.strip_prefix("step:") {
            let (levels, at) = rest
                .split_once('@')
                .ok_or_else(|| fail("a step needs @<duration>"))?;
            let (before, after) = levels
                .split_once(',')
                .ok_or_else(|| fail("a step needs two levels"))?;
            return Ok(LoadProfile::Step {
                before: level(before).ok_or_else(|| fail("levels must be numbers in 0..=1"))?,
                after: level(after).ok_or_else(|| fail("levels must be numbers in 0..=1"))?,
                at: duration(at).ok_or_else(|| fail("durations look like 500ms, 60s or 2m"))?,
            });
        }
        level(text)
            .map(LoadProfile::Constant)
            .ok_or_else(|| fail("not a number in 0..=1 or a known profile"))
    }
}

impl fmt::Display for LoadProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadProfile::Constant(v) => write!(f, "{v}"),
            LoadProfile::Bursty => f.write_str("bursty"),
            LoadProfile::Trace => f.write_str("trace"),
            LoadProfile::Step { before, after, at } => {
                write!(f, "step:{before},{after}@{}ms", at.as_millis())
            }
        }
    }
}

fn level(text: &str) -> Option<f64> {
    let value: f64 = text.trim().parse().ok()?;
    (value.is_finite() && (0.0..=1.0).contains(&value)).then_some(value)
}

fn duration(text: &str) -> Option<Duration> {
    climatik_runtime::parse_duration(text).ok()
}

impl LoadProfile {
    /// Utilisation `elapsed` after the load started; `salt` varies bursts
    /// between GPUs.
    pub fn at(&self, elapsed: Duration, salt: u64) -> f64 {
        match self {
            LoadProfile::Constant(v) => *v,
            LoadProfile::Step { before, after, at } => {
                if elapsed < *at {
                    *before
                } else {
                    *after
                }
            }
            LoadProfile::Trace => {
                let trace = trace();
                if trace.is_empty() {
                    return 0.0;
                }
                let second = elapsed.as_secs() as usize;
                trace[second % trace.len()]
            }
            LoadProfile::Bursty => bursty(elapsed.as_secs(), salt),
        }
    }
}

/// Light load (0.05–0.2) with bursts: a burst starts in about one second in
/// six and lasts 1–5 s at 0.6–1.0.
fn bursty(second: u64, salt: u64) -> f64 {
    // A burst covering `second` started at most 4 s earlier.
    for start in second.saturating_sub(4)..=second {
        let h = splitmix64(salt ^ start.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let starts = h.is_multiple_of(6);
        let length = 1 + (h >> 8) % 5;
        if starts && second < start + length {
            return 0.6 + ((h >> 16) % 401) as f64 / 1000.0;
        }
    }
    0.05 + (splitmix64(salt ^ second) % 151) as f64 / 1000.0
}

pub(crate) fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The serving GPU's samples (first of each interleaved pair), mapped
/// linearly from [idle, peak] watts to [0, 1].
fn trace() -> &'static [f64] {
    static TRACE: OnceLock<Vec<f64>> = OnceLock::new();
    TRACE.get_or_init(|| {
        let watts: Vec<f64> = RAW_TRACE_CSV
            .lines()
            .skip(1)
            .filter_map(|l| l.split(',').nth(1)?.trim().parse::<f64>().ok())
            .step_by(2)
            .collect();
        let lo = watts.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = watts.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if hi <= lo || !hi.is_finite() {
            return Vec::new();
        }
        watts.iter().map(|w| (w - lo) / (hi - lo)).collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!("0.8".parse(), Ok(LoadProfile::Constant(0.8)));
        assert_eq!(" 1 ".parse(), Ok(LoadProfile::Constant(1.0)));
        assert_eq!("idle".parse(), Ok(LoadProfile::Constant(0.0)));
        assert_eq!("bursty".parse(), Ok(LoadProfile::Bursty));
        assert_eq!("trace".parse(), Ok(LoadProfile::Trace));
        assert_eq!(
            "step:0.2,0.9@60s".parse(),
            Ok(LoadProfile::Step {
                before: 0.2,
                after: 0.9,
                at: Duration::from_secs(60)
            })
        );
        assert_eq!(
            "step:0,1@2m"
                .parse::<LoadProfile>()
                .map(|p| p.at(Duration::from_secs(119), 0)),
            Ok(0.0)
        );
    }

    #[test]
    fn rejects_out_of_range_and_garbage() {
        for bad in [
            "1.5",
            "-0.1",
            "NaN",
            "inf",
            "busy",
            "step:0.2@60s",
            "step:0.2,0.9@60",
            "step:0.2,2@1s",
            "",
        ] {
            let err = bad.parse::<LoadProfile>().expect_err(bad);
            assert!(err.to_string().contains("accepted"), "{err}");
        }
    }

    #[test]
    fn step_switches_at_its_time() {
        let step: LoadProfile = "step:0.2,0.9@500ms".parse().expect("parse");
        assert_eq!(step.at(Duration::from_millis(499), 0), 0.2);
        assert_eq!(step.at(Duration::from_millis(500), 0), 0.9);
    }

    #[test]
    fn trace_replays_idle_then_bursts() {
        let trace = trace();
        assert_eq!(trace.len(), 42);
        // 15 idle seconds, then the bursts of the reference log.
        assert!(trace[..15].iter().all(|l| *l < 0.02), "{trace:?}");
        assert!(trace.iter().any(|l| *l > 0.99));
        let profile = LoadProfile::Trace;
        assert_eq!(
            profile.at(Duration::from_secs(0), 0),
            profile.at(Duration::from_secs(42), 0)
        );
    }

    #[test]
    fn bursty_is_deterministic_and_has_bursts() {
        let samples: Vec<f64> = (0..600).map(|s| bursty(s, 7)).collect();
        let again: Vec<f64> = (0..600).map(|s| bursty(s, 7)).collect();
        assert_eq!(samples, again);
        let busy = samples.iter().filter(|l| **l >= 0.6).count();
        assert!((60..=400).contains(&busy), "{busy} busy seconds of 600");
        assert!(samples.iter().all(|l| (0.0..=1.0).contains(l)));
        assert_ne!(samples, (0..600).map(|s| bursty(s, 8)).collect::<Vec<_>>());
    }
}
