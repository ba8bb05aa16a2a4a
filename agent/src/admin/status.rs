//! `/status`: what the agent serves and knows, as JSON (and the source of every gauge). The
//! document's schema is [`crate::status`]; this module only reads live state into it.

use std::sync::Arc;

use crate::{
    config::{BundleConfig, BundleFiles, Config, ListenerConfig},
    converge::ProbeBoard,
    material::inspect::CertInfo,
    monitor::{ActiveMode, MonitorCounters},
    propagation::{board::SaKeysBoard, tracker::PodTokenBoard},
    proxy::registry::Registry,
    reload::{
        board::ChangeBoard,
        generation::{Generation, GenerationStore},
    },
    status::{
        BundleStatus, CertStatus, GenerationStatus, LastChange, ListenerStatus, MonitorStatus,
        Status,
    },
    sync::LockExt,
    tls::{client_config::ClientSlot, slot::TlsSlot},
};

/// Live state the admin endpoint reads. Every field is shared with the part of the agent that
/// writes it; the endpoint only reads.
pub(crate) struct AgentState {
    pub config: Config,
    /// Generations.
    pub store: Arc<GenerationStore>,
    /// Live connections.
    pub registry: Arc<Registry>,
    /// Each listener's TLS slot.
    pub slots: Vec<Arc<TlsSlot>>,
    /// Each listener's upstream client slot.
    pub client_slots: Vec<Arc<ClientSlot>>,
    /// The change source in use (shown in words).
    pub monitor_mode: ActiveMode,
    /// The monitor's running counts (ring-buffer drops, decode errors).
    pub monitor: MonitorCounters,
    /// Last confirmed change per bundle (kept by the reloader).
    pub last_change: ChangeBoard,
    /// Latest probe verdicts.
    pub probes: ProbeBoard,
    /// `[sa_keys]`: the published and followed key identity (`None`: off).
    pub sa_keys: Option<SaKeysBoard>,
    /// `[pod_tokens]`: the token tracker's last scan (empty when off).
    pub pod_tokens: PodTokenBoard,
}

impl AgentState {
    /// Builds the status document now.
    pub(crate) fn status(&self) -> Status {
        Status {
            monitor: monitor_status(&self.monitor_mode, &self.monitor),
            bundles: self.config.bundles.iter().map(|b| self.bundle(b)).collect(),
            listeners: self.listeners(),
            probes: self.probes.lock_or_recover().values().cloned().collect(),
            sa_keys: self.sa_keys.as_ref().map(SaKeysBoard::status),
            pod_tokens: self.pod_tokens.lock_or_recover().clone(),
        }
    }

    fn bundle(&self, b: &BundleConfig) -> BundleStatus {
        BundleStatus {
            name: b.name.clone(),
            files: b.files().iter().map(|f| f.display().to_string()).collect(),
            generation: self
                .store
                .current(&b.name)
                .map(|g| generation_status(b, &g)),
            last_change: self.last_change.last(&b.name).map(|c| LastChange {
                ts: c.ts,
                path: c.path.display().to_string(),
                writer: c.writer,
            }),
        }
    }

    fn listeners(&self) -> Vec<ListenerStatus> {
        self.config
            .listeners
            .iter()
            .zip(self.slots.iter().zip(&self.client_slots))
            .map(|(l, (slot, client_slot))| self.listener(l, slot, client_slot))
            .collect()
    }

    fn listener(&self, l: &ListenerConfig, slot: &TlsSlot, client: &ClientSlot) -> ListenerStatus {
        let active = slot.current();
        let epoch = active.as_ref().map_or(0, |a| a.epoch);
        let client_generation = client.current().map(|c| c.client_generation);
        ListenerStatus {
            name: l.name.clone(),
            listen: l.listen.to_string(),
            epoch: active.as_ref().map(|a| a.epoch),
            server_generation: active.as_ref().map(|a| a.server_generation),
            upstream_client_generation: client_generation,
            connections: self
                .registry
                .counts(&l.name, epoch, client_generation, |e| slot.epoch_started(e)),
            stale_grace_s: l.stale_grace.map(|g| g.as_secs_f64()),
        }
    }
}

/// Generation `g` of bundle `b`: its leaf, and every certificate it holds (for the x509 metrics).
fn generation_status(b: &BundleConfig, g: &Generation) -> GenerationStatus {
    let leaf = g.leaf();
    GenerationStatus {
        number: g.number,
        fingerprint: leaf.map(|l| l.fingerprint.clone()),
        serial: leaf.map(|l| l.serial.clone()),
        not_after: leaf.map(|l| l.not_after),
        certificates: certificates(b, g),
    }
}

/// The leaf (except for a CA bundle, which has none of its own) and the CAs, each once per file,
/// labelled with the file it was read from.
fn certificates(b: &BundleConfig, g: &Generation) -> Vec<CertStatus> {
    let leaf_file = match &b.files {
        BundleFiles::Pair { cert, .. } => cert,
        BundleFiles::Ca { bundle, .. } => bundle,
        BundleFiles::Kubeconfig { file } => file,
        BundleFiles::SaKeys { private_key, .. } => private_key,
    }
    .display()
    .to_string();
    let ca_file = match &b.files {
        BundleFiles::Pair { ca: Some(ca), .. } => ca.display().to_string(),
        _ => leaf_file.clone(),
    };
    let mut certificates: Vec<CertStatus> = Vec::new();
    let mut push = |file: &str, c: &CertInfo| {
        if !certificates
            .iter()
            .any(|x| x.serial == c.serial && x.file == file)
        {
            certificates.push(CertStatus {
                file: file.to_string(),
                serial: c.serial.clone(),
                subject_cn: c.subject_cn.clone(),
                issuer_cn: c.issuer_cn.clone(),
                not_before: c.not_before,
                not_after: c.not_after,
            });
        }
    };
    if let Some(l) = g.leaf() {
        if !matches!(b.files, BundleFiles::Ca { .. }) {
            push(&leaf_file, l);
        }
    }
    for ca in &g.material.cas {
        push(&ca_file, ca);
    }
    certificates
}

/// The monitor's mode in words and its running counts as they are now.
fn monitor_status(mode: &ActiveMode, counters: &MonitorCounters) -> MonitorStatus {
    MonitorStatus {
        mode: mode.to_string(),
        ringbuf_drops: counters.ringbuf_drops(),
        decode_errors: counters.decode_errors(),
        strategy: mode.strategy().to_string(),
        strategy_reason: mode.strategy_reason(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{admin::metrics::Exposition, monitor::HookStrategy, telemetry::Metrics};

    #[test]
    fn decode_errors_reach_status_and_metrics() {
        let counters = MonitorCounters::with_counts(2, 3);
        let mode = ActiveMode::Ebpf {
            hook: HookStrategy::Tracepoints,
            strategy_reason: "fentry: not built; tracepoints: the kernel allows it".into(),
        };
        let status = Status {
            monitor: monitor_status(&mode, &counters),
            bundles: Vec::new(),
            listeners: Vec::new(),
            probes: Vec::new(),
            sa_keys: None,
            pod_tokens: None,
        };
        let json = serde_json::to_value(&status.monitor).expect("serializes");
        assert_eq!(
            json,
            serde_json::json!({"mode": "ebpf", "ringbuf_drops": 2, "decode_errors": 3,
                "strategy": "tracepoints",
                "strategy_reason": "fentry: not built; tracepoints: the kernel allows it"})
        );
        let text = Exposition::new(&Metrics::default()).render(&status);
        assert!(
            text.contains("\ncertreload_ringbuf_decode_errors_total 3\n"),
            "{text}"
        );
        assert!(
            text.contains("\ncertreload_monitor_strategy_info{strategy=\"tracepoints\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("\ncertreload_ringbuf_drops_total 2\n"),
            "{text}"
        );
    }
}
