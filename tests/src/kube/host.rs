//! What a control plane needs from the machine: the node's advertise address (on `lo`), one
//! control plane at a time (a lock), and running its tools.

use std::{
    fs::File,
    os::fd::AsRawFd,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::ADVERTISE_ADDRESS;

/// How long a test process waits for another one's control plane to stop.
const HOST_LOCK_WAIT: Duration = Duration::from_secs(30 * 60);

/// One control plane per machine at a time (each takes the node's standard ports and the
/// advertise address): an exclusive `flock` on a file in the temp directory, held until
/// [`ControlPlane::stop`] or the end of the process (the kernel releases it however that ends).
/// Test binaries of one `cargo test` run one after another anyway; this orders separate runs.
pub(super) fn lock_host() -> Result<File> {
    let path = std::env::temp_dir().join("certreload-kube.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let deadline = Instant::now() + HOST_LOCK_WAIT;
    let mut told = false;
    loop {
        // SAFETY: flock(2) on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(file);
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            bail!("locking {}: {err}", path.display());
        }
        if Instant::now() > deadline {
            bail!(
                "another test process has held {} for {HOST_LOCK_WAIT:?}",
                path.display()
            );
        }
        if !told {
            eprintln!(
                "waiting for another test process's kubeadm control plane to stop ({} is locked)",
                path.display()
            );
            told = true;
        }
        // Waiting for another process to finish: look again every second.
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Runs `command`; stdout on success, else an error with both streams.
pub(super) fn run(command: &mut Command) -> Result<String> {
    let out = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{command:?} failed ({}):\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

/// Puts the advertise address on `lo` unless some interface has it; returns whether it was
/// added (and is to be removed at the end).
pub(super) fn add_advertise_address() -> Result<bool> {
    let shown = run(Command::new("ip").args(["-o", "addr", "show"]))
        .context("`ip` (iproute2) is needed to add the advertise address")?;
    if shown.contains(&format!("inet {ADVERTISE_ADDRESS}/")) {
        return Ok(false);
    }
    run(Command::new("ip").args([
        "addr",
        "add",
        &format!("{ADVERTISE_ADDRESS}/32"),
        "dev",
        "lo",
    ]))
    .context("adding the advertise address to lo")?;
    Ok(true)
}

/// Removes the advertise address from `lo` (when [`add_advertise_address`] added it).
pub(super) fn remove_advertise_address() {
    let removed = run(Command::new("ip").args([
        "addr",
        "del",
        &format!("{ADVERTISE_ADDRESS}/32"),
        "dev",
        "lo",
    ]));
    // This runs at exit, where only a person can act on it; the next run reuses the address.
    if let Err(e) = removed {
        eprintln!("harness: {ADVERTISE_ADDRESS}/32 stays on lo: {e:#}");
    }
}
