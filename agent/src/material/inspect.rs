//! What a certificate says about itself: the fields the gate checks and the records report.

use serde::Serialize;
use sha2::{Digest, Sha256};
use thiserror::Error;
use x509_parser::{extensions::GeneralName, prelude::*};

/// The certificate's DER does not parse as X.509.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("not a valid X.509 certificate: {0}")]
pub struct InspectError(String);

/// Extended key usages the gate cares about.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Eku {
    /// The extension is present (absent means "any usage" for WebPKI and Kubernetes).
    pub present: bool,
    /// id-kp-serverAuth.
    pub server_auth: bool,
    /// id-kp-clientAuth.
    pub client_auth: bool,
    /// anyExtendedKeyUsage.
    pub any: bool,
}

/// Identity and validity of one certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertInfo {
    /// SHA-256 of the DER, hex: the identity used in records and metrics.
    pub fingerprint: String,
    /// Serial number, hex.
    pub serial: String,
    /// Subject common name.
    pub subject_cn: Option<String>,
    /// Issuer common name.
    pub issuer_cn: Option<String>,
    /// Full subject DN (RFC 4514).
    pub subject: String,
    /// Full issuer DN (RFC 4514).
    pub issuer: String,
    /// notBefore, Unix seconds.
    pub not_before: i64,
    /// notAfter, Unix seconds.
    pub not_after: i64,
    /// Subject alternative names: DNS names, IP addresses, URIs and e-mails, as text.
    pub sans: Vec<String>,
    /// basicConstraints CA flag.
    pub is_ca: bool,
    /// Extended key usage.
    pub eku: Eku,
    /// DER SubjectPublicKeyInfo (compared with private keys and with SA public keys).
    #[serde(skip)]
    pub spki: Vec<u8>,
}

#[cfg(test)]
impl CertInfo {
    /// A leaf that is only a fingerprint, for tests of code that compares fingerprints.
    pub(crate) fn with_fingerprint(fingerprint: &str) -> CertInfo {
        CertInfo {
            fingerprint: fingerprint.into(),
            serial: "01".into(),
            subject_cn: None,
            issuer_cn: None,
            subject: String::new(),
            issuer: String::new(),
            not_before: 0,
            not_after: 1,
            sans: vec![],
            is_ca: false,
            eku: Default::default(),
            spki: vec![],
        }
    }
}

/// Parses `der` and extracts [`CertInfo`].
pub fn inspect(der: &[u8]) -> Result<CertInfo, InspectError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| InspectError(e.to_string()))?;
    let cn = |name: &X509Name<'_>| {
        name.iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned)
    };
    let mut sans = Vec::new();
    let mut eku = Eku::default();
    let mut is_ca = false;
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                for name in &san.general_names {
                    match name {
                        GeneralName::DNSName(d) => sans.push(d.to_string()),
                        GeneralName::IPAddress(ip) => sans.push(ip_text(ip)),
                        GeneralName::URI(u) => sans.push(u.to_string()),
                        GeneralName::RFC822Name(m) => sans.push(m.to_string()),
                        _ => {}
                    }
                }
            }
            ParsedExtension::ExtendedKeyUsage(e) => {
                eku = Eku {
                    present: true,
                    server_auth: e.server_auth,
                    client_auth: e.client_auth,
                    any: e.any,
                };
            }
            ParsedExtension::BasicConstraints(bc) => is_ca = bc.ca,
            _ => {}
        }
    }
    Ok(CertInfo {
        fingerprint: hex::encode(Sha256::digest(der)),
        serial: hex::encode(cert.raw_serial()),
        subject_cn: cn(cert.subject()),
        issuer_cn: cn(cert.issuer()),
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        sans,
        is_ca,
        eku,
        spki: cert.public_key().raw.to_vec(),
    })
}

fn ip_text(bytes: &[u8]) -> String {
    match bytes.len() {
        4 => std::net::Ipv4Addr::from(<[u8; 4]>::try_from(bytes).unwrap_or_default()).to_string(),
        16 => std::net::Ipv6Addr::from(<[u8; 16]>::try_from(bytes).unwrap_or_default()).to_string(),
        _ => hex::encode(bytes),
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, KeyPair, SanType};

    use super::*;

    #[test]
    fn extracts_names_usages_and_identity() {
        let key = KeyPair::generate().expect("key");
        let mut params =
            CertificateParams::new(vec!["kubernetes.default.svc".into()]).expect("params");
        params
            .subject_alt_names
            .push(SanType::IpAddress("10.96.0.1".parse().expect("ip")));
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kube-apiserver");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.self_signed(&key).expect("cert");
        let info = inspect(cert.der()).expect("inspect");
        assert_eq!(
            info.sans,
            vec![
                "kubernetes.default.svc".to_string(),
                "10.96.0.1".to_string()
            ]
        );
        assert_eq!(info.subject_cn.as_deref(), Some("kube-apiserver"));
        assert!(info.eku.present && info.eku.server_auth && !info.eku.client_auth);
        assert_eq!(info.fingerprint.len(), 64);
        assert!(info.not_after > info.not_before);
        assert_eq!(
            info.spki,
            rcgen::PublicKeyData::subject_public_key_info(&key)
        );
        assert!(inspect(b"nope").is_err());
    }
}
