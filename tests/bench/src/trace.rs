//! A user's own load trace for the loop bench: a CSV with a header and one
//! row per second and GPU, `second,gpu,utilisation[,policy][,node]`.
//!
//! `second` is a whole number (a Unix time works: the first second becomes
//! 0), `gpu` any name, `utilisation` a share 0..=1 (DCGM's
//! `DCGM_FI_DEV_GPU_UTIL` is a percentage: divide it by 100). Rows come in
//! ascending seconds, with every GPU in every second; a GPU keeps its
//! policy (default `trace`) and node (default `node-0`). Any other shape is
//! refused with the line it was found on, so a replay never silently runs
//! on a trace other than the one the operator meant.

use std::{collections::HashMap, fmt};

/// One GPU of a trace.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceGpu {
    pub id: String,
    pub policy: String,
    pub node: String,
    /// Per second from the trace's first: utilisation 0..=1.
    pub loads: Vec<f64>,
}

/// A parsed trace: its GPUs in the order they first appear.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadTrace {
    /// The `second` of the first row.
    pub first_second: u64,
    pub seconds: usize,
    pub gpus: Vec<TraceGpu>,
}

/// Why a trace was refused, and where (1-based, the header is line 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for TraceError {}

const REQUIRED: [&str; 3] = ["second", "gpu", "utilisation"];
const OPTIONAL: [&str; 2] = ["policy", "node"];
const DEFAULT_POLICY: &str = "trace";
const DEFAULT_NODE: &str = "node-0";

/// The column of each known name in the header.
struct Columns {
    second: usize,
    gpu: usize,
    utilisation: usize,
    policy: Option<usize>,
    node: Option<usize>,
    count: usize,
}

fn columns(header: &str) -> Result<Columns, TraceError> {
    let fail = |message: String| TraceError { line: 1, message };
    let names: Vec<String> = header
        .split(',')
        .map(|n| n.trim().to_ascii_lowercase())
        .map(|n| {
            if n == "utilization" {
                "utilisation".into()
            } else {
                n
            }
        })
        .collect();
    let find = |name: &str| names.iter().position(|n| n == name);
    if let Some(unknown) = names
        .iter()
        .find(|n| !REQUIRED.contains(&n.as_str()) && !OPTIONAL.contains(&n.as_str()))
    {
        return Err(fail(format!(
            "unknown column {unknown:?} (the header is second,gpu,utilisation[,policy][,node])"
        )));
    }
    let missing: Vec<&str> = REQUIRED
        .iter()
        .copied()
        .filter(|n| find(n).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(fail(format!(
            "missing column(s) {} (the header is second,gpu,utilisation[,policy][,node])",
            missing.join(", ")
        )));
    }
    if let Some(twice) = names.iter().enumerate().find(|(i, n)| find(n) != Some(*i)) {
        return Err(fail(format!("column {:?} appears twice", twice.1)));
    }
    let required = |name| find(name).unwrap_or_default();
    Ok(Columns {
        second: required("second"),
        gpu: required("gpu"),
        utilisation: required("utilisation"),
        policy: find("policy"),
        node: find("node"),
        count: names.len(),
    })
}

/// Refuses `second`, which started on line `started`, when one of `gpus`
/// had no row in it (`seen` per GPU).
fn every_gpu_seen(
    seen: &[bool],
    gpus: &[TraceGpu],
    second: u64,
    started: usize,
) -> Result<(), TraceError> {
    match seen.iter().position(|seen| !seen) {
        Some(missing) => Err(TraceError {
            line: started,
            message: format!(
                "second {second} (from this line on) has no row for gpu {:?}",
                gpus[missing].id
            ),
        }),
        None => Ok(()),
    }
}

/// Parses a trace from the CSV `text`.
pub fn parse(text: &str) -> Result<LoadTrace, TraceError> {
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty());
    let Some((_, header)) = lines.next() else {
        return Err(TraceError {
            line: 1,
            message: "empty file: expected a header second,gpu,utilisation[,policy][,node]".into(),
        });
    };
    let columns = columns(header)?;
    let mut gpus: Vec<TraceGpu> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut first_second: Option<u64> = None;
    // The second being read, the line it started on, and which GPUs it has.
    let mut current: Option<(u64, usize)> = None;
    let mut seen_now: Vec<bool> = Vec::new();
    for (line, row) in lines {
        let fail = |message: String| TraceError { line, message };
        let fields: Vec<&str> = row.split(',').map(str::trim).collect();
        if fields.len() != columns.count {
            return Err(fail(format!(
                "{} fields, the header has {}",
                fields.len(),
                columns.count
            )));
        }
        let second: u64 = fields[columns.second].parse().map_err(|_| {
            fail(format!(
                "second {:?} is not a whole number of seconds",
                fields[columns.second]
            ))
        })?;
        let id = fields[columns.gpu];
        if id.is_empty() {
            return Err(fail("empty gpu".into()));
        }
        let utilisation: f64 = fields[columns.utilisation].parse().map_err(|_| {
            fail(format!(
                "utilisation {:?} is not a number",
                fields[columns.utilisation]
            ))
        })?;
        if !(0.0..=1.0).contains(&utilisation) {
            return Err(fail(format!(
                "utilisation {utilisation} is outside 0..=1 (DCGM reports percent: divide by 100)"
            )));
        }
        let text_or = |column: Option<usize>, default: &str| {
            column
                .map(|c| fields[c])
                .filter(|v| !v.is_empty())
                .unwrap_or(default)
                .to_string()
        };
        let policy = text_or(columns.policy, DEFAULT_POLICY);
        let node = text_or(columns.node, DEFAULT_NODE);

        match current {
            None => {
                first_second = Some(second);
                current = Some((second, line));
            }
            Some((now, started)) if second != now => {
                if second < now {
                    return Err(fail(format!(
                        "second {second} comes after second {now}: rows must be sorted by second"
                    )));
                }
                if second > now + 1 {
                    return Err(fail(format!(
                        "gap: no rows for seconds {} to {}",
                        now + 1,
                        second - 1
                    )));
                }
                every_gpu_seen(&seen_now, &gpus, now, started)?;
                current = Some((second, line));
                seen_now.iter_mut().for_each(|s| *s = false);
            }
            Some(_) => {}
        }
        let offset = (second - first_second.unwrap_or(second)) as usize;
        let i = match index.get(id) {
            Some(i) => *i,
            None => {
                if offset > 0 {
                    return Err(fail(format!(
                        "gpu {id:?} first appears at second {second}, after the trace's first second"
                    )));
                }
                index.insert(id.to_string(), gpus.len());
                gpus.push(TraceGpu {
                    id: id.to_string(),
                    policy: policy.clone(),
                    node: node.clone(),
                    loads: Vec::new(),
                });
                seen_now.push(false);
                gpus.len() - 1
            }
        };
        let gpu = &mut gpus[i];
        if seen_now[i] {
            return Err(fail(format!("second {second} has gpu {id:?} twice")));
        }
        if gpu.policy != policy || gpu.node != node {
            return Err(fail(format!(
                "gpu {id:?} moves from policy {:?} on node {:?} to policy {policy:?} on node {node:?}",
                gpu.policy, gpu.node
            )));
        }
        seen_now[i] = true;
        gpu.loads.push(utilisation);
    }
    let (Some(first_second), Some((last, started))) = (first_second, current) else {
        return Err(TraceError {
            line: 2,
            message: "no rows after the header".into(),
        });
    };
    every_gpu_seen(&seen_now, &gpus, last, started)?;
    Ok(LoadTrace {
        first_second,
        seconds: (last - first_second) as usize + 1,
        gpus,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> TraceError {
        match parse(text) {
            Ok(trace) => panic!("accepted {text:?} as {trace:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn a_trace_with_policies_and_nodes_is_read_per_gpu() {
        let trace = parse(
            "second,gpu,utilisation,policy,node\n\
             1700000000,GPU-a,0.5,serving,n0\n\
             1700000000,GPU-b,1,training,n1\n\
             1700000001,GPU-b,0.25,training,n1\n\
             1700000001,GPU-a,0,serving,n0\n",
        );
        let expected = LoadTrace {
            first_second: 1_700_000_000,
            seconds: 2,
            gpus: vec![
                TraceGpu {
                    id: "GPU-a".into(),
                    policy: "serving".into(),
                    node: "n0".into(),
                    loads: vec![0.5, 0.0],
                },
                TraceGpu {
                    id: "GPU-b".into(),
                    policy: "training".into(),
                    node: "n1".into(),
                    loads: vec![1.0, 0.25],
                },
            ],
        };
        assert_eq!(trace, Ok(expected));
    }

    #[test]
    fn optional_columns_default_and_may_come_in_any_order() {
        let trace = parse("utilization,second,gpu\n0.1,0,g0\n0.2,1,g0\n");
        let Ok(trace) = trace else {
            panic!("{trace:?}");
        };
        assert_eq!(trace.gpus[0].policy, DEFAULT_POLICY);
        assert_eq!(trace.gpus[0].node, DEFAULT_NODE);
        assert_eq!(trace.gpus[0].loads, vec![0.1, 0.2]);
    }

    /// Each bad file names its line and what is wrong there.
    #[test]
    fn bad_files_are_refused_with_their_line() {
        let cases: [(&str, usize, &str); 13] = [
            ("", 1, "empty file"),
            ("second,gpu\n0,g0\n", 1, "missing column(s) utilisation"),
            (
                "second,gpu,utilisation,colour\n",
                1,
                "unknown column \"colour\"",
            ),
            ("second,gpu,utilisation\n", 2, "no rows after the header"),
            (
                "second,gpu,utilisation\n0,g0,0.5\nx,g0,0.5\n",
                3,
                "second \"x\" is not a whole number",
            ),
            (
                "second,gpu,utilisation\n0,g0,half\n",
                2,
                "utilisation \"half\" is not a number",
            ),
            (
                "second,gpu,utilisation\n0,g0,-0.1\n",
                2,
                "utilisation -0.1 is outside 0..=1",
            ),
            ("second,gpu,utilisation\n0,g0,85\n", 2, "divide by 100"),
            (
                "second,gpu,utilisation\n0,g0,0.5\n1,g0,0.5\n3,g0,0.5\n",
                4,
                "gap: no rows for seconds 2 to 2",
            ),
            (
                "second,gpu,utilisation\n1,g0,0.5\n0,g0,0.5\n",
                3,
                "rows must be sorted by second",
            ),
            (
                "second,gpu,utilisation\n0,g0,0.5\n0,g0,0.6\n",
                3,
                "second 0 has gpu \"g0\" twice",
            ),
            (
                "second,gpu,utilisation\n0,g0,0.5\n0,g1,0.5\n1,g0,0.5\n2,g0,0.5\n",
                4,
                "second 1 (from this line on) has no row for gpu \"g1\"",
            ),
            (
                "second,gpu,utilisation\n0,g0,0.5,extra\n",
                2,
                "4 fields, the header has 3",
            ),
        ];
        for (text, line, message) in cases {
            let e = error(text);
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert!(e.message.contains(message), "{text:?}: {e}");
        }
    }

    #[test]
    fn a_gpu_that_is_missing_at_the_end_or_joins_late_is_refused() {
        let e = error("second,gpu,utilisation\n0,g0,0.5\n0,g1,0.5\n1,g0,0.5\n");
        assert_eq!(
            (e.line, e.to_string().contains("gpu \"g1\"")),
            (4, true),
            "{e}"
        );
        let e = error("second,gpu,utilisation\n0,g0,0.5\n1,g0,0.5\n1,g1,0.5\n");
        assert_eq!(e.line, 4, "{e}");
        assert!(e.message.contains("first appears at second 1"), "{e}");
        let e = error("second,gpu,utilisation,policy\n0,g0,0.5,a\n1,g0,0.5,b\n");
        assert_eq!(e.line, 3, "{e}");
        assert!(e.message.contains("moves from policy"), "{e}");
    }
}
