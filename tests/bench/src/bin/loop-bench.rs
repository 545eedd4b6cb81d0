//! `make bench` (loop part): every scenario under every strategy on each
//! simulated GPU model; writes `target/bench/loop.json` and `loop.md`.

use std::{fmt::Write as _, path::PathBuf};

use clap::Parser;
use climatik_bench::closed_loop::{self as bench, RunResult};
use climatik_sim_gpu::plant::MeasuredCurve;

#[derive(Parser, Debug)]
#[command(about = "Closed-loop power-capping benchmark on the simulated plant")]
struct Args {
    /// Seed of the load traces.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Output directory.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut results: Vec<RunResult> = Vec::new();
    for gpu in [MeasuredCurve::V100Opt125m, MeasuredCurve::H200Compute] {
        for scenario in bench::scenarios(args.seed, gpu) {
            for strategy in bench::strategies() {
                results.push(bench::run(&scenario, strategy));
            }
        }
    }
    std::fs::create_dir_all(&args.out)?;
    let json = serde_json::json!({
        "seed": args.seed,
        "control_period_s": bench::PERIOD_S,
        "staleness_s": bench::STALENESS_S,
        "actuation_delay_s": bench::ACTUATION_S,
        "results": results,
    });
    std::fs::write(
        args.out.join("loop.json"),
        serde_json::to_vec_pretty(&json)?,
    )?;
    let table = markdown(&results);
    std::fs::write(args.out.join("loop.md"), &table)?;
    print!("{table}");
    Ok(())
}

fn markdown(results: &[RunResult]) -> String {
    let mut out = String::new();
    let mut gpu = None;
    for r in results {
        if gpu != Some(r.gpu) {
            gpu = Some(r.gpu);
            let _ = write!(
                out,
                "{}#### {}\n\n| scenario | strategy | time to cap (periods) | max overshoot | samples over cap | mean power / cap | throughput vs uncapped | energy (kJ) |\n|---|---|---|---|---|---|---|---|\n",
                if out.is_empty() { "" } else { "\n" },
                r.gpu.label()
            );
        }
        let settle = format!("{:.1}", r.time_to_cap_periods);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.1}% | {:.1}% | {:.0}% | {:.1}% | {:.0} |",
            r.scenario,
            r.strategy,
            settle,
            r.max_overshoot_percent,
            r.samples_over_cap_percent,
            r.mean_power_percent_of_cap,
            r.throughput_percent_of_uncapped,
            r.energy_kj
        );
    }
    out
}
