//! `make bench` (loop part): every scenario under every strategy on each
//! simulated GPU model, for several seeds, each strategy also measured
//! against the clairvoyant bound; writes `target/bench/loop.json` and
//! `loop.md`. With `--trace FILE.csv`, the same on a user's own load trace
//! instead (`loop-trace.json`, `loop-trace.md`).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use climatik_bench::{
    bound::{Clairvoyant, RESOLUTION_WATTS},
    closed_loop::{self as bench, RunResult},
    report, trace,
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
    /// Replay this load trace (CSV: second,gpu,utilisation[,policy][,node])
    /// instead of the scenarios.
    #[arg(long)]
    trace: Option<PathBuf>,
    /// GPU model the trace runs on.
    #[arg(long, value_enum, default_value_t = Gpu::H200, requires = "trace")]
    gpu: Gpu,
    /// Cap of each of the trace's policies, in watts (default: half its
    /// GPUs' peak power).
    #[arg(long, requires = "trace")]
    cap: Option<f64>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Gpu {
    H200,
    V100,
}

impl From<Gpu> for MeasuredCurve {
    fn from(gpu: Gpu) -> Self {
        match gpu {
            Gpu::H200 => MeasuredCurve::H200Compute,
            Gpu::V100 => MeasuredCurve::V100Opt125m,
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(file) = &args.trace {
        return replay(file, args.gpu.into(), args.cap, &args.out);
    }
    anyhow::ensure!(!args.seeds.is_empty(), "--seeds needs at least one seed");
    let strategies = bench::strategies();
    // One thread per model (the bound dominates the run time and its
    // solved seconds are per model anyway): per model, per seed, results.
    let per_model: Vec<Vec<Vec<RunResult>>> = std::thread::scope(|scope| {
        let runs = [MeasuredCurve::V100Opt125m, MeasuredCurve::H200Compute].map(|gpu| {
            let (seeds, strategies) = (&args.seeds, &strategies);
            scope.spawn(move || {
                let mut bound = Clairvoyant::default();
                seeds
                    .iter()
                    .map(|seed| {
                        bench::scenarios(*seed, gpu)
                            .iter()
                            .flat_map(|scenario| bench::run_all(scenario, strategies, &mut bound))
                            .collect()
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
    let runs: Vec<report::SeedRun> = args
        .seeds
        .iter()
        .enumerate()
        .map(|(k, seed)| report::SeedRun {
            seed: *seed,
            results: per_model
                .iter()
                .flat_map(|model| model[k].clone())
                .collect(),
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

/// Every strategy and the bound on the trace in `file`.
fn replay(file: &Path, gpu: MeasuredCurve, cap: Option<f64>, out: &Path) -> anyhow::Result<()> {
    if let Some(cap) = cap {
        anyhow::ensure!(
            cap.is_finite() && cap > 0.0,
            "--cap must be a positive number of watts"
        );
    }
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let parsed =
        trace::parse(&text).with_context(|| format!("{} is not a load trace", file.display()))?;
    let name = file
        .file_name()
        .map_or_else(|| "trace".into(), |n| n.to_string_lossy().into_owned());
    let scenario = bench::from_trace(&name, &parsed, gpu, cap);
    let results = bench::run_all(&scenario, &bench::strategies(), &mut Clairvoyant::default());
    std::fs::create_dir_all(out)?;
    let json = serde_json::json!({
        "trace": name,
        "first_second": parsed.first_second,
        "seconds": parsed.seconds,
        "gpus": parsed.gpus.len(),
        "caps_watts": scenario
            .policies
            .iter()
            .map(|p| (p.name.clone(), p.cap.first().copied().unwrap_or_default()))
            .collect::<std::collections::BTreeMap<_, _>>(),
        "control_period_s": bench::PERIOD_S,
        "staleness_s": bench::STALENESS_S,
        "actuation_delay_s": bench::ACTUATION_S,
        "bound_resolution_watts": RESOLUTION_WATTS,
        "results": results,
    });
    std::fs::write(
        out.join("loop-trace.json"),
        serde_json::to_vec_pretty(&json)?,
    )?;
    let table = report::markdown(&results);
    std::fs::write(out.join("loop-trace.md"), &table)?;
    print!("{table}");
    Ok(())
}
