//! `make bench` (budget part): a rack's power budget shared by serving,
//! training and batch, every situation under every strategy on each
//! simulated GPU model for several seeds, and the headline: GPUs hosted per
//! budget, and how fast the shared budget reacts. Writes `target/bench/budget.json` and `budget.md`.

use std::path::PathBuf;

use clap::Parser;
use climatik_bench::budget::{self, RackResult, RackStrategy};
use climatik_bench::budget_report;
use climatik_sim_gpu::plant::MeasuredCurve;

#[derive(Parser, Debug)]
#[command(about = "Shared power budget benchmark on the simulated plant")]
struct Args {
    /// Seeds of the load traces; the first is the one the detailed table
    /// shows (the loop bench's seeds).
    #[arg(long, value_delimiter = ',', default_value = "42,7,1234,99,2026")]
    seeds: Vec<u64>,
    /// Output directory.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(!args.seeds.is_empty(), "--seeds needs at least one seed");
    // One thread per model, as the loop bench: per model, per seed, the
    // results and the headline.
    let per_model: Vec<Vec<(Vec<RackResult>, budget::Hosted)>> = std::thread::scope(|scope| {
        let runs = [MeasuredCurve::V100Opt125m, MeasuredCurve::H200Compute].map(|gpu| {
            let seeds = &args.seeds;
            scope.spawn(move || {
                seeds
                    .iter()
                    .map(|seed| {
                        let results = budget::racks(*seed, gpu)
                            .iter()
                            .flat_map(|rack| budget::run_all(rack, &RackStrategy::ALL))
                            .collect();
                        (results, budget::hosted_gpus(gpu, *seed))
                    })
                    .collect()
            })
        });
        runs.into_iter()
            .map(|run| {
                run.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    let runs: Vec<budget_report::SeedRun> = args
        .seeds
        .iter()
        .enumerate()
        .map(|(k, seed)| budget_report::SeedRun {
            seed: *seed,
            results: per_model
                .iter()
                .flat_map(|model| model[k].0.clone())
                .collect(),
            hosted: per_model.iter().map(|model| model[k].1.clone()).collect(),
        })
        .collect();
    std::fs::create_dir_all(&args.out)?;
    let json = serde_json::json!({
        "seeds": args.seeds,
        "rack_gpus": budget::BASE_GPUS,
        "budget_share_of_nameplate": budget::BUDGET_SHARE_OF_NAMEPLATE,
        "cut_share_of_nameplate": budget::CUT_SHARE_OF_NAMEPLATE,
        "probe_fraction": budget::PROBE_FRACTION,
        "high_priority_loss_percent": budget::HP_LOSS_PERCENT,
        "control_period_s": climatik_bench::closed_loop::PERIOD_S,
        "staleness_s": climatik_bench::closed_loop::STALENESS_S,
        "actuation_delay_s": climatik_bench::closed_loop::ACTUATION_S,
        "freed_slack_share": climatik_bench::budget_reaction::FREED_SLACK_SHARE,
        "kept_share_of_draw": climatik_bench::budget_reaction::KEPT_SHARE_OF_DRAW,
        "runs": runs,
        "targets": budget_report::targets(&runs),
    });
    std::fs::write(
        args.out.join("budget.json"),
        serde_json::to_vec_pretty(&json)?,
    )?;
    let table = budget_report::markdown(&runs);
    std::fs::write(args.out.join("budget.md"), &table)?;
    print!("{table}");
    Ok(())
}
