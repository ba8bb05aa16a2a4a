//! Clocks shared by the kernel and the agent, so detection latency can be measured end to end.

/// Nanoseconds of `CLOCK_MONOTONIC`, the clock `bpf_ktime_get_ns()` reads in the kernel.
/// Never fails on Linux (`CLOCK_MONOTONIC` always exists); 0 if it ever did.
pub(crate) fn monotonic_ns() -> u64 {
    crate::sys::time::monotonic_ns().unwrap_or(0)
}

/// RFC 3339 UTC timestamp with microseconds, the `ts` of every printed record.
pub(crate) fn now_rfc3339() -> String {
    format_utc(time::OffsetDateTime::now_utc())
}

/// `at` as RFC 3339 UTC with microseconds (an accepted generation's time, in records and in the
/// published key identity).
pub(crate) fn rfc3339(at: std::time::SystemTime) -> String {
    format_utc(time::OffsetDateTime::from(at))
}

fn format_utc(now: time::OffsetDateTime) -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    now.format(&format)
        .unwrap_or_else(|_| now.unix_timestamp().to_string())
}

/// Where a deadline goes when `from + d` cannot be represented: tokio's own "far future" (about 30
/// years), later than any configured duration matters.
pub(crate) const FAR_FUTURE: std::time::Duration =
    std::time::Duration::from_secs(86_400 * 365 * 30);

/// `from + d` as a deadline, never a panic: `Instant + Duration` panics on overflow, so a
/// configured duration (a probe deadline, a lock wait) is added here, capped at [`FAR_FUTURE`].
pub(crate) fn later(
    from: impl Into<tokio::time::Instant>,
    d: std::time::Duration,
) -> tokio::time::Instant {
    let from = from.into();
    from.checked_add(d)
        .or_else(|| from.checked_add(FAR_FUTURE))
        .unwrap_or(from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_past_what_instant_holds_is_far_future_not_a_panic() {
        let now = tokio::time::Instant::now();
        let d = std::time::Duration::from_secs(5);
        assert_eq!(later(now, d), now + d);
        assert_eq!(later(now, std::time::Duration::MAX), now + FAR_FUTURE);
        let std_now = std::time::Instant::now();
        assert_eq!(
            later(std_now, std::time::Duration::from_secs(u64::MAX)),
            tokio::time::Instant::from_std(std_now) + FAR_FUTURE
        );
    }

    #[test]
    fn monotonic_clock_advances() {
        let a = monotonic_ns();
        let b = monotonic_ns();
        assert!(b >= a && a > 0);
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let ts = now_rfc3339();
        assert_eq!(ts.len(), "2026-11-28T23:00:00.000000Z".len(), "{ts}");
        assert!(ts.ends_with('Z'));
    }
}
