//! Cluster-wide locks for actions (`[[action]] lock = "NAME"`): one coordination.k8s.io/v1 Lease
//! per lock, `certreload-action-NAME` in `[locks] namespace`, held by this node's name.
//!
//! Restarting etcd or kube-apiserver on every control-plane node at once loses quorum or the API;
//! every node's agent sees the same CA rotation at about the same time. The Lease makes the
//! actions of one lock take turns:
//!
//! - **take**: create the Lease, or update it with the `resourceVersion` it was read with (the API
//!   server answers 409 to every writer but the first: optimistic concurrency), when it has no
//!   holder, this node is its holder, or it expired;
//! - **expiry** is judged by this node's own clock, as client-go's leader election does: a Lease
//!   another node holds expires only after this node saw it unchanged (same `resourceVersion`) for
//!   its `leaseDurationSeconds`. A poll that fails starts that count again, so an API server that
//!   was down for a while (the holder may be restarting it) never makes a valid Lease look expired;
//! - **renew**: while held, `renewTime` is written every third of the duration;
//! - **release**: the holder is cleared (`holderIdentity` unset), so the next node takes it at its
//!   next poll instead of waiting for expiry.
//!
//! A lock is never skipped: without an API server (unreachable, refused, no credentials) the action
//! waits and says why, up to its `lock_wait`, then is not run.

use std::{sync::Arc, time::Duration};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{api::PostParams, Api, Client};
use tokio::{
    sync::{Mutex, OnceCell},
    task::JoinHandle,
    time::Instant,
};

use crate::{
    audit::kube_events::describe_api_error,
    config::ActionLock,
    shutdown::{self, Shutdown, Stop},
    sync::LockExt,
};

/// Longest wait for one API request: a hung API server is a reason to wait, not to hang.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// First poll delay while another node holds the lock; doubles up to [`MAX_POLL`].
const FIRST_POLL: Duration = Duration::from_millis(250);
/// Longest delay between two polls (the hand-over latency after a release).
const MAX_POLL: Duration = Duration::from_secs(2);

/// Where locks live and who takes them (from `[locks]` and the node name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LockSettings {
    /// Namespace of the Leases.
    pub namespace: String,
    /// `leaseDurationSeconds` written into a taken Lease.
    pub lease_duration: Duration,
    /// This node's identity (`holderIdentity`): the node name.
    pub holder: String,
}

/// Why a Lease request did not give an answer to act on.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LeaseError {
    /// No in-cluster service account and no usable KUBECONFIG.
    #[error("no Kubernetes API credentials (in-cluster ServiceAccount or KUBECONFIG): {0}")]
    Credentials(String),
    /// The API server did not answer in time.
    #[error("Lease {lease}: {operation}: no answer from the API server within {timeout:?}")]
    Timeout {
        /// `namespace/name`.
        lease: String,
        /// `get`, `create`, `update`.
        operation: &'static str,
        timeout: Duration,
    },
    /// The request failed (transport error, or an API status such as 403 Forbidden).
    #[error("Lease {lease}: {operation}: {}", describe_api_error(source))]
    Api {
        /// `namespace/name`.
        lease: String,
        /// `get`, `create`, `update`.
        operation: &'static str,
        /// What kube-rs returned.
        #[source]
        source: kube::Error,
    },
}

impl LeaseError {
    /// A short, stable category (`credentials`, `timeout`, `http 403`, `transport`): a wait is
    /// audited again only when this changes, not at every poll.
    pub(crate) fn category(&self) -> String {
        match self {
            LeaseError::Credentials(_) => "credentials".into(),
            LeaseError::Timeout { .. } => "timeout".into(),
            LeaseError::Api {
                source: kube::Error::Api(status),
                ..
            } => format!("http {}", status.code),
            LeaseError::Api { .. } => "transport".into(),
        }
    }
}

/// What an action is waiting for, reported when it starts and whenever it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Waiting {
    /// Another node holds a valid Lease.
    HeldBy {
        /// Its holderIdentity.
        holder: String,
        /// Local time left before it counts as expired, unless renewed.
        expires_in: Duration,
    },
    /// Another node wrote the Lease between our read and our write (409): retried at once.
    LostRace,
    /// The API server cannot be reached, refuses, or there are no credentials.
    Unavailable {
        /// [`LeaseError::category`].
        category: String,
        /// The error in words.
        detail: String,
    },
}

impl Waiting {
    /// The holder, when that is the reason.
    pub(crate) fn holder(&self) -> Option<&str> {
        match self {
            Waiting::HeldBy { holder, .. } => Some(holder),
            _ => None,
        }
    }

    /// The reason in words.
    pub(crate) fn describe(&self) -> String {
        match self {
            Waiting::HeldBy { holder, expires_in } => format!(
                "held by {holder}; counts as expired in {}s unless renewed",
                expires_in.as_secs()
            ),
            Waiting::LostRace => {
                "another node took the Lease between our read and our write (409 Conflict)".into()
            }
            Waiting::Unavailable { detail, .. } => {
                format!("the API server cannot be asked, so the action waits: {detail}")
            }
        }
    }

    /// Two waits with the same key are one wait for the audit log.
    fn key(&self) -> String {
        match self {
            Waiting::HeldBy { holder, .. } => format!("held:{holder}"),
            Waiting::LostRace => "race".into(),
            Waiting::Unavailable { category, .. } => format!("unavailable:{category}"),
        }
    }
}

/// How an acquisition ended (`H`: what is held, the Lease or a caller's wrapper of it).
pub(crate) enum Acquired<H = HeldLease> {
    /// The Lease is ours until released.
    Held(H),
    /// `lock_wait` passed; the last reason.
    GaveUp(Waiting),
    /// The agent is stopping.
    Shutdown,
}

/// The Lease as this node last saw it, for expiry by the local clock.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    resource_version: String,
    since: Instant,
}

/// What to do about a Lease just read.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    /// There is none: create it.
    Create,
    /// Free, ours already, or expired: update it (with its resourceVersion).
    Take,
    /// Another node holds it.
    Wait {
        holder: String,
        /// Local time left before it counts as expired, if unchanged.
        expires_in: Duration,
    },
}

/// The decision for a Lease read at `now`; `seen` tracks how long it stayed unchanged.
fn decide(
    lease: Option<&Lease>,
    me: &str,
    seen: &mut Option<Seen>,
    now: Instant,
    default_duration: Duration,
) -> Decision {
    let Some(lease) = lease else {
        *seen = None;
        return Decision::Create;
    };
    let spec = lease.spec.as_ref();
    let holder = spec
        .and_then(|s| s.holder_identity.as_deref())
        .filter(|h| !h.is_empty());
    let Some(holder) = holder else {
        return Decision::Take;
    };
    if holder == me {
        // Ours: an earlier run of this agent (or this run) holds it.
        return Decision::Take;
    }
    let duration = spec
        .and_then(|s| s.lease_duration_seconds)
        .filter(|s| *s > 0)
        .map_or(default_duration, |s| {
            Duration::from_secs(s.unsigned_abs().into())
        });
    let version = lease.metadata.resource_version.clone().unwrap_or_default();
    let since = match seen {
        Some(s) if s.resource_version == version => s.since,
        _ => {
            *seen = Some(Seen {
                resource_version: version,
                since: now,
            });
            now
        }
    };
    let expires = crate::clock::later(since, duration);
    if now >= expires {
        Decision::Take
    } else {
        Decision::Wait {
            holder: holder.to_string(),
            expires_in: expires - now,
        }
    }
}

/// The Leases of every lock, through one lazily made API client.
pub(crate) struct Leases {
    settings: LockSettings,
    client: OnceCell<Client>,
}

impl Leases {
    /// Locks with these settings; the client is made on first use (in-cluster or KUBECONFIG).
    pub(crate) fn new(settings: LockSettings) -> Leases {
        Leases {
            settings,
            client: OnceCell::new(),
        }
    }

    /// With an existing client (tests, or a client shared with other users).
    #[cfg(test)]
    pub(crate) fn with_client(settings: LockSettings, client: Client) -> Leases {
        Leases {
            settings,
            client: OnceCell::new_with(Some(client)),
        }
    }

    pub(crate) fn settings(&self) -> &LockSettings {
        &self.settings
    }

    /// `namespace/name` of a lock's Lease, for records.
    pub(crate) fn lease_ref(&self, lock: &ActionLock) -> String {
        format!("{}/{}", self.settings.namespace, lock.lease_name())
    }

    async fn api(&self) -> Result<Api<Lease>, LeaseError> {
        let client = self
            .client
            .get_or_try_init(|| async {
                match tokio::time::timeout(REQUEST_TIMEOUT, Client::try_default()).await {
                    Ok(Ok(c)) => Ok(c),
                    Ok(Err(e)) => Err(LeaseError::Credentials(e.to_string())),
                    Err(_) => Err(LeaseError::Credentials(format!(
                        "making the client took more than {REQUEST_TIMEOUT:?}"
                    ))),
                }
            })
            .await?;
        Ok(Api::namespaced(client.clone(), &self.settings.namespace))
    }

    /// Waits for the lock's Lease until it is this node's, `lock.wait` passes, or `shutdown`.
    /// `report` hears every new reason to wait (another holder, no API server), once each.
    pub(crate) async fn acquire(
        &self,
        lock: &ActionLock,
        shutdown: &mut Shutdown,
        mut report: impl FnMut(&Waiting),
    ) -> Acquired {
        let give_up = crate::clock::later(Instant::now(), lock.wait);
        let mut seen: Option<Seen> = None;
        let mut poll = FIRST_POLL;
        let mut last: Option<Waiting> = None;
        loop {
            let waiting = match self.try_acquire(lock, &mut seen).await {
                Ok(Ok(held)) => return Acquired::Held(held),
                Ok(Err(waiting)) => waiting,
                Err(e) => {
                    // Time without an answer is not time the holder was seen idle.
                    seen = None;
                    Waiting::Unavailable {
                        category: e.category(),
                        detail: e.to_string(),
                    }
                }
            };
            if last.as_ref().map(Waiting::key) != Some(waiting.key()) {
                tracing::warn!(lock = %lock.name, lease = %self.lease_ref(lock), reason = %waiting.describe(), "action waits for its lock");
                report(&waiting);
            }
            let now = Instant::now();
            if now >= give_up {
                return Acquired::GaveUp(waiting);
            }
            let next = match &waiting {
                Waiting::LostRace => now,
                // Poll again at the latest when it would count as expired.
                Waiting::HeldBy { expires_in, .. } => (now + poll).min(now + *expires_in),
                Waiting::Unavailable { .. } => now + poll,
            };
            last = Some(waiting);
            poll = (poll * 2).min(MAX_POLL);
            tokio::select! {
                _ = shutdown.recv() => return Acquired::Shutdown,
                _ = tokio::time::sleep_until(next.min(give_up)) => {}
            }
        }
    }

    /// One read-and-take: the held Lease, or why not yet (`Ok(Err)`), or an API failure.
    async fn try_acquire(
        &self,
        lock: &ActionLock,
        seen: &mut Option<Seen>,
    ) -> Result<Result<HeldLease, Waiting>, LeaseError> {
        let api = self.api().await?;
        let name = lock.lease_name();
        let lease_ref = self.lease_ref(lock);
        let current = call(&lease_ref, "get", api.get_opt(&name)).await?;
        let me = &self.settings.holder;
        let duration = self.settings.lease_duration;
        let now = Timestamp::now();
        match decide(current.as_ref(), me, seen, Instant::now(), duration) {
            Decision::Wait { holder, expires_in } => {
                Ok(Err(Waiting::HeldBy { holder, expires_in }))
            }
            decision => {
                let spec = LeaseSpec {
                    holder_identity: Some(me.clone()),
                    lease_duration_seconds: Some(
                        i32::try_from(duration.as_secs().max(1)).unwrap_or(i32::MAX),
                    ),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                };
                let written = match (decision, current) {
                    (Decision::Take, Some(mut lease)) => {
                        let old = lease.spec.take().unwrap_or_default();
                        let changed = old.holder_identity.as_deref() != Some(me.as_str());
                        let transitions = old.lease_transitions.unwrap_or(0);
                        lease.spec = Some(LeaseSpec {
                            lease_transitions: Some(transitions.saturating_add(i32::from(changed))),
                            ..spec
                        });
                        call(
                            &lease_ref,
                            "update",
                            api.replace(&name, &PostParams::default(), &lease),
                        )
                        .await
                    }
                    _ => {
                        let lease = Lease {
                            metadata: ObjectMeta {
                                name: Some(name.clone()),
                                namespace: Some(self.settings.namespace.clone()),
                                labels: Some(
                                    [("app.kubernetes.io/name".into(), "certreload".into())].into(),
                                ),
                                ..ObjectMeta::default()
                            },
                            spec: Some(spec),
                        };
                        call(
                            &lease_ref,
                            "create",
                            api.create(&PostParams::default(), &lease),
                        )
                        .await
                    }
                };
                match written {
                    Ok(lease) => Ok(Ok(HeldLease::start(
                        api,
                        name,
                        lease_ref,
                        me.clone(),
                        duration,
                        lease,
                    ))),
                    Err(e) if e.is_conflict() => Ok(Err(Waiting::LostRace)),
                    Err(e) => Err(e),
                }
            }
        }
    }
}

impl LeaseError {
    /// 409: someone else wrote the Lease first (AlreadyExists on create, Conflict on update).
    fn is_conflict(&self) -> bool {
        matches!(self, LeaseError::Api { source: kube::Error::Api(s), .. } if s.code == 409)
    }
}

/// One API call with [`REQUEST_TIMEOUT`] and the Lease named in the error.
async fn call<T>(
    lease: &str,
    operation: &'static str,
    request: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, LeaseError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(LeaseError::Api {
            lease: lease.to_string(),
            operation,
            source,
        }),
        Err(_) => Err(LeaseError::Timeout {
            lease: lease.to_string(),
            operation,
            timeout: REQUEST_TIMEOUT,
        }),
    }
}

/// A Lease this node holds: renewed in the background until [`HeldLease::release`].
pub(crate) struct HeldLease {
    shared: Arc<HeldShared>,
    stop: Stop,
    renewer: JoinHandle<()>,
    /// When the API server confirmed the hold.
    pub acquired: Instant,
}

struct HeldShared {
    api: Api<Lease>,
    name: String,
    lease_ref: String,
    me: String,
    duration: Duration,
    /// The Lease as last written (its resourceVersion is the one to update with).
    lease: Mutex<Lease>,
    /// Set when another node took the Lease while we held it.
    lost: std::sync::Mutex<Option<String>>,
}

impl HeldLease {
    fn start(
        api: Api<Lease>,
        name: String,
        lease_ref: String,
        me: String,
        duration: Duration,
        lease: Lease,
    ) -> HeldLease {
        let shared = Arc::new(HeldShared {
            api,
            name,
            lease_ref,
            me,
            duration,
            lease: Mutex::new(lease),
            lost: std::sync::Mutex::new(None),
        });
        let (stop, stopped) = shutdown::channel();
        let renewer = tokio::spawn(renew(shared.clone(), stopped));
        HeldLease {
            shared,
            stop,
            renewer,
            acquired: Instant::now(),
        }
    }

    /// Why the hold ended early (another node took the Lease), if it did.
    pub(crate) fn lost(&self) -> Option<String> {
        self.shared.lost.lock_or_recover().clone()
    }

    /// Stops renewing and clears the holder. Retried until the Lease would have expired anyway;
    /// an error means the other nodes wait for that expiry.
    pub(crate) async fn release(self) -> Result<(), LeaseError> {
        if self.lost().is_some() {
            return Ok(());
        }
        self.stop.stop();
        if let Err(e) = self.renewer.await {
            tracing::warn!(lease = %self.shared.name, error = %e, "the lease renewer failed before the release");
        }
        let s = &self.shared;
        let give_up = crate::clock::later(Instant::now(), s.duration);
        let mut delay = FIRST_POLL;
        loop {
            let mut lease = s.lease.lock().await;
            let mut cleared = lease.clone();
            if let Some(spec) = cleared.spec.as_mut() {
                spec.holder_identity = None;
            }
            let result = call(
                &s.lease_ref,
                "update",
                s.api.replace(&s.name, &PostParams::default(), &cleared),
            )
            .await;
            let error = match result {
                Ok(_) => return Ok(()),
                Err(e) if e.is_conflict() => {
                    // Written since our last renewal: read it again; release only if still ours.
                    match call(&s.lease_ref, "get", s.api.get_opt(&s.name)).await {
                        Ok(Some(now)) => {
                            let holder = now.spec.as_ref().and_then(|x| x.holder_identity.clone());
                            if holder.as_deref() != Some(s.me.as_str()) {
                                return Ok(());
                            }
                            *lease = now;
                            continue;
                        }
                        Ok(None) => return Ok(()),
                        Err(e) => e,
                    }
                }
                Err(e) => e,
            };
            drop(lease);
            if Instant::now() + delay >= give_up {
                return Err(error);
            }
            tracing::warn!(lease = %s.lease_ref, error = %error, "cannot release the lock yet; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(MAX_POLL);
        }
    }
}

/// Writes `renewTime` every third of the duration (sooner after a failure) until `stop`.
async fn renew(s: Arc<HeldShared>, mut stop: Shutdown) {
    let period = s.duration / 3;
    let mut next = crate::clock::later(Instant::now(), period);
    let mut last_renewed = Instant::now();
    loop {
        tokio::select! {
            _ = stop.recv() => return,
            _ = tokio::time::sleep_until(next) => {}
        }
        let mut lease = s.lease.lock().await;
        let mut renewed = lease.clone();
        if let Some(spec) = renewed.spec.as_mut() {
            spec.renew_time = Some(MicroTime(Timestamp::now()));
        }
        let result = call(
            &s.lease_ref,
            "update",
            s.api.replace(&s.name, &PostParams::default(), &renewed),
        )
        .await;
        match result {
            Ok(written) => {
                *lease = written;
                last_renewed = Instant::now();
                next = crate::clock::later(last_renewed, period);
            }
            Err(e) if e.is_conflict() => {
                match call(&s.lease_ref, "get", s.api.get_opt(&s.name)).await {
                    Ok(current) => {
                        let holder = current
                            .as_ref()
                            .and_then(|l| l.spec.as_ref())
                            .and_then(|x| x.holder_identity.clone());
                        match (current, holder) {
                            (Some(current), Some(h)) if h == s.me => {
                                *lease = current;
                                next = Instant::now();
                            }
                            (_, holder) => {
                                let why = format!(
                                    "the Lease was taken over while held (now held by {})",
                                    holder.as_deref().unwrap_or("nobody")
                                );
                                tracing::error!(lease = %s.lease_ref, "{why}");
                                *s.lost.lock_or_recover() = Some(why);
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(lease = %s.lease_ref, error = %e, "cannot renew the lock");
                        next = Instant::now() + FIRST_POLL * 4;
                    }
                }
            }
            Err(e) => {
                let unrenewed = last_renewed.elapsed();
                if unrenewed > s.duration {
                    tracing::error!(lease = %s.lease_ref, error = %e, unrenewed_s = unrenewed.as_secs_f64(), "the lock was not renewed for longer than its duration: another node may take it once it sees the API server again");
                } else {
                    tracing::warn!(lease = %s.lease_ref, error = %e, "cannot renew the lock; retrying");
                }
                next = Instant::now() + FIRST_POLL * 4;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: Option<&str>, version: &str, seconds: Option<i32>) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some("certreload-action-etcd".into()),
                resource_version: Some(version.into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_string),
                lease_duration_seconds: seconds,
                ..LeaseSpec::default()
            }),
        }
    }

    const D: Duration = Duration::from_secs(30);

    #[test]
    fn a_missing_lease_is_created_a_free_or_own_one_is_taken() {
        let now = Instant::now();
        let mut seen = None;
        assert_eq!(decide(None, "a", &mut seen, now, D), Decision::Create);
        for free in [lease(None, "1", Some(30)), lease(Some(""), "1", Some(30))] {
            assert_eq!(decide(Some(&free), "a", &mut seen, now, D), Decision::Take);
        }
        let own = lease(Some("a"), "1", Some(30));
        assert_eq!(decide(Some(&own), "a", &mut seen, now, D), Decision::Take);
    }

    #[test]
    fn another_holders_lease_expires_only_after_its_duration_unchanged_on_our_clock() {
        let t0 = Instant::now();
        let mut seen = None;
        let held = lease(Some("b"), "7", Some(10));
        assert_eq!(
            decide(Some(&held), "a", &mut seen, t0, D),
            Decision::Wait {
                holder: "b".into(),
                expires_in: Duration::from_secs(10)
            }
        );
        let t1 = t0 + Duration::from_secs(9);
        assert!(matches!(
            decide(Some(&held), "a", &mut seen, t1, D),
            Decision::Wait { expires_in, .. } if expires_in == Duration::from_secs(1)
        ));
        // Renewed (new resourceVersion): the count starts again.
        let renewed = lease(Some("b"), "8", Some(10));
        assert!(matches!(
            decide(Some(&renewed), "a", &mut seen, t1, D),
            Decision::Wait { expires_in, .. } if expires_in == Duration::from_secs(10)
        ));
        assert!(matches!(
            decide(
                Some(&renewed),
                "a",
                &mut seen,
                t1 + Duration::from_secs(9),
                D
            ),
            Decision::Wait { .. }
        ));
        assert_eq!(
            decide(
                Some(&renewed),
                "a",
                &mut seen,
                t1 + Duration::from_secs(10),
                D
            ),
            Decision::Take
        );
    }

    #[test]
    fn a_lease_without_a_duration_uses_ours_and_forgetting_it_restarts_the_count() {
        let t0 = Instant::now();
        let mut seen = None;
        let held = lease(Some("b"), "3", None);
        assert!(matches!(
            decide(Some(&held), "a", &mut seen, t0, D),
            Decision::Wait { expires_in, .. } if expires_in == D
        ));
        // What acquire() does after a failed poll: the time in between does not count.
        seen = None;
        assert!(matches!(
            decide(Some(&held), "a", &mut seen, t0 + D * 2, D),
            Decision::Wait { expires_in, .. } if expires_in == D
        ));
    }

    #[test]
    fn waits_are_one_wait_per_reason_not_per_poll() {
        let a = Waiting::HeldBy {
            holder: "n1".into(),
            expires_in: Duration::from_secs(29),
        };
        let b = Waiting::HeldBy {
            holder: "n1".into(),
            expires_in: Duration::from_secs(3),
        };
        assert_eq!(a.key(), b.key());
        assert!(b.describe().contains("n1"), "{}", b.describe());
        let c = Waiting::HeldBy {
            holder: "n2".into(),
            expires_in: Duration::ZERO,
        };
        assert_ne!(a.key(), c.key());
        let down = Waiting::Unavailable {
            category: "transport".into(),
            detail: "connection refused".into(),
        };
        assert!(down.describe().contains("waits") && down.holder().is_none());
        assert_eq!(a.holder(), Some("n1"));
    }

    #[test]
    fn a_refusal_reads_as_its_status_and_is_its_own_reason_to_wait() {
        let status = kube::core::Status {
            code: 403,
            reason: "Forbidden".into(),
            message: "User \"system:serviceaccount:certreload:certreload\" cannot get resource \"leases\"".into(),
            ..kube::core::Status::default()
        };
        let e = LeaseError::Api {
            lease: "certreload/certreload-action-etcd".into(),
            operation: "get",
            source: kube::Error::Api(Box::new(status)),
        };
        assert_eq!(e.category(), "http 403");
        assert_eq!(
            e.to_string(),
            "Lease certreload/certreload-action-etcd: get: 403 Forbidden: User \"system:serviceaccount:certreload:certreload\" cannot get resource \"leases\""
        );
        assert!(!e.is_conflict());
    }

    #[tokio::test]
    async fn an_unreachable_api_server_means_waiting_saying_why_then_giving_up() {
        // Port 1 on loopback: connection refused, as for an API server that is restarting.
        let config = kube::Config::new("http://127.0.0.1:1".parse().expect("uri"));
        let client = Client::try_from(config).expect("client");
        let leases = Leases::with_client(
            LockSettings {
                namespace: "certreload".into(),
                lease_duration: D,
                holder: "n1".into(),
            },
            client,
        );
        let lock = ActionLock {
            name: "etcd".into(),
            wait: Duration::from_millis(600),
        };
        let (_stop, mut rx) = shutdown::channel();
        let mut reasons = Vec::new();
        let outcome = leases
            .acquire(&lock, &mut rx, |w| reasons.push(w.clone()))
            .await;
        let Acquired::GaveUp(last) = outcome else {
            panic!("acquired without an API server")
        };
        assert!(
            matches!(&last, Waiting::Unavailable { category, detail } if category == "transport" && detail.contains("certreload/certreload-action-etcd: get")),
            "{last:?}"
        );
        assert_eq!(
            reasons.len(),
            1,
            "one report per reason, not per poll: {reasons:?}"
        );
        assert_eq!(leases.lease_ref(&lock), "certreload/certreload-action-etcd");
    }

    #[tokio::test]
    async fn shutdown_ends_a_wait() {
        let config = kube::Config::new("http://127.0.0.1:1".parse().expect("uri"));
        let leases = Leases::with_client(
            LockSettings {
                namespace: "certreload".into(),
                lease_duration: D,
                holder: "n1".into(),
            },
            Client::try_from(config).expect("client"),
        );
        let lock = ActionLock {
            name: "etcd".into(),
            wait: Duration::from_secs(600),
        };
        let (stop, mut rx) = shutdown::channel();
        // Stopping while the API server is away ends the 10-minute wait at the first sleep.
        stop.stop();
        let outcome = leases.acquire(&lock, &mut rx, |_| {}).await;
        assert!(matches!(outcome, Acquired::Shutdown));
    }
}
