//! The `/status` document: the one schema the admin endpoint serves (built by `admin::status`) and
//! `certreload status` reads back (`status_cmd`), so both sides agree by construction.

use serde::{Deserialize, Serialize};

use crate::{
    converge::probe::ProbeStatus,
    monitor::Writer,
    propagation::{board::SaKeysStatus, tracker::PodTokensStatus},
    proxy::registry::ListenerCounts,
};

/// The whole status document.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Status {
    /// The change monitor.
    pub monitor: MonitorStatus,
    /// Every bundle.
    pub bundles: Vec<BundleStatus>,
    /// Every listener.
    pub listeners: Vec<ListenerStatus>,
    /// Every probe's latest check.
    pub probes: Vec<ProbeStatus>,
    /// `[sa_keys]`: the ServiceAccount key identity published and followed (absent when off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sa_keys: Option<SaKeysStatus>,
    /// `[pod_tokens]`: the pods' projected tokens at the tracker's last scan (absent when off or
    /// before the first scan).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_tokens: Option<PodTokensStatus>,
}

/// The change monitor.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct MonitorStatus {
    /// ebpf or inotify (with the reason).
    pub mode: String,
    /// Events lost to a full ring buffer.
    pub ringbuf_drops: u64,
    /// Ring-buffer records the agent could not decode (eBPF object and agent do not match).
    /// Absent from an older agent's document, hence the default.
    #[serde(default)]
    pub decode_errors: u64,
    /// The strategy in use: `fentry`, `tracepoints`, `raw-syscalls` or `inotify` (empty from an
    /// older agent).
    #[serde(default)]
    pub strategy: String,
    /// Why that one: the refusal of each cheaper strategy, word for word (`--hook auto`), or that
    /// it was requested (empty from an older agent).
    #[serde(default)]
    pub strategy_reason: String,
}

/// One bundle.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct BundleStatus {
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
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct GenerationStatus {
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
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct CertStatus {
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
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct LastChange {
    /// When.
    pub ts: String,
    /// Which file.
    pub path: String,
    /// Who.
    pub writer: Option<Writer>,
}

/// One listener.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ListenerStatus {
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
    /// `stale_grace` in seconds, when set (connections stale longer are closed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_grace_s: Option<f64>,
}

/// The document as the endpoint serves it: compact JSON, fields in declaration order (what
/// `certreload status --output json` prints).
impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let json = serde_json::to_string(self).map_err(|_| std::fmt::Error)?;
        f.write_str(&json)
    }
}
