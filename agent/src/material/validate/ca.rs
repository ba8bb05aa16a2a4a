//! The checks of a CA bundle: its certificates parse, its key (when configured) belongs to one of
//! them, it keeps the CAs that issued what is in use, and a signer's file holds one certificate.

use std::path::{Path, PathBuf};

use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::{load_certs, load_key, public_key_of, Check, Checks, Material, Report, Status};
use crate::material::inspect::{inspect, CertInfo};

/// What a CA bundle is checked against.
#[derive(Debug, Clone, Default)]
pub struct CaPolicy {
    /// Per-file size limit.
    pub max_file_size: u64,
    /// Allow a rotation to drop a CA that issued certificates in use.
    pub allow_ca_removal: bool,
    /// The CA's private key, for a CA this node signs with (kubeadm's `ca.key`, used by
    /// kube-controller-manager's CSR signer): it must belong to a certificate of the bundle.
    pub key: Option<PathBuf>,
    /// The bundle is a signer's certificate file (`--cluster-signing-cert-file`), which must hold
    /// exactly one certificate: any other count is a warning.
    pub signing: bool,
}

/// Validates a CA bundle. `in_use` are the leaves currently served that chain to it: each one's
/// issuer must still be in the new bundle (old and new CA must overlap during a rotation). With a
/// key, the key must belong to one of the bundle's certificates; a signing CA is warned about when
/// its file holds more than one certificate.
pub fn validate_ca_bundle(
    bundle: &Path,
    policy: &CaPolicy,
    in_use: &[CertInfo],
    previous_cas: &[CertInfo],
) -> Report {
    let mut c = Checks::new();
    let later = [Check::KeyMatch, Check::CaContinuity, Check::SingleCert];
    let ders = load_certs(&mut c, bundle, policy.max_file_size, "CA bundle");
    let key = match &policy.key {
        Some(path) => load_key(&mut c, path, policy.max_file_size).map(|k| Some((path, k))),
        None => Some(None),
    };
    let (Some(ders), Some(key)) = (ders, key) else {
        c.skip_rest(&later, "files could not be loaded");
        return c.report(None);
    };
    let cas = inspect_cas(&mut c, bundle, &ders);
    check_ca_key(&mut c, key, &cas, bundle);
    check_ca_continuity(
        &mut c,
        &cas,
        in_use,
        previous_cas,
        policy.allow_ca_removal,
        bundle,
    );
    check_single_cert(&mut c, policy.signing, ders.len(), bundle);
    // The CA key was only checked: it is not kept in memory.
    let material = Material {
        leaf: cas.first().cloned(),
        chain: Vec::new(),
        key: None,
        cas,
        ca_der: ders,
        key_ids: Vec::new(),
    };
    c.report(Some(material))
}

/// `parse` of a CA bundle: every certificate inspected.
fn inspect_cas(c: &mut Checks, bundle: &Path, ders: &[CertificateDer<'static>]) -> Vec<CertInfo> {
    let mut cas = Vec::new();
    for der in ders {
        match inspect(der) {
            Ok(info) => cas.push(info),
            Err(e) => c.fail(
                Check::Parse,
                format!("{}: {e}", bundle.display()),
                Some(bundle),
            ),
        }
    }
    if c.results.iter().all(|r| r.status != Status::Fail) {
        c.pass(
            Check::Parse,
            format!("{} CA certificate(s)", cas.len()),
            Some(bundle),
        );
    }
    cas
}

/// `key_match` of a CA bundle: the configured CA key is the key of one of its certificates.
fn check_ca_key(
    c: &mut Checks,
    key: Option<(&PathBuf, PrivateKeyDer<'static>)>,
    cas: &[CertInfo],
    bundle: &Path,
) {
    let Some((path, private)) = key else {
        c.skip(Check::KeyMatch, "no CA key configured");
        return;
    };
    match public_key_of(&private) {
        Ok(spki) => match cas.iter().find(|ca| ca.spki == spki.as_ref()) {
            Some(ca) => c.pass(
                Check::KeyMatch,
                format!(
                    "{} is the key of CA {} ({})",
                    path.display(),
                    ca.subject,
                    ca.fingerprint
                ),
                Some(path),
            ),
            None => c.fail(
                Check::KeyMatch,
                format!(
                    "{} is the key of none of the {} certificate(s) in {}: what it signs would not verify to this CA",
                    path.display(),
                    cas.len(),
                    bundle.display()
                ),
                Some(path),
            ),
        },
        Err(e) => c.fail(Check::Parse, format!("{}: {e}", path.display()), Some(path)),
    }
}

/// `ca_continuity`: the new bundle still holds every previous CA that issued a leaf in use.
fn check_ca_continuity(
    c: &mut Checks,
    cas: &[CertInfo],
    in_use: &[CertInfo],
    previous_cas: &[CertInfo],
    allow_removal: bool,
    bundle: &Path,
) {
    // The issuers in use: the previous CAs that issued an in-use leaf.
    let issuers: Vec<&CertInfo> = previous_cas
        .iter()
        .filter(|ca| in_use.iter().any(|leaf| leaf.issuer == ca.subject))
        .collect();
    let dropped: Vec<&&CertInfo> = issuers
        .iter()
        .filter(|old| {
            !cas.iter()
                .any(|new| new.subject == old.subject && new.spki == old.spki)
        })
        .collect();
    if issuers.is_empty() {
        c.skip(
            Check::CaContinuity,
            "no certificate in use is issued by this bundle's previous CAs",
        );
    } else if dropped.is_empty() {
        c.pass(
            Check::CaContinuity,
            "still contains every CA that issued a certificate in use",
            Some(bundle),
        );
    } else {
        let names: Vec<String> = dropped.iter().map(|ca| ca.subject.clone()).collect();
        let detail = format!(
            "drops the CA that issued certificates in use: {}",
            names.join("; ")
        );
        if allow_removal {
            c.pass(
                Check::CaContinuity,
                format!("{detail} (allowed by allow_ca_removal)"),
                Some(bundle),
            );
        } else {
            c.fail(Check::CaContinuity, format!("{detail}; add the new CA alongside the old one first, or set allow_ca_removal = true"), Some(bundle));
        }
    }
}

/// `single_cert`: a signing CA's file holds exactly one certificate (a warning otherwise).
fn check_single_cert(c: &mut Checks, signing: bool, count: usize, bundle: &Path) {
    // kube-controller-manager's CSR signer (pkg/controller/certificates/signer/ca_provider.go,
    // setCA) refuses a --cluster-signing-cert-file without exactly one certificate: a running one
    // keeps the CA it had (and signs kubelet certificates with it), one that starts now fails.
    match (signing, count) {
        (false, _) => c.skip(Check::SingleCert, "not a signing CA (signing = false)"),
        (true, 1) => c.pass(
            Check::SingleCert,
            "exactly one certificate, as a signer's certificate file must hold",
            Some(bundle),
        ),
        (true, n) => c.warn(
            Check::SingleCert,
            format!(
                "{} holds {n} certificates: kube-controller-manager's CSR signer (--cluster-signing-cert-file) accepts exactly one: a running one keeps signing with the CA it loaded before, one (re)started now fails to start its controllers",
                bundle.display()
            ),
            Some(bundle),
        ),
    }
}
