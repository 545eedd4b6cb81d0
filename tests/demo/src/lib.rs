//! `make demo` and the end-to-end test: the whole Climatik loop on the local
//! control plane, with simulated GPU nodes, every component as a local
//! process running with its chart ServiceAccount.

pub mod budget;
pub mod dashboard;
pub mod plot;
pub mod samples;
pub mod scenario;
pub mod stack;
pub mod view;
