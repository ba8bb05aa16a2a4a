//! `/metrics`: the Prometheus text exposition. The data path's counters
//! ([`crate::telemetry::Metrics`]) are registered once, when the endpoint is built; the gauges are
//! computed from the status document at every scrape (so they can never drift from what `/status`
//! shows).

use std::{sync::atomic::AtomicU64, time::SystemTime};

use prometheus_client::{
    encoding::text::{encode_eof, encode_registry},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::{
    status::Status,
    telemetry::{
        BundleLabel, ConnState, FileLabel, ListenerLabel, Metrics, RootCaLabel, StrategyLabel,
        TokenStateLabel, X509Labels,
    },
};

/// A gauge family with a fractional value (seconds, Unix times as exported by
/// x509-certificate-exporter).
type FloatGauges<L> = Family<L, Gauge<f64, AtomicU64>>;

/// The exposition: the counters, registered once, and the scrape-time gauges.
pub(crate) struct Exposition {
    counters: Registry,
}

impl Exposition {
    /// Registers `metrics`' counters (the registry holds handles to the same atomics, so each
    /// scrape reads their current values).
    pub(crate) fn new(metrics: &Metrics) -> Self {
        let mut counters = Registry::default();
        let m = metrics;
        counters.register(
            "certreload_change_to_swap_seconds",
            "Seconds from a confirmed change reaching the reload pipeline to the new generation being published (validation and the fsync'd audit record included)",
            m.change_to_swap.clone(),
        );
        counters.register(
            "certreload_handshake_failures",
            "Failed TLS handshakes",
            m.handshake_failures.clone(),
        );
        counters.register(
            "certreload_upstream_failures",
            "Upstream connections that could not be opened",
            m.upstream_failures.clone(),
        );
        counters.register(
            "certreload_connections_drained",
            "Stale connections closed after stale_grace",
            m.connections_drained.clone(),
        );
        counters.register(
            "certreload_probe_converged",
            "1 when the endpoint reflects the bundle's current generation",
            m.probe_converged.clone(),
        );
        counters.register(
            "certreload_probe_seconds_since_change",
            "Seconds from the generation's acceptance to the last check or to convergence",
            m.probe_seconds_since_change.clone(),
        );
        counters.register(
            "certreload_probe_served_not_after",
            "notAfter (Unix seconds) of the leaf the endpoint served",
            m.probe_served_not_after.clone(),
        );
        counters.register(
            "certreload_probe_stale",
            "1 while the probe's verdict is stale (not converged by its deadline, or back to old material)",
            m.probe_stale.clone(),
        );
        counters.register(
            "certreload_actions",
            "Reload actions run, by result",
            m.actions.clone(),
        );
        counters.register(
            "certreload_reloads",
            "Accepted new generations",
            m.reloads.clone(),
        );
        counters.register(
            "certreload_rejections",
            "Rejected material, by failed check",
            m.rejections.clone(),
        );
        counters.register(
            "certreload_change_events",
            "Confirmed file changes, by source",
            m.change_events.clone(),
        );
        counters.register(
            "certreload_sa_keys_publish_failures",
            "Failed attempts to publish the ServiceAccount key identity ConfigMap (each retried)",
            m.sa_keys_publish_failures.clone(),
        );
        Exposition { counters }
    }

    /// The Prometheus text exposition: the counters, then gauges computed from `status` (empty if
    /// encoding fails).
    pub(crate) fn render(&self, status: &Status) -> String {
        let mut gauges = Registry::default();
        register_audit(&mut gauges);
        register_bundles_and_listeners(&mut gauges, status, unix_now());
        register_root_ca(&mut gauges, status);
        register_pod_tokens(&mut gauges, status);
        let mut out = String::new();
        let encoded = encode_registry(&mut out, &self.counters)
            .and_then(|()| encode_registry(&mut out, &gauges))
            .and_then(|()| encode_eof(&mut out));
        if encoded.is_err() {
            out.clear();
        }
        out
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `certreload_root_ca_namespaces{probe, state}`: the namespaces whose `kube-root-ca.crt`
/// carries the cluster CA bundle (`current`), does not (`stale`) or could not be told
/// (`unknown`), per `root-ca-configmaps` probe, at its last check.
fn register_root_ca(registry: &mut Registry, status: &Status) {
    let namespaces = Family::<RootCaLabel, Gauge>::default();
    for p in &status.probes {
        let Some(t) = &p.namespaces else { continue };
        for (state, n) in [
            ("current", t.current),
            ("stale", t.stale),
            ("unknown", t.unknown),
        ] {
            namespaces
                .get_or_create(&RootCaLabel {
                    probe: p.name.clone(),
                    state: state.into(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
    registry.register(
        "certreload_root_ca_namespaces",
        "Namespaces whose kube-root-ca.crt carries every certificate of the cluster CA bundle (current), lacks one or is missing (stale), or could not be read (unknown)",
        namespaces,
    );
}

/// `certreload_pod_tokens{state}`: the pods' projected tokens at the tracker's last scan
/// (`[pod_tokens]` only).
fn register_pod_tokens(registry: &mut Registry, status: &Status) {
    let Some(t) = &status.pod_tokens else {
        return;
    };
    let tokens = Family::<TokenStateLabel, Gauge>::default();
    for (state, n) in [
        ("current", t.current),
        ("stale", t.stale),
        ("unknown", t.unknown),
    ] {
        tokens
            .get_or_create(&TokenStateLabel {
                state: state.into(),
            })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    registry.register(
        "certreload_pod_tokens",
        "Projected ServiceAccount tokens on this node signed by the published signing key beside the cluster CA (current), not (stale), or not judged yet (unknown)",
        tokens,
    );
}

/// The audit log's health: failed appends and whether the last one succeeded.
fn register_audit(registry: &mut Registry) {
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
}

/// The x509-certificate-exporter gauges of every certificate a bundle's generation holds, and
/// `x509_cert_error` for the files of a bundle without one.
#[derive(Default)]
struct CertGauges {
    not_after: FloatGauges<X509Labels>,
    not_before: FloatGauges<X509Labels>,
    expired: Family<X509Labels, Gauge>,
    expires_in: FloatGauges<X509Labels>,
    valid_since: FloatGauges<X509Labels>,
    error: Family<FileLabel, Gauge>,
}

impl CertGauges {
    fn set(&self, labels: &X509Labels, not_before: i64, not_after: i64, now: i64) {
        self.not_after.get_or_create(labels).set(not_after as f64);
        self.not_before.get_or_create(labels).set(not_before as f64);
        self.expired
            .get_or_create(labels)
            .set(i64::from(now > not_after));
        self.expires_in
            .get_or_create(labels)
            .set((not_after - now) as f64);
        self.valid_since
            .get_or_create(labels)
            .set((now - not_before) as f64);
    }

    fn register(self, registry: &mut Registry) {
        registry.register(
            "x509_cert_not_after",
            "Certificate notAfter, Unix seconds",
            self.not_after,
        );
        registry.register(
            "x509_cert_not_before",
            "Certificate notBefore, Unix seconds",
            self.not_before,
        );
        registry.register(
            "x509_cert_expired",
            "1 when the certificate has expired",
            self.expired,
        );
        registry.register(
            "x509_cert_expires_in_seconds",
            "Seconds until notAfter",
            self.expires_in,
        );
        registry.register(
            "x509_cert_valid_since_seconds",
            "Seconds since notBefore",
            self.valid_since,
        );
        registry.register(
            "x509_cert_error",
            "1 when a bundle's files give no valid certificate",
            self.error,
        );
    }
}

/// How long the oldest connection on stale material has been stale (0 when none), and the
/// listener's `stale_grace` where set: an alert compares them (a drain that does not close them).
fn register_stale_ages(registry: &mut Registry, status: &Status) {
    let oldest = FloatGauges::<ListenerLabel>::default();
    let grace = FloatGauges::<ListenerLabel>::default();
    for l in &status.listeners {
        let label = ListenerLabel {
            listener: l.name.clone(),
        };
        oldest
            .get_or_create(&label)
            .set(l.connections.oldest_stale_s.unwrap_or(0.0));
        if let Some(g) = l.stale_grace_s {
            grace.get_or_create(&label).set(g);
        }
    }
    registry.register(
        "certreload_listener_oldest_stale_seconds",
        "Seconds the oldest connection on stale material has been stale (0 when none)",
        oldest,
    );
    registry.register(
        "certreload_listener_stale_grace_seconds",
        "The listener's stale_grace: stale connections older than this are closed",
        grace,
    );
}

/// Generations, certificates, connections, ring-buffer drops and decode errors, as `status` shows
/// them.
fn register_bundles_and_listeners(registry: &mut Registry, status: &Status, now: i64) {
    let generation = Family::<BundleLabel, Gauge>::default();
    let certs = CertGauges::default();
    for b in &status.bundles {
        let Some(g) = &b.generation else {
            for f in &b.files {
                certs
                    .error
                    .get_or_create(&FileLabel {
                        filepath: f.clone(),
                    })
                    .set(1);
            }
            continue;
        };
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
            certs.set(&labels, cert.not_before, cert.not_after, now);
        }
    }
    let connections = Family::<ConnState, Gauge>::default();
    for l in &status.listeners {
        let state = |state: &str| ConnState {
            listener: l.name.clone(),
            state: state.into(),
        };
        connections
            .get_or_create(&state("current"))
            .set((l.connections.live - l.connections.stale) as i64);
        connections
            .get_or_create(&state("stale"))
            .set(l.connections.stale as i64);
    }
    let drops = Counter::<u64>::default();
    drops.inc_by(status.monitor.ringbuf_drops);
    let decode_errors = Counter::<u64>::default();
    decode_errors.inc_by(status.monitor.decode_errors);
    let strategy = Family::<StrategyLabel, Gauge>::default();
    strategy
        .get_or_create(&StrategyLabel {
            strategy: status.monitor.strategy.clone(),
        })
        .set(1);
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
    register_stale_ages(registry, status);
    registry.register(
        "certreload_ringbuf_drops",
        "eBPF events lost to a full ring buffer",
        drops,
    );
    registry.register(
        "certreload_ringbuf_decode_errors",
        "eBPF ring-buffer records the agent could not decode (eBPF object and agent do not match)",
        decode_errors,
    );
    registry.register(
        "certreload_monitor_strategy_info",
        "The change monitor's hook strategy (why: /status monitor.strategy_reason)",
        strategy,
    );
    certs.register(registry);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_ca_namespaces_are_exported_per_probe_and_state() {
        let status: Status = serde_json::from_value(serde_json::json!({
            "monitor": {"mode": "inotify", "ringbuf_drops": 0},
            "bundles": [], "listeners": [],
            "probes": [{"name": "kube-root-ca-configmaps", "endpoint": "*/kube-root-ca.crt",
                        "bundle": "kubernetes-ca", "generation": 2, "converged": false,
                        "observed": "2 of 7 namespaces stale", "checked_at": "t",
                        "namespaces": {"total": 7, "current": 5, "stale": 2, "unknown": 0,
                                       "stale_namespaces": []}}]
        }))
        .expect("a status document");
        let text = Exposition::new(&Metrics::default()).render(&status);
        for (state, n) in [("current", 5), ("stale", 2), ("unknown", 0)] {
            let line = format!(
                "\ncertreload_root_ca_namespaces{{probe=\"kube-root-ca-configmaps\",state=\"{state}\"}} {n}\n"
            );
            assert!(text.contains(&line), "{line} in {text}");
        }
    }

    #[test]
    fn pod_tokens_are_exported_by_state_only_when_tracked() {
        let mut doc = serde_json::json!({
            "monitor": {"mode": "inotify", "ringbuf_drops": 0},
            "bundles": [], "listeners": [], "probes": []
        });
        let status: Status = serde_json::from_value(doc.clone()).expect("a status document");
        let text = Exposition::new(&Metrics::default()).render(&status);
        assert!(!text.contains("certreload_pod_tokens"), "{text}");
        doc["pod_tokens"] = serde_json::json!({"pods_dir": "/p", "scanned_at": "t", "epoch": 1,
            "signing_kid": null, "cluster_ca_generation": null,
            "current": 3, "stale": 2, "unknown": 1, "tokens": []});
        let status: Status = serde_json::from_value(doc).expect("a status document");
        let text = Exposition::new(&Metrics::default()).render(&status);
        for (state, n) in [("current", 3), ("stale", 2), ("unknown", 1)] {
            let line = format!("\ncertreload_pod_tokens{{state=\"{state}\"}} {n}\n");
            assert!(text.contains(&line), "{line} in {text}");
        }
    }
}
