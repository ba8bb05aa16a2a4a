//! Restart actions that take turns through a Lease, on the REAL control plane
//! (`certreload_e2e::kube`, Kubernetes built from source): two agents, standing for two
//! control-plane nodes (node names `cr-lock-a` and `cr-lock-b`, own audit logs), watch the same
//! kube-apiserver certificate, and each has an enabled restart action for it with
//! `lock = "kube-apiserver"`. `kubeadm certs renew apiserver` triggers both at once
//! (`on = "accepted"`). The action restarts the real kube-apiserver the way `crictl stop` does on
//! a node: SIGTERM through the pid file and wait until the process is gone; **the harness stands
//! in for the kubelet** and starts it again from its static-pod manifest.
//!
//! The agents talk to that same API server for the Lease, with a token of deploy/'s
//! ServiceAccount (so the Role in deploy/rbac.yaml is what allows it). While the first agent's
//! restart has the API server down, the second cannot even read the Lease: it must wait, never
//! run unlocked.
//!
//! Asserted from the two audit logs: both actions ran (and the API server was restarted twice);
//! each ran inside its agent's hold (`lock_acquired` … `action_run` … `lock_released`); the two
//! holds never overlap (`acquired_at` is written after the API server confirmed the hold,
//! `held_until` before the release is sent, so each audited interval lies inside the real hold);
//! the second agent audited why it waited. The figures printed (hold times, hand-over) are
//! measurements for docs/kubernetes.md, never assertions.
//!
//! One control plane per test binary: run real-cluster binaries under
//! `flock /tmp/certreload-cp.lock` (the API server's port is fixed).

use std::{
    path::Path,
    time::{Duration, Instant},
};

use certreload_e2e::kube::identity::{apply_identity, poll_json, token_kubeconfig};
use certreload_e2e::{
    kube::{
        self,
        agent::{await_record_of, seq},
        ControlPlane, APISERVER, KUBEADM_CONFIG,
    },
    Agent,
};
use serde_json::Value;

const LEASE: &str = "certreload-action-kube-apiserver";

/// One agent standing for one control-plane node.
struct Node {
    name: &'static str,
    agent: Agent,
}

fn start_node(cp: &ControlPlane, dir: &Path, name: &'static str, kubeconfig: &Path) -> Node {
    let audit = dir.join(format!("{name}.audit.jsonl"));
    let pki = cp.pki();
    // What `crictl stop` does: stop the container and return once it is gone.
    let restart = format!(
        "pid=$(cat {pidfile}) && kill -TERM \"$pid\" && while kill -0 \"$pid\" 2>/dev/null; do sleep 0.1; done; echo \"stopped kube-apiserver $pid\"",
        pidfile = cp.pidfile(APISERVER).display()
    );
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            r#"[agent]
admin = "127.0.0.1:0"
[audit]
path = "{audit}"
[events]
# The node name (the Lease's holderIdentity); Events stay off.
node = "{name}"
[[bundle]]
name = "apiserver"
kind = "server"
cert = "{pki}/apiserver.crt"
key = "{pki}/apiserver.key"
ca = "{pki}/ca.crt"
[[probe]]
# Converged = serves the current certificate AND answers /readyz with 200: the API server is back.
name = "kube-apiserver"
endpoint = "127.0.0.1:6443"
server_name = "kubernetes"
bundle = "apiserver"
check = "http"
request = "GET /readyz"
deadline = "240s"
[[action]]
name = "kube-apiserver-restart"
bundle = "apiserver"
on = "accepted"
lock = "kube-apiserver"
lock_wait = "10m"
timeout = "120s"
exec = ["/bin/sh", "-c", {restart:?}]
"#,
            audit = audit.display(),
            pki = pki.display(),
        ),
    )
    .expect("write config");
    let env = format!("KUBECONFIG={}", kubeconfig.display());
    let agent = Agent::start_wrapped(
        &["env", "-u", "KUBERNETES_SERVICE_HOST", &env],
        &config,
        &audit,
        &[],
    );
    Node { name, agent }
}

/// Seconds since the Unix epoch of an audit timestamp (`2026-11-30T01:02:03.456789Z`).
fn epoch_seconds(ts: &str) -> f64 {
    let parse = |s: &str| -> i64 {
        s.parse()
            .unwrap_or_else(|e| panic!("timestamp {ts:?}: {s:?}: {e}"))
    };
    let (date, time) = ts
        .trim_end_matches('Z')
        .split_once('T')
        .unwrap_or_else(|| panic!("timestamp {ts:?}"));
    let d: Vec<i64> = date.split('-').map(parse).collect();
    let (y, m, day) = (d[0], d[1], d[2]);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms.split(':').map(parse).collect();
    let micros: f64 = format!("0.{frac}").parse().unwrap_or(0.0);
    (days * 86_400 + t[0] * 3600 + t[1] * 60 + t[2]) as f64 + micros
}

/// One node's hold of the lock for generation 2, read from its audit log.
struct Hold {
    node: &'static str,
    acquired: Value,
    ran: Value,
    released: Value,
    records: Vec<Value>,
}

impl Hold {
    fn from(node: &Node) -> Hold {
        let records = node.agent.records();
        let one = |event: &str| -> Value {
            let found: Vec<&Value> = records
                .iter()
                .filter(|r| r["event"] == event && r["generation"] == 2)
                .collect();
            assert_eq!(
                found.len(),
                1,
                "{}: exactly one {event} for generation 2: {found:#?}",
                node.name
            );
            found[0].clone()
        };
        Hold {
            node: node.name,
            acquired: one("lock_acquired"),
            ran: one("action_run"),
            released: one("lock_released"),
            records,
        }
    }

    fn start(&self) -> f64 {
        epoch_seconds(self.acquired["acquired_at"].as_str().expect("acquired_at"))
    }

    fn end(&self) -> f64 {
        epoch_seconds(self.released["held_until"].as_str().expect("held_until"))
    }
}

#[test]
fn two_nodes_restart_the_api_server_in_turn_never_together() {
    let Some(cp) = kube::shared() else { return };
    apply_identity(&cp);
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = token_kubeconfig(&cp, dir.path());
    // No hold from an earlier run of this control plane.
    cp.kubectl(&[
        "delete",
        "lease",
        LEASE,
        "-n",
        "certreload",
        "--ignore-not-found",
    ])
    .expect("kubectl delete lease");

    let a = start_node(&cp, dir.path(), "cr-lock-a", &kubeconfig);
    let b = start_node(&cp, dir.path(), "cr-lock-b", &kubeconfig);
    let agents = [(a.name, &a.agent), (b.name, &b.agent)];
    for n in 0..agents.len() {
        await_record_of(
            &cp,
            &agents,
            n,
            "kube-apiserver converged at start-up",
            Duration::from_secs(120),
            |r| r["event"] == "endpoint_converged" && r["probe"] == "kube-apiserver",
        );
    }
    let restarts = cp.restart_count(APISERVER);

    let renewed_at = Instant::now();
    cp.kubeadm(&["certs", "renew", "apiserver", "--config", KUBEADM_CONFIG])
        .expect("kubeadm certs renew apiserver");
    for n in 0..agents.len() {
        await_record_of(
            &cp,
            &agents,
            n,
            "the lock released after generation 2's restart",
            Duration::from_secs(600),
            |r| r["event"] == "lock_released" && r["generation"] == 2,
        );
    }
    let all_done = renewed_at.elapsed();
    cp.wait_ready(APISERVER)
        .expect("kube-apiserver ready again");

    let mut holds = [Hold::from(&a), Hold::from(&b)];
    holds.sort_by(|x, y| x.start().total_cmp(&y.start()));
    let [first, second] = &holds;
    for h in &holds {
        // Inside the hold: acquired, the restart, the probe settled, released, in that order.
        assert!(
            seq(&h.acquired) < seq(&h.ran) && seq(&h.ran) < seq(&h.released),
            "{}: the action ran outside its hold:\n{:#}\n{:#}\n{:#}",
            h.node,
            h.acquired,
            h.ran,
            h.released
        );
        assert_eq!(h.ran["success"], true, "{}: {}", h.node, h.ran);
        assert_eq!(h.acquired["holder"], h.node, "{}", h.acquired);
        assert_eq!(
            h.acquired["lease"],
            format!("certreload/{LEASE}"),
            "{}",
            h.acquired
        );
        assert_eq!(h.released["released"], true, "{}: {}", h.node, h.released);
        let probes = h.released["probes"].as_array().expect("probes");
        assert!(
            probes.len() == 1 && probes[0]["converged"] == true,
            "{}: the lock was held until kube-apiserver was back: {}",
            h.node,
            h.released
        );
        assert!(h.start() < h.end(), "{}: empty hold", h.node);
    }
    assert!(
        first.end() < second.start(),
        "the holds overlap: {} held [{}, {}], {} held [{}, {}]",
        first.node,
        first.acquired["acquired_at"],
        first.released["held_until"],
        second.node,
        second.acquired["acquired_at"],
        second.released["held_until"]
    );
    // The second node waited, and said why (held by the first, or no API server while the first
    // restarted it), before its hold.
    let waits: Vec<&Value> = second
        .records
        .iter()
        .filter(|r| r["event"] == "lock_wait" && r["generation"] == 2)
        .collect();
    assert!(
        !waits.is_empty() && waits.iter().all(|w| seq(w) < seq(&second.acquired)),
        "{} took the lock without waiting for {}: {waits:#?}",
        second.node,
        first.node
    );
    for w in &waits {
        assert!(
            w["holder"].is_null() || w["holder"] == first.node,
            "{}: waited for a holder that is not {}: {w}",
            second.node,
            first.node
        );
    }
    assert_eq!(
        cp.restart_count(APISERVER) - restarts,
        2,
        "each node's action restarted kube-apiserver once"
    );
    // The Lease is free again, and changed hands.
    let lease = poll_json(
        &cp,
        &["get", "lease", LEASE, "-n", "certreload"],
        "the lock's Lease",
        Duration::from_secs(30),
        |l| Some(l.clone()),
    );
    assert!(
        lease["spec"]["holderIdentity"].is_null(),
        "released: {lease:#}"
    );
    assert!(
        lease["spec"]["leaseTransitions"].as_i64().unwrap_or(0) >= 1,
        "{lease:#}"
    );

    println!(
        "lock figures: {} waited {:.1}s, held {:.1}s (restart {:.1}s); hand-over {:.3}s; {} waited {:.1}s ({} lock_wait records: {}), held {:.1}s (restart {:.1}s); renewal to both released {:.1}s",
        first.node,
        first.acquired["waited_s"].as_f64().unwrap_or(-1.0),
        first.released["held_s"].as_f64().unwrap_or(-1.0),
        first.ran["duration_s"].as_f64().unwrap_or(-1.0),
        second.start() - first.end(),
        second.node,
        second.acquired["waited_s"].as_f64().unwrap_or(-1.0),
        waits.len(),
        waits
            .iter()
            .map(|w| w["reason"].as_str().unwrap_or_default().to_string())
            .collect::<Vec<_>>()
            .join(" | "),
        second.released["held_s"].as_f64().unwrap_or(-1.0),
        second.ran["duration_s"].as_f64().unwrap_or(-1.0),
        all_done.as_secs_f64()
    );
    for n in [a, b] {
        n.agent.stop();
    }
}
