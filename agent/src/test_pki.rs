//! Certificates for unit tests, generated per test (never checked in): a CA and the leaves it
//! issues, written once for every test that needs a real chain (TLS handshakes, the validator).

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A self-signed CA, in every form a test hands on: DER for trust stores, PEM for files, and the
/// issuer that signs leaves.
pub(crate) struct Ca {
    /// The certificate, for a `RootCertStore` or a client verifier.
    pub(crate) der: CertificateDer<'static>,
    /// The certificate in PEM, for a `ca.crt` file.
    pub(crate) pem: String,
    /// The key in PEM, for a signing CA's key file.
    pub(crate) key_pem: String,
    /// Signs the leaves ([`Ca::issue`]).
    pub(crate) issuer: Issuer<'static, KeyPair>,
}

/// A CA with common name `cn` and no path length limit.
pub(crate) fn ca(cn: &str) -> Ca {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).expect("ca");
    Ca {
        der: cert.der().clone(),
        pem: cert.pem(),
        key_pem: key.serialize_pem(),
        issuer: Issuer::new(params, key),
    }
}

/// A certificate a test CA issued, with its fresh key, for a test to take in the form it needs.
pub(crate) struct Issued {
    /// The certificate (`.der()`, `.pem()`).
    pub(crate) cert: rcgen::Certificate,
    /// Its key (`.serialize_pem()`, or [`Issued::key_der`]).
    pub(crate) key: KeyPair,
}

impl Ca {
    /// Signs `params` (names, usages, validity as the test wants them) with a fresh key.
    pub(crate) fn issue(&self, params: CertificateParams) -> Issued {
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf");
        Issued { cert, key }
    }
}

impl Issued {
    /// The key as rustls takes it.
    pub(crate) fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivatePkcs8KeyDer::from(self.key.serialize_der()).into()
    }
}

/// (certificate, key) for `name` with one extended key usage, issued by `ca`: what a TLS server or
/// client of a test presents.
pub(crate) fn leaf(
    ca: &Ca,
    name: &str,
    eku: ExtendedKeyUsagePurpose,
) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let mut params = CertificateParams::new(vec![name.to_string()]).expect("params");
    params.extended_key_usages = vec![eku];
    let issued = ca.issue(params);
    (issued.cert.der().clone(), issued.key_der())
}
