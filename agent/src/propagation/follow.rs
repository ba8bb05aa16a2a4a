//! The follower (`[sa_keys] follow = true`, every node): watches the key-identity ConfigMap and
//! hands its content to the rest of the agent as a `watch` channel (the newest value wins; the
//! token tracker reads it).
//!
//! - A kube-runtime watcher on that one object (field selector `metadata.name`). When the watch
//!   fails (API server down, a refusal), the failure is audited once (`sa_keys_watch_lost`) and a
//!   new watcher is made after a backoff: it lists the object again before watching, so a change
//!   made while the watch was lost is seen as soon as the API server answers
//!   (`sa_keys_watch_resumed`, then `sa_keys_followed` if the content changed).
//! - Each new content is checked field by field ([`PublishedKeys::from_data`]); a malformed one is
//!   logged with the check that failed and the last good value stays. A deleted object is logged
//!   and the last value stays too: the keys it named are still the ones the API server accepts
//!   until a publisher writes others.
//! - `sa_keys_followed` is audited once per new content (a different key identity, generation or
//!   publisher), not per resourceVersion.

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    runtime::watcher::{self, Event},
    Api,
};
use tokio::sync::watch;

use super::{api, board::SaKeysBoard, keys::PublishedKeys};
use crate::{
    audit::{append_shared, AuditEvent, SharedAudit},
    config::{sa_keys::SaKeysSettings, Config},
    shutdown::Shutdown,
};

/// First pause before making a new watcher after a failure; doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Longest pause between attempts while the watch is lost: a change made during an API server
/// outage is seen at most this long after the server answers again.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How long the API server keeps one watch request open before ending it (the watch's
/// `timeoutSeconds`; the watcher then watches again from the last resourceVersion, without a new
/// list). Kept short because kube-rs speaks HTTP/1.1: kube-apiserver's graceful shutdown waits
/// for an HTTP/1.1 watch to end (HTTP/2 streams are cut after a GOAWAY) up to its 60 s request
/// timeout unless `--shutdown-watch-termination-grace-period` is set, which kubeadm does not; a
/// follower holding the default 290 s watch made every API server restart (the SA key rotation's
/// restart action included) take a minute. One resumed watch per node every 5 s is the same
/// order of load as the kubelets' Lease renewals.
const WATCH_TIMEOUT_S: u32 = 5;

/// The key identity the cluster's control plane published, as this node follows it: `None`
/// until a valid one was read.
pub(crate) type FollowedKeys = watch::Receiver<Option<PublishedKeys>>;

/// Starts the follower when `[sa_keys] follow` is on. The receiver sees every new valid content
/// of the ConfigMap. Its sender lives until the agent stops in every case, so a reader's
/// `changed()` never fails early: without `[sa_keys] follow` (or without API credentials,
/// logged) the value just stays `None`.
pub(crate) fn start(
    config: &Config,
    audit: &SharedAudit,
    board: &SaKeysBoard,
    stop: &Shutdown,
) -> FollowedKeys {
    let (tx, rx) = watch::channel(None);
    let Some(settings) = config.sa_keys.as_ref().filter(|s| s.follow) else {
        let mut stop = stop.clone();
        tokio::spawn(async move {
            stop.recv().await;
            drop(tx);
        });
        return rx;
    };
    let follower = Follower {
        settings: settings.clone(),
        audit: audit.clone(),
        board: board.clone(),
        keys: tx,
        lost: None,
    };
    tokio::spawn(follower.run(stop.clone()));
    rx
}

/// The watch of the ConfigMap and what it last delivered.
struct Follower {
    settings: SaKeysSettings,
    audit: SharedAudit,
    board: SaKeysBoard,
    /// Where the valid contents go.
    keys: watch::Sender<Option<PublishedKeys>>,
    /// Since when and why the watch is lost (`None`: connected, or not yet tried).
    lost: Option<(Instant, String)>,
}

/// Why one watcher ended.
enum Ended {
    /// The agent stops.
    Stopped,
    /// The watch failed with this error (in words).
    Failed(String),
}

impl Follower {
    /// Makes a client, then watches until the agent stops, making a new watcher after each
    /// failure.
    async fn run(mut self, mut stop: Shutdown) {
        let configmap = self.settings.configmap();
        let client = match api::client(&configmap).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "[sa_keys] follow is set but there are no Kubernetes API credentials; the key identity is not followed");
                // Keep the sender: the value stays None (not "closed") until the agent stops.
                stop.recv().await;
                return;
            }
        };
        tracing::info!(configmap = %configmap, "following the ServiceAccount key identity");
        api::note_rbac(&self.settings.namespace, &self.settings.name);
        let api: Api<ConfigMap> = Api::namespaced(client, &self.settings.namespace);
        let mut backoff = FIRST_BACKOFF;
        loop {
            let error = match self.watch(&api, &mut stop).await {
                Ended::Stopped => return,
                Ended::Failed(error) => error,
            };
            if self.lost.is_none() {
                backoff = FIRST_BACKOFF;
            }
            self.lose(error);
            tokio::select! {
                _ = stop.recv() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One watcher, from its initial list until it fails or the agent stops.
    async fn watch(&mut self, api: &Api<ConfigMap>, stop: &mut Shutdown) -> Ended {
        let config = watcher::Config::default()
            .fields(&format!("metadata.name={}", self.settings.name))
            .timeout(WATCH_TIMEOUT_S);
        let stream = watcher::watcher(api.clone(), config);
        futures::pin_mut!(stream);
        // Whether the current (re-)list found the object.
        let mut listed = false;
        loop {
            let event = tokio::select! {
                _ = stop.recv() => return Ended::Stopped,
                event = stream.next() => event,
            };
            match event {
                // The watcher's stream does not end; if it did, make a new one.
                None => return Ended::Failed("the watch stream ended".into()),
                Some(Err(e)) => return Ended::Failed(e.to_string()),
                Some(Ok(Event::Init)) => listed = false,
                Some(Ok(Event::InitDone)) => {
                    self.connected();
                    if !listed {
                        tracing::info!(configmap = %self.settings.configmap(), "the key identity ConfigMap does not exist (nothing published yet, or deleted); the last key identity followed, if any, stays in use");
                    }
                }
                Some(Ok(Event::InitApply(object))) => {
                    listed = true;
                    self.connected();
                    self.take(&object);
                }
                Some(Ok(Event::Apply(object))) => {
                    self.connected();
                    self.take(&object);
                }
                Some(Ok(Event::Delete(object))) => {
                    tracing::warn!(configmap = %self.settings.configmap(), resource_version = %object.metadata.resource_version.unwrap_or_default(), "the key identity ConfigMap was deleted; the last key identity followed stays in use");
                }
            }
        }
    }

    /// The watch delivers again: audits the resumption after a loss.
    fn connected(&mut self) {
        self.board.connected(true);
        let Some((since, error)) = self.lost.take() else {
            return;
        };
        let configmap = self.settings.configmap();
        let lost_s = since.elapsed().as_secs_f64();
        tracing::info!(configmap = %configmap, lost_s, "the watch of the key identity ConfigMap resumed");
        self.append(&AuditEvent::SaKeysWatchResumed {
            configmap,
            error,
            lost_s,
        });
    }

    /// The watch failed: audited once per loss, logged every time.
    fn lose(&mut self, error: String) {
        self.board.connected(false);
        let configmap = self.settings.configmap();
        tracing::warn!(configmap = %configmap, error = %error, "the watch of the key identity ConfigMap failed; making a new one after a backoff");
        match &mut self.lost {
            Some((_, last)) => *last = error,
            None => {
                self.append(&AuditEvent::SaKeysWatchLost {
                    configmap,
                    error: error.clone(),
                });
                self.lost = Some((Instant::now(), error));
            }
        }
    }

    /// A delivered object: taken when valid and new, else the last good value stays.
    fn take(&mut self, object: &ConfigMap) {
        let resource_version = object.metadata.resource_version.clone().unwrap_or_default();
        let empty = Default::default();
        let keys = match PublishedKeys::from_data(object.data.as_ref().unwrap_or(&empty)) {
            Ok(keys) => keys,
            Err(e) => {
                tracing::warn!(configmap = %self.settings.configmap(), resource_version = %resource_version, check = %e, "the key identity ConfigMap is malformed; the last key identity followed stays in use");
                return;
            }
        };
        if self.keys.borrow().as_ref() == Some(&keys) {
            return;
        }
        self.board.followed(&keys, &resource_version);
        tracing::info!(configmap = %self.settings.configmap(), generation = keys.generation, signing_kid = %keys.signing_kid, publisher = %keys.publisher, resource_version = %resource_version, "following a new ServiceAccount key identity");
        self.append(&AuditEvent::SaKeysFollowed {
            configmap: self.settings.configmap(),
            kids: keys.kids.clone(),
            signing_kid: keys.signing_kid.clone(),
            generation: keys.generation,
            publisher: keys.publisher.clone(),
            resource_version,
        });
        self.keys.send_replace(Some(keys));
    }

    fn append(&self, event: &AuditEvent) {
        if let Err(e) = append_shared(&self.audit, None, event) {
            tracing::error!(error = %e, event = event.name(), "cannot record the key identity follower's event in the audit log");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;
    use crate::audit::AuditLog;

    fn keys(signing: u8, generation: u64) -> PublishedKeys {
        let kid = |n: u8| crate::material::validate::kubernetes_key_id(&[n]);
        let mut kids = vec![kid(1), kid(2)];
        kids.sort();
        PublishedKeys {
            kids,
            signing_kid: kid(signing),
            generation,
            published_at: "2026-11-30T09:00:00Z".into(),
            publisher: "cp-1".into(),
        }
    }

    fn object(data: std::collections::BTreeMap<String, String>, rv: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                resource_version: Some(rv.into()),
                ..ObjectMeta::default()
            },
            data: Some(data),
            ..ConfigMap::default()
        }
    }

    fn events(path: &std::path::Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .expect("audit log")
            .lines()
            .map(|l| serde_json::from_str(l).expect("a record"))
            .collect()
    }

    #[test]
    fn new_content_is_followed_once_and_a_malformed_one_keeps_the_last_good_value() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let audit = Arc::new(Mutex::new(AuditLog::open(&path, 1 << 20).expect("audit")));
        let (tx, rx) = watch::channel(None);
        let board = SaKeysBoard::new("kube-system/certreload-sa-keys", true);
        let mut follower = Follower {
            settings: SaKeysSettings {
                namespace: "kube-system".into(),
                name: "certreload-sa-keys".into(),
                publish: None,
                follow: true,
            },
            audit,
            board: board.clone(),
            keys: tx,
            lost: None,
        };
        follower.take(&object(keys(1, 1).to_data(), "10"));
        assert_eq!(rx.borrow().as_ref(), Some(&keys(1, 1)));
        // The same content at another resourceVersion (an unrelated update): no new record.
        follower.take(&object(keys(1, 1).to_data(), "11"));
        let mut malformed = keys(2, 2).to_data();
        malformed.remove("generation");
        follower.take(&object(malformed, "12"));
        assert_eq!(
            rx.borrow().as_ref(),
            Some(&keys(1, 1)),
            "last good value kept"
        );
        follower.take(&object(keys(2, 3).to_data(), "13"));
        assert_eq!(rx.borrow().as_ref(), Some(&keys(2, 3)));

        follower.lose("connection refused".into());
        follower.lose("connection refused again".into());
        assert_eq!(board.status().watch_connected, Some(false));
        follower.connected();
        assert_eq!(board.status().watch_connected, Some(true));
        assert_eq!(board.status().followed.map(|f| f.generation), Some(3));

        let records = events(&path);
        let names: Vec<&str> = records
            .iter()
            .map(|r| r["event"].as_str().expect("event"))
            .collect();
        assert_eq!(
            names,
            [
                "sa_keys_followed",
                "sa_keys_followed",
                "sa_keys_watch_lost",
                "sa_keys_watch_resumed"
            ]
        );
        assert_eq!(records[0]["resource_version"], "10");
        assert_eq!(records[1]["generation"], 3);
        assert_eq!(records[2]["error"], "connection refused");
        assert_eq!(records[3]["error"], "connection refused again");
    }
}
