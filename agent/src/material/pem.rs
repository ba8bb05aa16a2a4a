//! Decoding certificates and keys from PEM (or DER) bytes, without ever panicking on bad input and
//! without ever putting key bytes into an error.

use rustls_pki_types::{
    pem::{self, SectionKind},
    CertificateDer, PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer,
    SubjectPublicKeyInfoDer,
};
use thiserror::Error;

/// Why bytes are not the expected material. Messages never quote the input.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PemError {
    /// Zero bytes (or only whitespace).
    #[error("empty file")]
    Empty,
    /// A `BEGIN` line without its `END`: typically a file read while being written.
    #[error("truncated PEM: section {label} has no END line")]
    Truncated {
        /// The section label.
        label: String,
    },
    /// Bytes that are neither PEM nor DER of the expected kind.
    #[error("not PEM or DER: {0}")]
    Garbage(String),
    /// A PEM file without the expected section.
    #[error("no {0} found")]
    Missing(&'static str),
    /// An encrypted private key: the agent cannot (and must not) prompt for a passphrase.
    #[error("the private key is encrypted ({0}); certreload needs an unencrypted key")]
    Encrypted(&'static str),
    /// More than one private key where one is expected.
    #[error("{0} private keys found, expected exactly one")]
    TooManyKeys(usize),
}

fn sections(bytes: &[u8]) -> Result<Vec<(SectionKind, Vec<u8>)>, PemError> {
    let mut reader = std::io::Cursor::new(bytes);
    let mut out = Vec::new();
    loop {
        match pem::from_buf(&mut reader) {
            Ok(Some(section)) => out.push(section),
            Ok(None) => return Ok(out),
            Err(pem::Error::MissingSectionEnd { end_marker }) => {
                return Err(PemError::Truncated {
                    label: label_text(&end_marker),
                })
            }
            Err(pem::Error::IllegalSectionStart { .. }) => {
                return Err(PemError::Garbage("malformed BEGIN line".into()))
            }
            Err(pem::Error::Base64Decode(_)) => {
                return Err(PemError::Garbage("invalid base64 in a PEM section".into()))
            }
            Err(other) => {
                return Err(PemError::Garbage(
                    format!("{other:?}").chars().take(80).collect(),
                ))
            }
        }
    }
}

fn label_text(marker: &[u8]) -> String {
    String::from_utf8_lossy(marker)
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(64)
        .collect()
}

fn looks_like_pem(bytes: &[u8]) -> bool {
    bytes.windows(11).any(|w| w == b"-----BEGIN ")
}

fn check_empty(bytes: &[u8]) -> Result<(), PemError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        Err(PemError::Empty)
    } else {
        Ok(())
    }
}

/// Every certificate in `bytes`, in order (leaf first for a chain; any order for a CA bundle).
/// Accepts PEM, or a single DER certificate.
pub fn certificates(bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, PemError> {
    check_empty(bytes)?;
    if !looks_like_pem(bytes) {
        return der_certificate(bytes).map(|c| vec![c]);
    }
    let certs: Vec<_> = sections(bytes)?
        .into_iter()
        .filter(|(kind, _)| *kind == SectionKind::Certificate)
        .map(|(_, der)| CertificateDer::from(der))
        .collect();
    if certs.is_empty() {
        return Err(PemError::Missing("CERTIFICATE section"));
    }
    Ok(certs)
}

fn der_certificate(bytes: &[u8]) -> Result<CertificateDer<'static>, PemError> {
    match x509_parser::parse_x509_certificate(bytes) {
        Ok(([], _)) => Ok(CertificateDer::from(bytes.to_vec())),
        _ => Err(PemError::Garbage(
            "no PEM section and not a DER certificate".into(),
        )),
    }
}

/// The one private key in `bytes`: PKCS#8, PKCS#1 (RSA) or SEC1 (EC) PEM, or PKCS#8 DER.
/// Encrypted keys are refused with a message saying so.
pub fn private_key(bytes: &[u8]) -> Result<PrivateKeyDer<'static>, PemError> {
    check_empty(bytes)?;
    if bytes
        .windows(31)
        .any(|w| w == b"BEGIN ENCRYPTED PRIVATE KEY----")
    {
        return Err(PemError::Encrypted("PKCS#8 EncryptedPrivateKeyInfo"));
    }
    if bytes.windows(22).any(|w| w == b"Proc-Type: 4,ENCRYPTED") {
        return Err(PemError::Encrypted("legacy OpenSSL PEM encryption"));
    }
    if !looks_like_pem(bytes) {
        // DER: only PKCS#8 is self-describing enough to accept blind.
        return if bytes.first() == Some(&0x30)
            && rustls::crypto::ring::sign::any_supported_type(&PrivateKeyDer::Pkcs8(
                PrivatePkcs8KeyDer::from(bytes),
            ))
            .is_ok()
        {
            Ok(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                bytes.to_vec(),
            )))
        } else {
            Err(PemError::Garbage(
                "no PEM section and not a DER PKCS#8 key".into(),
            ))
        };
    }
    let mut keys: Vec<PrivateKeyDer<'static>> = sections(bytes)?
        .into_iter()
        .filter_map(|(kind, der)| match kind {
            SectionKind::PrivateKey => Some(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der))),
            SectionKind::RsaPrivateKey => Some(PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(der))),
            SectionKind::EcPrivateKey => Some(PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(der))),
            _ => None,
        })
        .collect();
    match keys.len() {
        0 => Err(PemError::Missing("PRIVATE KEY section")),
        1 => Ok(keys.remove(0)),
        n => Err(PemError::TooManyKeys(n)),
    }
}

/// Every public key (`PUBLIC KEY`, SubjectPublicKeyInfo) in `bytes` (ServiceAccount key files).
/// A certificate's key also counts, since Kubernetes accepts certificates in those files.
pub fn public_keys(bytes: &[u8]) -> Result<Vec<SubjectPublicKeyInfoDer<'static>>, PemError> {
    check_empty(bytes)?;
    if !looks_like_pem(bytes) {
        return Err(PemError::Garbage("no PEM section".into()));
    }
    let mut keys = Vec::new();
    for (kind, der) in sections(bytes)? {
        match kind {
            SectionKind::PublicKey => keys.push(SubjectPublicKeyInfoDer::from(der)),
            SectionKind::Certificate => {
                if let Ok((_, cert)) = x509_parser::parse_x509_certificate(&der) {
                    keys.push(SubjectPublicKeyInfoDer::from(
                        cert.public_key().raw.to_vec(),
                    ));
                }
            }
            _ => {}
        }
    }
    if keys.is_empty() {
        return Err(PemError::Missing("PUBLIC KEY section"));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn key_pem() -> (rcgen::KeyPair, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let pem = key.serialize_pem();
        (key, pem)
    }

    #[test]
    fn decodes_keys_and_certificates() {
        let (key, pem) = key_pem();
        assert!(matches!(
            private_key(pem.as_bytes()),
            Ok(PrivateKeyDer::Pkcs8(_))
        ));
        assert!(matches!(
            private_key(&key.serialize_der()),
            Ok(PrivateKeyDer::Pkcs8(_))
        ));
        let cert = rcgen::CertificateParams::new(vec!["a".into()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let two = format!("{}{}", cert.pem(), cert.pem());
        assert_eq!(certificates(two.as_bytes()).expect("certs").len(), 2);
        assert_eq!(certificates(cert.der()).expect("der").len(), 1);
        assert_eq!(public_keys(cert.pem().as_bytes()).expect("spki").len(), 1);
        assert_eq!(
            public_keys(key.public_key_pem().as_bytes())
                .expect("spki")
                .len(),
            1
        );
    }

    #[test]
    fn names_what_is_wrong() {
        assert_eq!(certificates(b"").err(), Some(PemError::Empty));
        assert_eq!(certificates(b" \n").err(), Some(PemError::Empty));
        assert!(matches!(
            certificates(b"garbage bytes"),
            Err(PemError::Garbage(_))
        ));
        let (_, pem) = key_pem();
        assert_eq!(
            certificates(pem.as_bytes()).err(),
            Some(PemError::Missing("CERTIFICATE section"))
        );
        let truncated = &pem.as_bytes()[..pem.len() / 2];
        assert!(matches!(
            private_key(truncated),
            Err(PemError::Truncated { .. })
        ));
        let encrypted =
            b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n";
        assert!(matches!(
            private_key(encrypted),
            Err(PemError::Encrypted(_))
        ));
        let two = format!("{pem}{pem}");
        assert_eq!(
            private_key(two.as_bytes()).err(),
            Some(PemError::TooManyKeys(2))
        );
    }

    #[test]
    fn errors_never_quote_key_material() {
        let (_, pem) = key_pem();
        let body: String = pem.lines().nth(1).expect("base64 line").to_string();
        let damaged = pem.replacen(&body[..10], "!!!!!!!!!!", 1);
        let err = private_key(damaged.as_bytes()).expect_err("damaged");
        assert!(!err.to_string().contains(&body[10..20]), "{err}");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            // Only a panic fails: any input may be refused.
            certificates(&bytes).ok();
            private_key(&bytes).ok();
            public_keys(&bytes).ok();
        }

        #[test]
        fn arbitrary_text_inside_pem_armour_never_panics(body in "[A-Za-z0-9+/=\n-]{0,600}") {
            for label in ["CERTIFICATE", "PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY", "PUBLIC KEY"] {
                let pem = format!("-----BEGIN {label}-----\n{body}\n-----END {label}-----\n");
                // Only a panic fails: any input may be refused.
                certificates(pem.as_bytes()).ok();
                private_key(pem.as_bytes()).ok();
                public_keys(pem.as_bytes()).ok();
            }
        }
    }
}
