//! Replaying a user's load trace: the fixture traces under `tests/data`
//! through the library (policies, nodes, caps, the bound) and through
//! `loop-bench --trace` (its files, and the line it names for a bad trace).

use std::path::PathBuf;

use climatik_bench::{
    bound::Clairvoyant,
    closed_loop::{self as bench, Strategy},
    trace,
};
use climatik_sim_gpu::plant::MeasuredCurve;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn read(name: &str) -> String {
    match std::fs::read_to_string(fixture(name)) {
        Ok(text) => text,
        Err(e) => panic!("{name}: {e}"),
    }
}

#[test]
fn a_trace_becomes_one_policy_per_policy_column_on_its_nodes() {
    let parsed = match trace::parse(&read("trace-two-policies.csv")) {
        Ok(parsed) => parsed,
        Err(e) => panic!("{e}"),
    };
    assert_eq!((parsed.seconds, parsed.gpus.len()), (180, 4));
    let gpu = MeasuredCurve::H200Compute;
    let scenario = bench::from_trace("two", &parsed, gpu, None);
    let shape: Vec<(&str, usize, Vec<&str>, f64)> = scenario
        .policies
        .iter()
        .map(|p| {
            (
                p.name.as_str(),
                p.loads.len(),
                p.nodes.iter().map(String::as_str).collect(),
                p.cap[0],
            )
        })
        .collect();
    let half = bench::TRACE_CAP_SHARE_OF_PEAK * gpu.peak_watts();
    assert_eq!(
        shape,
        vec![
            ("serving", 3, vec!["node-a", "node-a", "node-b"], 3.0 * half),
            ("training", 1, vec!["node-b"], half),
        ]
    );
    let capped = bench::from_trace("two", &parsed, gpu, Some(300.0));
    assert!(
        capped
            .policies
            .iter()
            .all(|p| p.cap.iter().all(|c| *c == 300.0))
    );

    let results = bench::run_all(&scenario, &bench::strategies(), &mut Clairvoyant::default());
    assert_eq!(results.len(), bench::strategies().len());
    let bound = results
        .iter()
        .find(|r| r.strategy == Strategy::ClairvoyantBound.label());
    let Some(bound) = bound else {
        panic!("no bound row: {results:?}");
    };
    assert_eq!(bound.samples_over_cap_percent, 0.0, "{bound:?}");
    // The half-peak cap binds on this trace, so the bound gives up tokens.
    assert!(
        bound
            .bound_throughput_percent_of_uncapped
            .is_some_and(|b| b < 100.0),
        "{bound:?}"
    );
}

#[test]
fn loop_bench_replays_a_trace_and_names_the_line_of_a_bad_one() {
    let out = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let run = |file: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_loop-bench"))
            .args(["--gpu", "v100", "--cap", "400", "--out"])
            .arg(out.path())
            .arg("--trace")
            .arg(fixture(file))
            .output()
            .unwrap_or_else(|e| panic!("loop-bench: {e}"))
    };
    let good = run("trace-two-policies.csv");
    assert!(good.status.success(), "{good:?}");
    let json: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.path().join("loop-trace.json")).unwrap_or_default(),
    )
    .unwrap_or_else(|e| panic!("loop-trace.json: {e}"));
    assert_eq!(json["caps_watts"]["serving"], 400.0, "{json}");
    assert_eq!(
        json["results"][0]["gpu"], "v100-opt125m",
        "--gpu v100 picks the V100 model: {json}"
    );
    let table = String::from_utf8_lossy(&good.stdout);
    assert!(
        table.contains("| trace-two-policies.csv | clairvoyant bound |"),
        "{table}"
    );

    let bad = run("trace-percent.csv");
    assert!(!bad.status.success(), "{bad:?}");
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("trace-percent.csv is not a load trace")
            && stderr.contains("line 5: utilisation 45 is outside 0..=1"),
        "{stderr}"
    );
}
