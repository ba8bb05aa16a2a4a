//! Whether the audit log can be written right now, as `/readyz` and `/metrics` report it.
//!
//! Durable before visible: nothing is applied without its record, so an audit log that cannot be
//! written (disk full, immutable file, I/O error) holds every change back. That must not be silent:
//! every append through [`super::append_shared`] reports its outcome here, `/readyz` answers 503
//! naming the audit log and the error until an append succeeds again, and the failures are counted
//! (`certreload_audit_write_failures_total`, `certreload_audit_writable`).
//!
//! Process-wide on purpose: one agent process has one audit log, and every writer (the reload
//! pipeline, the TLS front, the convergence checks) shares it through `append_shared`.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Mutex,
};

use crate::sync::LockExt;

/// Outcome of the audit appends so far.
#[derive(Debug, Default)]
pub(crate) struct AuditHealth {
    failures: AtomicU64,
    /// The error of the last append, while the last append failed.
    last_error: Mutex<Option<String>>,
}

static HEALTH: AuditHealth = AuditHealth {
    failures: AtomicU64::new(0),
    last_error: Mutex::new(None),
};

/// This process's audit log health.
pub(crate) fn health() -> &'static AuditHealth {
    &HEALTH
}

impl AuditHealth {
    /// Notes that an append succeeded: the log is writable (again).
    pub(crate) fn succeeded(&self) {
        *self.lock() = None;
    }

    /// Notes that an append failed with `error` (nothing was recorded).
    pub(crate) fn failed(&self, error: &dyn std::fmt::Display) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        *self.lock() = Some(error.to_string());
    }

    /// Failed appends since the start.
    pub(crate) fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// The last append's error, while the log is not writable; `None` when the last append
    /// succeeded (or none failed yet).
    pub(crate) fn unwritable(&self) -> Option<String> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.last_error.lock_or_recover()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_counted_and_reported_until_an_append_succeeds() {
        let h = AuditHealth::default();
        assert_eq!((h.failures(), h.unwritable()), (0, None));
        h.failed(&"/var/log/certreload/audit.jsonl: No space left on device");
        h.failed(&"/var/log/certreload/audit.jsonl: No space left on device");
        assert_eq!(h.failures(), 2);
        assert!(h.unwritable().is_some_and(|e| e.contains("No space")));
        h.succeeded();
        assert_eq!((h.failures(), h.unwritable()), (2, None));
    }
}
