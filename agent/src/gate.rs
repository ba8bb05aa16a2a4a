//! Applying the validation gate to a configured bundle: which validation a bundle kind gets, with
//! which policy. Shared by `certreload check` and the reload pipeline so both judge identically.

use std::time::SystemTime;

use crate::{
    config::{AgentSettings, BundleConfig, BundleFiles, BundleKind},
    material::{
        inspect::CertInfo,
        validate::{
            validate_ca_bundle, validate_pair, validate_sa_keys, PairPolicy, Report, Usage,
        },
    },
};

/// What is live now, for the checks that compare against it.
#[derive(Debug, Default, Clone)]
pub struct Current<'a> {
    /// The current leaf (server/client bundles): SANs must not silently disappear.
    pub leaf: Option<&'a CertInfo>,
    /// The current CAs (ca bundles).
    pub cas: &'a [CertInfo],
    /// Leaves in use that chain to this CA bundle: their issuer must stay.
    pub in_use: &'a [CertInfo],
}

/// Validates `bundle`'s files now.
pub fn validate_bundle(
    bundle: &BundleConfig,
    agent: &AgentSettings,
    current: &Current<'_>,
    now: SystemTime,
) -> Report {
    let max = agent.max_file_size;
    match &bundle.files {
        BundleFiles::Pair { cert, key, ca } => {
            let policy = PairPolicy {
                usage: if bundle.kind == BundleKind::Client {
                    Usage::Client
                } else {
                    Usage::Server
                },
                expect_sans: bundle.expect_sans.clone(),
                min_validity: bundle.min_validity,
                allow_san_removal: bundle.allow_san_removal,
                max_file_size: max,
            };
            validate_pair(cert, key, ca.as_deref(), &policy, current.leaf, now)
        }
        BundleFiles::Ca { bundle: file } => validate_ca_bundle(
            file,
            max,
            current.in_use,
            current.cas,
            bundle.allow_ca_removal,
        ),
        BundleFiles::SaKeys {
            private_key,
            public_keys,
        } => validate_sa_keys(private_key, public_keys, max),
    }
}
