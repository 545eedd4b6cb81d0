//! The workspace's binaries, built for the test that runs them.
//!
//! Cargo builds a package's own binaries for that package's integration
//! tests (`CARGO_BIN_EXE_*`), but not another package's. A test that runs
//! the webhook, the controllers or the agent as processes therefore asks for
//! them here, and they are built into the test's own target directory: the
//! test passes from an empty build cache instead of relying on whatever an
//! earlier `cargo build` left behind.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

use crate::repo_root;

/// Builds every binary of the workspace (a no-op when they are up to date)
/// in the profile and target directory of the running test, checks that
/// each of `names` is there, and returns the directory that holds them.
///
/// The whole workspace is built, not just `names`: the same feature
/// resolution as `cargo build --workspace --bins` (the demo's and the
/// Makefile's build), so the two never rebuild each other's dependencies.
pub fn workspace_binaries(names: &[&str]) -> anyhow::Result<PathBuf> {
    // <target>/<profile>/deps/<test>-<hash>
    let exe = std::env::current_exe().context("cannot locate the running test binary")?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("the test binary is not inside a cargo target directory")?;
    let target_dir = profile_dir
        .parent()
        .context("the test binary is not inside a cargo target directory")?;
    let release = profile_dir
        .file_name()
        .is_some_and(|name| name == "release");

    // Cargo tells the processes it runs which cargo it is.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .current_dir(repo_root())
        .args(["build", "--quiet", "--workspace", "--bins", "--target-dir"])
        .arg(target_dir);
    if release {
        build.arg("--release");
    }
    let status = build
        .status()
        .context("cannot run cargo to build the workspace binaries")?;
    if !status.success() {
        bail!("`cargo build --workspace --bins` failed ({status})");
    }
    for name in names {
        if !profile_dir.join(name).is_file() {
            bail!(
                "{name} is not a binary of this workspace (not found in {} after the build)",
                profile_dir.display()
            );
        }
    }
    Ok(profile_dir.to_path_buf())
}
