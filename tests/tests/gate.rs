//! `certreload run`: the validation gate behind the real monitor, and the audit trail it leaves.
//!
//! Every bad-material case starts from valid live generations, applies the bad change the way a
//! broken rotation would, and asserts: rejected with the expected check named, the previous
//! generation still current, and an audit record written.

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use certreload_e2e::pki::{Leaf, TestCa};
use certreload_e2e::{is_root, skip_unless, Agent};
use rcgen::{ExtendedKeyUsagePurpose, KeyPair};
use serde_json::Value;

/// The gate tests' default leaf: the SANs the `web` bundle expects, serverAuth, valid now.
fn web_leaf() -> Leaf {
    Leaf::server("api.example").sans(&["api.example", "10.0.0.1"])
}

/// A node's worth of material and a running agent over it.
struct Node {
    dir: tempfile::TempDir,
    ca1: TestCa,
    key_pem: String,
    agent: Option<Agent>,
}

impl Node {
    fn pki(&self, name: &str) -> PathBuf {
        self.dir.path().join("pki").join(name)
    }

    /// Valid material, a config over it, and an agent that accepted generation 1 of every bundle.
    fn start(wrapper: &[&str]) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir(dir.path().join("pki")).expect("mkdir");
        let ca1 = TestCa::new("cluster CA 1");
        let (cert, key) = ca1.issue(&web_leaf());
        let sa = KeyPair::generate().expect("sa key");
        let mut node = Node {
            dir,
            ca1,
            key_pem: key.clone(),
            agent: None,
        };
        fs::write(node.pki("ca.crt"), &node.ca1.pem).expect("write");
        fs::write(node.pki("tls.crt"), cert).expect("write");
        fs::write(node.pki("tls.key"), key).expect("write");
        fs::write(node.pki("sa.key"), sa.serialize_pem()).expect("write");
        fs::write(node.pki("sa.pub"), sa.public_key_pem()).expect("write");
        let audit = node.dir.path().join("audit/audit.jsonl");
        let config = format!(
            r#"
[agent]
pair_timeout = "3s"
admin = "127.0.0.1:0"
[audit]
path = "{audit}"
[[bundle]]
name = "web"
kind = "server"
cert = "{pki}/tls.crt"
key = "{pki}/tls.key"
ca = "{pki}/ca.crt"
expect_sans = ["api.example"]
min_validity = "1h"
[[bundle]]
name = "cluster-ca"
kind = "ca"
cert = "{pki}/ca.crt"
[[bundle]]
name = "sa"
kind = "sa-keys"
private_key = "{pki}/sa.key"
public_keys = ["{pki}/sa.pub"]
"#,
            audit = audit.display(),
            pki = node.dir.path().join("pki").display()
        );
        let config_path = node.dir.path().join("certreload.toml");
        fs::write(&config_path, config).expect("write");
        // Everyone may traverse (for the unprivileged-read case); files stay as written.
        fs::set_permissions(
            node.dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod");
        let agent = Agent::start_wrapped(wrapper, &config_path, &audit, &[]);
        for bundle in ["web", "cluster-ca", "sa"] {
            agent.expect_record(&format!("generation 1 of {bundle}"), |r| {
                r["event"] == "material_accepted"
                    && r["bundle"] == bundle
                    && r["new_generation"] == 1
            });
        }
        node.agent = Some(agent);
        node
    }

    fn agent(&self) -> &Agent {
        self.agent.as_ref().expect("running")
    }

    /// Replaces `name` atomically (write elsewhere, rename over), as a careful rotation tool does.
    fn replace(&self, name: &str, bytes: impl AsRef<[u8]>) {
        let tmp = self.dir.path().join(format!(".{name}.tmp"));
        fs::write(&tmp, bytes).expect("write");
        fs::rename(&tmp, self.pki(name)).expect("rename");
    }

    /// Waits for `bundle`'s rejection by `check`, then checks nothing replaced generation 1.
    fn expect_rejected(mut self, bundle: &str, check: &str, detail: &str) {
        let record = self
            .agent()
            .expect_record(&format!("{bundle} rejected by {check}"), |r| {
                r["event"] == "material_rejected" && r["bundle"] == bundle && r["check"] == check
            });
        assert_eq!(
            record["current_generation"], 1,
            "the previous generation stays current: {record}"
        );
        let reason = record["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains(detail),
            "reason should mention {detail:?}: {record}"
        );
        let records = self.agent.take().expect("running").stop();
        let replaced: Vec<&Value> = records
            .iter()
            .filter(|r| {
                r["event"] == "material_accepted"
                    && r["bundle"] == bundle
                    && r["new_generation"] != 1
            })
            .collect();
        assert!(replaced.is_empty(), "bad material went live: {replaced:#?}");
        assert!(
            records
                .iter()
                .any(|r| r["event"] == "change_detected" || r["event"] == "resync_found_change"),
            "the change itself is audited"
        );
        let log = fs::read_to_string(self.dir.path().join("audit/audit.jsonl")).expect("audit");
        assert_no_key_bytes(&log, &self.key_pem);
    }
}

fn assert_no_key_bytes(text: &str, key_pem: &str) {
    for line in key_pem
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 20)
    {
        assert!(
            !text.contains(line),
            "private key material found in the audit log"
        );
    }
}

#[test]
fn garbage_bytes_are_rejected_by_parse() {
    let node = Node::start(&[]);
    node.replace("tls.crt", b"\x00\x13garbage\xff");
    node.expect_rejected("web", "parse", "tls.crt");
}

#[test]
fn truncated_pem_is_rejected_by_parse() {
    let node = Node::start(&[]);
    let pem = fs::read_to_string(node.pki("tls.crt")).expect("read");
    node.replace("tls.crt", &pem[..pem.len() / 2]);
    node.expect_rejected("web", "parse", "truncated");
}

#[test]
fn empty_file_is_rejected_by_parse() {
    let node = Node::start(&[]);
    node.replace("tls.crt", b"");
    node.expect_rejected("web", "parse", "empty");
}

#[test]
fn cert_without_key_is_rejected_by_parse() {
    let node = Node::start(&[]);
    let cert = fs::read(node.pki("tls.crt")).expect("read");
    node.replace("tls.key", cert);
    node.expect_rejected("web", "parse", "tls.key");
}

#[test]
fn key_that_matches_nothing_is_rejected_after_pair_timeout() {
    let node = Node::start(&[]);
    node.replace("tls.key", KeyPair::generate().expect("key").serialize_pem());
    node.agent().expect_record("pair_waiting", |r| {
        r["event"] == "pair_waiting" && r["check"] == "key_match"
    });
    node.expect_rejected("web", "key_match", "does not match");
}

#[test]
fn expired_pair_is_rejected_by_validity() {
    let node = Node::start(&[]);
    let (cert, key) = node.ca1.issue(&web_leaf().valid(-10, -1));
    node.replace("tls.crt", cert);
    node.replace("tls.key", key);
    node.expect_rejected("web", "validity", "expired");
}

#[test]
fn not_yet_valid_pair_is_rejected_by_validity() {
    let node = Node::start(&[]);
    let (cert, key) = node.ca1.issue(&web_leaf().valid(2, 30));
    node.replace("tls.crt", cert);
    node.replace("tls.key", key);
    node.expect_rejected("web", "validity", "not yet valid");
}

#[test]
fn pair_from_another_issuer_is_rejected_by_chain() {
    let node = Node::start(&[]);
    let (cert, key) = TestCa::new("rogue CA").issue(&web_leaf());
    node.replace("tls.crt", cert);
    node.replace("tls.key", key);
    node.expect_rejected("web", "chain", "not in the CA file");
}

#[test]
fn missing_expected_san_is_rejected() {
    let node = Node::start(&[]);
    let (cert, key) = node
        .ca1
        .issue(&web_leaf().sans(&["other.example", "10.0.0.1"]));
    node.replace("tls.crt", cert);
    node.replace("tls.key", key);
    node.expect_rejected("web", "sans", "api.example");
}

#[test]
fn dropping_a_san_of_the_live_generation_is_rejected() {
    let node = Node::start(&[]);
    let (cert, key) = node.ca1.issue(&web_leaf().sans(&["api.example"]));
    node.replace("tls.crt", cert);
    node.replace("tls.key", key);
    node.expect_rejected("web", "san_removal", "10.0.0.1");
}

#[test]
fn wrong_eku_is_rejected() {
    let node = Node::start(&[]);
    let (cert, key) = node
        .ca1
        .issue(&web_leaf().eku(&[ExtendedKeyUsagePurpose::ClientAuth]));
    node.replace("tls.crt", cert);
    node.replace("tls.key", key);
    node.expect_rejected("web", "eku", "serverAuth");
}

#[test]
fn encrypted_key_is_rejected_saying_so() {
    let node = Node::start(&[]);
    node.replace("tls.key", "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIFHzBJBgkqhkiG9w0BBQ0wPDAb\n-----END ENCRYPTED PRIVATE KEY-----\n");
    node.expect_rejected("web", "encrypted_key", "encrypted");
}

#[test]
fn fifty_mib_file_is_rejected_by_read() {
    let node = Node::start(&[]);
    node.replace("tls.crt", vec![b'A'; 50 * 1024 * 1024]);
    node.expect_rejected("web", "read", "exceeds max_file_size");
}

#[test]
fn directory_in_place_of_the_file_is_rejected_by_read() {
    let node = Node::start(&[]);
    fs::remove_file(node.pki("tls.crt")).expect("rm");
    fs::create_dir(node.pki("tls.crt")).expect("mkdir");
    node.expect_rejected("web", "read", "is a directory");
}

#[test]
fn symlink_loop_is_rejected_by_read() {
    let node = Node::start(&[]);
    let tmp = node.dir.path().join("loop.tmp");
    symlink("tls.crt", &tmp).expect("symlink");
    fs::rename(&tmp, node.pki("tls.crt")).expect("rename");
    node.expect_rejected("web", "read", "symlink loop");
}

#[test]
fn unreadable_file_is_rejected_by_read() {
    skip_unless!(
        is_root(),
        "an agent without CAP_DAC_OVERRIDE is started with setpriv as root"
    );
    // Root reads any file; drop the capabilities that let it, as a least-privilege agent would.
    let node = Node::start(&[
        "setpriv",
        "--bounding-set",
        "-dac_override,-dac_read_search",
        "--",
    ]);
    let tmp = node.dir.path().join("unreadable.tmp");
    fs::copy(node.pki("tls.crt"), &tmp).expect("copy");
    fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o000)).expect("chmod");
    fs::rename(&tmp, node.pki("tls.crt")).expect("rename");
    node.expect_rejected("web", "read", "permission denied");
}

#[test]
fn ca_bundle_that_drops_the_ca_in_use_is_rejected() {
    let node = Node::start(&[]);
    node.replace("ca.crt", TestCa::new("cluster CA 2").pem);
    node.expect_rejected("cluster-ca", "ca_continuity", "cluster CA 1");
}

#[test]
fn sa_private_key_not_among_public_keys_is_rejected() {
    let node = Node::start(&[]);
    node.replace("sa.key", KeyPair::generate().expect("key").serialize_pem());
    node.expect_rejected("sa", "sa_key_pair", "not among the public keys");
}

fn rotate_pair(node: &Node, cert_first: bool) {
    let (cert, key) = node.ca1.issue(&web_leaf());
    let (first, second) = if cert_first {
        (("tls.crt", cert), ("tls.key", key))
    } else {
        (("tls.key", key), ("tls.crt", cert))
    };
    node.replace(first.0, first.1);
    std::thread::sleep(std::time::Duration::from_millis(300));
    node.replace(second.0, second.1);
}

#[test]
fn cert_and_key_replaced_in_either_order_make_exactly_one_generation_each() {
    let mut node = Node::start(&[]);
    rotate_pair(&node, true);
    node.agent().expect_record("generation 2", |r| {
        r["event"] == "material_accepted" && r["bundle"] == "web" && r["new_generation"] == 2
    });
    rotate_pair(&node, false);
    node.agent().expect_record("generation 3", |r| {
        r["event"] == "material_accepted" && r["bundle"] == "web" && r["new_generation"] == 3
    });
    let records = node.agent.take().expect("running").stop();
    let web: Vec<&Value> = records.iter().filter(|r| r["bundle"] == "web").collect();
    assert!(
        !web.iter().any(|r| r["event"] == "material_rejected"),
        "no rejection: {web:#?}"
    );
    let generations: Vec<&Value> = web
        .iter()
        .filter(|r| r["event"] == "material_accepted")
        .map(|r| &r["new_generation"])
        .collect();
    assert_eq!(
        generations,
        vec![1, 2, 3],
        "exactly one new generation per rotation"
    );
    assert_eq!(
        records.last().map(|r| r["event"].clone()),
        Some("agent_stopped".into())
    );
}

fn verify(files: &[&Path]) -> (i32, String) {
    let out = Command::new(certreload_e2e::certreload_bin())
        .args(["audit", "verify"])
        .args(files)
        .output()
        .expect("runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn audit_verify_names_modified_deleted_and_reordered_records() {
    let mut node = Node::start(&[]);
    rotate_pair(&node, true);
    node.agent().expect_record("generation 2", |r| {
        r["event"] == "material_accepted" && r["new_generation"] == 2
    });
    let audit = node.agent().audit.clone();
    node.agent.take().expect("running").stop();
    let (code, out) = verify(&[&audit]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("intact"), "{out}");

    let original = fs::read_to_string(&audit).expect("read");
    let lines: Vec<&str> = original.lines().collect();
    assert!(lines.len() >= 6, "{original}");
    let write = |lines: Vec<String>| fs::write(&audit, lines.join("\n") + "\n").expect("write");
    let owned = || lines.iter().map(|l| l.to_string()).collect::<Vec<_>>();

    let mut modified = owned();
    modified[2] = modified[2].replacen("\"bundle\":\"", "\"bundle\":\"x", 1);
    write(modified);
    let (code, out) = verify(&[&audit]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("record seq 2") && out.contains("modified"),
        "{out}"
    );

    let mut deleted = owned();
    deleted.remove(3);
    write(deleted);
    let (code, out) = verify(&[&audit]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("record seq 3 is missing"), "{out}");

    let mut reordered = owned();
    reordered.swap(1, 2);
    write(reordered);
    let (code, out) = verify(&[&audit]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("record seq 1 is missing or out of order"),
        "{out}"
    );
}

#[test]
fn a_bundle_invalid_at_start_up_is_reported_and_the_rest_is_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("ca");
    let (cert, key) = ca.issue(&web_leaf());
    let p = |n: &str| dir.path().join(n);
    fs::write(p("good.crt"), &cert).expect("write");
    fs::write(p("good.key"), &key).expect("write");
    fs::write(p("bad.crt"), "not a certificate").expect("write");
    fs::write(p("bad.key"), &key).expect("write");
    let audit = p("audit.jsonl");
    let config = format!(
        "[agent]\nadmin = \"127.0.0.1:0\"\n[audit]\npath = \"{}\"\n[[bundle]]\nname = \"good\"\nkind = \"server\"\ncert = \"{}\"\nkey = \"{}\"\n[[bundle]]\nname = \"bad\"\nkind = \"server\"\ncert = \"{}\"\nkey = \"{}\"\n",
        audit.display(),
        p("good.crt").display(),
        p("good.key").display(),
        p("bad.crt").display(),
        p("bad.key").display()
    );
    fs::write(p("c.toml"), config).expect("write");
    let agent = Agent::start(&p("c.toml"), &audit, &[]);
    agent.expect_record("good accepted", |r| {
        r["event"] == "material_accepted" && r["bundle"] == "good"
    });
    let rejected = agent.expect_record("bad rejected", |r| {
        r["event"] == "material_rejected" && r["bundle"] == "bad"
    });
    assert!(rejected["current_generation"].is_null(), "{rejected}");
    assert!(
        agent.log().contains("bad"),
        "the not-ready bundle is named in the log"
    );
    // Fixing it later brings it up.
    let tmp = p("bad.tmp");
    fs::write(&tmp, &cert).expect("write");
    fs::rename(&tmp, p("bad.crt")).expect("rename");
    agent.expect_record("bad accepted once fixed", |r| {
        r["event"] == "material_accepted" && r["bundle"] == "bad" && r["new_generation"] == 1
    });
    agent.stop();
}
