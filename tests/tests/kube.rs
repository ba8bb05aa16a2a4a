//! End-to-end tests on a real kubeadm control plane (Kubernetes and etcd built from source, named
//! by `CERTRELOAD_PEERS`), made by kubeadm in a temporary host root: the agent runs with
//! `run --profile kubeadm --host-root ROOT` and an overlay, the way the DaemonSet runs it.
//!
//! The harness (`certreload_e2e::kube`) starts the static pods kubeadm wrote as processes and
//! restarts them when they exit: it stands in for the kubelet. Restart actions therefore kill the
//! component through its pid file, where a node would `crictl stop` it.
//!
//! The client-CA tests rotate the cluster CA as an operator does with kubeadm (`ca.crt` = new +
//! old). kube-controller-manager's CSR signer refuses a `ca.crt` with two certificates and, in
//! v1.37, the controller-manager then exits at every start; so the tests first give the signer
//! its own single-certificate pair (see `give_the_signer_its_own_pair`), and check at the end
//! that the controller-manager and the scheduler lead (hold and renew their Leases), not just
//! answer `/healthz`.
//!
//! Every figure the tests print (bring-up, seconds to converge) is a measurement for
//! docs/kubernetes.md, never an assertion.

use std::time::{Duration, Instant};

use certreload_e2e::kube::{
    self,
    agent::{await_record, leaf_sha256, replace, restart_counts, seq, start_agent},
    ControlPlane, APISERVER, CONTROLLER_MANAGER, KUBEADM_CONFIG, SCHEDULER,
};

#[test]
fn kubeadm_certs_renew_apiserver_is_served_without_a_restart() {
    let Some(cp) = kube::shared() else { return };
    let run = start_agent(&cp, "", &[]);
    let agent = &run.agent;
    await_record(
        &cp,
        agent,
        "kube-apiserver converged at start-up",
        Duration::from_secs(60),
        |r| r["event"] == "endpoint_converged" && r["probe"] == "kube-apiserver",
    );
    let restarts = cp.restart_count(APISERVER);

    cp.kubeadm(&["certs", "renew", "apiserver", "--config", KUBEADM_CONFIG])
        .expect("kubeadm certs renew apiserver");
    let renewed_at = Instant::now();
    let renewed = leaf_sha256(&cp.pki().join("apiserver.crt"));

    let accepted = await_record(
        &cp,
        agent,
        "the renewed apiserver certificate accepted",
        Duration::from_secs(60),
        |r| {
            r["event"] == "material_accepted"
                && r["bundle"] == "apiserver"
                && r["new_fingerprint"] == renewed.as_str()
        },
    );
    let generation = accepted["new_generation"].clone();
    let converged = await_record(
        &cp,
        agent,
        "kube-apiserver converged on the renewed certificate",
        Duration::from_secs(120),
        |r| {
            r["event"] == "endpoint_converged"
                && r["probe"] == "kube-apiserver"
                && r["generation"] == generation
        },
    );
    assert_eq!(converged["trigger"], "rotation", "{converged}");
    assert_eq!(
        converged["served_fingerprint"],
        renewed.as_str(),
        "{converged}"
    );
    let seconds = converged["seconds"]
        .as_f64()
        .unwrap_or_else(|| panic!("converged without seconds: {converged}"));
    eprintln!(
        "kube-apiserver: renewed certificate served {seconds:.2} s after the agent accepted it \
         (converged record seen {:.2} s after kubeadm returned)",
        renewed_at.elapsed().as_secs_f64()
    );

    // Seen from outside the agent too: the API server presents the renewed leaf...
    let reply = kube::health::get(
        "127.0.0.1",
        6443,
        "/readyz",
        true,
        "kubernetes",
        Duration::from_secs(10),
    )
    .expect("GET /readyz");
    assert_eq!(reply.leaf_sha256.as_deref(), Some(renewed.as_str()));
    // ...and it reloaded it: nobody restarted it.
    assert_eq!(cp.restart_count(APISERVER), restarts, "no restart");
    assert!(
        !agent.records().iter().any(|r| r["event"] == "action_run"),
        "no action runs for a component that reloads its serving certificate"
    );
    eprintln!("restarts so far: {}", restart_counts(&cp));
    run.agent.stop();
}

/// Restores a component's flag (and restarts it) if the test ends before the action did.
struct RestoreFlag<'a> {
    cp: &'a ControlPlane,
    component: &'static str,
    flag: &'static str,
    value: String,
}

impl Drop for RestoreFlag<'_> {
    fn drop(&mut self) {
        if self
            .cp
            .flag(self.component, self.flag)
            .ok()
            .flatten()
            .as_deref()
            != Some(self.value.as_str())
        {
            // A Drop cannot fail the test (it may be unwinding from a failure already); the
            // control plane is shared by the binary's later tests, so say what is left changed.
            let restored = self
                .cp
                .set_flag(self.component, self.flag, &self.value)
                .and_then(|()| self.cp.restart(self.component));
            if let Err(e) = restored {
                eprintln!(
                    "restoring {} {}={}: {e:#}",
                    self.component, self.flag, self.value
                );
            }
        }
    }
}

/// The controller-manager's CSR signing pair, apart from `ca.crt`.
const SIGNER_CRT: &str = "/etc/kubernetes/pki/cluster-signing-ca.crt";
const SIGNER_KEY: &str = "/etc/kubernetes/pki/cluster-signing-ca.key";

/// The first certificate of a PEM bundle (kubeadm's convention: the signing CA comes first).
fn first_pem(bundle: &str) -> String {
    const END: &str = "-----END CERTIFICATE-----";
    let end = bundle.find(END).expect("a PEM certificate") + END.len();
    format!("{}\n", &bundle[..end])
}

/// kubeadm points the controller-manager's CSR signer at `ca.crt`/`ca.key`, and the signer
/// refuses a file with more than one certificate: a controller-manager that starts while
/// `ca.crt` is an old + new bundle exits ("expected 1 certificate, found 2") and crash-loops.
/// An operator who rotates with a bundle gives the signer a pair of its own first, as this
/// does (idempotent; it takes effect at the controller-manager's next start). Returns whether
/// the manifest changed.
fn give_the_signer_its_own_pair(cp: &ControlPlane) -> bool {
    if cp
        .flag(CONTROLLER_MANAGER, "cluster-signing-cert-file")
        .expect("manifest")
        .as_deref()
        == Some(SIGNER_CRT)
    {
        return false;
    }
    let bundle = std::fs::read_to_string(cp.pki().join("ca.crt")).expect("ca.crt");
    let key = std::fs::read(cp.pki().join("ca.key")).expect("ca.key");
    replace(&cp.path(SIGNER_KEY), &key);
    replace(&cp.path(SIGNER_CRT), first_pem(&bundle).as_bytes());
    cp.set_flag(CONTROLLER_MANAGER, "cluster-signing-cert-file", SIGNER_CRT)
        .expect("edit manifest");
    cp.set_flag(CONTROLLER_MANAGER, "cluster-signing-key-file", SIGNER_KEY)
        .expect("edit manifest");
    true
}

/// Rotates the cluster CA the way an operator does with kubeadm: a new CA made by kubeadm in a
/// scratch root; `ca.crt` becomes new + old (so every certificate of the old CA stays trusted),
/// `ca.key` the new key, the signer's own pair the new CA, each replaced by rename; then
/// apiserver-kubelet-client is renewed by kubeadm from the new CA. Returns the new CA's and the
/// renewed leaf's fingerprints.
fn rotate_cluster_ca(cp: &ControlPlane) -> (String, String) {
    let (new_crt, new_key) = cp
        .new_ca_by_kubeadm("ca", "ca")
        .expect("a new cluster CA from kubeadm");
    let pki = cp.pki();
    let old_crt = std::fs::read_to_string(pki.join("ca.crt")).expect("old ca.crt");
    // The signer (its own single-certificate pair) moves to the new CA; the controller-manager
    // reloads that pair by itself.
    replace(&cp.path(SIGNER_KEY), &new_key);
    replace(&cp.path(SIGNER_CRT), new_crt.as_bytes());
    replace(&pki.join("ca.key"), &new_key);
    replace(
        &pki.join("ca.crt"),
        format!("{new_crt}{old_crt}").as_bytes(),
    );
    // ca.crt now starts with the new CA, so its first certificate's fingerprint is the new CA's.
    let new_ca = leaf_sha256(&pki.join("ca.crt"));
    trust_in_kubeconfigs(cp, &format!("{new_crt}{old_crt}"));
    cp.kubeadm(&[
        "certs",
        "renew",
        "apiserver-kubelet-client",
        "--config",
        KUBEADM_CONFIG,
    ])
    .expect("kubeadm certs renew apiserver-kubelet-client");
    (
        new_ca,
        leaf_sha256(&pki.join("apiserver-kubelet-client.crt")),
    )
}

/// Puts `bundle` in every kubeconfig's `certificate-authority-data`, as kubeadm's manual CA
/// rotation does: the clients (kubectl, controller-manager, scheduler) must trust the new CA
/// before anything serves a certificate from it, or a later `kubeadm certs renew apiserver` (from
/// the new `ca.key`) cuts them off the API server. Processes re-read their kubeconfig when they
/// restart.
fn trust_in_kubeconfigs(cp: &ControlPlane, bundle: &str) {
    use base64::Engine as _;
    let data = base64::engine::general_purpose::STANDARD.encode(bundle);
    for file in [
        "admin.conf",
        "super-admin.conf",
        "controller-manager.conf",
        "scheduler.conf",
    ] {
        let path = cp.path(&format!("/etc/kubernetes/{file}"));
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let rewritten: String = text
            .lines()
            .map(
                |line| match line.split_once("certificate-authority-data:") {
                    Some((indent, _)) => format!("{indent}certificate-authority-data: {data}\n"),
                    None => format!("{line}\n"),
                },
            )
            .collect();
        replace(&path, rewritten.as_bytes());
    }
}

/// The client-CA probes of the kubeadm profile (all on `kubernetes-ca`).
const CLIENT_CA_PROBES: [&str; 3] = [
    "kube-apiserver-client-ca",
    "kube-controller-manager-client-ca",
    "kube-scheduler-client-ca",
];

/// One client-CA trust scenario: `component` runs with `--client-ca-file` pointing at a copy of
/// today's CA that nobody rotates (as a component that read its CA once would behave); the
/// cluster CA is rotated; `probe` must report stale at its (shortened) deadline, the enabled
/// restart action points the manifest back at the rotated `ca.crt` and stops the component, the
/// harness starts it again, and `probe` converges. The other client-CA probes converge by
/// themselves. Prints how long each took.
fn kept_on_the_old_client_ca(cp: &ControlPlane, component: &'static str, probe: &str) {
    const FLAG: &str = "client-ca-file";
    let frozen = format!("/etc/kubernetes/pki/{component}-client-ca-frozen.crt");
    let action_name = format!("{component}-trust-rotated-ca");
    let rotated = cp
        .flag(component, FLAG)
        .expect("manifest")
        .expect("kubeadm sets --client-ca-file");
    std::fs::copy(cp.pki().join("ca.crt"), cp.path(&frozen)).expect("copy ca.crt");
    let _restore = RestoreFlag {
        cp,
        component,
        flag: FLAG,
        value: rotated.clone(),
    };
    let signer_moved = give_the_signer_its_own_pair(cp);
    cp.set_flag(component, FLAG, &frozen)
        .expect("edit manifest");
    cp.restart(component)
        .unwrap_or_else(|e| panic!("{component} restarts on the frozen CA: {e:#}"));
    if signer_moved && component != CONTROLLER_MANAGER {
        cp.restart(CONTROLLER_MANAGER)
            .unwrap_or_else(|e| panic!("controller-manager restarts on its own signer: {e:#}"));
    }

    let manifest = cp.manifest(component);
    let pidfile = cp.pidfile(component);
    let run = start_agent(
        cp,
        &format!(
            r#"
[[probe]]
name = "{probe}"
deadline = "20s"
interval = "5s"

# What an operator enables: point {component} back at the rotated ca.crt and stop it; the
# kubelet (here the harness) starts it again from the manifest.
[[action]]
name = "{action_name}"
bundle = "kubernetes-ca"
on = "stale"
exec = ["/bin/sh", "-c", "sed -i 's#--{FLAG}=.*#--{FLAG}={rotated}#' {manifest} && kill $(cat {pidfile})"]
timeout = "60s"
min_interval = "1s"
"#,
            manifest = manifest.display(),
            pidfile = pidfile.display(),
        ),
        &[],
    );
    let agent = &run.agent;
    await_record(
        cp,
        agent,
        &format!("{probe} trusts the client certificate at start-up"),
        Duration::from_secs(60),
        |r| r["event"] == "endpoint_converged" && r["probe"] == probe && r["trigger"] == "startup",
    );
    let restarts = cp.restart_count(component);
    let leader = cp
        .wait_leading(CONTROLLER_MANAGER, None)
        .expect("controller-manager leads before the rotation");

    let (new_ca, new_client) = rotate_cluster_ca(cp);
    let ca = await_record(
        cp,
        agent,
        "the rotated CA bundle accepted",
        Duration::from_secs(60),
        |r| {
            r["event"] == "material_accepted"
                && r["bundle"] == "kubernetes-ca"
                && r["new_fingerprint"] == new_ca.as_str()
        },
    );
    let client = await_record(
        cp,
        agent,
        "the renewed apiserver-kubelet-client accepted",
        Duration::from_secs(60),
        |r| {
            r["event"] == "material_accepted"
                && r["bundle"] == "apiserver-kubelet-client"
                && r["new_fingerprint"] == new_client.as_str()
        },
    );
    let after = seq(&ca).max(seq(&client));
    // The component answers 401 to a client certificate of the new CA.
    let stale = await_record(
        cp,
        agent,
        &format!("{probe} stale at its deadline"),
        Duration::from_secs(90),
        |r| r["event"] == "endpoint_stale" && r["probe"] == probe && seq(r) > after,
    );
    let action = await_record(
        cp,
        agent,
        "the restart action ran",
        Duration::from_secs(90),
        |r| {
            r["event"] == "action_run"
                && r["action"] == action_name.as_str()
                && seq(r) > seq(&stale)
        },
    );
    assert_eq!(action["success"], true, "{action}");
    let action_seen = Instant::now();
    let converged = await_record(
        cp,
        agent,
        &format!("{probe} converged after the restart"),
        Duration::from_secs(120),
        |r| r["event"] == "endpoint_converged" && r["probe"] == probe && seq(r) > seq(&action),
    );
    assert!(
        cp.restart_count(component) > restarts,
        "the action restarted {component}"
    );
    assert_eq!(
        cp.flag(component, FLAG).expect("manifest").as_deref(),
        Some(rotated.as_str())
    );
    eprintln!(
        "{probe}: stale at {:.1} s ({}), restart action ({:.1} s), converged {:.1} s after the CA was accepted",
        stale["seconds"].as_f64().unwrap_or_default(),
        stale["observed"],
        action["duration_s"].as_f64().unwrap_or_default(),
        converged["seconds"].as_f64().unwrap_or_default(),
    );
    // The other components trust the new CA without a restart (the API server reloads its
    // client CA file; the scheduler, given no --client-ca-file, reads the API server's
    // extension-apiserver-authentication ConfigMap).
    for other in CLIENT_CA_PROBES.into_iter().filter(|p| *p != probe) {
        let r = await_record(
            cp,
            agent,
            &format!("{other} converged on the new client certificate"),
            Duration::from_secs(180),
            |r| r["event"] == "endpoint_converged" && r["probe"] == other && seq(r) > after,
        );
        eprintln!(
            "{other}: converged {:.1} s after the CA was accepted",
            r["seconds"].as_f64().unwrap_or_default()
        );
    }
    // Restarted or not, the controller-manager and the scheduler work on the rotated CA: they
    // lead (kube-controller-manager exits right after winning its Lease when it cannot build its
    // controllers).
    let previous = (component == CONTROLLER_MANAGER).then_some(leader.holder.as_str());
    cp.wait_leading(CONTROLLER_MANAGER, previous)
        .expect("controller-manager leads after the rotation");
    cp.wait_leading(SCHEDULER, None)
        .expect("scheduler leads after the rotation");
    eprintln!(
        "controller-manager and scheduler lead again {:.1} s after the action",
        action_seen.elapsed().as_secs_f64()
    );
    eprintln!("restarts so far: {}", restart_counts(cp));
    run.agent.stop();
}

#[test]
fn controller_manager_kept_on_the_old_client_ca_goes_stale_and_the_restart_action_converges_it() {
    let Some(cp) = kube::shared() else { return };
    kept_on_the_old_client_ca(&cp, CONTROLLER_MANAGER, "kube-controller-manager-client-ca");
}

#[test]
fn apiserver_kept_on_the_old_client_ca_goes_stale_and_the_restart_action_converges_it() {
    let Some(cp) = kube::shared() else { return };
    kept_on_the_old_client_ca(&cp, APISERVER, "kube-apiserver-client-ca");
}
