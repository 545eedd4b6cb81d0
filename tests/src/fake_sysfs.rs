//! A fake sysfs CPU tree laid out as the kernel lays it out, for tests and
//! local demos of the cpufreq backend: `devices/system/cpu/{online,possible,
//! present}`, `cpuN/online` (not for cpu0, as on x86), `cpufreq/policyN/`
//! with `cpuN/cpufreq` a symlink to it (absent while the CPU is offline),
//! values in kHz, read-only attributes 0444 and writable ones 0644. CPUs
//! may share a policy ([`FakeSysfs::create_shared`]), as acpi-cpufreq's
//! often do: their links point at one `policyN` that lists them all in
//! `related_cpus` / `affected_cpus`.

use std::{
    fs, io,
    os::unix::fs::{PermissionsExt, symlink},
    path::{Path, PathBuf},
};

/// Which scaling driver the tree imitates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FakeDriver {
    /// intel_pstate (active mode): 400–4800 MHz, governor `powersave`.
    IntelPstate,
    /// amd-pstate: 400–3700 MHz, governor `schedutil`.
    AmdPstate,
    /// acpi-cpufreq: discrete frequencies (kHz, descending as the kernel
    /// prints them), governor `ondemand`.
    AcpiCpufreq { available_khz: Vec<u64> },
}

impl FakeDriver {
    /// acpi-cpufreq with 800–3000 MHz in seven P-states.
    pub fn acpi_default() -> Self {
        FakeDriver::AcpiCpufreq {
            available_khz: vec![
                3_000_000, 2_600_000, 2_200_000, 1_900_000, 1_500_000, 1_200_000, 800_000,
            ],
        }
    }

    fn name(&self) -> &'static str {
        match self {
            FakeDriver::IntelPstate => "intel_pstate",
            FakeDriver::AmdPstate => "amd-pstate",
            FakeDriver::AcpiCpufreq { .. } => "acpi-cpufreq",
        }
    }

    fn governor(&self) -> &'static str {
        match self {
            FakeDriver::IntelPstate => "powersave",
            FakeDriver::AmdPstate => "schedutil",
            FakeDriver::AcpiCpufreq { .. } => "ondemand",
        }
    }

    /// `(cpuinfo_min_freq, cpuinfo_max_freq)` in kHz.
    pub fn limits_khz(&self) -> (u64, u64) {
        match self {
            FakeDriver::IntelPstate => (400_000, 4_800_000),
            FakeDriver::AmdPstate => (400_000, 3_700_000),
            FakeDriver::AcpiCpufreq { available_khz } => (
                available_khz.iter().copied().min().unwrap_or(800_000),
                available_khz.iter().copied().max().unwrap_or(3_000_000),
            ),
        }
    }
}

/// One logical CPU of the fake tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeCpu {
    pub online: bool,
    /// Make `scaling_max_freq` 0444, as on a driver without a store method.
    pub read_only_max: bool,
}

impl FakeCpu {
    /// `n` online, writable CPUs.
    pub fn uniform(n: usize) -> Vec<FakeCpu> {
        vec![
            FakeCpu {
                online: true,
                read_only_max: false,
            };
            n
        ]
    }
}

/// A fake tree written under a directory the caller owns.
#[derive(Debug, Clone)]
pub struct FakeSysfs {
    root: PathBuf,
    /// The policy of each CPU, by CPU number.
    policies: Vec<usize>,
}

impl FakeSysfs {
    /// Writes the tree under `root` (which plays `/sys`), one policy per CPU.
    pub fn create(root: &Path, driver: &FakeDriver, cpus: &[FakeCpu]) -> io::Result<Self> {
        Self::create_shared(root, driver, cpus, 1)
    }

    /// As [`Self::create`], with `per_policy` consecutive CPUs sharing
    /// each policy (`policy0` for CPUs 0..per_policy, and so on; a policy
    /// is named after its first CPU, as the kernel names them).
    pub fn create_shared(
        root: &Path,
        driver: &FakeDriver,
        cpus: &[FakeCpu],
        per_policy: usize,
    ) -> io::Result<Self> {
        let per_policy = per_policy.max(1);
        let policies: Vec<usize> = (0..cpus.len()).map(|i| i - i % per_policy).collect();
        let cpu_root = root.join("devices/system/cpu");
        fs::create_dir_all(cpu_root.join("cpufreq"))?;
        let last = cpus.len().saturating_sub(1);
        let all = if cpus.is_empty() {
            String::new()
        } else {
            format!("0-{last}")
        };
        let online: Vec<String> = cpus
            .iter()
            .enumerate()
            .filter(|(_, c)| c.online)
            .map(|(i, _)| i.to_string())
            .collect();
        write_attr(&cpu_root.join("possible"), &all, false)?;
        write_attr(&cpu_root.join("present"), &all, false)?;
        write_attr(&cpu_root.join("online"), &online.join(","), false)?;

        let (min, max) = driver.limits_khz();
        for (i, cpu) in cpus.iter().enumerate() {
            let dir = cpu_root.join(format!("cpu{i}"));
            fs::create_dir_all(&dir)?;
            if i != 0 {
                write_attr(
                    &dir.join("online"),
                    if cpu.online { "1" } else { "0" },
                    true,
                )?;
            }
            let first = policies[i];
            if first != i {
                // The policy is written with its first CPU.
                if cpu.online {
                    symlink(format!("../cpufreq/policy{first}"), dir.join("cpufreq"))?;
                }
                continue;
            }
            let members: Vec<String> = (first..cpus.len().min(first + per_policy))
                .map(|c| c.to_string())
                .collect();
            let affected: Vec<String> = (first..cpus.len().min(first + per_policy))
                .filter(|c| cpus[*c].online)
                .map(|c| c.to_string())
                .collect();
            let policy = cpu_root.join(format!("cpufreq/policy{i}"));
            fs::create_dir_all(&policy)?;
            let ro = |name: &str, value: &str| write_attr(&policy.join(name), value, false);
            let rw = |name: &str, value: &str| write_attr(&policy.join(name), value, true);
            ro("cpuinfo_min_freq", &min.to_string())?;
            ro("cpuinfo_max_freq", &max.to_string())?;
            ro("cpuinfo_transition_latency", "0")?;
            ro("scaling_driver", driver.name())?;
            ro("affected_cpus", &affected.join(" "))?;
            ro("related_cpus", &members.join(" "))?;
            ro("scaling_cur_freq", &max.to_string())?;
            rw("scaling_min_freq", &min.to_string())?;
            rw("scaling_governor", driver.governor())?;
            write_attr(
                &policy.join("scaling_max_freq"),
                &max.to_string(),
                !cpu.read_only_max,
            )?;
            match driver {
                FakeDriver::AcpiCpufreq { available_khz } => {
                    let list: Vec<String> = available_khz.iter().map(u64::to_string).collect();
                    // The kernel prints a trailing space.
                    ro(
                        "scaling_available_frequencies",
                        &format!("{} ", list.join(" ")),
                    )?;
                    ro(
                        "scaling_available_governors",
                        "conservative ondemand userspace powersave performance schedutil",
                    )?;
                }
                FakeDriver::IntelPstate => {
                    ro("scaling_available_governors", "performance powersave")?;
                    ro("base_frequency", &(max / 2).to_string())?;
                    rw("energy_performance_preference", "balance_performance")?;
                }
                FakeDriver::AmdPstate => {
                    ro(
                        "scaling_available_governors",
                        "performance powersave schedutil",
                    )?;
                    ro("amd_pstate_max_freq", &max.to_string())?;
                }
            }
            if cpu.online {
                symlink(format!("../cpufreq/policy{i}"), dir.join("cpufreq"))?;
            }
        }
        Ok(Self {
            root: root.to_path_buf(),
            policies,
        })
    }

    /// The directory playing `/sys`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn policy(&self, cpu: u32) -> PathBuf {
        let first = usize::try_from(cpu)
            .ok()
            .and_then(|c| self.policies.get(c).copied())
            .map_or(cpu, |p| u32::try_from(p).unwrap_or(cpu));
        self.root
            .join(format!("devices/system/cpu/cpufreq/policy{first}"))
    }

    /// `scaling_max_freq` of a CPU, in kHz.
    pub fn scaling_max_khz(&self, cpu: u32) -> io::Result<u64> {
        let text = fs::read_to_string(self.policy(cpu).join("scaling_max_freq"))?;
        text.trim()
            .parse()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// Replaces the content of a file (path relative to the root), keeping
    /// its mode: to plant corrupt values or take a CPU offline.
    pub fn overwrite(&self, relative: &str, value: &str) -> io::Result<()> {
        let path = self.root.join(relative);
        let mode = fs::metadata(&path)?.permissions().mode();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644))?;
        fs::write(&path, format!("{value}\n"))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))
    }

    /// `scaling_governor` of a CPU.
    pub fn governor(&self, cpu: u32) -> io::Result<String> {
        Ok(
            fs::read_to_string(self.policy(cpu).join("scaling_governor"))?
                .trim()
                .to_string(),
        )
    }
}

fn write_attr(path: &Path, value: &str, writable: bool) -> io::Result<()> {
    fs::write(path, format!("{value}\n"))?;
    let mode = if writable { 0o644 } else { 0o444 };
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}
