//! File operations relative to an open directory descriptor (the `*at` calls), for the demo's
//! state directory ([`crate::demo`]): once the directory itself is checked and held open, every
//! name is resolved inside it, so nobody can redirect an operation by swapping a path component
//! above it. std has no descriptor-relative API, hence these wrappers.
//!
//! Names are single components as [`CStr`] (NUL-terminated by construction); the flags are
//! libc's, passed through unchanged.
#![expect(
    unsafe_code,
    reason = "the *at system calls have no std equivalent; each block is one call on a borrowed descriptor and NUL-terminated names"
)]

use std::{
    ffi::CStr,
    io,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

use super::check;

/// `openat(2)`: opens `name` in `dir` with `flags` (plus `O_CLOEXEC`, as std opens every file, so
/// no program the agent starts inherits it) and `mode` (used only with `O_CREAT`).
pub(crate) fn openat(
    dir: BorrowedFd<'_>,
    name: &CStr,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<OwnedFd> {
    // SAFETY: `dir` is open for the call (it is borrowed) and `name` is NUL-terminated; openat
    // only reads them.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by openat, is open, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `renameat(2)`: moves `from` in `from_dir` to `to` in `to_dir`, atomically replacing whatever
/// is at `to` (a link or FIFO there is replaced, never written through).
pub(crate) fn renameat(
    from_dir: BorrowedFd<'_>,
    from: &CStr,
    to_dir: BorrowedFd<'_>,
    to: &CStr,
) -> io::Result<()> {
    // SAFETY: both descriptors are open for the call (borrowed) and both names NUL-terminated.
    check(unsafe {
        libc::renameat(
            from_dir.as_raw_fd(),
            from.as_ptr(),
            to_dir.as_raw_fd(),
            to.as_ptr(),
        )
    })
}

/// `unlinkat(2)`: removes `name` from `dir` (an empty directory with `flags` =
/// `AT_REMOVEDIR`); a link is removed, never its target.
pub(crate) fn unlinkat(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: `dir` is open for the call (borrowed) and `name` is NUL-terminated.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) })
}

/// `mkdirat(2)`: creates the directory `name` in `dir` with `mode` (before the umask).
pub(crate) fn mkdirat(dir: BorrowedFd<'_>, name: &CStr, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: `dir` is open for the call (borrowed) and `name` is NUL-terminated.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) })
}

/// `symlinkat(2)`: creates the symbolic link `name` in `dir`, pointing at `target` (stored as
/// given, not resolved).
pub(crate) fn symlinkat(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: both strings are NUL-terminated and `dir` is open for the call (borrowed).
    check(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) })
}

/// `readlinkat(2)`: the target of the link `name` in `dir`, written into `buf`; returns how many
/// bytes were written. Like the call, a target longer than `buf` is cut at `buf.len()` and there
/// is no NUL terminator. `EINVAL` when `name` is not a link.
pub(crate) fn readlinkat(dir: BorrowedFd<'_>, name: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is writable for `buf.len()` bytes and exclusively ours for the call; `name`
    // is NUL-terminated and `dir` is open (borrowed).
    let n = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    // A negative count is the error; any other fits in usize.
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}
