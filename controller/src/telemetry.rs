//! Logging lives in `climatik-runtime` (`--log-format`, `--log-level`);
//! this shim keeps the benchmark binaries' `telemetry::init(format)`.

pub use climatik_runtime::logging::LogFormat;

/// Installs the global subscriber, filtered by `RUST_LOG` (default `info`).
/// Later calls do nothing.
pub fn init(format: LogFormat) {
    let filter = std::env::var("RUST_LOG")
        .unwrap_or_else(|_| climatik_runtime::logging::DEFAULT_FILTER.to_string());
    climatik_runtime::logging::init(format, &filter);
}
