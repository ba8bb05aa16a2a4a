//! What an audit record can say. Field names are part of the product: dashboards and auditors
//! read them.

use std::path::PathBuf;

use serde::Serialize;

use crate::{
    material::validate::{Check, CheckResult},
    monitor::{attribution::Attribution, ChangeKind, Source, Writer},
};

/// One audited step. Serialised flat into the record, with `event` naming the variant.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub(crate) enum AuditEvent {
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
        path: PathBuf,
        /// `ebpf`, `inotify` or `resync` ([`Source::as_str`]).
        source: Source,
        /// `modified`, `replaced`, `created` or `removed` ([`ChangeKind::as_str`]).
        kind: ChangeKind,
        /// Who made it: only when the kernel's events prove it (`monitor::attribution`).
        writer: Option<Writer>,
        /// SHA-256 of the new content (null when removed).
        sha256: Option<String>,
        /// `proven`, `unseen` or `ambiguous`: why `writer` is what it is. Absent from records
        /// written before it existed.
        attribution: Attribution,
        /// Who may have made it, when `attribution` is `ambiguous`.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        writers: Vec<Writer>,
    },
    /// The resync found a change no hook reported.
    ResyncFoundChange { path: PathBuf },
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
        /// Checks that passed with a warning (e.g. a signing CA file with more than one
        /// certificate): accepted, but a consumer of the material will refuse it.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        warnings: Vec<CheckResult>,
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
    /// A probed endpoint reflects the bundle's current generation (after a change, at start-up, or
    /// again after having been stale).
    EndpointConverged {
        /// Probe name.
        probe: String,
        /// `host:port`.
        endpoint: String,
        /// The bundle generation it reflects.
        generation: u64,
        /// `rotation`, `startup` or `interval` (what started the check).
        trigger: String,
        /// Seconds from the generation's acceptance to this check.
        seconds: f64,
        /// SHA-256 of the leaf the endpoint served.
        served_fingerprint: Option<String>,
    },
    /// A probed endpoint still does not reflect the current generation: at the deadline after a
    /// change, or found drifted by a steady-state check. Checking goes on.
    EndpointStale {
        /// Probe name.
        probe: String,
        /// `host:port`.
        endpoint: String,
        /// The generation it should reflect.
        generation: u64,
        /// `rotation`, `startup` or `interval`.
        trigger: String,
        /// Seconds since the generation was accepted.
        seconds: f64,
        /// What the endpoint did instead (served another leaf, refused the client, unreachable).
        observed: String,
        /// SHA-256 of the leaf it served, when it completed a handshake.
        served_fingerprint: Option<String>,
    },
    /// A reload action ran.
    ActionRun {
        /// `bundle#line` of the action.
        action: String,
        /// `stale` or `accepted`.
        trigger: String,
        /// The generation that triggered it.
        generation: u64,
        /// argv, or `kill -HUP <pid>...`.
        command: String,
        /// Exit status (null when killed at the timeout, or for signals).
        exit_status: Option<i32>,
        /// Whether it was killed at its timeout.
        timed_out: bool,
        /// Whether it succeeded (exit 0, or every signal delivered).
        success: bool,
        /// Seconds it ran.
        duration_s: f64,
        /// stdout+stderr (or the signal result), truncated to 4 KiB.
        output: String,
    },
    /// An action with a `lock` cannot take its Lease yet: another node holds it, or the API
    /// server cannot be reached or refuses. Audited when the wait starts and whenever its reason
    /// changes; the action does not run meanwhile.
    LockWait {
        action: String,
        /// The lock's name.
        lock: String,
        /// `namespace/name` of the Lease.
        lease: String,
        /// The generation the run is for.
        generation: u64,
        /// The node holding the Lease, when that is why.
        holder: Option<String>,
        /// Why, in words.
        reason: String,
    },
    /// The action's Lease is held by this node: from now until `lock_released`, no other node's
    /// action of the same lock runs.
    LockAcquired {
        action: String,
        /// The lock's name.
        lock: String,
        /// `namespace/name` of the Lease.
        lease: String,
        /// This node (the Lease's holderIdentity).
        holder: String,
        /// The generation the run is for.
        generation: u64,
        /// Seconds spent waiting for it.
        waited_s: f64,
        /// When the API server confirmed the hold (RFC 3339, microseconds): the hold began
        /// before this instant.
        acquired_at: String,
    },
    /// The action and its bundle's probes are done: the Lease is given back.
    LockReleased {
        action: String,
        /// The lock's name.
        lock: String,
        /// `namespace/name` of the Lease.
        lease: String,
        /// The generation the run was for.
        generation: u64,
        /// When the release was sent (RFC 3339, microseconds): the hold lasted at least until
        /// this instant, and ended when the API server took the release (or the Lease expired).
        held_until: String,
        /// Seconds from `acquired_at` to `held_until`.
        held_s: f64,
        /// What each probe of the bundle showed after the command, before the release.
        probes: Vec<ProbeSettled>,
        /// Whether the API server took the release; if not, the Lease expires after its
        /// duration.
        released: bool,
        /// Why the release failed, or why the hold ended early (lost to another node).
        error: Option<String>,
    },
    /// An action with a `lock` waited `lock_wait` without getting its Lease: it did not run.
    LockNotAcquired {
        action: String,
        /// The lock's name.
        lock: String,
        /// `namespace/name` of the Lease.
        lease: String,
        /// The generation the run was for.
        generation: u64,
        /// Seconds waited.
        waited_s: f64,
        /// The last reason it could not be taken.
        reason: String,
    },
    /// The chain head was published to the witness outside the node (`[audit] witness`): from
    /// then on a log that lacks record `witnessed_seq`, or holds another record there, fails
    /// `certreload audit verify --witness`.
    WitnessPublished {
        /// The published record's seq.
        witnessed_seq: u64,
        /// SHA-256 of that record's line (the `prev` of the record after it).
        witnessed_hash: String,
        /// `namespace/name` of the witness ConfigMap.
        object: String,
        /// The ConfigMap's resourceVersion after the write.
        resource_version: String,
    },
    /// The key identity of an accepted sa-keys generation is in the ConfigMap every node agent
    /// follows (`[sa_keys] publish`): written at start and on every accepted generation.
    SaKeysPublished {
        /// `namespace/name` of the ConfigMap.
        configmap: String,
        /// Accepted key ids, sorted.
        kids: Vec<String>,
        /// The key id of the signing key's public half.
        signing_kid: String,
        /// SHA-256 (hex) of the signing key's DER public key.
        signing_key_sha256: Option<String>,
        /// The bundle's generation published.
        generation: u64,
        /// The ConfigMap's resourceVersion after the write.
        resource_version: String,
    },
    /// The follower read a new key identity from the ConfigMap (`[sa_keys] follow`).
    SaKeysFollowed {
        /// `namespace/name` of the ConfigMap.
        configmap: String,
        /// Published key ids.
        kids: Vec<String>,
        /// The published signing key id.
        signing_kid: String,
        /// The publisher's generation.
        generation: u64,
        /// The node that published it.
        publisher: String,
        /// The ConfigMap's resourceVersion read.
        resource_version: String,
    },
    /// The follower's watch of the ConfigMap failed (API server unreachable, refused): the last
    /// identity followed stays in use, and a change is seen when the watch resumes.
    SaKeysWatchLost {
        /// `namespace/name` of the ConfigMap.
        configmap: String,
        /// Why, in words.
        error: String,
    },
    /// The follower's watch is back: the ConfigMap was listed again, so a change made while it
    /// was lost is not missed.
    SaKeysWatchResumed {
        /// `namespace/name` of the ConfigMap.
        configmap: String,
        /// The last error while it was lost.
        error: String,
        /// Seconds from the loss to the resumption.
        lost_s: f64,
    },
    /// The audit file was deleted or replaced while the agent ran: the first record of the file
    /// the agent opened in its place. It links to the last record this agent wrote (`seq` and
    /// `prev` continue the chain), so `audit verify` names the discontinuity instead of taking
    /// the new file for a fresh, intact log.
    LogReplaced {
        /// The seq of the last record written before (null if there was none).
        previous_seq: Option<u64>,
        /// The hash of that record (the `prev` of this one, repeated so that a file starting
        /// here still says what it continues).
        previous_hash: String,
        /// `deleted` (the path was gone) or `replaced` (another file was in its place).
        reason: String,
        /// Where a replacement that was not this log was moved to (kept, never appended to).
        #[serde(skip_serializing_if = "Option::is_none")]
        moved_aside: Option<PathBuf>,
    },
    /// A pod's projected ServiceAccount token (or the `ca.crt` beside it) became stale: signed by
    /// a key that is no longer the published signing key, or by one not published at all, or
    /// beside a CA bundle without the current cluster CA. Key ids only, never the token.
    TokenStale {
        /// The pod's namespace.
        namespace: String,
        /// The pod's name (from the token's claims).
        pod: String,
        /// The pod's uid.
        uid: String,
        /// The projected volume holding the token.
        volume: String,
        /// The key id in the token's header.
        kid: String,
        /// `outgoing_key`, `unpublished_key` or `ca`.
        reason: String,
        /// Seconds since the token was issued (`iat`).
        age_s: i64,
        /// The tracker's epoch (one per new published key set or cluster-CA generation): the
        /// generation its stale notices and verdicts carry.
        epoch: u64,
    },
    /// A stale token is current again: the kubelet wrote a token signed by the published signing
    /// key, beside a `ca.crt` holding the cluster CA.
    TokenRefreshed {
        /// The pod's namespace.
        namespace: String,
        /// The pod's name.
        pod: String,
        /// The pod's uid.
        uid: String,
        /// The projected volume holding the token.
        volume: String,
        /// The key id of the new token.
        kid: String,
        /// Why it had been stale.
        reason: String,
        /// Seconds from the change that made it stale (the published key set's `published-at`,
        /// or the cluster CA generation's acceptance) to now; null when that time is unknown.
        seconds_since_change: Option<f64>,
        /// Seconds it was seen stale.
        stale_for_s: f64,
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

/// One probe's outcome while an action held its lock.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct ProbeSettled {
    /// Probe name.
    pub probe: String,
    /// Whether a check that began after the command reported the endpoint converged on the run's
    /// generation (or a newer one) before the probe's deadline.
    pub converged: bool,
    /// Seconds from the command's end to that verdict (or to the deadline).
    pub seconds: f64,
}

impl AuditEvent {
    /// The `event` name, for logs and metrics.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            AuditEvent::AgentStarted { .. } => "agent_started",
            AuditEvent::AgentStopped { .. } => "agent_stopped",
            AuditEvent::ChangeDetected { .. } => "change_detected",
            AuditEvent::ResyncFoundChange { .. } => "resync_found_change",
            AuditEvent::PairWaiting { .. } => "pair_waiting",
            AuditEvent::MaterialAccepted { .. } => "material_accepted",
            AuditEvent::MaterialRejected { .. } => "material_rejected",
            AuditEvent::LogReplaced { .. } => "log_replaced",
            AuditEvent::ConnectionDrained { .. } => "connection_drained",
            AuditEvent::ConnectionRevoked { .. } => "connection_revoked",
            AuditEvent::EndpointConverged { .. } => "endpoint_converged",
            AuditEvent::EndpointStale { .. } => "endpoint_stale",
            AuditEvent::ActionRun { .. } => "action_run",
            AuditEvent::LockWait { .. } => "lock_wait",
            AuditEvent::LockAcquired { .. } => "lock_acquired",
            AuditEvent::LockReleased { .. } => "lock_released",
            AuditEvent::LockNotAcquired { .. } => "lock_not_acquired",
            AuditEvent::WitnessPublished { .. } => "witness_published",
            AuditEvent::TokenStale { .. } => "token_stale",
            AuditEvent::TokenRefreshed { .. } => "token_refreshed",
            AuditEvent::SaKeysPublished { .. } => "sa_keys_published",
            AuditEvent::SaKeysFollowed { .. } => "sa_keys_followed",
            AuditEvent::SaKeysWatchLost { .. } => "sa_keys_watch_lost",
            AuditEvent::SaKeysWatchResumed { .. } => "sa_keys_watch_resumed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The audit chain hashes these bytes: the typed `source`/`kind` must print exactly what the
    /// former strings did, or logs written before could no longer be verified.
    #[test]
    fn change_detected_serialises_as_it_did_with_strings() {
        let event = AuditEvent::ChangeDetected {
            path: PathBuf::from("/etc/tls/tls.crt"),
            source: Source::Ebpf,
            kind: ChangeKind::Replaced,
            writer: Some(Writer {
                pid: 7,
                tgid: 7,
                comm: "mv".into(),
                uid: 0,
                gid: 0,
                cgroup_id: 1,
            }),
            sha256: None,
            attribution: Attribution::Proven,
            writers: Vec::new(),
        };
        // The fields of issue 15 come last: every earlier field prints as it did.
        assert_eq!(
            serde_json::to_string(&event).expect("serialise"),
            r#"{"event":"change_detected","path":"/etc/tls/tls.crt","source":"ebpf","kind":"replaced","writer":{"pid":7,"tgid":7,"comm":"mv","uid":0,"gid":0,"cgroup_id":1},"sha256":null,"attribution":"proven"}"#
        );
    }
}
