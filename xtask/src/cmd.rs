//! Running commands loudly: every command is printed before it runs, and a failure names it.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

/// The workspace root (xtask lives one level below it).
pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_path_buf()
}

/// `cargo` from the environment (the one running xtask), for the stable toolchain.
pub(crate) fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    // Nested cargo must not inherit the outer toolchain override.
    c.env_remove("RUSTUP_TOOLCHAIN");
    c
}

/// Prints and runs `command`, failing with its exit status.
pub(crate) fn run(command: &mut Command) -> Result<()> {
    eprintln!("xtask: {}", show(command));
    let status = command
        .status()
        .with_context(|| format!("cannot start {}", show(command)))?;
    if !status.success() {
        bail!("{} failed ({status})", show(command));
    }
    Ok(())
}

/// Runs `command` and returns its stdout (stderr passes through), failing on non-zero exit.
pub(crate) fn output(command: &mut Command) -> Result<String> {
    let out = command
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("cannot start {}", show(command)))?;
    if !out.status.success() {
        bail!("{} failed ({})", show(command), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Replaces the current process with `program ARGS` (so signals reach it directly).
pub(crate) fn exec(program: &Path, args: &[String]) -> Result<()> {
    use std::os::unix::process::CommandExt;
    eprintln!("xtask: {} {}", program.display(), args.join(" "));
    let err = Command::new(program).args(args).exec();
    Err(err).with_context(|| format!("cannot run {}", program.display()))
}

/// True when `program` is found on PATH.
pub(crate) fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

fn show(command: &Command) -> String {
    let args: Vec<String> = command
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    format!(
        "{} {}",
        command.get_program().to_string_lossy(),
        args.join(" ")
    )
}

/// Bytes an unprivileged writer can still use on the filesystem holding `path`: the test suite's
/// build writes several GiB under target/, and running out half-way fails with a bare ENOSPC
/// naming a temp dir, so xtask checks first and says what it found.
pub(crate) fn free_bytes(path: &Path) -> Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .with_context(|| format!("{} contains a NUL byte", path.display()))?;
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: c_path is a NUL-terminated string alive for the call; stats is a writable statvfs.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), stats.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("statvfs {}", path.display()));
    }
    // SAFETY: statvfs returned 0, so it filled the struct.
    let stats = unsafe { stats.assume_init() };
    Ok(stats.f_bavail.saturating_mul(stats.f_frsize))
}
