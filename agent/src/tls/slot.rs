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

    /// Rebuilds from the store's current generations if they differ from what is served.
    /// Returns the new epoch when one began.
    pub fn refresh(
        &self,
        store: &GenerationStore,
        bundle: &str,
        client_ca: Option<&str>,
    ) -> Option<Arc<ActiveTls>> {
        let server = store.current(bundle)?;
        let ca = match client_ca {
            Some(name) => Some(store.current(name)?),
            None => None,
        };
        let current = self.current();
        if let Some(cur) = &current {
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
        let mut started = self
            .started
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
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
