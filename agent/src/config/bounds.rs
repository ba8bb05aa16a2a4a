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
pub(crate) struct Bounds<T> {
    /// Smallest allowed value.
    pub min: T,
    /// Largest allowed value.
    pub max: T,
    /// Why the range is what it is, shown in the error.
    pub why: &'static str,
}

impl<T: PartialOrd + Copy> Bounds<T> {
    /// Whether `value` is allowed.
    pub(crate) fn contains(&self, value: T) -> bool {
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
pub(crate) const RESYNC: Bounds<Duration> = Bounds {
    min: secs(1),
    max: secs(DAY),
    why: "each resync re-reads every watched file, so below 1s the agent only re-reads; above a day a change the monitor missed stays unnoticed too long",
};
/// `[agent] settle`.
pub(crate) const SETTLE: Bounds<Duration> = Bounds {
    min: Duration::ZERO,
    max: secs(MINUTE),
    why: "every confirmed change waits this long before it is read, so more than a minute delays every reload",
};
/// `[agent] pair_timeout`.
pub(crate) const PAIR_TIMEOUT: Bounds<Duration> = Bounds {
    min: Duration::ZERO,
    max: secs(HOUR),
    why: "0 rejects a mismatched cert and key at once; a rotation that leaves them disagreeing for over an hour is broken, not in progress",
};
/// `[agent] max_file_size`.
pub(crate) const MAX_FILE_SIZE: Bounds<u64> = Bounds {
    min: KIB,
    max: 64 * MIB,
    why: "no certificate or key fits in less than 1KiB; a file over 64MiB is not material and is read into memory whole",
};
/// `[audit] max_size`.
pub(crate) const AUDIT_MAX_SIZE: Bounds<u64> = Bounds {
    min: 64 * KIB,
    max: 16 * GIB,
    why: "below 64KiB the log rotates every few records and the kept files hold almost no history; above 16GiB it is never rotated on a node's disk",
};
/// `[audit] witness_interval`.
pub(crate) const WITNESS_INTERVAL: Bounds<Duration> = Bounds {
    min: Duration::from_secs(5),
    max: Duration::from_secs(3600),
    why: "each publication is an API read and write per node, so below 5s it loads the API server; records written after the last publication are not witnessed, so more than an hour leaves too much rewritable",
};
/// `[[bundle]] min_validity`.
pub(crate) const MIN_VALIDITY: Bounds<Duration> = Bounds {
    min: Duration::ZERO,
    max: secs(3650 * DAY),
    why: "no certificate is issued for more than 10 years, so a larger minimum rejects everything",
};
/// `[[listener]] stale_grace`.
pub(crate) const STALE_GRACE: Bounds<Duration> = Bounds {
    min: Duration::ZERO,
    max: secs(7 * DAY),
    why: "a connection left on stale material for more than a week is never closed in practice",
};
/// `[[listener]] stale_drain_rate` (connections per second).
pub(crate) const STALE_DRAIN_RATE: Bounds<u64> = Bounds {
    min: 1,
    max: 1_000_000,
    why: "0 never closes a stale connection; over a million a second is no pacing at all",
};
/// `[[listener]] handshake_timeout`.
pub(crate) const HANDSHAKE_TIMEOUT: Bounds<Duration> = Bounds {
    min: Duration::from_millis(100),
    max: secs(5 * MINUTE),
    why: "below 100ms a real client cannot finish a handshake; above 5 minutes an idle half-open connection holds a slot that long",
};
/// `[[listener]] idle_timeout`.
pub(crate) const IDLE_TIMEOUT: Bounds<Duration> = Bounds {
    min: secs(1),
    max: secs(7 * DAY),
    why: "below 1s every pause in a request closes the connection; above a week idle connections are never reclaimed",
};
/// `[[listener]] max_connections`.
pub(crate) const MAX_CONNECTIONS: Bounds<u64> = Bounds {
    min: 1,
    max: 1_000_000,
    why: "0 refuses every client; over a million exceeds any node's descriptor limit",
};
/// `[[probe]] deadline`.
pub(crate) const PROBE_DEADLINE: Bounds<Duration> = Bounds {
    min: secs(1),
    max: secs(7 * DAY),
    why: "no component reloads in under a second; a deadline beyond a week never reports a stale endpoint",
};
/// `[[probe]] interval`.
pub(crate) const PROBE_INTERVAL: Bounds<Duration> = Bounds {
    min: Duration::from_millis(100),
    max: secs(DAY),
    why: "below 100ms the probe handshakes in a busy loop; above a day a component that never reloaded goes unnoticed",
};
/// `[[action]] timeout`.
pub(crate) const ACTION_TIMEOUT: Bounds<Duration> = Bounds {
    min: secs(1),
    max: secs(HOUR),
    why: "no restart finishes in under a second; a command still running after an hour is hung",
};
/// `[[action]] min_interval`.
pub(crate) const ACTION_MIN_INTERVAL: Bounds<Duration> = Bounds {
    min: Duration::ZERO,
    max: secs(7 * DAY),
    why: "0 runs on every trigger; beyond a week an action never runs again after its first",
};
/// `[[action]] lock_wait`.
pub(crate) const LOCK_WAIT: Bounds<Duration> = Bounds {
    min: secs(1),
    max: secs(DAY),
    why: "the lock is held across a restart and a probe deadline elsewhere, so less than a second always gives up; beyond a day the action is stuck, not waiting",
};
/// `[locks] lease_duration`.
pub(crate) const LEASE_DURATION: Bounds<Duration> = Bounds {
    min: secs(3),
    max: secs(HOUR),
    why: "the holder renews every third of it, so at least 3s; a node that died holding the lock blocks the others at most an hour",
};
/// `[[probe]] concurrency` (`check = "root-ca-configmaps"`).
pub(crate) const ROOT_CA_CONCURRENCY: Bounds<u64> = Bounds {
    min: 1,
    max: 64,
    why: "0 reads nothing; every read is a request to the API server, so more than 64 at once from one agent loads it for no faster verdict",
};

/// A duration as a value the config accepts back (`0s`, `100ms`, `5m`, `3650d`): the largest unit
/// that divides it exactly.
pub(crate) fn show_duration(d: Duration) -> String {
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
        .find(|(_, per)| nanos.is_multiple_of(*per))
        .expect("every duration is a whole number of nanoseconds");
    format!("{}{unit}", nanos / per)
}

/// A size as a value the config accepts back (`1KiB`, `64MiB`, `0B`).
pub(crate) fn show_size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [("GiB", GIB), ("MiB", MIB), ("KiB", KIB), ("B", 1)];
    if bytes == 0 {
        return "0B".into();
    }
    let (unit, per) = UNITS
        .into_iter()
        .find(|(_, per)| bytes.is_multiple_of(*per))
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

    /// An optional duration field: `default` when absent, else as [`Self::duration_in`].
    pub(crate) fn duration_or(
        &self,
        value: Option<&Spanned<String>>,
        field: &str,
        default: Duration,
        bounds: &Bounds<Duration>,
    ) -> Result<Duration, ConfigError> {
        value.map_or(Ok(default), |v| self.duration_in(v, field, bounds))
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
        for b in [
            MAX_FILE_SIZE,
            AUDIT_MAX_SIZE,
            MAX_CONNECTIONS,
            STALE_DRAIN_RATE,
        ] {
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
        let e = src
            .duration_in(&t.a, "agent.resync", &RESYNC)
            .expect_err("1ns is below 1s");
        assert_eq!(
            e.to_string(),
            format!(
                "x.toml:1: agent.resync: \"1ns\" is outside the allowed range 1s to 1d: {}",
                RESYNC.why
            )
        );
        let e = src
            .size_in(&t.b, "agent.max_file_size", &MAX_FILE_SIZE)
            .expect_err("0 is below 1KiB");
        assert_eq!(
            e.to_string(),
            format!(
                "x.toml:2: agent.max_file_size: \"0\" is outside the allowed range 1KiB to 64MiB: {}",
                MAX_FILE_SIZE.why
            )
        );
        let e = src
            .count_in(&t.c, "listener[l].max_connections", &MAX_CONNECTIONS)
            .expect_err("-1 is below 1");
        assert_eq!(
            e.to_string(),
            format!(
                "x.toml:3: listener[l].max_connections: -1 is outside the allowed range 1 to 1000000: {}",
                MAX_CONNECTIONS.why
            )
        );
    }

    /// A whole configuration with every section a bounded field lives in; `{agent}`, `{audit}`,
    /// `{bundle}`, `{listener}`, `{probe}`, `{action}`, `{locks}` take one extra line each.
    const BASE: &str = "[agent]\n{agent}\n[audit]\npath = \"/a.jsonl\"\n{audit}\n[[bundle]]\nname = \"web\"\nkind = \"server\"\ncert = \"/c\"\nkey = \"/k\"\n{bundle}\n[[bundle]]\nname = \"ca\"\nkind = \"ca\"\ncert = \"/ca\"\n[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:9443\"\nbundle = \"web\"\nupstream = \"tcp://127.0.0.1:8080\"\n{listener}\n[[probe]]\nname = \"p\"\nendpoint = \"127.0.0.1:9443\"\nbundle = \"web\"\n{probe}\n[[action]]\nname = \"a\"\nbundle = \"web\"\non = \"accepted\"\nexec = [\"/bin/true\"]\nlock = \"k\"\n{action}\n[locks]\n{locks}\n";

    /// What a field holds, with its bounds.
    enum Kind {
        Duration(Bounds<Duration>),
        Size(Bounds<u64>),
        Count(Bounds<u64>),
    }

    /// Every bounded field: (section placeholder in BASE, key, field as errors name it, kind).
    fn fields() -> Vec<(&'static str, &'static str, &'static str, Kind)> {
        use Kind::*;
        vec![
            ("agent", "resync", "agent.resync", Duration(RESYNC)),
            ("agent", "settle", "agent.settle", Duration(SETTLE)),
            (
                "agent",
                "pair_timeout",
                "agent.pair_timeout",
                Duration(PAIR_TIMEOUT),
            ),
            (
                "agent",
                "max_file_size",
                "agent.max_file_size",
                Size(MAX_FILE_SIZE),
            ),
            ("audit", "max_size", "audit.max_size", Size(AUDIT_MAX_SIZE)),
            (
                "bundle",
                "min_validity",
                "bundle[web].min_validity",
                Duration(MIN_VALIDITY),
            ),
            (
                "listener",
                "stale_grace",
                "listener[l].stale_grace",
                Duration(STALE_GRACE),
            ),
            (
                "listener",
                "stale_drain_rate",
                "listener[l].stale_drain_rate",
                Count(STALE_DRAIN_RATE),
            ),
            (
                "listener",
                "handshake_timeout",
                "listener[l].handshake_timeout",
                Duration(HANDSHAKE_TIMEOUT),
            ),
            (
                "listener",
                "idle_timeout",
                "listener[l].idle_timeout",
                Duration(IDLE_TIMEOUT),
            ),
            (
                "listener",
                "max_connections",
                "listener[l].max_connections",
                Count(MAX_CONNECTIONS),
            ),
            (
                "probe",
                "deadline",
                "probe[p].deadline",
                Duration(PROBE_DEADLINE),
            ),
            (
                "probe",
                "interval",
                "probe[p].interval",
                Duration(PROBE_INTERVAL),
            ),
            (
                "action",
                "timeout",
                "action[a].timeout",
                Duration(ACTION_TIMEOUT),
            ),
            (
                "action",
                "min_interval",
                "action[a].min_interval",
                Duration(ACTION_MIN_INTERVAL),
            ),
            (
                "action",
                "lock_wait",
                "action[a].lock_wait",
                Duration(LOCK_WAIT),
            ),
            (
                "locks",
                "lease_duration",
                "locks.lease_duration",
                Duration(LEASE_DURATION),
            ),
        ]
    }

    /// BASE with `key = value` in `section`, and the 1-based line of that value.
    fn config_with(section: &str, key: &str, value: &str) -> (String, usize) {
        let mut text = BASE.to_string();
        for s in [
            "agent", "audit", "bundle", "listener", "probe", "action", "locks",
        ] {
            let line = if s == section {
                format!("{key} = {value}")
            } else {
                String::new()
            };
            text = text.replace(&format!("{{{s}}}"), &line);
        }
        let at = text.find(&format!("{key} = {value}")).expect("inserted");
        let line = text[..at].matches('\n').count() + 1;
        (text, line)
    }

    fn parse(text: &str) -> Result<crate::config::Config, ConfigError> {
        crate::config::Config::parse(Path::new("c.toml"), text)
    }

    /// The exact refusal for `shown` in `field` at `line`.
    fn refusal(line: usize, field: &str, shown: &str, min: &str, max: &str, why: &str) -> String {
        format!(
            "c.toml:{line}: {field}: {shown} is outside the allowed range {min} to {max}: {why}"
        )
    }

    fn expect_refused(
        section: &str,
        key: &str,
        field: &str,
        literal: &str,
        shown: &str,
        kind: &Kind,
    ) {
        let (text, line) = config_with(section, key, literal);
        let e = parse(&text)
            .expect_err(&format!("{field} = {literal} must be refused"))
            .to_string();
        let (min, max, why) = match kind {
            Kind::Duration(b) => (show_duration(b.min), show_duration(b.max), b.why),
            Kind::Size(b) => (show_size(b.min), show_size(b.max), b.why),
            Kind::Count(b) => (b.min.to_string(), b.max.to_string(), b.why),
        };
        assert_eq!(
            e,
            refusal(line, field, shown, &min, &max, why),
            "{field} = {literal}"
        );
    }

    #[test]
    fn the_base_config_parses() {
        let (text, _) = config_with("agent", "resync", "\"30s\"");
        parse(&text).expect("valid");
    }

    /// Every bounded field takes its smallest and its largest value, and refuses one step beyond
    /// either end (1ns, 1 byte, 1 connection) with the exact message.
    #[test]
    fn every_field_takes_both_ends_and_refuses_one_step_beyond() {
        for (section, key, field, kind) in fields() {
            match &kind {
                Kind::Duration(b) => {
                    for d in [b.min, b.max] {
                        let (text, _) =
                            config_with(section, key, &format!("\"{}\"", show_duration(d)));
                        parse(&text).unwrap_or_else(|e| panic!("{field} = {d:?}: {e}"));
                    }
                    let over = format!("\"{}\"", show_duration(b.max + Duration::from_nanos(1)));
                    expect_refused(section, key, field, &over, &over, &kind);
                    if let Some(under) = b.min.checked_sub(Duration::from_nanos(1)) {
                        // lease_duration must also be whole seconds: one second under instead.
                        let under = if key == "lease_duration" {
                            b.min - secs(1)
                        } else {
                            under
                        };
                        let under = format!("\"{}\"", show_duration(under));
                        expect_refused(section, key, field, &under, &under, &kind);
                    }
                }
                Kind::Size(b) => {
                    for n in [b.min, b.max] {
                        let (text, _) = config_with(section, key, &format!("\"{}\"", show_size(n)));
                        parse(&text).unwrap_or_else(|e| panic!("{field} = {n}: {e}"));
                    }
                    for n in [b.min - 1, b.max + 1] {
                        let v = format!("\"{}\"", show_size(n));
                        expect_refused(section, key, field, &v, &v, &kind);
                    }
                }
                Kind::Count(b) => {
                    for n in [b.min, b.max] {
                        let (text, _) = config_with(section, key, &n.to_string());
                        parse(&text).unwrap_or_else(|e| panic!("{field} = {n}: {e}"));
                    }
                    for n in [b.min - 1, b.max + 1] {
                        expect_refused(section, key, field, &n.to_string(), &n.to_string(), &kind);
                    }
                }
            }
        }
    }

    /// The values of the issue: huge (past what Instant, SystemTime or i64 seconds hold), zero,
    /// tiny and negative, each refused at its line with the field, the value and the range.
    #[test]
    fn huge_zero_tiny_and_negative_values_are_refused_with_file_line_field_and_range() {
        let by_field: std::collections::BTreeMap<_, _> = fields()
            .into_iter()
            .map(|(section, key, field, kind)| (field, (section, key, kind)))
            .collect();
        // 300000000000y is 9.5e18 s: past i64::MAX seconds, so `as i64` wrapped and
        // `Instant + d` panicked; 1000000TiB saturates bytesize's u64.
        for (field, literal) in [
            ("agent.pair_timeout", "\"300000000000y\""),
            ("bundle[web].min_validity", "\"300000000000y\""),
            ("probe[p].deadline", "\"300000000000y\""),
            ("action[a].lock_wait", "\"300000000000y\""),
            ("agent.settle", "\"1y\""),
            ("listener[l].stale_grace", "\"1000000d\""),
            ("locks.lease_duration", "\"1000000000h\""),
            ("audit.max_size", "\"1000000TiB\""),
            ("listener[l].max_connections", "9223372036854775807"),
            // zero
            ("agent.resync", "\"0s\""),
            ("agent.max_file_size", "\"0\""),
            ("listener[l].max_connections", "0"),
            ("listener[l].stale_drain_rate", "0"),
            ("listener[l].handshake_timeout", "\"0s\""),
            ("listener[l].idle_timeout", "\"0s\""),
            ("probe[p].interval", "\"0s\""),
            ("action[a].timeout", "\"0s\""),
            // tiny
            ("agent.resync", "\"1ns\""),
            ("probe[p].interval", "\"1ns\""),
            ("listener[l].handshake_timeout", "\"1ms\""),
            ("probe[p].deadline", "\"10ms\""),
            ("audit.max_size", "\"1B\""),
            ("agent.max_file_size", "\"100B\""),
            // negative
            ("listener[l].max_connections", "-1"),
        ] {
            let (section, key, kind) = &by_field[field];
            expect_refused(section, key, field, literal, literal, kind);
        }
    }

    /// Negative and garbage durations and sizes are not numbers at all: refused at their line
    /// with what a valid value looks like.
    #[test]
    fn negative_and_garbage_values_name_the_line_and_the_expected_form() {
        for (section, key, field, literal, message) in [
            (
                "agent",
                "pair_timeout",
                "agent.pair_timeout",
                "\"-5s\"",
                "is not a duration like \"30s\" or \"10m\"",
            ),
            (
                "bundle",
                "min_validity",
                "bundle[web].min_validity",
                "\"forever\"",
                "is not a duration like \"30s\" or \"10m\"",
            ),
            (
                "agent",
                "max_file_size",
                "agent.max_file_size",
                "\"-1\"",
                "is not a size like \"1MiB\"",
            ),
            (
                "audit",
                "max_size",
                "audit.max_size",
                "\"lots\"",
                "is not a size like \"1MiB\"",
            ),
        ] {
            let (text, line) = config_with(section, key, literal);
            let e = parse(&text).expect_err(literal).to_string();
            let head = format!("c.toml:{line}: {field}: {literal} {message}");
            assert!(e.starts_with(&head), "expected {head}…, got {e}");
        }
        // A count given as a string, or as a float, is a type error toml places on its line.
        for literal in ["\"100\"", "1.5"] {
            let (text, line) = config_with("listener", "max_connections", literal);
            let e = parse(&text).expect_err(literal).to_string();
            assert!(
                e.contains(&format!("line {line}")) && e.contains("max_connections"),
                "{e}"
            );
        }
    }
}
