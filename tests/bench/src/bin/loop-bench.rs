//! `make bench` (loop part): every scenario under every strategy on each
//! simulated GPU model, for several seeds, each strategy also measured
//! against the clairvoyant bound; writes `target/bench/loop.json` and
//! `loop.md`.

use std::path::PathBuf;

use clap::Parser;
use climatik_bench::{
    bound::{Clairvoyant, RESOLUTION_WATTS},
    closed_loop::{self as bench, RunResult},
    report,
};
use climatik_sim_gpu::plant::MeasuredCurve;

#[derive(Parser, Debug)]
#[command(about = "Closed-loop power-capping benchmark on the simulated plant")]
struct Args {
    /// Seeds of the load traces; the first is the one the detailed table
    /// shows. The default mixes the seed the algorithms were tuned on (42)
    /// with ones nobody tuned on.
    #[arg(long, value_delimiter = ',', default_value = "42,7,1234,99,2026")]
    seeds: Vec<u64>,
    /// Output directory.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(!args.seeds.is_empty(), "--seeds needs at least one seed");
    let mut bound = Clairvoyant::default();
    let strategies = bench::strategies();
    let runs: Vec<report::SeedRun> = args
        .seeds
        .iter()
        .map(|seed| {
            let mut results: Vec<RunResult> = Vec::new();
            for gpu in [MeasuredCurve::V100Opt125m, MeasuredCurve::H200Compute] {
                for scenario in bench::scenarios(*seed, gpu) {
                    results.extend(bench::run_all(&scenario, &strategies, &mut bound));
                }
            }
            report::SeedRun {
                seed: *seed,
                results,
            }
        })
        .collect();
    let summary = report::summarise_seeds(&runs);
    std::fs::create_dir_all(&args.out)?;
    let json = serde_json::json!({
        "seeds": args.seeds,
        "control_period_s": bench::PERIOD_S,
        "staleness_s": bench::STALENESS_S,
        "actuation_delay_s": bench::ACTUATION_S,
        "bound_resolution_watts": RESOLUTION_WATTS,
        "runs": runs,
        "summary": summary,
    });
    std::fs::write(
        args.out.join("loop.json"),
        serde_json::to_vec_pretty(&json)?,
    )?;
    let mut table = report::markdown(&runs[0].results);
    table.push('\n');
    table.push_str(&report::seeds_markdown(&args.seeds, &summary));
    std::fs::write(args.out.join("loop.md"), &table)?;
    print!("{table}");
    Ok(())
}
