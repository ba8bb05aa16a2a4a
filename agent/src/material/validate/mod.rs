//! The validation gate: every check new material must pass before it may be served.
//!
//! Each check yields a result (pass, fail, warn or skipped) so that `certreload check` can show all
//! of them; the first failure, in the order below, is the verdict. A warning never rejects: it
//! names something a consumer of the material will refuse (logged and audited with the
//! acceptance). A rejected bundle is a value, not an error of the program: it is logged, audited
//! and counted, and nothing live changes.
//!
//! Here: the checks' names, the report and its builder, and loading; one file per kind of bundle
//! (`pair` for server, client and kubeconfig bundles, `ca`, `sa_keys`), each `validate_*` a list of
//! `check_*` steps.

use std::{
    fmt,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::Engine;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, SubjectPublicKeyInfoDer};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{inspect::CertInfo, pem, read::read_material};

mod ca;
mod pair;
mod sa_keys;

pub use self::{
    ca::{validate_ca_bundle, CaPolicy},
    pair::{validate_kubeconfig, validate_pair, PairPolicy},
    sa_keys::validate_sa_keys,
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
