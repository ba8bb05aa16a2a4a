//! Signals to other processes and this process's identity: std can signal only a child it
//! started (`Child::kill`, and only `SIGKILL`) and does not expose the effective uid.
#![expect(
    unsafe_code,
    reason = "kill(2) and geteuid(2) have no std equivalent; neither takes a pointer"
)]

use std::io;

use super::check;

/// `kill(2)`: sends `signal` to the process `pid`, for the `kill` kind of action (a server
/// reloads its certificate on `SIGHUP`, found by its pid file or executable name). `ESRCH` when
/// the process is gone, `EPERM` when the agent may not signal it.
pub(crate) fn kill(pid: libc::pid_t, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: kill(2) takes two integers and touches no memory of ours.
    check(unsafe { libc::kill(pid, signal) })
}

/// `geteuid(2)`: the effective uid of this process, the owner the demo's state directory and
/// every file in it must have. The call cannot fail.
pub(crate) fn effective_uid() -> u32 {
    // SAFETY: geteuid has no arguments and no preconditions, and always succeeds.
    unsafe { libc::geteuid() }
}
