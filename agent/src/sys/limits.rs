//! Resource limits (`getrlimit(2)`/`setrlimit(2)`), of the agent and of a child it starts: the
//! accept loops' descriptor budget needs the soft `RLIMIT_NOFILE` raised to the hard one
//! ([`crate::accept`]), an action's program gets the soft limit the agent started with back, and
//! kernels before 5.11 charge BPF maps to `RLIMIT_MEMLOCK`. std reads and sets no limits.
#![expect(
    unsafe_code,
    reason = "getrlimit/setrlimit and Command::pre_exec have no safe std equivalent"
)]

use std::io;

use super::check;

/// The limits the agent reads or sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resource {
    /// `RLIMIT_NOFILE`: one more than the highest descriptor number this process may open.
    OpenFiles,
    /// `RLIMIT_MEMLOCK`: bytes of locked memory, which BPF maps count against before Linux 5.11.
    LockedMemory,
}

impl Resource {
    fn raw(self) -> libc::__rlimit_resource_t {
        match self {
            Resource::OpenFiles => libc::RLIMIT_NOFILE,
            Resource::LockedMemory => libc::RLIMIT_MEMLOCK,
        }
    }
}

/// A soft and a hard limit (`struct rlimit`); [`Limit::UNLIMITED`] is `RLIM_INFINITY` for both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limit {
    /// What the kernel enforces now; the process may raise it up to `hard`.
    pub(crate) soft: u64,
    /// The ceiling for `soft`; only a privileged process may raise it.
    pub(crate) hard: u64,
}

impl Limit {
    /// No limit (`RLIM_INFINITY`), soft and hard.
    pub(crate) const UNLIMITED: Limit = Limit {
        soft: libc::RLIM_INFINITY,
        hard: libc::RLIM_INFINITY,
    };
}

/// `getrlimit(2)`: this process's current limit on `resource`.
pub(crate) fn get(resource: Resource) -> io::Result<Limit> {
    let mut raw = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into `raw`, which we own exclusively for the call.
    check(unsafe { libc::getrlimit(resource.raw(), &mut raw) })?;
    Ok(Limit {
        soft: raw.rlim_cur,
        hard: raw.rlim_max,
    })
}

/// `setrlimit(2)`: sets this process's limit on `resource` (raising `hard`, or `soft` above it,
/// needs `CAP_SYS_RESOURCE`: `EPERM`).
pub(crate) fn set(resource: Resource, limit: Limit) -> io::Result<()> {
    let raw = libc::rlimit {
        rlim_cur: limit.soft,
        rlim_max: limit.hard,
    };
    // SAFETY: setrlimit only reads the rlimit we pass.
    check(unsafe { libc::setrlimit(resource.raw(), &raw) })
}

/// Makes the child `cmd` starts lower its soft `RLIMIT_NOFILE` to `soft` between fork and exec
/// (never raising it: a child already below `soft` keeps its limit). Failure is ignored, as the
/// child then runs with the limit it inherited.
pub(crate) fn lower_soft_open_files_in_child(cmd: &mut tokio::process::Command, soft: u64) {
    // SAFETY: the closure runs in the child between fork and exec, where only async-signal-safe
    // calls are allowed: it calls getrlimit and setrlimit (both async-signal-safe) through
    // `get`/`set`, on stack values, and allocates nothing (an errno becomes an io::Error without
    // allocating).
    unsafe {
        cmd.pre_exec(move || {
            if let Ok(limit) = get(Resource::OpenFiles) {
                if soft < limit.soft {
                    // Ignored on purpose: the child keeps the inherited limit (see above).
                    set(Resource::OpenFiles, Limit { soft, ..limit }).ok();
                }
            }
            Ok(())
        });
    }
}
