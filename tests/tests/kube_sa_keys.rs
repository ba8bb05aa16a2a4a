//! `[sa_keys]` against the REAL API server of the kubeadm control plane (`certreload_e2e::kube`,
//! Kubernetes v1.37.2 built from source): two agents, each with a token of deploy/'s
//! ServiceAccount (so deploy/rbac.yaml's Role in kube-system is what lets them), run beside the
//! control plane. The publisher (`publish = "sa"`, the node's real `pki/sa.key` and `pki/sa.pub`)
//! writes `kube-system/certreload-sa-keys`; the follower (another node name, follow only) watches
//! it.
//!
//! Asserted, with every key id computed here from the PEM files (not by the agent):
//! (a) at start the ConfigMap holds sa.pub's kids and the kid of sa.key's public half, audited
//!     `sa_keys_published` with the object's resourceVersion, and followed;
//! (b) an SA key rotation as an operator does it (sa.pub = old + new, then sa.key = new) publishes
//!     each step, the second with the new signing kid, and the follower sees each;
//! (c) a private key that is not among the public keys is rejected by the gate and publishes
//!     nothing (the resourceVersion stays);
//! (d) the API server stopped (and kept down) in the middle: the follower audits the lost watch,
//!     a key change made meanwhile is published once the API server is back, and the follower
//!     audits the resumed watch and then the new generation;
//! (e) a publisher restarted after the object was overwritten with an outdated identity repairs
//!     it at start, and one restarted with the object already holding its keys leaves it as it is;
//! `/status` shows both sides; neither agent's log holds a private key or the token.
//!
//! One control plane per test binary: run real-cluster binaries under
//! `flock /tmp/certreload-cp.lock` (the API server's port is fixed).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use base64::Engine;
use certreload_e2e::{
    http,
    kube::{
        self,
        agent::{await_record_of, replace, seq},
        identity::{apply_identity, token_kubeconfig},
        pods::key_ids,
        ControlPlane, APISERVER,
    },
    openssl, Agent,
};
use serde_json::Value;

const NAMESPACE: &str = "kube-system";
const NAME: &str = "certreload-sa-keys";
const PUBLISHER: &str = "cr-sa-keys-publisher";
const FOLLOWER: &str = "cr-sa-keys-follower";
/// How long an agent gets to react to a change it can see.
const WITHIN: Duration = Duration::from_secs(60);

/// Sorted, as the ConfigMap lists them.
fn sorted(mut kids: Vec<String>) -> Vec<String> {
    kids.sort();
    kids.dedup();
    kids
}

/// The public half of a private key file, as PEM, written into `dir`.
fn public_of(key: &Path, dir: &Path) -> PathBuf {
    let name = key.file_name().expect("a file").to_string_lossy();
    let public = dir.join(format!("{name}.public.pem"));
    openssl::write_public_key(key, &public).expect("openssl writes the public key");
    public
}

/// A new RSA key pair in `dir`: (private key file, public key file).
fn new_key_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.key.public.pem"));
    openssl::new_rsa_key_pair(&key, &public).expect("openssl makes a key pair");
    (key, public)
}

/// The ConfigMap as the API server has it: (data, resourceVersion); `None` when absent.
fn configmap(cp: &ControlPlane) -> Option<(BTreeMap<String, String>, String)> {
    let out = cp
        .kubectl(&[
            "get",
            "configmap",
            NAME,
            "-n",
            NAMESPACE,
            "--ignore-not-found",
            "-o",
            "json",
        ])
        .unwrap_or_else(|e| panic!("kubectl get configmap {NAME}: {e:#}"));
    if out.trim().is_empty() {
        return None;
    }
    let v: Value = serde_json::from_str(&out).expect("JSON");
    let data = serde_json::from_value(v["data"].clone()).expect("data is a string map");
    let rv = v["metadata"]["resourceVersion"]
        .as_str()
        .expect("resourceVersion")
        .to_string();
    Some((data, rv))
}

/// One agent's configuration: the admin endpoint on a free port, the audit log in `dir`, its
/// node name and `body` (bundles and `[sa_keys]`).
fn start(dir: &Path, node: &str, kubeconfig: &Path, body: &str) -> Agent {
    let audit = dir.join("audit.jsonl");
    let config = dir.join("certreload.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nadmin = \"127.0.0.1:0\"\npair_timeout = \"1s\"\n[audit]\npath = {:?}\n[events]\nnode = \"{node}\"\n{body}",
            audit.display().to_string()
        ),
    )
    .expect("write the agent's config");
    let env = format!("KUBECONFIG={}", kubeconfig.display());
    Agent::start_wrapped(
        &["env", "-u", "KUBERNETES_SERVICE_HOST", &env],
        &config,
        &audit,
        &[],
    )
}

/// The agent's `/status` document.
fn status(agent: &Agent) -> Value {
    let admin = agent.log_field("agent ready", "admin");
    let response = http::get_ok(&admin, "/status");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    serde_json::from_str(body).unwrap_or_else(|e| panic!("/status is not JSON ({e}): {body}"))
}

fn kids_of(r: &Value) -> Vec<String> {
    r["kids"]
        .as_array()
        .unwrap_or_else(|| panic!("no kids in {r}"))
        .iter()
        .map(|k| k.as_str().expect("a kid").to_string())
        .collect()
}

/// The two agents, for the wait helpers' failure reports.
struct Agents<'a> {
    cp: &'a ControlPlane,
    publisher: &'a Agent,
    follower: &'a Agent,
}

impl Agents<'_> {
    fn all(&self) -> [(&str, &Agent); 2] {
        [("publisher", self.publisher), ("follower", self.follower)]
    }

    /// The publisher's record of `event` after `after` (a seq) matching `pred`.
    fn publisher_record(&self, what: &str, after: u64, pred: impl Fn(&Value) -> bool) -> Value {
        await_record_of(self.cp, &self.all(), 0, what, WITHIN, |r| {
            seq(r) > after && pred(r)
        })
    }

    /// The follower's record matching `pred` after `after`.
    fn follower_record(
        &self,
        what: &str,
        after: u64,
        within: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        await_record_of(self.cp, &self.all(), 1, what, within, |r| {
            seq(r) > after && pred(r)
        })
    }

    /// Awaits `sa_keys_published` of `generation` with `kids` and `signing`, then checks the
    /// object holds it and the follower follows it; returns (published, followed).
    fn published_and_followed(
        &self,
        generation: u64,
        kids: &[String],
        signing: &str,
        after: (u64, u64),
    ) -> (Value, Value) {
        let published = self.publisher_record(
            &format!("sa_keys_published of generation {generation}"),
            after.0,
            |r| r["event"] == "sa_keys_published" && r["generation"] == generation,
        );
        assert_eq!(published["bundle"], "sa", "{published}");
        assert_eq!(published["configmap"], format!("{NAMESPACE}/{NAME}"));
        assert_eq!(kids_of(&published), kids, "{published}");
        assert_eq!(published["signing_kid"], signing, "{published}");
        let sha = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(signing)
            .expect("a kid is base64url");
        assert_eq!(
            published["signing_key_sha256"],
            sha.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        let rv = published["resource_version"]
            .as_str()
            .expect("resource_version")
            .to_string();
        let (data, now_rv) = configmap(self.cp).expect("the ConfigMap exists");
        assert_eq!(now_rv, rv, "the object is at the written resourceVersion");
        assert_eq!(data["kids"].lines().collect::<Vec<_>>(), kids, "{data:?}");
        assert_eq!(data["signing-kid"], signing, "{data:?}");
        assert_eq!(data["generation"], generation.to_string(), "{data:?}");
        assert_eq!(data["publisher"], PUBLISHER, "{data:?}");
        let followed = self.follower_record(
            &format!("sa_keys_followed of generation {generation}"),
            after.1,
            WITHIN,
            |r| r["event"] == "sa_keys_followed" && r["generation"] == generation,
        );
        assert_eq!(kids_of(&followed), kids, "{followed}");
        assert_eq!(followed["signing_kid"], signing, "{followed}");
        assert_eq!(followed["publisher"], PUBLISHER, "{followed}");
        assert_eq!(followed["resource_version"], rv.as_str(), "{followed}");
        (published, followed)
    }
}

#[test]
fn the_key_identity_is_published_on_every_accepted_generation_and_followed_through_an_api_outage() {
    let Some(cp) = kube::shared() else { return };
    apply_identity(&cp);
    cp.kubectl(&[
        "delete",
        "configmap",
        NAME,
        "-n",
        NAMESPACE,
        "--ignore-not-found",
    ])
    .expect("kubectl delete configmap");
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let kubeconfig = token_kubeconfig(&cp, d);
    let token_line = std::fs::read_to_string(&kubeconfig)
        .expect("kubeconfig")
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("token:")
                .map(|t| t.trim().to_string())
        })
        .expect("a token in the kubeconfig");
    let pki = cp.pki();
    let (sa_key, sa_pub) = (pki.join("sa.key"), pki.join("sa.pub"));
    let old_kids = key_ids(&sa_pub).expect("key ids of a PEM file");
    let old_kid = key_ids(&public_of(&sa_key, d))
        .expect("key ids of a PEM file")
        .pop()
        .expect("sa.key's kid");
    assert_eq!(
        old_kids,
        std::slice::from_ref(&old_kid),
        "kubeadm writes one SA key pair"
    );

    let (pub_dir, fol_dir) = (d.join("publisher"), d.join("follower"));
    std::fs::create_dir_all(&pub_dir).expect("mkdir");
    std::fs::create_dir_all(&fol_dir).expect("mkdir");
    // The follower first: it watches an object that does not exist yet.
    let follower = start(
        &fol_dir,
        FOLLOWER,
        &kubeconfig,
        &format!(
            "[[bundle]]\nname = \"cluster-ca\"\nkind = \"ca\"\ncert = {:?}\n[sa_keys]\nfollow = true\n",
            pki.join("ca.crt").display().to_string()
        ),
    );
    let publisher_body = format!(
        "[[bundle]]\nname = \"sa\"\nkind = \"sa-keys\"\nprivate_key = {:?}\npublic_keys = [{:?}]\n[sa_keys]\npublish = \"sa\"\n",
        sa_key.display().to_string(),
        sa_pub.display().to_string()
    );
    let publisher = start(&pub_dir, PUBLISHER, &kubeconfig, &publisher_body);
    let agents = Agents {
        cp: &cp,
        publisher: &publisher,
        follower: &follower,
    };

    // (a) Published at start, followed.
    let (p1, f1) = agents.published_and_followed(1, &old_kids, &old_kid, (0, 0));

    // (b) The rotation: sa.pub = old + new (generation 2, still signing with the old key), then
    // sa.key = new (generation 3: the new signing kid).
    let (new_key, new_pub) = new_key_pair(d, "sa-new");
    let new_kid = key_ids(&new_pub)
        .expect("key ids of a PEM file")
        .pop()
        .expect("the new kid");
    let old_pub_pem = std::fs::read_to_string(&sa_pub).expect("sa.pub");
    let new_pub_pem = std::fs::read_to_string(&new_pub).expect("new public key");
    replace(&sa_pub, format!("{old_pub_pem}{new_pub_pem}").as_bytes());
    let both = sorted(vec![old_kid.clone(), new_kid.clone()]);
    let (p2, f2) = agents.published_and_followed(2, &both, &old_kid, (seq(&p1), seq(&f1)));
    replace(&sa_key, &std::fs::read(&new_key).expect("new key"));
    let (p3, f3) = agents.published_and_followed(3, &both, &new_kid, (seq(&p2), seq(&f2)));
    let rv3 = p3["resource_version"].as_str().expect("rv").to_string();
    // The figures for docs/kubernetes.md: from the publisher's change record of sa.key to its
    // acceptance, its publication and the follower's record (one clock: both agents run here).
    let changed = publisher
        .records()
        .into_iter()
        .find(|r| {
            r["event"] == "change_detected"
                && r["path"] == sa_key.display().to_string().as_str()
                && seq(r) > seq(&p2)
        })
        .expect("the change of sa.key recorded");
    let accepted = publisher
        .records()
        .into_iter()
        .find(|r| r["event"] == "material_accepted" && r["new_generation"] == 3)
        .expect("generation 3 accepted");
    println!(
        "sa.key replaced: accepted +{:.0} ms, published +{:.0} ms, followed by the other agent +{:.0} ms (from the change record)",
        ms_between(&changed, &accepted),
        ms_between(&changed, &p3),
        ms_between(&changed, &f3)
    );

    // (c) A private key that is not among the public keys: rejected, nothing published.
    let (stray_key, _) = new_key_pair(d, "sa-stray");
    replace(&sa_key, &std::fs::read(&stray_key).expect("stray key"));
    let rejected = agents.publisher_record("the stray sa.key rejected", seq(&p3), |r| {
        r["event"] == "material_rejected" && r["bundle"] == "sa"
    });
    assert_eq!(rejected["current_generation"], 3, "{rejected}");
    assert_eq!(
        configmap(&cp).expect("the ConfigMap").1,
        rv3,
        "the rejected key changed the ConfigMap"
    );
    // Put the accepted key back (the same material: no new generation) before the API server
    // restarts below and reads sa.key.
    replace(&sa_key, &std::fs::read(&new_key).expect("new key"));

    // (d) The API server goes down: the follower audits the lost watch.
    let stopping = Instant::now();
    cp.pause(APISERVER);
    let down = Instant::now();
    // kube-apiserver's graceful shutdown waits for open HTTP/1.1 watches (kube-rs' protocol) up
    // to its 60 s request timeout: the follower's short watches keep a restart quick.
    println!(
        "the API server exited {:.1} s after SIGTERM with the follower watching",
        (down - stopping).as_secs_f64()
    );
    // A figure for the docs, not an assertion: tests assert behaviour, never wall-clock time
    // (CI saw 12.3 s on a loaded machine against 10.6 s measured by hand).
    let lost = agents.follower_record("sa_keys_watch_lost", seq(&f3), WITHIN, |r| {
        r["event"] == "sa_keys_watch_lost"
    });
    println!(
        "watch lost audited {:.1} s after the API server stopped: {}",
        down.elapsed().as_secs_f64(),
        lost["error"]
    );
    // A key change while it is down (a third public key; the agents' token, signed with the
    // original key, stays valid after the restart): accepted, not publishable yet.
    let (_, third_pub) = new_key_pair(d, "sa-third");
    let third_kid = key_ids(&third_pub)
        .expect("key ids of a PEM file")
        .pop()
        .expect("the third kid");
    let third_pem = std::fs::read_to_string(&third_pub).expect("third public key");
    replace(
        &sa_pub,
        format!("{old_pub_pem}{new_pub_pem}{third_pem}").as_bytes(),
    );
    let accepted = agents.publisher_record("generation 4 accepted", seq(&rejected), |r| {
        r["event"] == "material_accepted" && r["bundle"] == "sa" && r["new_generation"] == 4
    });
    assert!(
        !publisher
            .records()
            .iter()
            .any(|r| r["event"] == "sa_keys_published" && r["generation"] == 4),
        "published with the API server down?"
    );
    cp.resume(APISERVER).expect("the API server starts again");
    println!(
        "API server down {:.1} s (stopped, key change, started, ready)",
        down.elapsed().as_secs_f64()
    );
    let old_kid_again = old_kid.clone();
    let all_kids = sorted(vec![old_kid, new_kid.clone(), third_kid]);
    let (p4, f4) =
        agents.published_and_followed(4, &all_kids, &new_kid, (seq(&accepted), seq(&lost)));
    let resumed = agents.follower_record("sa_keys_watch_resumed", seq(&lost), WITHIN, |r| {
        r["event"] == "sa_keys_watch_resumed"
    });
    assert!(
        seq(&resumed) < seq(&f4),
        "the watch resumed before the new generation was followed: {resumed} / {f4}"
    );
    assert!(
        resumed["lost_s"].as_f64().is_some_and(|s| s > 0.0),
        "{resumed}"
    );
    let losses = follower
        .records()
        .iter()
        .filter(|r| r["event"] == "sa_keys_watch_lost")
        .count();
    assert_eq!(losses, 1, "one loss audited for one outage");
    println!(
        "published generation 4 {:.1} s after the outage began; follower lost the watch at seq {}, resumed at seq {}, followed at seq {}",
        down.elapsed().as_secs_f64(),
        seq(&lost),
        seq(&resumed),
        seq(&f4)
    );

    // /status: the publisher's and the follower's view.
    let ps = status(&publisher);
    assert_eq!(ps["sa_keys"]["configmap"], format!("{NAMESPACE}/{NAME}"));
    assert_eq!(ps["sa_keys"]["published"]["generation"], 4, "{ps}");
    assert_eq!(ps["sa_keys"]["published"]["signing_kid"], new_kid.as_str());
    assert_eq!(
        ps["sa_keys"]["published"]["resource_version"],
        p4["resource_version"]
    );
    let fs = status(&follower);
    assert_eq!(fs["sa_keys"]["followed"]["generation"], 4, "{fs}");
    assert_eq!(fs["sa_keys"]["followed"]["publisher"], PUBLISHER, "{fs}");
    assert_eq!(fs["sa_keys"]["watch_connected"], true, "{fs}");
    assert!(fs["sa_keys"]["published"].is_null(), "{fs}");

    // Nothing logged holds a private key or the token.
    let secrets: Vec<String> = [&new_key, &stray_key]
        .iter()
        .map(|k| {
            let pem = std::fs::read_to_string(k).expect("key");
            pem.lines().nth(1).expect("a PEM body line").to_string()
        })
        .chain([token_line])
        .collect();
    for (name, agent) in agents.all() {
        let log = agent.log();
        assert!(!log.contains("PRIVATE KEY"), "{name} logged a private key");
        for s in &secrets {
            assert!(!log.contains(s.as_str()), "{name} logged a secret");
        }
        let records = std::fs::read_to_string(match name {
            "publisher" => pub_dir.join("audit.jsonl"),
            _ => fol_dir.join("audit.jsonl"),
        })
        .expect("audit log");
        for s in &secrets {
            assert!(!records.contains(s.as_str()), "{name} audited a secret");
        }
    }

    // (e) A restarted publisher repairs an outdated object at start, and leaves one that already
    // holds its keys as it is.
    publisher.stop();
    let outdated = [
        ("kids", old_kid_again.as_str()),
        ("signing-kid", old_kid_again.as_str()),
        ("generation", "9"),
        ("published-at", "2026-01-01T00:00:00Z"),
        ("publisher", "cr-sa-keys-old"),
    ];
    replace_data(&cp, d, &outdated);
    let stale_followed = await_record_of(
        &cp,
        &[("follower", &follower)],
        0,
        "the outdated object followed",
        WITHIN,
        |r| {
            seq(r) > seq(&f4)
                && r["event"] == "sa_keys_followed"
                && r["publisher"] == "cr-sa-keys-old"
        },
    );
    let again = d.join("publisher-again");
    std::fs::create_dir_all(&again).expect("mkdir");
    let publisher = start(&again, PUBLISHER, &kubeconfig, &publisher_body);
    let agents = Agents {
        cp: &cp,
        publisher: &publisher,
        follower: &follower,
    };
    let (repaired, _) =
        agents.published_and_followed(1, &all_kids, &new_kid, (0, seq(&stale_followed)));
    publisher.stop();
    let unchanged = d.join("publisher-unchanged");
    std::fs::create_dir_all(&unchanged).expect("mkdir");
    let publisher = start(&unchanged, PUBLISHER, &kubeconfig, &publisher_body);
    let deadline = Instant::now() + WITHIN;
    while !publisher.log().contains("already holds these keys") {
        assert!(
            Instant::now() < deadline,
            "the restarted publisher did not find its keys published:\n{}",
            publisher.log()
        );
        // The agent's log is a pipe the harness collects: look again shortly.
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !publisher
            .records()
            .iter()
            .any(|r| r["event"] == "sa_keys_published"),
        "an object holding the same keys was written again"
    );
    assert_eq!(
        configmap(&cp).expect("the ConfigMap").1,
        repaired["resource_version"].as_str().expect("rv"),
        "the object was left as it is"
    );
    let ps = status(&publisher);
    assert_eq!(ps["sa_keys"]["published"]["generation"], 1, "{ps}");
    follower.stop();
    publisher.stop();
}

/// Milliseconds from record `a`'s `ts` to record `b`'s (`YYYY-MM-DDTHH:MM:SS.ffffffZ`, UTC; the
/// records are seconds apart, so a date change adds a day).
fn ms_between(a: &Value, b: &Value) -> f64 {
    let parts = |r: &Value| {
        let text = r["ts"].as_str().unwrap_or_else(|| panic!("no ts in {r}"));
        let (date, time) = text
            .trim_end_matches('Z')
            .split_once('T')
            .unwrap_or_else(|| panic!("ts {text:?}"));
        let seconds: f64 = time
            .split(':')
            .map(|f| {
                f.parse::<f64>()
                    .unwrap_or_else(|e| panic!("ts {text:?}: {e}"))
            })
            .fold(0.0, |acc, f| acc * 60.0 + f);
        (date.to_string(), seconds)
    };
    let ((date_a, a), (date_b, b)) = (parts(a), parts(b));
    let day = if date_a == date_b { 0.0 } else { 86_400.0 };
    (b + day - a) * 1000.0
}

/// Replaces the ConfigMap's data (as the cluster admin): an outdated or foreign publication.
fn replace_data(cp: &ControlPlane, dir: &Path, data: &[(&str, &str)]) {
    let out = cp
        .kubectl(&["get", "configmap", NAME, "-n", NAMESPACE, "-o", "json"])
        .unwrap_or_else(|e| panic!("kubectl get configmap {NAME}: {e:#}"));
    let mut object: Value = serde_json::from_str(&out).expect("JSON");
    object["data"] = data
        .iter()
        .map(|(k, v)| ((*k).to_string(), Value::from(*v)))
        .collect::<serde_json::Map<_, _>>()
        .into();
    let file = dir.join("outdated.json");
    std::fs::write(&file, object.to_string()).expect("write");
    cp.kubectl(&["replace", "-f", &file.display().to_string()])
        .unwrap_or_else(|e| panic!("kubectl replace of {NAME}: {e:#}"));
}
