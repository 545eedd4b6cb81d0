//! Memory and CPU of processes, from `/proc`, once a second.

use super::*;

#[derive(Debug, Clone)]
pub struct Window {
    pub start: f64,
    pub end: f64,
}

#[derive(Debug, Clone)]
pub struct Sample {
    pub t: f64,
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub cpu_ticks: u64,
}

#[derive(Default)]
pub struct Samples {
    pub names: Vec<(String, u32)>,
    pub by_name: HashMap<String, Vec<Sample>>,
}

pub struct Sampler {
    samples: Arc<Mutex<Samples>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    /// Starts sampling now; sample times are seconds since this call.
    pub fn start(names: Vec<(String, u32)>) -> Self {
        let samples = Arc::new(Mutex::new(Samples {
            names: names.clone(),
            by_name: HashMap::new(),
        }));
        let shared = samples.clone();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let t = started.elapsed().as_secs_f64();
                for (name, pid) in &names {
                    if let Some(sample) = read(*pid, t)
                        && let Ok(mut s) = shared.lock()
                    {
                        s.by_name.entry(name.clone()).or_default().push(sample);
                    }
                }
            }
        });
        Self { samples, task }
    }

    pub async fn finish(self) -> Samples {
        self.task.abort();
        let _ = self.task.await;
        match Arc::try_unwrap(self.samples) {
            Ok(m) => m.into_inner().unwrap_or_else(|e| e.into_inner()),
            Err(shared) => {
                let s = shared.lock().unwrap_or_else(|e| e.into_inner());
                Samples {
                    names: s.names.clone(),
                    by_name: s.by_name.clone(),
                }
            }
        }
    }
}

fn read(pid: u32, t: f64) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces): state is
    // field 3, utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
    Some(Sample {
        t,
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
        cpu_ticks: ticks(11)? + ticks(12)?,
    })
}

/// This process's nice value (the controllers and the cluster inherit
/// the script's): field 19 of `/proc/self/stat`.
pub fn own_nice() -> Option<i64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(16)?.parse().ok()
}

pub fn summary(samples: &Samples, name: &str, window: &Window) -> Value {
    let Some(all) = samples.by_name.get(name) else {
        return json!({ "error": "no samples" });
    };
    let inside: Vec<&Sample> = all
        .iter()
        .filter(|s| s.t >= window.start && s.t <= window.end)
        .collect();
    let mut rss: Vec<f64> = inside.iter().map(|s| s.rss_kib as f64).collect();
    rss.sort_by(f64::total_cmp);
    let cpu = match (inside.first(), inside.last()) {
        (Some(a), Some(b)) if b.t > a.t => {
            Some(b.cpu_ticks.saturating_sub(a.cpu_ticks) as f64 / TICKS_PER_SECOND / (b.t - a.t))
        }
        _ => None,
    };
    let mib = |kib: f64| (kib / 1024.0 * 10.0).round() / 10.0;
    json!({
        "peak_rss_mib": all.iter().map(|s| s.hwm_kib).max().map(|k| mib(k as f64)),
        "steady_rss_mib": percentile(&rss, 0.5).map(mib),
        "window_max_rss_mib": rss.last().copied().map(mib),
        "window_cpu_cores": cpu.map(round3),
        "samples": all.len(),
    })
}
