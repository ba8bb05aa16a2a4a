//! Every libc call the agent makes, each behind a safe wrapper: the crate denies `unsafe_code`
//! everywhere else (`lib.rs`), so this folder is where a reviewer looks for the raw system calls.
//!
//! Each wrapper holds one `unsafe` block with the `SAFETY:` reason it is sound, turns the C return
//! convention into an [`std::io::Result`] (the error is `errno`, through
//! [`std::io::Error::last_os_error`]) and says in its doc comment why the agent needs the call.
//! Where std does the job without `unsafe` (`File::try_lock` for the audit log's `flock`,
//! `DirBuilder` for `mkdir`, `OpenOptions::custom_flags` for `open` with `O_NOFOLLOW`), the agent
//! uses std and nothing is added here. The only `unsafe` outside this folder is in the eBPF ring
//! buffer's reader (`monitor::ebpf`: decoding a record and registering its descriptor with
//! tokio), each with its own `#[expect]` and reason.
//!
//! By topic, as aya keeps its syscalls in `aya/src/sys/`:
//! - [`fs`]: operations relative to an open directory (`openat`, `renameat`, ...), which the
//!   demo's state directory ([`crate::demo`]) uses so that no link is ever followed.
//! - [`process`]: signals to other processes (the `kill` action) and this process's identity.
//! - [`limits`]: resource limits (`RLIMIT_NOFILE` for the accept loops, `RLIMIT_MEMLOCK` for
//!   BPF maps), also in a child between fork and exec.
//! - [`time`]: `CLOCK_MONOTONIC` as a number the kernel's timestamps can be compared with.
//! - [`random`]: bytes from the kernel's CSPRNG without `/dev`.
//! - [`mount`]: mounting tracefs where the eBPF loader needs it.
//! - `test_support` (tests only): FIFOs and signals the unit tests create.

pub(crate) mod fs;
pub(crate) mod limits;
pub(crate) mod mount;
pub(crate) mod process;
pub(crate) mod random;
#[cfg(test)]
pub(crate) mod test_support;
pub(crate) mod time;

/// `Ok(())` for a call that returns 0 on success, else the `errno` it set.
fn check(rc: libc::c_int) -> std::io::Result<()> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}
