//! `sim-workload`: the stand-in for a GPU workload on a simulated cluster.
//! Run in a pod that requests `nvidia.com/gpu` from the sim device plugin,
//! it prints one line naming the GPUs it was given (`NVIDIA_VISIBLE_DEVICES`,
//! set by the plugin's Allocate) and its pod, then idles until SIGTERM or
//! SIGINT and exits 0 at once. Its load is simulated by the node agent, from
//! the pod's `climatik.io/sim-load` annotation.

use std::{env, io::Write, process::ExitCode};

use tokio::signal::unix::{SignalKind, signal};

/// The pod's name: `POD_NAME` (downward API) if set, else the hostname a
/// pod gets by default.
fn pod_name() -> Option<String> {
    ["POD_NAME", "HOSTNAME"]
        .iter()
        .find_map(|k| env::var(k).ok().filter(|v| !v.is_empty()))
}

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sim-workload: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run())
}

async fn run() -> ExitCode {
    // Handlers first, so a signal sent right after the line is seen is
    // handled (as PID 1 in a container, an unhandled SIGTERM is ignored).
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("sim-workload: cannot handle signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let gpus = env::var("NVIDIA_VISIBLE_DEVICES")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "none".into());
    let pod = pod_name().unwrap_or_else(|| "unknown".into());
    let namespace = env::var("POD_NAMESPACE").ok().filter(|v| !v.is_empty());
    let pod = match namespace {
        Some(ns) => format!("{ns}/{pod}"),
        None => pod,
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "sim-workload: pod={pod} gpus={gpus}");
    let _ = out.flush();
    drop(out);

    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    ExitCode::SUCCESS
}
