//! Prometheus metrics: counters updated on the data path, gauges computed from live state at
//! scrape time (so they can never drift from what `/status` shows).

use std::{sync::atomic::AtomicU64, time::SystemTime};

use prometheus_client::{
    encoding::{
        text::encode, EncodeLabel, EncodeLabelSet, EncodeLabelValue, LabelSetEncoder,
        LabelValueEncoder,
    },
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use super::status::Status;

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
}

/// `{listener}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct ListenerLabel {
    /// Listener name.
    pub listener: String,
}

/// `{listener, reason}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct ListenerReason {
    /// Listener name.
    pub listener: String,
    /// Why.
    pub reason: String,
}

/// `{bundle}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct BundleLabel {
    /// Bundle name.
    pub bundle: String,
}

/// `{bundle, reason}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct BundleReason {
    /// Bundle name.
    pub bundle: String,
    /// The check that failed.
    pub reason: String,
}

/// `{source}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct SourceLabel {
    /// ebpf, inotify or resync.
    pub source: String,
}

/// `{listener, state}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct ConnState {
    /// Listener name.
    pub listener: String,
    /// current or stale.
    pub state: String,
}

/// The x509-certificate-exporter label set, so existing dashboards and alerts work unchanged.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
#[allow(non_snake_case)]
pub struct X509Labels {
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
pub struct ProbeLabel {
    /// Probe name.
    pub probe: String,
    /// The bundle it checks.
    pub bundle: String,
}

/// Labels of per-action counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct ActionLabel {
    /// `bundle#line`.
    pub action: String,
    /// `success`, `failure` or `timeout`.
    pub result: String,
}

/// `{filepath}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct FileLabel {
    /// The file.
    pub filepath: String,
}

/// Counters updated where things happen.
pub struct Metrics {
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
    /// Reload actions run, by result.
    pub actions: Family<ActionLabel, Counter>,
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
            actions: Family::default(),
        }
    }
}

impl Metrics {
    /// Counts a failed handshake.
    pub fn handshake_failure(&self, listener: &str, reason: &str) {
        self.handshake_failures
            .get_or_create(&ListenerReason {
                listener: listener.into(),
                reason: reason.into(),
            })
            .inc();
    }

    /// The Prometheus text exposition: these counters plus gauges computed from `status`.
    pub fn render(&self, status: &Status) -> String {
        let mut registry = Registry::default();
        registry.register(
            "certreload_handshake_failures",
            "Failed TLS handshakes",
            self.handshake_failures.clone(),
        );
        registry.register(
            "certreload_upstream_failures",
            "Upstream connections that could not be opened",
            self.upstream_failures.clone(),
        );
        registry.register(
            "certreload_connections_drained",
            "Stale connections closed after stale_grace",
            self.connections_drained.clone(),
        );
        registry.register(
            "certreload_probe_converged",
            "1 when the endpoint reflects the bundle's current generation",
            self.probe_converged.clone(),
        );
        registry.register(
            "certreload_probe_seconds_since_change",
            "Seconds from the generation's acceptance to the last check or to convergence",
            self.probe_seconds_since_change.clone(),
        );
        registry.register(
            "certreload_probe_served_not_after",
            "notAfter (Unix seconds) of the leaf the endpoint served",
            self.probe_served_not_after.clone(),
        );
        registry.register(
            "certreload_actions",
            "Reload actions run, by result",
            self.actions.clone(),
        );
        registry.register(
            "certreload_reloads",
            "Accepted new generations",
            self.reloads.clone(),
        );
        registry.register(
            "certreload_rejections",
            "Rejected material, by failed check",
            self.rejections.clone(),
        );
        registry.register(
            "certreload_change_events",
            "Confirmed file changes, by source",
            self.change_events.clone(),
        );

        let generation = Family::<BundleLabel, Gauge>::default();
        let not_after = Family::<X509Labels, Gauge<f64, AtomicU64>>::default();
        let not_before = Family::<X509Labels, Gauge<f64, AtomicU64>>::default();
        let expired = Family::<X509Labels, Gauge>::default();
        let expires_in = Family::<X509Labels, Gauge<f64, AtomicU64>>::default();
        let valid_since = Family::<X509Labels, Gauge<f64, AtomicU64>>::default();
        let error = Family::<FileLabel, Gauge>::default();
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        for b in &status.bundles {
            match &b.generation {
                Some(g) => {
                    generation
                        .get_or_create(&BundleLabel {
                            bundle: b.name.clone(),
                        })
                        .set(g.number as i64);
                    for cert in &g.certificates {
                        let labels = X509Labels {
                            filepath: cert.file.clone(),
                            serial_number: cert.serial.clone(),
                            subject_CN: cert.subject_cn.clone().unwrap_or_default(),
                            issuer_CN: cert.issuer_cn.clone().unwrap_or_default(),
                            bundle: b.name.clone(),
                        };
                        not_after.get_or_create(&labels).set(cert.not_after as f64);
                        not_before
                            .get_or_create(&labels)
                            .set(cert.not_before as f64);
                        expired
                            .get_or_create(&labels)
                            .set(i64::from(now > cert.not_after));
                        expires_in
                            .get_or_create(&labels)
                            .set((cert.not_after - now) as f64);
                        valid_since
                            .get_or_create(&labels)
                            .set((now - cert.not_before) as f64);
                    }
                }
                None => {
                    for f in &b.files {
                        error
                            .get_or_create(&FileLabel {
                                filepath: f.clone(),
                            })
                            .set(1);
                    }
                }
            }
        }
        let connections = Family::<ConnState, Gauge>::default();
        for l in &status.listeners {
            connections
                .get_or_create(&ConnState {
                    listener: l.name.clone(),
                    state: "current".into(),
                })
                .set((l.connections.live - l.connections.stale) as i64);
            connections
                .get_or_create(&ConnState {
                    listener: l.name.clone(),
                    state: "stale".into(),
                })
                .set(l.connections.stale as i64);
        }
        let audit = crate::audit::health::health();
        let audit_failures = Counter::<u64>::default();
        audit_failures.inc_by(audit.failures());
        registry.register(
            "certreload_audit_write_failures",
            "Audit appends that failed (nothing recorded, the change held back)",
            audit_failures,
        );
        let audit_writable = Gauge::<i64>::default();
        audit_writable.set(i64::from(audit.unwritable().is_none()));
        registry.register(
            "certreload_audit_writable",
            "1 when the last audit append succeeded",
            audit_writable,
        );
        let drops = Counter::<u64>::default();
        drops.inc_by(status.monitor.ringbuf_drops);
        registry.register(
            "certreload_bundle_generation",
            "Current generation of each bundle",
            generation,
        );
        registry.register(
            "certreload_listener_connections",
            "Live connections, current or on stale material",
            connections,
        );
        registry.register(
            "certreload_ringbuf_drops",
            "eBPF events lost to a full ring buffer",
            drops,
        );
        registry.register(
            "x509_cert_not_after",
            "Certificate notAfter, Unix seconds",
            not_after,
        );
        registry.register(
            "x509_cert_not_before",
            "Certificate notBefore, Unix seconds",
            not_before,
        );
        registry.register(
            "x509_cert_expired",
            "1 when the certificate has expired",
            expired,
        );
        registry.register(
            "x509_cert_expires_in_seconds",
            "Seconds until notAfter",
            expires_in,
        );
        registry.register(
            "x509_cert_valid_since_seconds",
            "Seconds since notBefore",
            valid_since,
        );
        registry.register(
            "x509_cert_error",
            "1 when a bundle's files give no valid certificate",
            error,
        );
        let mut out = String::new();
        if encode(&mut out, &registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
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
