//! `[[probe]]` and `[[action]]`: proving that the node's other TLS endpoints picked up new
//! material (`probe`), and restarting or signalling the components that cannot (`action`).

mod action;
mod probe;

#[cfg(test)]
pub(crate) use self::{
    action::DEFAULT_LOCK_WAIT,
    probe::{DEFAULT_DEADLINE, DEFAULT_JWKS_REQUEST, SELF_SUBJECT_REVIEW_BODY},
};
pub(crate) use self::{
    action::{parse_actions, parse_locks, RawAction, RawLocks},
    probe::{parse_probes, RawProbe},
};
pub(crate) use self::{
    action::{ActionCommand, ActionConfig, ActionLock, ActionTrigger, LocksSettings, SignalTarget},
    probe::{ProbeCheck, ProbeConfig, ProbeRequest},
};
use super::{BundleConfig, BundleKind};

fn kind_of(bundles: &[BundleConfig], name: &str) -> Option<BundleKind> {
    bundles.iter().find(|b| b.name == name).map(|b| b.kind)
}

#[cfg(test)]
mod tests;
