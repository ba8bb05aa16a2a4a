//! The gate's bad-material matrix at the unit level (the end-to-end matrix drives the same cases
//! through the real monitor).

use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};

use super::{
    inspect::inspect,
    read::DEFAULT_MAX_FILE_SIZE,
    validate::{
        validate_ca_bundle, validate_pair, validate_sa_keys, Check, PairPolicy, Report, Status,
        Usage,
    },
};

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).expect("ca");
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

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
    let key = KeyPair::generate().expect("key");
    let mut params =
        CertificateParams::new(spec.sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("params");
    params.extended_key_usages = spec.eku;
    params.not_before = spec.not_before;
    params.not_after = spec.not_after;
    let cert = params.signed_by(&key, &ca.issuer).expect("leaf");
    (cert.pem(), key.serialize_pem())
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
    assert!(validate_ca_bundle(
        &both,
        DEFAULT_MAX_FILE_SIZE,
        std::slice::from_ref(&in_use),
        &old,
        false
    )
    .is_valid());
    let only_new = f.put("new.crt", &ca2.pem);
    assert_rejected(
        &validate_ca_bundle(
            &only_new,
            DEFAULT_MAX_FILE_SIZE,
            std::slice::from_ref(&in_use),
            &old,
            false,
        ),
        Check::CaContinuity,
    );
    assert!(validate_ca_bundle(&only_new, DEFAULT_MAX_FILE_SIZE, &[in_use], &old, true).is_valid());
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
