//! One probe's life: after every new generation of its bundle, check the endpoint (backing off)
//! until it reflects that generation or the deadline passes; in between, check every `interval`
//! and audit each change of verdict.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};

use super::{
    http::BearerToken,
    judge::{judge, Outcome, Verdict},
    observe::observe,
    root_ca::RootCaReader,
    StaleNotice,
};
use crate::{
    audit::{append_shared, AuditEvent, SharedAudit},
    config::{converge::ProbeCheck, BundleKind, ProbeConfig},
    reload::generation::{Generation, GenerationStore},
    sync::{or_pending, LockExt},
    telemetry::{Metrics, ProbeLabel},
};

/// First retry delay after a failed check during convergence; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// Longest wait between checks while an endpoint has not converged.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The trigger of steady-state checks (and of re-checks after an inconclusive answer).
const RECHECK: &str = "interval";

/// What a probe needs from the agent.
#[derive(Clone)]
pub(crate) struct ProbeContext {
    /// Generations of every bundle.
    pub store: Arc<GenerationStore>,
    /// Audit trail.
    pub audit: SharedAudit,
    /// Probe gauges.
    pub metrics: Arc<Metrics>,
    /// Stale verdicts, for `on = "stale"` actions.
    pub stale: mpsc::Sender<StaleNotice>,
    /// Latest verdicts, for `/status`.
    pub board: super::ProbeBoard,
    /// Every check's verdict for locked actions, and their requests for a fresh check.
    pub feed: super::settle::ConvergenceFeed,
}

/// A probe's latest check, as `/status` shows it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct ProbeStatus {
    /// Probe name.
    pub name: String,
    /// `host:port`.
    pub endpoint: String,
    /// The bundle it checks.
    pub bundle: String,
    /// The generation checked against.
    pub generation: u64,
    /// Whether the endpoint reflects it.
    pub converged: bool,
    /// What was seen, in words.
    pub observed: String,
    /// SHA-256 of the leaf served.
    pub served_fingerprint: Option<String>,
    /// When (RFC 3339).
    pub checked_at: String,
    /// `check = "root-ca-configmaps"`: the namespaces counted and the stale ones (absent for
    /// every other check, and from an older agent's document).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<super::root_ca::NamespaceTally>,
}

/// A convergence episode: from a new generation (or start-up) until the endpoint reflects it.
struct Episode {
    trigger: &'static str,
    deadline: Instant,
    stale_reported: bool,
    backoff: Duration,
}

impl Episode {
    fn new(trigger: &'static str, deadline: Duration) -> Episode {
        Episode {
            trigger,
            deadline: crate::clock::later(Instant::now(), deadline),
            stale_reported: false,
            backoff: FIRST_BACKOFF,
        }
    }
}

fn seconds_since(g: &Generation) -> f64 {
    SystemTime::now()
        .duration_since(g.accepted_at)
        .unwrap_or_default()
        .as_secs_f64()
}

/// Checks whether the endpoint reflects `target` (and, for a ca bundle, trusts a client certificate
/// issued by it), the way `config.check` says.
async fn check(
    config: &ProbeConfig,
    kind: BundleKind,
    target: &Generation,
    client: Option<&Generation>,
) -> Verdict {
    if kind == BundleKind::Ca {
        // The client certificate must come from the CA being checked, or acceptance proves nothing.
        let issued = client.is_some_and(|c| issued_by(c, target));
        if !issued {
            return Verdict::without_observation(
                Outcome::Stale,
                format!(
                    "client bundle {:?} is not issued by CA generation {} yet",
                    config.client_bundle.as_deref().unwrap_or_default(),
                    target.number
                ),
            );
        }
    }
    // Read at every check: a kubelet-projected token is replaced in place before it expires.
    let bearer = match &config.bearer_token_file {
        None => None,
        Some(path) => match BearerToken::read(path).await {
            Ok(token) => Some(token),
            Err(e) => {
                return Verdict::without_observation(Outcome::Unknown, format!("unknown: {e}"))
            }
        },
    };
    match observe(
        &config.endpoint,
        &config.server_name,
        client,
        config.check.request(),
        bearer.as_ref(),
    )
    .await
    {
        Err(e) => Verdict::without_observation(Outcome::Stale, e.to_string()),
        Ok(observation) => judge(&config.check, kind, target, client.is_some(), observation),
    }
}

/// Whether the client generation's chain verifies to the CA generation.
fn issued_by(client: &Generation, ca: &Generation) -> bool {
    let Ok(verifier) = crate::tls::server_config::client_verifier(ca) else {
        return false;
    };
    let Some((leaf, rest)) = client.material.chain.split_first() else {
        return false;
    };
    verifier
        .verify_client_cert(leaf, rest, rustls_pki_types::UnixTime::now())
        .is_ok()
}

/// The channels that wake a probe before its next scheduled check: a new generation of its bundle
/// or of its client bundle, and a locked action asking for a fresh verdict.
struct Wakers {
    bundle: watch::Receiver<Option<Arc<Generation>>>,
    client: Option<watch::Receiver<Option<Arc<Generation>>>>,
    rechecks: Option<watch::Receiver<u64>>,
}

/// What ended a wait of the probe loop.
enum Wake {
    /// Shutdown, or a channel the probe listens to is gone.
    Stop,
    /// Something changed: an episode may have begun; check at once.
    Changed,
    /// The scheduled check is due.
    Due,
}

/// Where a probe stands between checks: the convergence episode under way, the last verdict it
/// audited (so that only a change of verdict is news), and when it checks next.
struct ProbeState {
    episode: Option<Episode>,
    verdict: Option<bool>,
    next: Instant,
}

/// Runs one probe until `shutdown`.
pub(crate) async fn run(
    config: ProbeConfig,
    kind: BundleKind,
    ctx: ProbeContext,
    mut shutdown: crate::shutdown::Shutdown,
) {
    let Some(mut wakers) = subscribe(&config, &ctx) else {
        return;
    };
    let label = ProbeLabel {
        probe: config.name.clone(),
        bundle: config.bundle.clone(),
    };
    let mut state = ProbeState {
        episode: Some(Episode::new("startup", config.deadline)),
        verdict: None,
        next: Instant::now(),
    };
    // The namespaces' ConfigMaps are read through the Kubernetes API, not from an endpoint.
    let root_ca = match config.check {
        ProbeCheck::RootCaConfigMaps { concurrency } => Some(RootCaReader::new(concurrency)),
        _ => None,
    };
    loop {
        match wait(&config, kind, &mut state, &mut wakers, &mut shutdown).await {
            Wake::Stop => return,
            Wake::Changed => continue,
            Wake::Due => {}
        }
        let Some(target) = ctx.store.current(&config.bundle) else {
            state.next = crate::clock::later(Instant::now(), config.interval);
            continue;
        };
        let client = config
            .client_bundle
            .as_deref()
            .and_then(|c| ctx.store.current(c));
        let began = Instant::now();
        let v = match &root_ca {
            Some(reader) => reader.check(&target).await,
            None => check(&config, kind, &target, client.as_deref()).await,
        };
        let seconds = publish(&ctx, &config, &label, &target, &v, began, &state);
        state.advance(&ctx, &config, &target, seconds, &v);
        // The probe's verdict as the audit and the Events give it (stale past the deadline, or
        // back to stale after converging), for alerts that must not fire within the deadline.
        ctx.metrics
            .probe_stale
            .get_or_create(&label)
            .set(i64::from(state.verdict == Some(false)));
    }
}

/// Subscribes to what wakes the probe, marking the current generations seen: the start-up episode
/// checks them already. `None` when the bundle is unknown to the store.
fn subscribe(config: &ProbeConfig, ctx: &ProbeContext) -> Option<Wakers> {
    let mut bundle = ctx.store.subscribe(&config.bundle)?;
    let mut client = config
        .client_bundle
        .as_deref()
        .and_then(|c| ctx.store.subscribe(c));
    bundle.mark_unchanged();
    if let Some(rx) = client.as_mut() {
        rx.mark_unchanged();
    }
    Some(Wakers {
        bundle,
        client,
        rechecks: ctx.feed.rechecks(&config.bundle),
    })
}

/// Sleeps until the next check is due or something changes, starting the episode the change calls
/// for, so that the loop itself only checks.
async fn wait(
    config: &ProbeConfig,
    kind: BundleKind,
    state: &mut ProbeState,
    wakers: &mut Wakers,
    shutdown: &mut crate::shutdown::Shutdown,
) -> Wake {
    let client_changed = or_pending(wakers.client.as_mut().map(|rx| rx.changed()));
    let recheck = or_pending(wakers.rechecks.as_mut().map(|rx| rx.changed()));
    tokio::select! {
        _ = shutdown.recv() => Wake::Stop,
        r = recheck => {
            if r.is_err() { return Wake::Stop; }
            // A locked action of the bundle ran: its lock waits for this episode's verdict.
            state.episode = Some(Episode::new("action", config.deadline));
            state.next = Instant::now();
            Wake::Changed
        }
        r = wakers.bundle.changed() => {
            if r.is_err() { return Wake::Stop; }
            state.episode = Some(Episode::new("rotation", config.deadline));
            state.next = Instant::now();
            Wake::Changed
        }
        r = client_changed => {
            if r.is_err() { return Wake::Stop; }
            // For a ca bundle the client certificate is the instrument: re-check with it now.
            if kind == BundleKind::Ca && state.episode.is_none() {
                state.episode = Some(Episode::new("rotation", config.deadline));
            }
            state.next = Instant::now();
            Wake::Changed
        }
        _ = tokio::time::sleep_until(state.next) => Wake::Due,
    }
}

/// Hands a check's verdict to everyone who reads it before any decision on it: locked actions (the
/// feed), `/status` (the board) and the gauges. Returns the seconds since `target` was accepted,
/// which the audit record carries too.
fn publish(
    ctx: &ProbeContext,
    config: &ProbeConfig,
    label: &ProbeLabel,
    target: &Generation,
    v: &Verdict,
    began: Instant,
    state: &ProbeState,
) -> f64 {
    ctx.feed.checked(
        &config.name,
        super::settle::Checked {
            generation: target.number,
            converged: v.converged(),
            began,
        },
    );
    let seconds = seconds_since(target);
    ctx.board.lock_or_recover().insert(
        config.name.clone(),
        ProbeStatus {
            name: config.name.clone(),
            endpoint: config.endpoint.clone(),
            bundle: config.bundle.clone(),
            generation: target.number,
            converged: v.converged(),
            observed: v.observed.clone(),
            served_fingerprint: v.fingerprint.clone(),
            checked_at: crate::clock::now_rfc3339(),
            namespaces: v.namespaces.clone(),
        },
    );
    ctx.metrics
        .probe_converged
        .get_or_create(label)
        .set(i64::from(v.converged()));
    if let Some(n) = v.not_after {
        ctx.metrics
            .probe_served_not_after
            .get_or_create(label)
            .set(n);
    }
    if !v.converged() || state.episode.is_some() {
        ctx.metrics
            .probe_seconds_since_change
            .get_or_create(label)
            .set(seconds);
    }
    seconds
}

impl ProbeState {
    /// Decides what a verdict means for the episode (converged, stale at the deadline, keep
    /// checking with backoff), audits it when it is news, and schedules the next check.
    fn advance(
        &mut self,
        ctx: &ProbeContext,
        config: &ProbeConfig,
        target: &Generation,
        seconds: f64,
        v: &Verdict,
    ) {
        let now = Instant::now();
        match self.episode.as_mut() {
            Some(ep) if v.converged() => {
                // A re-check after an inconclusive answer that confirms convergence is no news.
                if !(ep.trigger == RECHECK && self.verdict == Some(true)) {
                    record(ctx, config, target, ep.trigger, seconds, v);
                }
                self.verdict = Some(true);
                self.episode = None;
                self.next = crate::clock::later(now, config.interval);
            }
            Some(ep) => {
                if now >= ep.deadline && !ep.stale_reported {
                    ep.stale_reported = true;
                    self.verdict = Some(false);
                    record(ctx, config, target, ep.trigger, seconds, v);
                }
                // Keep checking: before the deadline never sleep past it; after it, back off.
                self.next = now + ep.backoff;
                if !ep.stale_reported {
                    self.next = self.next.min(ep.deadline);
                }
                ep.backoff = (ep.backoff * 2).min(MAX_BACKOFF.min(config.interval));
            }
            None if v.outcome == Outcome::Unknown && self.verdict == Some(true) => {
                // An inconclusive answer (a 503, a dropped connection) does not overturn a
                // converged endpoint at once: re-check with backoff; stale only if it lasts to
                // the deadline.
                let mut ep = Episode::new(RECHECK, config.deadline);
                self.next = (now + ep.backoff).min(ep.deadline);
                ep.backoff = (ep.backoff * 2).min(MAX_BACKOFF.min(config.interval));
                self.episode = Some(ep);
            }
            None => {
                if self.verdict != Some(v.converged()) {
                    self.verdict = Some(v.converged());
                    record(ctx, config, target, RECHECK, seconds, v);
                }
                self.next = crate::clock::later(now, config.interval);
            }
        }
    }
}

/// Audits a verdict (and hands a stale one to the actions).
fn record(
    ctx: &ProbeContext,
    config: &ProbeConfig,
    target: &Generation,
    trigger: &str,
    seconds: f64,
    v: &Verdict,
) {
    let event = if v.converged() {
        tracing::info!(probe = %config.name, endpoint = %config.endpoint, generation = target.number, trigger, seconds, observed = %v.observed, "endpoint converged");
        AuditEvent::EndpointConverged {
            probe: config.name.clone(),
            endpoint: config.endpoint.clone(),
            generation: target.number,
            trigger: trigger.to_string(),
            seconds,
            served_fingerprint: v.fingerprint.clone(),
        }
    } else {
        tracing::warn!(probe = %config.name, endpoint = %config.endpoint, generation = target.number, trigger, seconds, observed = %v.observed, "endpoint stale");
        let notice = StaleNotice {
            bundle: config.bundle.clone(),
            probe: config.name.clone(),
            generation: target.number,
        };
        if ctx.stale.try_send(notice).is_err() {
            tracing::warn!(probe = %config.name, "stale notice dropped: the action queue is full");
        }
        AuditEvent::EndpointStale {
            probe: config.name.clone(),
            endpoint: config.endpoint.clone(),
            generation: target.number,
            trigger: trigger.to_string(),
            seconds,
            observed: v.observed.clone(),
            served_fingerprint: v.fingerprint.clone(),
        }
    };
    if let Err(e) = append_shared(&ctx.audit, Some(&config.bundle), &event) {
        tracing::error!(error = %e, "cannot audit a probe verdict");
    }
}

#[cfg(test)]
mod tests {
    use std::{path::Path, sync::Arc};

    use rcgen::{CertificateParams, KeyPair};
    use rustls::{
        pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer},
        ServerConfig,
    };
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    use super::*;
    use crate::config::converge::{ProbeCheck, ProbeRequest, DEFAULT_JWKS_REQUEST};
    use crate::material::validate::Material;

    const SECRET: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsifQ.eyJzdWIiOiJwb2QifQ.c2lnbmF0dXJl";
    const KID: &str = "the-new-key-id";

    fn jwks_probe(endpoint: &str, token: &Path) -> ProbeConfig {
        ProbeConfig {
            name: "sa-keys".into(),
            endpoint: endpoint.into(),
            server_name: "localhost".into(),
            bundle: "sa".into(),
            client_bundle: None,
            deadline: Duration::from_secs(60),
            interval: Duration::from_secs(30),
            check: ProbeCheck::Jwks(ProbeRequest::parse(DEFAULT_JWKS_REQUEST).expect("request")),
            bearer_token_file: Some(token.to_path_buf()),
        }
    }

    fn sa_generation() -> Generation {
        Generation {
            number: 2,
            accepted_at: SystemTime::now(),
            material: Material {
                leaf: None,
                chain: vec![],
                key: None,
                cas: vec![],
                ca_der: vec![],
                key_ids: vec![KID.into()],
            },
        }
    }

    /// An API server stand-in: `GET /openid/v1/jwks` answers the key set only to `Bearer SECRET`,
    /// 401 to anything else, one connection after another.
    async fn jwks_server() -> String {
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(vec!["localhost".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_no_client_auth()
                .with_single_cert(
                    vec![cert.der().clone()],
                    PrivateKeyDer::from(PrivatePkcs8KeyDer::from(key.serialize_der())),
                )
                .expect("config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    continue;
                };
                let mut authorized = false;
                let mut reader = BufReader::new(&mut tls);
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).await.unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    authorized |= line == format!("Authorization: Bearer {SECRET}\r\n");
                }
                let answer = if authorized {
                    let body = format!(r#"{{"keys":[{{"kty":"RSA","kid":"{KID}"}}]}}"#);
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n".to_string()
                };
                // The probe under test may hang up first; that is not this server's failure.
                tls.write_all(answer.as_bytes()).await.ok();
                tls.shutdown().await.ok();
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_missing_or_empty_token_file_is_unknown_and_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let token = dir.path().join("token");
        // Nothing listens on the endpoint: the token is read (and refused) before any connection.
        let config = jwks_probe("127.0.0.1:1", &token);
        let v = check(&config, BundleKind::SaKeys, &sa_generation(), None).await;
        assert_eq!(v.outcome, Outcome::Unknown, "{v:?}");
        assert!(v.observed.contains(&token.display().to_string()), "{v:?}");
        std::fs::write(&token, "\n").expect("write");
        let v = check(&config, BundleKind::SaKeys, &sa_generation(), None).await;
        assert_eq!(v.outcome, Outcome::Unknown, "{v:?}");
        assert!(
            v.observed.contains(&token.display().to_string()) && v.observed.contains("empty"),
            "{v:?}"
        );
    }

    #[tokio::test]
    async fn the_token_file_is_read_at_every_check_and_never_shown() {
        let addr = jwks_server().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let token = dir.path().join("token");
        std::fs::write(&token, format!("{SECRET}\n")).expect("write");
        let config = jwks_probe(&addr, &token);
        let v = check(&config, BundleKind::SaKeys, &sa_generation(), None).await;
        assert_eq!(v.outcome, Outcome::Converged, "{v:?}");
        assert!(!format!("{v:?}").contains(SECRET), "{v:?}");

        // The token was replaced (rotated, or revoked): the next check sends the new content,
        // which this server refuses, so the key set is unreadable.
        std::fs::write(&token, "another-token").expect("write");
        let v = check(&config, BundleKind::SaKeys, &sa_generation(), None).await;
        assert_eq!(v.outcome, Outcome::Unknown, "{v:?}");
        assert!(v.observed.contains("401"), "{v:?}");
        assert!(!v.observed.contains("another-token"), "{v:?}");
    }
}
