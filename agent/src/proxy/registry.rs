//! Every live connection, the epoch it was made in, and a way to close it on purpose.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Instant,
};

use serde::Serialize;
use tokio::sync::watch;

use crate::sync::LockExt;

/// What the registry knows about one connection.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionInfo {
    /// Listener name.
    pub listener: String,
    /// Client address.
    pub peer: SocketAddr,
    /// The listener epoch whose configuration it was made with.
    pub epoch: u64,
    /// Server bundle generation.
    pub server_generation: u64,
    /// SHA-256 of the client certificate (mTLS).
    pub client_fingerprint: Option<String>,
    /// The client's certificate chain (mTLS), kept to re-verify it when the client CA rotates.
    pub client_chain: Vec<rustls_pki_types::CertificateDer<'static>>,
    /// Client bundle generation presented to the upstream (`upstream_tls`).
    pub upstream_generation: Option<u64>,
}

struct Entry {
    info: ConnectionInfo,
    close: watch::Sender<bool>,
}

/// Live connections of every listener.
#[derive(Default)]
pub(crate) struct Registry {
    next: AtomicU64,
    live: Mutex<HashMap<u64, Entry>>,
}

/// Per-listener counts for status and metrics.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub(crate) struct ListenerCounts {
    /// Live connections.
    pub live: usize,
    /// Of which made with an older epoch.
    pub stale: usize,
    /// Age of the oldest stale connection, seconds.
    pub oldest_stale_s: Option<f64>,
}

/// Keeps a connection registered; unregisters on drop.
pub(crate) struct Registration {
    registry: Arc<Registry>,
    id: u64,
    /// Turns true when the connection must close (drained or revoked).
    pub close: watch::Receiver<bool>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.live.lock_or_recover()
    }

    /// Registers a connection.
    pub(crate) fn register(self: &Arc<Self>, info: ConnectionInfo) -> Registration {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (close, rx) = watch::channel(false);
        self.lock().insert(id, Entry { info, close });
        Registration {
            registry: self.clone(),
            id,
            close: rx,
        }
    }

    /// Counts for `listener`, given its current epoch and when each epoch started.
    pub(crate) fn counts(
        &self,
        listener: &str,
        current_epoch: u64,
        current_upstream: Option<u64>,
        epoch_started: impl Fn(u64) -> Option<Instant>,
    ) -> ListenerCounts {
        let now = Instant::now();
        let live = self.lock();
        let mut counts = ListenerCounts::default();
        for e in live.values().filter(|e| e.info.listener == listener) {
            counts.live += 1;
            let upstream_stale = matches!((e.info.upstream_generation, current_upstream), (Some(made), Some(now)) if made < now);
            if upstream_stale && e.info.epoch >= current_epoch {
                counts.stale += 1;
            }
            if e.info.epoch < current_epoch {
                counts.stale += 1;
                let since =
                    epoch_started(e.info.epoch + 1).map(|t| now.duration_since(t).as_secs_f64());
                counts.oldest_stale_s = match (counts.oldest_stale_s, since) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
            }
        }
        counts
    }

    /// Asks connections of `listener` that have been stale for at least `grace` to close, at
    /// most `limit` of them (the drain is paced: the rest go at the next call), and returns them
    /// (for the audit trail).
    pub(crate) fn drain(
        &self,
        listener: &str,
        current_epoch: u64,
        grace: std::time::Duration,
        limit: usize,
        epoch_started: impl Fn(u64) -> Option<Instant>,
    ) -> Vec<(ConnectionInfo, f64)> {
        let now = Instant::now();
        let live = self.lock();
        let mut drained = Vec::new();
        for e in live
            .values()
            .filter(|e| e.info.listener == listener && e.info.epoch < current_epoch)
        {
            let Some(stale_since) = epoch_started(e.info.epoch + 1) else {
                continue;
            };
            let stale_for = now.duration_since(stale_since);
            if drained.len() == limit {
                break;
            }
            if stale_for >= grace && !*e.close.borrow() {
                // Fails only when the connection's task has ended: closed already.
                e.close.send(true).ok();
                drained.push((e.info.clone(), stale_for.as_secs_f64()));
            }
        }
        drained
    }

    /// Asks every connection of `listener` for which `untrusted` says so to close, and returns
    /// them (client-CA rotation with `close_untrusted`).
    pub(crate) fn revoke(
        &self,
        listener: &str,
        untrusted: impl Fn(&ConnectionInfo) -> bool,
    ) -> Vec<ConnectionInfo> {
        let live = self.lock();
        let mut revoked = Vec::new();
        for e in live
            .values()
            .filter(|e| e.info.listener == listener && !*e.close.borrow())
        {
            if untrusted(&e.info) {
                // Fails only when the connection's task has ended: closed already.
                e.close.send(true).ok();
                revoked.push(e.info.clone());
            }
        }
        revoked
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn info(epoch: u64) -> ConnectionInfo {
        ConnectionInfo {
            listener: "l".into(),
            peer: "127.0.0.1:1".parse().expect("addr"),
            epoch,
            server_generation: epoch,
            client_fingerprint: None,
            client_chain: Vec::new(),
            upstream_generation: None,
        }
    }

    #[test]
    fn counts_and_drains_stale_connections() {
        let registry = Arc::new(Registry::default());
        let old = registry.register(info(1));
        let _new = registry.register(info(2));
        let epoch2 = Instant::now() - Duration::from_secs(5);
        let started = |e: u64| (e == 2).then_some(epoch2);
        let c = registry.counts("l", 2, None, started);
        assert_eq!((c.live, c.stale), (2, 1));
        assert!(c.oldest_stale_s.expect("age") >= 5.0);
        assert!(
            registry
                .drain("l", 2, Duration::from_secs(60), 10, started)
                .is_empty(),
            "grace not over"
        );
        let drained = registry.drain("l", 2, Duration::from_secs(1), 10, started);
        assert_eq!(drained.len(), 1);
        assert!(*old.close.borrow(), "the stale connection is told to close");
        assert!(
            registry
                .drain("l", 2, Duration::from_secs(1), 10, started)
                .is_empty(),
            "only once"
        );
        drop(old);
        assert_eq!(registry.counts("l", 2, None, started).live, 1);
    }

    #[test]
    fn a_drain_closes_at_most_its_limit_and_the_rest_at_the_next() {
        let registry = Arc::new(Registry::default());
        let stale: Vec<Registration> = (0..5).map(|_| registry.register(info(1))).collect();
        let epoch2 = Instant::now() - Duration::from_secs(5);
        let started = |e: u64| (e == 2).then_some(epoch2);
        let grace = Duration::from_secs(1);
        assert_eq!(registry.drain("l", 2, grace, 2, started).len(), 2);
        let told = || stale.iter().filter(|r| *r.close.borrow()).count();
        assert_eq!(told(), 2, "the others wait for the next tick");
        assert_eq!(registry.drain("l", 2, grace, 2, started).len(), 2);
        assert_eq!(registry.drain("l", 2, grace, 2, started).len(), 1);
        assert_eq!(told(), 5);
        assert!(registry.drain("l", 2, grace, 2, started).is_empty());
    }
}
