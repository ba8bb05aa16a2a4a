//! rustls `ClientConfig`s for re-encryption to upstreams, one per generation of the client bundle
//! and CA, swapped like the server side: new upstream connections present the current client
//! certificate; older connections count as stale.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use rustls::{ClientConfig, RootCertStore};

use super::server_config::TlsConfigError;
use crate::{config::UpstreamTls, reload::generation::GenerationStore, sync::LockExt};

/// The client configuration of one (client bundle, CA) generation pair.
pub(crate) struct ActiveClientTls {
    /// Client bundle generation.
    pub client_generation: u64,
    /// CA generation.
    pub ca_generation: u64,
    /// The rustls configuration.
    pub config: Arc<ClientConfig>,
}

/// A listener's current upstream client configuration.
#[derive(Default)]
pub(crate) struct ClientSlot {
    current: ArcSwapOption<ActiveClientTls>,
    rebuild: Mutex<()>,
}

impl ClientSlot {
    /// The configuration for an upstream connection opened now (rebuilt first when the store holds
    /// newer generations).
    pub(crate) fn for_new_connection(
        &self,
        store: &GenerationStore,
        spec: &UpstreamTls,
    ) -> Option<Arc<ActiveClientTls>> {
        let client = store.current(&spec.client_bundle)?;
        let ca = store.current(&spec.ca)?;
        if let Some(cur) = self.current.load_full() {
            if cur.client_generation == client.number && cur.ca_generation == ca.number {
                return Some(cur);
            }
        }
        let _serial = self.rebuild.lock_or_recover();
        let build = || -> Result<Arc<ClientConfig>, TlsConfigError> {
            let mut roots = RootCertStore::empty();
            for der in &ca.material.ca_der {
                roots
                    .add(der.clone())
                    .map_err(|e| TlsConfigError::ClientCa(e.to_string()))?;
            }
            let key = client
                .material
                .key
                .as_ref()
                .ok_or(TlsConfigError::NoKey(client.number))?
                .clone_key();
            let config = ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(client.material.chain.clone(), key)?;
            Ok(Arc::new(config))
        };
        match build() {
            Ok(config) => {
                let active = Arc::new(ActiveClientTls {
                    client_generation: client.number,
                    ca_generation: ca.number,
                    config,
                });
                self.current.store(Some(active.clone()));
                Some(active)
            }
            Err(e) => {
                tracing::error!(bundle = %spec.client_bundle, error = %e, "cannot build the upstream TLS configuration; the previous one stays");
                self.current.load_full()
            }
        }
    }

    /// The current configuration, if any (status).
    pub(crate) fn current(&self) -> Option<Arc<ActiveClientTls>> {
        self.current.load_full()
    }
}
