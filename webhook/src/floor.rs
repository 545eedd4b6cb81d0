//! A cap the workload's GPUs cannot be held to, told from the workload
//! alone: its pod template asks for `nvidia.com/gpu: N`, and every GPU
//! accepts no power limit below some floor, so a cap under N times that
//! floor is out of reach as soon as one pod runs. The webhook warns (it
//! never denies: the floor is an estimate, and the controller's
//! `CapReachable` condition reads the real limits from the node agents).

use serde_json::Value;

/// The GPU resource of NVIDIA's device plugin.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";

/// Default per-GPU floor, in watts: the lowest power limit an H100 or H200
/// SXM accepts (`nvidia-smi -q` reports 200 W; an older V100 accepts
/// 100 W, so clusters of those set a lower floor).
pub const DEFAULT_MIN_WATTS_PER_GPU: f64 = 200.0;

/// What the webhook checks besides the annotations.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Checks {
    /// Least power one GPU can be held to, in watts; 0 turns the warning
    /// off.
    pub min_watts_per_gpu: f64,
}

impl Default for Checks {
    fn default() -> Self {
        Self {
            min_watts_per_gpu: DEFAULT_MIN_WATTS_PER_GPU,
        }
    }
}

/// `--min-watts-per-gpu`: a finite number of watts, 0 or more.
pub fn parse_min_watts(value: &str) -> Result<f64, String> {
    match value.trim().parse::<f64>() {
        Ok(watts) if watts.is_finite() && watts >= 0.0 => Ok(watts),
        _ => Err(format!("{value:?} is not a number of watts, 0 or more")),
    }
}

/// GPUs one pod of `template` asks for: the `nvidia.com/gpu` limit (or,
/// without one, request) of each container, summed. Init containers run
/// before the others and are left out; a value that is not a whole number
/// counts as none (the API server refuses those for this resource).
pub fn gpus_per_pod(template: &Value) -> u64 {
    let Some(containers) = template
        .pointer("/spec/containers")
        .and_then(Value::as_array)
    else {
        return 0;
    };
    containers
        .iter()
        .filter_map(|c| {
            let resources = c.get("resources")?;
            ["limits", "requests"]
                .iter()
                .find_map(|kind| resources.get(*kind)?.get(GPU_RESOURCE))
        })
        .filter_map(|quantity| match quantity {
            Value::String(s) => s.trim().parse::<u64>().ok(),
            Value::Number(n) => n.as_u64(),
            _ => None,
        })
        .fold(0u64, u64::saturating_add)
}

/// The warning for a cap of `cap_watts` on pods of `template`, if the
/// GPUs one pod asks for cannot be held that low.
pub fn unreachable_cap_warning(
    checks: &Checks,
    cap_watts: u64,
    template: &Value,
) -> Option<String> {
    let gpus = gpus_per_pod(template);
    let floor = gpus as f64 * checks.min_watts_per_gpu;
    ((cap_watts as f64) < floor).then(|| {
        format!(
            "the power cap of {cap_watts} W is below {floor:.0} W: one pod asks for {gpus} GPU(s) \
             ({GPU_RESOURCE}) and a GPU accepts no power limit below about {} W, so the policy \
             cannot hold this cap",
            checks.min_watts_per_gpu
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn template(containers: Value) -> Value {
        json!({ "spec": { "containers": containers } })
    }

    #[test]
    fn counts_the_gpus_of_every_container() {
        let t = template(json!([
            { "name": "a", "resources": { "limits": { "nvidia.com/gpu": "2" } } },
            { "name": "b", "resources": { "requests": { "nvidia.com/gpu": 1 } } },
            { "name": "c", "resources": { "limits": { "cpu": "2" } } },
            { "name": "d", "resources": { "limits": { "nvidia.com/gpu": "half" } } },
            { "name": "e" }
        ]));
        assert_eq!(gpus_per_pod(&t), 3);
        assert_eq!(gpus_per_pod(&json!({})), 0);
    }

    #[test]
    fn warns_below_gpus_times_the_floor_and_never_when_off() {
        let t = template(json!([
            { "name": "a", "resources": { "limits": { "nvidia.com/gpu": "2" } } }
        ]));
        let checks = Checks::default();
        let warning = unreachable_cap_warning(&checks, 399, &t).unwrap_or_default();
        assert!(
            warning.contains("399 W") && warning.contains("400 W"),
            "{warning}"
        );
        assert_eq!(unreachable_cap_warning(&checks, 400, &t), None);
        let off = Checks {
            min_watts_per_gpu: 0.0,
        };
        assert_eq!(unreachable_cap_warning(&off, 1, &t), None);
        assert_eq!(
            unreachable_cap_warning(&checks, 1, &template(json!([]))),
            None
        );
    }

    #[test]
    fn the_flag_takes_watts_zero_or_more() {
        assert_eq!(parse_min_watts("150"), Ok(150.0));
        assert_eq!(parse_min_watts("0"), Ok(0.0));
        for bad in ["-1", "NaN", "inf", "200W", ""] {
            assert!(parse_min_watts(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        /// The warning appears exactly when the cap is below N × floor.
        #[test]
        fn warning_iff_below_the_floor(gpus in 0u64..64, cap in 1u64..20_000, floor in 0.0f64..1000.0) {
            let t = template(json!([{ "name": "a", "resources": { "limits": { "nvidia.com/gpu": gpus.to_string() } } }]));
            let checks = Checks { min_watts_per_gpu: floor };
            prop_assert_eq!(
                unreachable_cap_warning(&checks, cap, &t).is_some(),
                (cap as f64) < gpus as f64 * floor
            );
        }
    }
}
