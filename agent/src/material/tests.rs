//! The gate's bad-material matrix at the unit level (the end-to-end matrix drives the same cases
//! through the real monitor).

use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, KeyPair};

use super::{
    inspect::inspect,
    read::DEFAULT_MAX_FILE_SIZE,
    validate::{
        validate_ca_bundle, validate_kubeconfig, validate_pair, validate_sa_keys, CaPolicy, Check,
        PairPolicy, Report, Status, Usage,
    },
};
use crate::test_pki::{ca, Ca};

struct Leaf {
    sans: Vec<&'static str>,
    eku: Vec<ExtendedKeyUsagePurpose>,
    not_before: time::OffsetDateTime,
    not_after: time::OffsetDateTime,
}

impl Default for Leaf {
    fn default() -> Self {
        let now = time::OffsetDateTime::now_utc();
        Leaf {
            sans: vec!["api.example", "10.0.0.1"],
            eku: vec![ExtendedKeyUsagePurpose::ServerAuth],
            not_before: now - time::Duration::hours(1),
            not_after: now + time::Duration::days(30),
        }
    }
}

fn leaf(ca: &Ca, spec: Leaf) -> (String, String) {
    let mut params =
        CertificateParams::new(spec.sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("params");
    params.extended_key_usages = spec.eku;
    params.not_before = spec.not_before;
    params.not_after = spec.not_after;
    let issued = ca.issue(params);
    (issued.cert.pem(), issued.key.serialize_pem())
}

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Self {
        Files {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }
    fn put(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, contents).expect("write");
        p
    }
}

fn policy() -> PairPolicy {
    PairPolicy {
        usage: Usage::Server,
        expect_sans: vec!["api.example".into()],
        min_validity: Some(Duration::from_secs(24 * 3600)),
        allow_san_removal: false,
        max_file_size: DEFAULT_MAX_FILE_SIZE,
    }
}

fn check(cert: &Path, key: &Path, ca: Option<&Path>) -> Report {
    validate_pair(cert, key, ca, &policy(), None, SystemTime::now())
}

#[track_caller]
fn assert_rejected(report: &Report, expected: Check) {
    let failure = report
        .failure()
        .unwrap_or_else(|| panic!("accepted, expected {expected} rejection: {report:#?}"));
    assert_eq!(failure.check, expected, "{report:#?}");
    assert!(
        report.material.is_none(),
        "rejected material must not be returned"
    );
}

#[test]
fn accepts_a_valid_pair_and_reports_every_check() {
    let f = Files::new();
    let ca1 = ca("ca1");
    let (cert, key) = leaf(&ca1, Leaf::default());
    let report = check(
        &f.put("tls.crt", cert),
        &f.put("tls.key", key),
        Some(&f.put("ca.crt", &ca1.pem)),
    );
    assert!(report.is_valid(), "{report:#?}");
    let passed: Vec<Check> = report
        .results
        .iter()
        .filter(|r| r.status == Status::Pass)
        .map(|r| r.check)
        .collect();
    for c in [
        Check::Parse,
        Check::KeyMatch,
        Check::Validity,
        Check::MinValidity,
        Check::Eku,
        Check::Chain,
        Check::Sans,
    ] {
        assert!(passed.contains(&c), "{c} did not pass: {report:#?}");
    }
    assert!(report.material.is_some());
}

#[test]
fn rejects_bad_material_naming_the_check() {
    let f = Files::new();
    let ca1 = ca("ca1");
    let ca2 = ca("ca2");
    let ca_path = f.put("ca.crt", &ca1.pem);
    let (good_cert, good_key) = leaf(&ca1, Leaf::default());
    let good_cert = f.put("good.crt", good_cert);
    let good_key = f.put("good.key", good_key);
    let now = time::OffsetDateTime::now_utc();

    assert_rejected(
        &check(&f.put("garbage.crt", b"\x00\x01garbage"), &good_key, None),
        Check::Parse,
    );
    let truncated = std::fs::read_to_string(&good_cert).expect("read");
    assert_rejected(
        &check(
            &f.put("trunc.crt", &truncated[..truncated.len() / 2]),
            &good_key,
            None,
        ),
        Check::Parse,
    );
    assert_rejected(
        &check(&f.put("empty.crt", b""), &good_key, None),
        Check::Parse,
    );
    assert_rejected(
        &check(
            &f.put("keyonly.crt", std::fs::read(&good_key).expect("key")),
            &good_key,
            None,
        ),
        Check::Parse,
    );
    assert_rejected(
        &check(
            &good_cert,
            &f.put(
                "other.key",
                KeyPair::generate().expect("key").serialize_pem(),
            ),
            None,
        ),
        Check::KeyMatch,
    );
    let (c, k) = leaf(
        &ca1,
        Leaf {
            not_before: now - time::Duration::days(10),
            not_after: now - time::Duration::days(1),
            ..Leaf::default()
        },
    );
    assert_rejected(
        &check(
            &f.put("expired.crt", c),
            &f.put("expired.key", k),
            Some(&ca_path),
        ),
        Check::Validity,
    );
    let (c, k) = leaf(
        &ca1,
        Leaf {
            not_before: now + time::Duration::days(1),
            not_after: now + time::Duration::days(10),
            ..Leaf::default()
        },
    );
    assert_rejected(
        &check(
            &f.put("future.crt", c),
            &f.put("future.key", k),
            Some(&ca_path),
        ),
        Check::Validity,
    );
    let (c, k) = leaf(
        &ca1,
        Leaf {
            not_after: now + time::Duration::hours(2),
            ..Leaf::default()
        },
    );
    assert_rejected(
        &check(
            &f.put("short.crt", c),
            &f.put("short.key", k),
            Some(&ca_path),
        ),
        Check::MinValidity,
    );
    let (c, k) = leaf(&ca2, Leaf::default());
    assert_rejected(
        &check(
            &f.put("other-issuer.crt", c),
            &f.put("other-issuer.key", k),
            Some(&ca_path),
        ),
        Check::Chain,
    );
    let (c, k) = leaf(
        &ca1,
        Leaf {
            sans: vec!["other.example"],
            ..Leaf::default()
        },
    );
    assert_rejected(
        &check(
            &f.put("nosan.crt", c),
            &f.put("nosan.key", k),
            Some(&ca_path),
        ),
        Check::Sans,
    );
    let (c, k) = leaf(
        &ca1,
        Leaf {
            eku: vec![ExtendedKeyUsagePurpose::ClientAuth],
            ..Leaf::default()
        },
    );
    assert_rejected(
        &check(
            &f.put("client.crt", c),
            &f.put("client.key", k),
            Some(&ca_path),
        ),
        Check::Eku,
    );
    let encrypted = "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIFHzBJBgkqhkiG9w0BBQ0wPDAbBgkqhkiG9w0BBQwwDgQI\n-----END ENCRYPTED PRIVATE KEY-----\n";
    assert_rejected(
        &check(&good_cert, &f.put("enc.key", encrypted), None),
        Check::EncryptedKey,
    );
    let big = f.put("big.crt", vec![b'A'; 50 * 1024 * 1024]);
    let report = check(&big, &good_key, None);
    assert_rejected(&report, Check::Read);
    assert!(report
        .failure()
        .expect("failure")
        .detail
        .contains("exceeds max_file_size"));
    assert_rejected(&check(f.dir.path(), &good_key, None), Check::Read);
    std::os::unix::fs::symlink(f.dir.path().join("loop2"), f.dir.path().join("loop1"))
        .expect("symlink");
    std::os::unix::fs::symlink(f.dir.path().join("loop1"), f.dir.path().join("loop2"))
        .expect("symlink");
    let report = check(&f.dir.path().join("loop1"), &good_key, None);
    assert_rejected(&report, Check::Read);
    assert!(report
        .failure()
        .expect("failure")
        .detail
        .contains("symlink loop"));
}

#[test]
fn rejects_a_rotation_that_drops_a_san_unless_allowed() {
    let f = Files::new();
    let ca1 = ca("ca1");
    let (c, k) = leaf(&ca1, Leaf::default());
    let current =
        inspect(&super::pem::certificates(c.as_bytes()).expect("pem")[0]).expect("inspect");
    let (c2, k2) = leaf(
        &ca1,
        Leaf {
            sans: vec!["api.example"],
            ..Leaf::default()
        },
    );
    let (cert, key) = (f.put("new.crt", c2), f.put("new.key", k2));
    let report = validate_pair(
        &cert,
        &key,
        None,
        &policy(),
        Some(&current),
        SystemTime::now(),
    );
    assert_rejected(&report, Check::SanRemoval);
    assert!(report
        .failure()
        .expect("failure")
        .detail
        .contains("10.0.0.1"));
    let allowed = PairPolicy {
        allow_san_removal: true,
        ..policy()
    };
    assert!(validate_pair(
        &cert,
        &key,
        None,
        &allowed,
        Some(&current),
        SystemTime::now()
    )
    .is_valid());
    let _ = (f.put("old.crt", c), k);
}

#[test]
fn a_ca_bundle_must_keep_the_ca_in_use() {
    let f = Files::new();
    let ca1 = ca("ca1");
    let ca2 = ca("ca2");
    let (c, _) = leaf(&ca1, Leaf::default());
    let in_use =
        inspect(&super::pem::certificates(c.as_bytes()).expect("pem")[0]).expect("inspect");
    let old = super::pem::certificates(ca1.pem.as_bytes())
        .expect("pem")
        .iter()
        .map(|d| inspect(d).expect("ca"))
        .collect::<Vec<_>>();
    let both = f.put("both.crt", format!("{}{}", ca1.pem, ca2.pem));
    let strict = ca_policy(None, false);
    assert!(validate_ca_bundle(&both, &strict, std::slice::from_ref(&in_use), &old).is_valid());
    let only_new = f.put("new.crt", &ca2.pem);
    assert_rejected(
        &validate_ca_bundle(&only_new, &strict, std::slice::from_ref(&in_use), &old),
        Check::CaContinuity,
    );
    let allowed = CaPolicy {
        allow_ca_removal: true,
        ..strict
    };
    assert!(validate_ca_bundle(&only_new, &allowed, &[in_use], &old).is_valid());
}

fn ca_policy(key: Option<&Path>, signing: bool) -> CaPolicy {
    CaPolicy {
        max_file_size: DEFAULT_MAX_FILE_SIZE,
        allow_ca_removal: false,
        key: key.map(Path::to_path_buf),
        signing,
    }
}

fn status_of(report: &Report, check: Check) -> Option<Status> {
    report
        .results
        .iter()
        .find(|r| r.check == check)
        .map(|r| r.status)
}

#[test]
fn a_ca_key_must_belong_to_a_certificate_of_the_bundle_and_is_not_kept() {
    let f = Files::new();
    let ca1 = ca("ca1");
    let ca2 = ca("ca2");
    let bundle = f.put("ca.crt", &ca1.pem);
    let own = f.put("ca.key", &ca1.key_pem);
    let report = validate_ca_bundle(&bundle, &ca_policy(Some(&own), false), &[], &[]);
    assert!(report.is_valid(), "{report:#?}");
    assert_eq!(status_of(&report, Check::KeyMatch), Some(Status::Pass));
    assert!(
        report.material.as_ref().expect("material").key.is_none(),
        "the CA key is checked, not kept"
    );

    // Another CA's key (ca.key replaced, ca.crt not): rejected, and the key never in the report.
    let foreign = f.put("other.key", &ca2.key_pem);
    let report = validate_ca_bundle(&bundle, &ca_policy(Some(&foreign), false), &[], &[]);
    assert_rejected(&report, Check::KeyMatch);
    let detail = &report.failure().expect("failure").detail;
    assert!(detail.contains("other.key"), "{detail}");
    let key_line = ca2.key_pem.lines().nth(1).expect("base64 line");
    let rendered = format!(
        "{report:?} {}",
        serde_json::to_string(&report).expect("json")
    );
    assert!(
        !rendered.contains(&key_line[..32]),
        "key bytes leaked: {rendered}"
    );

    // During a rotation the bundle holds old and new CA: the key may be either one's.
    let both = f.put("both.crt", format!("{}{}", ca1.pem, ca2.pem));
    assert!(validate_ca_bundle(&both, &ca_policy(Some(&foreign), false), &[], &[]).is_valid());

    // Without a key configured, key_match says it was not checked.
    let report = validate_ca_bundle(&bundle, &ca_policy(None, false), &[], &[]);
    assert_eq!(status_of(&report, Check::KeyMatch), Some(Status::Skip));

    // A missing or encrypted key is a rejection like for any pair.
    let missing = f.dir.path().join("absent.key");
    assert_rejected(
        &validate_ca_bundle(&bundle, &ca_policy(Some(&missing), false), &[], &[]),
        Check::Read,
    );
}

#[test]
fn a_signing_ca_with_more_than_one_certificate_is_accepted_with_a_warning() {
    let f = Files::new();
    let ca1 = ca("ca1");
    let ca2 = ca("ca2");
    let both = f.put("both.crt", format!("{}{}", ca1.pem, ca2.pem));
    let single = f.put("ca.crt", &ca1.pem);

    let report = validate_ca_bundle(&both, &ca_policy(None, true), &[], &[]);
    assert!(report.is_valid(), "a warning never rejects: {report:#?}");
    assert!(report.material.is_some());
    let warnings: Vec<_> = report.warnings().collect();
    assert_eq!(warnings.len(), 1, "{report:#?}");
    assert_eq!(warnings[0].check, Check::SingleCert);
    assert!(
        warnings[0].detail.contains("holds 2 certificates"),
        "{}",
        warnings[0].detail
    );
    let json = serde_json::to_value(&report).expect("json");
    assert!(
        json["results"]
            .as_array()
            .expect("results")
            .iter()
            .any(|r| r["check"] == "single_cert" && r["status"] == "warn"),
        "{json}"
    );

    let report = validate_ca_bundle(&single, &ca_policy(None, true), &[], &[]);
    assert_eq!(status_of(&report, Check::SingleCert), Some(Status::Pass));
    assert_eq!(report.warnings().count(), 0);

    // Not a signing CA: a multi-certificate bundle is what a client-CA rotation needs.
    let report = validate_ca_bundle(&both, &ca_policy(None, false), &[], &[]);
    assert_eq!(status_of(&report, Check::SingleCert), Some(Status::Skip));
    assert_eq!(report.warnings().count(), 0);
}

/// A kubeadm-style kubeconfig with the client pair and CA embedded.
fn kubeconfig(cert: &str, key: &str, ca: Option<&str>) -> String {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let ca = ca.map_or(String::new(), |ca| {
        format!("    certificate-authority-data: {}\n", b64(ca))
    });
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n{ca}    server: https://10.0.0.1:6443\n  name: kubernetes\ncontexts:\n- context:\n    cluster: kubernetes\n    user: system:kube-scheduler\n  name: system:kube-scheduler@kubernetes\ncurrent-context: system:kube-scheduler@kubernetes\nusers:\n- name: system:kube-scheduler\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
        b64(cert),
        b64(key)
    )
}

fn client_leaf() -> Leaf {
    Leaf {
        sans: vec![],
        eku: vec![ExtendedKeyUsagePurpose::ClientAuth],
        ..Leaf::default()
    }
}

fn kubeconfig_policy() -> PairPolicy {
    PairPolicy {
        usage: Usage::Client,
        expect_sans: Vec::new(),
        min_validity: None,
        allow_san_removal: false,
        max_file_size: DEFAULT_MAX_FILE_SIZE,
    }
}

#[test]
fn a_kubeconfig_is_checked_like_a_client_pair_chained_to_its_embedded_ca() {
    let f = Files::new();
    let ca1 = ca("kubernetes");
    let (cert, key) = leaf(&ca1, client_leaf());
    let file = f.put("scheduler.conf", kubeconfig(&cert, &key, Some(&ca1.pem)));
    let report = validate_kubeconfig(&file, &kubeconfig_policy(), None, SystemTime::now());
    assert!(report.is_valid(), "{report:#?}");
    for c in [Check::KeyMatch, Check::Validity, Check::Eku, Check::Chain] {
        assert_eq!(
            status_of(&report, c),
            Some(Status::Pass),
            "{c}: {report:#?}"
        );
    }
    let material = report.material.as_ref().expect("material");
    let fingerprint = &material.leaf.as_ref().expect("leaf").fingerprint;
    assert_eq!(material.cas.len(), 1);

    // A renewed certificate is a new leaf (what a restart action reacts to).
    let (renewed, renewed_key) = leaf(&ca1, client_leaf());
    let file = f.put(
        "scheduler.conf",
        kubeconfig(&renewed, &renewed_key, Some(&ca1.pem)),
    );
    let report = validate_kubeconfig(&file, &kubeconfig_policy(), None, SystemTime::now());
    let renewed_fp = &report
        .material
        .as_ref()
        .expect("valid")
        .leaf
        .as_ref()
        .expect("leaf")
        .fingerprint;
    assert_ne!(renewed_fp, fingerprint);

    // The key of another certificate.
    let file = f.put(
        "mixed.conf",
        kubeconfig(&cert, &renewed_key, Some(&ca1.pem)),
    );
    let report = validate_kubeconfig(&file, &kubeconfig_policy(), None, SystemTime::now());
    assert_rejected(&report, Check::KeyMatch);
    let detail = &report.failure().expect("failure").detail;
    assert!(detail.contains("client-key-data"), "{detail}");
    let key_line = renewed_key.lines().nth(1).expect("base64 line");
    let rendered = format!(
        "{report:?} {}",
        serde_json::to_string(&report).expect("json")
    );
    assert!(
        !rendered.contains(&key_line[..32]),
        "key bytes leaked: {rendered}"
    );

    // Issued by a CA other than the embedded one.
    let other = ca("other");
    let (foreign, foreign_key) = leaf(&other, client_leaf());
    let file = f.put(
        "foreign.conf",
        kubeconfig(&foreign, &foreign_key, Some(&ca1.pem)),
    );
    assert_rejected(
        &validate_kubeconfig(&file, &kubeconfig_policy(), None, SystemTime::now()),
        Check::Chain,
    );

    // Expired.
    let now = time::OffsetDateTime::now_utc();
    let (old, old_key) = leaf(
        &ca1,
        Leaf {
            not_before: now - time::Duration::days(400),
            not_after: now - time::Duration::days(35),
            ..client_leaf()
        },
    );
    let file = f.put("expired.conf", kubeconfig(&old, &old_key, Some(&ca1.pem)));
    assert_rejected(
        &validate_kubeconfig(&file, &kubeconfig_policy(), None, SystemTime::now()),
        Check::Validity,
    );

    // A serving certificate is not a client certificate.
    let (server, server_key) = leaf(&ca1, Leaf::default());
    let file = f.put(
        "server.conf",
        kubeconfig(&server, &server_key, Some(&ca1.pem)),
    );
    assert_rejected(
        &validate_kubeconfig(&file, &kubeconfig_policy(), None, SystemTime::now()),
        Check::Eku,
    );

    // No embedded CA: the chain is not checked, and the result says why.
    let file = f.put("noca.conf", kubeconfig(&cert, &key, None));
    let report = validate_kubeconfig(&file, &kubeconfig_policy(), None, SystemTime::now());
    assert!(report.is_valid(), "{report:#?}");
    let chain = report
        .results
        .iter()
        .find(|r| r.check == Check::Chain)
        .expect("chain");
    assert_eq!(chain.status, Status::Skip);
    assert!(
        chain.detail.contains("certificate-authority-data"),
        "{}",
        chain.detail
    );

    // Half-written (truncated YAML) and garbage.
    let full = kubeconfig(&cert, &key, Some(&ca1.pem));
    let file = f.put("half.conf", &full[..full.len() / 2]);
    assert_rejected(
        &validate_kubeconfig(&file, &kubeconfig_policy(), None, SystemTime::now()),
        Check::Parse,
    );
}

#[test]
fn sa_signing_key_must_be_among_the_public_keys() {
    let f = Files::new();
    let signing = KeyPair::generate().expect("key");
    let other = KeyPair::generate().expect("key");
    let key = f.put("sa.key", signing.serialize_pem());
    let both = f.put(
        "sa.pub",
        format!("{}{}", other.public_key_pem(), signing.public_key_pem()),
    );
    let report = validate_sa_keys(&key, &[both], DEFAULT_MAX_FILE_SIZE);
    assert!(report.is_valid(), "{report:#?}");
    let ids = &report.material.as_ref().expect("material").key_ids;
    assert_eq!(ids.len(), 2);
    assert!(
        ids.iter().all(|id| id.len() == 43 && !id.contains('=')),
        "base64url of SHA-256, unpadded: {ids:?}"
    );
    let wrong = f.put("other.pub", other.public_key_pem());
    assert_rejected(
        &validate_sa_keys(&key, &[wrong], DEFAULT_MAX_FILE_SIZE),
        Check::SaKeyPair,
    );
}

#[test]
fn no_report_or_debug_output_contains_key_material() {
    let f = Files::new();
    let ca1 = ca("ca1");
    let (cert, key_pem) = leaf(&ca1, Leaf::default());
    let key_line = key_pem.lines().nth(1).expect("base64 line").to_string();
    let report = check(&f.put("tls.crt", cert), &f.put("tls.key", &key_pem), None);
    let rendered = format!(
        "{report:?} {}",
        serde_json::to_string(&report).expect("json")
    );
    assert!(
        !rendered.contains(&key_line[..32]),
        "key bytes leaked: {rendered}"
    );
}

/// A `min_validity` beyond `i64::MAX` seconds (possible through the library API, the config caps it
/// at 10 years) wrapped negative with `as i64`, so every certificate passed it.
#[test]
fn a_huge_min_validity_rejects_instead_of_wrapping_to_a_pass() {
    let f = Files::new();
    let ca1 = ca("ca1");
    let (cert, key) = leaf(&ca1, Leaf::default());
    let ca_path = f.put("ca.crt", &ca1.pem);
    for secs in [u64::MAX, 1 << 63] {
        let report = validate_pair(
            &f.put("tls.crt", &cert),
            &f.put("tls.key", &key),
            Some(&ca_path),
            &PairPolicy {
                min_validity: Some(Duration::from_secs(secs)),
                ..policy()
            },
            None,
            SystemTime::now(),
        );
        assert_rejected(&report, Check::MinValidity);
    }
}
