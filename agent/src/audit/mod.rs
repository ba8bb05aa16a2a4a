//! The audit trail: every change, verdict and swap as one JSON object per line, in an append-only,
//! fsync'd, hash-chained file that `certreload audit verify` checks.

pub mod chain;
pub mod event;
pub mod log;

pub use self::{
    chain::{verify_files, VerifyError, VerifySummary},
    event::AuditEvent,
    log::{AuditError, AuditLog},
};
