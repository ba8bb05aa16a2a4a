//! `[[probe]]` and `[[action]]`: proving that the node's other TLS endpoints picked up new
//! material, and restarting or signalling the components that cannot.

use std::{path::PathBuf, time::Duration};

use serde::Deserialize;
use toml::Spanned;

use super::{bounds, BundleConfig, BundleKind, ConfigError, Source};

/// Default time an endpoint gets to serve a new generation.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(60);
/// Default steady-state check period.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);

/// One endpoint that must serve (or, for a ca bundle, trust) a bundle's current generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeConfig {
    /// Unique name (records, metrics).
    pub name: String,
    /// `host:port` to handshake with.
    pub endpoint: String,
    /// SNI sent in the handshake.
    pub server_name: String,
    /// The bundle whose current generation the endpoint must reflect. A server/client bundle: the
    /// endpoint serves its leaf. A ca bundle: the endpoint accepts a client certificate issued by
    /// it (from `client_bundle`).
    pub bundle: String,
    /// A client bundle presented in the handshake (endpoints that demand a client certificate),
    /// or a kubeconfig bundle, whose embedded client certificate is presented (kubeadm's
    /// `admin.conf` identity may read what `apiserver-kubelet-client` may not, such as the JWKS).
    pub client_bundle: Option<String>,
    /// After a new generation: how long the endpoint has before it is reported stale.
    pub deadline: Duration,
    /// Steady-state check period (catches "renewed on disk, never reloaded").
    pub interval: Duration,
    /// What the probe does after the handshake (`check = "tls" | "http" | "jwks"`).
    pub check: ProbeCheck,
    /// `bearer_token_file`: a file whose content is sent as `Authorization: Bearer …` with the
    /// probe's HTTP request (`check = "http"` or `"jwks"`). Read again at every check, because a
    /// kubelet-projected ServiceAccount token is rotated in place: a pod's own token is the
    /// least-privileged identity that may read the API server's JWKS. Only the path is kept here;
    /// the token is never logged, recorded or shown.
    pub bearer_token_file: Option<PathBuf>,
}

/// How a probe judges an endpoint. The TLS handshake alone is right for servers that verify a
/// client certificate in the handshake (etcd: `tls.RequireAndVerifyClientCert`); Kubernetes
/// servers (kube-apiserver, kube-controller-manager, kube-scheduler, the kubelet) accept any client
/// certificate there (`tls.RequestClientCert`) and refuse it per HTTP request with 401, so their
/// trust can only be seen in an HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ProbeCheck {
    /// `check = "tls"` (default): the served leaf, and a client certificate refused in (or right
    /// after) the handshake.
    #[default]
    Tls,
    /// `check = "http"`: the TLS judgement of the leaf, then one HTTP/1.1 request over the same
    /// mTLS connection. 401 = the client certificate is not trusted; 200/201/204/403 = trusted;
    /// anything else, or no answer = unknown (retried, never converged).
    Http(ProbeRequest),
    /// `check = "jwks"` (sa-keys bundles only): read the API server's JSON Web Key Set and require
    /// every key id of the bundle's current generation in it.
    Jwks(ProbeRequest),
}

impl ProbeCheck {
    /// The configured word (`tls`, `http`, `jwks`), for messages.
    pub fn name(&self) -> &'static str {
        match self {
            ProbeCheck::Tls => "tls",
            ProbeCheck::Http(_) => "http",
            ProbeCheck::Jwks(_) => "jwks",
        }
    }

    /// The HTTP request the check sends, if any.
    pub fn request(&self) -> Option<&ProbeRequest> {
        match self {
            ProbeCheck::Tls => None,
            ProbeCheck::Http(r) | ProbeCheck::Jwks(r) => Some(r),
        }
    }
}

/// Default `request` of `check = "http"`: every Kubernetes server answers it, and
/// controller-manager and scheduler authenticate it without an authorization step (it is in their
/// `AlwaysAllowPaths`).
pub const DEFAULT_HTTP_REQUEST: &str = "GET /healthz";
/// Default `request` of `check = "jwks"`: kube-apiserver's service-account issuer key set.
pub const DEFAULT_JWKS_REQUEST: &str = "GET /openid/v1/jwks";
/// The path suffix that makes a POST a SelfSubjectReview (body added automatically).
const SELF_SUBJECT_REVIEWS: &str = "/selfsubjectreviews";
/// The body of a SelfSubjectReview: the API server answers 201 with the user the client
/// certificate authenticated as.
pub const SELF_SUBJECT_REVIEW_BODY: &str =
    r#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#;

/// `request = "METHOD /path"`: what an `http` or `jwks` probe sends. A `POST` to a path ending in
/// `/selfsubjectreviews` (e.g. `/apis/authentication.k8s.io/v1/selfsubjectreviews`) is sent with
/// a SelfSubjectReview body and `Content-Type: application/json`; every other request has no body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeRequest {
    /// Upper-case method token (`GET`, `POST`).
    pub method: String,
    /// Absolute path with an optional query (`/healthz`, `/livez?verbose`).
    pub path: String,
}

impl ProbeRequest {
    /// Parses `"METHOD /path"`; the error says what is wrong.
    pub fn parse(text: &str) -> Result<ProbeRequest, String> {
        let mut words = text.split_whitespace();
        let (Some(method), Some(path), None) = (words.next(), words.next(), words.next()) else {
            return Err(format!(
                "{text:?} is not \"METHOD /path\" (e.g. \"GET /healthz\")"
            ));
        };
        if !method.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(format!(
                "{method:?} is not an HTTP method in upper case (GET, POST, ...)"
            ));
        }
        if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_control() || b == b'#') {
            return Err(format!(
                "{path:?} is not an absolute path (it starts with /, no fragment)"
            ));
        }
        Ok(ProbeRequest {
            method: method.to_string(),
            path: path.to_string(),
        })
    }

    /// Whether this is a SelfSubjectReview (its answer names the authenticated user).
    pub fn is_self_subject_review(&self) -> bool {
        self.method == "POST"
            && self
                .path
                .split(['?', '#'])
                .next()
                .is_some_and(|p| p.trim_end_matches('/').ends_with(SELF_SUBJECT_REVIEWS))
    }

    /// The body sent with the request and its content type: a SelfSubjectReview for a POST to
    /// `…/selfsubjectreviews`, else none.
    pub fn body(&self) -> Option<(&'static str, &'static [u8])> {
        self.is_self_subject_review()
            .then_some(("application/json", SELF_SUBJECT_REVIEW_BODY.as_bytes()))
    }
}

impl std::fmt::Display for ProbeRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, self.path)
    }
}

/// When an action runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActionTrigger {
    /// A probe of the bundle reported the endpoint stale at its deadline.
    Stale,
    /// Right after the bundle got a new (validated) generation.
    Accepted,
}

/// Which process a signal goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignalTarget {
    /// The pid written in this file.
    Pidfile(PathBuf),
    /// Every process whose executable's file name is exactly this.
    Process(String),
}

/// What an action does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionCommand {
    /// Run this argv (no shell).
    Exec(Vec<String>),
    /// Send this signal (number) to the target.
    Signal {
        /// Signal name as configured (`HUP`), for records.
        name: String,
        /// Its number.
        number: i32,
        /// The receiver.
        target: SignalTarget,
    },
}

/// A reload action for a component that cannot reload by itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionConfig {
    /// Optional name (records, metrics; a config file overrides a profile's action by name).
    pub name: Option<String>,
    /// The bundle it reacts to.
    pub bundle: String,
    /// When.
    pub on: ActionTrigger,
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
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(600);

/// `lock = "NAME"`: the action runs only while this node holds the Lease
/// `certreload-action-NAME` (coordination.k8s.io/v1), from before the command until every probe
/// of the bundle converged (or its deadline passed). Actions of the same lock on other nodes wait,
/// so a CA rotation seen by every control-plane node restarts one etcd or kube-apiserver at a time
/// instead of all of them at once (quorum, API availability).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionLock {
    /// The lock's name (`kube-apiserver`, `etcd`): actions with the same name exclude each other
    /// cluster-wide.
    pub name: String,
    /// How long a run waits for the lock (held elsewhere, or no API server); then it is skipped
    /// and audited, never run unlocked.
    pub wait: Duration,
}

/// `[locks]`: where action locks (Leases) live and how long a hold lasts unrenewed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocksSettings {
    /// Namespace of the Leases (default `certreload`, the DaemonSet's: its Role grants them).
    pub namespace: String,
    /// `leaseDurationSeconds`: how long another node waits for a holder that stopped renewing.
    pub lease_duration: Duration,
}

/// Default `[locks] namespace`.
pub const DEFAULT_LOCK_NAMESPACE: &str = "certreload";
/// Default `[locks] lease_duration`.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(30);

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
pub const LOCK_LEASE_PREFIX: &str = "certreload-action-";

impl ActionLock {
    /// The Lease that implements the lock.
    pub fn lease_name(&self) -> String {
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
    pub fn id(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("{}#{}", self.bundle, self.line))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProbe {
    name: String,
    endpoint: String,
    server_name: Option<String>,
    bundle: String,
    client_bundle: Option<String>,
    deadline: Option<Spanned<String>>,
    interval: Option<Spanned<String>>,
    check: Option<Spanned<String>>,
    request: Option<Spanned<String>>,
    bearer_token_file: Option<Spanned<PathBuf>>,
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

fn kind_of(bundles: &[BundleConfig], name: &str) -> Option<BundleKind> {
    bundles.iter().find(|b| b.name == name).map(|b| b.kind)
}

pub(crate) fn parse_probes(
    src: &Source<'_>,
    raw: &[Spanned<RawProbe>],
    bundles: &[BundleConfig],
) -> Result<Vec<ProbeConfig>, ConfigError> {
    let mut out: Vec<ProbeConfig> = Vec::new();
    for spanned in raw {
        let offset = spanned.span().start;
        let p = spanned.get_ref();
        let field = |f: &str| format!("probe[{}].{f}", p.name);
        if out.iter().any(|o| o.name == p.name) {
            return Err(src.invalid(offset, field("name"), "duplicate probe name"));
        }
        out.push(parse_probe(src, offset, p, bundles, &field)?);
    }
    Ok(out)
}

/// One probe at `offset`: its endpoint, bundles, check, timing and token.
fn parse_probe(
    src: &Source<'_>,
    offset: usize,
    p: &RawProbe,
    bundles: &[BundleConfig],
    field: &dyn Fn(&str) -> String,
) -> Result<ProbeConfig, ConfigError> {
    let host = endpoint_host(&p.endpoint).map_err(|m| src.invalid(offset, field("endpoint"), m))?;
    let kind = kind_of(bundles, &p.bundle).ok_or_else(|| {
        src.invalid(
            offset,
            field("bundle"),
            format!("no bundle named {:?}", p.bundle),
        )
    })?;
    let check = parse_check(src, offset, p, kind, field)?;
    check_client_bundle(p, kind, bundles)
        .map_err(|m| src.invalid(offset, field("client_bundle"), m))?;
    let duration = |v: &Option<Spanned<String>>,
                    name: &str,
                    default: Duration,
                    range: &bounds::Bounds<Duration>| match v {
        Some(v) => src.duration_in(v, &field(name), range),
        None => Ok(default),
    };
    let interval = duration(
        &p.interval,
        "interval",
        DEFAULT_INTERVAL,
        &bounds::PROBE_INTERVAL,
    )?;
    let bearer_token_file = parse_bearer(src, p, &check, field)?;
    Ok(ProbeConfig {
        name: p.name.clone(),
        endpoint: p.endpoint.clone(),
        server_name: p
            .server_name
            .clone()
            .unwrap_or_else(|| host.trim_matches(['[', ']']).to_string()),
        bundle: p.bundle.clone(),
        client_bundle: p.client_bundle.clone(),
        deadline: duration(
            &p.deadline,
            "deadline",
            DEFAULT_DEADLINE,
            &bounds::PROBE_DEADLINE,
        )?,
        interval,
        check,
        bearer_token_file,
    })
}

/// The host of a `host:port` endpoint, or what is wrong with it.
fn endpoint_host(endpoint: &str) -> Result<&str, String> {
    let Some((host, port)) = endpoint.rsplit_once(':') else {
        return Err("expected host:port".into());
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(format!("{endpoint:?} is not host:port"));
    }
    Ok(host)
}

/// `client_bundle`: a client (or kubeconfig) bundle, required when the probed bundle is a CA.
fn check_client_bundle(
    p: &RawProbe,
    kind: BundleKind,
    bundles: &[BundleConfig],
) -> Result<(), String> {
    if let Some(c) = &p.client_bundle {
        if !matches!(
            kind_of(bundles, c),
            Some(BundleKind::Client | BundleKind::Kubeconfig)
        ) {
            return Err(format!(
                "{c:?} is not a client bundle (kind = \"client\" or \"kubeconfig\")"
            ));
        }
    }
    if kind == BundleKind::Ca && p.client_bundle.is_none() {
        return Err("a probe of a ca bundle checks that the endpoint trusts it: it needs a client bundle issued by that CA".into());
    }
    Ok(())
}

/// `bearer_token_file`: only with a check that sends a request, and not empty.
fn parse_bearer(
    src: &Source<'_>,
    p: &RawProbe,
    check: &ProbeCheck,
    field: &dyn Fn(&str) -> String,
) -> Result<Option<PathBuf>, ConfigError> {
    match &p.bearer_token_file {
        None => Ok(None),
        Some(f) if check.request().is_none() => Err(src.invalid(
            f.span().start,
            field("bearer_token_file"),
            "a bearer token is sent with an HTTP request: check = \"http\" or \"jwks\"",
        )),
        Some(f) if f.get_ref().as_os_str().is_empty() => {
            Err(src.invalid(f.span().start, field("bearer_token_file"), "empty path"))
        }
        Some(f) => Ok(Some(f.get_ref().clone())),
    }
}

/// `check` and `request` of one probe, checked against its bundle's kind.
fn parse_check(
    src: &Source<'_>,
    offset: usize,
    p: &RawProbe,
    kind: BundleKind,
    field: &dyn Fn(&str) -> String,
) -> Result<ProbeCheck, ConfigError> {
    let (word, word_at) = match &p.check {
        Some(c) => (c.get_ref().as_str(), c.span().start),
        None => ("tls", offset),
    };
    let request = |default: &str| match &p.request {
        Some(r) => ProbeRequest::parse(r.get_ref())
            .map_err(|m| src.invalid(r.span().start, field("request"), m)),
        None => Ok(ProbeRequest::parse(default).expect("the default request parses")),
    };
    let check = match word {
        "tls" => {
            if let Some(r) = &p.request {
                return Err(src.invalid(
                    r.span().start,
                    field("request"),
                    "a request is sent only by check = \"http\" or \"jwks\"",
                ));
            }
            ProbeCheck::Tls
        }
        "http" => ProbeCheck::Http(request(DEFAULT_HTTP_REQUEST)?),
        "jwks" => ProbeCheck::Jwks(request(DEFAULT_JWKS_REQUEST)?),
        other => {
            return Err(src.invalid(
                word_at,
                field("check"),
                format!("{other:?} is not one of \"tls\", \"http\", \"jwks\""),
            ))
        }
    };
    match (&check, kind) {
        (ProbeCheck::Jwks(_), BundleKind::SaKeys) => {}
        (ProbeCheck::Jwks(_), _) => {
            return Err(src.invalid(
                word_at,
                field("check"),
                format!(
                    "check = \"jwks\" compares an API server's key ids with an sa-keys bundle; {:?} is not one",
                    p.bundle
                ),
            ))
        }
        (_, BundleKind::SaKeys) => {
            return Err(src.invalid(
                word_at,
                field("check"),
                "an sa-keys bundle is not served over TLS: probe the API server's accepted keys with check = \"jwks\"",
            ))
        }
        // A kubeconfig's embedded client certificate is presented, never served: as the probed
        // bundle every check would compare it with a server's leaf and report stale forever.
        (_, BundleKind::Kubeconfig) => {
            return Err(src.invalid(
                word_at,
                field("bundle"),
                format!(
                    "{:?} is a kubeconfig bundle: its client certificate is not served by an endpoint; use it as client_bundle",
                    p.bundle
                ),
            ))
        }
        _ => {}
    }
    Ok(check)
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

pub(crate) fn parse_actions(
    src: &Source<'_>,
    raw: &[Spanned<RawAction>],
    bundles: &[BundleConfig],
) -> Result<Vec<ActionConfig>, ConfigError> {
    let mut out = Vec::new();
    for spanned in raw {
        if let Some(action) = parse_action(src, spanned.span().start, spanned.get_ref(), bundles)? {
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
) -> Result<Option<ActionConfig>, ConfigError> {
    let field = |f: &str| format!("action[{}].{f}", a.name.as_deref().unwrap_or(&a.bundle));
    if kind_of(bundles, &a.bundle).is_none() {
        return Err(src.invalid(
            offset,
            field("bundle"),
            format!("no bundle named {:?}", a.bundle),
        ));
    }
    let command = parse_command(a).map_err(|(f, m)| src.invalid(offset, field(f), m))?;
    let duration = |v: &Option<Spanned<String>>,
                    name: &str,
                    default: Duration,
                    range: &bounds::Bounds<Duration>| match v {
        Some(v) => src.duration_in(v, &field(name), range),
        None => Ok(default),
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::{ProbeCheck, ProbeRequest, SELF_SUBJECT_REVIEW_BODY};
    use crate::config::{ActionCommand, Config, ConfigError, SignalTarget};

    const BUNDLES: &str = r#"
[[bundle]]
name = "srv"
kind = "server"
cert = "/c"
key = "/k"
[[bundle]]
name = "cli"
kind = "client"
cert = "/c2"
key = "/k2"
[[bundle]]
name = "ca"
kind = "ca"
cert = "/ca"
[[bundle]]
name = "sa"
kind = "sa-keys"
private_key = "/sa.key"
public_keys = ["/sa.pub"]
[[bundle]]
name = "admin-conf"
kind = "kubeconfig"
file = "/admin.conf"
"#;

    fn parse(extra: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("t.toml"), &format!("{BUNDLES}{extra}"))
    }

    fn error(extra: &str) -> String {
        parse(extra).expect_err("must be refused").to_string()
    }

    #[test]
    fn probes_and_actions_parse_with_defaults() {
        let c = parse(
            r#"
[[probe]]
name = "api"
endpoint = "127.0.0.1:6443"
bundle = "srv"
[[action]]
bundle = "ca"
on = "stale"
signal = "SIGHUP"
process = "etcd"
"#,
        )
        .expect("valid");
        assert_eq!(c.probes[0].server_name, "127.0.0.1");
        assert_eq!(c.probes[0].deadline, super::DEFAULT_DEADLINE);
        assert!(matches!(
            &c.actions[0].command,
            ActionCommand::Signal { name, target: SignalTarget::Process(p), .. } if name == "HUP" && p == "etcd"
        ));
    }

    #[test]
    fn bad_probes_and_actions_name_the_field_and_line() {
        let e = error("[[probe]]\nname = \"x\"\nendpoint = \"nohostport\"\nbundle = \"srv\"\n");
        assert!(
            e.contains("probe[x].endpoint") && e.contains("t.toml:"),
            "{e}"
        );
        let e = error("[[probe]]\nname = \"x\"\nendpoint = \"h:1\"\nbundle = \"ca\"\n");
        assert!(e.contains("probe[x].client_bundle"), "{e}");
        let e = error("[[probe]]\nname = \"x\"\nendpoint = \"h:1\"\nbundle = \"srv\"\nclient_bundle = \"srv\"\n");
        assert!(e.contains("is not a client bundle"), "{e}");
        let e = error("[[probe]]\nname = \"x\"\nendpoint = \"h:1\"\nbundle = \"admin-conf\"\n");
        assert!(
            e.contains("probe[x].bundle") && e.contains("use it as client_bundle"),
            "{e}"
        );
        let e = error("[[action]]\nbundle = \"ca\"\non = \"stale\"\n");
        assert!(e.contains("action[ca].exec"), "{e}");
        let e = error(
            "[[action]]\nbundle = \"ca\"\non = \"stale\"\nsignal = \"KILLALL\"\npidfile = \"/p\"\n",
        );
        assert!(e.contains("action[ca].signal"), "{e}");
        let e = error("[[action]]\nbundle = \"ca\"\non = \"stale\"\nsignal = \"HUP\"\n");
        assert!(e.contains("pidfile or process"), "{e}");
        let e = error("[[action]]\nbundle = \"nope\"\non = \"accepted\"\nexec = [\"/bin/true\"]\n");
        assert!(e.contains("no bundle named"), "{e}");
        let e = error("[[action]]\nbundle = \"ca\"\non = \"sometimes\"\nexec = [\"/bin/true\"]\n");
        assert!(e.contains("sometimes"), "{e}");
    }

    #[test]
    fn an_action_lock_names_its_lease_and_defaults_its_wait() {
        let c = parse(
            "[[action]]\nbundle = \"srv\"\non = \"accepted\"\nexec = [\"/bin/true\"]\nlock = \"kube-apiserver\"\n[[action]]\nbundle = \"srv\"\non = \"stale\"\nexec = [\"/bin/true\"]\nlock = \"etcd\"\nlock_wait = \"90s\"\n[[action]]\nbundle = \"srv\"\non = \"stale\"\nexec = [\"/bin/true\"]\n",
        )
        .expect("valid");
        let lock = c.actions[0].lock.as_ref().expect("lock");
        assert_eq!(lock.lease_name(), "certreload-action-kube-apiserver");
        assert_eq!(lock.wait, super::DEFAULT_LOCK_WAIT);
        let lock = c.actions[1].lock.as_ref().expect("lock");
        assert_eq!(
            (lock.name.as_str(), lock.wait),
            ("etcd", std::time::Duration::from_secs(90))
        );
        assert_eq!(c.actions[2].lock, None);
    }

    #[test]
    fn locks_section_defaults_and_refusals() {
        let c = parse("").expect("valid");
        assert_eq!(c.locks, super::LocksSettings::default());
        assert_eq!(c.locks.namespace, "certreload");
        let c = parse("[locks]\nnamespace = \"kube-system\"\nlease_duration = \"15s\"\n")
            .expect("valid");
        assert_eq!(c.locks.namespace, "kube-system");
        assert_eq!(c.locks.lease_duration, std::time::Duration::from_secs(15));
        for (extra, field) in [
            ("[locks]\nnamespace = \"Kube_System\"\n", "locks.namespace"),
            ("[locks]\nlease_duration = \"1s\"\n", "locks.lease_duration"),
            (
                "[locks]\nlease_duration = \"3500ms\"\n",
                "locks.lease_duration",
            ),
        ] {
            let e = error(extra);
            let line = line_of(extra, field.trim_start_matches("locks."));
            assert!(
                e.starts_with(&format!("t.toml:{line}: {field}: ")),
                "expected t.toml:{line}: {field}: …, got {e}"
            );
        }
    }

    #[test]
    fn bad_locks_name_the_field_and_line() {
        let head = "[[action]]\nbundle = \"srv\"\non = \"stale\"\nexec = [\"/bin/true\"]\n";
        for (extra, at, field, message) in [
            (
                "lock = \"Kube_APIServer\"\n",
                "lock = ",
                "action[srv].lock",
                "lower-case",
            ),
            (
                "lock = \"etcd-\"\n",
                "lock = ",
                "action[srv].lock",
                "ends with",
            ),
            ("lock = \"\"\n", "lock = ", "action[srv].lock", "empty"),
            (
                "lock_wait = \"1m\"\n",
                "lock_wait = ",
                "action[srv].lock_wait",
                "goes with lock",
            ),
            (
                "lock = \"etcd\"\nlock_wait = \"soon\"\n",
                "lock_wait = ",
                "action[srv].lock_wait",
                "",
            ),
        ] {
            let text = format!("{head}{extra}");
            let e = error(&text);
            let line = line_of(&text, at);
            assert!(
                e.starts_with(&format!("t.toml:{line}: {field}: ")) && e.contains(message),
                "expected t.toml:{line}: {field}: …{message}…, got {e}"
            );
        }
        let long = "a".repeat(240);
        let e = error(&format!("{head}lock = \"{long}\"\n"));
        assert!(e.contains("too long"), "{e}");
    }

    /// The line of `needle` in the parsed text (BUNDLES + extra), 1-based.
    fn line_of(extra: &str, needle: &str) -> usize {
        let text = format!("{BUNDLES}{extra}");
        let at = text.find(needle).expect("needle in the text");
        text[..at].matches('\n').count() + 1
    }

    #[test]
    fn check_defaults_to_tls_and_http_and_jwks_get_their_default_requests() {
        let c = parse(
            r#"
[[probe]]
name = "plain"
endpoint = "127.0.0.1:2379"
bundle = "srv"
[[probe]]
name = "kcm"
endpoint = "127.0.0.1:10257"
bundle = "ca"
client_bundle = "cli"
check = "http"
[[probe]]
name = "api"
endpoint = "127.0.0.1:6443"
bundle = "ca"
client_bundle = "cli"
check = "http"
request = "POST /apis/authentication.k8s.io/v1/selfsubjectreviews"
[[probe]]
name = "keys"
endpoint = "127.0.0.1:6443"
bundle = "sa"
check = "jwks"
[[probe]]
name = "keys-as-admin"
endpoint = "127.0.0.1:6443"
bundle = "sa"
client_bundle = "admin-conf"
check = "jwks"
"#,
        )
        .expect("valid");
        assert_eq!(c.probes[4].client_bundle.as_deref(), Some("admin-conf"));
        assert_eq!(c.probes[0].check, ProbeCheck::Tls);
        let get = |t: &str| ProbeRequest::parse(t).expect("request");
        assert_eq!(c.probes[1].check, ProbeCheck::Http(get("GET /healthz")));
        assert_eq!(
            c.probes[2].check,
            ProbeCheck::Http(get(
                "POST /apis/authentication.k8s.io/v1/selfsubjectreviews"
            ))
        );
        assert_eq!(
            c.probes[3].check,
            ProbeCheck::Jwks(get("GET /openid/v1/jwks"))
        );
        assert_eq!(c.probes[3].client_bundle, None, "jwks may go anonymous");
    }

    #[test]
    fn a_bearer_token_file_goes_with_an_http_request_only() {
        let c = parse(
            r#"
[[probe]]
name = "keys-as-pod"
endpoint = "127.0.0.1:6443"
bundle = "sa"
check = "jwks"
bearer_token_file = "/var/run/secrets/kubernetes.io/serviceaccount/token"
[[probe]]
name = "healthz"
endpoint = "127.0.0.1:10257"
bundle = "srv"
check = "http"
bearer_token_file = "/run/token"
[[probe]]
name = "keys"
endpoint = "127.0.0.1:6443"
bundle = "sa"
check = "jwks"
"#,
        )
        .expect("valid");
        assert_eq!(
            c.probes[0].bearer_token_file.as_deref(),
            Some(Path::new(
                "/var/run/secrets/kubernetes.io/serviceaccount/token"
            ))
        );
        assert_eq!(
            c.probes[1].bearer_token_file.as_deref(),
            Some(Path::new("/run/token"))
        );
        assert_eq!(c.probes[2].bearer_token_file, None);
        for (extra, message) in [
            (
                "[[probe]]\nname = \"x\"\nendpoint = \"h:1\"\nbundle = \"srv\"\nbearer_token_file = \"/t\"\n",
                "check = \"http\" or \"jwks\"",
            ),
            (
                "[[probe]]\nname = \"x\"\nendpoint = \"h:1\"\nbundle = \"sa\"\ncheck = \"jwks\"\nbearer_token_file = \"\"\n",
                "empty path",
            ),
        ] {
            let e = error(extra);
            let line = line_of(extra, "bearer_token_file");
            assert!(
                e.starts_with(&format!("t.toml:{line}: probe[x].bearer_token_file: "))
                    && e.contains(message),
                "expected t.toml:{line}: probe[x].bearer_token_file: …{message}…, got {e}"
            );
        }
    }

    #[test]
    fn a_post_to_selfsubjectreviews_carries_the_review_and_nothing_else_has_a_body() {
        let ssr = ProbeRequest::parse("POST /apis/authentication.k8s.io/v1/selfsubjectreviews")
            .expect("request");
        assert_eq!(
            ssr.body(),
            Some(("application/json", SELF_SUBJECT_REVIEW_BODY.as_bytes()))
        );
        let with_query =
            ProbeRequest::parse("POST /apis/authentication.k8s.io/v1beta1/selfsubjectreviews?x=1")
                .expect("request");
        assert!(with_query.is_self_subject_review());
        for plain in [
            "GET /apis/authentication.k8s.io/v1/selfsubjectreviews",
            "POST /healthz",
            "GET /healthz",
            "POST /selfsubjectreviewsx",
        ] {
            let r = ProbeRequest::parse(plain).expect("request");
            assert_eq!(r.body(), None, "{plain}");
        }
        assert_eq!(
            ssr.to_string(),
            "POST /apis/authentication.k8s.io/v1/selfsubjectreviews"
        );
    }

    #[test]
    fn bad_check_and_request_combinations_name_field_and_line() {
        let cases: [(&str, &str, &str, &str); 8] = [
            (
                "[[probe]]\nname = \"x\"\nendpoint = \"h:1\"\nbundle = \"srv\"\ncheck = \"h2\"\n",
                "check = \"h2\"",
                "probe[x].check",
                "is not one of",
            ),
            (
                "[[probe]]\nname = \"x\"\nendpoint = \"h:1\"\nbundle = \"srv\"\ncheck = \"jwks\"\n",
                "check = \"jwks\"",
                "probe[x].check",
                "sa-keys",
            ),
            (
                "[[probe]]\nname = \"x\"\nendpoint = \"h:1\"\nbundle = \"sa\"\n",
                "[[probe]]",
                "probe[x].check",
                "with check = \"jwks\"",
            ),
            (
                "[[probe]]\nname = \"x\"\nendpoint = \"h:1\"\nbundle = \"sa\"\ncheck = \"http\"\n",
                "check = \"http\"",
                "probe[x].check",
                "not served over TLS",
            ),
            (
                "[[probe]]\nname = \"x\"\nendpoint = \"h:1\"\nbundle = \"srv\"\nrequest = \"GET /healthz\"\n",
                "request = ",
                "probe[x].request",
                "only by check",
            ),
            (
                "[[probe]]\nname = \"x\"\nendpoint = \"h:1\"\nbundle = \"srv\"\ncheck = \"http\"\nrequest = \"/healthz\"\n",
                "request = ",
                "probe[x].request",
                "METHOD /path",
            ),
            (
                "[[probe]]\nname = \"x\"\nendpoint = \"h:1\"\nbundle = \"srv\"\ncheck = \"http\"\nrequest = \"get healthz\"\n",
                "request = ",
                "probe[x].request",
                "upper case",
            ),
            (
                "[[probe]]\nname = \"x\"\nendpoint = \"h:1\"\nbundle = \"ca\"\ncheck = \"http\"\n",
                "[[probe]]",
                "probe[x].client_bundle",
                "needs a client bundle",
            ),
        ];
        for (extra, at, field, message) in cases {
            let e = error(extra);
            let line = line_of(extra, at);
            assert!(
                e.starts_with(&format!("t.toml:{line}: {field}: ")) && e.contains(message),
                "expected t.toml:{line}: {field}: …{message}…, got {e}"
            );
        }
        let e = error("[[probe]]\nname = \"x\"\nendpoint = \"h:1\"\nbundle = \"srv\"\ncheck = \"http\"\nrequest = \"GET /a b\"\n");
        assert!(e.contains("METHOD /path"), "{e}");
        let e = error("[[probe]]\nname = \"x\"\nendpoint = \"h:1\"\nbundle = \"srv\"\ncheck = \"http\"\nrequest = \"GET healthz\"\n");
        assert!(e.contains("absolute path"), "{e}");
        let e = error("[[probe]]\nname = \"x\"\nendpoint = \"h:1\"\nbundle = \"sa\"\ncheck = \"jwks\"\nclient_bundle = \"srv\"\n");
        assert!(e.contains("is not a client bundle"), "{e}");
        let e = error(
            "[[probe]]\nname = \"x\"\nendpoint = \"h:1\"\nbundle = \"srv\"\nchecks = \"http\"\n",
        );
        assert!(e.contains("checks"), "unknown keys stay refused: {e}");
    }
}
