//! `cargo xtask bench propagation` (issue 12): how long after a key change on disk the last pod on
//! the REAL node holds a token signed by the new key, with certreload and with stock Kubernetes,
//! measured in the same run on the same control plane and node. A `harness = false` bench target
//! (tests/Cargo.toml), not a test: xtask runs it (it takes about a quarter of an hour).
//!
//! Each configuration gets a fresh workload of N pods (`CERTRELOAD_BENCH_PODS`, default 20) and a
//! careful SA key rotation: a new key pair; `sa.pub` = old + new and the API server restarted;
//! then `sa.key` = the new key (**t0**, where every figure starts) and the API server restarted by
//! the operator (the harness; kube-apiserver's graceful shutdown takes its full 60 s HTTP shutdown
//! timeout while clients hold watches). From t0 every pod's token file is read every 100 ms until it
//! carries the new kid, for at most the cap (`CERTRELOAD_BENCH_CAP_S`, default 300 s: the seed's
//! promise); a pod not there by then is reported as "> cap", never as a number.
//!
//! - **stock**: no agent. The kubelet refreshes a projected token only at 80 % of its requested
//!   lifetime (3,607 s: about 48 min), so within the cap it does not.
//! - **certreload**: the agent as the kubeadm profile configures it on a control-plane node
//!   (deploy/'s identity): `[sa_keys]` publish + follow, `[pod_tokens]` with its defaults (rescan
//!   10 s, grace 30 s, deadline 5 min) and `kubelet-restart-on-stale-tokens` enabled (min_interval
//!   2 min, lock `kubelet`), its `systemctl restart kubelet` replaced by the harness's restart
//!   script.
//!
//! The same for a **root-CA rotation**, to the last pod's `ca.crt` (beside its token) holding
//! every certificate of the new `pki/ca.crt`: the controller-manager's CSR signer first gets a
//! file of its own with the old CA (as the upstream manual rotation does), then a new CA made by
//! kubeadm is appended to `ca.crt` (**t0**).
//! - **stock**: no agent; the operator restarts kube-controller-manager right after the change
//!   (it reads `--root-ca-file` once; without the restart no namespace's `kube-root-ca.crt` ever
//!   changes, tests/tests/kube_root_ca.rs), and the kubelet updates `ca.crt` on its own.
//! - **certreload**: the same agent, also with `kube-controller-manager-restart-on-root-ca`
//!   enabled (the profile's `kube-root-ca-configmaps` probe, deadline 60 s, decides when),
//!   `[pod_tokens] cluster_ca = "kubernetes-ca"` (the profile's), no operator.
//! - **certreload, probe deadline 20 s**: the same with that probe's deadline shortened, to show
//!   what the deadline costs.
//!
//! Tokens are never printed (key ids and times only).

use std::{
    collections::BTreeSet,
    path::Path,
    time::{Duration, Instant},
};

use certreload_e2e::{
    kube::{
        self,
        agent::{await_record, replace, start_agent, Run},
        identity::{apply_identity, ensure_namespace, token_kubeconfig},
        node::{self, Node},
        pods::{
            cert_fingerprints, give_the_signer_its_own_certificate, p50_max, publish_alongside,
            switch_signing, SaKey, Workload,
        },
        ControlPlane, APISERVER, CONTROLLER_MANAGER,
    },
    Agent,
};
use serde_json::Value;

/// The seed's promise: tokens current within 5 minutes of the key change.
const PROMISE: Duration = Duration::from_secs(300);
const KUBELET_ACTION: &str = "kubelet-restart-on-stale-tokens";
const KCM_ACTION: &str = "kube-controller-manager-restart-on-root-ca";
/// A shorter deadline for the root-CA probe, measured beside the profile's 60 s.
const SHORT_DEADLINE_S: u64 = 20;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What one configuration measured.
struct Measured {
    label: String,
    /// Per pod: from t0 to its file carrying the change (`None`: not within the cap).
    per_pod: Vec<Option<Duration>>,
    /// The control-plane restart the change needs, and when after t0 it was done.
    restart: String,
    /// From t0 to each action's `action_run` record (certreload only).
    actions: Vec<(String, Duration)>,
}

/// The careful rotation's first step, then t0: the new signing key on disk, and the operator's
/// API server restart. Returns the key, t0 and how long after it the API server was ready again.
fn rotate_sa(cp: &ControlPlane, dir: &Path) -> (SaKey, Instant, Duration) {
    let key = SaKey::generate(dir).expect("a new SA key");
    publish_alongside(cp, &key).expect("sa.pub = old + new, API server restarted");
    let t0 = switch_signing(cp, &key);
    cp.restart(APISERVER)
        .expect("the API server restarts with the new signing key");
    (key, t0, t0.elapsed())
}

/// A new cluster CA made by kubeadm appended to `ca.crt` (t0); the new bundle's fingerprints.
fn rotate_ca(cp: &ControlPlane) -> (BTreeSet<String>, Instant) {
    let (new_pem, _key) = cp
        .new_ca_by_kubeadm("ca", "ca")
        .expect("a new cluster CA from kubeadm");
    let path = cp.pki().join("ca.crt");
    let bundle = format!(
        "{}{new_pem}",
        std::fs::read_to_string(&path).expect("ca.crt")
    );
    replace(&path, bundle.as_bytes());
    (cert_fingerprints(&bundle), Instant::now())
}

/// Every 100 ms from t0 until `done` holds for every pod or `cap` passed: per pod, when `done`
/// first held; with an agent, when each of its actions' `action_run` records appeared.
fn watch(
    work: &Workload,
    t0: Instant,
    cap: Duration,
    agent: Option<&Agent>,
    done: impl Fn(&Workload) -> Vec<bool>,
) -> (Vec<Option<Duration>>, Vec<(String, Duration)>) {
    let mut per_pod = vec![None; work.pods.len()];
    let mut actions: Vec<(String, Duration)> = Vec::new();
    loop {
        let now = t0.elapsed();
        for (slot, ok) in per_pod.iter_mut().zip(done(work)) {
            if slot.is_none() && ok {
                *slot = Some(now);
            }
        }
        if let Some(a) = agent {
            let runs: Vec<String> = a
                .records()
                .iter()
                .filter(|r| r["event"] == "action_run")
                .map(|r| r["action"].as_str().unwrap_or_default().to_string())
                .collect();
            for name in runs.into_iter().skip(actions.len()) {
                actions.push((name, now));
            }
        }
        if per_pod.iter().all(Option::is_some) || now >= cap {
            return (per_pod, actions);
        }
        // Files change on the kubelet's schedule: read them again shortly.
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn has_kid(kid: &str) -> impl Fn(&Workload) -> Vec<bool> + '_ {
    move |w| {
        w.tokens()
            .into_iter()
            .map(|t| t.is_some_and(|t| t.kid == kid))
            .collect()
    }
}

fn holds(bundle: &BTreeSet<String>) -> impl Fn(&Workload) -> Vec<bool> + '_ {
    move |w| {
        w.ca_bundles()
            .into_iter()
            .map(|b| b.is_some_and(|b| b.is_superset(bundle)))
            .collect()
    }
}

fn sa_stock(cp: &ControlPlane, node: &Node, n: usize, cap: Duration) -> Measured {
    let work = Workload::start(node, "bench-sa-stock", n).expect("the workload");
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, t0, ready) = rotate_sa(cp, dir.path());
    let (per_pod, _) = watch(&work, t0, cap, None, has_kid(&key.kid));
    work.delete(node).expect("the workload is deleted");
    Measured {
        label: "stock (no agent)".to_string(),
        per_pod,
        restart: format!(
            "API server by the operator, ready {:.1} s",
            ready.as_secs_f64()
        ),
        actions: Vec::new(),
    }
}

fn ca_stock(cp: &ControlPlane, node: &Node, n: usize, cap: Duration) -> Measured {
    let work = Workload::start(node, "bench-ca-stock", n).expect("the workload");
    let (bundle, t0) = rotate_ca(cp);
    cp.restart(CONTROLLER_MANAGER)
        .expect("the controller-manager restarts");
    let ready = t0.elapsed();
    let (per_pod, _) = watch(&work, t0, cap, None, holds(&bundle));
    work.delete(node).expect("the workload is deleted");
    Measured {
        label: "stock (no agent)".to_string(),
        per_pod,
        restart: format!(
            "controller-manager by the operator, /healthz 200 at {:.1} s",
            ready.as_secs_f64()
        ),
        actions: Vec::new(),
    }
}

/// The agent as the kubeadm profile configures it on this control-plane node, with the two
/// refresh actions enabled (commands: the harness's kubelet restart script, and a kill of the
/// controller-manager through its pid file, the harness starting it again).
fn start(cp: &ControlPlane, node: &Node, dir: &Path, extra: &str) -> Run {
    apply_identity(cp);
    ensure_namespace(cp, "certreload");
    let kubeconfig = token_kubeconfig(cp, dir);
    let overlay = format!(
        r#"
[sa_keys]
publish = "sa"
follow = true

[pod_tokens]
pods_dir = "{pods}"
cluster_ca = "kubernetes-ca"

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
{extra}"#,
        pods = node.kubelet_root().join("pods").display(),
        script = node.restart_script().display(),
        pidfile = cp.pidfile(CONTROLLER_MANAGER).display(),
    );
    let run = start_agent(
        cp,
        &overlay,
        &[format!("KUBECONFIG={}", kubeconfig.display())],
    );
    await_record(
        cp,
        &run.agent,
        "the key identity followed at start",
        Duration::from_secs(60),
        |r| r["event"] == "sa_keys_followed",
    );
    run
}

/// Prints why each action ran (the stale verdicts and the runs' triggers), for reading the
/// figures: key ids and namespaces only, never a token.
fn explain(records: &[Value]) {
    for r in records {
        let line = match r["event"].as_str() {
            Some("endpoint_stale") => format!(
                "  endpoint_stale probe {} observed {}",
                r["probe"], r["observed"]
            ),
            Some("action_run") => format!(
                "  action_run {} trigger {} generation {} success {}",
                r["action"], r["trigger"], r["generation"], r["success"]
            ),
            Some("lock_wait" | "lock_acquired") => {
                format!("  {} {} {}", r["event"], r["action"], r["reason"])
            }
            _ => continue,
        };
        eprintln!("{line}");
    }
}

fn sa_agent(cp: &ControlPlane, node: &Node, n: usize, cap: Duration) -> Measured {
    let work = Workload::start(node, "bench-sa-agent", n).expect("the workload");
    let dir = tempfile::tempdir().expect("tempdir");
    let run = start(cp, node, dir.path(), "");
    let (key, t0, ready) = rotate_sa(cp, dir.path());
    let (per_pod, actions) = watch(&work, t0, cap, Some(&run.agent), has_kid(&key.kid));
    explain(&run.stop());
    work.delete(node).expect("the workload is deleted");
    Measured {
        label: "certreload (kubeadm profile)".to_string(),
        per_pod,
        restart: format!(
            "API server by the operator, ready {:.1} s",
            ready.as_secs_f64()
        ),
        actions,
    }
}

/// The root-CA rotation with the agent; `deadline`: the `kube-root-ca-configmaps` probe's
/// deadline (`None`: the profile's 60 s), after which its stale verdict restarts the
/// controller-manager.
fn ca_agent(
    cp: &ControlPlane,
    node: &Node,
    n: usize,
    cap: Duration,
    deadline: Option<u64>,
) -> Measured {
    let namespace = match deadline {
        None => "bench-ca-agent".to_string(),
        Some(s) => format!("bench-ca-agent-{s}s"),
    };
    let work = Workload::start(node, &namespace, n).expect("the workload");
    let dir = tempfile::tempdir().expect("tempdir");
    let extra = deadline.map_or_else(String::new, |s| {
        format!("\n[[probe]]\nname = \"kube-root-ca-configmaps\"\ndeadline = \"{s}s\"\n")
    });
    let run = start(cp, node, dir.path(), &extra);
    await_record(
        cp,
        &run.agent,
        "every namespace's kube-root-ca.crt current at start",
        Duration::from_secs(120),
        |r| r["event"] == "endpoint_converged" && r["probe"] == "kube-root-ca-configmaps",
    );
    let (bundle, t0) = rotate_ca(cp);
    let (per_pod, actions) = watch(&work, t0, cap, Some(&run.agent), holds(&bundle));
    explain(&run.stop());
    work.delete(node).expect("the workload is deleted");
    Measured {
        label: deadline.map_or_else(
            || "certreload (kubeadm profile)".to_string(),
            |s| format!("certreload, probe deadline {s} s"),
        ),
        per_pod,
        restart: "controller-manager by the agent's action".to_string(),
        actions,
    }
}

fn cell(v: Option<f64>, cap: Duration) -> String {
    v.map_or_else(|| format!("> {} s", cap.as_secs()), |s| format!("{s:.1} s"))
}

fn print(what: &str, results: &[Measured], n: usize, cap: Duration) {
    println!(
        "\ncertreload bench propagation: {what}; {n} pods on the real kubelet (v1.37.2, \
         containerd 1.6, runc); read every 100 ms, cap {} s",
        cap.as_secs()
    );
    println!(
        "{:<30} {:>10} {:>10} {:>10}  control-plane restart; actions run at",
        "configuration", "p50", "max", "max/5 min"
    );
    for m in results {
        let (p50, max) = p50_max(&m.per_pod);
        let ratio = max.map_or_else(
            || format!("> {:.2}", cap.as_secs_f64() / PROMISE.as_secs_f64()),
            |s| format!("{:.2}", s / PROMISE.as_secs_f64()),
        );
        let actions = m
            .actions
            .iter()
            .map(|(name, d)| format!("{name} {:.1} s", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ");
        println!(
            "{:<30} {:>10} {:>10} {:>10}  {}; {}",
            m.label,
            cell(p50, cap),
            cell(max, cap),
            ratio,
            m.restart,
            if actions.is_empty() {
                "-".to_string()
            } else {
                actions
            }
        );
    }
    let Some((stock, agents)) = results.split_first() else {
        return;
    };
    let (sp, sm) = p50_max(&stock.per_pod);
    for agent in agents {
        let (ap, am) = p50_max(&agent.per_pod);
        let ratio = |s: Option<f64>, a: Option<f64>| match (s, a) {
            (Some(s), Some(a)) => format!("{:.2}x", s / a),
            (None, Some(a)) => format!("> {:.1}x", cap.as_secs_f64() / a),
            _ => "n/a (certreload not within the cap)".to_string(),
        };
        println!(
            "stock / {}: p50 {}, max {}",
            agent.label,
            ratio(sp, ap),
            ratio(sm, am)
        );
    }
}

/// `cargo xtask bench propagation` runs this target (`cargo bench --bench propagation`; a
/// `harness = false` bench, so `cargo test` never runs it and nothing is marked ignored).
fn main() {
    if let Some(why) = node::missing() {
        panic!("the benchmark needs the real node: {why}");
    }
    let n = env_or("CERTRELOAD_BENCH_PODS", 20) as usize;
    let cap = Duration::from_secs(env_or("CERTRELOAD_BENCH_CAP_S", PROMISE.as_secs()));
    let Some(cp) = kube::shared() else {
        panic!("the benchmark needs the kubeadm control plane (root, CERTRELOAD_PEERS)")
    };
    let node = Node::start(&cp).unwrap_or_else(|e| panic!("the node did not come up: {e:#}"));
    // `CERTRELOAD_BENCH_ONLY=sa|ca` runs one half (for working on the benchmark itself).
    let only = std::env::var("CERTRELOAD_BENCH_ONLY").unwrap_or_default();
    if only != "ca" {
        let sa = [sa_stock(&cp, &node, n, cap), sa_agent(&cp, &node, n, cap)];
        print(
            "careful SA key rotation, sa.key switched on disk -> each pod's token with the new kid",
            &sa,
            n,
            cap,
        );
    }
    if only == "sa" {
        return;
    }
    give_the_signer_its_own_certificate(&cp);
    let ca = [
        ca_stock(&cp, &node, n, cap),
        ca_agent(&cp, &node, n, cap, None),
        ca_agent(&cp, &node, n, cap, Some(SHORT_DEADLINE_S)),
    ];
    print(
        "root-CA rotation, a new CA appended to ca.crt -> each pod's ca.crt holding the bundle",
        &ca,
        n,
        cap,
    );
    drop(node);
}
