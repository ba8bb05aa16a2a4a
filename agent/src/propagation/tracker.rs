//! The node's token tracker: which pods on this node hold a projected ServiceAccount token signed
//! by a key that is going away (or already gone), or a `ca.crt` without the current cluster CA.
//!
//! Inputs: the published key set (the follower's `watch` channel), the cluster CA bundle's
//! generations, a rescan timer, and the actions' requests for a fresh check. Each scan reads every
//! token volume ([`super::pods`]), judges each token against the published signing kid and the CA,
//! and
//! - audits `token_stale` on each transition to stale and `token_refreshed` when a stale token is
//!   current again (with the seconds since the change that made it stale);
//! - sends a [`StaleNotice`] for the pseudo-bundle `pod-tokens` once a token has been stale for
//!   `grace`, and again `deadline` after the last notice or action run while still stale, so the
//!   `on = "stale"` actions of `pod-tokens` run (rate-limited and locked by the action itself);
//! - reports the scan to the [`ConvergenceFeed`] as the probe `pod-tokens` (converged: no stale
//!   token), which is what a locked action waits for before it gives its lock back;
//! - publishes the per-token states on the board `/status` and `/metrics` read.
//!
//! The tracker's `epoch` (the generation its notices and verdicts carry) goes up by one on every
//! new published key set and every new cluster-CA generation.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};
use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};

use super::{
    keys::PublishedKeys,
    pods::{self, ScannedToken},
};
use crate::{
    audit::{append_shared, AuditEvent, SharedAudit},
    config::pod_tokens::{PodTokensSettings, PSEUDO_BUNDLE},
    converge::{
        settle::{Checked, ConvergenceFeed},
        StaleNotice,
    },
    reload::generation::{Generation, GenerationStore},
    sync::LockExt,
};

/// The tracker's latest scan, read by `/status` and `/metrics` (`None` before the first scan, or
/// without `[pod_tokens]`).
pub(crate) type PodTokenBoard = Arc<std::sync::Mutex<Option<PodTokensStatus>>>;

/// Why a token is stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StaleReason {
    /// Signed by a key still accepted, but no longer the signing key: it authenticates until the
    /// old key is removed.
    OutgoingKey,
    /// Signed by a key not among the published ones: the API server rejects it.
    UnpublishedKey,
    /// The `ca.crt` beside it lacks a certificate of the cluster CA bundle.
    Ca,
}

impl StaleReason {
    /// The name in records, `/status` and metrics.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            StaleReason::OutgoingKey => "outgoing_key",
            StaleReason::UnpublishedKey => "unpublished_key",
            StaleReason::Ca => "ca",
        }
    }
}

/// One token's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TokenState {
    /// Signed by the published signing key, beside the cluster CA.
    Current,
    /// See [`StaleReason`].
    Stale(StaleReason),
    /// Cannot be judged: nothing published yet, or the token cannot be read (why, in words).
    Unknown(String),
}

impl TokenState {
    /// `current`, `stale` or `unknown`: the metric's `state` label.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            TokenState::Current => "current",
            TokenState::Stale(_) => "stale",
            TokenState::Unknown(_) => "unknown",
        }
    }
}

/// What tokens are judged against: the published key set, and the cluster CA's current generation.
#[derive(Debug, Clone, Default)]
pub(crate) struct Reference {
    /// The published key set (`None`: nothing published yet).
    pub keys: Option<PublishedKeys>,
    /// The cluster CA bundle's current generation (`None`: not configured, or not ready).
    pub cluster_ca: Option<Arc<Generation>>,
}

impl Reference {
    /// What makes a new epoch: the key set's content and the CA's generation number.
    fn identity(&self) -> (Option<PublishedKeys>, Option<u64>) {
        (
            self.keys.clone(),
            self.cluster_ca.as_ref().map(|g| g.number),
        )
    }

    /// The fingerprints every `ca.crt` must hold.
    fn ca_fingerprints(&self) -> Option<Vec<&str>> {
        self.cluster_ca.as_ref().map(|g| {
            g.material
                .cas
                .iter()
                .map(|c| c.fingerprint.as_str())
                .collect()
        })
    }

    /// When the change that made a token stale for `reason` happened.
    fn changed_at(&self, reason: StaleReason) -> Option<SystemTime> {
        match reason {
            StaleReason::Ca => self.cluster_ca.as_ref().map(|g| g.accepted_at),
            StaleReason::OutgoingKey | StaleReason::UnpublishedKey => self
                .keys
                .as_ref()
                .and_then(|k| humantime::parse_rfc3339_weak(&k.published_at).ok()),
        }
    }
}

/// Judges one scanned token: the key first (a token the API server rejects is the worst), then
/// the CA beside it.
pub(crate) fn judge(token: &ScannedToken, reference: &Reference) -> TokenState {
    let claims = match &token.claims {
        Ok(c) => c,
        Err(e) => return TokenState::Unknown(e.to_string()),
    };
    let Some(keys) = &reference.keys else {
        return TokenState::Unknown("no published key set yet".into());
    };
    if !keys.accepts(&claims.kid) {
        return TokenState::Stale(StaleReason::UnpublishedKey);
    }
    if claims.kid != keys.signing_kid {
        return TokenState::Stale(StaleReason::OutgoingKey);
    }
    match (reference.ca_fingerprints(), &token.ca) {
        (Some(wanted), Some(Ok(held))) if !wanted.iter().all(|w| held.iter().any(|h| h == w)) => {
            TokenState::Stale(StaleReason::Ca)
        }
        (Some(_), Some(Err(e))) => TokenState::Unknown(e.to_string()),
        _ => TokenState::Current,
    }
}

/// `/status` section `pod_tokens`: the last scan.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PodTokensStatus {
    /// The directory scanned.
    pub pods_dir: String,
    /// When the scan ended (RFC 3339).
    pub scanned_at: String,
    /// The tracker's epoch.
    pub epoch: u64,
    /// The published signing kid (`null`: nothing published yet).
    pub signing_kid: Option<String>,
    /// The cluster CA bundle's generation judged against.
    pub cluster_ca_generation: Option<u64>,
    /// Tokens signed by the signing key, beside the cluster CA.
    pub current: usize,
    /// Stale tokens.
    pub stale: usize,
    /// Tokens that cannot be judged.
    pub unknown: usize,
    /// Every token volume, by pod uid and volume.
    pub tokens: Vec<TokenStatus>,
}

/// One token volume in `/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TokenStatus {
    /// The pod's namespace (from the token; `null` when it cannot be read).
    pub namespace: Option<String>,
    /// The pod's name.
    pub pod: Option<String>,
    /// The pod's uid (its directory).
    pub uid: String,
    /// The projected volume.
    pub volume: String,
    /// The key id in the token's header.
    pub kid: Option<String>,
    /// Seconds since the token was issued.
    pub age_s: Option<i64>,
    /// `current`, `stale` or `unknown`.
    pub state: String,
    /// Why stale (`outgoing_key`, `unpublished_key`, `ca`) or unknown.
    pub reason: Option<String>,
    /// Seconds it has been stale.
    pub stale_for_s: Option<f64>,
}

/// A token seen stale: since when, and why (kept while it cannot be judged, so that a token that
/// is current after an unreadable moment is still reported refreshed).
#[derive(Debug, Clone, Copy)]
struct StaleMark {
    reason: StaleReason,
    since: Instant,
}

/// What the tracker remembers of one token volume between scans.
#[derive(Debug, Clone)]
struct Tracked {
    namespace: Option<String>,
    pod: Option<String>,
    uid: String,
    volume: String,
    kid: Option<String>,
    iat: Option<i64>,
    state: TokenState,
    stale: Option<StaleMark>,
}

/// What a scan is judged against, and when (`wall`: the same instant as `now`, on the wall
/// clock).
struct Moment<'a> {
    reference: &'a Reference,
    now: Instant,
    wall: SystemTime,
}

/// What one scan produced.
#[derive(Debug)]
pub(crate) struct ScanOutcome {
    /// `token_stale` and `token_refreshed` records, in order.
    pub events: Vec<AuditEvent>,
    /// A notice for the `on = "stale"` actions of `pod-tokens`.
    pub notice: Option<StaleNotice>,
    /// No token is stale.
    pub converged: bool,
    /// The epoch judged in.
    pub epoch: u64,
}

/// The tracker's state between scans: pure (no I/O, times passed in), so each transition is
/// tested on its own.
#[derive(Debug)]
pub(crate) struct Tracker {
    grace: Duration,
    deadline: Duration,
    tokens: BTreeMap<PathBuf, Tracked>,
    epoch: u64,
    identity: (Option<PublishedKeys>, Option<u64>),
    /// The last notice: its epoch and when.
    last_notice: Option<(u64, Instant)>,
    /// When an action of `pod-tokens` last asked for a fresh check (it just ran).
    last_action: Option<Instant>,
}

impl Tracker {
    /// A tracker that notifies after `grace` and again `deadline` after a notice or action.
    pub(crate) fn new(grace: Duration, deadline: Duration) -> Tracker {
        Tracker {
            grace,
            deadline,
            tokens: BTreeMap::new(),
            epoch: 0,
            identity: (None, None),
            last_notice: None,
            last_action: None,
        }
    }

    /// An action of `pod-tokens` ran and asked for a fresh check: the next notice, if tokens stay
    /// stale, comes `deadline` after this.
    pub(crate) fn action_ran(&mut self, at: Instant) {
        self.last_action = Some(at);
    }

    /// Judges a scan against `reference` at `now` (`wall`: the same instant on the wall clock).
    pub(crate) fn observe(
        &mut self,
        scanned: Vec<ScannedToken>,
        reference: &Reference,
        now: Instant,
        wall: SystemTime,
    ) -> ScanOutcome {
        let identity = reference.identity();
        if identity != self.identity {
            self.identity = identity;
            self.epoch += 1;
        }
        let at = Moment {
            reference,
            now,
            wall,
        };
        let mut events = Vec::new();
        let mut seen = BTreeMap::new();
        for token in scanned {
            let state = judge(&token, reference);
            let previous = self.tokens.remove(&token.volume.dir);
            let (tracked, event) = self.transition(&token, previous, state, &at);
            events.extend(event);
            seen.insert(token.volume.dir, tracked);
        }
        for (dir, gone) in std::mem::replace(&mut self.tokens, seen) {
            if gone.stale.is_some() {
                tracing::info!(volume = %dir.display(), "a stale token's pod is gone from the node");
            }
        }
        let converged = !self
            .tokens
            .values()
            .any(|t| matches!(t.state, TokenState::Stale(_)));
        let notice = self.notice(converged, now);
        ScanOutcome {
            events,
            notice,
            converged,
            epoch: self.epoch,
        }
    }

    /// One token's new state, and the record of its transition: to stale (or from one stale
    /// reason to another), or from stale to current.
    fn transition(
        &self,
        token: &ScannedToken,
        previous: Option<Tracked>,
        state: TokenState,
        at: &Moment<'_>,
    ) -> (Tracked, Option<AuditEvent>) {
        let mut t = tracked(token, previous.as_ref(), state);
        let mark = previous.and_then(|p| p.stale);
        let mut event = None;
        match (&t.state, mark) {
            (TokenState::Stale(reason), mark) => {
                if mark.is_none_or(|m| m.reason != *reason) {
                    event = Some(self.stale_event(&t, *reason, at.wall));
                }
                t.stale = Some(StaleMark {
                    reason: *reason,
                    since: mark.map_or(at.now, |m| m.since),
                });
            }
            (TokenState::Current, Some(m)) => {
                event = Some(refreshed_event(&t, m, at));
                t.stale = None;
            }
            (TokenState::Current, None) => t.stale = None,
            (TokenState::Unknown(_), mark) => t.stale = mark,
        }
        (t, event)
    }

    fn stale_event(&self, t: &Tracked, reason: StaleReason, wall: SystemTime) -> AuditEvent {
        AuditEvent::TokenStale {
            namespace: t.namespace.clone().unwrap_or_default(),
            pod: t.pod.clone().unwrap_or_default(),
            uid: t.uid.clone(),
            volume: t.volume.clone(),
            kid: t.kid.clone().unwrap_or_default(),
            reason: reason.as_str().into(),
            age_s: t.iat.map_or(0, |iat| unix(wall) - iat),
            epoch: self.epoch,
        }
    }

    /// A notice when a token has been stale for `grace` (`deadline` when only its `ca.crt` is:
    /// the kubelet copies a new `kube-root-ca.crt` into every pod by itself on its next sync,
    /// and a restart before the controller-manager published it changes nothing, as bench
    /// propagation showed): the first of this epoch, or `deadline` after the last notice or
    /// action run (an action cycle that did not make it current).
    fn notice(&mut self, converged: bool, now: Instant) -> Option<StaleNotice> {
        if converged {
            self.last_notice = None;
            return None;
        }
        let due_after = |reason: StaleReason| match reason {
            StaleReason::Ca => self.deadline,
            StaleReason::OutgoingKey | StaleReason::UnpublishedKey => self.grace,
        };
        let ripe = self.tokens.values().any(|t| match (&t.state, t.stale) {
            (TokenState::Stale(reason), Some(mark)) => {
                now.saturating_duration_since(mark.since) >= due_after(*reason)
            }
            _ => false,
        });
        if !ripe {
            return None;
        }
        let due = match self.last_notice {
            None => true,
            Some((epoch, _)) if epoch != self.epoch => true,
            Some((_, at)) => {
                let cycle = self.last_action.map_or(at, |a| a.max(at));
                now.saturating_duration_since(cycle) >= self.deadline
            }
        };
        if !due {
            return None;
        }
        self.last_notice = Some((self.epoch, now));
        Some(StaleNotice {
            bundle: PSEUDO_BUNDLE.into(),
            probe: PSEUDO_BUNDLE.into(),
            generation: self.epoch,
        })
    }

    /// The `/status` section for the last scan.
    pub(crate) fn status(
        &self,
        pods_dir: &str,
        reference: &Reference,
        now: Instant,
        wall: SystemTime,
    ) -> PodTokensStatus {
        let count = |name: &str| {
            self.tokens
                .values()
                .filter(|t| t.state.name() == name)
                .count()
        };
        PodTokensStatus {
            pods_dir: pods_dir.into(),
            scanned_at: crate::clock::rfc3339(wall),
            epoch: self.epoch,
            signing_kid: reference.keys.as_ref().map(|k| k.signing_kid.clone()),
            cluster_ca_generation: reference.cluster_ca.as_ref().map(|g| g.number),
            current: count("current"),
            stale: count("stale"),
            unknown: count("unknown"),
            tokens: self
                .tokens
                .values()
                .map(|t| token_status(t, now, wall))
                .collect(),
        }
    }
}

/// The remembered identity of a token volume, updated from this scan where its token decoded.
fn tracked(token: &ScannedToken, previous: Option<&Tracked>, state: TokenState) -> Tracked {
    let claims = token.claims.as_ref().ok();
    Tracked {
        namespace: claims
            .map(|c| c.namespace.clone())
            .or_else(|| previous.and_then(|p| p.namespace.clone())),
        pod: claims
            .and_then(|c| c.pod.as_ref().map(|p| p.name.clone()))
            .or_else(|| previous.and_then(|p| p.pod.clone())),
        uid: token.volume.pod_uid.clone(),
        volume: token.volume.volume.clone(),
        kid: claims.map(|c| c.kid.clone()),
        iat: claims.map(|c| c.iat),
        state,
        stale: None,
    }
}

fn refreshed_event(t: &Tracked, mark: StaleMark, at: &Moment<'_>) -> AuditEvent {
    AuditEvent::TokenRefreshed {
        namespace: t.namespace.clone().unwrap_or_default(),
        pod: t.pod.clone().unwrap_or_default(),
        uid: t.uid.clone(),
        volume: t.volume.clone(),
        kid: t.kid.clone().unwrap_or_default(),
        reason: mark.reason.as_str().into(),
        seconds_since_change: at
            .reference
            .changed_at(mark.reason)
            .and_then(|changed| at.wall.duration_since(changed).ok())
            .map(|d| d.as_secs_f64()),
        stale_for_s: at.now.saturating_duration_since(mark.since).as_secs_f64(),
    }
}

fn token_status(t: &Tracked, now: Instant, wall: SystemTime) -> TokenStatus {
    TokenStatus {
        namespace: t.namespace.clone(),
        pod: t.pod.clone(),
        uid: t.uid.clone(),
        volume: t.volume.clone(),
        kid: t.kid.clone(),
        age_s: t.iat.map(|iat| unix(wall) - iat),
        state: t.state.name().into(),
        reason: match &t.state {
            TokenState::Current => None,
            TokenState::Stale(r) => Some(r.as_str().into()),
            TokenState::Unknown(why) => Some(why.clone()),
        },
        stale_for_s: match t.state {
            TokenState::Stale(_) => t
                .stale
                .map(|m| now.saturating_duration_since(m.since).as_secs_f64()),
            _ => None,
        },
    }
}

fn unix(at: SystemTime) -> i64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// What the running tracker reads and writes.
pub(crate) struct TrackerContext {
    /// `[pod_tokens]`.
    pub settings: PodTokensSettings,
    /// The published key set (the follower's channel).
    pub keys: watch::Receiver<Option<PublishedKeys>>,
    /// Generations, for the cluster CA.
    pub store: Arc<GenerationStore>,
    /// Audit trail.
    pub audit: SharedAudit,
    /// Where scans are reported as the probe `pod-tokens`, and actions ask for a fresh one.
    pub feed: ConvergenceFeed,
    /// Stale notices for the `on = "stale"` actions.
    pub stale: mpsc::Sender<StaleNotice>,
    /// The `/status` board.
    pub board: PodTokenBoard,
}

/// Scans every `rescan`, at once on a new key set, CA generation or action request, until
/// `shutdown`.
pub(crate) async fn run(mut ctx: TrackerContext, mut shutdown: crate::shutdown::Shutdown) {
    let mut ca = ctx
        .settings
        .cluster_ca
        .as_deref()
        .and_then(|b| ctx.store.subscribe(b));
    let mut rechecks = ctx.feed.rechecks(PSEUDO_BUNDLE);
    let mut tracker = Tracker::new(ctx.settings.grace, ctx.settings.deadline);
    let mut keys_open = true;
    tracing::info!(pods_dir = %ctx.settings.pods_dir.display(), "tracking the pods' projected ServiceAccount tokens");
    loop {
        scan_once(&ctx, &mut tracker, ca.as_ref()).await;
        tokio::select! {
            _ = shutdown.recv() => return,
            _ = tokio::time::sleep(ctx.settings.rescan) => {}
            r = changed(&mut ctx.keys), if keys_open => keys_open = r.is_ok(),
            r = changed_opt(ca.as_mut()) => if r.is_err() { ca = None },
            r = changed_opt(rechecks.as_mut()) => match r {
                Ok(()) => tracker.action_ran(Instant::now()),
                Err(_) => rechecks = None,
            },
        }
    }
}

async fn changed<T>(rx: &mut watch::Receiver<T>) -> Result<(), watch::error::RecvError> {
    rx.changed().await
}

/// Waits for a change of an optional channel (forever when there is none).
async fn changed_opt<T>(
    rx: Option<&mut watch::Receiver<T>>,
) -> Result<(), watch::error::RecvError> {
    match rx {
        Some(rx) => rx.changed().await,
        None => std::future::pending().await,
    }
}

/// One scan: read the volumes, judge, audit, notify, report, publish.
async fn scan_once(
    ctx: &TrackerContext,
    tracker: &mut Tracker,
    ca: Option<&watch::Receiver<Option<Arc<Generation>>>>,
) {
    let began = Instant::now();
    let reference = Reference {
        keys: ctx.keys.borrow().clone(),
        cluster_ca: ca.and_then(|rx| rx.borrow().clone()),
    };
    let dir = ctx.settings.pods_dir.clone();
    let scanned = tokio::task::spawn_blocking(move || pods::scan(&dir))
        .await
        .unwrap_or_default();
    let outcome = tracker.observe(scanned, &reference, Instant::now(), SystemTime::now());
    for event in &outcome.events {
        log(event);
        if let Err(e) = append_shared(&ctx.audit, Some(PSEUDO_BUNDLE), event) {
            tracing::error!(error = %e, event = event.name(), "cannot audit a pod token's state");
        }
    }
    if let Some(notice) = outcome.notice {
        tracing::warn!(
            epoch = notice.generation,
            "pod tokens stale past grace: running the on = \"stale\" actions of pod-tokens"
        );
        if ctx.stale.try_send(notice).is_err() {
            tracing::warn!("stale notice dropped: the actions' queue is full or closed");
        }
    }
    ctx.feed.checked(
        PSEUDO_BUNDLE,
        Checked {
            generation: outcome.epoch,
            converged: outcome.converged,
            began,
        },
    );
    let pods_dir = ctx.settings.pods_dir.display().to_string();
    let status = tracker.status(&pods_dir, &reference, Instant::now(), SystemTime::now());
    *ctx.board.lock_or_recover() = Some(status);
}

fn log(event: &AuditEvent) {
    match event {
        AuditEvent::TokenStale {
            namespace,
            pod,
            kid,
            reason,
            ..
        } => {
            tracing::warn!(%namespace, %pod, %kid, %reason, "pod token stale")
        }
        AuditEvent::TokenRefreshed {
            namespace,
            pod,
            kid,
            seconds_since_change,
            ..
        } => {
            tracing::info!(%namespace, %pod, %kid, seconds_since_change, "pod token refreshed")
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use sha2::{Digest, Sha256};

    use super::*;
    use crate::{
        material::{inspect::CertInfo, validate::Material},
        propagation::{jwt::tests::kubelet_token, pods::tests::write_volume},
        test_pki::Ca,
    };

    const GRACE: Duration = Duration::from_secs(30);
    const DEADLINE: Duration = Duration::from_secs(300);

    fn kid(n: u8) -> String {
        crate::material::validate::kubernetes_key_id(&[n])
    }

    fn published(kids: &[u8], signing: u8, at: SystemTime) -> PublishedKeys {
        let mut kids: Vec<String> = kids.iter().map(|k| kid(*k)).collect();
        kids.sort();
        PublishedKeys {
            kids,
            signing_kid: kid(signing),
            generation: u64::from(signing),
            published_at: crate::clock::rfc3339(at),
            publisher: "cp-1".into(),
        }
    }

    /// The cluster CA bundle's generation `number`, holding `cas`.
    fn ca_generation(number: u64, cas: &[&Ca], at: SystemTime) -> Arc<Generation> {
        let fingerprint = |ca: &Ca| hex(&Sha256::digest(ca.der.as_ref()));
        Arc::new(Generation {
            number,
            accepted_at: at,
            material: Material {
                leaf: None,
                chain: vec![],
                key: None,
                cas: cas
                    .iter()
                    .map(|c| CertInfo::with_fingerprint(&fingerprint(c)))
                    .collect(),
                ca_der: vec![],
                key_ids: vec![],
            },
        })
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A pod's default token volume, as the kubelet writes it, signed by key `n`.
    fn pod(dir: &Path, name: &str, n: u8, ca: &str) {
        let token = kubelet_token(
            &kid(n),
            "default",
            name,
            &format!("uid-{name}"),
            1_790_000_000,
        );
        write_volume(dir, &format!("uid-{name}"), "kube-api-access-x", &token, ca);
    }

    /// The scan of `dir` judged at `now` (`wall` follows it).
    fn scan(t: &mut Tracker, dir: &Path, r: &Reference, now: Instant) -> ScanOutcome {
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_600);
        t.observe(pods::scan(dir), r, now, wall)
    }

    /// `(event, pod, reason)` of each record.
    fn records(events: &[AuditEvent]) -> Vec<(&'static str, String, String)> {
        events
            .iter()
            .map(|e| match e {
                AuditEvent::TokenStale { pod, reason, .. }
                | AuditEvent::TokenRefreshed { pod, reason, .. } => {
                    (e.name(), pod.clone(), reason.clone())
                }
                _ => (e.name(), String::new(), String::new()),
            })
            .collect()
    }

    struct Node {
        dir: tempfile::TempDir,
        ca: Ca,
        t0: Instant,
        changed: SystemTime,
    }

    fn node() -> Node {
        Node {
            dir: tempfile::tempdir().expect("tempdir"),
            ca: crate::test_pki::ca("cluster"),
            t0: Instant::now(),
            changed: SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_500),
        }
    }

    #[test]
    fn unknown_until_a_key_set_is_published_then_current() {
        let n = node();
        pod(n.dir.path(), "a", 1, &n.ca.pem);
        let mut t = Tracker::new(GRACE, DEADLINE);
        let out = scan(&mut t, n.dir.path(), &Reference::default(), n.t0);
        assert!(out.events.is_empty() && out.converged && out.notice.is_none());
        let status = t.status("/pods", &Reference::default(), n.t0, SystemTime::now());
        assert_eq!((status.current, status.stale, status.unknown), (0, 0, 1));
        assert_eq!(
            status.tokens[0].reason.as_deref(),
            Some("no published key set yet")
        );
        let r = Reference {
            keys: Some(published(&[1], 1, n.changed)),
            cluster_ca: Some(ca_generation(1, &[&n.ca], n.changed)),
        };
        let out = scan(&mut t, n.dir.path(), &r, n.t0);
        assert!(out.events.is_empty() && out.converged, "{out:?}");
        assert_eq!(
            out.epoch, 1,
            "the first key set and CA generation: the first epoch"
        );
        let status = t.status("/pods", &r, n.t0, SystemTime::now());
        assert_eq!((status.current, status.stale, status.unknown), (1, 0, 0));
    }

    #[test]
    fn a_new_signing_key_makes_exactly_the_old_tokens_stale_once_then_refreshed() {
        let n = node();
        pod(n.dir.path(), "a", 1, &n.ca.pem);
        pod(n.dir.path(), "b", 1, &n.ca.pem);
        pod(n.dir.path(), "c", 2, &n.ca.pem);
        let mut t = Tracker::new(GRACE, DEADLINE);
        let r = Reference {
            keys: Some(published(&[1, 2], 2, n.changed)),
            cluster_ca: None,
        };
        let out = scan(&mut t, n.dir.path(), &r, n.t0);
        assert_eq!(
            records(&out.events),
            [
                ("token_stale", "a".into(), "outgoing_key".into()),
                ("token_stale", "b".into(), "outgoing_key".into()),
            ]
        );
        assert!(!out.converged);
        // Still stale: no second record.
        let out = scan(&mut t, n.dir.path(), &r, n.t0 + Duration::from_secs(10));
        assert!(out.events.is_empty(), "{out:?}");
        // The kubelet rewrites a's token with the new kid (its ..data swapped).
        pod(n.dir.path(), "a", 2, &n.ca.pem);
        let out = scan(&mut t, n.dir.path(), &r, n.t0 + Duration::from_secs(20));
        assert_eq!(
            records(&out.events),
            [("token_refreshed", "a".into(), "outgoing_key".into())]
        );
        let AuditEvent::TokenRefreshed {
            seconds_since_change,
            stale_for_s,
            kid: new_kid,
            ..
        } = &out.events[0]
        else {
            unreachable!("checked above")
        };
        assert_eq!(*seconds_since_change, Some(100.0), "from published-at");
        assert_eq!(*stale_for_s, 20.0);
        assert_eq!(new_kid, &kid(2));
        assert!(!out.converged, "b is still stale");
    }

    #[test]
    fn a_kid_no_longer_published_is_unpublished_key_and_a_ca_without_the_cluster_ca_is_ca() {
        let n = node();
        let new_ca = crate::test_pki::ca("cluster-2");
        pod(n.dir.path(), "old", 1, &n.ca.pem);
        pod(n.dir.path(), "noca", 2, &n.ca.pem);
        pod(
            n.dir.path(),
            "good",
            2,
            &format!("{}{}", n.ca.pem, new_ca.pem),
        );
        let mut t = Tracker::new(GRACE, DEADLINE);
        let r = Reference {
            keys: Some(published(&[2], 2, n.changed)),
            cluster_ca: Some(ca_generation(2, &[&n.ca, &new_ca], n.changed)),
        };
        let out = scan(&mut t, n.dir.path(), &r, n.t0);
        assert_eq!(
            records(&out.events),
            [
                ("token_stale", "noca".into(), "ca".into()),
                ("token_stale", "old".into(), "unpublished_key".into()),
            ]
        );
        let status = t.status("/pods", &r, n.t0, SystemTime::now());
        assert_eq!((status.current, status.stale, status.unknown), (1, 2, 0));
        let AuditEvent::TokenStale { age_s, epoch, .. } = &out.events[1] else {
            unreachable!("checked above")
        };
        assert_eq!((*age_s, *epoch), (600, 1));
        // The kubelet writes the new CA beside noca's token: refreshed, timed from the CA
        // generation's acceptance.
        pod(
            n.dir.path(),
            "noca",
            2,
            &format!("{}{}", n.ca.pem, new_ca.pem),
        );
        let out = scan(&mut t, n.dir.path(), &r, n.t0 + Duration::from_secs(5));
        assert_eq!(
            records(&out.events),
            [("token_refreshed", "noca".into(), "ca".into())]
        );
    }

    #[test]
    fn notifies_after_grace_then_once_per_action_cycle_and_per_epoch() {
        let n = node();
        pod(n.dir.path(), "a", 1, &n.ca.pem);
        let mut t = Tracker::new(GRACE, DEADLINE);
        let r = Reference {
            keys: Some(published(&[1, 2], 2, n.changed)),
            cluster_ca: None,
        };
        let at = |s: u64| n.t0 + Duration::from_secs(s);
        assert!(
            scan(&mut t, n.dir.path(), &r, at(0)).notice.is_none(),
            "inside grace"
        );
        assert!(
            scan(&mut t, n.dir.path(), &r, at(29)).notice.is_none(),
            "inside grace"
        );
        let notice = scan(&mut t, n.dir.path(), &r, at(30))
            .notice
            .expect("grace passed");
        assert_eq!(
            (notice.bundle.as_str(), notice.generation),
            (PSEUDO_BUNDLE, 1)
        );
        assert!(
            scan(&mut t, n.dir.path(), &r, at(40)).notice.is_none(),
            "already notified"
        );
        // The action ran at 100 s and did not help: again a deadline after the run.
        t.action_ran(at(100));
        assert!(scan(&mut t, n.dir.path(), &r, at(331)).notice.is_none());
        assert!(scan(&mut t, n.dir.path(), &r, at(400)).notice.is_some());
        // A new key set is a new epoch: notified at once (the token is stale for long already).
        let r2 = Reference {
            keys: Some(published(&[1, 3], 3, n.changed)),
            cluster_ca: None,
        };
        let out = scan(&mut t, n.dir.path(), &r2, at(401));
        assert_eq!(out.notice.as_ref().map(|n| n.generation), Some(2));
        assert!(
            out.events.is_empty(),
            "same reason, same mark: not a new transition: {out:?}"
        );
        // Current: converged, and the notice state starts over.
        pod(n.dir.path(), "a", 3, &n.ca.pem);
        let out = scan(&mut t, n.dir.path(), &r2, at(402));
        assert!(out.converged && out.notice.is_none());
    }

    #[test]
    fn a_ca_only_staleness_waits_for_the_kubelets_own_sync_until_the_deadline() {
        let n = node();
        let new_ca = crate::test_pki::ca("cluster-2");
        pod(n.dir.path(), "a", 2, &n.ca.pem);
        let mut t = Tracker::new(GRACE, DEADLINE);
        let r = Reference {
            keys: Some(published(&[2], 2, n.changed)),
            cluster_ca: Some(ca_generation(2, &[&n.ca, &new_ca], n.changed)),
        };
        let at = |s: u64| n.t0 + Duration::from_secs(s);
        let out = scan(&mut t, n.dir.path(), &r, at(0));
        assert_eq!(
            records(&out.events),
            [("token_stale", "a".into(), "ca".into())]
        );
        assert!(
            scan(&mut t, n.dir.path(), &r, at(31)).notice.is_none(),
            "past grace, but a kubelet restart cannot bring a CA the ConfigMap does not hold yet"
        );
        assert!(scan(&mut t, n.dir.path(), &r, at(299)).notice.is_none());
        assert!(
            scan(&mut t, n.dir.path(), &r, at(300)).notice.is_some(),
            "still stale at the deadline: the kubelet did not sync it"
        );
    }

    #[test]
    fn an_unreadable_moment_keeps_the_stale_mark_and_a_deleted_pod_is_forgotten() {
        let n = node();
        pod(n.dir.path(), "a", 1, &n.ca.pem);
        let mut t = Tracker::new(GRACE, DEADLINE);
        let r = Reference {
            keys: Some(published(&[1, 2], 2, n.changed)),
            cluster_ca: None,
        };
        assert_eq!(scan(&mut t, n.dir.path(), &r, n.t0).events.len(), 1);
        write_volume(
            n.dir.path(),
            "uid-a",
            "kube-api-access-x",
            "half-written",
            &n.ca.pem,
        );
        let out = scan(&mut t, n.dir.path(), &r, n.t0);
        assert!(
            out.events.is_empty() && out.converged,
            "unknown is not stale: {out:?}"
        );
        pod(n.dir.path(), "a", 2, &n.ca.pem);
        let out = scan(&mut t, n.dir.path(), &r, n.t0);
        assert_eq!(records(&out.events)[0].0, "token_refreshed");
        std::fs::remove_dir_all(n.dir.path().join("uid-a")).expect("pod deleted");
        let out = scan(&mut t, n.dir.path(), &r, n.t0);
        assert!(out.events.is_empty() && out.converged);
        assert!(t
            .status("/pods", &r, n.t0, SystemTime::now())
            .tokens
            .is_empty());
    }

    #[tokio::test]
    async fn the_running_tracker_reports_notifies_and_rescans_on_request() {
        let n = node();
        pod(n.dir.path(), "a", 1, &n.ca.pem);
        let settings = PodTokensSettings {
            pods_dir: n.dir.path().to_path_buf(),
            cluster_ca: None,
            rescan: Duration::from_secs(3600),
            grace: Duration::ZERO,
            deadline: Duration::from_secs(1),
        };
        let audit_dir = tempfile::tempdir().expect("tempdir");
        let audit_path = audit_dir.path().join("audit.jsonl");
        let log = crate::audit::AuditLog::open(&audit_path, 1 << 20).expect("audit log");
        let (keys_tx, keys) = watch::channel(None);
        let (stale, mut notices) = mpsc::channel(4);
        let feed = ConvergenceFeed::with_pod_tokens(&[], Some(settings.deadline));
        let board = PodTokenBoard::default();
        let (stop_tx, stop_rx) = crate::shutdown::channel();
        let task = tokio::spawn(run(
            TrackerContext {
                settings,
                keys,
                store: Arc::new(GenerationStore::new([])),
                audit: Arc::new(std::sync::Mutex::new(log)),
                feed: feed.clone(),
                stale,
                board: board.clone(),
            },
            stop_rx,
        ));
        keys_tx.send_replace(Some(published(&[1, 2], 2, n.changed)));
        let notice = tokio::time::timeout(Duration::from_secs(10), notices.recv())
            .await
            .expect("notified")
            .expect("open");
        assert_eq!(notice.bundle, PSEUDO_BUNDLE);
        // The action rewrote the tokens and asks for a fresh check: converged on that epoch.
        pod(n.dir.path(), "a", 2, &n.ca.pem);
        let since = Instant::now();
        feed.request_recheck(PSEUDO_BUNDLE);
        let settled = feed.settled(PSEUDO_BUNDLE, notice.generation, since).await;
        assert!(settled[0].converged, "{settled:?}");
        let status = board.lock_or_recover().clone().expect("scanned");
        assert_eq!((status.current, status.stale), (1, 0));
        stop_tx.stop();
        task.await.expect("tracker stops");
        let audit = std::fs::read_to_string(&audit_path).expect("audit");
        assert!(
            audit.contains("\"event\":\"token_stale\"")
                && audit.contains("\"event\":\"token_refreshed\""),
            "{audit}"
        );
        assert!(
            !audit.contains("eyJ"),
            "no token text in the audit: {audit}"
        );
    }
}
