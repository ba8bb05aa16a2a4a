//! `[[action]]` and `[locks]`: restarting or signalling a component that cannot reload, taking
//! turns through a Lease where a cluster-wide restart would lose quorum.

use std::{path::PathBuf, time::Duration};

use serde::Deserialize;
use toml::Spanned;

use super::kind_of;
use crate::config::{
    bounds, pod_tokens::PSEUDO_BUNDLE, BundleConfig, ConfigError, ProbeConfig, Source,
};

/// When an action runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ActionTrigger {
    /// A probe of the bundle reported the endpoint stale at its deadline.
    Stale,
    /// Right after the bundle got a new (validated) generation.
    Accepted,
}

/// Which process a signal goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SignalTarget {
    /// The pid written in this file.
    Pidfile(PathBuf),
    /// Every process whose executable's file name is exactly this.
    Process(String),
}

/// What an action does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ActionCommand {
    /// Run this argv (no shell).
    Exec(Vec<String>),
    /// Send this signal (number) to the target.
    Signal {
        /// Signal name as configured (`HUP`), for records.
        name: String,
        /// Its number.
        number: i32,
        target: SignalTarget,
    },
}

/// A reload action for a component that cannot reload by itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ActionConfig {
    /// Optional name (records, metrics; a config file overrides a profile's action by name).
    pub name: Option<String>,
    /// The bundle it reacts to.
    pub bundle: String,
    /// When.
    pub on: ActionTrigger,
    /// With `on = "stale"`: only this probe's stale verdicts trigger it (`None`: any probe of the
    /// bundle). A controller-manager restart meant for stale `kube-root-ca.crt` ConfigMaps must
    /// not run because a probe of another endpoint of the same CA bundle saw its API server down.
    pub probe: Option<String>,
    /// What.
    pub command: ActionCommand,
    /// A command still running after this is killed (and recorded as timed out).
    pub timeout: Duration,
    /// At most one run per this period; triggers inside it wait for its end (coalesced).
    pub min_interval: Duration,
    /// Line in the config (identifies the action in records: `bundle#line`).
    pub line: usize,
    /// A cluster-wide lock held while the action runs and its bundle's probes converge.
    pub lock: Option<ActionLock>,
}

/// Default `lock_wait`: longer than a restart plus a probe deadline on another node.
pub(crate) const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(600);

/// `lock = "NAME"`: the action runs only while this node holds the Lease
/// `certreload-action-NAME` (coordination.k8s.io/v1), from before the command until every probe
/// of the bundle converged (or its deadline passed). Actions of the same lock on other nodes wait,
/// so a CA rotation seen by every control-plane node restarts one etcd or kube-apiserver at a time
/// instead of all of them at once (quorum, API availability).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ActionLock {
    /// The lock's name (`kube-apiserver`, `etcd`): actions with the same name exclude each other
    /// cluster-wide.
    pub name: String,
    /// How long a run waits for the lock (held elsewhere, or no API server); then it is skipped
    /// and audited, never run unlocked.
    pub wait: Duration,
}

/// `[locks]`: where action locks (Leases) live and how long a hold lasts unrenewed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LocksSettings {
    /// Namespace of the Leases (default `certreload`, the DaemonSet's: its Role grants them).
    pub namespace: String,
    /// `leaseDurationSeconds`: how long another node waits for a holder that stopped renewing.
    pub lease_duration: Duration,
}

/// Default `[locks] namespace`.
pub(crate) const DEFAULT_LOCK_NAMESPACE: &str = "certreload";
/// Default `[locks] lease_duration`.
pub(crate) const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(30);

impl Default for LocksSettings {
    fn default() -> LocksSettings {
        LocksSettings {
            namespace: DEFAULT_LOCK_NAMESPACE.into(),
            lease_duration: DEFAULT_LEASE_DURATION,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLocks {
    namespace: Option<Spanned<String>>,
    lease_duration: Option<Spanned<String>>,
}

pub(crate) fn parse_locks(src: &Source<'_>, raw: &RawLocks) -> Result<LocksSettings, ConfigError> {
    let mut out = LocksSettings::default();
    if let Some(ns) = &raw.namespace {
        let n = ns.get_ref();
        let label = !n.is_empty()
            && n.len() <= 63
            && n.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !n.starts_with('-')
            && !n.ends_with('-');
        if !label {
            return Err(src.invalid(
                ns.span().start,
                "locks.namespace",
                format!(
                    "{n:?} is not a namespace name (lower-case letters, digits, '-'; at most 63)"
                ),
            ));
        }
        out.namespace = n.clone();
    }
    if let Some(d) = &raw.lease_duration {
        out.lease_duration = src.duration_in(d, "locks.lease_duration", &bounds::LEASE_DURATION)?;
        if out.lease_duration.subsec_nanos() != 0 {
            return Err(src.invalid(
                d.span().start,
                "locks.lease_duration",
                "must be whole seconds (leaseDurationSeconds)",
            ));
        }
    }
    Ok(out)
}

/// The prefix of every lock's Lease name (deploy/rbac.yaml lists the names it may update).
pub(crate) const LOCK_LEASE_PREFIX: &str = "certreload-action-";

impl ActionLock {
    /// The Lease that implements the lock.
    pub(crate) fn lease_name(&self) -> String {
        format!("{LOCK_LEASE_PREFIX}{}", self.name)
    }
}

/// Why a lock name is refused, or `None`: the Lease name must be a DNS-1123 subdomain
/// (lower-case alphanumerics, `-`, `.`; alphanumeric at both ends; at most 253 characters).
fn lock_name_problem(name: &str) -> Option<String> {
    let lease = format!("{LOCK_LEASE_PREFIX}{name}");
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    let ends = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if name.is_empty() {
        Some("empty lock name".into())
    } else if !ok_chars || !ends(name.bytes().last()) {
        Some(format!(
            "{name:?}: a lock name makes the Lease name {lease:?}, so it takes lower-case letters, digits, '-' and '.', and ends with a letter or digit"
        ))
    } else if lease.len() > 253 {
        Some(format!("{name:?} is too long for a Lease name"))
    } else {
        None
    }
}

impl ActionConfig {
    /// A stable identifier for records and metrics: the name, else `bundle#line`.
    pub(crate) fn id(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("{}#{}", self.bundle, self.line))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAction {
    name: Option<String>,
    /// `false` keeps a (profile's) action configured but off.
    #[serde(default = "enabled_by_default")]
    enabled: bool,
    bundle: String,
    on: ActionTrigger,
    probe: Option<Spanned<String>>,
    exec: Option<Vec<String>>,
    signal: Option<String>,
    pidfile: Option<PathBuf>,
    process: Option<String>,
    timeout: Option<Spanned<String>>,
    min_interval: Option<Spanned<String>>,
    lock: Option<Spanned<String>>,
    lock_wait: Option<Spanned<String>>,
}

fn enabled_by_default() -> bool {
    true
}

/// Signal names actions may send.
const SIGNALS: [(&str, i32); 6] = [
    ("HUP", libc::SIGHUP),
    ("USR1", libc::SIGUSR1),
    ("USR2", libc::SIGUSR2),
    ("TERM", libc::SIGTERM),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
];

/// Every `[[action]]`; `pod_tokens`: whether `[pod_tokens]` is configured, which is what makes
/// the pseudo-bundle `pod-tokens` a bundle actions may name.
/// `probes`: the configured probes, which a `probe` filter must name.
pub(crate) fn parse_actions(
    src: &Source<'_>,
    raw: &[Spanned<RawAction>],
    bundles: &[BundleConfig],
    probes: &[ProbeConfig],
    pod_tokens: bool,
) -> Result<Vec<ActionConfig>, ConfigError> {
    let mut out = Vec::new();
    for spanned in raw {
        let offset = spanned.span().start;
        let action = spanned.get_ref();
        if let Some(probe) = &action.probe {
            if let Some(problem) = probe_filter_problem(action, probe.get_ref(), probes) {
                let name = action.name.as_deref().unwrap_or(&action.bundle);
                return Err(src.invalid(
                    probe.span().start,
                    format!("action[{name}].probe"),
                    problem,
                ));
            }
        }
        if let Some(action) = parse_action(src, offset, action, bundles, pod_tokens)? {
            out.push(action);
        }
    }
    Ok(out)
}

/// One action at `offset`; `None` when it is disabled (its bundle, command and lock are checked
/// all the same; its timeout and min_interval only once it is enabled).
fn parse_action(
    src: &Source<'_>,
    offset: usize,
    a: &RawAction,
    bundles: &[BundleConfig],
    pod_tokens: bool,
) -> Result<Option<ActionConfig>, ConfigError> {
    let field = |f: &str| format!("action[{}].{f}", a.name.as_deref().unwrap_or(&a.bundle));
    if let Some((f, message)) = bundle_problem(a, bundles, pod_tokens) {
        return Err(src.invalid(offset, field(f), message));
    }
    let command = parse_command(a).map_err(|(f, m)| src.invalid(offset, field(f), m))?;
    let duration = |v: &Option<Spanned<String>>, name: &str, default, range| {
        src.duration_or(v.as_ref(), &field(name), default, range)
    };
    let lock = match (&a.lock, &a.lock_wait) {
        (None, Some(w)) => {
            return Err(src.invalid(
                w.span().start,
                field("lock_wait"),
                "lock_wait goes with lock",
            ))
        }
        (None, None) => None,
        (Some(name), wait) => {
            if let Some(problem) = lock_name_problem(name.get_ref()) {
                return Err(src.invalid(name.span().start, field("lock"), problem));
            }
            Some(ActionLock {
                name: name.get_ref().clone(),
                wait: duration(wait, "lock_wait", DEFAULT_LOCK_WAIT, &bounds::LOCK_WAIT)?,
            })
        }
    };
    if !a.enabled {
        tracing::info!(action = %a.name.as_deref().unwrap_or(&a.bundle), "action configured but disabled (enabled = false)");
        return Ok(None);
    }
    Ok(Some(ActionConfig {
        name: a.name.clone(),
        bundle: a.bundle.clone(),
        on: a.on,
        probe: a.probe.as_ref().map(|p| p.get_ref().clone()),
        command,
        timeout: duration(
            &a.timeout,
            "timeout",
            Duration::from_secs(60),
            &bounds::ACTION_TIMEOUT,
        )?,
        min_interval: duration(
            &a.min_interval,
            "min_interval",
            Duration::from_secs(300),
            &bounds::ACTION_MIN_INTERVAL,
        )?,
        line: src.line(offset),
        lock,
    }))
}

/// Why `probe = "NAME"` cannot filter this action's triggers, or `None`: it goes with
/// `on = "stale"` and names a configured probe of the action's bundle (the pseudo-bundle's only
/// verdicts are its own, probe `pod-tokens`).
fn probe_filter_problem(a: &RawAction, probe: &str, probes: &[ProbeConfig]) -> Option<String> {
    if a.on != ActionTrigger::Stale {
        return Some(
            "probe goes with on = \"stale\" (it names whose stale verdicts run it)".into(),
        );
    }
    if a.bundle == PSEUDO_BUNDLE {
        return (probe != PSEUDO_BUNDLE).then(|| {
            format!("{probe:?}: the only probe of {PSEUDO_BUNDLE:?} is {PSEUDO_BUNDLE:?}")
        });
    }
    match probes.iter().find(|p| p.name == probe) {
        None => Some(format!("no probe named {probe:?}")),
        Some(p) if p.bundle != a.bundle => Some(format!(
            "probe {probe:?} checks bundle {:?}, not this action's {:?}",
            p.bundle, a.bundle
        )),
        Some(_) => None,
    }
}

/// `bundle = "pod-tokens"` without the tracker.
const NEEDS_POD_TOKENS: &str =
    "\"pod-tokens\" is the token tracker's pseudo-bundle: it needs a [pod_tokens] section";
/// `bundle = "pod-tokens"` with `on = "accepted"`.
const ONLY_ON_STALE: &str =
    "\"pod-tokens\" has no generations to accept: its actions run on = \"stale\"";

/// Why the action's `bundle` (and, for the pseudo-bundle, its `on`) cannot be used, with the
/// field at fault; `None` when it can. `pod-tokens` is the token tracker's: it exists only with
/// `[pod_tokens]`, and it has stale notices but no generations to accept.
fn bundle_problem(
    a: &RawAction,
    bundles: &[BundleConfig],
    pod_tokens: bool,
) -> Option<(&'static str, String)> {
    if a.bundle == PSEUDO_BUNDLE {
        return if !pod_tokens {
            Some(("bundle", NEEDS_POD_TOKENS.into()))
        } else if a.on != ActionTrigger::Stale {
            Some(("on", ONLY_ON_STALE.into()))
        } else {
            None
        };
    }
    if kind_of(bundles, &a.bundle).is_none() {
        return Some(("bundle", format!("no bundle named {:?}", a.bundle)));
    }
    None
}

/// `exec`, or `signal` with its target; else the field at fault and why.
fn parse_command(a: &RawAction) -> Result<ActionCommand, (&'static str, String)> {
    match (&a.exec, &a.signal) {
        (Some(_), Some(_)) => Err(("exec", "give exec or signal, not both".into())),
        (None, None) => Err(("exec", "give exec (argv) or signal".into())),
        (Some(argv), None) => {
            if argv.first().is_none_or(|a| a.is_empty()) {
                return Err(("exec", "empty argv".into()));
            }
            if a.pidfile.is_some() || a.process.is_some() {
                return Err(("pidfile", "pidfile/process go with signal, not exec".into()));
            }
            Ok(ActionCommand::Exec(argv.clone()))
        }
        (None, Some(sig)) => parse_signal(a, sig),
    }
}

/// `signal` by name, sent to the process of `pidfile` or named `process`.
fn parse_signal(a: &RawAction, sig: &str) -> Result<ActionCommand, (&'static str, String)> {
    let name = sig.trim().trim_start_matches("SIG").to_ascii_uppercase();
    let number = SIGNALS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| *v)
        .ok_or_else(|| {
            (
                "signal",
                format!("{sig:?} is not one of {:?}", SIGNALS.map(|(n, _)| n)),
            )
        })?;
    let target = match (&a.pidfile, &a.process) {
        (Some(p), None) => SignalTarget::Pidfile(p.clone()),
        (None, Some(p)) if !p.is_empty() && !p.contains('/') => SignalTarget::Process(p.clone()),
        (None, Some(p)) => {
            return Err((
                "process",
                format!("{p:?} must be an executable's file name"),
            ))
        }
        _ => {
            return Err((
                "pidfile",
                "a signal needs exactly one of pidfile or process".into(),
            ))
        }
    };
    Ok(ActionCommand::Signal {
        name,
        number,
        target,
    })
}
