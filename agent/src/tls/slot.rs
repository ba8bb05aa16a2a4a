//! The TLS configuration a listener hands to each new connection, swapped when a generation of its
//! server bundle (or client CA) changes. Each swap opens a new *epoch*; a connection records the
//! epoch it was made in, which is how it knows it is stale.

use std::{
    sync::{Arc, Mutex},
    time::Instant,
};

use arc_swap::ArcSwapOption;
use rustls::ServerConfig;

use super::server_config;
use crate::reload::generation::{Generation, GenerationStore};

/// The configuration of one epoch.
pub struct ActiveTls {
    /// Listener-local epoch: 1, 2, 3… one per configuration built.
    pub epoch: u64,
    /// Server bundle generation it serves.
    pub server_generation: u64,
    /// Client CA generation it verifies against, with mTLS.
    pub client_ca_generation: Option<u64>,
    /// The rustls configuration.
    pub config: Arc<ServerConfig>,
    /// The client CA generation itself (to re-verify live connections on rotation).
    pub client_ca: Option<Arc<Generation>>,
}

/// A listener's current TLS configuration and the start time of every epoch.
#[derive(Default)]
pub struct TlsSlot {
    current: ArcSwapOption<ActiveTls>,
    started: Mutex<Vec<Instant>>,
}

impl TlsSlot {
    /// The configuration new connections take (lock-free); `None` until the bundle has a
    /// generation.
    pub fn current(&self) -> Option<Arc<ActiveTls>> {
        self.current.load_full()
    }

    /// When `epoch` began (its connections are stale from the start of `epoch + 1`).
    pub fn epoch_started(&self, epoch: u64) -> Option<Instant> {
        let started = self
            .started
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        epoch
            .checked_sub(1)
            .and_then(|i| started.get(i as usize))
            .copied()
    }

    /// The configuration for a connection being accepted now: the current one, rebuilt first if
    /// the store already holds a newer generation. This makes the swap strict: once a generation
    /// is published, no handshake that starts afterwards gets the old material, even before the
    /// listener's follower task has run.
    pub fn for_new_connection(
        &self,
        store: &GenerationStore,
        bundle: &str,
        client_ca: Option<&str>,
    ) -> Option<Arc<ActiveTls>> {
        let current = self.current();
        let up_to_date = current.as_ref().is_some_and(|cur| {
            store
                .current(bundle)
                .is_some_and(|g| g.number == cur.server_generation)
                && client_ca.is_none_or(|ca| {
                    store.current(ca).map(|g| g.number) == cur.client_ca_generation
                })
        });
        if up_to_date {
            return current;
        }
        // None means another accept rebuilt it first: take what is current now, not the stale copy.
        self.refresh(store, bundle, client_ca)
            .or_else(|| self.current())
    }

    /// Rebuilds from the store's current generations if they differ from what is served.
    /// Returns the new epoch when one began.
    pub fn refresh(
        &self,
        store: &GenerationStore,
        bundle: &str,
        client_ca: Option<&str>,
    ) -> Option<Arc<ActiveTls>> {
        // Serialised: two racing refreshes must not open two epochs for one generation.
        let mut started = self
            .started
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let server = store.current(bundle)?;
        let ca = match client_ca {
            Some(name) => Some(store.current(name)?),
            None => None,
        };
        if let Some(cur) = self.current() {
            if cur.server_generation == server.number
                && cur.client_ca_generation == ca.as_ref().map(|c| c.number)
            {
                return None;
            }
        }
        let config = match server_config::build(&server, ca.as_deref()) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(bundle, error = %e, "cannot build a TLS configuration; the previous one stays");
                return None;
            }
        };
        started.push(Instant::now());
        let active = Arc::new(ActiveTls {
            epoch: started.len() as u64,
            server_generation: server.number,
            client_ca_generation: ca.as_ref().map(|c| c.number),
            config,
            client_ca: ca,
        });
        self.current.store(Some(active.clone()));
        Some(active)
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::material::{
        read::DEFAULT_MAX_FILE_SIZE,
        validate::{validate_pair, PairPolicy, Usage},
    };

    fn generation(number: u64) -> Generation {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = crate::demo::prepare(dir.path()).expect("demo material");
        let policy = PairPolicy {
            usage: Usage::Server,
            expect_sans: vec![],
            min_validity: None,
            allow_san_removal: false,
            max_file_size: DEFAULT_MAX_FILE_SIZE,
        };
        let report = validate_pair(
            &files.cert,
            &files.key,
            Some(&files.ca),
            &policy,
            None,
            SystemTime::now(),
        );
        Generation {
            number,
            accepted_at: SystemTime::now(),
            material: report.material.expect("valid"),
        }
    }

    #[test]
    fn a_published_generation_reaches_the_next_connection_without_the_follower() {
        let store = GenerationStore::new(["web"]);
        let slot = TlsSlot::default();
        assert!(
            slot.for_new_connection(&store, "web", None).is_none(),
            "nothing to serve yet"
        );
        store.publish("web", generation(1));
        let first = slot
            .for_new_connection(&store, "web", None)
            .expect("epoch 1");
        assert_eq!((first.epoch, first.server_generation), (1, 1));
        assert!(
            Arc::ptr_eq(
                &first,
                &slot.for_new_connection(&store, "web", None).expect("same")
            ),
            "no rebuild without a change"
        );
        store.publish("web", generation(2));
        let second = slot
            .for_new_connection(&store, "web", None)
            .expect("epoch 2");
        assert_eq!((second.epoch, second.server_generation), (2, 2));
        assert!(
            slot.refresh(&store, "web", None).is_none(),
            "the follower finds it done"
        );
        assert!(slot.epoch_started(2).is_some());
    }
}
