//! `cargo install --path agent`, checked the way a user runs it: into a fresh root outside the
//! workspace, then the installed binary is run. The README tells users to install it this way, so
//! `cargo xtask test` proves it works (a path dependency outside the package, a build script that
//! needs the workspace, or a missing `[[bin]]` would break it) and hands the installed binary to
//! tests/tests/cli_install.rs.

use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context, Result};

use crate::{build, cmd};

/// Installs the agent into `target/install-check` (the workspace's `target/` as cargo's build
/// directory and the debug profile, so the build `test` already made is reused) and returns the
/// installed binary after running its `--version`.
pub(crate) fn check(built: &build::Built) -> Result<PathBuf> {
    let root = cmd::workspace_root();
    let install_root = root.join("target/install-check");
    if install_root.exists() {
        std::fs::remove_dir_all(&install_root)
            .with_context(|| format!("removing {}", install_root.display()))?;
    }
    cmd::run(
        built
            .cargo_env(&mut cmd::cargo())
            .args(["install", "--path", "agent", "--locked", "--debug"])
            .arg("--root")
            .arg(&install_root)
            .arg("--target-dir")
            .arg(root.join("target"))
            .current_dir(&root),
    )?;
    let installed = install_root.join("bin/certreload");
    let version = cmd::output(Command::new(&installed).arg("--version"))
        .with_context(|| format!("running the installed {}", installed.display()))?;
    let expected = format!("certreload {}", env!("CARGO_PKG_VERSION"));
    if version.trim() != expected {
        bail!(
            "{} --version says {:?}, not {expected:?}",
            installed.display(),
            version.trim()
        );
    }
    eprintln!("xtask: cargo install --path agent: {}", installed.display());
    Ok(installed)
}
