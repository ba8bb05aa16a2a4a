//! Random bytes from the kernel's CSPRNG through `getrandom(2)`, for when `/dev/urandom` cannot
//! be opened (no `/dev` in a minimal container). std has no public random-bytes API.
#![expect(
    unsafe_code,
    reason = "getrandom(2) has no stable std equivalent; the block writes only into the caller's slice"
)]

use std::io;

/// Fills `buf` with random bytes (the audit log's instance id). Blocks only until the kernel's
/// pool is initialised, early in boot; an interrupted call is retried.
pub(crate) fn fill(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: `rest` is writable for `rest.len()` bytes and exclusively ours for the call.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        match usize::try_from(n) {
            Ok(n) => filled += n,
            Err(_) => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}
