//! Logging on stderr, in one JSON shape for every binary: one object per
//! line with `timestamp`, `level`, `target`, `message` and the event's
//! fields at the top level (what log shippers index without a nested
//! `fields` object), or human-readable text for a terminal.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Text,
}

/// The filter used when none is given.
pub const DEFAULT_FILTER: &str = "info";

/// Checks a filter such as `info` or `info,climatik_controller=debug`, so a
/// typo fails at start-up instead of silently logging at another level.
pub fn parse_filter(text: &str) -> Result<String, String> {
    EnvFilter::try_new(text)
        .map(|_| text.to_string())
        .map_err(|e| format!("{text:?} is not a log filter such as info or info,kube=debug: {e}"))
}

/// Installs the global subscriber. `filter` uses `RUST_LOG` syntax; one that
/// does not parse falls back to [`DEFAULT_FILTER`]. Later calls in the same
/// process do nothing (tests start several components in one process).
pub fn init(format: LogFormat, filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Text => registry
            .with(fmt::layer().with_writer(std::io::stderr))
            .try_init(),
    };
}

/// For tools and tests: text logs filtered by `RUST_LOG` (default info).
pub fn init_text_from_env() {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| DEFAULT_FILTER.to_string());
    init(LogFormat::Text, &filter);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_checked() {
        assert!(parse_filter("info").is_ok());
        assert!(parse_filter("info,climatik_controller=debug").is_ok());
        assert!(parse_filter("info,kube=loud").is_err());
    }
}
