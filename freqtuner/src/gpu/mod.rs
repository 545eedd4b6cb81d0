//! GPU clock control: the backend trait, what a backend knows about each
//! GPU, and the rule that turns a requested clock into a supported one.

pub mod nvml;
pub mod sim;

use climatik_api::GpuInventory;

use crate::error::{Error, Result};

/// A GPU as its backend found it.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuInfo {
    /// `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
    pub uuid: String,
    /// Index on the node (`nvidia0` is 0).
    pub index: u32,
    /// Product name.
    pub model: String,
    /// `00000000:07:00.0`.
    pub pci_bus_id: String,
    /// Supported SM clocks in MHz, ascending; empty when the GPU cannot
    /// lock clocks.
    pub supported_mhz: Vec<u32>,
    /// Power limits the GPU accepts, when it lets them be changed.
    pub power_limits: Option<PowerLimits>,
}

/// The power-limit range a GPU reports, in watts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PowerLimits {
    pub min_watts: f64,
    pub max_watts: f64,
    pub default_watts: f64,
}

impl GpuInfo {
    pub fn min_mhz(&self) -> Option<u32> {
        self.supported_mhz.first().copied()
    }

    pub fn max_mhz(&self) -> Option<u32> {
        self.supported_mhz.last().copied()
    }

    /// The entry for `status.gpus`.
    pub fn inventory(&self) -> GpuInventory {
        let mhz = |v: Option<u32>| v.map_or(0, |v| i32::try_from(v).unwrap_or(i32::MAX));
        GpuInventory {
            gpu_id: self.uuid.clone(),
            index: i32::try_from(self.index).unwrap_or(i32::MAX),
            model: self.model.clone(),
            min_frequency: mhz(self.min_mhz()),
            max_frequency: mhz(self.max_mhz()),
            supported_frequencies: self
                .supported_mhz
                .iter()
                .map(|v| i32::try_from(*v).unwrap_or(i32::MAX))
                .collect(),
            power_limit_watts: self.power_limits.map(|l| l.default_watts),
            min_power_limit_watts: self.power_limits.map(|l| l.min_watts),
        }
    }
}

/// A way to lock GPU clocks and read GPU power.
pub trait GpuBackend: Send {
    /// `nvml` or `sim`.
    fn name(&self) -> &'static str;

    /// The node's GPUs, found at start-up.
    fn devices(&self) -> &[GpuInfo];

    /// Locks the SM clock of `uuid` to `mhz`, which must be one of its
    /// supported clocks (see [`snap_clock`]).
    fn set_locked_clock(&mut self, uuid: &str, mhz: u32) -> Result<()>;

    /// Unlocks the clock and puts back any power limit that was changed.
    fn reset(&mut self, uuid: &str) -> Result<()>;

    /// The SM clock now, in MHz.
    fn current_clock(&mut self, uuid: &str) -> Result<u32>;

    /// Power draw now, in watts.
    fn power_watts(&mut self, uuid: &str) -> Result<f64>;

    /// Energy since the driver loaded, in millijoules.
    fn energy_mj(&mut self, uuid: &str) -> Result<u64>;

    /// Sets the GPU's own power limit, clamped to what it accepts; returns
    /// the limit set, in watts.
    fn set_power_limit(&mut self, uuid: &str, watts: f64) -> Result<f64> {
        let _ = watts;
        Err(Error::Unsupported(format!(
            "{uuid}: the {} backend cannot set power limits",
            self.name()
        )))
    }

    /// The GPU's power limit in force now, in watts: read back to notice
    /// that someone else changed it.
    fn power_limit_watts(&mut self, uuid: &str) -> Result<f64> {
        Err(Error::Unsupported(format!(
            "{uuid}: the {} backend cannot read power limits",
            self.name()
        )))
    }

    /// GPUs with a locked clock or changed limit, not yet reset.
    fn touched(&self) -> Vec<String>;

    /// Resets what a previous agent on this node locked and did not reset
    /// (it was killed); returns the GPUs reset.
    fn restore_leftovers(&mut self) -> Result<Vec<String>>;

    /// The GPU with this UUID, if the node has it.
    fn device(&self, uuid: &str) -> Option<&GpuInfo> {
        self.devices().iter().find(|d| d.uuid == uuid)
    }
}

/// A requested clock turned into a supported one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapped {
    pub mhz: u32,
    /// Why it differs from the request, if it does.
    pub note: Option<String>,
}

/// The supported clock to lock for a request: the highest supported clock
/// at or below it (a cap must not be exceeded), or the lowest supported
/// clock when the request is below all of them.
pub fn snap_clock(requested: i64, supported: &[u32]) -> Result<Snapped> {
    if requested <= 0 {
        return Err(Error::InvalidTarget(format!("{requested} MHz")));
    }
    let (Some(&min), Some(&max)) = (supported.iter().min(), supported.iter().max()) else {
        return Err(Error::Unsupported(
            "the GPU reports no supported clocks".into(),
        ));
    };
    if requested < i64::from(min) {
        return Ok(Snapped {
            mhz: min,
            note: Some(format!(
                "clamped {requested} -> {min} MHz, below the supported minimum"
            )),
        });
    }
    if requested > i64::from(max) {
        return Ok(Snapped {
            mhz: max,
            note: Some(format!(
                "clamped {requested} -> {max} MHz, above the supported maximum"
            )),
        });
    }
    let mhz = supported
        .iter()
        .copied()
        .filter(|c| i64::from(*c) <= requested)
        .max()
        .unwrap_or(min);
    let note = (i64::from(mhz) != requested).then(|| {
        format!("snapped {requested} -> {mhz} MHz, the nearest supported clock at or below")
    });
    Ok(Snapped { mhz, note })
}

/// A UUID in NVIDIA's format, stable for a node name and GPU index.
pub fn stable_uuid(node: &str, index: u32) -> String {
    let a = fnv1a64(format!("{node}/{index}/a").as_bytes());
    let b = fnv1a64(format!("{node}/{index}/b").as_bytes());
    let hex = format!("{a:016x}{b:016x}");
    format!(
        "GPU-{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const CLOCKS: [u32; 4] = [345, 360, 990, 1980];

    #[test]
    fn snaps_down_to_a_supported_clock() {
        assert_eq!(
            snap_clock(1000, &CLOCKS).expect("snap"),
            Snapped {
                mhz: 990,
                note: Some(
                    "snapped 1000 -> 990 MHz, the nearest supported clock at or below".into()
                )
            }
        );
        assert_eq!(snap_clock(990, &CLOCKS).expect("snap").note, None);
    }

    #[test]
    fn clamps_to_the_supported_range() {
        let low = snap_clock(250, &CLOCKS).expect("snap");
        assert_eq!(low.mhz, 345);
        assert_eq!(
            low.note.as_deref(),
            Some("clamped 250 -> 345 MHz, below the supported minimum")
        );
        let high = snap_clock(5000, &CLOCKS).expect("snap");
        assert_eq!(high.mhz, 1980);
        assert!(
            high.note
                .is_some_and(|n| n.contains("above the supported maximum"))
        );
    }

    #[test]
    fn refuses_nonsense() {
        assert!(matches!(
            snap_clock(0, &CLOCKS),
            Err(Error::InvalidTarget(_))
        ));
        assert!(matches!(
            snap_clock(-5, &CLOCKS),
            Err(Error::InvalidTarget(_))
        ));
        assert!(snap_clock(1000, &[]).is_err_and(|e| e.is_unsupported()));
    }

    #[test]
    fn uuids_look_real_and_are_stable() {
        let uuid = stable_uuid("gpu-node-0", 3);
        assert_eq!(uuid, stable_uuid("gpu-node-0", 3));
        assert_ne!(uuid, stable_uuid("gpu-node-0", 2));
        assert_ne!(uuid, stable_uuid("gpu-node-1", 3));
        let parts: Vec<&str> = uuid.split('-').collect();
        assert_eq!(parts[0], "GPU");
        let lens: Vec<usize> = parts[1..].iter().map(|p| p.len()).collect();
        assert_eq!(lens, [8, 4, 4, 4, 12]);
        assert!(
            parts[1..]
                .iter()
                .all(|p| p.bytes().all(|b| b.is_ascii_hexdigit()))
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Whatever order and repeats the driver reports its clocks in.
        #[test]
        fn the_clock_is_the_nearest_supported_one_at_or_below_the_request(
            supported in prop::collection::vec(1u32..3_000, 1..16),
            requested in -10i64..4_000,
        ) {
            let Ok(snapped) = snap_clock(requested, &supported) else {
                prop_assert!(requested <= 0);
                return Ok(());
            };
            prop_assert!(requested > 0);
            prop_assert!(supported.contains(&snapped.mhz));
            let lowest = supported.iter().copied().min().map(i64::from);
            if Some(requested) < lowest {
                prop_assert_eq!(Some(i64::from(snapped.mhz)), lowest);
            } else {
                prop_assert!(i64::from(snapped.mhz) <= requested);
                let closer = supported
                    .iter()
                    .any(|c| snapped.mhz < *c && i64::from(*c) <= requested);
                prop_assert!(!closer, "{snapped:?}");
            }
            // Only a request that is itself supported is taken silently;
            // otherwise the note names what was locked instead.
            match &snapped.note {
                None => prop_assert_eq!(i64::from(snapped.mhz), requested),
                Some(note) => {
                    prop_assert_ne!(i64::from(snapped.mhz), requested);
                    let locked = format!("{requested} -> {} MHz", snapped.mhz);
                    prop_assert!(note.contains(&locked), "{note}");
                }
            }
        }
    }
}
