//! The agent's counters, updated where things happen on the data path (listeners, reload, probes,
//! actions), and their label types. A leaf: it imports nothing from the crate, so every layer can
//! count into it and only the admin endpoint reads it (`admin::metrics` renders it at scrape time).

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::{EncodeLabel, EncodeLabelSet, EncodeLabelValue, LabelSetEncoder, LabelValueEncoder},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
};

/// A label value written per the exposition format: backslash, double quote and newline escaped
/// (`\\`, `\"`, `\n`). prometheus-client writes a `String` label value as it is, so a certificate
/// CN or a path containing `"` or a newline made the whole scrape unparseable (every expiry
/// alert blind) or injected series.
struct Escaped<'a>(&'a str);

impl EncodeLabelValue for Escaped<'_> {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        use std::fmt::Write;
        let mut rest = self.0;
        while let Some(at) = rest.find(['\\', '"', '\n']) {
            encoder.write_str(&rest[..at])?;
            encoder.write_str(match rest.as_bytes()[at] {
                b'\\' => "\\\\",
                b'"' => "\\\"",
                _ => "\\n",
            })?;
            rest = &rest[at + 1..];
        }
        encoder.write_str(rest)
    }
}

/// Implements `EncodeLabelSet` for a struct of `String` label values, each through [`Escaped`]
/// (instead of `#[derive(EncodeLabelSet)]`, which writes them unescaped). The field name is the
/// label name.
macro_rules! escaped_label_set {
    ($($set:ident { $($field:ident),+ $(,)? })+) => {$(
        impl EncodeLabelSet for $set {
            fn encode(&self, encoder: &mut LabelSetEncoder) -> std::fmt::Result {
                $(EncodeLabel::encode(
                    &(stringify!($field), Escaped(&self.$field)),
                    encoder.encode_label(),
                )?;)+
                Ok(())
            }
        }
    )+};
}

escaped_label_set! {
    ListenerLabel { listener }
    ListenerReason { listener, reason }
    BundleLabel { bundle }
    BundleReason { bundle, reason }
    SourceLabel { source }
    ConnState { listener, state }
    X509Labels { filepath, serial_number, subject_CN, issuer_CN, bundle }
    ProbeLabel { probe, bundle }
    ActionLabel { action, result }
    FileLabel { filepath }
    RootCaLabel { probe, state }
    TokenStateLabel { state }
    StrategyLabel { strategy }
}

/// `{strategy}`: the change monitor's hook strategy (`fentry`, `tracepoints`, `raw-syscalls`,
/// `inotify`).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(crate) struct StrategyLabel {
    /// Strategy name.
    pub strategy: String,
}

/// `{listener}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(crate) struct ListenerLabel {
    /// Listener name.
    pub listener: String,
}

/// `{listener, reason}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(crate) struct ListenerReason {
    /// Listener name.
    pub listener: String,
    /// Why.
    pub reason: String,
}

/// `{bundle}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(crate) struct BundleLabel {
    /// Bundle name.
    pub bundle: String,
}

/// `{bundle, reason}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(crate) struct BundleReason {
    /// Bundle name.
    pub bundle: String,
    /// The check that failed.
    pub reason: String,
}

/// `{source}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(crate) struct SourceLabel {
    /// ebpf, inotify or resync.
    pub source: String,
}

/// `{listener, state}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(crate) struct ConnState {
    /// Listener name.
    pub listener: String,
    /// current or stale.
    pub state: String,
}

/// The x509-certificate-exporter label set, so existing dashboards and alerts work unchanged.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
#[expect(
    non_snake_case,
    reason = "the field names are the x509-certificate-exporter label names (subject_CN, issuer_CN)"
)]
pub(crate) struct X509Labels {
    /// The file the certificate was read from.
    pub filepath: String,
    /// Serial, hex.
    pub serial_number: String,
    /// Subject CN.
    pub subject_CN: String,
    /// Issuer CN.
    pub issuer_CN: String,
    /// certreload bundle.
    pub bundle: String,
}

/// Labels of per-probe series.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(crate) struct ProbeLabel {
    /// Probe name.
    pub probe: String,
    /// The bundle it checks.
    pub bundle: String,
}

/// Labels of per-action counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(crate) struct ActionLabel {
    /// `bundle#line`.
    pub action: String,
    /// `success`, `failure` or `timeout`.
    pub result: String,
}

/// `{state}` of `certreload_pod_tokens`.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(crate) struct TokenStateLabel {
    /// `current`, `stale` or `unknown`.
    pub state: String,
}

/// `{probe, state}` of `certreload_root_ca_namespaces`.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(crate) struct RootCaLabel {
    /// The `root-ca-configmaps` probe.
    pub probe: String,
    /// `current`, `stale` or `unknown`.
    pub state: String,
}

/// `{filepath}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(crate) struct FileLabel {
    pub filepath: String,
}

/// Counters updated where things happen.
pub(crate) struct Metrics {
    /// Seconds from a confirmed change reaching the reload pipeline to the new generation being
    /// published (validation and the fsync'd audit record included).
    pub change_to_swap: Histogram,
    /// Failed handshakes by listener and reason.
    pub handshake_failures: Family<ListenerReason, Counter>,
    /// Upstream connection failures by listener.
    pub upstream_failures: Family<ListenerLabel, Counter>,
    /// Stale connections closed after stale_grace.
    pub connections_drained: Counter,
    /// Connections closed because their client certificate no longer verifies.
    pub connections_revoked: Counter,
    /// Accepted generations by bundle.
    pub reloads: Family<BundleLabel, Counter>,
    /// Rejections by bundle and check.
    pub rejections: Family<BundleReason, Counter>,
    /// Confirmed changes by source.
    pub change_events: Family<SourceLabel, Counter>,
    /// 1 when the probed endpoint reflects the bundle's current generation.
    pub probe_converged: Family<ProbeLabel, Gauge>,
    /// Seconds from the current generation's acceptance to the probe's last check (while it
    /// converges) or to its convergence.
    pub probe_seconds_since_change: Family<ProbeLabel, Gauge<f64, AtomicU64>>,
    /// notAfter (Unix seconds) of the leaf the endpoint served at the last check.
    pub probe_served_not_after: Family<ProbeLabel, Gauge>,
    /// 1 while the probe's verdict is stale (endpoint_stale: not converged by the deadline, or
    /// back to the old material after converging); 0 otherwise.
    pub probe_stale: Family<ProbeLabel, Gauge>,
    /// Reload actions run, by result.
    pub actions: Family<ActionLabel, Counter>,
    /// Failed attempts to publish the ServiceAccount key identity (`[sa_keys] publish`; each is
    /// retried).
    pub sa_keys_publish_failures: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            // 100 µs … ~3 s.
            change_to_swap: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.0, 15),
            ),
            handshake_failures: Family::default(),
            upstream_failures: Family::default(),
            connections_drained: Counter::default(),
            connections_revoked: Counter::default(),
            reloads: Family::default(),
            rejections: Family::default(),
            change_events: Family::default(),
            probe_converged: Family::default(),
            probe_seconds_since_change: Family::default(),
            probe_served_not_after: Family::default(),
            probe_stale: Family::default(),
            actions: Family::default(),
            sa_keys_publish_failures: Counter::default(),
        }
    }
}

impl Metrics {
    /// Counts a failed handshake.
    pub(crate) fn handshake_failure(&self, listener: &str, reason: &str) {
        self.handshake_failures
            .get_or_create(&ListenerReason {
                listener: listener.into(),
                reason: reason.into(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::{encoding::text::encode, registry::Registry};

    use super::*;

    #[test]
    fn label_values_are_escaped_per_the_exposition_format() {
        let family = Family::<X509Labels, Gauge>::default();
        family
            .get_or_create(&X509Labels {
                filepath: "/etc/\"odd\"\\dir/tls.crt".into(),
                serial_number: "01".into(),
                subject_CN: "evil\"} 1\ninjected_series{a=\"b".into(),
                issuer_CN: "plain".into(),
                bundle: "web".into(),
            })
            .set(1);
        let mut registry = Registry::default();
        registry.register("x509_cert_expired", "1 when expired", family);
        let mut out = String::new();
        encode(&mut out, &registry).expect("encode");
        let sample = out
            .lines()
            .find(|l| l.starts_with("x509_cert_expired{"))
            .expect("the sample");
        assert_eq!(
            sample,
            r#"x509_cert_expired{filepath="/etc/\"odd\"\\dir/tls.crt",serial_number="01",subject_CN="evil\"} 1\ninjected_series{a=\"b",issuer_CN="plain",bundle="web"} 1"#
        );
        assert!(!out.lines().any(|l| l.starts_with("injected_series")));
    }
}
