//! The cpufreq backend: per-CPU `scaling_max_freq` under a configurable
//! sysfs root. Works the same for intel_pstate, amd-pstate (any value in
//! range) and acpi-cpufreq (discrete `scaling_available_frequencies`); it
//! never touches the governor, since intel_pstate has no `userspace` one and
//! a ceiling is all capping needs.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::{CpuApplied, CpuBackend, CpuLimits, khz_to_mhz, plan_ceiling};
use crate::{
    error::{Error, Result},
    state::{Salvage, StateFile, salvage_map},
};

/// Above any CPU ever built (10 GHz); a larger value means a corrupt file.
const MAX_SANE_KHZ: u64 = 10_000_000;

/// One cpufreq policy this agent changed. CPUs that share a policy
/// (`related_cpus`, one `cpufreq/policyN` behind their `cpufreq` links, as
/// acpi-cpufreq often has them) share one `scaling_max_freq`: the value
/// found before the first change is kept once for the policy, and put back
/// only when none of its CPUs is capped any more.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PolicyRecord {
    /// `scaling_max_freq` (kHz) before this agent first changed the policy.
    original_khz: u64,
    /// The CPUs capped through it.
    cpus: BTreeSet<u32>,
}

/// A record as written now, or by an agent that kept one per CPU.
#[derive(Deserialize)]
#[serde(untagged)]
enum StoredRecord {
    Policy(PolicyRecord),
    /// `"<cpu>": <kHz>`: put back through that CPU's policy.
    Cpu(u64),
}

/// The restore state: the policies changed, by name (`policy0`).
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "BTreeMap<String, StoredRecord>")]
struct CpufreqState(BTreeMap<String, PolicyRecord>);

impl CpufreqState {
    /// The records that make sense; the count of those that do not.
    fn from_stored(stored: BTreeMap<String, StoredRecord>) -> (Self, usize) {
        let mut lost = 0;
        let mut records = BTreeMap::new();
        for (name, record) in stored {
            match record {
                StoredRecord::Policy(record) => {
                    records.insert(name, record);
                }
                StoredRecord::Cpu(original_khz) => match name.parse::<u32>() {
                    Ok(cpu) => {
                        records.insert(
                            format!("cpu{cpu}"),
                            PolicyRecord {
                                original_khz,
                                cpus: BTreeSet::from([cpu]),
                            },
                        );
                    }
                    Err(_) => lost += 1,
                },
            }
        }
        (Self(records), lost)
    }
}

impl TryFrom<BTreeMap<String, StoredRecord>> for CpufreqState {
    type Error = String;

    fn try_from(stored: BTreeMap<String, StoredRecord>) -> Result<Self, String> {
        match Self::from_stored(stored) {
            (state, 0) => Ok(state),
            (_, lost) => Err(format!(
                "{lost} per-CPU record(s) not named by a CPU number"
            )),
        }
    }
}

impl Salvage for CpufreqState {
    fn salvage(value: serde_json::Value) -> (Self, usize) {
        let (stored, unreadable) = salvage_map::<StoredRecord>(value);
        let (state, lost) = Self::from_stored(stored);
        (state, unreadable + lost)
    }
}

/// Per-CPU `scaling_max_freq` control, saved and restored per policy.
pub struct Cpufreq {
    /// `<root>/devices/system/cpu`.
    cpu_root: PathBuf,
    state: StateFile,
    /// The policies changed, persisted before each first change.
    policies: CpufreqState,
    /// The ceiling (kHz) each capped CPU asked for: a shared policy holds
    /// the lowest of its CPUs'.
    wants: BTreeMap<u32, u64>,
}

impl Cpufreq {
    /// `sysfs_root` is normally `/sys`; the restore state lives in `state`.
    /// Loads what a previous agent left there, so it can be restored.
    /// Fails when there is no CPU tree under the root (sysfs not mounted)
    /// or the state cannot be read, so start-up can retry.
    pub fn new(sysfs_root: &Path, state: StateFile) -> Result<Self> {
        let cpu_root = sysfs_root.join("devices/system/cpu");
        if !cpu_root.is_dir() {
            return Err(Error::Unsupported(format!(
                "{} is not a directory: is sysfs mounted at {}?",
                cpu_root.display(),
                sysfs_root.display()
            )));
        }
        let policies = state.load()?;
        Ok(Self {
            cpu_root,
            state,
            policies,
            wants: BTreeMap::new(),
        })
    }

    fn cpu_dir(&self, cpu: u32) -> PathBuf {
        self.cpu_root.join(format!("cpu{cpu}"))
    }

    fn cpufreq_dir(&self, cpu: u32) -> PathBuf {
        // Usually a symlink to ../cpufreq/policyN; reading through it is fine.
        self.cpu_dir(cpu).join("cpufreq")
    }

    /// The name of the CPU's policy: where its `cpufreq` link points
    /// (`policy0`), or `cpuN` for a per-CPU directory (older kernels).
    fn policy_of(&self, cpu: u32) -> Result<String> {
        let link = self.cpufreq_dir(cpu);
        match fs::read_link(&link) {
            Ok(target) => target
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .ok_or_else(|| bad(&link, &target.display().to_string(), "a link to no policy")),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => Ok(format!("cpu{cpu}")),
            Err(e) => Err(Error::io("reading the link", &link, e)),
        }
    }

    /// The policy record `cpu` is capped through, if any.
    fn record_of(&self, cpu: u32) -> Option<(String, PolicyRecord)> {
        self.policies
            .0
            .iter()
            .find(|(_, r)| r.cpus.contains(&cpu))
            .map(|(name, r)| (name.clone(), r.clone()))
    }

    /// The lowest ceiling the other CPUs of `cpus` ask for.
    fn others_want(&self, cpus: &BTreeSet<u32>, cpu: u32) -> Option<u64> {
        cpus.iter()
            .filter(|c| **c != cpu)
            .filter_map(|c| self.wants.get(c).copied())
            .min()
    }

    /// Whether the CPU is online: its own `online` file when it has one
    /// (cpu0 usually does not), else the system-wide `online` range list.
    fn is_online(&self, cpu: u32) -> Result<bool> {
        let own = self.cpu_dir(cpu).join("online");
        if let Some(text) = read_optional(&own)? {
            return match text.trim() {
                "1" => Ok(true),
                "0" => Ok(false),
                other => Err(bad(&own, other, "expected 0 or 1")),
            };
        }
        let list = self.cpu_root.join("online");
        match read_optional(&list)? {
            Some(text) => {
                let ranges = parse_cpu_list(text.trim())
                    .ok_or_else(|| bad(&list, &text, "expected a CPU list such as 0-3,5"))?;
                Ok(ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&cpu)))
            }
            None => Ok(true),
        }
    }

    /// The CPU's limits, or why it cannot be capped.
    pub fn limits(&self, cpu: u32) -> Result<CpuLimits> {
        if !self.cpu_dir(cpu).is_dir() {
            return Err(Error::Unsupported(format!("no CPU {cpu} on this node")));
        }
        if !self.is_online(cpu)? {
            return Err(Error::Unsupported(format!("CPU {cpu} is offline")));
        }
        let dir = self.cpufreq_dir(cpu);
        if !dir.is_dir() {
            return Err(Error::Unsupported(format!(
                "CPU {cpu} has no cpufreq policy (no scaling driver loaded)"
            )));
        }
        let min_khz = read_khz(&dir.join("cpuinfo_min_freq"))?;
        let max_khz = read_khz(&dir.join("cpuinfo_max_freq"))?;
        if min_khz > max_khz {
            return Err(bad(
                &dir.join("cpuinfo_min_freq"),
                &min_khz.to_string(),
                "above cpuinfo_max_freq",
            ));
        }
        let available_path = dir.join("scaling_available_frequencies");
        let mut available_khz = match read_optional(&available_path)? {
            Some(text) => text
                .split_whitespace()
                .map(|v| parse_khz(&available_path, v))
                .collect::<Result<Vec<_>>>()?,
            None => Vec::new(),
        };
        available_khz.sort_unstable();
        available_khz.dedup();
        Ok(CpuLimits {
            min_khz,
            max_khz,
            available_khz,
        })
    }

    /// The ceiling now in force, in kHz.
    pub fn current_khz(&self, cpu: u32) -> Result<u64> {
        read_khz(&self.cpufreq_dir(cpu).join("scaling_max_freq"))
    }

    /// `scaling_max_freq`, if the kernel lets it be written: sysfs marks
    /// attributes without a store method 0444 (root bypasses file modes on
    /// ordinary files, so the mode is what tells).
    fn writable_ceiling(&self, cpu: u32) -> Result<PathBuf> {
        let path = self.cpufreq_dir(cpu).join("scaling_max_freq");
        let meta = fs::metadata(&path).map_err(|e| Error::io("inspecting", &path, e))?;
        if meta.permissions().readonly() {
            return Err(Error::ReadOnly(path));
        }
        Ok(path)
    }

    fn write_ceiling(&self, cpu: u32, khz: u64) -> Result<()> {
        let path = self.writable_ceiling(cpu)?;
        fs::write(&path, khz.to_string()).map_err(|e| Error::io("writing", &path, e))
    }

    /// Writes `khz` to the policy of a CPU of `cpus` that still has one
    /// (one may have gone offline since).
    fn write_policy(&self, cpus: &BTreeSet<u32>, khz: u64) -> Result<()> {
        let mut last = None;
        for &cpu in cpus {
            match self.write_ceiling(cpu, khz) {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::Unsupported("a policy record without CPUs".into())))
    }

    fn save(&self) -> Result<()> {
        self.state.store(&self.policies)
    }
}

impl CpuBackend for Cpufreq {
    fn name(&self) -> &'static str {
        "cpufreq"
    }

    fn set_max_frequency(&mut self, cpu: u32, target_mhz: u32) -> Result<CpuApplied> {
        if target_mhz == 0 {
            return Err(Error::InvalidTarget("0 MHz".into()));
        }
        let limits = self.limits(cpu)?;
        let (khz, note) = plan_ceiling(target_mhz, &limits);
        let policy = self.policy_of(cpu)?;
        let current = self.current_khz(cpu)?;
        let shared = self.policies.0.get(&policy).map(|r| r.cpus.clone());
        // The policy holds the lowest ceiling any of its CPUs asks for.
        let effective = shared
            .as_ref()
            .and_then(|cpus| self.others_want(cpus, cpu))
            .map_or(khz, |other| other.min(khz));
        match shared {
            None if current == effective => {
                // Nothing to change, nothing to remember.
                self.wants.insert(cpu, khz);
                return Ok(CpuApplied {
                    target_mhz: khz_to_mhz(khz),
                    current_mhz: khz_to_mhz(current),
                    note,
                });
            }
            None => {
                self.writable_ceiling(cpu)?;
                // Persist first: if we die right after the write, the next
                // agent still knows what to put back.
                let record = PolicyRecord {
                    original_khz: current,
                    cpus: BTreeSet::from([cpu]),
                };
                self.policies.0.insert(policy.clone(), record);
                if let Err(e) = self.save() {
                    self.policies.0.remove(&policy);
                    return Err(e);
                }
            }
            Some(cpus) if !cpus.contains(&cpu) => {
                if let Some(record) = self.policies.0.get_mut(&policy) {
                    record.cpus.insert(cpu);
                }
                self.save()?;
            }
            Some(_) => {}
        }
        self.wants.insert(cpu, khz);
        if current != effective {
            self.write_ceiling(cpu, effective)?;
        }
        let now = self.current_khz(cpu)?;
        let note = if now == khz {
            note
        } else if now == effective {
            Some(format!(
                "{policy} is shared with other CPUs, one of which is capped at {} MHz",
                khz_to_mhz(effective)
            ))
        } else {
            Some(format!(
                "wrote {} MHz but the kernel holds {} MHz (another limit is lower)",
                khz_to_mhz(effective),
                khz_to_mhz(now)
            ))
        };
        Ok(CpuApplied {
            target_mhz: khz_to_mhz(khz),
            current_mhz: khz_to_mhz(now),
            note,
        })
    }

    fn restore(&mut self, cpu: u32) -> Result<()> {
        self.wants.remove(&cpu);
        let Some((policy, record)) = self.record_of(cpu) else {
            return Ok(());
        };
        match self.others_want(&record.cpus, cpu) {
            // Other CPUs of the policy are still capped: it holds theirs.
            Some(khz) => {
                self.write_ceiling(cpu, khz)?;
                if let Some(record) = self.policies.0.get_mut(&policy) {
                    record.cpus.remove(&cpu);
                }
            }
            None => {
                self.write_policy(&record.cpus, record.original_khz)?;
                self.policies.0.remove(&policy);
            }
        }
        self.save()
    }

    fn current_mhz(&mut self, cpu: u32) -> Result<u32> {
        self.current_khz(cpu).map(khz_to_mhz)
    }

    fn touched(&self) -> Vec<u32> {
        let cpus: BTreeSet<u32> = self
            .policies
            .0
            .values()
            .flat_map(|r| r.cpus.iter().copied())
            .collect();
        cpus.into_iter().collect()
    }

    /// Once per policy: each gets back the value found before the first
    /// change, whichever of its CPUs were capped.
    fn restore_leftovers(&mut self) -> Result<Vec<u32>> {
        let mut restored = Vec::new();
        let mut first_error = None;
        let records: Vec<(String, PolicyRecord)> = self
            .policies
            .0
            .iter()
            .map(|(name, r)| (name.clone(), r.clone()))
            .collect();
        for (policy, record) in records {
            match self.write_policy(&record.cpus, record.original_khz) {
                Ok(()) => {
                    self.policies.0.remove(&policy);
                    if let Err(e) = self.save() {
                        first_error.get_or_insert(e);
                    }
                    restored.extend(record.cpus.iter().copied());
                }
                Err(e) => {
                    tracing::warn!(%policy, error = %e, "could not restore a CPU policy left capped");
                    first_error.get_or_insert(e);
                }
            }
        }
        restored.sort_unstable();
        match first_error {
            Some(e) if restored.is_empty() => Err(e),
            _ => Ok(restored),
        }
    }
}

fn bad(path: &Path, value: &str, reason: &'static str) -> Error {
    Error::BadSysfsValue {
        path: path.to_path_buf(),
        value: value.trim().to_string(),
        reason,
    }
}

fn read_optional(path: &Path) -> Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("reading", path, e)),
    }
}

fn read_khz(path: &Path) -> Result<u64> {
    let text = fs::read_to_string(path).map_err(|e| Error::io("reading", path, e))?;
    parse_khz(path, text.trim())
}

/// A frequency as sysfs writes it: a positive decimal number of kHz.
fn parse_khz(path: &Path, text: &str) -> Result<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(path, text, "expected a whole number of kHz"));
    }
    let khz: u64 = text
        .parse()
        .map_err(|_| bad(path, text, "expected a whole number of kHz"))?;
    if khz == 0 || khz > MAX_SANE_KHZ {
        return Err(bad(path, text, "outside 1 kHz ..= 10 GHz"));
    }
    Ok(khz)
}

/// `0-3,5,7-8` into inclusive ranges.
fn parse_cpu_list(text: &str) -> Option<Vec<(u32, u32)>> {
    if text.is_empty() {
        return Some(Vec::new());
    }
    text.split(',')
        .map(|part| match part.split_once('-') {
            Some((lo, hi)) => Some((lo.parse().ok()?, hi.parse().ok()?)),
            None => {
                let cpu = part.parse().ok()?;
                Some((cpu, cpu))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use climatik_test_support::fake_sysfs::{FakeCpu, FakeDriver, FakeSysfs};

    fn fake(driver: FakeDriver, cpus: &[FakeCpu]) -> (tempfile::TempDir, FakeSysfs) {
        let dir = tempfile::tempdir().expect("tempdir");
        let sysfs = FakeSysfs::create(dir.path(), &driver, cpus).expect("fake sysfs");
        (dir, sysfs)
    }

    fn backend(sysfs: &FakeSysfs, state_dir: &Path) -> Cpufreq {
        Cpufreq::new(
            sysfs.root(),
            StateFile::for_backend(state_dir, "cpufreq", "n"),
        )
        .expect("backend")
    }

    #[test]
    fn parses_cpu_lists() {
        assert_eq!(parse_cpu_list("0-3,5"), Some(vec![(0, 3), (5, 5)]));
        assert_eq!(parse_cpu_list(""), Some(vec![]));
        assert_eq!(parse_cpu_list("0-x"), None);
    }

    #[test]
    fn intel_pstate_caps_within_limits_and_restores() {
        let (_root, sysfs) = fake(FakeDriver::IntelPstate, &FakeCpu::uniform(4));
        let state = tempfile::tempdir().expect("tempdir");
        let mut cpu = backend(&sysfs, state.path());

        let applied = cpu.set_max_frequency(1, 2000).expect("set");
        assert_eq!(applied.target_mhz, 2000);
        assert_eq!(applied.current_mhz, 2000);
        assert_eq!(applied.note, None);
        assert_eq!(sysfs.scaling_max_khz(1).expect("read"), 2_000_000);
        // The governor is never switched.
        assert_eq!(sysfs.governor(1).expect("read"), "powersave");

        let low = cpu.set_max_frequency(1, 100).expect("clamped");
        assert_eq!(low.target_mhz, 400);
        assert!(low.note.is_some_and(|n| n.contains("below")));
        let high = cpu.set_max_frequency(2, 99_999).expect("clamped");
        assert_eq!(high.target_mhz, 4800);
        assert_eq!(cpu.touched(), vec![1]); // cpu2 was already at its maximum

        cpu.restore(1).expect("restore");
        assert_eq!(sysfs.scaling_max_khz(1).expect("read"), 4_800_000);
        assert!(cpu.touched().is_empty());
    }

    #[test]
    fn acpi_cpufreq_snaps_to_available_frequencies() {
        let (_root, sysfs) = fake(FakeDriver::acpi_default(), &FakeCpu::uniform(2));
        let state = tempfile::tempdir().expect("tempdir");
        let mut cpu = backend(&sysfs, state.path());
        let applied = cpu.set_max_frequency(0, 2000).expect("set");
        assert_eq!(applied.target_mhz, 1900);
        assert!(
            applied
                .note
                .is_some_and(|n| n.contains("snapped 2000 -> 1900"))
        );
        assert_eq!(sysfs.scaling_max_khz(0).expect("read"), 1_900_000);
        assert_eq!(sysfs.governor(0).expect("read"), "ondemand");
    }

    #[test]
    fn amd_pstate_accepts_any_value_in_range() {
        let (_root, sysfs) = fake(FakeDriver::AmdPstate, &FakeCpu::uniform(2));
        let state = tempfile::tempdir().expect("tempdir");
        let mut cpu = backend(&sysfs, state.path());
        assert_eq!(
            cpu.set_max_frequency(1, 1777).expect("set").target_mhz,
            1777
        );
        assert_eq!(sysfs.scaling_max_khz(1).expect("read"), 1_777_000);
    }

    #[test]
    fn offline_missing_and_read_only_cpus_are_refused() {
        let mut cpus = FakeCpu::uniform(4);
        cpus[2].online = false;
        cpus[3].read_only_max = true;
        let (_root, sysfs) = fake(FakeDriver::IntelPstate, &cpus);
        let state = tempfile::tempdir().expect("tempdir");
        let mut cpu = backend(&sysfs, state.path());

        let offline = cpu.set_max_frequency(2, 2000).expect_err("offline");
        assert!(offline.is_unsupported(), "{offline}");
        assert!(offline.to_string().contains("offline"));
        let missing = cpu.set_max_frequency(9, 2000).expect_err("missing");
        assert!(missing.to_string().contains("no CPU 9"));
        let read_only = cpu.set_max_frequency(3, 2000).expect_err("read-only");
        assert_eq!(read_only.metric_label(), "read_only");
        assert_eq!(sysfs.scaling_max_khz(3).expect("read"), 4_800_000);
        // Nothing was changed, so nothing is left to restore.
        assert_eq!(cpu.touched(), Vec::<u32>::new());
        assert!(matches!(
            cpu.set_max_frequency(0, 0),
            Err(Error::InvalidTarget(_))
        ));
    }

    #[test]
    fn offline_by_system_list_when_cpu_has_no_online_file() {
        let (_root, sysfs) = fake(FakeDriver::IntelPstate, &FakeCpu::uniform(2));
        fs::remove_file(sysfs.root().join("devices/system/cpu/cpu1/online")).expect("rm");
        sysfs
            .overwrite("devices/system/cpu/online", "0")
            .expect("write");
        let state = tempfile::tempdir().expect("tempdir");
        let mut cpu = backend(&sysfs, state.path());
        assert!(
            cpu.set_max_frequency(1, 2000)
                .is_err_and(|e| e.is_unsupported())
        );
        assert!(cpu.set_max_frequency(0, 2000).is_ok());
    }

    #[test]
    fn corrupt_sysfs_values_are_rejected() {
        let (_root, sysfs) = fake(FakeDriver::IntelPstate, &FakeCpu::uniform(3));
        let attr = |n: u32, name: &str| format!("devices/system/cpu/cpufreq/policy{n}/{name}");
        sysfs
            .overwrite(&attr(0, "cpuinfo_max_freq"), "fast")
            .expect("write");
        sysfs
            .overwrite(&attr(1, "cpuinfo_min_freq"), "9000000")
            .expect("write");
        sysfs
            .overwrite(&attr(2, "cpuinfo_max_freq"), "-1")
            .expect("write");
        let state = tempfile::tempdir().expect("tempdir");
        let mut cpu = backend(&sysfs, state.path());
        for n in 0..3 {
            let err = cpu.set_max_frequency(n, 2000).expect_err("corrupt");
            assert_eq!(err.metric_label(), "bad_sysfs_value", "cpu{n}: {err}");
        }
        assert!(cpu.touched().is_empty());
    }

    #[test]
    fn a_new_agent_restores_what_a_killed_one_left() {
        let (_root, sysfs) = fake(FakeDriver::acpi_default(), &FakeCpu::uniform(4));
        let state = tempfile::tempdir().expect("tempdir");
        {
            let mut first = backend(&sysfs, state.path());
            first.set_max_frequency(0, 1200).expect("set");
            first.set_max_frequency(3, 1200).expect("set");
            first.set_max_frequency(3, 800).expect("set again");
            // Dropped without restoring, as if killed.
        }
        assert_eq!(sysfs.scaling_max_khz(3).expect("read"), 800_000);
        let mut second = backend(&sysfs, state.path());
        assert_eq!(second.touched(), vec![0, 3]);
        assert_eq!(second.restore_leftovers().expect("restore"), vec![0, 3]);
        // The value before the *first* change, not an intermediate one.
        assert_eq!(sysfs.scaling_max_khz(0).expect("read"), 3_000_000);
        assert_eq!(sysfs.scaling_max_khz(3).expect("read"), 3_000_000);
        let third = backend(&sysfs, state.path());
        assert!(third.touched().is_empty());
    }

    /// acpi-cpufreq with CPUs 0-1 and 2-3 each sharing one policy.
    fn shared() -> (tempfile::TempDir, FakeSysfs) {
        let dir = tempfile::tempdir().expect("tempdir");
        let sysfs = FakeSysfs::create_shared(
            dir.path(),
            &FakeDriver::acpi_default(),
            &FakeCpu::uniform(4),
            2,
        )
        .expect("fake sysfs");
        (dir, sysfs)
    }

    #[test]
    fn cpus_sharing_a_policy_keep_the_lowest_cap_and_restore_its_original_once() {
        let (_root, sysfs) = shared();
        let state = tempfile::tempdir().expect("tempdir");
        let mut cpu = backend(&sysfs, state.path());
        cpu.set_max_frequency(0, 1200).expect("set");
        let second = cpu.set_max_frequency(1, 2200).expect("set");
        // The policy holds the lower cap, and says why CPU 1 is below its own.
        assert_eq!(sysfs.scaling_max_khz(1).expect("read"), 1_200_000);
        assert_eq!((second.target_mhz, second.current_mhz), (2200, 1200));
        assert!(second.note.is_some_and(|n| n.contains("policy0 is shared")));

        // CPU 0's entry goes: CPU 1's cap is what the policy holds now.
        cpu.restore(0).expect("restore");
        assert_eq!(sysfs.scaling_max_khz(1).expect("read"), 2_200_000);
        assert_eq!(cpu.touched(), vec![1]);
        // The last one goes: the value before the first change, not 1200.
        cpu.restore(1).expect("restore");
        assert_eq!(sysfs.scaling_max_khz(0).expect("read"), 3_000_000);
        assert!(cpu.touched().is_empty());
        assert_eq!(sysfs.scaling_max_khz(2).expect("read"), 3_000_000);
    }

    #[test]
    fn a_new_agent_restores_each_shared_policy_to_its_original() {
        let (_root, sysfs) = shared();
        let state = tempfile::tempdir().expect("tempdir");
        {
            let mut first = backend(&sysfs, state.path());
            first.set_max_frequency(0, 1200).expect("set");
            first.set_max_frequency(1, 800).expect("set");
            first.set_max_frequency(3, 1500).expect("set");
            // Killed.
        }
        let saved = fs::read_to_string(StateFile::for_backend(state.path(), "cpufreq", "n").path())
            .expect("state");
        let saved: serde_json::Value = serde_json::from_str(&saved).expect("json");
        assert_eq!(
            saved,
            serde_json::json!({
                "policy0": {"original_khz": 3_000_000, "cpus": [0, 1]},
                "policy2": {"original_khz": 3_000_000, "cpus": [3]},
            })
        );
        let mut second = backend(&sysfs, state.path());
        assert_eq!(second.restore_leftovers().expect("restore"), vec![0, 1, 3]);
        for n in 0..4 {
            assert_eq!(sysfs.scaling_max_khz(n).expect("read"), 3_000_000, "cpu{n}");
        }
        assert!(backend(&sysfs, state.path()).touched().is_empty());
    }

    #[test]
    fn a_state_of_per_cpu_records_is_still_restored() {
        let (_root, sysfs) = fake(FakeDriver::acpi_default(), &FakeCpu::uniform(2));
        let state = tempfile::tempdir().expect("tempdir");
        let file = StateFile::for_backend(state.path(), "cpufreq", "n");
        sysfs
            .overwrite(
                "devices/system/cpu/cpufreq/policy1/scaling_max_freq",
                "800000",
            )
            .expect("write");
        fs::write(file.path(), r#"{"1": 2600000}"#).expect("write");
        let mut cpu = backend(&sysfs, state.path());
        assert_eq!(cpu.restore_leftovers().expect("restore"), vec![1]);
        assert_eq!(sysfs.scaling_max_khz(1).expect("read"), 2_600_000);
    }

    #[test]
    fn a_corrupt_state_restores_the_records_that_parse() {
        let (_root, sysfs) = fake(FakeDriver::acpi_default(), &FakeCpu::uniform(3));
        let state = tempfile::tempdir().expect("tempdir");
        let file = StateFile::for_backend(state.path(), "cpufreq", "n");
        for n in [0, 2] {
            sysfs
                .overwrite(
                    &format!("devices/system/cpu/cpufreq/policy{n}/scaling_max_freq"),
                    "800000",
                )
                .expect("write");
        }
        fs::write(
            file.path(),
            r#"{"policy0": {"original_khz": 2600000, "cpus": [0]},
                "policy1": {"original_khz": "oops"},
                "policy2": {"original_khz": 2200000, "cpus": [2]}}"#,
        )
        .expect("write");
        let mut cpu = backend(&sysfs, state.path());
        assert_eq!(cpu.restore_leftovers().expect("restore"), vec![0, 2]);
        assert_eq!(sysfs.scaling_max_khz(0).expect("read"), 2_600_000);
        assert_eq!(sysfs.scaling_max_khz(2).expect("read"), 2_200_000);
        assert_eq!(crate::state::tests::corrupt_files(state.path()).len(), 1);
    }

    #[test]
    fn a_missing_cpu_tree_fails_to_open() {
        let root = tempfile::tempdir().expect("tempdir");
        let state = tempfile::tempdir().expect("tempdir");
        let err = Cpufreq::new(
            &root.path().join("absent"),
            StateFile::for_backend(state.path(), "cpufreq", "n"),
        )
        .err()
        .expect("no sysfs");
        assert!(err.to_string().contains("is sysfs mounted"), "{err}");
    }
}
