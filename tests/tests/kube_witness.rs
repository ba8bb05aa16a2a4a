//! The audit witness against the REAL API server of the kubeadm control plane
//! (`certreload_e2e::kube`, built from source): deploy/'s identity and deploy/witness.yaml (Role,
//! RoleBinding, ValidatingAdmissionPolicy and its binding) applied with kubectl; an agent with
//! `[audit] witness = true` and a token of deploy/'s ServiceAccount publishes its chain head into
//! `certreload-witness/certreload-audit-<node>`.
//!
//! Asserted: the object holds exactly the hash of the log's line at the published seq, a later
//! publication follows a rotation, and the last one (at shutdown) is the log's last record; as the
//! agent's ServiceAccount, moving the head backwards, rewriting a past head, back-dating a head
//! and adding two at once are refused by the API server (the policy, also for the cluster admin),
//! delete and patch by RBAC, while an honest forward write is admitted; a token bound to a Node
//! writes only that node's witness. `certreload audit verify --witness` passes on the intact log
//! (from the live object and from an archived copy), and finds the log cut at a line boundary
//! ("truncated") and the chain re-sealed from scratch ("re-forged"), both of which verify as
//! intact without the witness: the witness is what detects them.
//!
//! One control plane per test binary: run real-cluster binaries under
//! `flock /tmp/certreload-cp.lock` (the API server's port is fixed).

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use certreload_e2e::kube::identity::{
    apply_identity, deploy_dir, server_url, token_kubeconfig, SERVICE_ACCOUNT,
};
use certreload_e2e::{
    certreload_bin,
    kube::{self, ControlPlane},
    pki::Leaf,
    sha256_hex, Agent,
};
use serde_json::{json, Value};

const NAMESPACE: &str = "certreload-witness";

/// Applies deploy/witness.yaml and waits until the API server enforces the policy (policies
/// take effect a moment after they are created).
fn apply_witness_policy(cp: &ControlPlane) {
    let file = deploy_dir().join("witness.yaml");
    cp.kubectl(&["apply", "-f", &file.display().to_string()])
        .unwrap_or_else(|e| panic!("kubectl apply -f deploy/witness.yaml: {e:#}"));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // A witness without a head: admitted until the policy is in force.
        let probe = cp.kubectl(&[
            "create",
            "configmap",
            "certreload-audit-policy-probe",
            "-n",
            NAMESPACE,
            "--dry-run=server",
        ]);
        match probe {
            Err(e) if format!("{e:#}").contains("a witness holds data.seq") => {
                println!(
                    "witness policy enforced {:.1} s after kubectl apply",
                    (Instant::now() + Duration::from_secs(60) - deadline).as_secs_f64()
                );
                return;
            }
            other => assert!(
                Instant::now() < deadline,
                "the witness policy is not enforced within 60 s: {other:?}"
            ),
        }
        // The API server loads policies asynchronously: ask again shortly.
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The witness object's `data`.
fn witness_data(cp: &ControlPlane, name: &str) -> BTreeMap<String, String> {
    let out = cp
        .kubectl(&["get", "configmap", name, "-n", NAMESPACE, "-o", "json"])
        .unwrap_or_else(|e| panic!("kubectl get configmap {name}: {e:#}"));
    let v: Value = serde_json::from_str(&out).expect("JSON");
    serde_json::from_value(v["data"].clone()).expect("data is a string map")
}

/// `kubectl replace` of the witness with `data`, as `user` (None: the admin): the API server's
/// answer (Err carries its refusal).
fn replace_as(
    cp: &ControlPlane,
    dir: &Path,
    name: &str,
    data: &BTreeMap<String, String>,
    user: Option<&str>,
) -> anyhow::Result<String> {
    let out = cp.kubectl(&["get", "configmap", name, "-n", NAMESPACE, "-o", "json"])?;
    let mut object: Value = serde_json::from_str(&out)?;
    object["data"] = json!(data);
    let file = dir.join("replace.json");
    fs::write(&file, object.to_string())?;
    let file = file.display().to_string();
    let mut args = vec!["replace", "-f", file.as_str()];
    let as_user = user.map(|u| format!("--as={u}"));
    if let Some(u) = &as_user {
        args.push(u);
    }
    cp.kubectl(&args)
}

/// `certreload audit verify ARGS` with `kubeconfig` as its only credentials: (exit code, stdout).
fn verify(args: &[&str], kubeconfig: &Path) -> (i32, String) {
    let out = Command::new(certreload_bin())
        .args(["audit", "verify"])
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .expect("certreload audit verify runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("verify {args:?}: {stdout}{stderr}");
    (out.status.code().unwrap_or(-1), stdout)
}

/// Re-seals `lines` as a new chain from scratch, the way an attacker who can write the file
/// would: a new instance id, record 0 linked to that instance's anchor, every later record to
/// the SHA-256 of the line before it (agent/src/audit/chain.rs: `anchor`, `link`; the lines are
/// JSON objects with sorted keys, so parsing and printing them again gives the same bytes). That
/// the result verifies without the witness is asserted by the caller, so a change of the chain
/// format shows here as that assertion failing.
fn reseal(lines: &[&str], instance: &str) -> Vec<String> {
    let mut prev = sha256_hex(format!("certreload-audit-anchor:{instance}").as_bytes());
    lines
        .iter()
        .enumerate()
        .map(|(seq, line)| {
            let mut record: Value = serde_json::from_str(line).expect("a record");
            record["seq"] = json!(seq);
            record["instance"] = json!(instance);
            record["prev"] = json!(prev);
            let line = record.to_string();
            prev = sha256_hex(line.as_bytes());
            line
        })
        .collect()
}

fn write_lines(path: &Path, lines: &[impl AsRef<str>]) {
    let mut text = String::new();
    for l in lines {
        text.push_str(l.as_ref());
        text.push('\n');
    }
    fs::write(path, text).expect("write log");
}

/// The agent under test: witness on, publishing every 5 s, for Node `node`.
fn start_agent(dir: &Path, node: &str, kubeconfig: &Path) -> Agent {
    Agent::start_against_api(
        dir,
        node,
        kubeconfig,
        "witness = true\nwitness_interval = \"5s\"\n",
        "",
    )
}

fn is_published(r: &Value) -> bool {
    r["event"] == "witness_published"
}

#[test]
fn the_witness_is_forward_only_and_verify_finds_truncation_and_reforging_against_it() {
    let Some(cp) = kube::shared() else { return };
    apply_identity(&cp);
    apply_witness_policy(&cp);
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let kubeconfig = token_kubeconfig(&cp, d);
    let node = format!("cr-witness-{}", std::process::id());
    let name = format!("certreload-audit-{node}");
    let spec = format!("kube:{NAMESPACE}/{name}");
    let (cert, key) = Leaf::server("localhost").self_signed();
    fs::write(d.join("tls.crt"), cert).expect("write");
    fs::write(d.join("tls.key"), key).expect("write");

    // 1. The agent publishes its head at start, and again after a rotation.
    let started = Instant::now();
    let agent = start_agent(d, &node, &kubeconfig);
    let first = agent.expect_record("witness_published at start", is_published);
    println!(
        "first head published {:.1} s after the agent was started",
        started.elapsed().as_secs_f64()
    );
    let seq0 = first["witnessed_seq"].as_u64().expect("witnessed_seq");
    assert_eq!(first["object"], format!("{NAMESPACE}/{name}"), "{first}");
    let log = fs::read_to_string(d.join("audit.jsonl")).expect("log");
    let line = log
        .lines()
        .nth(seq0 as usize)
        .expect("the published record");
    assert_eq!(
        first["witnessed_hash"],
        sha256_hex(line.as_bytes()),
        "{first}"
    );
    let data = witness_data(&cp, &name);
    assert_eq!(data[&format!("seq-{seq0}")], sha256_hex(line.as_bytes()));
    assert_eq!(data["node"], node);

    let (cert, key) = Leaf::server("localhost").self_signed();
    fs::write(d.join("tls.key"), key).expect("write");
    fs::write(d.join("tls.crt"), cert).expect("write");
    let accepted = agent.expect_record("generation 2", |r| {
        r["event"] == "material_accepted" && r["new_generation"] == 2
    });
    let later = agent.expect_record("a publication after the rotation", |r| {
        is_published(r) && r["witnessed_seq"].as_u64() >= accepted["seq"].as_u64()
    });
    let stopping = Instant::now();
    let records = agent.stop();
    println!(
        "agent stopped (last head published) in {:.1} s",
        stopping.elapsed().as_secs_f64()
    );
    let last = records.last().expect("records");
    assert_eq!(last["event"], "agent_stopped", "{last}");
    let last_seq = last["seq"].as_u64().expect("seq");
    let data = witness_data(&cp, &name);
    assert_eq!(
        data["seq"],
        last_seq.to_string(),
        "the head published at shutdown is the last record (agent_stopped)"
    );
    let heads: Vec<&String> = data.keys().filter(|k| k.starts_with("seq-")).collect();
    assert!(
        heads.len() >= 3,
        "start, after the rotation, at stop: {data:?}"
    );
    assert!(data.contains_key(&format!("seq-{}", later["witnessed_seq"])));

    // 2. verify --witness: intact, from the live object and from an archived copy.
    let log_path = d.join("audit.jsonl");
    let log_arg = log_path.display().to_string();
    let (code, out) = verify(&[&log_arg, "--witness", &spec], &kubeconfig);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with("intact:") && out.contains(&format!("witness {spec}: ")),
        "{out}"
    );
    assert!(
        out.contains(&format!("highest seq {last_seq} (0 record(s)")),
        "{out}"
    );
    let archived = d.join("witness.json");
    let object = cp
        .kubectl(&["get", "configmap", &name, "-n", NAMESPACE, "-o", "json"])
        .expect("get");
    fs::write(&archived, object).expect("write");
    let archived_arg = archived.display().to_string();
    let (code, out) = verify(&[&log_arg, "--witness", &archived_arg], &kubeconfig);
    assert_eq!(code, 0, "{out}");

    // 3. Cut at a line boundary (the last two records gone): intact as a chain, truncated
    // against the witness.
    let full: Vec<String> = fs::read_to_string(&log_path)
        .expect("log")
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(full.len() as u64, last_seq + 1);
    let cut = d.join("cut.jsonl");
    write_lines(&cut, &full[..full.len() - 2]);
    let cut_arg = cut.display().to_string();
    let (code, out) = verify(&[&cut_arg], &kubeconfig);
    assert_eq!(
        code, 0,
        "a log cut at a line boundary is a valid chain: {out}"
    );
    let (code, out) = verify(&[&cut_arg, "--witness", &spec], &kubeconfig);
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        out.trim(),
        format!(
            "BROKEN: truncated: witness {spec} saw seq {last_seq} (hash {}), log ends at {}",
            data["hash"],
            last_seq - 2
        )
    );

    // 4. Re-forged from scratch: the rotation's acceptance erased, every record re-sealed.
    let erased: Vec<&str> = full
        .iter()
        .map(String::as_str)
        .filter(|l| !l.contains("\"new_generation\":2"))
        .collect();
    assert_eq!(erased.len(), full.len() - 1);
    let forged = d.join("forged.jsonl");
    write_lines(
        &forged,
        &reseal(&erased, "0123456789abcdef0123456789abcdef"),
    );
    let forged_arg = forged.display().to_string();
    let (code, out) = verify(&[&forged_arg], &kubeconfig);
    assert_eq!(
        code, 0,
        "a chain re-sealed from scratch is a valid chain: {out}"
    );
    let (code, out) = verify(&[&forged_arg, "--witness", &spec], &kubeconfig);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.starts_with(&format!(
            "BROKEN: re-forged: witness {spec} saw seq {seq0} with hash {}",
            data[&format!("seq-{seq0}")]
        )),
        "the first witnessed head already differs (record 0 names the new instance): {out}"
    );
    assert!(out.contains(&format!("{forged_arg}:{}", seq0 + 1)), "{out}");

    // 4b. An agent started on the cut log finds it behind its witness at once, says so, and
    // publishes nothing, not even once its log has grown past the witnessed seq (that would
    // put a fork of the witnessed chain into the witness).
    write_lines(&log_path, &full[..full.len() - 2]);
    let agent = start_agent(d, &node, &kubeconfig);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !agent.log().contains("does not continue its witness") {
        assert!(
            Instant::now() < deadline,
            "no 'does not continue its witness' error within 20 s:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log_text = agent.log();
    let line = log_text
        .lines()
        .find(|l| l.contains("does not continue its witness"))
        .expect("the line");
    assert!(
        line.contains(&format!("saw seq {last_seq} (hash {})", data["hash"]))
            && line.contains("re-forged or replaced"),
        "{line}"
    );
    let records = agent.stop();
    assert!(
        !records
            .iter()
            .any(|r| is_published(r) && r["seq"].as_u64() > Some(last_seq - 2)),
        "nothing published from the cut log"
    );
    assert_eq!(witness_data(&cp, &name), data, "the witness is unchanged");

    // 5. The API server keeps the witness forward-only, against the agent's own credentials.
    let head_seq: u64 = data["seq"].parse().expect("seq");
    let back = {
        let mut b = data.clone();
        b.insert("seq".into(), seq0.to_string());
        b.insert("hash".into(), data[&format!("seq-{seq0}")].clone());
        b
    };
    let rewritten = {
        let mut r = data.clone();
        r.insert(format!("seq-{seq0}"), "0".repeat(64));
        r
    };
    let gap = (0..head_seq)
        .find(|s| !data.contains_key(&format!("seq-{s}")))
        .expect("an unwitnessed seq below the head");
    let backdated = {
        let mut b = data.clone();
        b.insert(format!("seq-{gap}"), "1".repeat(64));
        b
    };
    let two = {
        let mut t = data.clone();
        t.insert(format!("seq-{}", head_seq + 1), "2".repeat(64));
        t.insert(format!("seq-{}", head_seq + 2), "3".repeat(64));
        t.insert("seq".into(), (head_seq + 2).to_string());
        t.insert("hash".into(), "3".repeat(64));
        t
    };
    for (what, attempt, refusal) in [
        (
            "seq backwards",
            &back,
            "the witnessed seq may not go backwards",
        ),
        (
            "a past head rewritten",
            &rewritten,
            "a witnessed head may not be rewritten",
        ),
        (
            "a back-dated head",
            &backdated,
            "a new head must come after the newest",
        ),
        ("two heads in one write", &two, "one new head per write"),
    ] {
        let answer = replace_as(&cp, d, &name, attempt, Some(SERVICE_ACCOUNT));
        let e = match answer {
            Ok(out) => panic!("{what}: admitted for the agent: {out}"),
            Err(e) => format!("{e:#}"),
        };
        assert!(
            e.contains(refusal) && e.contains("ValidatingAdmissionPolicy"),
            "{what}: {e}"
        );
    }
    // The policy binds the cluster admin too.
    let e = replace_as(&cp, d, &name, &back, None).expect_err("admin moves it backwards");
    assert!(format!("{e:#}").contains("may not go backwards"), "{e:#}");
    assert_eq!(
        witness_data(&cp, &name),
        data,
        "nothing refused was written"
    );
    // RBAC: no delete, no patch.
    for args in [
        vec!["delete", "configmap", name.as_str(), "-n", NAMESPACE],
        vec![
            "patch",
            "configmap",
            name.as_str(),
            "-n",
            NAMESPACE,
            "--type=merge",
            "-p",
            r#"{"data":{"seq":"0"}}"#,
        ],
    ] {
        let as_agent = format!("--as={SERVICE_ACCOUNT}");
        let mut full_args = args.clone();
        full_args.push(&as_agent);
        let e = match cp.kubectl(&full_args) {
            Ok(out) => panic!("{args:?} allowed for the agent: {out}"),
            Err(e) => format!("{e:#}"),
        };
        assert!(
            e.contains("Forbidden") || e.contains("forbidden"),
            "{args:?}: {e}"
        );
    }
    // An honest step forward is admitted: the refusals are about what was written.
    let mut forward = data.clone();
    forward.insert(format!("seq-{}", head_seq + 1), "4".repeat(64));
    forward.insert("seq".into(), (head_seq + 1).to_string());
    forward.insert("hash".into(), "4".repeat(64));
    replace_as(&cp, d, &name, &forward, Some(SERVICE_ACCOUNT))
        .unwrap_or_else(|e| panic!("a forward write refused: {e:#}"));
}

/// A kubeconfig with a token of deploy/'s ServiceAccount bound to Node `node` (what a pod's
/// projected token carries: the API server adds the node's name to the user's extra info).
fn node_bound_kubeconfig(cp: &ControlPlane, dir: &Path, node: &str) -> PathBuf {
    let token = cp
        .kubectl(&[
            "create",
            "token",
            "certreload",
            "-n",
            "certreload",
            "--bound-object-kind=Node",
            &format!("--bound-object-name={node}"),
            "--duration=1h",
        ])
        .unwrap_or_else(|e| panic!("kubectl create token bound to Node {node}: {e:#}"));
    let path = dir.join(format!("{node}.kubeconfig"));
    fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: {}\n    certificate-authority: {}\ncontexts:\n- name: c\n  context:\n    cluster: e2e\n    user: u\ncurrent-context: c\nusers:\n- name: u\n  user:\n    token: {}\n",
            server_url(cp),
            cp.pki().join("ca.crt").display(),
            token.trim()
        ),
    )
    .expect("write kubeconfig");
    path
}

#[test]
fn a_node_bound_token_writes_only_its_own_nodes_witness() {
    let Some(cp) = kube::shared() else { return };
    apply_identity(&cp);
    apply_witness_policy(&cp);
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let node = format!("cr-witness-node-{}", std::process::id());
    let manifest = d.join("node.json");
    fs::write(
        &manifest,
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}}).to_string(),
    )
    .expect("write");
    cp.kubectl(&["create", "-f", &manifest.display().to_string()])
        .unwrap_or_else(|e| panic!("create Node {node}: {e:#}"));
    let kubeconfig = node_bound_kubeconfig(&cp, d, &node);
    let hash = "a".repeat(64);
    let create = |name: &str| {
        let file = d.join(format!("{name}.json"));
        fs::write(
            &file,
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": NAMESPACE},
                "data": {"seq": "0", "hash": hash, "seq-0": hash}})
            .to_string(),
        )
        .expect("write");
        let file = file.display().to_string();
        let kc = kubeconfig.display().to_string();
        // The harness passes the admin kubeconfig first; the later flag wins.
        cp.kubectl(&["--kubeconfig", &kc, "create", "-f", &file])
    };
    let other = format!("certreload-audit-{node}-other");
    let e = create(&other).expect_err("another node's witness");
    assert!(
        format!("{e:#}").contains("may only write that node's witness"),
        "{e:#}"
    );
    create(&format!("certreload-audit-{node}"))
        .unwrap_or_else(|e| panic!("its own node's witness refused: {e:#}"));
}
