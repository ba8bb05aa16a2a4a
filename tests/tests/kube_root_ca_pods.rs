//! Issue 12's "Root-CA rotation: stale namespaces found, the action runs, every namespace's
//! kube-root-ca.crt and every pod's ca.crt carry the new CA", end to end on the REAL node
//! (`certreload_e2e::kube::node`: kubelet v1.37.2, containerd and runc, registered to the kubeadm
//! control plane of `certreload_e2e::kube`).
//!
//! The agent runs as the DaemonSet runs it on the control-plane node (kubeadm profile,
//! `--host-root`, deploy/'s identity and RBAC) with `[sa_keys]` (publish + follow: a token is
//! judged only once key ids are published), `[pod_tokens] cluster_ca = "kubernetes-ca"` (the
//! profile's), `kube-controller-manager-restart-on-root-ca` enabled (its command a kill through
//! the pid file: the harness starts the controller-manager again, standing in for the kubelet)
//! and `kubelet-restart-on-stale-tokens` enabled with a 5 s `grace`.
//!
//! **The `kube-root-ca-configmaps` probe's deadline is shortened to 20 s (the profile's is 60 s)
//! to save CI time**; the controller-manager never takes a new root CA without a restart, so the
//! deadline only moves when the restart comes.
//!
//! Two test namespaces, three pods. The controller-manager's CSR signer first gets a file of its
//! own (it refuses a bundle), then a kubeadm-made CA is appended to `pki/ca.crt`; asserted:
//! - the probe reports exactly every namespace the API server lists as stale (`/status`);
//! - the controller-manager restart action runs once, trigger `stale`, under the
//!   `kube-controller-manager` lock;
//! - afterwards every namespace's `kube-root-ca.crt` (kubectl) and every pod's `ca.crt` (the file
//!   on the node) hold both CAs;
//! - `token_stale` with reason `ca`, then `token_refreshed`, for each pod;
//! - the kubelet restart action did not run: a token stale only for its `ca.crt` waits for the
//!   kubelet's own sync until `[pod_tokens] deadline` (5 min), not `grace` (5 s), and the
//!   kubelet did not restart.
//!
//! The times from the CA change to every namespace and to every pod's `ca.crt` are printed for
//! the docs. Tokens are never printed (key ids, uids and namespaces only).

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use certreload_e2e::{
    http::get_ok,
    kube::{
        self,
        agent::{await_record, replace, seq, start_agent},
        identity::{apply_identity, token_kubeconfig},
        node::{self, Node},
        pods::{cert_fingerprints, give_the_signer_its_own_certificate, Workload},
        ControlPlane, CONTROLLER_MANAGER,
    },
    Agent,
};
use serde_json::Value;

const PROBE: &str = "kube-root-ca-configmaps";
const KCM_ACTION: &str = "kube-controller-manager-restart-on-root-ca";
const KUBELET_ACTION: &str = "kubelet-restart-on-stale-tokens";
/// The probe's deadline here (the profile's is 60 s): shortened to save CI time.
const DEADLINE_S: u64 = 20;
/// `[pod_tokens] grace`: short, so a ca-only staleness running the kubelet action at `grace`
/// (the old rule) would show within the test.
const GRACE_S: u64 = 5;
/// The test namespaces and their pods (3 in all).
const WORKLOADS: [(&str, usize); 2] = [("root-ca-pods-a", 2), ("root-ca-pods-b", 1)];
/// How long after the CA change every pod's ca.crt must hold it (the promise).
const PROMISE: Duration = Duration::from_secs(300);

/// The namespaces the API server lists, except those being deleted.
fn live_namespaces(cp: &ControlPlane) -> BTreeSet<String> {
    let out = cp
        .kubectl(&["get", "namespaces", "-o", "json"])
        .expect("kubectl get namespaces");
    let list: Value = serde_json::from_str(&out).expect("JSON");
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|ns| ns["metadata"]["deletionTimestamp"].is_null())
        .map(|ns| ns["metadata"]["name"].as_str().expect("name").to_string())
        .collect()
}

/// The namespaces whose `kube-root-ca.crt` holds every certificate of `bundle` (one list).
fn carrying(cp: &ControlPlane, bundle: &BTreeSet<String>) -> BTreeSet<String> {
    let out = cp
        .kubectl(&[
            "get",
            "configmaps",
            "--all-namespaces",
            "--field-selector",
            "metadata.name=kube-root-ca.crt",
            "-o",
            "json",
        ])
        .expect("kubectl get configmaps");
    let list: Value = serde_json::from_str(&out).expect("JSON");
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|cm| {
            bundle.is_subset(&cert_fingerprints(
                cm["data"]["ca.crt"].as_str().unwrap_or(""),
            ))
        })
        .map(|cm| {
            cm["metadata"]["namespace"]
                .as_str()
                .expect("namespace")
                .to_string()
        })
        .collect()
}

/// The probe's entry in the agent's `/status`.
fn probe_status(admin: &str) -> Value {
    let answer = get_ok(admin, "/status");
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let status: Value = serde_json::from_str(body).expect("/status is JSON");
    status["probes"]
        .as_array()
        .expect("probes")
        .iter()
        .find(|p| p["name"] == PROBE)
        .cloned()
        .unwrap_or_else(|| panic!("no probe {PROBE} in /status: {status}"))
}

/// The agent: the kubeadm profile with the propagation tables and both refresh actions enabled.
fn start(cp: &ControlPlane, node: &Node, dir: &std::path::Path) -> kube::agent::Run {
    apply_identity(cp);
    let overlay = format!(
        r#"
[sa_keys]
publish = "sa"
follow = true

[pod_tokens]
pods_dir = "{pods}"
cluster_ca = "kubernetes-ca"
rescan = "1s"
grace = "{GRACE_S}s"

[[probe]]
name = "{PROBE}"
deadline = "{DEADLINE_S}s"
interval = "2s"

[[action]]
name = "{KUBELET_ACTION}"
enabled = true
bundle = "pod-tokens"
on = "stale"
exec = ["{script}"]
timeout = "120s"
min_interval = "2m"
lock = "kubelet"

[[action]]
name = "{KCM_ACTION}"
enabled = true
exec = ["/bin/sh", "-c", "kill $(cat {pidfile})"]
timeout = "60s"
"#,
        pods = node.kubelet_root().join("pods").display(),
        script = node.restart_script().display(),
        pidfile = cp.pidfile(CONTROLLER_MANAGER).display(),
    );
    let kubeconfig = token_kubeconfig(cp, dir);
    start_agent(
        cp,
        &overlay,
        &[format!("KUBECONFIG={}", kubeconfig.display())],
    )
}

/// A kubeadm-made CA appended to `ca.crt` (t0); the bundle's fingerprints and t0.
fn append_a_new_ca(cp: &ControlPlane) -> (BTreeSet<String>, Instant) {
    let (new_pem, _key) = cp
        .new_ca_by_kubeadm("ca", "ca")
        .expect("a new cluster CA from kubeadm");
    let path = cp.pki().join("ca.crt");
    let bundle = format!(
        "{}{new_pem}",
        std::fs::read_to_string(&path).expect("ca.crt")
    );
    replace(&path, bundle.as_bytes());
    let t0 = Instant::now();
    let fingerprints = cert_fingerprints(&bundle);
    assert_eq!(fingerprints.len(), 2, "old + new CA");
    (fingerprints, t0)
}

/// The probe's stale namespaces in `/status` once it judges the new generation.
fn stale_namespaces(agent: &Agent, admin: &str, accepted: &Value) -> BTreeSet<String> {
    let deadline = Instant::now() + Duration::from_secs(DEADLINE_S);
    let status = loop {
        let s = probe_status(admin);
        if s["generation"] == accepted["new_generation"] && s["converged"] == false {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the probe does not see the new generation stale:\n{}",
            agent.log()
        );
        // The probe checks every 2 s: read /status again shortly.
        std::thread::sleep(Duration::from_millis(200));
    };
    let tally = &status["namespaces"];
    assert_eq!(tally["current"], 0, "{status}");
    tally["stale_namespaces"]
        .as_array()
        .expect("stale_namespaces")
        .iter()
        .map(|s| {
            assert_eq!(s["reason"], "outdated", "{s}");
            s["namespace"].as_str().expect("namespace").to_string()
        })
        .collect()
}

/// From t0 until every namespace's `kube-root-ca.crt` and every pod's `ca.crt` hold `bundle` (at
/// most the promise): when each was first complete, polled every 250 ms.
fn await_propagation(
    cp: &ControlPlane,
    node: &Node,
    works: &[Workload],
    namespaces: &BTreeSet<String>,
    bundle: &BTreeSet<String>,
    t0: Instant,
) -> (Duration, Duration) {
    let (mut all_namespaces, mut all_pods) = (None, None);
    loop {
        if all_namespaces.is_none() && carrying(cp, bundle).is_superset(namespaces) {
            all_namespaces = Some(t0.elapsed());
        }
        if all_pods.is_none()
            && works
                .iter()
                .flat_map(Workload::ca_bundles)
                .all(|b| b.is_some_and(|b| b.is_superset(bundle)))
        {
            all_pods = Some(t0.elapsed());
        }
        if let (Some(n), Some(p)) = (all_namespaces, all_pods) {
            return (n, p);
        }
        assert!(
            t0.elapsed() < PROMISE,
            "within {PROMISE:?}: every namespace {all_namespaces:?} (missing {:?}), every pod \
             {all_pods:?}\n{}",
            namespaces
                .difference(&carrying(cp, bundle))
                .collect::<Vec<_>>(),
            node.logs(40)
        );
        // The controller-manager and the kubelet write on their own schedules: look again shortly.
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn a_root_ca_rotation_reaches_every_namespace_and_every_pods_ca_crt_through_one_controller_manager_restart(
) {
    if let Some(why) = node::missing() {
        assert!(!certreload_e2e::ci(), "CI=true: cannot skip: {why}");
        eprintln!("SKIP: {why}");
        return;
    }
    let Some(cp) = kube::shared() else { return };
    let node = Node::start(&cp).unwrap_or_else(|e| panic!("the node did not come up: {e:#}"));
    cp.wait_leading(CONTROLLER_MANAGER, None)
        .expect("the controller-manager leads");
    give_the_signer_its_own_certificate(&cp);
    let works: Vec<Workload> = WORKLOADS
        .iter()
        .map(|(ns, n)| {
            Workload::start(&node, ns, *n)
                .unwrap_or_else(|e| panic!("the workload {ns} did not start: {e:#}"))
        })
        .collect();
    // The actions' Lease namespace, before the agent counts namespaces.
    if !live_namespaces(&cp).contains("certreload") {
        cp.kubectl(&["create", "namespace", "certreload"])
            .expect("the Leases' namespace");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let run = start(&cp, &node, dir.path());
    let agent = &run.agent;
    let admin = agent.log_field("agent ready", "admin");
    let started = await_record(
        &cp,
        agent,
        "every namespace's kube-root-ca.crt current at start",
        Duration::from_secs(60),
        |r| r["event"] == "endpoint_converged" && r["probe"] == PROBE,
    );
    await_record(
        &cp,
        agent,
        "the key identity followed at start",
        Duration::from_secs(60),
        |r| r["event"] == "sa_keys_followed",
    );
    let namespaces = live_namespaces(&cp);
    let uids: BTreeSet<String> = works.iter().flat_map(Workload::uids).collect();
    assert_eq!(uids.len(), 3);
    let kubelet_starts = node.kubelet_starts();

    let (bundle, t0) = append_a_new_ca(&cp);
    let accepted = await_record(
        &cp,
        agent,
        "ca.crt with the old and the new CA accepted",
        Duration::from_secs(30),
        |r| {
            r["event"] == "material_accepted"
                && r["bundle"] == "kubernetes-ca"
                && seq(r) > seq(&started)
        },
    );
    let stale = stale_namespaces(agent, &admin, &accepted);
    assert_eq!(
        stale, namespaces,
        "the stale namespaces: exactly every namespace"
    );

    let (to_namespaces, to_pods) = await_propagation(&cp, &node, &works, &namespaces, &bundle, t0);
    for uid in &uids {
        await_record(
            &cp,
            agent,
            &format!("token_refreshed for pod {uid}"),
            Duration::from_secs(30),
            |r| r["event"] == "token_refreshed" && r["uid"] == uid.as_str(),
        );
    }
    await_record(
        &cp,
        agent,
        "the controller-manager lock released",
        Duration::from_secs(120),
        |r| r["event"] == "lock_released" && r["action"] == KCM_ACTION,
    );
    assert_records(&run.stop(), &uids, &accepted);
    assert_eq!(
        node.kubelet_starts(),
        kubelet_starts,
        "the kubelet was not restarted"
    );
    eprintln!(
        "root-CA rotation, {} pods in {} test namespaces on the real kubelet ({} namespaces in \
         all), probe deadline {DEADLINE_S} s: a new CA appended to ca.crt -> every namespace's \
         kube-root-ca.crt holds it at {:.1} s, every pod's ca.crt at {:.1} s (polled every \
         0.25 s); the kubelet restart action did not run",
        uids.len(),
        WORKLOADS.len(),
        namespaces.len(),
        to_namespaces.as_secs_f64(),
        to_pods.as_secs_f64(),
    );
    for w in &works {
        w.delete(&node).expect("the workload is deleted");
    }
    drop(node);
}

/// The audit after the rotation: stale then refreshed for each pod (reason `ca`), the
/// controller-manager restart once on the probe's stale verdict under its lock, no kubelet restart.
fn assert_records(records: &[Value], uids: &BTreeSet<String>, accepted: &Value) {
    let after: Vec<&Value> = records.iter().filter(|r| seq(r) > seq(accepted)).collect();
    let of = |event: &str| -> Vec<&Value> {
        after
            .iter()
            .copied()
            .filter(|r| r["event"] == event)
            .collect()
    };
    let mut stale_at: BTreeMap<String, u64> = BTreeMap::new();
    for r in of("token_stale") {
        assert_eq!(r["reason"], "ca", "{r}");
        stale_at
            .entry(r["uid"].as_str().unwrap_or_default().to_string())
            .or_insert(seq(r));
    }
    assert_eq!(
        stale_at.keys().cloned().collect::<BTreeSet<_>>(),
        *uids,
        "token_stale (reason ca) for exactly the pods"
    );
    for r in of("token_refreshed") {
        let uid = r["uid"].as_str().unwrap_or_default();
        assert!(
            stale_at.get(uid).is_some_and(|s| *s < seq(r)),
            "token_refreshed after token_stale: {r}"
        );
    }
    let runs = of("action_run");
    let kcm: Vec<&&Value> = runs.iter().filter(|r| r["action"] == KCM_ACTION).collect();
    assert_eq!(
        kcm.len(),
        1,
        "the controller-manager restart runs once: {runs:?}"
    );
    assert_eq!(kcm[0]["trigger"], "stale", "{}", kcm[0]);
    assert_eq!(kcm[0]["success"], true, "{}", kcm[0]);
    assert!(
        runs.iter().all(|r| r["action"] != KUBELET_ACTION),
        "the kubelet restart action ran before [pod_tokens] deadline: {runs:?}"
    );
    let acquired = of("lock_acquired")
        .into_iter()
        .find(|r| r["action"] == KCM_ACTION)
        .expect("the controller-manager lock acquired");
    assert_eq!(acquired["lock"], "kube-controller-manager", "{acquired}");
    assert!(seq(acquired) < seq(kcm[0]), "{acquired} / {}", kcm[0]);
    let released = of("lock_released")
        .into_iter()
        .find(|r| r["action"] == KCM_ACTION)
        .expect("the controller-manager lock released");
    assert!(seq(kcm[0]) < seq(released), "{} / {released}", kcm[0]);
}
