//! What unit tests create through libc: FIFOs (a file that must be refused by type, never
//! waited on) and signals to this process.
#![expect(unsafe_code, reason = "mkfifo(3) and raise(3) have no std equivalent")]

use std::{ffi::CString, io, os::unix::ffi::OsStrExt, path::Path};

use super::check;

/// Creates a FIFO at `path` with mode 0600: nothing ever writes to it, so a blocking open or read
/// of it would hang the test.
pub(crate) fn mkfifo(path: &Path) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    // SAFETY: `c` is NUL-terminated and only read.
    check(unsafe { libc::mkfifo(c.as_ptr(), 0o600) })
}

/// `raise(3)`: sends `signal` to this process (the calling thread), as a supervisor's `SIGTERM`
/// arrives.
pub(crate) fn raise(signal: libc::c_int) -> io::Result<()> {
    // SAFETY: raise takes an integer and touches no memory of ours; the caller has installed a
    // handler for `signal` (the test's subject), so the process is not terminated.
    check(unsafe { libc::raise(signal) })
}
