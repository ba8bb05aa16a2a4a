//! The allowed range of every duration, size and count in the configuration, each with the
//! reason for its ends, checked at parse time so that no configured value can later panic or wrap
//! in arithmetic (`Instant + Duration`, `SystemTime + Duration`, `as i64`) or make the agent
//! useless (`max_connections = 0`) or busy (`resync = "1ns"`).
//!
//! A new field gets a [`Bounds`] constant here and is read with [`Source::duration_in`],
//! [`Source::size_in`] or [`Source::count_in`]: the error names the file, the line of the value,
//! the field, the value, the allowed range and why.

use std::time::Duration;

use toml::Spanned;

use super::{ConfigError, Source};

/// The inclusive range a configured value must lie in, and why those are its ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds<T> {
    /// Smallest allowed value.
    pub min: T,
    /// Largest allowed value.
    pub max: T,
    /// Why the range is what it is, shown in the error.
    pub why: &'static str,
}

impl<T: PartialOrd + Copy> Bounds<T> {
    /// Whether `value` is allowed.
    pub fn contains(&self, value: T) -> bool {
        self.min <= value && value <= self.max
    }
}

const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

const MINUTE: u64 = 60;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;
const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

/// `[agent] resync`.
pub const RESYNC: Bounds<Duration> = Bounds {
    min: secs(1),
    max: secs(DAY),
    why: "each resync re-reads every watched file, so below 1s the agent only re-reads; above a day a change the monitor missed stays unnoticed too long",
};
/// `[agent] settle`.
pub const SETTLE: Bounds<Duration> = Bounds {
    min: Duration::ZERO,
    max: secs(MINUTE),
    why: "every confirmed change waits this long before it is read, so more than a minute delays every reload",
};
/// `[agent] pair_timeout`.
pub const PAIR_TIMEOUT: Bounds<Duration> = Bounds {
    min: Duration::ZERO,
    max: secs(HOUR),
    why: "0 rejects a mismatched cert and key at once; a rotation that leaves them disagreeing for over an hour is broken, not in progress",
};
/// `[agent] max_file_size`.
pub const MAX_FILE_SIZE: Bounds<u64> = Bounds {
    min: KIB,
    max: 64 * MIB,
    why: "no certificate or key fits in less than 1KiB; a file over 64MiB is not material and is read into memory whole",
};
/// `[audit] max_size`.
pub const AUDIT_MAX_SIZE: Bounds<u64> = Bounds {
    min: 64 * KIB,
    max: 16 * GIB,
    why: "below 64KiB the log rotates every few records and the kept files hold almost no history; above 16GiB it is never rotated on a node's disk",
};
/// `[[bundle]] min_validity`.
pub const MIN_VALIDITY: Bounds<Duration> = Bounds {
    min: Duration::ZERO,
    max: secs(3650 * DAY),
    why: "no certificate is issued for more than 10 years, so a larger minimum rejects everything",
};
/// `[[listener]] stale_grace`.
pub const STALE_GRACE: Bounds<Duration> = Bounds {
    min: Duration::ZERO,
    max: secs(7 * DAY),
    why: "a connection left on stale material for more than a week is never closed in practice",
};
/// `[[listener]] handshake_timeout`.
pub const HANDSHAKE_TIMEOUT: Bounds<Duration> = Bounds {
    min: Duration::from_millis(100),
    max: secs(5 * MINUTE),
    why: "below 100ms a real client cannot finish a handshake; above 5 minutes an idle half-open connection holds a slot that long",
};
/// `[[listener]] idle_timeout`.
pub const IDLE_TIMEOUT: Bounds<Duration> = Bounds {
    min: secs(1),
    max: secs(7 * DAY),
    why: "below 1s every pause in a request closes the connection; above a week idle connections are never reclaimed",
};
/// `[[listener]] max_connections`.
pub const MAX_CONNECTIONS: Bounds<u64> = Bounds {
    min: 1,
    max: 1_000_000,
    why: "0 refuses every client; over a million exceeds any node's descriptor limit",
};
/// `[[probe]] deadline`.
pub const PROBE_DEADLINE: Bounds<Duration> = Bounds {
    min: secs(1),
    max: secs(7 * DAY),
    why: "no component reloads in under a second; a deadline beyond a week never reports a stale endpoint",
};
/// `[[probe]] interval`.
pub const PROBE_INTERVAL: Bounds<Duration> = Bounds {
    min: Duration::from_millis(100),
    max: secs(DAY),
    why: "below 100ms the probe handshakes in a busy loop; above a day a component that never reloaded goes unnoticed",
};
/// `[[action]] timeout`.
pub const ACTION_TIMEOUT: Bounds<Duration> = Bounds {
    min: secs(1),
    max: secs(HOUR),
    why: "no restart finishes in under a second; a command still running after an hour is hung",
};
/// `[[action]] min_interval`.
pub const ACTION_MIN_INTERVAL: Bounds<Duration> = Bounds {
    min: Duration::ZERO,
    max: secs(7 * DAY),
    why: "0 runs on every trigger; beyond a week an action never runs again after its first",
};
/// `[[action]] lock_wait`.
pub const LOCK_WAIT: Bounds<Duration> = Bounds {
    min: secs(1),
    max: secs(DAY),
    why: "the lock is held across a restart and a probe deadline elsewhere, so less than a second always gives up; beyond a day the action is stuck, not waiting",
};
/// `[locks] lease_duration`.
pub const LEASE_DURATION: Bounds<Duration> = Bounds {
    min: secs(3),
    max: secs(HOUR),
    why: "the holder renews every third of it, so at least 3s; a node that died holding the lock blocks the others at most an hour",
};

/// A duration as a value the config accepts back (`0s`, `100ms`, `5m`, `3650d`): the largest unit
/// that divides it exactly.
pub fn show_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    const UNITS: [(&str, u128); 7] = [
        ("d", 86_400_000_000_000),
        ("h", 3_600_000_000_000),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
        ("us", 1_000),
        ("ns", 1),
    ];
    let (unit, per) = UNITS
        .into_iter()
        .find(|(_, per)| nanos % per == 0)
        .expect("every duration is a whole number of nanoseconds");
    format!("{}{unit}", nanos / per)
}

/// A size as a value the config accepts back (`1KiB`, `64MiB`, `0B`).
pub fn show_size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [("GiB", GIB), ("MiB", MIB), ("KiB", KIB), ("B", 1)];
    if bytes == 0 {
        return "0B".into();
    }
    let (unit, per) = UNITS
        .into_iter()
        .find(|(_, per)| bytes % per == 0)
        .expect("1 divides everything");
    format!("{}{unit}", bytes / per)
}

impl Source<'_> {
    fn out_of_range(
        &self,
        offset: usize,
        field: &str,
        value: String,
        min: String,
        max: String,
        why: &str,
    ) -> ConfigError {
        self.invalid(
            offset,
            field,
            format!("{value} is outside the allowed range {min} to {max}: {why}"),
        )
    }

    /// A duration field (`"30s"`), parsed and checked against `bounds`.
    pub(crate) fn duration_in(
        &self,
        value: &Spanned<String>,
        field: &str,
        bounds: &Bounds<Duration>,
    ) -> Result<Duration, ConfigError> {
        let d = self.duration(value, field)?;
        if bounds.contains(d) {
            return Ok(d);
        }
        Err(self.out_of_range(
            value.span().start,
            field,
            format!("{:?}", value.get_ref()),
            show_duration(bounds.min),
            show_duration(bounds.max),
            bounds.why,
        ))
    }

    /// A size field (`"1MiB"`), parsed and checked against `bounds`.
    pub(crate) fn size_in(
        &self,
        value: &Spanned<String>,
        field: &str,
        bounds: &Bounds<u64>,
    ) -> Result<u64, ConfigError> {
        let n = self.size(value, field)?;
        if bounds.contains(n) {
            return Ok(n);
        }
        Err(self.out_of_range(
            value.span().start,
            field,
            format!("{:?}", value.get_ref()),
            show_size(bounds.min),
            show_size(bounds.max),
            bounds.why,
        ))
    }

    /// A count field (a TOML integer), checked against `bounds`; a negative integer is out of
    /// range rather than a type error, so it gets the same message.
    pub(crate) fn count_in(
        &self,
        value: &Spanned<i64>,
        field: &str,
        bounds: &Bounds<u64>,
    ) -> Result<u64, ConfigError> {
        match u64::try_from(*value.get_ref()) {
            Ok(n) if bounds.contains(n) => Ok(n),
            _ => Err(self.out_of_range(
                value.span().start,
                field,
                value.get_ref().to_string(),
                bounds.min.to_string(),
                bounds.max.to_string(),
                bounds.why,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn shown_bounds_parse_back_to_themselves() {
        for d in [
            Duration::ZERO,
            Duration::from_millis(100),
            secs(1),
            secs(5 * MINUTE),
            secs(HOUR),
            secs(DAY),
            secs(7 * DAY),
            secs(3650 * DAY),
            Duration::from_nanos(1),
        ] {
            let shown = show_duration(d);
            assert_eq!(humantime::parse_duration(&shown).expect(&shown), d);
        }
        assert_eq!(show_duration(secs(3650 * DAY)), "3650d");
        assert_eq!(show_duration(Duration::from_millis(100)), "100ms");
        for n in [0, 1, KIB, 64 * KIB, 64 * MIB, 16 * GIB, 1500] {
            let shown = show_size(n);
            let parsed: bytesize::ByteSize = shown.parse().expect("size");
            assert_eq!(parsed.as_u64(), n, "{shown}");
        }
        assert_eq!(show_size(64 * MIB), "64MiB");
    }

    #[test]
    fn every_range_is_ordered() {
        for b in [
            RESYNC,
            SETTLE,
            PAIR_TIMEOUT,
            MIN_VALIDITY,
            STALE_GRACE,
            HANDSHAKE_TIMEOUT,
            IDLE_TIMEOUT,
            PROBE_DEADLINE,
            PROBE_INTERVAL,
            ACTION_TIMEOUT,
            ACTION_MIN_INTERVAL,
            LOCK_WAIT,
            LEASE_DURATION,
        ] {
            assert!(b.min <= b.max, "{b:?}");
        }
        for b in [MAX_FILE_SIZE, AUDIT_MAX_SIZE, MAX_CONNECTIONS] {
            assert!(b.min <= b.max, "{b:?}");
        }
    }

    #[test]
    fn the_helpers_name_file_line_field_value_and_range() {
        let text = "a = \"1ns\"\nb = \"0\"\nc = -1\n";
        #[derive(serde::Deserialize)]
        struct T {
            a: Spanned<String>,
            b: Spanned<String>,
            c: Spanned<i64>,
        }
        let t: T = toml::from_str(text).expect("toml");
        let src = Source {
            path: Path::new("x.toml"),
            text,
        };
        let e = src.duration_in(&t.a, "agent.resync", &RESYNC).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "x.toml:1: agent.resync: \"1ns\" is outside the allowed range 1s to 1d: {}",
                RESYNC.why
            )
        );
        let e = src
            .size_in(&t.b, "agent.max_file_size", &MAX_FILE_SIZE)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "x.toml:2: agent.max_file_size: \"0\" is outside the allowed range 1KiB to 64MiB: {}",
                MAX_FILE_SIZE.why
            )
        );
        let e = src
            .count_in(&t.c, "listener[l].max_connections", &MAX_CONNECTIONS)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "x.toml:3: listener[l].max_connections: -1 is outside the allowed range 1 to 1000000: {}",
                MAX_CONNECTIONS.why
            )
        );
    }
}
