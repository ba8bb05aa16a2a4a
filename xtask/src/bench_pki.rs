//! Benchmark material: one ECDSA P-256 CA and leaves it issued for one name.

use anyhow::Result;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

/// A CA (PEM) and `count` (certificate PEM, key PEM) leaves for `name`, all signed by it.
pub(crate) struct BenchPki {
    /// The CA certificate.
    pub ca_pem: String,
    /// The leaves.
    pub leaves: Vec<(String, String)>,
}

impl BenchPki {
    /// Generates the CA and its leaves.
    pub(crate) fn generate(name: &str, count: usize) -> Result<BenchPki> {
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_pem = ca_params.self_signed(&ca_key)?.pem();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaves = (0..count)
            .map(|_| {
                let key = KeyPair::generate()?;
                let cert =
                    CertificateParams::new(vec![name.to_string()])?.signed_by(&key, &issuer)?;
                Ok((cert.pem(), key.serialize_pem()))
            })
            .collect::<Result<_>>()?;
        Ok(BenchPki { ca_pem, leaves })
    }
}
