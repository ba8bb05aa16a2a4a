//! `[[probe]]` and `[[action]]`: proving that the node's other TLS endpoints picked up new
//! material (`probe`), and restarting or signalling the components that cannot (`action`).

mod action;
mod probe;

pub(crate) use self::{
    action::{parse_actions, parse_locks, RawAction, RawLocks},
    probe::{parse_probes, RawProbe},
};
pub use self::{
    action::{
        ActionCommand, ActionConfig, ActionLock, ActionTrigger, LocksSettings, SignalTarget,
        DEFAULT_LEASE_DURATION, DEFAULT_LOCK_NAMESPACE, DEFAULT_LOCK_WAIT, LOCK_LEASE_PREFIX,
    },
    probe::{
        ProbeCheck, ProbeConfig, ProbeRequest, DEFAULT_DEADLINE, DEFAULT_HTTP_REQUEST,
        DEFAULT_INTERVAL, DEFAULT_JWKS_REQUEST, SELF_SUBJECT_REVIEW_BODY,
    },
};
use super::{BundleConfig, BundleKind};

fn kind_of(bundles: &[BundleConfig], name: &str) -> Option<BundleKind> {
    bundles.iter().find(|b| b.name == name).map(|b| b.kind)
}

#[cfg(test)]
mod tests;
