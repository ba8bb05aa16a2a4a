//! `[[listener]]`: a TLS endpoint certreload terminates in front of a component.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::Deserialize;
use toml::Spanned;

use super::{bounds, BundleConfig, BundleKind, ConfigError, Source};

/// Where decrypted traffic goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Upstream {
    /// `tcp://host:port`.
    Tcp(String),
    /// `unix:///path`.
    Unix(PathBuf),
}

/// `stale_drain_rate` when unset: stale connections closed per second, so 10,000 go in 5 s
/// (`cargo xtask bench scale --only connections`: closing 9,000 at once took new handshakes'
/// p99 to 119 ms).
pub(crate) const DEFAULT_STALE_DRAIN_RATE: u64 = 2_000;

/// One listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ListenerConfig {
    /// Unique name (metrics, status, records).
    pub name: String,
    /// Address to accept TLS on.
    pub listen: SocketAddr,
    /// The server bundle whose generations it serves.
    pub bundle: String,
    /// A ca bundle: when set, clients must present a certificate that verifies to it (mTLS).
    pub client_ca: Option<String>,
    /// Where to forward.
    pub upstream: Upstream,
    /// Close connections still on stale material this long after the swap (graceful close_notify).
    pub stale_grace: Option<Duration>,
    /// Most stale connections closed per second once `stale_grace` has passed: closing them all
    /// at once (tens of thousands of close_notify and audit records) makes new handshakes wait.
    pub stale_drain_rate: u64,
    /// On client-CA rotation, close connections whose client certificate no longer verifies.
    pub close_untrusted: bool,
    /// Handshake deadline.
    pub handshake_timeout: Duration,
    /// Close a connection on which no byte moved either way for this long.
    pub idle_timeout: Duration,
    /// Most simultaneous connections; further ones are refused.
    pub max_connections: usize,
    /// Re-encrypt to the upstream with a client certificate (the upstream demands one).
    pub upstream_tls: Option<UpstreamTls>,
}

/// `upstream_tls = { client_bundle = "...", ca = "...", server_name = "..." }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpstreamTls {
    /// A client bundle: the certificate presented to the upstream.
    pub client_bundle: String,
    /// A ca bundle: what the upstream's certificate must verify to.
    pub ca: String,
    /// The name the upstream's certificate must carry.
    pub server_name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListener {
    name: String,
    listen: String,
    bundle: String,
    client_ca: Option<String>,
    upstream: String,
    stale_grace: Option<Spanned<String>>,
    stale_drain_rate: Option<Spanned<i64>>,
    #[serde(default)]
    close_untrusted: bool,
    handshake_timeout: Option<Spanned<String>>,
    idle_timeout: Option<Spanned<String>>,
    max_connections: Option<Spanned<i64>>,
    upstream_tls: Option<UpstreamTls>,
}

pub(crate) fn parse(
    src: &Source<'_>,
    raw: &[Spanned<RawListener>],
    bundles: &[BundleConfig],
) -> Result<Vec<ListenerConfig>, ConfigError> {
    let mut out: Vec<ListenerConfig> = Vec::new();
    for spanned in raw {
        let l = spanned.get_ref();
        let at = Entry {
            src,
            offset: spanned.span().start,
            name: &l.name,
        };
        if out.iter().any(|o| o.name == l.name) {
            return Err(at.invalid("name", "duplicate listener name"));
        }
        out.push(parse_listener(&at, l, bundles)?);
    }
    Ok(out)
}

/// Where a listener's errors point: its line, and its fields as `listener[<name>].<field>`.
struct Entry<'a> {
    src: &'a Source<'a>,
    offset: usize,
    name: &'a str,
}

impl Entry<'_> {
    fn field(&self, f: &str) -> String {
        format!("listener[{}].{f}", self.name)
    }

    fn invalid(&self, f: &str, message: impl Into<String>) -> ConfigError {
        self.src.invalid(self.offset, self.field(f), message)
    }
}

/// One listener: its address, the bundles it names, its upstream and its limits.
fn parse_listener(
    at: &Entry<'_>,
    l: &RawListener,
    bundles: &[BundleConfig],
) -> Result<ListenerConfig, ConfigError> {
    let listen: SocketAddr = l
        .listen
        .parse()
        .map_err(|e| at.invalid("listen", format!("{:?}: {e}", l.listen)))?;
    check_bundles(at, l, bundles)?;
    if let Some(t) = &l.upstream_tls {
        check_upstream_tls(at, t, bundles)?;
    }
    let upstream = parse_upstream(at, &l.upstream)?;
    let src = at.src;
    let stale_grace = match &l.stale_grace {
        Some(v) => Some(src.duration_in(v, &at.field("stale_grace"), &bounds::STALE_GRACE)?),
        None => None,
    };
    let stale_drain_rate = match &l.stale_drain_rate {
        Some(v) => src.count_in(v, &at.field("stale_drain_rate"), &bounds::STALE_DRAIN_RATE)?,
        None => DEFAULT_STALE_DRAIN_RATE,
    };
    let handshake_timeout = match &l.handshake_timeout {
        Some(v) => src.duration_in(
            v,
            &at.field("handshake_timeout"),
            &bounds::HANDSHAKE_TIMEOUT,
        )?,
        None => Duration::from_secs(10),
    };
    let idle_timeout = match &l.idle_timeout {
        Some(v) => src.duration_in(v, &at.field("idle_timeout"), &bounds::IDLE_TIMEOUT)?,
        None => Duration::from_secs(3600),
    };
    let max_connections = match &l.max_connections {
        Some(v) => {
            let n = src.count_in(v, &at.field("max_connections"), &bounds::MAX_CONNECTIONS)?;
            usize::try_from(n).expect("MAX_CONNECTIONS.max fits in usize")
        }
        None => 10_000,
    };
    Ok(ListenerConfig {
        name: l.name.clone(),
        listen,
        bundle: l.bundle.clone(),
        client_ca: l.client_ca.clone(),
        upstream,
        stale_grace,
        stale_drain_rate,
        close_untrusted: l.close_untrusted,
        handshake_timeout,
        idle_timeout,
        max_connections,
        upstream_tls: l.upstream_tls.clone(),
    })
}

/// `bundle` names a server bundle; `client_ca`, when set, a ca bundle.
fn check_bundles(
    at: &Entry<'_>,
    l: &RawListener,
    bundles: &[BundleConfig],
) -> Result<(), ConfigError> {
    match kind_of(bundles, &l.bundle) {
        Some(BundleKind::Server) => {}
        Some(other) => {
            return Err(at.invalid(
                "bundle",
                format!(
                    "bundle {:?} is {other:?}, a listener needs a server bundle",
                    l.bundle
                ),
            ))
        }
        None => return Err(at.invalid("bundle", format!("no bundle named {:?}", l.bundle))),
    }
    let Some(ca) = &l.client_ca else {
        return Ok(());
    };
    match kind_of(bundles, ca) {
        Some(BundleKind::Ca) => Ok(()),
        Some(other) => Err(at.invalid(
            "client_ca",
            format!("bundle {ca:?} is {other:?}, client_ca needs a ca bundle"),
        )),
        None => Err(at.invalid("client_ca", format!("no bundle named {ca:?}"))),
    }
}

/// `upstream_tls`: a client bundle, a ca bundle and a name a certificate can carry.
fn check_upstream_tls(
    at: &Entry<'_>,
    t: &UpstreamTls,
    bundles: &[BundleConfig],
) -> Result<(), ConfigError> {
    if kind_of(bundles, &t.client_bundle) != Some(BundleKind::Client) {
        return Err(at.invalid(
            "upstream_tls.client_bundle",
            format!("{:?} is not a client bundle", t.client_bundle),
        ));
    }
    if kind_of(bundles, &t.ca) != Some(BundleKind::Ca) {
        return Err(at.invalid("upstream_tls.ca", format!("{:?} is not a ca bundle", t.ca)));
    }
    if rustls_pki_types::ServerName::try_from(t.server_name.as_str()).is_err() {
        return Err(at.invalid(
            "upstream_tls.server_name",
            format!("{:?} is not a DNS name or IP address", t.server_name),
        ));
    }
    Ok(())
}

/// The kind of the bundle named `name`, if there is one.
fn kind_of(bundles: &[BundleConfig], name: &str) -> Option<BundleKind> {
    bundles.iter().find(|b| b.name == name).map(|b| b.kind)
}

/// `tcp://host:port` or `unix:///path`.
fn parse_upstream(at: &Entry<'_>, upstream: &str) -> Result<Upstream, ConfigError> {
    if let Some(addr) = upstream.strip_prefix("tcp://") {
        Ok(Upstream::Tcp(addr.to_string()))
    } else if let Some(path) = upstream.strip_prefix("unix://") {
        Ok(Upstream::Unix(PathBuf::from(path)))
    } else {
        Err(at.invalid(
            "upstream",
            format!("{upstream:?}: expected tcp://host:port or unix:///path"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    const BUNDLES: &str = "[[bundle]]\nname = \"web\"\nkind = \"server\"\ncert = \"/c\"\nkey = \"/k\"\n[[bundle]]\nname = \"cas\"\nkind = \"ca\"\ncert = \"/ca\"\n";

    #[test]
    fn parses_a_listener_and_checks_its_references() {
        let text = format!("{BUNDLES}[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:9443\"\nbundle = \"web\"\nclient_ca = \"cas\"\nupstream = \"tcp://127.0.0.1:8080\"\nstale_grace = \"10m\"\n");
        let c = Config::parse(Path::new("c.toml"), &text).expect("valid");
        assert_eq!(
            c.listeners[0].upstream,
            Upstream::Tcp("127.0.0.1:8080".into())
        );
        assert_eq!(c.listeners[0].stale_grace, Some(Duration::from_secs(600)));
        assert_eq!(c.listeners[0].stale_drain_rate, DEFAULT_STALE_DRAIN_RATE);
        let paced = text.replace("stale_grace", "stale_drain_rate = 50\nstale_grace");
        let c = Config::parse(Path::new("c.toml"), &paced).expect("valid");
        assert_eq!(c.listeners[0].stale_drain_rate, 50);
        let bad = text.replace("bundle = \"web\"", "bundle = \"cas\"");
        let err = Config::parse(Path::new("c.toml"), &bad).expect_err("ca as server");
        assert!(err.to_string().contains("listener[l].bundle"), "{err}");
        let bad = text.replace("tcp://", "http://");
        assert!(Config::parse(Path::new("c.toml"), &bad)
            .expect_err("scheme")
            .to_string()
            .contains("listener[l].upstream"));
    }
}
