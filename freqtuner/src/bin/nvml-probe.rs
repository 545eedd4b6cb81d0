//! `nvml-probe`: checks the NVML backend on a real GPU machine. Enumerates
//! the GPUs, reads clocks, power and energy, locks each GPU to a mid-range
//! supported clock, reads the clock back, and resets it; prints what
//! happened, permission errors included. Needs root for the lock/reset.
//!
//! ```sh
//! cargo run -p climatik-freqtuner --bin nvml-probe            # read-only
//! sudo target/debug/nvml-probe --lock                          # also lock/reset
//! ```

use std::{process::ExitCode, sync::Arc, time::Duration};

use climatik_freqtuner::{
    gpu::{
        GpuBackend,
        nvml::{NvmlBackend, RealDevice},
        snap_clock,
    },
    state::StateFile,
};
use nvml_wrapper::Nvml;

fn main() -> ExitCode {
    let lock = std::env::args().any(|a| a == "--lock");
    let nvml = match Nvml::init() {
        Ok(nvml) => nvml,
        Err(e) => {
            println!("NVML init failed: {e} (no NVIDIA driver or libnvidia-ml.so.1 not loadable)");
            return ExitCode::FAILURE;
        }
    };
    match nvml.sys_driver_version() {
        Ok(v) => println!("driver {v}"),
        Err(e) => println!("driver version: {e}"),
    }
    let devices = match RealDevice::all(Arc::new(nvml)) {
        Ok(d) => d,
        Err(e) => {
            println!("enumerating GPUs: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Restore state goes to a throwaway directory: the probe resets what it
    // locks before it exits.
    let state_dir = std::env::temp_dir().join(format!("nvml-probe-{}", std::process::id()));
    let mut backend = match NvmlBackend::new(devices, StateFile::new(state_dir.join("nvml.json"))) {
        Ok(b) => b,
        Err(e) => {
            println!("reading GPUs: {e}");
            return ExitCode::FAILURE;
        }
    };
    let infos = backend.devices().to_vec();
    println!("{} GPU(s)", infos.len());
    let mut failed = false;
    for info in infos {
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
        report("  SM clock (MHz)", backend.current_clock(&info.uuid));
        report("  power (W)", backend.power_watts(&info.uuid));
        report("  energy (mJ)", backend.energy_mj(&info.uuid));
        if !lock {
            continue;
        }
        let (Some(min), Some(max)) = (info.min_mhz(), info.max_mhz()) else {
            println!("  no supported clocks: cannot lock");
            continue;
        };
        let target = match snap_clock(i64::from((min + max) / 2), &info.supported_mhz) {
            Ok(s) => s.mhz,
            Err(e) => {
                println!("  snapping: {e}");
                continue;
            }
        };
        match backend.set_locked_clock(&info.uuid, target) {
            Ok(()) => {
                println!("  locked to {target} MHz");
                std::thread::sleep(Duration::from_millis(500));
                report(
                    "  SM clock after lock (MHz)",
                    backend.current_clock(&info.uuid),
                );
            }
            Err(e) => {
                failed = true;
                println!("  lock to {target} MHz failed: {e}");
            }
        }
        match backend.reset(&info.uuid) {
            Ok(()) => println!("  reset locked clocks"),
            Err(e) => {
                failed = true;
                println!("  reset failed: {e}");
            }
        }
        report(
            "  SM clock after reset (MHz)",
            backend.current_clock(&info.uuid),
        );
    }
    let _ = std::fs::remove_dir_all(&state_dir);
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn report<T: std::fmt::Debug>(what: &str, result: Result<T, climatik_freqtuner::error::Error>) {
    match result {
        Ok(v) => println!("{what}: {v:?}"),
        Err(e) => println!("{what}: {e}"),
    }
}
