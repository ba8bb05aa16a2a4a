//! The root CA across namespaces, on the REAL kubeadm control plane (Kubernetes v1.37.2 built from
//! source, `certreload_e2e::kube`): kube-controller-manager's root-CA publisher writes
//! `kube-root-ca.crt` into every namespace from the `--root-ca-file` it read at start, so a CA
//! added to `pki/ca.crt` reaches the namespaces (and the `ca.crt` of every pod's token volume)
//! only after it restarts.
//!
//! The agent runs as the DaemonSet runs it (kubeadm profile, `--host-root`), with the identity
//! of deploy/ (a token minted for the certreload ServiceAccount, deploy/rbac.yaml applied), so
//! the least-privilege rules (list namespaces, get kube-root-ca.crt by name, the action's Lease)
//! are what it works with. Its overlay shortens the profile's `kube-root-ca-configmaps` probe and
//! enables `kube-controller-manager-restart-on-root-ca`, its command replaced by a kill through
//! the pid file: the harness stands in for the kubelet and starts the controller-manager again.
//!
//! 1. Steady state: three test namespaces; the probe converged over every namespace (the exact
//!    count the API server lists).
//! 2. A new cluster CA appended to `ca.crt`, the old kept (the signer keeps its own
//!    single-certificate file, as the upstream manual rotation has it: the controller-manager's
//!    CSR signer refuses a bundle): every namespace stale (the exact set, in `/status` and the
//!    metrics).
//! 3. While the controller-manager holds the old root CA, one namespace's `kube-root-ca.crt` is
//!    written directly with the new bundle: the publisher puts its old bundle back (measured).
//! 4. At the probe's deadline the stale verdict runs the restart action under its Lease; the
//!    restarted controller-manager rewrites every namespace with the new bundle and the probe
//!    converges, all audited.
//!
//! Figures are printed for docs/kubernetes.md. Run alone: `flock /tmp/certreload-cp.lock cargo
//! test -p certreload-e2e --test kube_root_ca -- --nocapture`.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use certreload_e2e::{
    http::get_ok,
    kube::{
        self,
        agent::{await_record, replace, restart_counts, seq, start_agent},
        identity::{apply_identity, token_kubeconfig},
        pods::give_the_signer_its_own_certificate,
        ControlPlane, CONTROLLER_MANAGER,
    },
    poll, sha256_hex, Agent,
};
use rustls::pki_types::{pem::PemObject, CertificateDer};
use serde_json::Value;

const PROBE: &str = "kube-root-ca-configmaps";
const ACTION: &str = "kube-controller-manager-restart-on-root-ca";
const CONFIGMAP: &str = "kube-root-ca.crt";
const TEST_NAMESPACES: [&str; 3] = [
    "certreload-root-ca-a",
    "certreload-root-ca-b",
    "certreload-root-ca-c",
];
/// The probe's deadline in this test: long enough for step 3 inside it.
const DEADLINE_S: u64 = 90;

/// SHA-256 (hex) of every certificate in a PEM text.
fn fingerprints(pem: &str) -> BTreeSet<String> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| sha256_hex(c.expect("a PEM certificate").as_ref()))
        .collect()
}

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

/// Every namespace's `kube-root-ca.crt` `ca.crt`, as the API server has it now (one list).
fn root_ca_configmaps(cp: &ControlPlane) -> BTreeMap<String, String> {
    let out = cp
        .kubectl(&[
            "get",
            "configmaps",
            "--all-namespaces",
            "--field-selector",
            &format!("metadata.name={CONFIGMAP}"),
            "-o",
            "json",
        ])
        .expect("kubectl get configmaps");
    let list: Value = serde_json::from_str(&out).expect("JSON");
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|cm| {
            (
                cm["metadata"]["namespace"]
                    .as_str()
                    .expect("namespace")
                    .to_string(),
                cm["data"]["ca.crt"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect()
}

/// The namespaces whose `kube-root-ca.crt` holds every certificate of `bundle`.
fn carrying(cp: &ControlPlane, bundle: &BTreeSet<String>) -> BTreeSet<String> {
    root_ca_configmaps(cp)
        .into_iter()
        .filter(|(_, pem)| bundle.is_subset(&fingerprints(pem)))
        .map(|(ns, _)| ns)
        .collect()
}

/// The body of an admin endpoint answer.
fn body(response: &str) -> &str {
    response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default()
}

/// The probe's entry in the agent's `/status`.
fn probe_status(admin: &str) -> Value {
    let status: Value =
        serde_json::from_str(body(&get_ok(admin, "/status"))).expect("/status is JSON");
    status["probes"]
        .as_array()
        .expect("probes")
        .iter()
        .find(|p| p["name"] == PROBE)
        .cloned()
        .unwrap_or_else(|| panic!("no probe {PROBE} in /status: {status}"))
}

/// `certreload_root_ca_namespaces{probe, state}` from `/metrics`.
fn namespace_gauge(admin: &str, state: &str) -> Option<u64> {
    let metrics = get_ok(admin, "/metrics");
    let prefix = format!("certreload_root_ca_namespaces{{probe=\"{PROBE}\",state=\"{state}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse().ok())
}

/// Creates the test namespaces and waits until the publisher has put `kube-root-ca.crt` in each.
fn create_test_namespaces(cp: &ControlPlane, ca: &BTreeSet<String>) {
    for ns in TEST_NAMESPACES {
        cp.kubectl(&["create", "namespace", ns])
            .unwrap_or_else(|e| panic!("kubectl create namespace {ns}: {e:#}"));
    }
    poll(Duration::from_secs(60), Duration::from_millis(250), || {
        let have = carrying(cp, ca);
        TEST_NAMESPACES
            .iter()
            .all(|ns| have.contains(*ns))
            .then_some(())
    })
    .expect("the publisher puts kube-root-ca.crt into the new namespaces");
}

/// The agent, as the certreload ServiceAccount, with the probe shortened and the action enabled.
fn start(cp: &ControlPlane, dir: &std::path::Path) -> kube::agent::Run {
    apply_identity(cp);
    let kubeconfig = token_kubeconfig(cp, dir);
    start_agent(
        cp,
        &format!(
            r#"
[[probe]]
name = "{PROBE}"
deadline = "{DEADLINE_S}s"
interval = "5s"

# The profile's action, enabled; the harness (standing in for the kubelet) starts the
# controller-manager again when it exits.
[[action]]
name = "{ACTION}"
enabled = true
exec = ["/bin/sh", "-c", "kill $(cat {pidfile})"]
timeout = "60s"
min_interval = "1s"
"#,
            pidfile = cp.pidfile(CONTROLLER_MANAGER).display(),
        ),
        &[format!("KUBECONFIG={}", kubeconfig.display())],
    )
}

#[test]
fn a_cluster_ca_added_on_disk_reaches_every_namespace_only_through_the_controller_manager_restart()
{
    let Some(cp) = kube::shared() else { return };
    cp.wait_leading(CONTROLLER_MANAGER, None)
        .expect("the controller-manager leads");
    give_the_signer_its_own_certificate(&cp);
    let old_pem = std::fs::read_to_string(cp.pki().join("ca.crt")).expect("ca.crt");
    let old = fingerprints(&old_pem);
    create_test_namespaces(&cp, &old);
    let dir = tempfile::tempdir().expect("tempdir");
    let run = start(&cp, dir.path());
    let agent = &run.agent;
    let admin = agent.log_field("agent ready", "admin");

    let namespaces = steady_state(&cp, agent, &admin);
    let (new, accepted) = append_a_new_ca(&cp, agent, &old_pem);
    stale_everywhere(agent, &admin, &namespaces, &accepted);
    direct_write_is_reverted(&cp, &old, &new);
    restart_repairs(&cp, agent, &namespaces, &old, &new, &accepted);
    run.agent.stop();
}

/// (a) The probe converged at start-up over every namespace the API server lists, exactly.
fn steady_state(cp: &ControlPlane, agent: &Agent, admin: &str) -> BTreeSet<String> {
    let converged = await_record(
        cp,
        agent,
        "the root-CA probe converged at start-up",
        Duration::from_secs(60),
        |r| r["event"] == "endpoint_converged" && r["probe"] == PROBE && r["trigger"] == "startup",
    );
    let namespaces = live_namespaces(cp);
    assert!(
        TEST_NAMESPACES.iter().all(|ns| namespaces.contains(*ns)),
        "{namespaces:?}"
    );
    assert_eq!(converged["endpoint"], "*/kube-root-ca.crt", "{converged}");
    let status = probe_status(admin);
    let tally = &status["namespaces"];
    assert_eq!(status["converged"], true, "{status}");
    assert_eq!(
        tally["total"],
        namespaces.len(),
        "{status} vs {namespaces:?}"
    );
    assert_eq!(tally["current"], namespaces.len(), "{status}");
    assert_eq!(tally["stale"], 0, "{status}");
    assert_eq!(
        namespace_gauge(admin, "current"),
        Some(namespaces.len() as u64)
    );
    assert_eq!(namespace_gauge(admin, "stale"), Some(0));
    eprintln!(
        "steady state: {PROBE} converged over {} namespaces in {:.2} s ({})",
        namespaces.len(),
        converged["seconds"].as_f64().unwrap_or(f64::NAN),
        status["observed"]
    );
    namespaces
}

/// (b) A new cluster CA made by kubeadm, appended to `ca.crt` (old kept); the agent accepts the
/// bundle. Returns the bundle's fingerprints and the accepted record.
fn append_a_new_ca(cp: &ControlPlane, agent: &Agent, old_pem: &str) -> (BTreeSet<String>, Value) {
    let (new_pem, _key) = cp
        .new_ca_by_kubeadm("ca", "ca")
        .expect("a new cluster CA from kubeadm");
    let bundle = format!("{old_pem}{new_pem}");
    replace(&cp.pki().join("ca.crt"), bundle.as_bytes());
    let new = fingerprints(&bundle);
    assert_eq!(new.len(), 2);
    let accepted = await_record(
        cp,
        agent,
        "ca.crt with the old and the new CA accepted",
        Duration::from_secs(60),
        |r| {
            r["event"] == "material_accepted"
                && r["bundle"] == "kubernetes-ca"
                && r["new_generation"].as_u64().unwrap_or(0) > 1
        },
    );
    (new, accepted)
}

/// (b) Every namespace stale, the exact set, before the deadline: in `/status` and the metrics.
fn stale_everywhere(agent: &Agent, admin: &str, namespaces: &BTreeSet<String>, accepted: &Value) {
    let generation = accepted["new_generation"].clone();
    let status = poll(Duration::from_secs(30), Duration::from_millis(200), || {
        let s = probe_status(admin);
        (s["generation"] == generation && s["converged"] == false).then_some(s)
    })
    .unwrap_or_else(|| {
        panic!(
            "the probe does not see the new generation stale:\n{}",
            agent.log()
        )
    });
    let tally = &status["namespaces"];
    let stale: BTreeSet<String> = tally["stale_namespaces"]
        .as_array()
        .expect("stale_namespaces")
        .iter()
        .map(|s| {
            assert_eq!(s["reason"], "outdated", "{s}");
            s["namespace"].as_str().expect("namespace").to_string()
        })
        .collect();
    assert_eq!(&stale, namespaces, "every namespace is stale: {status}");
    assert_eq!(tally["total"], namespaces.len(), "{status}");
    assert_eq!(tally["stale"], namespaces.len(), "{status}");
    assert_eq!(tally["current"], 0, "{status}");
    assert_eq!(
        namespace_gauge(admin, "stale"),
        Some(namespaces.len() as u64)
    );
    assert!(
        status["observed"]
            .as_str()
            .is_some_and(|o| o.starts_with(&format!(
                "{n} of {n} namespaces stale: ",
                n = namespaces.len()
            ))),
        "{status}"
    );
}

/// `kubectl get --watch` of one namespace's `kube-root-ca.crt`: each event (the object) with the
/// moment it arrived, on a channel; the watch ends when this is dropped.
struct ConfigMapWatch {
    child: std::process::Child,
    events: std::sync::mpsc::Receiver<(Instant, Value)>,
}

impl ConfigMapWatch {
    fn start(cp: &ControlPlane, ns: &str) -> ConfigMapWatch {
        let peers = std::path::PathBuf::from(std::env::var_os(kube::PEERS_ENV).expect("peers"));
        let mut child = std::process::Command::new(peers.join("kubectl"))
            .arg("--kubeconfig")
            .arg(cp.admin_kubeconfig())
            .args(["-n", ns, "get", "configmap", CONFIGMAP, "--watch"])
            .args(["--show-managed-fields", "-o", "json"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("kubectl --watch starts");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, events) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for object in serde_json::Deserializer::from_reader(stdout).into_iter::<Value>() {
                let Ok(object) = object else { return };
                if tx.send((Instant::now(), object)).is_err() {
                    return;
                }
            }
        });
        ConfigMapWatch { child, events }
    }

    /// The next event within `within` whose `ca.crt` is `bundle`: (when it arrived, the object).
    fn next_holding(
        &self,
        bundle: &BTreeSet<String>,
        within: Duration,
    ) -> Option<(Instant, Value)> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (at, cm) = self.events.recv_timeout(left).ok()?;
            if fingerprints(cm["data"]["ca.crt"].as_str().unwrap_or_default()) == *bundle {
                return Some((at, cm));
            }
        }
    }
}

impl Drop for ConfigMapWatch {
    fn drop(&mut self) {
        certreload_e2e::kill_and_reap(&mut self.child);
    }
}

/// Which field manager last wrote `data["ca.crt"]` of a ConfigMap (from its managedFields).
fn ca_crt_writer(cm: &Value) -> String {
    cm["metadata"]["managedFields"]
        .as_array()
        .and_then(|fields| {
            fields
                .iter()
                .find(|f| f["fieldsV1"]["f:data"]["f:ca.crt"].is_object())
        })
        .map(|f| format!("{} ({})", f["manager"], f["operation"]))
        .unwrap_or_default()
}

/// (c) While the controller-manager still holds the old root CA, one namespace's
/// `kube-root-ca.crt` written directly with the new bundle: its root-CA publisher (woken by the
/// ConfigMap's update event) writes its own old bundle back. Measured on a watch: from the event
/// of the write to the event of the rewrite.
fn direct_write_is_reverted(cp: &ControlPlane, old: &BTreeSet<String>, new: &BTreeSet<String>) {
    let ns = TEST_NAMESPACES[0];
    let bundle = std::fs::read_to_string(cp.pki().join("ca.crt")).expect("ca.crt");
    let dir = tempfile::tempdir().expect("tempdir");
    let patch = dir.path().join("patch.json");
    std::fs::write(
        &patch,
        serde_json::json!({"data": {"ca.crt": bundle}}).to_string(),
    )
    .expect("write the patch");
    let watch = ConfigMapWatch::start(cp, ns);
    watch
        .next_holding(old, Duration::from_secs(30))
        .expect("the watch shows the ConfigMap with the old CA first");
    let patch_arg = patch.display().to_string();
    cp.kubectl(&[
        "-n",
        ns,
        "patch",
        "configmap",
        CONFIGMAP,
        "--type",
        "merge",
        "--patch-file",
        &patch_arg,
    ])
    .expect("kubectl patch kube-root-ca.crt");
    let (written_at, written) = watch
        .next_holding(new, Duration::from_secs(30))
        .expect("the watch shows the direct write");
    let reverted = watch.next_holding(old, Duration::from_secs(60));
    let Some((reverted_at, cm)) = reverted else {
        panic!(
            "{ns}/{CONFIGMAP} written with the new bundle is not put back within 60 s; now {:?}",
            root_ca_configmaps(cp).get(ns)
        )
    };
    let writer = ca_crt_writer(&cm);
    assert!(
        writer.contains("kube-controller-manager"),
        "the controller-manager wrote ca.crt back: {writer} in {cm}"
    );
    assert_eq!(
        fingerprints(&root_ca_configmaps(cp)[ns]),
        *old,
        "and it stays so"
    );
    eprintln!(
        "direct write of the new bundle into {ns}/{CONFIGMAP} (by {}, resourceVersion {}) \
         reverted to the controller-manager's old root CA {:.1} ms later (watch events; by {writer}, \
         resourceVersion {})",
        ca_crt_writer(&written),
        written["metadata"]["resourceVersion"],
        (reverted_at - written_at).as_secs_f64() * 1000.0,
        cm["metadata"]["resourceVersion"]
    );
}

/// (b, end) The stale verdict at the deadline runs the restart action under its Lease; the
/// restarted controller-manager rewrites every namespace with the new bundle (checked with
/// kubectl), and the probe converges after the action.
fn restart_repairs(
    cp: &ControlPlane,
    agent: &Agent,
    namespaces: &BTreeSet<String>,
    old: &BTreeSet<String>,
    new: &BTreeSet<String>,
    accepted: &Value,
) {
    let leader = cp.leader(CONTROLLER_MANAGER).ok().flatten();
    let restarts = cp.restart_count(CONTROLLER_MANAGER);
    let stale = await_record(
        cp,
        agent,
        "the root-CA probe stale at its deadline",
        Duration::from_secs(DEADLINE_S + 60),
        |r| r["event"] == "endpoint_stale" && r["probe"] == PROBE && seq(r) > seq(accepted),
    );
    let observed = stale["observed"].as_str().unwrap_or_default();
    assert!(
        observed.starts_with(&format!(
            "{n} of {n} namespaces stale: ",
            n = namespaces.len()
        )) && observed.contains("(outdated)"),
        "{stale}"
    );
    let action = await_record(
        cp,
        agent,
        "the controller-manager restart action ran",
        Duration::from_secs(60),
        |r| r["event"] == "action_run" && r["action"] == ACTION && seq(r) > seq(&stale),
    );
    assert_eq!(action["success"], true, "{action}");
    let action_seen = Instant::now();
    let all_new = poll(Duration::from_secs(180), Duration::from_millis(250), || {
        (carrying(cp, new) == *namespaces).then(|| action_seen.elapsed())
    })
    .unwrap_or_else(|| {
        panic!(
            "not every namespace carries the new CA after the restart: {:?}\n{}",
            carrying(cp, new),
            cp.log_tail(CONTROLLER_MANAGER, 40)
        )
    });
    assert!(
        cp.restart_count(CONTROLLER_MANAGER) > restarts,
        "the action restarted the controller-manager"
    );
    let leading = cp
        .wait_leading(
            CONTROLLER_MANAGER,
            leader.as_ref().map(|l| l.holder.as_str()),
        )
        .expect("the restarted controller-manager leads (its CSR signer has one certificate)");
    let converged = await_record(
        cp,
        agent,
        "the root-CA probe converged after the restart",
        Duration::from_secs(120),
        |r| r["event"] == "endpoint_converged" && r["probe"] == PROBE && seq(r) > seq(&action),
    );
    let released = await_record(
        cp,
        agent,
        "the controller-manager lock released after the probe settled",
        Duration::from_secs(120),
        |r| r["event"] == "lock_released" && r["action"] == ACTION && seq(r) > seq(&action),
    );
    assert_eq!(released["lock"], "kube-controller-manager", "{released}");
    let acquired = agent
        .records()
        .into_iter()
        .find(|r| r["event"] == "lock_acquired" && r["action"] == ACTION)
        .expect("the lock was acquired");
    assert!(seq(&acquired) < seq(&action), "{acquired} / {action}");
    // Old and new together: the old CA stays trusted (every certificate in use is from it).
    assert!(old.is_subset(new));
    eprintln!(
        "new CA appended to ca.crt: {PROBE} stale at {:.1} s ({}); after the restart action \
         (leader {} took over): every namespace's {CONFIGMAP} carries the new CA {:.1} s later \
         (polled every 0.25 s), converged record at {:.1} s after acceptance, lock held {:.1} s; \
         restarts: {}",
        stale["seconds"].as_f64().unwrap_or(f64::NAN),
        stale["observed"],
        leading.holder,
        all_new.as_secs_f64(),
        converged["seconds"].as_f64().unwrap_or(f64::NAN),
        released["held_s"].as_f64().unwrap_or(f64::NAN),
        restart_counts(cp),
    );
}
