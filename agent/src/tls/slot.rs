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
use crate::{
    reload::generation::{Generation, GenerationStore},
    sync::LockExt,
};

/// The configuration of one epoch.
pub(crate) struct ActiveTls {
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

/// What [`TlsSlot::refresh`] did.
pub(crate) enum Refresh {
    /// A new epoch began with this configuration.
    Rebuilt(Arc<ActiveTls>),
    /// What is served already matches the store's current generations (another accept or the
    /// follower rebuilt it first, or nothing changed).
    Current,
    /// The server bundle (or the client CA) has no generation yet: nothing to build from.
    NoGeneration,
    /// The store's generations did not make a configuration (logged); the previous epoch stays.
    BuildFailed,
}

/// A listener's current TLS configuration and the start time of every epoch.
#[derive(Default)]
pub(crate) struct TlsSlot {
    current: ArcSwapOption<ActiveTls>,
    started: Mutex<Vec<Instant>>,
}

impl TlsSlot {
    /// The configuration new connections take (lock-free); `None` until the bundle has a
    /// generation.
    pub(crate) fn current(&self) -> Option<Arc<ActiveTls>> {
        self.current.load_full()
    }

    /// When `epoch` began (its connections are stale from the start of `epoch + 1`).
    pub(crate) fn epoch_started(&self, epoch: u64) -> Option<Instant> {
        let started = self.started.lock_or_recover();
        epoch
            .checked_sub(1)
            .and_then(|i| started.get(i as usize))
            .copied()
    }

    /// The configuration for a connection being accepted now: the current one, rebuilt first if
    /// the store already holds a newer generation. This makes the swap strict: once a generation
    /// is published, no handshake that starts afterwards gets the old material, even before the
    /// listener's follower task has run.
    pub(crate) fn for_new_connection(
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
        match self.refresh(store, bundle, client_ca) {
            Refresh::Rebuilt(active) => Some(active),
            // Another accept rebuilt it first: take what is current now, not the stale copy.
            Refresh::Current => self.current(),
            // Nothing published yet for one of the bundles: whatever is served (usually nothing).
            Refresh::NoGeneration => self.current(),
            // The new material makes no configuration: the previous epoch keeps serving, as for the
            // follower (the build is retried, and logged, at the next accept).
            Refresh::BuildFailed => self.current(),
        }
    }

    /// Rebuilds from the store's current generations if they differ from what is served, and
    /// says which of that happened.
    pub(crate) fn refresh(
        &self,
        store: &GenerationStore,
        bundle: &str,
        client_ca: Option<&str>,
    ) -> Refresh {
        // Serialised: two racing refreshes must not open two epochs for one generation.
        let mut started = self.started.lock_or_recover();
        let Some(server) = store.current(bundle) else {
            return Refresh::NoGeneration;
        };
        let ca = match client_ca.map(|name| store.current(name)) {
            Some(None) => return Refresh::NoGeneration,
            Some(Some(ca)) => Some(ca),
            None => None,
        };
        if let Some(cur) = self.current() {
            if cur.server_generation == server.number
                && cur.client_ca_generation == ca.as_ref().map(|c| c.number)
            {
                return Refresh::Current;
            }
        }
        let config = match server_config::build(&server, ca.as_deref()) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(bundle, error = %e, "cannot build a TLS configuration; the previous one stays");
                return Refresh::BuildFailed;
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
        Refresh::Rebuilt(active)
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
            matches!(slot.refresh(&store, "web", None), Refresh::Current),
            "the follower finds it done"
        );
        assert!(slot.epoch_started(2).is_some());
    }

    #[test]
    fn refresh_tells_a_missing_generation_from_a_failed_build() {
        let store = GenerationStore::new(["web", "clients"]);
        let slot = TlsSlot::default();
        assert!(matches!(
            slot.refresh(&store, "web", None),
            Refresh::NoGeneration
        ));
        store.publish("web", generation(1));
        assert!(
            matches!(
                slot.refresh(&store, "web", Some("clients")),
                Refresh::NoGeneration
            ),
            "the client CA has no generation yet"
        );
        let Refresh::Rebuilt(first) = slot.refresh(&store, "web", None) else {
            panic!("epoch 1 from generation 1");
        };
        let mut keyless = generation(2);
        keyless.material.key = None;
        store.publish("web", keyless);
        assert!(matches!(
            slot.refresh(&store, "web", None),
            Refresh::BuildFailed
        ));
        let served = slot
            .for_new_connection(&store, "web", None)
            .expect("the previous epoch");
        assert!(Arc::ptr_eq(&first, &served), "epoch 1 keeps serving");
        assert!(slot.epoch_started(2).is_none(), "no epoch opened");
    }
}
