//! Algorithms that turn a policy's observed power into per-device targets.
//!
//! An algorithm sees one [`Observation`] per control period (built from the
//! policy's status, which the monitor writes) and returns a [`Target`] for
//! every device it was shown. Algorithms keep state between periods (last
//! commanded clocks, slope estimates), so the recommender keeps one instance
//! per policy and feeds it each new observation exactly once.

mod budget;
mod feedback;
mod hybrid;
mod scaler;

use std::collections::BTreeMap;

use climatik_api::{
    CustomAlgorithm, DeviceKind, GpuInventory,
    bounds::{MAX_CLOCK_MHZ, MAX_SUPPORTED_CLOCKS},
    names::ALGORITHMS,
};

pub use budget::BudgetAllocator;
pub use feedback::Feedback;
pub use hybrid::FeedbackBudget;
pub use scaler::DynamicFrequencyScaler;

/// Name of the default algorithm.
pub const FEEDBACK: &str = "feedback";
/// Name of the original multiplicative scaler.
pub const DYNAMIC_FREQUENCY_SCALER: &str = "dynamic-frequency-scaler";
/// Name of the per-GPU budget splitter.
pub const BUDGET_ALLOCATOR: &str = "budget-allocator";
/// Name of feedback's clocks under budget-allocator's budgets.
pub const FEEDBACK_BUDGET: &str = "feedback-budget";

/// Why an algorithm could not be built from a policy's spec.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AlgorithmError {
    #[error("unknown algorithm {0:?}; known: {known}", known = ALGORITHMS.join(", "))]
    Unknown(String),
    #[error("algorithm {algorithm}: parameter {parameter}={value:?} is invalid: {why}")]
    BadParameter {
        algorithm: &'static str,
        parameter: String,
        value: String,
        why: String,
    },
}

impl AlgorithmError {
    /// The condition reason for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            AlgorithmError::Unknown(_) => "UnknownAlgorithm",
            AlgorithmError::BadParameter { .. } => "InvalidParameter",
        }
    }
}

/// Clocks a device can be set to: ascending, never empty.
#[derive(Debug, Clone, PartialEq)]
pub struct Clocks(Vec<i32>);

impl Clocks {
    /// From a list of supported clocks; `None` when it holds no positive
    /// clock.
    pub fn from_supported(mut clocks: Vec<i32>) -> Option<Self> {
        clocks.retain(|c| *c > 0);
        clocks.sort_unstable();
        clocks.dedup();
        (!clocks.is_empty()).then_some(Self(clocks))
    }

    /// Every `step` MHz from `min` to `max` (both included).
    pub fn range(min: i32, max: i32, step: i32) -> Option<Self> {
        if min <= 0 || max < min {
            return None;
        }
        let step = usize::try_from(step.max(1)).unwrap_or(1);
        let mut clocks: Vec<i32> = (min..=max).step_by(step).collect();
        if clocks.last() != Some(&max) {
            clocks.push(max);
        }
        Some(Self(clocks))
    }

    /// The clocks a node agent reported for a GPU: its supported list, or
    /// every `step` MHz between its lowest and highest clock. The inventory
    /// is checked against the CRD's bounds first: one stored before the
    /// schema had them (or written past it) could otherwise ask for a range
    /// of billions of clocks.
    pub fn of_gpu(gpu: &GpuInventory, step: i32) -> Result<Self, String> {
        let (min, max) = (gpu.min_frequency, gpu.max_frequency);
        let clock_ok = |mhz: i32| (1..=MAX_CLOCK_MHZ).contains(&mhz);
        if !clock_ok(min) || !clock_ok(max) || min > max {
            return Err(format!(
                "clock range {min}..{max} MHz is not within 1..{MAX_CLOCK_MHZ} MHz"
            ));
        }
        let supported = &gpu.supported_frequencies;
        if supported.len() > MAX_SUPPORTED_CLOCKS {
            return Err(format!(
                "{} supported clocks, more than {MAX_SUPPORTED_CLOCKS}",
                supported.len()
            ));
        }
        if let Some(outside) = supported.iter().find(|c| !(min..=max).contains(*c)) {
            return Err(format!(
                "supported clock {outside} MHz is outside {min}..{max} MHz"
            ));
        }
        Self::from_supported(supported.clone())
            .or_else(|| Self::range(min, max, step))
            .ok_or_else(|| "no usable clock".to_string())
    }

    pub fn min(&self) -> i32 {
        self.0[0]
    }

    pub fn max(&self) -> i32 {
        self.0[self.0.len() - 1]
    }

    /// The highest clock at or below `mhz` (the lowest clock if none is):
    /// rounding down keeps power under a target.
    pub fn floor(&self, mhz: f64) -> i32 {
        self.0
            .iter()
            .rev()
            .copied()
            .find(|c| f64::from(*c) <= mhz + 1e-6)
            .unwrap_or_else(|| self.min())
    }

    /// Typical distance between neighbouring clocks, in MHz.
    pub fn step(&self) -> f64 {
        if self.0.len() < 2 {
            return 1.0;
        }
        f64::from(self.max() - self.min()) / (self.0.len() - 1) as f64
    }

    pub fn as_slice(&self) -> &[i32] {
        &self.0
    }
}

/// One device as the algorithm sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    /// GPU UUID, or `cpu` for a node's CPUs.
    pub id: String,
    /// Node the device is on.
    pub node: String,
    pub kind: DeviceKind,
    /// Observed power, in watts.
    pub power_watts: f64,
    /// Observed clock, in MHz, when reported.
    pub clock_mhz: Option<f64>,
    /// Clocks the device supports.
    pub clocks: Clocks,
    /// Lowest power limit the device enforces by itself, when reported.
    pub min_power_limit_watts: Option<f64>,
    /// The clock target this policy's entry holds on the device now, when
    /// it has one: what an earlier recommender (before a restart or a
    /// change of leader) commanded, so a new algorithm continues from it.
    pub entry_mhz: Option<i32>,
    /// The power budget this policy's entry holds on the device now, when
    /// it has one: what an earlier recommender handed it, so a new
    /// algorithm judges whether the GPU is held back by it as the old one
    /// would have.
    pub entry_budget_watts: Option<f64>,
}

impl Device {
    /// Key that identifies the device across periods.
    pub fn key(&self) -> (String, String) {
        (self.node.clone(), self.id.clone())
    }
}

/// What the algorithm knows in one control period.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// The policy's cap, in watts.
    pub cap_watts: f64,
    /// `cappingThreshold`, percent of the cap.
    pub threshold_percent: f64,
    /// The devices the policy acts on, with their readings.
    pub devices: Vec<Device>,
}

impl Observation {
    pub fn total_power(&self) -> f64 {
        self.devices.iter().map(|d| d.power_watts).sum()
    }
}

/// The algorithm's decision for one device.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub node: String,
    pub id: String,
    pub kind: DeviceKind,
    /// Clock ceiling, in MHz (one of the device's clocks).
    pub frequency_mhz: i32,
    /// Optional power budget for the node agent's local loop (GPUs only).
    pub power_budget_watts: Option<f64>,
}

/// A control law, run once per control period per policy.
pub trait Algorithm: Send + Sync {
    /// The name a policy selects it by.
    fn name(&self) -> &'static str;
    /// Targets for every device of the observation.
    fn plan(&mut self, observation: &Observation) -> Vec<Target>;
    /// Whether the budgets of a node's GPUs form one node budget, which
    /// the node agent re-splits across them each second by their demand
    /// (the entries' `budgetGroup`); `false`: each GPU's budget is its own.
    fn pools_node_budgets(&self) -> bool {
        false
    }
}

/// Builds the algorithm a policy asks for (`feedback` when none is named).
pub fn from_spec(spec: Option<&CustomAlgorithm>) -> Result<Box<dyn Algorithm>, AlgorithmError> {
    let empty = BTreeMap::new();
    let (name, parameters) = match spec {
        Some(a) => (a.name.as_str(), &a.parameters),
        None => (FEEDBACK, &empty),
    };
    let params = Params::new(name, parameters)?;
    let algorithm: Box<dyn Algorithm> = match name {
        FEEDBACK => Box::new(Feedback::new(&params)?),
        DYNAMIC_FREQUENCY_SCALER => Box::new(DynamicFrequencyScaler::new(&params)?),
        BUDGET_ALLOCATOR => Box::new(BudgetAllocator::new(&params)?),
        FEEDBACK_BUDGET => Box::new(FeedbackBudget::new(&params)?),
        other => return Err(AlgorithmError::Unknown(other.to_string())),
    };
    params.reject_unknown()?;
    Ok(algorithm)
}

/// Typed access to string parameters; remembers which keys were read so
/// that misspelt keys are rejected instead of silently ignored.
pub(crate) struct Params<'a> {
    algorithm: &'static str,
    values: &'a BTreeMap<String, String>,
    read: std::cell::RefCell<Vec<String>>,
}

impl<'a> Params<'a> {
    fn new(name: &str, values: &'a BTreeMap<String, String>) -> Result<Self, AlgorithmError> {
        let algorithm = ALGORITHMS
            .into_iter()
            .find(|known| *known == name)
            .ok_or_else(|| AlgorithmError::Unknown(name.to_string()))?;
        Ok(Self {
            algorithm,
            values,
            read: Default::default(),
        })
    }

    /// A number in `range` (inclusive), or `default` when absent.
    pub(crate) fn number(
        &self,
        key: &str,
        default: f64,
        range: std::ops::RangeInclusive<f64>,
    ) -> Result<f64, AlgorithmError> {
        self.read.borrow_mut().push(key.to_string());
        let Some(raw) = self.values.get(key) else {
            return Ok(default);
        };
        let bad = |why: String| AlgorithmError::BadParameter {
            algorithm: self.algorithm,
            parameter: key.to_string(),
            value: raw.clone(),
            why,
        };
        let value: f64 = raw
            .trim()
            .parse()
            .map_err(|_| bad("not a number".to_string()))?;
        if !value.is_finite() || !range.contains(&value) {
            return Err(bad(format!(
                "must be between {} and {}",
                range.start(),
                range.end()
            )));
        }
        Ok(value)
    }

    /// An optional number in `range`.
    pub(crate) fn optional(
        &self,
        key: &str,
        range: std::ops::RangeInclusive<f64>,
    ) -> Result<Option<f64>, AlgorithmError> {
        if self.values.contains_key(key) {
            self.number(key, 0.0, range).map(Some)
        } else {
            self.read.borrow_mut().push(key.to_string());
            Ok(None)
        }
    }

    /// `true` or `false`, or `default` when absent.
    pub(crate) fn flag(&self, key: &str, default: bool) -> Result<bool, AlgorithmError> {
        self.read.borrow_mut().push(key.to_string());
        match self.values.get(key).map(|v| v.trim()) {
            None => Ok(default),
            Some("true") => Ok(true),
            Some("false") => Ok(false),
            Some(_) => Err(self.fail(key, "must be true or false")),
        }
    }

    pub(crate) fn fail(&self, key: &str, why: &str) -> AlgorithmError {
        AlgorithmError::BadParameter {
            algorithm: self.algorithm,
            parameter: key.to_string(),
            value: self.values.get(key).cloned().unwrap_or_default(),
            why: why.to_string(),
        }
    }

    fn reject_unknown(&self) -> Result<(), AlgorithmError> {
        let read = self.read.borrow();
        match self.values.keys().find(|k| !read.contains(k)) {
            Some(key) => Err(AlgorithmError::BadParameter {
                algorithm: self.algorithm,
                parameter: key.clone(),
                value: self.values.get(key).cloned().unwrap_or_default(),
                why: format!("unknown parameter; known: {}", read.join(", ")),
            }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
pub(crate) mod sim;

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, params: &[(&str, &str)]) -> CustomAlgorithm {
        CustomAlgorithm {
            name: name.to_string(),
            parameters: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn default_is_feedback() {
        assert_eq!(from_spec(None).map(|a| a.name()), Ok(FEEDBACK));
    }

    #[test]
    fn the_webhook_accepts_exactly_these_names() {
        let ours = [
            FEEDBACK,
            DYNAMIC_FREQUENCY_SCALER,
            BUDGET_ALLOCATOR,
            FEEDBACK_BUDGET,
        ];
        assert_eq!(climatik_api::names::ALGORITHMS, ours);
    }

    #[test]
    fn selects_by_name() {
        for name in [
            FEEDBACK,
            DYNAMIC_FREQUENCY_SCALER,
            BUDGET_ALLOCATOR,
            FEEDBACK_BUDGET,
        ] {
            assert_eq!(
                from_spec(Some(&spec(name, &[]))).map(|a| a.name()),
                Ok(name)
            );
        }
    }

    #[test]
    fn unknown_name_and_bad_parameters_are_errors() {
        let err = from_spec(Some(&spec("pid-magic", &[]))).err();
        assert_eq!(err.as_ref().map(|e| e.reason()), Some("UnknownAlgorithm"));
        for (name, key, value) in [
            (DYNAMIC_FREQUENCY_SCALER, "scaling-factor", "1.5"),
            (DYNAMIC_FREQUENCY_SCALER, "scaling-factor", "fast"),
            (DYNAMIC_FREQUENCY_SCALER, "min-frequency", "-1"),
            (FEEDBACK, "target", "140"),
            (FEEDBACK, "tagret", "95"),
            (BUDGET_ALLOCATOR, "target", "NaN"),
            (BUDGET_ALLOCATOR, "node-resplit", "yes"),
            (FEEDBACK_BUDGET, "node-resplit", "1"),
            // Only the algorithms with budgets have a node budget to pool.
            (FEEDBACK, "node-resplit", "true"),
        ] {
            let err = from_spec(Some(&spec(name, &[(key, value)]))).err();
            assert_eq!(
                err.as_ref().map(|e| e.reason()),
                Some("InvalidParameter"),
                "{name} {key}={value}: {err:?}"
            );
        }
    }

    #[test]
    fn node_budgets_are_pooled_only_when_asked_for() {
        let pools = |name: &str, params: &[(&str, &str)]| {
            from_spec(Some(&spec(name, params))).map(|a| a.pools_node_budgets())
        };
        for name in [BUDGET_ALLOCATOR, FEEDBACK_BUDGET] {
            assert_eq!(pools(name, &[]).ok(), Some(false), "{name}");
            assert_eq!(
                pools(name, &[("node-resplit", "true")]).ok(),
                Some(true),
                "{name}"
            );
            assert_eq!(
                pools(name, &[("node-resplit", "false")]).ok(),
                Some(false),
                "{name}"
            );
        }
        assert_eq!(pools(FEEDBACK, &[]).ok(), Some(false));
    }

    fn inventory(min: i32, max: i32, supported: Vec<i32>) -> GpuInventory {
        GpuInventory {
            gpu_id: "GPU-a".into(),
            min_frequency: min,
            max_frequency: max,
            supported_frequencies: supported,
            ..GpuInventory::default()
        }
    }

    #[test]
    fn an_inventory_out_of_bounds_gives_no_clocks_instead_of_a_huge_range() {
        // A range of every 15 MHz up to i32::MAX would hold 143 million
        // clocks (570 MB); such an inventory is refused before any is built.
        let huge = Clocks::of_gpu(&inventory(1, i32::MAX, vec![]), 15);
        assert_eq!(huge.as_ref().map(|c| c.as_slice().len()).ok(), None);
        for bad in [
            inventory(0, 1980, vec![]),
            inventory(1980, 345, vec![]),
            inventory(345, 1980, vec![345; MAX_SUPPORTED_CLOCKS + 1]),
            inventory(345, 1980, vec![345, 20_000]),
            inventory(345, 1980, vec![100, 345]),
        ] {
            assert!(Clocks::of_gpu(&bad, 15).is_err(), "{bad:?} must be refused");
        }
        let supported = Clocks::of_gpu(&inventory(345, 1980, vec![1980, 345, 990]), 15)
            .expect("valid inventory");
        assert_eq!(supported.as_slice(), [345, 990, 1980]);
        let ranged = Clocks::of_gpu(&inventory(345, 1980, vec![]), 15).expect("valid inventory");
        assert_eq!(
            (ranged.min(), ranged.max(), ranged.as_slice().len()),
            (345, 1980, 110)
        );
    }

    #[test]
    fn clocks_round_down() {
        let clocks = Clocks::range(300, 1380, 15).expect("valid range");
        assert_eq!(clocks.floor(1000.0), 990);
        assert_eq!(clocks.floor(100.0), 300);
        assert_eq!(clocks.floor(5000.0), 1380);
        assert_eq!(clocks.step(), 15.0);
        assert!(Clocks::from_supported(vec![0, -5]).is_none());
    }
}
