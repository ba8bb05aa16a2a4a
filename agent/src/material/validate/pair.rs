//! The checks of a certificate/key pair (a server or client bundle, or a kubeconfig's embedded
//! client credentials): key match, validity, EKU, chain, SANs, and SANs kept across a rotation.

use std::{
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};

use super::{
    load_certs, load_key, now_unix, public_key_of, Check, Checks, Material, Report, Usage,
    NOT_BEFORE_SKEW,
};
use crate::material::{
    inspect::{inspect, CertInfo},
    kubeconfig, pem,
    read::read_material,
};

/// What a certificate/key pair is checked against.
#[derive(Debug, Clone)]
pub struct PairPolicy {
    /// Server or client.
    pub usage: Usage,
    /// Names the leaf must cover.
    pub expect_sans: Vec<String>,
    /// Minimum remaining validity.
    pub min_validity: Option<Duration>,
    /// Allow a SAN of the previous generation to disappear.
    pub allow_san_removal: bool,
    /// Per-file size limit.
    pub max_file_size: u64,
}

/// One part of a pair as the results name it: the file a result points at, and how details call
/// it (the path, or for embedded material the file and its field).
struct Part<'a> {
    file: &'a Path,
    name: String,
}

impl<'a> Part<'a> {
    fn file(path: &'a Path) -> Self {
        Part {
            file: path,
            name: path.display().to_string(),
        }
    }

    fn field(path: &'a Path, field: &str) -> Self {
        Part {
            file: path,
            name: format!("{}: {field}", path.display()),
        }
    }
}

/// The checks after `read`/`parse` of a pair, in report order.
const PAIR_CHECKS: [Check; 7] = [
    Check::KeyMatch,
    Check::Validity,
    Check::MinValidity,
    Check::Eku,
    Check::Chain,
    Check::Sans,
    Check::SanRemoval,
];

/// Validates a certificate/key pair (server or client bundle), optionally against a CA file and the
/// current generation's leaf.
pub fn validate_pair(
    cert: &Path,
    key: &Path,
    ca: Option<&Path>,
    policy: &PairPolicy,
    previous: Option<&CertInfo>,
    now: SystemTime,
) -> Report {
    let mut c = Checks::new();
    let chain = load_certs(&mut c, cert, policy.max_file_size, "certificate chain");
    let private = load_key(&mut c, key, policy.max_file_size);
    let ca_der = match ca {
        Some(ca) => load_certs(&mut c, ca, policy.max_file_size, "CA bundle").map(Some),
        None => Some(None),
    };
    let (Some(chain), Some(private), Some(ca_der)) = (chain, private, ca_der) else {
        c.skip_rest(&PAIR_CHECKS, "files could not be loaded");
        return c.report(None);
    };
    let material = judge_pair(
        &mut c,
        Loaded {
            chain,
            key: private,
            ca: ca_der,
        },
        &PairParts {
            cert: Part::file(cert),
            key: Part::file(key),
            ca: ca.map(Part::file),
            no_ca: "no ca configured",
        },
        policy,
        previous,
        now,
    );
    c.report(material)
}

/// Validates the client certificate embedded in a kubeconfig (`client-certificate-data`,
/// `client-key-data`) like a client pair, chained to its `certificate-authority-data`. The key
/// never reaches a message: kubeconfig errors name the field, not the value.
pub fn validate_kubeconfig(
    file: &Path,
    policy: &PairPolicy,
    previous: Option<&CertInfo>,
    now: SystemTime,
) -> Report {
    let mut c = Checks::new();
    let bytes = match read_material(file, policy.max_file_size) {
        Ok(b) => b,
        Err(e) => {
            c.fail(Check::Read, e.to_string(), Some(file));
            c.skip_rest(&PAIR_CHECKS, "file could not be loaded");
            return c.report(None);
        }
    };
    let embedded = match kubeconfig::embedded_client(&bytes) {
        Ok(e) => e,
        Err(e) => {
            c.fail(Check::Parse, format!("{}: {e}", file.display()), Some(file));
            c.skip_rest(&PAIR_CHECKS, "kubeconfig does not parse");
            return c.report(None);
        }
    };
    let user = |field: &str| format!("user {:?} {field}", embedded.user);
    let cluster = format!("cluster {:?} certificate-authority-data", embedded.cluster);
    let parts = PairParts {
        cert: Part::field(file, &user("client-certificate-data")),
        key: Part::field(file, &user("client-key-data")),
        ca: embedded.ca.as_ref().map(|_| Part::field(file, &cluster)),
        no_ca: if embedded.ca_file.is_some() {
            "the cluster's CA is a file reference, not embedded"
        } else {
            "the cluster has no certificate-authority-data"
        },
    };
    let Some(loaded) = decode_embedded(&mut c, &embedded, &parts, &cluster, file) else {
        c.skip_rest(&PAIR_CHECKS, "embedded material could not be decoded");
        return c.report(None);
    };
    let material = judge_pair(&mut c, loaded, &parts, policy, previous, now);
    c.report(material)
}

/// `parse` of a kubeconfig's embedded client certificate, key and CA: the decoded pair, or `None`
/// with the failures recorded (each naming the field, never the value).
fn decode_embedded(
    c: &mut Checks,
    embedded: &kubeconfig::EmbeddedClient,
    parts: &PairParts<'_>,
    cluster: &str,
    file: &Path,
) -> Option<Loaded> {
    let chain = match pem::certificates(&embedded.cert) {
        Ok(certs) => Some(certs),
        Err(e) => {
            c.fail(
                Check::Parse,
                format!("{}: {e}", parts.cert.name),
                Some(file),
            );
            None
        }
    };
    let private = match pem::private_key(&embedded.key) {
        Ok(k) => Some(k),
        Err(e @ pem::PemError::Encrypted(_)) => {
            c.fail(
                Check::EncryptedKey,
                format!("{}: {e}", parts.key.name),
                Some(file),
            );
            None
        }
        Err(e) => {
            c.fail(Check::Parse, format!("{}: {e}", parts.key.name), Some(file));
            None
        }
    };
    let ca = match &embedded.ca {
        Some(bytes) => match pem::certificates(bytes) {
            Ok(certs) => Some(Some(certs)),
            Err(e) => {
                c.fail(Check::Parse, format!("{cluster}: {e}"), Some(file));
                None
            }
        },
        None => Some(None),
    };
    let (Some(chain), Some(key), Some(ca)) = (chain, private, ca) else {
        return None;
    };
    Some(Loaded { chain, key, ca })
}

/// A pair's decoded material, before any check but `read`/`parse`.
struct Loaded {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    ca: Option<Vec<CertificateDer<'static>>>,
}

/// How the results name a pair's parts.
struct PairParts<'a> {
    cert: Part<'a>,
    key: Part<'a>,
    ca: Option<Part<'a>>,
    /// Why `chain` is skipped when there is no CA.
    no_ca: &'a str,
}

/// Every check of a loaded pair, in report order; the material when it is usable (the report
/// decides validity).
fn judge_pair(
    c: &mut Checks,
    loaded: Loaded,
    parts: &PairParts<'_>,
    policy: &PairPolicy,
    previous: Option<&CertInfo>,
    now: SystemTime,
) -> Option<Material> {
    let Loaded {
        chain,
        key: private,
        ca: ca_der,
    } = loaded;
    let cert = &parts.cert;
    let (leaf, cas) = inspect_pair(c, &chain, ca_der.as_deref(), parts)?;
    check_key_match(c, &private, &leaf, parts);
    check_validity(c, &leaf, now, cert.file);
    check_min_validity(c, &leaf, policy.min_validity, now, cert.file);
    check_eku(c, &leaf, policy.usage, cert.file);
    check_chain(c, &chain, ca_der.as_deref(), parts, policy.usage, now);
    check_sans(c, &leaf, &policy.expect_sans, cert.file);
    check_san_removal(c, &leaf, previous, policy.allow_san_removal, cert.file);
    Some(Material {
        leaf: Some(leaf),
        chain,
        key: Some(private),
        cas,
        ca_der: ca_der.unwrap_or_default(),
        key_ids: Vec::new(),
    })
}

/// `parse` of a loaded pair: the leaf and the CA certificates inspected. `None` (and the rest
/// skipped) when there is no leaf to check.
fn inspect_pair(
    c: &mut Checks,
    chain: &[CertificateDer<'static>],
    ca_der: Option<&[CertificateDer<'static>]>,
    parts: &PairParts<'_>,
) -> Option<(CertInfo, Vec<CertInfo>)> {
    let cert = &parts.cert;
    // pem::certificates never returns an empty list; an empty chain is still a parse failure
    // here, not a panic.
    let leaf = match chain.first().map(|der| inspect(der)) {
        Some(Ok(l)) => l,
        Some(Err(e)) => {
            c.fail(
                Check::Parse,
                format!("{}: leaf: {e}", cert.name),
                Some(cert.file),
            );
            c.skip_rest(&PAIR_CHECKS, "leaf does not parse");
            return None;
        }
        None => {
            c.fail(
                Check::Parse,
                format!("{}: no certificate", cert.name),
                Some(cert.file),
            );
            c.skip_rest(&PAIR_CHECKS, "no leaf");
            return None;
        }
    };
    let mut cas = Vec::new();
    for der in ca_der.into_iter().flatten() {
        match inspect(der) {
            Ok(info) => cas.push(info),
            Err(e) => {
                let ca = parts.ca.as_ref().unwrap_or(cert);
                c.fail(
                    Check::Parse,
                    format!("{}: CA certificate: {e}", ca.name),
                    Some(ca.file),
                );
            }
        }
    }
    c.pass(
        Check::Parse,
        format!(
            "leaf {} (serial {}), {} in chain",
            leaf.fingerprint,
            leaf.serial,
            chain.len()
        ),
        Some(cert.file),
    );
    Some((leaf, cas))
}

/// `key_match`: the private key is the leaf's.
fn check_key_match(
    c: &mut Checks,
    private: &PrivateKeyDer<'_>,
    leaf: &CertInfo,
    parts: &PairParts<'_>,
) {
    let (cert, key) = (&parts.cert, &parts.key);
    match public_key_of(private) {
        Ok(spki) if spki.as_ref() == leaf.spki.as_slice() => c.pass(
            Check::KeyMatch,
            "private key matches the leaf",
            Some(key.file),
        ),
        Ok(_) => c.fail(
            Check::KeyMatch,
            format!(
                "{} does not match the leaf certificate in {}",
                key.name, cert.name
            ),
            Some(key.file),
        ),
        Err(e) => c.fail(Check::Parse, format!("{}: {e}", key.name), Some(key.file)),
    }
}

/// `validity`: notBefore (less the tolerated skew) ≤ now ≤ notAfter.
fn check_validity(c: &mut Checks, leaf: &CertInfo, now: SystemTime, file: &Path) {
    let now_s = now_unix(now);
    if now_s + (NOT_BEFORE_SKEW.as_secs() as i64) < leaf.not_before {
        c.fail(
            Check::Validity,
            format!(
                "not yet valid: notBefore is {} s in the future",
                leaf.not_before - now_s
            ),
            Some(file),
        );
    } else if now_s > leaf.not_after {
        c.fail(
            Check::Validity,
            format!("expired {} ago", human_secs(now_s - leaf.not_after)),
            Some(file),
        );
    } else {
        c.pass(
            Check::Validity,
            format!("valid for {} s more", leaf.not_after - now_s),
            Some(file),
        );
    }
}

/// `min_validity`: at least `min` left, when configured.
fn check_min_validity(
    c: &mut Checks,
    leaf: &CertInfo,
    min: Option<Duration>,
    now: SystemTime,
    file: &Path,
) {
    // try_from, not `as`: a min_validity beyond i64 seconds wrapped negative and passed.
    let left = leaf.not_after.saturating_sub(now_unix(now));
    match min {
        Some(min) if left < i64::try_from(min.as_secs()).unwrap_or(i64::MAX) => c.fail(
            Check::MinValidity,
            format!(
                "{} s of validity left, min_validity is {} s",
                left.max(0),
                min.as_secs()
            ),
            Some(file),
        ),
        Some(min) => c.pass(
            Check::MinValidity,
            format!("at least {} s left", min.as_secs()),
            Some(file),
        ),
        None => c.skip(Check::MinValidity, "min_validity not configured"),
    }
}

/// `eku`: the leaf's extended key usage (when it has one) allows the bundle's role.
fn check_eku(c: &mut Checks, leaf: &CertInfo, usage: Usage, file: &Path) {
    let eku_ok = !leaf.eku.present
        || leaf.eku.any
        || match usage {
            Usage::Server => leaf.eku.server_auth,
            Usage::Client => leaf.eku.client_auth,
        };
    let wanted = match usage {
        Usage::Server => "serverAuth",
        Usage::Client => "clientAuth",
    };
    if eku_ok {
        c.pass(
            Check::Eku,
            format!("extended key usage allows {wanted}"),
            Some(file),
        );
    } else {
        c.fail(
            Check::Eku,
            format!("extended key usage does not include {wanted}"),
            Some(file),
        );
    }
}

/// `chain`: the chain verifies to the CA for the bundle's role, when there is a CA.
fn check_chain(
    c: &mut Checks,
    chain: &[CertificateDer<'static>],
    ca_der: Option<&[CertificateDer<'static>]>,
    parts: &PairParts<'_>,
    usage: Usage,
    now: SystemTime,
) {
    let cert = &parts.cert;
    let (Some(anchors), Some(ca)) = (ca_der, &parts.ca) else {
        c.skip(Check::Chain, parts.no_ca);
        return;
    };
    match verify_chain(chain, anchors, usage, now) {
        Ok(()) => c.pass(
            Check::Chain,
            format!("chain verifies to {}", ca.name),
            Some(cert.file),
        ),
        Err(e) => c.fail(
            Check::Chain,
            format!("chain of {} does not verify to {}: {e}", cert.name, ca.name),
            Some(cert.file),
        ),
    }
}

/// `sans`: the leaf covers every expected name, when names are expected.
fn check_sans(c: &mut Checks, leaf: &CertInfo, expect_sans: &[String], file: &Path) {
    let missing: Vec<&String> = expect_sans
        .iter()
        .filter(|want| !covers(&leaf.sans, want))
        .collect();
    if expect_sans.is_empty() {
        c.skip(Check::Sans, "expect_sans not configured");
    } else if missing.is_empty() {
        c.pass(Check::Sans, "every expected SAN is covered", Some(file));
    } else {
        c.fail(
            Check::Sans,
            format!("missing expected SAN(s): {}", join(&missing)),
            Some(file),
        );
    }
}

/// `san_removal`: no SAN of the current generation's leaf disappears, unless allowed.
fn check_san_removal(
    c: &mut Checks,
    leaf: &CertInfo,
    previous: Option<&CertInfo>,
    allow: bool,
    file: &Path,
) {
    let Some(prev) = previous else {
        c.skip(Check::SanRemoval, "no current generation");
        return;
    };
    let dropped: Vec<&String> = prev
        .sans
        .iter()
        .filter(|s| !leaf.sans.contains(s))
        .collect();
    if dropped.is_empty() {
        c.pass(
            Check::SanRemoval,
            "no SAN of the current generation is dropped",
            Some(file),
        );
    } else if allow {
        c.pass(
            Check::SanRemoval,
            format!(
                "SAN(s) dropped, allowed by allow_san_removal: {}",
                join(&dropped)
            ),
            Some(file),
        );
    } else {
        c.fail(
            Check::SanRemoval,
            format!("drops SAN(s) the current generation has: {} (set allow_san_removal = true if intended)", join(&dropped)),
            Some(file),
        );
    }
}

fn human_secs(secs: i64) -> String {
    humantime::format_duration(Duration::from_secs(secs.max(0) as u64)).to_string()
}

fn join(items: &[&String]) -> String {
    items
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// True when one of `sans` covers `name` (exact, case-insensitive for DNS, or a `*.` wildcard for
/// exactly one label).
fn covers(sans: &[String], name: &str) -> bool {
    sans.iter().any(|san| {
        san.eq_ignore_ascii_case(name)
            || san.strip_prefix("*.").is_some_and(|suffix| {
                name.split_once('.').is_some_and(|(first, rest)| {
                    !first.is_empty() && rest.eq_ignore_ascii_case(suffix)
                })
            })
    })
}

fn verify_chain(
    chain: &[CertificateDer<'static>],
    anchors: &[CertificateDer<'static>],
    usage: Usage,
    now: SystemTime,
) -> Result<(), String> {
    let trust: Vec<_> = anchors
        .iter()
        .filter_map(|der| webpki::anchor_from_trusted_cert(der).ok())
        .collect();
    if trust.is_empty() {
        return Err("the CA file holds no usable trust anchor".into());
    }
    let (leaf, intermediates) = chain
        .split_first()
        .ok_or_else(|| "no certificate in the chain".to_string())?;
    let ee = webpki::EndEntityCert::try_from(leaf).map_err(|e| e.to_string())?;
    let algs = rustls::crypto::ring::default_provider()
        .signature_verification_algorithms
        .all;
    let time = UnixTime::since_unix_epoch(now.duration_since(UNIX_EPOCH).unwrap_or_default());
    let eku = match usage {
        Usage::Server => webpki::KeyUsage::server_auth(),
        Usage::Client => webpki::KeyUsage::client_auth(),
    };
    ee.verify_for_usage(algs, &trust, intermediates, time, eku, None, None)
        .map(|_| ())
        .map_err(|e| match e {
            webpki::Error::UnknownIssuer => "issued by a CA that is not in the CA file".to_string(),
            other => other.to_string(),
        })
}
