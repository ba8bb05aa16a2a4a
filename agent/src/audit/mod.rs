//! The audit trail: every change, verdict and swap as one JSON object per line, in an append-only,
//! fsync'd, hash-chained file that `certreload audit verify` checks.

pub mod chain;
pub(crate) mod event;
pub(crate) mod health;
pub(crate) mod kube_events;
pub mod log;
pub(crate) mod witness;

pub(crate) use self::{
    chain::verify_files,
    event::AuditEvent,
    log::{AuditError, Observed},
};
pub use self::{chain::VerifyError, log::AuditLog};

use crate::sync::LockExt;

/// The audit log shared by the reload pipeline and the TLS front (connection records). Appends
/// are short (one write + fsync) and serialised by the mutex, which keeps the chain linear.
pub(crate) type SharedAudit = std::sync::Arc<std::sync::Mutex<AuditLog>>;

/// Appends through a [`SharedAudit`]; a poisoned lock still writes (the log itself is consistent:
/// a record is either fully written and synced, or cut at the next start). The outcome is reported
/// to [`health::health`] (`/readyz`, `/metrics`).
pub(crate) fn append_shared(
    audit: &SharedAudit,
    bundle: Option<&str>,
    event: &AuditEvent,
) -> Result<u64, AuditError> {
    let mut log = audit.lock_or_recover();
    let result = log.append(bundle, event);
    match &result {
        Ok(_) => health::health().succeeded(),
        Err(e) => health::health().failed(e),
    }
    result
}
