//! `nvml-probe`: checks the NVML backend on a real GPU machine, through the
//! same `Actuator` the agent uses (no API server needed).
//!
//! ```sh
//! nvml-probe info                      # enumerate; read clocks, power, energy
//! sudo nvml-probe lock                 # lock each GPU to a mid clock, read back, reset
//! sudo nvml-probe sweep --out s.jsonl  # hold a series of clocks, sample power
//! sudo nvml-probe budget --watts 450,300 --out b.jsonl   # the ~1 Hz budget loop
//! sudo nvml-probe crash --state-dir D  # lock, then abort without resetting
//! sudo nvml-probe restore --state-dir D  # what the agent does at start-up
//! ```
//!
//! Every subcommand that changes a GPU puts it back before it returns
//! (except `crash`, on purpose), and exits non-zero when a write failed.

use std::{
    fs::File,
    io::{BufWriter, Write},
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use clap::{Parser, Subcommand};
use climatik_api::{GpuFrequency, NodeFrequenciesSpec};
use climatik_freqtuner::{
    actuator::{Actuator, Report},
    error::Error,
    expiry::DEFAULT_MAX_ENTRY_TTL,
    gpu::{GpuBackend, GpuInfo, nvml::open_real},
    metrics::Metrics,
    state::StateFile,
};
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

#[derive(Debug, Parser)]
#[command(name = "nvml-probe", about = "Check the NVML backend on a GPU node")]
struct Cli {
    /// Where the restore state is kept (default: a fresh temporary folder).
    #[arg(long, global = true)]
    state_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Enumerate the GPUs and read clocks, power and energy (read-only).
    Info,
    /// Lock each GPU to a mid-range clock, read it back, reset.
    Lock,
    /// Hold each of `steps` clocks across the supported range for `hold`
    /// seconds and sample clock and power every `sample_ms`.
    Sweep {
        #[arg(long, default_value_t = 8)]
        steps: usize,
        #[arg(long, default_value_t = 4.0)]
        hold: f64,
        #[arg(long, default_value_t = 200)]
        sample_ms: u64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Run the agent's power-budget loop: one phase per budget (W), each
    /// `phase` seconds, stepping once per `interval_ms`.
    Budget {
        #[arg(long, value_delimiter = ',', required = true)]
        watts: Vec<f64>,
        #[arg(long, default_value_t = 25.0)]
        phase: f64,
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        #[arg(long, default_value_t = 200)]
        sample_ms: u64,
        /// Also set the GPU's own power limit to the budget.
        #[arg(long)]
        power_limit_mode: bool,
        #[arg(long)]
        out: PathBuf,
    },
    /// Lock every GPU to a mid clock, then abort without resetting, as a
    /// killed agent would.
    Crash,
    /// Restore what a killed predecessor left (the agent's start-up step).
    Restore,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let temporary = cli.state_dir.is_none();
    let state_dir = cli
        .state_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("nvml-probe-{}", std::process::id())));
    let backend = match open_real(StateFile::new(state_dir.join("nvml.json"))) {
        Ok(b) => b,
        Err(e) => {
            println!("opening NVML: {e}");
            return ExitCode::FAILURE;
        }
    };
    let gpus = backend.devices().to_vec();
    let mut probe = Probe {
        actuator: Actuator::new(
            Some(Box::new(backend)),
            None,
            matches!(
                cli.command,
                Some(Command::Budget {
                    power_limit_mode: true,
                    ..
                })
            ),
            Arc::new(Metrics::default()),
        ),
        gpus,
    };
    let ok = match cli.command.unwrap_or(Command::Info) {
        Command::Info => probe.info(),
        Command::Lock => probe.lock(),
        Command::Sweep {
            steps,
            hold,
            sample_ms,
            out,
        } => probe.sweep(steps, hold, Duration::from_millis(sample_ms), &out),
        Command::Budget {
            watts,
            phase,
            interval_ms,
            sample_ms,
            out,
            ..
        } => probe.budget(
            &watts,
            phase,
            Duration::from_millis(interval_ms),
            Duration::from_millis(sample_ms),
            &out,
        ),
        Command::Crash => probe.crash(),
        Command::Restore => probe.restore(),
    };
    if temporary {
        let _ = std::fs::remove_dir_all(&state_dir);
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// JSON lines of samples, timed from the file's creation.
struct Recording {
    out: BufWriter<File>,
    start: Instant,
    every: Duration,
}

impl Recording {
    fn create(path: &Path, every: Duration) -> Option<Self> {
        match File::create(path) {
            Ok(file) => Some(Self {
                out: BufWriter::new(file),
                start: Instant::now(),
                every,
            }),
            Err(e) => {
                println!("cannot write {}: {e}", path.display());
                None
            }
        }
    }
}

struct Probe {
    actuator: Actuator,
    gpus: Vec<GpuInfo>,
}

/// A spec that gives every GPU the same entry, expiring as late as the
/// agent's default lifetime cap allows (longer than any probe phase).
fn spec_for(gpus: &[GpuInfo], mhz: u32, budget: Option<f64>) -> NodeFrequenciesSpec {
    let expires_at = Time(Timestamp::now() + DEFAULT_MAX_ENTRY_TTL);
    NodeFrequenciesSpec {
        node_name: "probe".to_string(),
        gpu_frequencies: gpus
            .iter()
            .map(|g| GpuFrequency {
                gpu_id: g.uuid.clone(),
                target_frequency: i32::try_from(mhz).unwrap_or(i32::MAX),
                power_budget_watts: budget,
                budget_group: None,
                policy: "probe/nvml".to_string(),
                expires_at: expires_at.clone(),
                kept_by_lease: false,
            })
            .collect(),
        cpu_frequencies: Vec::new(),
    }
}

fn print_report(report: &Report) -> bool {
    for g in &report.gpus {
        println!(
            "  {} state {:?} target {:?} current {:?} budget {:?} power {:?}: {}",
            g.gpu_id,
            g.state,
            g.target_frequency,
            g.current_frequency,
            g.power_budget_watts,
            g.power_watts,
            g.message
        );
    }
    report.failures() == 0
}

fn show<T: std::fmt::Debug>(what: &str, result: Result<T, Error>) {
    match result {
        Ok(v) => println!("{what}: {v:?}"),
        Err(e) => println!("{what}: {e}"),
    }
}

fn mid_clock(info: &GpuInfo) -> Option<u32> {
    let (min, max) = (info.min_mhz()?, info.max_mhz()?);
    let half = (min + max) / 2;
    info.supported_mhz
        .iter()
        .copied()
        .filter(|c| *c <= half)
        .max()
}

impl Probe {
    /// A read through the GPU backend the actuator owns.
    fn read<T>(
        &mut self,
        f: impl FnOnce(&mut dyn GpuBackend) -> Result<T, Error>,
    ) -> Result<T, Error> {
        match self.actuator.gpu_backend() {
            Some(backend) => f(backend),
            None => Err(Error::Unsupported("no GPU backend".to_string())),
        }
    }

    fn info(&mut self) -> bool {
        println!("{} GPU(s)", self.gpus.len());
        for info in self.gpus.clone() {
            println!(
                "GPU {} {} {} pci {}: {} supported SM clocks {:?}..{:?} MHz, power limits {:?}",
                info.index,
                info.uuid,
                info.model,
                info.pci_bus_id,
                info.supported_mhz.len(),
                info.min_mhz(),
                info.max_mhz(),
                info.power_limits
            );
            println!("  supported: {:?}", info.supported_mhz);
            show(
                "  SM clock (MHz)",
                self.read(|b| b.current_clock(&info.uuid)),
            );
            show("  power (W)", self.read(|b| b.power_watts(&info.uuid)));
            show("  energy (mJ)", self.read(|b| b.energy_mj(&info.uuid)));
        }
        !self.gpus.is_empty()
    }

    fn lock(&mut self) -> bool {
        let Some(target) = self.gpus.first().and_then(mid_clock) else {
            println!("no supported clocks: cannot lock");
            return false;
        };
        println!("locking to {target} MHz");
        let spec = spec_for(&self.gpus, target, None);
        let locked = print_report(
            &self
                .actuator
                .reconcile(Some(&spec), Timestamp::now(), false),
        );
        std::thread::sleep(Duration::from_millis(500));
        for info in self.gpus.clone() {
            show(
                "  SM clock after lock (MHz)",
                self.read(|b| b.current_clock(&info.uuid)),
            );
        }
        println!("restoring defaults");
        let restored = self.actuator.restore_all() == 0;
        for info in self.gpus.clone() {
            show(
                "  SM clock after reset (MHz)",
                self.read(|b| b.current_clock(&info.uuid)),
            );
        }
        locked && restored
    }

    /// Samples every GPU into `rec` every `rec.every` for `length`,
    /// calling `tick` before each sample (the budget loop steps there).
    fn record(
        &mut self,
        rec: &mut Recording,
        phase: &serde_json::Value,
        length: Duration,
        mut tick: impl FnMut(&mut Self),
    ) {
        let until = Instant::now() + length;
        while Instant::now() < until {
            tick(self);
            for info in self.gpus.clone() {
                let uuid = info.uuid.as_str();
                let line = serde_json::json!({
                    "t": rec.start.elapsed().as_secs_f64(),
                    "unix": std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs_f64())
                        .unwrap_or_default(),
                    "gpu": uuid,
                    "phase": phase,
                    "sm_mhz": self.read(|b| b.current_clock(uuid)).ok(),
                    "power_w": self.read(|b| b.power_watts(uuid)).ok(),
                    "energy_mj": self.read(|b| b.energy_mj(uuid)).ok(),
                });
                let _ = writeln!(rec.out, "{line}");
            }
            std::thread::sleep(rec.every);
        }
    }

    fn sweep(&mut self, steps: usize, hold: f64, every: Duration, out: &Path) -> bool {
        let Some(info) = self.gpus.first().cloned() else {
            return false;
        };
        let Some(mut rec) = Recording::create(out, every) else {
            return false;
        };
        let hold = Duration::from_secs_f64(hold);
        let supported = &info.supported_mhz;
        let steps = steps.clamp(2, supported.len().max(2));
        let mut clocks: Vec<u32> = (0..steps)
            .filter_map(|i| {
                supported
                    .get(i * (supported.len() - 1) / (steps - 1))
                    .copied()
            })
            .collect();
        clocks.dedup();
        clocks.reverse();
        let mut ok = true;
        for mhz in clocks {
            let spec = spec_for(&self.gpus, mhz, None);
            let report = self
                .actuator
                .reconcile(Some(&spec), Timestamp::now(), false);
            ok &= print_report(&report);
            self.record(
                &mut rec,
                &serde_json::json!({"locked_mhz": mhz}),
                hold,
                |_| {},
            );
        }
        ok &= self.actuator.restore_all() == 0;
        self.record(
            &mut rec,
            &serde_json::json!({"locked_mhz": null}),
            hold,
            |_| {},
        );
        let _ = rec.out.flush();
        ok
    }

    fn budget(
        &mut self,
        budgets: &[f64],
        phase_secs: f64,
        interval: Duration,
        every: Duration,
        out: &Path,
    ) -> bool {
        let Some(ceiling) = self.gpus.first().and_then(|g| g.max_mhz()) else {
            return false;
        };
        let Some(mut rec) = Recording::create(out, every) else {
            return false;
        };
        let mut ok = true;
        for &watts in budgets {
            println!("budget {watts} W for {phase_secs} s");
            let spec = spec_for(&self.gpus, ceiling, Some(watts));
            let mut next_step = Instant::now();
            let mut last = Report::default();
            self.record(
                &mut rec,
                &serde_json::json!({"budget_w": watts}),
                Duration::from_secs_f64(phase_secs),
                |probe| {
                    if Instant::now() >= next_step {
                        last = probe
                            .actuator
                            .reconcile(Some(&spec), Timestamp::now(), true);
                        ok &= last.failures() == 0;
                        next_step += interval;
                    }
                },
            );
            print_report(&last);
        }
        ok &= self.actuator.restore_all() == 0;
        self.record(
            &mut rec,
            &serde_json::json!({"budget_w": null}),
            Duration::from_secs(3),
            |_| {},
        );
        let _ = rec.out.flush();
        ok
    }

    fn crash(&mut self) -> bool {
        let Some(target) = self.gpus.first().and_then(mid_clock) else {
            return false;
        };
        let spec = spec_for(&self.gpus, target, None);
        if !print_report(
            &self
                .actuator
                .reconcile(Some(&spec), Timestamp::now(), false),
        ) {
            return false;
        }
        println!("locked to {target} MHz; aborting without a reset");
        std::process::abort();
    }

    fn restore(&mut self) -> bool {
        let restored = self.actuator.restore_leftovers();
        println!("restored {restored} GPU(s) left by a killed predecessor");
        for info in self.gpus.clone() {
            show(
                "  SM clock after restore (MHz)",
                self.read(|b| b.current_clock(&info.uuid)),
            );
        }
        restored > 0
    }
}
