//! `[admin]`: how the admin endpoint (`[agent] admin`) defends itself: connection caps, header-read
//! and idle timeouts, and the serving certificate it presents when it is reachable beyond loopback.
//!
//! The address stays `[agent] admin` (existing configurations keep working); everything here has a
//! default that is safe on a node, so `[admin]` is only written to tune it.

use std::{path::PathBuf, time::Duration};

use serde::Deserialize;
use toml::Spanned;

use super::{bounds::Bounds, ConfigError, Source};

/// `[admin]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AdminSettings {
    /// Most simultaneous connections in all; one more is closed at once (never queued), so idle
    /// or slow clients cannot grow the agent's memory past `max_connections` × the per-connection
    /// buffer limit.
    pub max_connections: usize,
    /// Most simultaneous connections from one client address, so one host cannot take every slot
    /// from the kubelet's probes and Prometheus.
    pub max_connections_per_client: usize,
    /// From the moment a request is awaited (a new connection, or the previous response sent) to
    /// its last header byte, TLS handshake included; slowloris clients and idle keep-alive
    /// connections are closed after it.
    pub header_read_timeout: Duration,
    /// A connection on which no byte moved either way for this long is closed (a client that
    /// stopped reading its response).
    pub idle_timeout: Duration,
    /// The serving certificate beyond loopback; `None`: a self-signed one generated at start.
    pub tls: Option<AdminTls>,
}

/// `tls_cert` / `tls_key`: a configured serving certificate (PEM chain, PEM key), read at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AdminTls {
    /// Leaf first, then intermediates.
    pub cert: PathBuf,
    /// The leaf's private key.
    pub key: PathBuf,
}

/// Default [`AdminSettings::max_connections`]: the kubelet's two probes and a few scrapers need a
/// handful; 64 idle connections cost well under a MiB.
pub(crate) const DEFAULT_MAX_CONNECTIONS: usize = 64;
/// Default [`AdminSettings::max_connections_per_client`].
pub(crate) const DEFAULT_MAX_CONNECTIONS_PER_CLIENT: usize = 8;
/// Default [`AdminSettings::header_read_timeout`].
pub(crate) const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Default [`AdminSettings::idle_timeout`].
pub(crate) const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

impl Default for AdminSettings {
    fn default() -> Self {
        AdminSettings {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_client: DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            tls: None,
        }
    }
}

/// `[admin] max_connections` and `max_connections_per_client`.
pub(crate) const MAX_CONNECTIONS: Bounds<u64> = Bounds {
    min: 1,
    max: 65_536,
    why: "0 refuses even the kubelet's probes; each connection may buffer up to 16KiB, so beyond 65,536 the cap no longer bounds memory under a pod limit",
};
/// `[admin] header_read_timeout`.
pub(crate) const HEADER_READ_TIMEOUT: Bounds<Duration> = Bounds {
    min: Duration::from_millis(100),
    max: Duration::from_secs(120),
    why: "below 100ms a real client cannot finish a TLS handshake and its headers; above 2 minutes a slowloris client holds a slot that long",
};
/// `[admin] idle_timeout`.
pub(crate) const IDLE_TIMEOUT: Bounds<Duration> = Bounds {
    min: Duration::from_secs(1),
    max: Duration::from_secs(3600),
    why: "below 1s a scrape of a slow reader is cut; above an hour a client that stopped reading holds a slot that long",
};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    max_connections: Option<Spanned<i64>>,
    max_connections_per_client: Option<Spanned<i64>>,
    header_read_timeout: Option<Spanned<String>>,
    idle_timeout: Option<Spanned<String>>,
    tls_cert: Option<Spanned<PathBuf>>,
    tls_key: Option<Spanned<PathBuf>>,
}

fn count(src: &Source<'_>, v: &Spanned<i64>, field: &str) -> Result<usize, ConfigError> {
    let n = src.count_in(v, field, &MAX_CONNECTIONS)?;
    Ok(usize::try_from(n).expect("MAX_CONNECTIONS.max fits in usize"))
}

pub(crate) fn parse(src: &Source<'_>, raw: &RawAdmin) -> Result<AdminSettings, ConfigError> {
    let mut s = AdminSettings::default();
    if let Some(v) = &raw.max_connections {
        s.max_connections = count(src, v, "admin.max_connections")?;
    }
    if let Some(v) = &raw.max_connections_per_client {
        s.max_connections_per_client = count(src, v, "admin.max_connections_per_client")?;
        if s.max_connections_per_client > s.max_connections {
            return Err(src.invalid(
                v.span().start,
                "admin.max_connections_per_client",
                format!(
                    "{} is more than admin.max_connections ({}): the per-client cap would never apply",
                    s.max_connections_per_client, s.max_connections
                ),
            ));
        }
    } else {
        s.max_connections_per_client = s.max_connections_per_client.min(s.max_connections);
    }
    if let Some(v) = &raw.header_read_timeout {
        s.header_read_timeout =
            src.duration_in(v, "admin.header_read_timeout", &HEADER_READ_TIMEOUT)?;
    }
    if let Some(v) = &raw.idle_timeout {
        s.idle_timeout = src.duration_in(v, "admin.idle_timeout", &IDLE_TIMEOUT)?;
    }
    s.tls = match (&raw.tls_cert, &raw.tls_key) {
        (Some(cert), Some(key)) => Some(AdminTls {
            cert: cert.get_ref().clone(),
            key: key.get_ref().clone(),
        }),
        (None, None) => None,
        (Some(one), None) | (None, Some(one)) => {
            return Err(src.invalid(
                one.span().start,
                "admin.tls_cert",
                "admin.tls_cert and admin.tls_key go together (a certificate and its key)",
            ))
        }
    };
    Ok(s)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Config, ConfigError};

    fn parse(admin: &str) -> Result<Config, ConfigError> {
        Config::parse(
            Path::new("certreload.toml"),
            &format!("[audit]\npath = \"/tmp/a.jsonl\"\n[admin]\n{admin}\n"),
        )
    }

    #[test]
    fn defaults_bound_connections_and_time() {
        let c = parse("").expect("empty [admin]");
        assert_eq!(c.admin, super::AdminSettings::default());
        assert_eq!(c.admin.max_connections, 64);
        assert!(c.admin.max_connections_per_client <= c.admin.max_connections);
    }

    #[test]
    fn zero_connections_and_tiny_timeouts_are_refused_with_file_and_line() {
        for (field, value) in [
            ("max_connections", "0"),
            ("max_connections_per_client", "0"),
            ("header_read_timeout", "\"0s\""),
            ("idle_timeout", "\"1ms\""),
            ("header_read_timeout", "\"1000y\""),
        ] {
            let e = parse(&format!("{field} = {value}"))
                .expect_err(field)
                .to_string();
            assert!(
                e.contains(&format!("certreload.toml:4: admin.{field}")),
                "{field} = {value}: {e}"
            );
        }
    }

    #[test]
    fn per_client_cap_above_the_total_is_refused() {
        let e = parse("max_connections = 4\nmax_connections_per_client = 5")
            .expect_err("5 > 4")
            .to_string();
        assert!(e.contains("admin.max_connections_per_client"), "{e}");
        let c = parse("max_connections = 4").expect("per-client default clamped");
        assert_eq!(c.admin.max_connections_per_client, 4);
    }

    #[test]
    fn tls_cert_needs_its_key() {
        let e = parse("tls_cert = \"/c.pem\"")
            .expect_err("no key")
            .to_string();
        assert!(e.contains("admin.tls_cert"), "{e}");
        let c = parse("tls_cert = \"/c.pem\"\ntls_key = \"/k.pem\"").expect("both");
        assert_eq!(
            c.admin.tls.expect("tls").key,
            std::path::PathBuf::from("/k.pem")
        );
    }
}
