//! `CLOCK_MONOTONIC` as nanoseconds: the clock `bpf_ktime_get_ns()` reads in the kernel, so a
//! kernel event's timestamp and the agent's own can be subtracted (detection latency). std's
//! `Instant` reads the same clock but does not expose its value.
#![expect(
    unsafe_code,
    reason = "clock_gettime(2) with a raw value has no std equivalent (Instant is opaque)"
)]

use std::io;

/// `clock_gettime(CLOCK_MONOTONIC)` in nanoseconds since boot (time suspended not counted, as
/// in the kernel's `bpf_ktime_get_ns()`).
pub(crate) fn monotonic_ns() -> io::Result<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `ts`, which we own exclusively for the call.
    super::check(unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) })?;
    // Monotonic time is never negative.
    Ok((ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64)
}
