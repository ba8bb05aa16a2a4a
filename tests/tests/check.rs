//! `certreload check` against material made by openssl, the tool operators actually use: every key
//! format the gate must read, a really encrypted key, and the exit statuses a pipeline relies on.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use certreload_e2e::openssl::{available as have_openssl, run_in as openssl};
use certreload_e2e::{certreload_bin, skip_unless};
use serde_json::Value;

/// A self-signed server certificate for `key` (PEM file in `dir`).
fn self_signed(dir: &Path, key: &str, cert: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            key,
            "-out",
            cert,
            "-days",
            "30",
            "-subj",
            "/CN=api.example",
            "-addext",
            "subjectAltName=DNS:api.example",
        ],
    );
}

fn check(args: &[&str]) -> (i32, Value) {
    let out = Command::new(certreload_bin())
        .arg("check")
        .args(args)
        .args(["--output", "json"])
        .output()
        .expect("runs");
    let json = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), json)
}

fn first_failure(v: &Value) -> Option<String> {
    v["bundles"][0]["results"]
        .as_array()?
        .iter()
        .find(|r| r["status"] == "fail")
        .and_then(|r| r["check"].as_str().map(str::to_owned))
}

#[test]
fn reads_every_key_format_openssl_writes() {
    skip_unless!(
        have_openssl(),
        "openssl is needed (cargo xtask setup installs it)"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let cases: [(&str, &[&str], &str); 4] = [
        (
            "rsa-pkcs1",
            &["genrsa", "-traditional", "-out", "rsa-pkcs1.key", "2048"],
            "BEGIN RSA PRIVATE KEY",
        ),
        (
            "rsa-pkcs8",
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                "rsa-pkcs8.key",
            ],
            "BEGIN PRIVATE KEY",
        ),
        (
            "ec-sec1",
            &[
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                "ec-sec1.key",
            ],
            "BEGIN EC PRIVATE KEY",
        ),
        (
            "ed25519",
            &["genpkey", "-algorithm", "ed25519", "-out", "ed25519.key"],
            "BEGIN PRIVATE KEY",
        ),
    ];
    for (name, gen, marker) in cases {
        openssl(d, gen);
        let key = format!("{name}.key");
        let pem = std::fs::read_to_string(d.join(&key)).expect("key");
        assert!(
            pem.contains(marker),
            "{name}: openssl wrote {}",
            pem.lines().next().unwrap_or_default()
        );
        self_signed(d, &key, &format!("{name}.crt"));
        let (cert, key): (PathBuf, PathBuf) = (d.join(format!("{name}.crt")), d.join(key));
        let (code, v) = check(&[
            "--cert",
            &cert.to_string_lossy(),
            "--key",
            &key.to_string_lossy(),
            "--san",
            "api.example",
        ]);
        assert_eq!(code, 0, "{name} should be valid: {v:#}");
    }
}

#[test]
fn a_really_encrypted_key_is_refused_with_exit_1() {
    skip_unless!(
        have_openssl(),
        "openssl is needed (cargo xtask setup installs it)"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    openssl(
        d,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "plain.key",
        ],
    );
    self_signed(d, "plain.key", "tls.crt");
    openssl(
        d,
        &[
            "pkcs8",
            "-topk8",
            "-in",
            "plain.key",
            "-out",
            "enc.key",
            "-v2",
            "aes-256-cbc",
            "-passout",
            "pass:secret",
        ],
    );
    let (code, v) = check(&[
        "--cert",
        &d.join("tls.crt").to_string_lossy(),
        "--key",
        &d.join("enc.key").to_string_lossy(),
    ]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(first_failure(&v).as_deref(), Some("encrypted_key"), "{v:#}");
    // A key that belongs to another certificate.
    openssl(
        d,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "other.key",
        ],
    );
    let (code, v) = check(&[
        "--cert",
        &d.join("tls.crt").to_string_lossy(),
        "--key",
        &d.join("other.key").to_string_lossy(),
    ]);
    assert_eq!(
        (code, first_failure(&v).as_deref()),
        (1, Some("key_match")),
        "{v:#}"
    );
}

#[test]
fn usage_and_io_errors_exit_2() {
    let out = Command::new(certreload_bin())
        .args(["check", "--config", "/nonexistent/certreload.toml"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/certreload.toml"));
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[agent]\npair_timeout = \"soon\"\n").expect("write");
    let out = Command::new(certreload_bin())
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(":2: agent.pair_timeout"),
        "names the line and field: {stderr}"
    );
}

#[test]
fn profile_check_validates_the_node_pki_and_names_the_broken_bundle() {
    use certreload_e2e::pki::{Leaf, TestCa};
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = dir.path().join("etc/kubernetes/pki");
    std::fs::create_dir_all(&pki).expect("mkdir");
    let ca = TestCa::new("kubernetes");
    let (cert, key) = ca.issue(&Leaf::server("kubernetes"));
    std::fs::write(pki.join("ca.crt"), &ca.pem).expect("write");
    std::fs::write(pki.join("apiserver.crt"), cert).expect("write");
    std::fs::write(pki.join("apiserver.key"), key).expect("write");
    let root = dir.path().display().to_string();
    let args = ["--profile", "kubeadm", "--host-root", root.as_str()];
    let (code, v) = check(&args);
    assert_eq!(code, 0, "{v}");
    let names: Vec<_> = v["bundles"]
        .as_array()
        .expect("bundles")
        .iter()
        .map(|b| b["name"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(names, ["kubernetes-ca", "apiserver"]);

    // A key that does not match: exit 1, the apiserver bundle names key_match.
    let (_, other_key) = ca.issue(&Leaf::server("kubernetes"));
    std::fs::write(pki.join("apiserver.key"), other_key).expect("write");
    let (code, v) = check(&args);
    assert_eq!(code, 1, "{v}");
    let apiserver = v["bundles"]
        .as_array()
        .expect("bundles")
        .iter()
        .find(|b| b["name"] == "apiserver")
        .cloned()
        .expect("apiserver");
    let failed: Vec<_> = apiserver["results"]
        .as_array()
        .expect("results")
        .iter()
        .filter(|r| r["status"] == "fail")
        .map(|r| r["check"].clone())
        .collect();
    assert_eq!(failed, ["key_match"], "{apiserver}");
}

/// A CA as kubeadm writes it: (ca.crt PEM, ca.key PEM).
fn ca_with_key(cn: &str) -> (String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    (
        params.self_signed(&key).expect("ca").pem(),
        key.serialize_pem(),
    )
}

fn bundle<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["bundles"]
        .as_array()
        .expect("bundles")
        .iter()
        .find(|b| b["name"] == name)
        .unwrap_or_else(|| panic!("no bundle {name}: {v}"))
}

fn status_of(bundle: &Value, check: &str) -> Option<String> {
    bundle["results"]
        .as_array()?
        .iter()
        .find(|r| r["check"] == check)
        .and_then(|r| r["status"].as_str().map(str::to_owned))
}

#[test]
fn profile_check_rejects_a_ca_key_that_is_not_the_cas_and_warns_on_a_second_signing_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = dir.path().join("etc/kubernetes/pki");
    std::fs::create_dir_all(&pki).expect("mkdir");
    let (ca_crt, ca_key) = ca_with_key("kubernetes");
    std::fs::write(pki.join("ca.crt"), &ca_crt).expect("write");
    std::fs::write(pki.join("ca.key"), &ca_key).expect("write");
    let root = dir.path().display().to_string();
    let args = ["--profile", "kubeadm", "--host-root", root.as_str()];
    let (code, v) = check(&args);
    assert_eq!(code, 0, "{v}");
    let ca = bundle(&v, "kubernetes-ca");
    assert_eq!(status_of(ca, "key_match").as_deref(), Some("pass"), "{ca}");
    assert_eq!(
        status_of(ca, "single_cert").as_deref(),
        Some("pass"),
        "{ca}"
    );

    // ca.key replaced by another CA's key: exit 1, key_match, and the key is nowhere in the output.
    let (_, foreign_key) = ca_with_key("kubernetes");
    std::fs::write(pki.join("ca.key"), &foreign_key).expect("write");
    let out = Command::new(certreload_bin())
        .args(["check", "--output", "json"])
        .args(args)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    let ca = bundle(&v, "kubernetes-ca");
    assert_eq!(ca["valid"], false, "{ca}");
    assert_eq!(
        first_failure(&serde_json::json!({ "bundles": [ca] })).as_deref(),
        Some("key_match")
    );
    let key_line = foreign_key.lines().nth(1).expect("base64 line");
    for stream in [&out.stdout, &out.stderr] {
        assert!(
            !String::from_utf8_lossy(stream).contains(&key_line[..32]),
            "key bytes in the output"
        );
    }

    // The right key back, and a second CA in ca.crt (a client-CA rotation): valid, with a
    // warning that the controller-manager's signer will not take it.
    std::fs::write(pki.join("ca.key"), &ca_key).expect("write");
    let (next, _) = ca_with_key("kubernetes-next");
    std::fs::write(pki.join("ca.crt"), format!("{ca_crt}{next}")).expect("write");
    let (code, v) = check(&args);
    assert_eq!(code, 0, "a warning never fails the check: {v}");
    let ca = bundle(&v, "kubernetes-ca");
    assert_eq!(
        status_of(ca, "single_cert").as_deref(),
        Some("warn"),
        "{ca}"
    );
    assert_eq!(status_of(ca, "key_match").as_deref(), Some("pass"), "{ca}");
    let text = Command::new(certreload_bin())
        .arg("check")
        .args(args)
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("WARN  single_cert"), "{text}");
}
