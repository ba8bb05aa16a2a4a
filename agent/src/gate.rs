//! Applying the validation gate to a configured bundle: which validation a bundle kind gets, with
//! which policy. Shared by `certreload check` and the reload pipeline so both judge identically.

use std::time::SystemTime;

use crate::{
    config::{AgentSettings, BundleConfig, BundleFiles, BundleKind},
    material::{
        inspect::CertInfo,
        validate::{
            validate_ca_bundle, validate_kubeconfig, validate_pair, validate_sa_keys, CaPolicy,
            PairPolicy, Report, Usage,
        },
    },
};

/// What is live now, for the checks that compare against it.
#[derive(Debug, Default, Clone)]
pub(crate) struct Current<'a> {
    /// The current leaf (server/client bundles): SANs must not silently disappear.
    pub leaf: Option<&'a CertInfo>,
    /// The current CAs (ca bundles).
    pub cas: &'a [CertInfo],
    /// Leaves in use that chain to this CA bundle: their issuer must stay.
    pub in_use: &'a [CertInfo],
}

/// Validates `bundle`'s files now.
pub(crate) fn validate_bundle(
    bundle: &BundleConfig,
    agent: &AgentSettings,
    current: &Current<'_>,
    now: SystemTime,
) -> Report {
    let max = agent.max_file_size;
    let pair_policy = |usage| PairPolicy {
        usage,
        expect_sans: bundle.expect_sans.clone(),
        min_validity: bundle.min_validity,
        allow_san_removal: bundle.allow_san_removal,
        max_file_size: max,
    };
    match &bundle.files {
        BundleFiles::Pair { cert, key, ca } => {
            let usage = if bundle.kind == BundleKind::Client {
                Usage::Client
            } else {
                Usage::Server
            };
            validate_pair(
                cert,
                key,
                ca.as_deref(),
                &pair_policy(usage),
                current.leaf,
                now,
            )
        }
        // A kubeconfig's certificate is the component's client certificate to the API server.
        BundleFiles::Kubeconfig { file } => {
            validate_kubeconfig(file, &pair_policy(Usage::Client), current.leaf, now)
        }
        BundleFiles::Ca { bundle: file, key } => validate_ca_bundle(
            file,
            &CaPolicy {
                max_file_size: max,
                allow_ca_removal: bundle.allow_ca_removal,
                key: key.clone(),
                signing: bundle.signing,
            },
            current.in_use,
            current.cas,
        ),
        BundleFiles::SaKeys {
            private_key,
            public_keys,
        } => validate_sa_keys(private_key, public_keys, max),
    }
}
