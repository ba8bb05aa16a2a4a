//! One TLS handshake with an endpoint certreload does not front, to see what it serves and whether
//! it accepts a client certificate. The probe records the server's certificate instead of trusting
//! it (the point is to compare it with the bundle), but still checks the handshake signature, so
//! the endpoint proved it holds the key of the leaf it showed.

use std::{sync::Arc, time::Duration};

use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider},
    pki_types::{CertificateDer, ServerName, UnixTime},
    ClientConfig, DigitallySignedStruct, SignatureScheme,
};
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio::{io::AsyncReadExt, net::TcpStream};

use crate::{material::inspect::inspect, reload::generation::Generation};

/// How long connecting and handshaking may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// After a TLS 1.3 handshake the server judges the client certificate; a refusal arrives as an
/// alert shortly after. Silence this long counts as acceptance.
const CLIENT_VERDICT_WAIT: Duration = Duration::from_millis(750);

/// What the endpoint did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    /// SHA-256 of the leaf it served (hex, as in generations).
    pub leaf_fingerprint: String,
    /// Its notAfter (Unix seconds), when parsable.
    pub not_after: Option<i64>,
    /// With a client certificate: `None` when accepted, else the alert or error it answered with.
    pub client_refused: Option<String>,
}

/// The endpoint could not be observed.
#[derive(Debug, Error)]
pub enum ObserveError {
    /// TCP connect failed.
    #[error("connect {endpoint}: {source}")]
    Connect {
        /// `host:port`.
        endpoint: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The handshake failed (includes a TLS 1.2 server refusing the client certificate).
    #[error("handshake with {endpoint}: {message}")]
    Handshake {
        /// `host:port`.
        endpoint: String,
        /// rustls' description.
        message: String,
    },
    /// No answer within [`HANDSHAKE_TIMEOUT`].
    #[error("{endpoint}: no handshake within {HANDSHAKE_TIMEOUT:?}")]
    Timeout {
        /// `host:port`.
        endpoint: String,
    },
    /// The server name or the client material cannot be used.
    #[error("{0}")]
    Setup(String),
}

/// Accepts any server certificate (it is recorded, not trusted) but verifies handshake signatures.
#[derive(Debug)]
struct RecordServerCert(Arc<CryptoProvider>);

impl ServerCertVerifier for RecordServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn client_config(client: Option<&Generation>) -> Result<ClientConfig, ObserveError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ObserveError::Setup(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(RecordServerCert(provider)));
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some(g) => {
            let key = g.material.key.as_ref().ok_or_else(|| {
                ObserveError::Setup(format!("client generation {} has no key", g.number))
            })?;
            builder
                .with_client_auth_cert(g.material.chain.clone(), key.clone_key())
                .map_err(|e| ObserveError::Setup(format!("client certificate: {e}")))?
        }
    };
    // Every probe is a full handshake: a resumed session would not show the current leaf.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// Handshakes with `endpoint` as `server_name`, presenting `client` when given.
pub async fn observe(
    endpoint: &str,
    server_name: &str,
    client: Option<&Generation>,
) -> Result<Observation, ObserveError> {
    let name = ServerName::try_from(server_name.to_string())
        .map_err(|e| ObserveError::Setup(format!("server_name {server_name:?}: {e}")))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(client)?));
    let timeout = || ObserveError::Timeout {
        endpoint: endpoint.to_string(),
    };
    let tcp = tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(endpoint))
        .await
        .map_err(|_| timeout())?
        .map_err(|source| ObserveError::Connect {
            endpoint: endpoint.to_string(),
            source,
        })?;
    let mut tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, tcp))
        .await
        .map_err(|_| timeout())?
        .map_err(|e| ObserveError::Handshake {
            endpoint: endpoint.to_string(),
            message: e.to_string(),
        })?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .cloned()
        .ok_or_else(|| ObserveError::Handshake {
            endpoint: endpoint.to_string(),
            message: "the server sent no certificate".into(),
        })?;
    let client_refused = if client.is_some() {
        let mut byte = [0u8; 1];
        match tokio::time::timeout(CLIENT_VERDICT_WAIT, tls.read(&mut byte)).await {
            Ok(Err(e)) => Some(e.to_string()),
            // Data, a clean close or silence: the certificate passed.
            _ => None,
        }
    } else {
        None
    };
    Ok(Observation {
        leaf_fingerprint: hex::encode(Sha256::digest(&leaf)),
        not_after: inspect(&leaf).ok().map(|i| i.not_after),
        client_refused,
    })
}
