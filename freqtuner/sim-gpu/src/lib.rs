//! The one simulated GPU of the project: the measured clock sweeps, the
//! models that turn them into power and throughput at a locked clock, and
//! the DCGM-exporter series a simulated node serves.
//!
//! Two scalings of the same sweeps are kept, because their users were
//! calibrated on them and their numbers must not move:
//!
//! - [`plant`]: clocks in absolute MHz on the sweep's own axis; the
//!   V100-class curve's shape mapped between an idle floor and a peak, the
//!   H200 curve as a ratio of its top. Used by the benchmarks and the
//!   recommender's algorithm test rig.
//! - [`node`]: clocks relative to the simulated GPU's maximum, power as a
//!   ratio of TDP; any clock range and TDP. Used by the freqtuner's `sim`
//!   backend (the chart's simulated nodes).
//!
//! Both read the tables in [`sweep`] through its one interpolation.

pub mod dcgm;
pub mod node;
pub mod plant;
pub mod resplit;
pub mod sweep;
