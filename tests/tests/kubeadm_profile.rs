//! `certreload run --profile kubeadm` over a synthetic kubeadm tree: what the gate says about the
//! cluster CA reaches the audit log and the log while the agent runs (the `check` tests cover the
//! same checks as a command).

use certreload_e2e::kube::agent::start_profile_agent;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

/// A CA as kubeadm writes it: (ca.crt PEM, ca.key PEM).
fn ca_with_key(cn: &str) -> (String, String) {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    (
        params.self_signed(&key).expect("ca").pem(),
        key.serialize_pem(),
    )
}

#[test]
fn signing_ca_warning_is_audited_and_logged_and_a_foreign_ca_key_is_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = dir.path().join("etc/kubernetes/pki");
    std::fs::create_dir_all(&pki).expect("mkdir");
    // Mid-rotation: ca.crt holds the current and the next CA, ca.key is the current CA's.
    let (current, current_key) = ca_with_key("kubernetes");
    let (next, _) = ca_with_key("kubernetes-next");
    std::fs::write(pki.join("ca.crt"), format!("{current}{next}")).expect("write");
    std::fs::write(pki.join("ca.key"), &current_key).expect("write");
    let run = start_profile_agent(dir.path(), "pair_timeout = \"1s\"", "", &[]);
    let agent = &run.agent;

    let accepted = agent.expect_record("kubernetes-ca accepted", |r| {
        r["event"] == "material_accepted" && r["bundle"] == "kubernetes-ca"
    });
    let warnings = accepted["warnings"].as_array().expect("warnings");
    assert_eq!(warnings.len(), 1, "{accepted}");
    assert_eq!(warnings[0]["check"], "single_cert", "{accepted}");
    assert_eq!(warnings[0]["status"], "warn", "{accepted}");
    let log = agent.log();
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains("accepted with a warning")
            && l.contains("single_cert")),
        "{log}"
    );

    // ca.key replaced by another CA's key: rejected once the pair timeout is over, generation 1
    // stays, and the key is in neither the audit log nor the log.
    let (_, foreign_key) = ca_with_key("kubernetes");
    std::fs::write(pki.join("ca.key"), &foreign_key).expect("write");
    let rejected = agent.expect_record("kubernetes-ca rejected by key_match", |r| {
        r["event"] == "material_rejected" && r["bundle"] == "kubernetes-ca"
    });
    assert_eq!(rejected["check"], "key_match", "{rejected}");
    assert_eq!(rejected["current_generation"], 1, "{rejected}");
    let log = agent.log();
    let records = run.stop();
    let key_line = foreign_key.lines().nth(1).expect("base64 line");
    let audit = records
        .iter()
        .map(|r| r.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        !audit.contains(&key_line[..32]),
        "key bytes in the audit log"
    );
    assert!(!log.contains(&key_line[..32]), "key bytes in the log");
}
