//! Shutdown lives in `climatik-runtime`; re-exported under the old path for
//! the benchmark binaries that import it from here.

pub use climatik_runtime::shutdown::{Shutdown, signal};
