//! What an audit record can say. Field names are part of the product: dashboards and auditors
//! read them.

use std::path::PathBuf;

use serde::Serialize;

use crate::{material::validate::Check, monitor::Writer};

/// One audited step. Serialised flat into the record, with `event` naming the variant.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AuditEvent {
    /// The agent started (first record of each run).
    AgentStarted {
        /// certreload version.
        version: String,
        /// Configured bundles.
        bundles: Vec<String>,
        /// Change source in use (`ebpf` or `inotify`, with the reason for the fallback).
        monitor: String,
    },
    /// The agent stopped cleanly.
    AgentStopped {
        /// Why (signal name).
        reason: String,
    },
    /// The monitor confirmed a change of one of the bundle's files.
    ChangeDetected {
        /// The file.
        path: PathBuf,
        /// `ebpf`, `inotify` or `resync`.
        source: String,
        /// `modified`, `replaced`, `created` or `removed`.
        kind: String,
        /// Who made it, when known.
        writer: Option<Writer>,
        /// SHA-256 of the new content (null when removed).
        sha256: Option<String>,
    },
    /// The resync found a change no hook reported.
    ResyncFoundChange {
        /// The file.
        path: PathBuf,
    },
    /// Cert and key (or chain and CA) disagree, inside `pair_timeout`: waiting for the other half.
    PairWaiting {
        /// The check that does not pass yet.
        check: Check,
        /// Why.
        reason: String,
        /// Seconds left before this becomes a rejection.
        deadline_s: f64,
    },
    /// New material became the current generation.
    MaterialAccepted {
        /// Generation replaced (null at start-up).
        old_generation: Option<u64>,
        /// The new generation.
        new_generation: u64,
        /// Leaf fingerprint before.
        old_fingerprint: Option<String>,
        /// Leaf fingerprint now.
        new_fingerprint: Option<String>,
        /// Serial before.
        old_serial: Option<String>,
        /// Serial now.
        new_serial: Option<String>,
        /// notAfter now (Unix seconds).
        not_after: Option<i64>,
        /// ServiceAccount key ids (sa-keys bundles).
        #[serde(skip_serializing_if = "Vec::is_empty")]
        key_ids: Vec<String>,
    },
    /// A connection still on stale material was closed after `stale_grace` (close_notify, then
    /// TCP close).
    ConnectionDrained {
        /// Listener.
        listener: String,
        /// Client address.
        peer: String,
        /// The server-certificate generation it was made with.
        generation: u64,
        /// How long it had been stale.
        stale_for_s: f64,
    },
    /// On client-CA rotation (`close_untrusted`), a connection whose client certificate no
    /// longer verifies was closed.
    ConnectionRevoked {
        /// Listener.
        listener: String,
        /// Client address.
        peer: String,
        /// SHA-256 of the client certificate.
        client_fingerprint: Option<String>,
        /// The client-CA generation it failed against.
        client_ca_generation: u64,
    },
    /// New material was refused; the current generation stays live.
    MaterialRejected {
        /// The check that failed.
        check: Check,
        /// A human reason.
        reason: String,
        /// The file concerned.
        file: Option<PathBuf>,
        /// The generation that stays live (null when the bundle has none).
        current_generation: Option<u64>,
    },
}

impl AuditEvent {
    /// The `event` name, for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            AuditEvent::AgentStarted { .. } => "agent_started",
            AuditEvent::AgentStopped { .. } => "agent_stopped",
            AuditEvent::ChangeDetected { .. } => "change_detected",
            AuditEvent::ResyncFoundChange { .. } => "resync_found_change",
            AuditEvent::PairWaiting { .. } => "pair_waiting",
            AuditEvent::MaterialAccepted { .. } => "material_accepted",
            AuditEvent::MaterialRejected { .. } => "material_rejected",
            AuditEvent::ConnectionDrained { .. } => "connection_drained",
            AuditEvent::ConnectionRevoked { .. } => "connection_revoked",
        }
    }
}
