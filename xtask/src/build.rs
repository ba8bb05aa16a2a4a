//! Building the eBPF object (nightly, BPF target) and the agent that embeds it.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};

use crate::{cmd, setup};

/// Where the build put things.
pub(crate) struct Built {
    /// The eBPF object, when it could be built.
    pub object: Option<PathBuf>,
    /// The agent binary.
    pub agent: PathBuf,
}

impl Built {
    /// Sets the environment every later cargo invocation needs to embed the same object and to let
    /// tests find the binary.
    pub(crate) fn cargo_env<'a>(&self, command: &'a mut Command) -> &'a mut Command {
        if let Some(object) = &self.object {
            command.env("CERTRELOAD_BPF_OBJECT", object);
        }
        command.env("CERTRELOAD_BIN", &self.agent)
    }
}

/// The eBPF object path produced by [`ebpf`].
pub(crate) fn object_path(root: &Path) -> PathBuf {
    root.join("target/bpf/bpfel-unknown-none/release/certreload")
}

/// Builds the kernel programs with the nightly for `bpfel-unknown-none`.
pub(crate) fn ebpf() -> Result<PathBuf> {
    cmd::run(&mut kernel_cargo("build")?).context("building the eBPF object")?;
    let object = object_path(&cmd::workspace_root());
    anyhow::ensure!(
        object.is_file(),
        "the eBPF build produced no {}",
        object.display()
    );
    Ok(object)
}

/// Lints the kernel programs (a workspace of their own, for the BPF target, so the workspace's
/// `cargo clippy` never sees them) with their own lint set, warnings denied.
pub(crate) fn ebpf_clippy() -> Result<()> {
    let mut clippy = kernel_cargo("clippy")?;
    clippy.args(["--", "-D", "warnings"]);
    cmd::run(&mut clippy).context("clippy on the eBPF programs")
}

/// `cargo +NIGHTLY <subcommand>` for ebpf/programs: release, `bpfel-unknown-none`, core built from
/// source, its own target dir, bpf-linker first on PATH, and no host RUSTFLAGS.
fn kernel_cargo(subcommand: &str) -> Result<Command> {
    let root = cmd::workspace_root();
    let linker_bin = setup::bpf_linker_bin()?;
    let path = std::env::join_paths(std::iter::once(linker_bin).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))?;
    let mut cargo = Command::new("cargo");
    cargo
        .args([
            &format!("+{}", setup::NIGHTLY),
            subcommand,
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
        ])
        .arg("--target-dir")
        .arg(root.join("target/bpf"))
        .current_dir(root.join("ebpf/programs"))
        .env("PATH", path)
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    Ok(cargo)
}

/// Builds the eBPF object (when the toolchain allows; under CI=true it must), then the agent.
pub(crate) fn all(release: bool) -> Result<Built> {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let object = match ebpf() {
        Ok(o) => Some(o),
        Err(e) if !ci => {
            eprintln!("xtask: WARNING: {e:#}\nxtask: the agent is built without eBPF and will use the inotify fallback");
            None
        }
        Err(e) => return Err(e.context("CI=true: the eBPF object is required")),
    };
    let root = cmd::workspace_root();
    let profile = if release { "release" } else { "debug" };
    let agent = root.join("target").join(profile).join("certreload");
    let built = Built { object, agent };
    let mut cargo = cmd::cargo();
    cargo
        .args(["build", "--package", "certreload", "--bin", "certreload"])
        .current_dir(&root);
    if release {
        cargo.arg("--release");
    }
    cmd::run(built.cargo_env(&mut cargo))?;
    Ok(built)
}
