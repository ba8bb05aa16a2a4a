//! `/status`: what the agent serves and knows, as JSON (and the source of every gauge).

use std::{
    collections::HashMap,
    sync::{atomic::AtomicU64, Arc, Mutex},
};

use serde::Serialize;

use crate::{
    config::{BundleFiles, Config},
    converge::{probe::ProbeStatus, ProbeBoard},
    monitor::{ConfirmedChange, Writer},
    proxy::registry::{ListenerCounts, Registry},
    reload::generation::GenerationStore,
    tls::{client_config::ClientSlot, slot::TlsSlot},
};

/// Live state the admin endpoint reads.
pub struct AgentState {
    /// The configuration.
    pub config: Config,
    /// Generations.
    pub store: Arc<GenerationStore>,
    /// Live connections.
    pub registry: Arc<Registry>,
    /// Each listener's TLS slot.
    pub slots: Vec<Arc<TlsSlot>>,
    /// Each listener's upstream client slot.
    pub client_slots: Vec<Arc<ClientSlot>>,
    /// Monitor mode in words.
    pub monitor_mode: String,
    /// eBPF ring-buffer drops (updated at every resync).
    pub ringbuf_drops: Arc<AtomicU64>,
    /// Last confirmed change per bundle.
    pub last_change: Mutex<HashMap<String, ConfirmedChange>>,
    /// Latest probe verdicts.
    pub probes: ProbeBoard,
}

/// The whole status document.
#[derive(Debug, Serialize)]
pub struct Status {
    /// The change monitor.
    pub monitor: MonitorStatus,
    /// Every bundle.
    pub bundles: Vec<BundleStatus>,
    /// Every listener.
    pub listeners: Vec<ListenerStatus>,
    /// Every probe's latest check.
    pub probes: Vec<ProbeStatus>,
}

/// The change monitor.
#[derive(Debug, Serialize)]
pub struct MonitorStatus {
    /// ebpf or inotify (with the reason).
    pub mode: String,
    /// Events lost to a full ring buffer.
    pub ringbuf_drops: u64,
}

/// One bundle.
#[derive(Debug, Serialize)]
pub struct BundleStatus {
    /// Name.
    pub name: String,
    /// Its files.
    pub files: Vec<String>,
    /// The current generation (`null`: not ready).
    pub generation: Option<GenerationStatus>,
    /// The last confirmed change of one of its files.
    pub last_change: Option<LastChange>,
}

/// A generation.
#[derive(Debug, Serialize)]
pub struct GenerationStatus {
    /// Number.
    pub number: u64,
    /// Leaf fingerprint.
    pub fingerprint: Option<String>,
    /// Leaf serial.
    pub serial: Option<String>,
    /// Leaf notAfter (Unix seconds).
    pub not_after: Option<i64>,
    /// Every certificate (leaf and CAs), for the x509 metrics.
    pub certificates: Vec<CertStatus>,
}

/// One certificate.
#[derive(Debug, Serialize)]
pub struct CertStatus {
    /// File it came from.
    pub file: String,
    /// Serial.
    pub serial: String,
    /// Subject CN.
    pub subject_cn: Option<String>,
    /// Issuer CN.
    pub issuer_cn: Option<String>,
    /// notBefore.
    pub not_before: i64,
    /// notAfter.
    pub not_after: i64,
}

/// The last change of a bundle.
#[derive(Debug, Serialize)]
pub struct LastChange {
    /// When.
    pub ts: String,
    /// Which file.
    pub path: String,
    /// Who.
    pub writer: Option<Writer>,
}

/// One listener.
#[derive(Debug, Serialize)]
pub struct ListenerStatus {
    /// Name.
    pub name: String,
    /// Address.
    pub listen: String,
    /// Current epoch.
    pub epoch: Option<u64>,
    /// Server generation served to new connections.
    pub server_generation: Option<u64>,
    /// Client bundle generation presented to the upstream by new connections (`upstream_tls`).
    pub upstream_client_generation: Option<u64>,
    /// Connection counts.
    pub connections: ListenerCounts,
}

impl AgentState {
    /// Builds the status document now.
    pub fn status(&self) -> Status {
        let last = self
            .last_change
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let bundles = self
            .config
            .bundles
            .iter()
            .map(|b| {
                let generation = self.store.current(&b.name).map(|g| {
                    let leaf = g.leaf();
                    let leaf_file = match &b.files {
                        BundleFiles::Pair { cert, .. } => cert.display().to_string(),
                        BundleFiles::Ca { bundle, .. } => bundle.display().to_string(),
                        BundleFiles::Kubeconfig { file } => file.display().to_string(),
                        BundleFiles::SaKeys { private_key, .. } => {
                            private_key.display().to_string()
                        }
                    };
                    let ca_file = match &b.files {
                        BundleFiles::Pair { ca: Some(ca), .. } => ca.display().to_string(),
                        _ => leaf_file.clone(),
                    };
                    let mut certificates: Vec<CertStatus> = Vec::new();
                    let mut push = |file: &str, c: &crate::material::inspect::CertInfo| {
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
                    if let Some(l) = leaf {
                        if !matches!(b.files, BundleFiles::Ca { .. }) {
                            push(&leaf_file, l);
                        }
                    }
                    for ca in &g.material.cas {
                        push(&ca_file, ca);
                    }
                    GenerationStatus {
                        number: g.number,
                        fingerprint: leaf.map(|l| l.fingerprint.clone()),
                        serial: leaf.map(|l| l.serial.clone()),
                        not_after: leaf.map(|l| l.not_after),
                        certificates,
                    }
                });
                BundleStatus {
                    name: b.name.clone(),
                    files: b.files().iter().map(|f| f.display().to_string()).collect(),
                    generation,
                    last_change: last.get(&b.name).map(|c| LastChange {
                        ts: c.ts.clone(),
                        path: c.path.display().to_string(),
                        writer: c.writer.clone(),
                    }),
                }
            })
            .collect();
        let listeners = self
            .config
            .listeners
            .iter()
            .zip(self.slots.iter().zip(&self.client_slots))
            .map(|(l, (slot, client_slot))| {
                let active = slot.current();
                let epoch = active.as_ref().map_or(0, |a| a.epoch);
                ListenerStatus {
                    name: l.name.clone(),
                    listen: l.listen.to_string(),
                    epoch: active.as_ref().map(|a| a.epoch),
                    server_generation: active.as_ref().map(|a| a.server_generation),
                    upstream_client_generation: client_slot.current().map(|c| c.client_generation),
                    connections: self.registry.counts(
                        &l.name,
                        epoch,
                        client_slot.current().map(|c| c.client_generation),
                        |e| slot.epoch_started(e),
                    ),
                }
            })
            .collect();
        Status {
            monitor: MonitorStatus {
                mode: self.monitor_mode.clone(),
                ringbuf_drops: self
                    .ringbuf_drops
                    .load(std::sync::atomic::Ordering::Relaxed),
            },
            bundles,
            listeners,
            probes: self
                .probes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .values()
                .cloned()
                .collect(),
        }
    }
}
