//! `make bench`: the benchmarks, kept out of the shipped crates.
//!
//! - `loop-bench`: [`closed_loop`], every scenario under every strategy on
//!   the simulated GPU (`climatik-sim-gpu`), second by second, against the
//!   clairvoyant [`bound`], over several seeds ([`report`]);
//! - `budget-bench`: [`budget`], a rack's power budget shared by workloads
//!   of different priority, the arbitration against the alternatives and
//!   the bound, how fast it reacts ([`budget_reaction`]), and GPUs hosted
//!   per budget ([`budget_report`]);
//! - `scale-bench`: both controllers, as the shipped binaries, against many
//!   policies on many nodes of the local control plane;
//! - `webhook-bench`: admission latency in-process and through the API
//!   server.
//!
//! No binary here goes into the image (`scripts/image.sh` skips `*-bench`).

pub mod bound;
pub mod budget;
pub mod budget_reaction;
pub mod budget_report;
pub mod closed_loop;
pub mod report;
pub mod trace;
