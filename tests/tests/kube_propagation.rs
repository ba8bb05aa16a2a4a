//! Issue 12's "SA key rotation with pods running", end to end on the REAL node
//! (`certreload_e2e::kube::node`: kubelet v1.37.2, Debian containerd and runc, registered to the
//! kubeadm control plane of `certreload_e2e::kube`).
//!
//! The agent runs as the DaemonSet runs it on the control-plane node (`run --profile kubeadm
//! --host-root ROOT`, with deploy/'s ServiceAccount identity and RBAC), with an overlay that turns
//! on `[sa_keys]` (publish the `sa` bundle, follow the ConfigMap) and `[pod_tokens]` (the
//! kubelet's pods directory under the root), and enables the profile's
//! `kubelet-restart-on-stale-tokens` action (`bundle = "pod-tokens"`, `on = "stale"`, `lock =
//! "kubelet"`) with its command replaced by the harness's restart script: **the harness's kubelet
//! service loop stands in for `systemctl restart kubelet`** (tests/src/kube/node.rs).
//!
//! With N pods running, the SA keys are rotated as a careful operator does it (sa.pub = old + new,
//! API server restarted; then sa.key = new, API server restarted), and asserted:
//! - the ConfigMap is published with the new signing kid (audit `sa_keys_published`, and the
//!   object read back through the API);
//! - the pods found stale are exactly the workload's pods (`token_stale`, reason `outgoing_key`);
//! - the refresh action runs once, under the `kubelet` lock, and succeeds;
//! - every pod's token file carries the new kid (`token_refreshed` for each), no sandbox or
//!   container restarted;
//! - after the old key is retired each token still authenticates (`kubectl auth whoami` reading
//!   the token file itself);
//! - nothing the agent logged or audited contains any token (each token's signature part,
//!   before and after, searched in its stderr and its audit log; its stdout is not kept by the
//!   harness: the agent writes its log to stderr).
//!
//! `grace` is longer than the API server's restart (11–60 s here: its graceful shutdown waits
//! out in-flight requests), so the kubelet re-requests after the API server signs with the new
//! key; with a shorter grace the first restart would fetch old-key tokens again and the action
//! would run a second time after `min_interval` (the design's fallback, not tested here).
//!
//! One control plane per test binary (the API server's port is fixed); the machine-wide kube
//! lock orders it with other kube test binaries.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use certreload_e2e::kube::{
    agent::{await_record, seq, start_agent},
    identity::{apply_identity, ensure_namespace, token_kubeconfig},
    node::{self, Node},
    pods::{
        self, publish_alongside, retire_others, switch_signing, whoami, SaKey, Tasks, Workload,
    },
    ControlPlane, APISERVER,
};
use serde_json::Value;

/// Pods on the node.
const PODS: usize = 5;
/// The ConfigMap the agents publish and follow (the design's default).
const CONFIGMAP: (&str, &str) = ("kube-system", "certreload-sa-keys");
/// The profile's refresh action.
const ACTION: &str = "kubelet-restart-on-stale-tokens";
/// How long a token may be stale before the action runs: past the API server's restart.
const GRACE_S: u64 = 75;
/// The namespace of the actions' Leases (`[locks] namespace`, default `certreload`).
const LOCK_NAMESPACE: &str = "certreload";

/// The agent's overlay: publish + follow, the tracker on the node's pods, the action enabled
/// with the harness's restart script.
fn overlay(node: &Node) -> String {
    format!(
        r#"
[sa_keys]
configmap = "{ns}/{name}"
publish = "sa"
follow = true

[pod_tokens]
pods_dir = "{pods}"
rescan = "1s"
grace = "{GRACE_S}s"
deadline = "120s"

# The profile's action, enabled; `systemctl restart kubelet` is the harness's restart script.
[[action]]
name = "{ACTION}"
enabled = true
bundle = "pod-tokens"
on = "stale"
exec = ["{script}"]
timeout = "120s"
min_interval = "2m"
lock = "kubelet"
"#,
        ns = CONFIGMAP.0,
        name = CONFIGMAP.1,
        pods = node.kubelet_root().join("pods").display(),
        script = node.restart_script().display(),
    )
}

/// The published ConfigMap's `signing-kid` as read through the API.
fn published_signing_kid(cp: &ControlPlane) -> String {
    cp.kubectl(&[
        "-n",
        CONFIGMAP.0,
        "get",
        "configmap",
        CONFIGMAP.1,
        "-o",
        "jsonpath={.data.signing-kid}",
    ])
    .unwrap_or_else(|e| panic!("reading {}/{}: {e:#}", CONFIGMAP.0, CONFIGMAP.1))
    .trim()
    .to_string()
}

fn records_of<'a>(records: &'a [Value], event: &str, after: &Value) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| r["event"] == event && seq(r) > seq(after))
        .collect()
}

#[test]
fn sa_key_rotation_with_pods_running_refreshes_every_token_through_one_kubelet_restart() {
    let Some((cp, node)) = node::shared_with_node() else {
        return;
    };
    let work = Workload::start(&node, "propagation", PODS)
        .unwrap_or_else(|e| panic!("the workload did not start: {e:#}"));
    let old_kids = pods::key_ids(&cp.pki().join("sa.pub")).expect("sa.pub");
    let tasks = Tasks::list(&node).expect("ctr tasks ls");
    let before = work.tokens();

    // The DaemonSet's identity (deploy/), and the actions' Lease namespace.
    apply_identity(&cp);
    ensure_namespace(&cp, LOCK_NAMESPACE);
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = token_kubeconfig(&cp, dir.path());
    let run = start_agent(
        &cp,
        &overlay(&node),
        &[format!("KUBECONFIG={}", kubeconfig.display())],
    );
    let agent = &run.agent;
    let started = await_record(
        &cp,
        agent,
        "the current key identity published at start",
        Duration::from_secs(60),
        |r| r["event"] == "sa_keys_published" && r["signing_kid"] == old_kids[0].as_str(),
    );
    await_record(
        &cp,
        agent,
        "the published key identity followed",
        Duration::from_secs(60),
        |r| r["event"] == "sa_keys_followed" && r["signing_kid"] == old_kids[0].as_str(),
    );

    // The careful rotation. Step 1: both public keys (no pod is stale: its kid is the signing
    // one until sa.key changes).
    let key = SaKey::generate(dir.path()).expect("a new SA key");
    publish_alongside(&cp, &key).expect("sa.pub = old + new");
    let both = await_record(
        &cp,
        agent,
        "sa.pub = old + new published",
        Duration::from_secs(60),
        |r| {
            r["event"] == "sa_keys_published"
                && r["kids"]
                    .as_array()
                    .is_some_and(|k| k.iter().any(|k| k == key.kid.as_str()))
        },
    );
    assert_eq!(both["signing_kid"], old_kids[0].as_str(), "{both}");
    // Step 2: the new signing key, and the API server restarted by the operator.
    let changed = switch_signing(&cp, &key);
    let published = await_record(
        &cp,
        agent,
        "the new signing kid published",
        Duration::from_secs(60),
        |r| r["event"] == "sa_keys_published" && r["signing_kid"] == key.kid.as_str(),
    );
    let published_after = changed.elapsed();
    cp.restart(APISERVER)
        .expect("the API server restarts with the new signing key");
    let signing_after = changed.elapsed();
    assert_eq!(
        published_signing_kid(&cp),
        key.kid,
        "the ConfigMap's signing-kid"
    );
    assert!(
        signing_after < Duration::from_secs(GRACE_S),
        "the API server restart ({signing_after:?}) must end within the grace ({GRACE_S} s), \
         or the kubelet re-requests old-key tokens"
    );

    // Stale: exactly the workload's pods, their kid still accepted (outgoing).
    let want: BTreeSet<String> = work.uids().into_iter().collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let stale: BTreeSet<String> = loop {
        let records = agent.records();
        let found: BTreeSet<String> = records_of(&records, "token_stale", &published)
            .iter()
            .map(|r| r["uid"].as_str().unwrap_or_default().to_string())
            .collect();
        if found.len() >= want.len() || Instant::now() > deadline {
            break found;
        }
        // The tracker rescans every second: read its audit log again shortly.
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(stale, want, "the stale pods are exactly the workload's");
    for r in records_of(&agent.records(), "token_stale", &published) {
        assert_eq!(r["reason"], "outgoing_key", "{r}");
        assert_eq!(r["kid"], old_kids[0].as_str(), "{r}");
        assert_eq!(r["namespace"], work.namespace.as_str(), "{r}");
    }

    // The action restarts the kubelet once, under its lock; every token then carries the new kid.
    let action = await_record(
        &cp,
        agent,
        "the kubelet restart action ran",
        Duration::from_secs(GRACE_S + 60),
        |r| r["event"] == "action_run" && r["action"] == ACTION && seq(r) > seq(&published),
    );
    assert_eq!(action["success"], true, "{action}");
    assert_eq!(action["trigger"], "stale", "{action}");
    let action_seen = changed.elapsed();
    let refreshed = work.await_kid(&key.kid, Instant::now(), Duration::from_secs(120));
    assert!(
        refreshed.iter().all(Option::is_some),
        "every token carries the new kid after the action: {refreshed:?}\n{}",
        node.logs(40)
    );
    let last_refresh = changed.elapsed();
    for uid in &want {
        await_record(
            &cp,
            agent,
            &format!("token_refreshed for pod {uid}"),
            Duration::from_secs(30),
            |r| {
                r["event"] == "token_refreshed"
                    && r["uid"] == uid.as_str()
                    && r["kid"] == key.kid.as_str()
            },
        );
    }
    let released = await_record(
        &cp,
        agent,
        "the kubelet lock released once every token is current",
        Duration::from_secs(150),
        |r| r["event"] == "lock_released" && r["action"] == ACTION && seq(r) > seq(&action),
    );
    let records = agent.records();
    let runs = records_of(&records, "action_run", &started)
        .into_iter()
        .filter(|r| r["action"] == ACTION)
        .count();
    assert_eq!(runs, 1, "the refresh action runs once");
    let acquired: Vec<&Value> = records_of(&records, "lock_acquired", &published)
        .into_iter()
        .filter(|r| r["action"] == ACTION && seq(r) < seq(&action))
        .collect();
    assert_eq!(
        acquired.len(),
        1,
        "one lock_acquired before the run: {acquired:?}"
    );
    assert_eq!(acquired[0]["lock"], "kubelet", "{}", acquired[0]);
    assert_eq!(node.kubelet_starts(), 2, "the kubelet was restarted once");
    assert_eq!(
        Tasks::list(&node).expect("ctr tasks ls"),
        tasks,
        "no sandbox or container restarted"
    );

    // The careful operator's last step; every token still authenticates.
    let after = work.tokens();
    retire_others(&cp, &key).expect("sa.pub = the new key only");
    let user = format!("system:serviceaccount:{}:{}", work.namespace, work.account);
    for (p, t) in work.pods.iter().zip(&after) {
        let t = t.as_ref().expect("token");
        assert_eq!(t.kid, key.kid, "{}: {t:?}", p.name);
        assert_eq!(
            whoami(&cp, &t.path).unwrap_or_else(|e| panic!("{}'s token: {e:#}", p.name)),
            user
        );
    }

    // Nothing the agent logged or audited holds a token (old or new).
    let log = agent.log();
    let audit = std::fs::read_to_string(&agent.audit).expect("the audit log");
    for t in before.iter().chain(&after).flatten() {
        assert!(!t.leaked_in(&log), "a pod token is in the agent's log");
        assert!(!t.leaked_in(&audit), "a pod token is in the audit log");
    }

    eprintln!(
        "SA key rotation with {PODS} pods on the real kubelet: new signing kid published {:.1} s \
         after sa.key changed; API server signing with it at {:.1} s; {} pods stale \
         (outgoing_key); the refresh action ran once at {:.1} s (grace {GRACE_S} s), the last \
         token carried the new kid at {:.1} s; lock {} held {:.1} s; no container restarted",
        published_after.as_secs_f64(),
        signing_after.as_secs_f64(),
        stale.len(),
        action_seen.as_secs_f64(),
        last_refresh.as_secs_f64(),
        released["lock"],
        released["held_s"].as_f64().unwrap_or(f64::NAN),
    );
    run.agent.stop();
    work.delete(&node).expect("the workload is deleted");
    drop(node);
}
