//! The admin endpoint's serving certificate when it is reachable beyond loopback, so bearer
//! tokens never cross the network in clear (the kubelet and kube-rbac-proxy do the same: a
//! configured certificate, else a self-signed one made at start).

use std::{path::PathBuf, sync::Arc};

use rustls::ServerConfig;
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::config::admin::AdminTls;

/// The serving certificate could not be set up: a start-up error naming the file.
#[derive(Debug, Error)]
pub(crate) enum AdminTlsError {
    /// `admin.tls_cert` holds no PEM certificate, or cannot be read.
    #[error("admin.tls_cert {path}: {message}")]
    Cert {
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// `admin.tls_key` holds no PEM private key, or cannot be read.
    #[error("admin.tls_key {path}: {message}")]
    Key {
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the pair (the key does not match, an unsupported key type), or the
    /// self-signed certificate could not be generated.
    #[error("admin endpoint serving certificate: {0}")]
    Config(String),
}

/// A TLS server configuration for the admin endpoint and the SHA-256 fingerprint of its leaf
/// (logged at start so a scraper can pin it).
pub(crate) struct AdminIdentity {
    /// For `tokio_rustls::TlsAcceptor`.
    pub config: Arc<ServerConfig>,
    /// Hex SHA-256 of the leaf certificate's DER.
    pub fingerprint: String,
    /// `configured` or `self-signed`.
    pub origin: &'static str,
}

/// The configured certificate, or a self-signed one for `names` (DNS names or IP addresses).
pub(crate) fn identity(
    configured: Option<&AdminTls>,
    names: Vec<String>,
) -> Result<AdminIdentity, AdminTlsError> {
    let (chain, key, origin) = match configured {
        Some(tls) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert)
                .and_then(|it| it.collect::<Result<_, _>>())
                .map_err(|e| AdminTlsError::Cert {
                    path: tls.cert.clone(),
                    message: e.to_string(),
                })?;
            if chain.is_empty() {
                return Err(AdminTlsError::Cert {
                    path: tls.cert.clone(),
                    message: "no PEM CERTIFICATE block".into(),
                });
            }
            let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(|e| AdminTlsError::Key {
                path: tls.key.clone(),
                message: e.to_string(),
            })?;
            (chain, key, "configured")
        }
        None => {
            let certified = rcgen::generate_simple_self_signed(names)
                .map_err(|e| AdminTlsError::Config(e.to_string()))?;
            let key = PrivateKeyDer::try_from(certified.signing_key.serialize_der())
                .map_err(|e| AdminTlsError::Config(e.to_string()))?;
            (vec![certified.cert.der().clone()], key, "self-signed")
        }
    };
    let fingerprint = hex::encode(Sha256::digest(chain[0].as_ref()));
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| AdminTlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| AdminTlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(AdminIdentity {
        config: Arc::new(config),
        fingerprint,
        origin,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_identity_names_the_node() {
        let id = identity(None, vec!["localhost".into(), "10.0.0.1".into()]).expect("generate");
        assert_eq!(id.origin, "self-signed");
        assert_eq!(id.fingerprint.len(), 64);
    }

    #[test]
    fn configured_files_are_named_in_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tls = AdminTls {
            cert: dir.path().join("missing.crt"),
            key: dir.path().join("missing.key"),
        };
        let e = identity(Some(&tls), vec![]).err().expect("missing file");
        assert!(e.to_string().contains("missing.crt"), "{e}");
        let c = rcgen::generate_simple_self_signed(vec!["x".into()]).expect("rcgen");
        std::fs::write(&tls.cert, c.cert.pem()).expect("write");
        std::fs::write(&tls.key, "not a key").expect("write");
        let e = identity(Some(&tls), vec![]).err().expect("bad key");
        assert!(e.to_string().contains("missing.key"), "{e}");
        std::fs::write(&tls.key, c.signing_key.serialize_pem()).expect("write");
        assert_eq!(
            identity(Some(&tls), vec![]).expect("pair").origin,
            "configured"
        );
    }
}
