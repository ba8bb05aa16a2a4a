//! `mount(2)`, for the one file system the eBPF loader may have to mount itself: tracefs, where
//! classic tracepoints are found (a bare container or minimal host may not have it mounted).
#![expect(
    unsafe_code,
    reason = "mount(2) has no std equivalent; the block passes NUL-terminated strings and no data"
)]

use std::{ffi::CStr, io};

/// `mount(2)` of `fstype` from `source` at `target` with `flags` and no file-system specific
/// data. Needs `CAP_SYS_ADMIN`.
pub(crate) fn mount(
    source: &CStr,
    target: &CStr,
    fstype: &CStr,
    flags: libc::c_ulong,
) -> io::Result<()> {
    // SAFETY: the three strings are NUL-terminated and only read; a null data pointer means none.
    super::check(unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            std::ptr::null(),
        )
    })
}
