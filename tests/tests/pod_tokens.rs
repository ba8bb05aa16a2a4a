//! The node's token tracker (`[pod_tokens]`) end to end, on the real control plane
//! (`certreload_e2e::kube`), through a ServiceAccount key rotation.
//!
//! **A stand-in for the kubelet's layout, not the kubelet**: the tokens are real, issued by the
//! real kube-apiserver's TokenRequest for real Pods (`kubectl create token --bound-object-kind
//! Pod`), and written exactly as the kubelet's AtomicWriter writes a projected volume
//! (`<pods>/<uid>/volumes/kubernetes.io~projected/kube-api-access-e2e/{..<timestamp>/,
//! ..data -> ..<timestamp>, token -> ..data/token, ca.crt -> ..data/ca.crt}`, `..data` swapped by
//! a rename) by a script that also stands in for `systemctl restart kubelet` as the refresh
//! action. The test on the real kubelet is `kube_token_refresh.rs`.
//!
//! The agent runs the kubeadm profile on the control plane's root, publishing its `sa` bundle's
//! key identity (`[sa_keys] publish = "sa"`) and following it. The rotation as an operator does
//! it: sa.pub = old + new, sa.key = new, the API server restarted. Checked: exactly the three
//! pods' tokens go stale (`outgoing_key`), the `on = "stale"` action of `pod-tokens` runs under
//! its lock (`kubelet`) and holds it until the tracker's verdict is converged, every pod's token
//! carries the new kid and authenticates (TokenReview), `token_refreshed` is audited per pod with
//! the seconds since the key change, `/status` and `/metrics` show three current tokens, and no
//! token text is in the agent's log or audit.
//!
//! One control plane per test binary: run real-cluster binaries under
//! `flock /tmp/certreload-cp.lock` (the API server's port is fixed).

use std::{
    collections::BTreeSet,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use base64::Engine;
use certreload_e2e::{
    http::get_ok,
    kube::{
        self,
        agent::{await_record, replace, seq, start_agent},
        identity::ensure_namespace,
        pods::key_ids,
        ControlPlane, APISERVER,
    },
    openssl,
};
use serde_json::Value;

const NAMESPACE: &str = "default";
const ACCOUNT: &str = "pod-tokens-e2e";
const PODS: [&str; 3] = ["tokens-a", "tokens-b", "tokens-c"];
const VOLUME: &str = "kube-api-access-e2e";
const ACTION: &str = "refresh-pod-tokens";
/// The start of every token kube-apiserver issues: base64url of `{"alg":"RS256","kid":`.
const JWT_START: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6";

/// The `kid` of a token file's JWT header (the token never appears in a message).
fn token_kid(path: &Path) -> String {
    let token = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let header = token.trim().split('.').next().unwrap_or_default();
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .unwrap_or_else(|_| panic!("{}: the JWT header is not base64url", path.display()));
    let header: Value = serde_json::from_slice(&json).expect("the JWT header is JSON");
    header["kid"].as_str().expect("a kid").to_string()
}

fn pod_manifest() -> String {
    let mut out = format!(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {ACCOUNT}\n  namespace: {NAMESPACE}\n"
    );
    for pod in PODS {
        // Never scheduled (no node here): the Pod object is what the tokens are bound to.
        out.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {pod}\n  namespace: {NAMESPACE}\nspec:\n  serviceAccountName: {ACCOUNT}\n  containers:\n  - name: pause\n    image: registry.invalid/pause:none\n"
        ));
    }
    out
}

/// The script that writes every pod's token volume as the kubelet does, with tokens from the API
/// server's TokenRequest: run once by the test (the pods' first tokens), then by the agent as the
/// `on = "stale"` action of `pod-tokens`, standing in for `systemctl restart kubelet`. It prints
/// no token (they go straight into the files).
fn kubelet_stand_in(dir: &Path, cp: &ControlPlane, pods: &Path, list: &Path) -> PathBuf {
    let kubectl = PathBuf::from(std::env::var(kube::PEERS_ENV).expect("the peers")).join("kubectl");
    let script = dir.join("kubelet-stand-in.sh");
    std::fs::write(
        &script,
        format!(
            r#"#!/bin/sh
set -eu
k() {{ {kubectl:?} --kubeconfig {kc:?} --request-timeout=10s "$@"; }}
ca=$(k -n {NAMESPACE} get configmap kube-root-ca.crt -o 'jsonpath={{.data.ca\.crt}}')
while read -r uid name; do
  vol={pods:?}/"$uid"/volumes/kubernetes.io~projected/{VOLUME}
  mkdir -p "$vol"
  ts="..$(date +%Y_%m_%d_%H_%M_%S.%N)"
  mkdir "$vol/$ts"
  k -n {NAMESPACE} create token {ACCOUNT} --bound-object-kind Pod --bound-object-name "$name" --bound-object-uid "$uid" --duration 1h > "$vol/$ts/token"
  printf '%s\n' "$ca" > "$vol/$ts/ca.crt"
  chmod 0644 "$vol/$ts/token" "$vol/$ts/ca.crt"
  old=$(readlink "$vol/..data" || true)
  ln -s "$ts" "$vol/..data_tmp"
  mv -T "$vol/..data_tmp" "$vol/..data"
  [ -L "$vol/token" ] || ln -s ..data/token "$vol/token"
  [ -L "$vol/ca.crt" ] || ln -s ..data/ca.crt "$vol/ca.crt"
  [ -z "$old" ] || rm -rf "$vol/$old"
done < {list:?}
echo "rewrote the token volumes of $(wc -l < {list:?}) pods"
"#,
            kc = cp.admin_kubeconfig(),
        ),
    )
    .expect("write the script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    script
}

/// Each pod's uid once it exists.
fn pod_uids(cp: &ControlPlane) -> Vec<(String, String)> {
    PODS.iter()
        .map(|pod| {
            let uid = cp
                .kubectl(&[
                    "-n",
                    NAMESPACE,
                    "get",
                    "pod",
                    pod,
                    "-o",
                    "jsonpath={.metadata.uid}",
                ])
                .unwrap_or_else(|e| panic!("pod {pod}: {e:#}"));
            (uid.trim().to_string(), pod.to_string())
        })
        .collect()
}

/// Whether the API server authenticates the token at `path` as the pod's ServiceAccount (a
/// TokenReview; the token goes in a file kubectl reads, never on a command line).
fn authenticates(cp: &ControlPlane, dir: &Path, path: &Path) -> bool {
    let token = std::fs::read_to_string(path).expect("token");
    let review = dir.join("review.json");
    std::fs::write(
        &review,
        serde_json::json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                           "spec": {"token": token.trim()}})
        .to_string(),
    )
    .expect("write the review");
    let user = cp
        .kubectl(&[
            "create",
            "-f",
            &review.display().to_string(),
            "-o",
            "jsonpath={.status.authenticated} {.status.user.username}",
        ])
        .unwrap_or_default();
    std::fs::remove_file(&review).ok();
    user.trim() == format!("true system:serviceaccount:{NAMESPACE}:{ACCOUNT}")
}

/// A new SA key pair in `dir`: (private key file, public key file).
fn new_sa_key(dir: &Path) -> (PathBuf, PathBuf) {
    let key = dir.join("sa-new.key");
    let public = dir.join("sa-new.pub");
    openssl::new_rsa_key_pair(&key, &public).expect("openssl makes a key pair");
    (key, public)
}

/// The agent's `/status` `pod_tokens` section (`null` before the first scan).
fn pod_tokens_status(admin: &str) -> Value {
    let response = get_ok(admin, "/status");
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let status: Value = serde_json::from_str(body).expect("/status is JSON");
    status["pod_tokens"].clone()
}

#[test]
fn a_key_rotation_makes_exactly_the_old_tokens_stale_until_the_refresh_action_makes_them_current() {
    let Some(cp) = kube::shared() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let pods = dir.path().join("pods");
    std::fs::create_dir(&pods).expect("mkdir pods");

    let manifest = dir.path().join("pods.yaml");
    std::fs::write(&manifest, pod_manifest()).expect("write the manifest");
    cp.kubectl(&["apply", "-f", &manifest.display().to_string()])
        .unwrap_or_else(|e| panic!("kubectl apply: {e:#}"));
    let uids = pod_uids(&cp);
    let list = dir.path().join("pods.list");
    std::fs::write(
        &list,
        uids.iter()
            .map(|(uid, name)| format!("{uid} {name}\n"))
            .collect::<String>(),
    )
    .expect("write the pod list");
    // The controller-manager publishes the namespace's kube-root-ca.crt shortly after start.
    let deadline = Instant::now() + Duration::from_secs(60);
    while cp
        .kubectl(&[
            "-n",
            NAMESPACE,
            "get",
            "configmap",
            "kube-root-ca.crt",
            "-o",
            "name",
        ])
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "no kube-root-ca.crt in {NAMESPACE}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let script = kubelet_stand_in(dir.path(), &cp, &pods, &list);
    let first = Command::new(&script).output().expect("the stand-in runs");
    assert!(
        first.status.success(),
        "first tokens: {}",
        String::from_utf8_lossy(&first.stderr)
    );
    let token_file = |uid: &str| {
        pods.join(uid)
            .join("volumes/kubernetes.io~projected")
            .join(VOLUME)
            .join("token")
    };
    let pki = cp.pki();
    let old_kid = key_ids(&pki.join("sa.pub"))
        .expect("key ids of a PEM file")
        .pop()
        .expect("sa.pub's key id");
    for (uid, _) in &uids {
        assert_eq!(
            token_kid(&token_file(uid)),
            old_kid,
            "a token from the API server's current key"
        );
    }
    let first_tokens: Vec<String> = uids
        .iter()
        .map(|(uid, _)| std::fs::read_to_string(token_file(uid)).expect("token"))
        .collect();

    ensure_namespace(&cp, "certreload");
    let run = start_agent(
        &cp,
        &format!(
            r#"
[sa_keys]
publish = "sa"

[pod_tokens]
pods_dir = "{pods}"
cluster_ca = "kubernetes-ca"
rescan = "1s"
grace = "2s"
deadline = "30s"

[[action]]
name = "{ACTION}"
bundle = "pod-tokens"
on = "stale"
exec = ["{script}"]
timeout = "60s"
min_interval = "1s"
lock = "kubelet"
"#,
            pods = pods.display(),
            script = script.display(),
        ),
        &[format!("KUBECONFIG={}", cp.admin_kubeconfig().display())],
    );
    let agent = &run.agent;
    let admin = agent.log_field("agent ready", "admin");
    // The key set published and followed; every token current.
    await_record(
        &cp,
        agent,
        "the key identity followed",
        Duration::from_secs(60),
        |r| r["event"] == "sa_keys_followed",
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let t = pod_tokens_status(&admin);
        if t["current"] == 3 {
            assert_eq!(t["signing_kid"], old_kid.as_str(), "{t}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "three current tokens at start: {t}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // The rotation: sa.pub = old + new (tokens of the old key stay valid), then sa.key = new,
    // then the API server restarted (it reads its keys once).
    let (new_key, new_pub) = new_sa_key(dir.path());
    let new_kid = key_ids(&new_pub)
        .expect("key ids of a PEM file")
        .pop()
        .expect("the new key id");
    let old_pub = std::fs::read_to_string(pki.join("sa.pub")).expect("sa.pub");
    let both = format!(
        "{old_pub}{}",
        std::fs::read_to_string(&new_pub).expect("new pub")
    );
    replace(&pki.join("sa.pub"), both.as_bytes());
    let pub_accepted = await_record(
        &cp,
        agent,
        "sa.pub with both keys",
        Duration::from_secs(60),
        |r| {
            r["event"] == "material_accepted"
                && r["bundle"] == "sa"
                && r["key_ids"].as_array().is_some_and(|k| k.len() == 2)
        },
    );
    replace(
        &pki.join("sa.key"),
        &std::fs::read(&new_key).expect("new key"),
    );
    let key_changed = Instant::now();
    await_record(
        &cp,
        agent,
        "sa.key = the new key",
        Duration::from_secs(60),
        |r| r["event"] == "material_accepted" && r["bundle"] == "sa" && seq(r) > seq(&pub_accepted),
    );

    // Exactly the three pods' tokens are stale: still accepted, no longer the signing key.
    let deadline = Instant::now() + Duration::from_secs(60);
    let stale: Vec<Value> = loop {
        let stale: Vec<Value> = agent
            .records()
            .into_iter()
            .filter(|r| r["event"] == "token_stale")
            .collect();
        if stale.len() >= 3 {
            break stale;
        }
        assert!(
            Instant::now() < deadline,
            "three token_stale records: {stale:?}\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let stale_set: BTreeSet<(String, String, String)> = stale
        .iter()
        .map(|r| {
            assert_eq!(r["reason"], "outgoing_key", "{r}");
            assert_eq!(r["kid"], old_kid.as_str(), "{r}");
            assert_eq!(r["bundle"], "pod-tokens", "{r}");
            (
                r["namespace"].as_str().unwrap_or_default().into(),
                r["pod"].as_str().unwrap_or_default().into(),
                r["uid"].as_str().unwrap_or_default().into(),
            )
        })
        .collect();
    let expected: BTreeSet<(String, String, String)> = uids
        .iter()
        .map(|(uid, name)| (NAMESPACE.into(), name.clone(), uid.clone()))
        .collect();
    assert_eq!(stale_set, expected, "exactly the pods on the old key");
    assert_eq!(stale.len(), 3, "one token_stale per pod: {stale:?}");
    let restarts = cp.restart_count(APISERVER);
    cp.restart(APISERVER).expect("restart the API server");
    cp.wait_ready_after(APISERVER, restarts)
        .expect("the API server is back");

    // The action ran (the first run may meet the API server restarting or still on the old key:
    // then the tracker notifies again a deadline later) until every token was refreshed.
    let mut refreshed = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    while refreshed.len() < 3 {
        refreshed = agent
            .records()
            .into_iter()
            .filter(|r| r["event"] == "token_refreshed")
            .map(|r| {
                assert_eq!(r["kid"], new_kid.as_str(), "{r}");
                assert_eq!(r["reason"], "outgoing_key", "{r}");
                let s = r["seconds_since_change"]
                    .as_f64()
                    .expect("seconds since the key change");
                assert!((0.0..300.0).contains(&s), "{r}");
                r["uid"].as_str().unwrap_or_default().to_string()
            })
            .collect();
        assert!(
            Instant::now() < deadline,
            "every pod refreshed: {refreshed:?}\nrecords:\n{}\nlog:\n{}",
            agent
                .records()
                .iter()
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join("\n"),
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let refreshed_after = key_changed.elapsed();
    let runs: Vec<Value> = agent
        .records()
        .into_iter()
        .filter(|r| r["event"] == "action_run" && r["action"] == ACTION)
        .collect();
    let last = runs
        .iter()
        .rev()
        .find(|r| r["success"] == true)
        .expect("a successful refresh run");
    assert_eq!(last["trigger"], "stale", "{last}");
    // The lock was held until the tracker's verdict was converged.
    let released = await_record(
        &cp,
        agent,
        "the kubelet lock released",
        Duration::from_secs(60),
        |r| {
            r["event"] == "lock_released"
                && r["action"] == ACTION
                && r["generation"] == last["generation"]
                && seq(r) > seq(last)
        },
    );
    assert_eq!(released["lock"], "kubelet", "{released}");
    let probes = released["probes"].as_array().expect("probes");
    assert!(
        probes
            .iter()
            .any(|p| p["probe"] == "pod-tokens" && p["converged"] == true),
        "{released}"
    );
    for (uid, _) in &uids {
        assert_eq!(
            token_kid(&token_file(uid)),
            new_kid,
            "every token on the new key"
        );
        assert!(
            authenticates(&cp, dir.path(), &token_file(uid)),
            "the refreshed token authenticates"
        );
    }
    let t = pod_tokens_status(&admin);
    assert_eq!(
        (
            t["current"].clone(),
            t["stale"].clone(),
            t["unknown"].clone()
        ),
        (3.into(), 0.into(), 0.into()),
        "{t}"
    );
    assert_eq!(t["signing_kid"], new_kid.as_str(), "{t}");
    let metrics = get_ok(&admin, "/metrics");
    for (state, n) in [("current", 3), ("stale", 0), ("unknown", 0)] {
        let line = format!("\ncertreload_pod_tokens{{state=\"{state}\"}} {n}\n");
        assert!(metrics.contains(&line), "{line} in /metrics");
    }
    // The timeline, for docs/kubernetes.md (records carry kids and times, never a token).
    for r in agent.records().iter().filter(|r| {
        let e = r["event"].as_str().unwrap_or_default();
        e.starts_with("token_")
            || e.starts_with("lock_")
            || e.starts_with("sa_keys_")
            || r["action"] == ACTION
    }) {
        eprintln!(
            "{} {} {} {}",
            r["ts"].as_str().unwrap_or_default(),
            r["event"].as_str().unwrap_or_default(),
            r["pod"]
                .as_str()
                .or(r["action"].as_str())
                .unwrap_or_default(),
            r["reason"]
                .as_str()
                .or(r["result"].as_str())
                .unwrap_or_default()
        );
    }
    eprintln!(
        "key change -> every pod token refreshed: {:.1} s ({} refresh run(s), {} successful)",
        refreshed_after.as_secs_f64(),
        runs.len(),
        runs.iter().filter(|r| r["success"] == true).count()
    );

    // No token text anywhere the agent writes.
    let last_tokens: Vec<String> = uids
        .iter()
        .map(|(uid, _)| std::fs::read_to_string(token_file(uid)).expect("token"))
        .collect();
    let log = agent.log();
    let audit = std::fs::read_to_string(&agent.audit).expect("the audit log");
    for text in [&log, &audit] {
        assert!(!text.contains(JWT_START), "a JWT in the agent's output");
        for token in first_tokens.iter().chain(&last_tokens) {
            let signature = token.trim().rsplit('.').next().unwrap_or_default();
            assert!(
                !text.contains(token.trim()) && !text.contains(signature),
                "a token in the agent's output"
            );
        }
    }
    drop(run);
    cp.kubectl(&[
        "-n",
        NAMESPACE,
        "delete",
        "pod",
        "--wait=false",
        PODS[0],
        PODS[1],
        PODS[2],
    ])
    .ok();
}
