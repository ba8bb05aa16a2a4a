//! A rustls `ServerConfig` per generation.
//!
//! Each config gets its own session cache and its own ticket keys: a session made under one
//! generation cannot be resumed under the next. That matters because rustls does not re-verify the
//! client certificate on resumption, so a session from before a client-CA rotation would otherwise
//! outlive the CA it was verified against.

use std::sync::Arc;

use rustls::{
    server::{danger::ClientCertVerifier, ServerSessionMemoryCache, WebPkiClientVerifier},
    RootCertStore, ServerConfig,
};
use thiserror::Error;

use crate::reload::generation::Generation;

/// Sessions kept per generation for resumption by ID (tickets are stateless).
pub(crate) const SESSION_CACHE_SIZE: usize = 4096;

/// A generation that cannot become a TLS configuration (validated material should always can; this
/// guards the boundary with rustls).
#[derive(Debug, Error)]
pub(crate) enum TlsConfigError {
    /// The generation carries no private key or certificate.
    #[error("generation {0} has no certificate and key to serve")]
    NoKey(u64),
    /// rustls refused the material.
    #[error("rustls: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client CA set is unusable.
    #[error("client CA: {0}")]
    ClientCa(String),
}

/// The client-certificate verifier for a client-CA generation (also used to re-verify live
/// connections when that CA rotates).
pub(crate) fn client_verifier(
    ca: &Generation,
) -> Result<Arc<dyn ClientCertVerifier>, TlsConfigError> {
    let mut roots = RootCertStore::empty();
    for der in &ca.material.ca_der {
        roots
            .add(der.clone())
            .map_err(|e| TlsConfigError::ClientCa(e.to_string()))?;
    }
    WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(|e| TlsConfigError::ClientCa(e.to_string()))
}

/// Builds the server configuration for `server`, requiring client certificates from `client_ca`
/// when given.
pub(crate) fn build(
    server: &Generation,
    client_ca: Option<&Generation>,
) -> Result<Arc<ServerConfig>, TlsConfigError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for der in &ca.material.ca_der {
                roots
                    .add(der.clone())
                    .map_err(|e| TlsConfigError::ClientCa(e.to_string()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsConfigError::ClientCa(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let key = server
        .material
        .key
        .as_ref()
        .ok_or(TlsConfigError::NoKey(server.number))?
        .clone_key();
    if server.material.chain.is_empty() {
        return Err(TlsConfigError::NoKey(server.number));
    }
    let mut config = builder.with_single_cert(server.material.chain.clone(), key)?;
    // Scope resumption to this generation (see the module comment).
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    Ok(Arc::new(config))
}
