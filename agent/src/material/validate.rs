//! The validation gate: every check new material must pass before it may be served.
//!
//! Each check yields a result (pass, fail, warn or skipped) so that `certreload check` can show all
//! of them; the first failure, in the order below, is the verdict. A warning never rejects: it
//! names something a consumer of the material will refuse (logged and audited with the acceptance). A rejected bundle is a value, not an
//! error of the program: it is logged, audited and counted, and nothing live changes.

use std::{
    fmt,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::Engine;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, SubjectPublicKeyInfoDer, UnixTime};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{
    inspect::{inspect, CertInfo},
    kubeconfig, pem,
    read::read_material,
};

/// Clock skew tolerated on notBefore (a certificate issued "now" by a CA a little ahead of us).
pub const NOT_BEFORE_SKEW: Duration = Duration::from_secs(5 * 60);

/// The checks, by stable name (used in audit records, metrics labels and `check` output).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// The file can be read (exists, is a file, readable, within max_file_size).
    Read,
    /// The bytes are the expected PEM/DER material.
    Parse,
    /// The private key is not encrypted.
    EncryptedKey,
    /// The private key is the leaf certificate's key.
    KeyMatch,
    /// notBefore ≤ now ≤ notAfter.
    Validity,
    /// At least `min_validity` left.
    MinValidity,
    /// The leaf's extended key usage allows the bundle's role.
    Eku,
    /// The chain verifies to the configured CA for the bundle's role.
    Chain,
    /// The leaf covers every `expect_sans` name.
    Sans,
    /// No SAN of the current generation disappears (unless allowed).
    SanRemoval,
    /// A new CA bundle still contains the CAs that issued the certificates in use.
    CaContinuity,
    /// The ServiceAccount private key's public half is among the public keys.
    SaKeyPair,
    /// A signing CA's file holds exactly one certificate (kube-controller-manager's CSR signer
    /// refuses any other count). Only ever a warning: the same file is also a client-CA bundle,
    /// where old and new CA side by side is what a rotation needs.
    SingleCert,
}

impl Check {
    /// The stable name.
    pub fn name(self) -> &'static str {
        match self {
            Check::Read => "read",
            Check::Parse => "parse",
            Check::EncryptedKey => "encrypted_key",
            Check::KeyMatch => "key_match",
            Check::Validity => "validity",
            Check::MinValidity => "min_validity",
            Check::Eku => "eku",
            Check::Chain => "chain",
            Check::Sans => "sans",
            Check::SanRemoval => "san_removal",
            Check::CaContinuity => "ca_continuity",
            Check::SaKeyPair => "sa_key_pair",
            Check::SingleCert => "single_cert",
        }
    }

    /// Failures that may only mean "the other half has not been written yet" (cert and key, or a
    /// chain waiting for its CA bundle, written as separate files).
    pub fn may_be_half_written(self) -> bool {
        matches!(self, Check::KeyMatch | Check::Chain)
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Passed.
    Pass,
    /// Failed: the material is rejected.
    Fail,
    /// Passed with a warning: the material is accepted, but something that uses it will not work
    /// as intended (logged, and carried in the acceptance's audit record).
    Warn,
    /// Not applicable, or not reachable after an earlier failure.
    Skip,
}

/// One line of a report.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    /// Which check.
    pub check: Check,
    /// Its outcome.
    pub status: Status,
    /// A human reason (never key bytes).
    pub detail: String,
    /// The file the check is about, when one is.
    pub file: Option<PathBuf>,
}

/// Validated material: what a new generation is made of. Key bytes never reach `Debug`.
pub struct Material {
    /// The leaf (or, for a CA bundle, the first CA) as inspected.
    pub leaf: Option<CertInfo>,
    /// Leaf first, then intermediates, as in the cert file.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key (server/client bundles, or the SA signing key).
    pub key: Option<PrivateKeyDer<'static>>,
    /// CA certificates (the bundle's `ca`, or the CA bundle itself).
    pub cas: Vec<CertInfo>,
    /// CA certificates, DER.
    pub ca_der: Vec<CertificateDer<'static>>,
    /// ServiceAccount key ids, as Kubernetes computes them.
    pub key_ids: Vec<String>,
}

impl fmt::Debug for Material {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Material")
            .field("leaf", &self.leaf.as_ref().map(|l| &l.fingerprint))
            .field("chain_len", &self.chain.len())
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .field(
                "cas",
                &self.cas.iter().map(|c| &c.fingerprint).collect::<Vec<_>>(),
            )
            .field("key_ids", &self.key_ids)
            .finish()
    }
}

/// All check results for one bundle, and the material when every check passed.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Every check, in order.
    pub results: Vec<CheckResult>,
    /// The material, when valid.
    #[serde(skip)]
    pub material: Option<Material>,
}

impl Report {
    /// The first failed check: the verdict's reason.
    pub fn failure(&self) -> Option<&CheckResult> {
        self.results.iter().find(|r| r.status == Status::Fail)
    }

    /// True when no check failed.
    pub fn is_valid(&self) -> bool {
        self.failure().is_none()
    }

    /// The checks that passed with a warning.
    pub fn warnings(&self) -> impl Iterator<Item = &CheckResult> {
        self.results.iter().filter(|r| r.status == Status::Warn)
    }
}

/// The role a server/client bundle plays, which decides the EKU and chain usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Usage {
    /// TLS server (serverAuth).
    Server,
    /// TLS client (clientAuth).
    Client,
}

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

/// Builder of a report: records results and skips what an earlier failure made unreachable.
struct Checks {
    results: Vec<CheckResult>,
}

impl Checks {
    fn new() -> Self {
        Checks {
            results: Vec::new(),
        }
    }
    fn pass(&mut self, check: Check, detail: impl Into<String>, file: Option<&Path>) {
        self.push(check, Status::Pass, detail.into(), file);
    }
    fn fail(&mut self, check: Check, detail: impl Into<String>, file: Option<&Path>) {
        self.push(check, Status::Fail, detail.into(), file);
    }
    fn skip(&mut self, check: Check, detail: impl Into<String>) {
        self.push(check, Status::Skip, detail.into(), None);
    }
    fn warn(&mut self, check: Check, detail: impl Into<String>, file: Option<&Path>) {
        self.push(check, Status::Warn, detail.into(), file);
    }
    fn push(&mut self, check: Check, status: Status, detail: String, file: Option<&Path>) {
        self.results.push(CheckResult {
            check,
            status,
            detail,
            file: file.map(Path::to_path_buf),
        });
    }
    fn skip_rest(&mut self, checks: &[Check], why: &str) {
        for &c in checks {
            self.skip(c, why);
        }
    }
    fn report(self, material: Option<Material>) -> Report {
        let valid = self.results.iter().all(|r| r.status != Status::Fail);
        Report {
            results: self.results,
            material: if valid { material } else { None },
        }
    }
}

fn now_unix(now: SystemTime) -> i64 {
    now.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Reads and parses a certificate file; records `read`/`parse`.
fn load_certs(
    c: &mut Checks,
    path: &Path,
    max: u64,
    what: &str,
) -> Option<Vec<CertificateDer<'static>>> {
    let bytes = match read_material(path, max) {
        Ok(b) => b,
        Err(e) => {
            c.fail(Check::Read, e.to_string(), Some(path));
            return None;
        }
    };
    match pem::certificates(&bytes) {
        Ok(certs) => Some(certs),
        Err(e) => {
            c.fail(
                Check::Parse,
                format!("{}: {what}: {e}", path.display()),
                Some(path),
            );
            None
        }
    }
}

/// Reads and parses a private key file; records `read`/`encrypted_key`/`parse`.
fn load_key(c: &mut Checks, path: &Path, max: u64) -> Option<PrivateKeyDer<'static>> {
    let bytes = match read_material(path, max) {
        Ok(b) => b,
        Err(e) => {
            c.fail(Check::Read, e.to_string(), Some(path));
            return None;
        }
    };
    match pem::private_key(&bytes) {
        Ok(k) => Some(k),
        Err(e @ pem::PemError::Encrypted(_)) => {
            c.fail(
                Check::EncryptedKey,
                format!("{}: {e}", path.display()),
                Some(path),
            );
            None
        }
        Err(e) => {
            c.fail(
                Check::Parse,
                format!("{}: private key: {e}", path.display()),
                Some(path),
            );
            None
        }
    }
}

/// The SubjectPublicKeyInfo of a private key (RSA, ECDSA P-256/P-384, Ed25519).
pub fn public_key_of(key: &PrivateKeyDer<'_>) -> Result<SubjectPublicKeyInfoDer<'static>, String> {
    let signing = rustls::crypto::ring::sign::any_supported_type(key)
        .map_err(|e| format!("unsupported private key: {e}"))?;
    signing
        .public_key()
        .map(|spki| SubjectPublicKeyInfoDer::from(spki.as_ref().to_vec()))
        .ok_or_else(|| "cannot derive the public key".to_string())
}

/// Kubernetes' key id for a ServiceAccount public key: base64url (no padding) of the SHA-256 of
/// the DER SubjectPublicKeyInfo.
pub fn kubernetes_key_id(spki: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(spki))
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

/// Validates a ServiceAccount key set: the signing key's public half must be among the public keys
/// the API server verifies with, or every token it signs is rejected.
pub fn validate_sa_keys(private_key: &Path, public_keys: &[PathBuf], max_file_size: u64) -> Report {
    let mut c = Checks::new();
    let key = load_key(&mut c, private_key, max_file_size);
    let mut publics = Vec::new();
    for path in public_keys {
        match read_material(path, max_file_size) {
            Ok(bytes) => match pem::public_keys(&bytes) {
                Ok(keys) => publics.extend(keys),
                Err(e) => c.fail(
                    Check::Parse,
                    format!("{}: public keys: {e}", path.display()),
                    Some(path),
                ),
            },
            Err(e) => c.fail(Check::Read, e.to_string(), Some(path)),
        }
    }
    let Some(key) = key else {
        c.skip(Check::SaKeyPair, "private key could not be loaded");
        return c.report(None);
    };
    let key_ids: Vec<String> = publics
        .iter()
        .map(|k| kubernetes_key_id(k.as_ref()))
        .collect();
    match public_key_of(&key) {
        Ok(spki) if publics.iter().any(|p| p.as_ref() == spki.as_ref()) => c.pass(
            Check::SaKeyPair,
            format!("signing key id {} is among the public keys ({})", kubernetes_key_id(spki.as_ref()), key_ids.join(", ")),
            Some(private_key),
        ),
        Ok(spki) => c.fail(
            Check::SaKeyPair,
            format!(
                "the public half of {} (key id {}) is not among the public keys ({}): tokens it signs would be rejected",
                private_key.display(),
                kubernetes_key_id(spki.as_ref()),
                key_ids.join(", ")
            ),
            Some(private_key),
        ),
        Err(e) => c.fail(Check::Parse, format!("{}: {e}", private_key.display()), Some(private_key)),
    }
    let material = Material {
        leaf: None,
        chain: Vec::new(),
        key: Some(key),
        cas: Vec::new(),
        ca_der: Vec::new(),
        key_ids,
    };
    c.report(Some(material))
}
