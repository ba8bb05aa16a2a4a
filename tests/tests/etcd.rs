//! Convergence probes and reload actions against a real etcd (Debian's etcd-server) with TLS and
//! client-certificate authentication on loopback.
//!
//! etcd re-reads its serving certificate on every handshake, so a server rotation converges with
//! no action. It cannot reload the CA it trusts for clients: after that rotation the probe goes
//! stale at its (shortened) deadline, the action restarts the test's etcd, and the probe converges.

use std::{
    fs,
    net::{TcpListener, TcpStream},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use certreload_e2e::pki::{Leaf, TestCa};
use certreload_e2e::{skip_unless, Agent};
use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
use serde_json::Value;

const ETCD: &str = "/usr/bin/etcd";

/// A leaf for localhost/127.0.0.1 usable as server and client (like kubeadm's etcd certificates).
fn leaf(ca: &TestCa, cn: &str) -> (String, String) {
    ca.issue(
        &Leaf::server(cn)
            .sans(&["localhost", "127.0.0.1"])
            .eku(&[ServerAuth, ClientAuth]),
    )
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Writes `content` to `path` the way tools do: a temporary file renamed over it.
fn replace(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, content).expect("write");
    fs::rename(&tmp, path).expect("rename");
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "etcd does not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Etcd<'a>(&'a Path);

impl Drop for Etcd<'_> {
    fn drop(&mut self) {
        if let Ok(pid) = fs::read_to_string(self.0.join("etcd.pid")) {
            // Best effort from a Drop: etcd may have exited already.
            Command::new("kill").arg(pid.trim()).status().ok();
        }
    }
}

fn seq_of(records: &[Value], what: &str, pred: impl Fn(&Value) -> bool) -> u64 {
    records
        .iter()
        .find(|r| pred(r))
        .and_then(|r| r["seq"].as_u64())
        .unwrap_or_else(|| panic!("no record {what}"))
}

#[test]
fn etcd_server_rotation_converges_alone_and_client_ca_rotation_needs_the_restart_action() {
    skip_unless!(
        certreload_e2e::ensure_package("etcd-server", ETCD),
        "etcd is needed (etcd-server: cargo xtask setup installs it; root with apt-get lets this test install it)"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let p = |n: &str| d.join(n);
    let ca1 = TestCa::new("etcd-ca-1");
    let ca2 = TestCa::new("etcd-ca-2");
    let (ca1_pem, ca2_pem) = (ca1.pem.clone(), ca2.pem.clone());
    let (s1, s1_key) = leaf(&ca1, "etcd-server-1");
    let (peer, peer_key) = leaf(&ca1, "etcd-peer");
    let (c1, c1_key) = leaf(&ca1, "healthcheck-client-1");
    for (name, content) in [
        ("server.crt", &s1),
        ("server.key", &s1_key),
        ("server-ca.crt", &ca1_pem),
        ("peer.crt", &peer),
        ("peer.key", &peer_key),
        ("peer-ca.crt", &ca1_pem),
        ("ca.crt", &ca1_pem),
        ("client.crt", &c1),
        ("client.key", &c1_key),
    ] {
        fs::write(p(name), content).expect("write");
    }
    let (client_port, peer_port) = (free_port(), free_port());
    let d_str = d.display().to_string();
    let script = p("restart-etcd.sh");
    fs::write(
        &script,
        format!(
            r#"#!/bin/sh
# Restarts the test's etcd (what an operator's `crictl stop etcd` does on a kubeadm node).
D={d_str}
if [ -f "$D/etcd.pid" ]; then
  old=$(cat "$D/etcd.pid")
  kill "$old" 2>/dev/null || true
  for i in $(seq 1 200); do kill -0 "$old" 2>/dev/null || break; sleep 0.05; done
fi
setsid {ETCD} --name t --data-dir "$D/data" \
  --listen-client-urls https://127.0.0.1:{client_port} --advertise-client-urls https://127.0.0.1:{client_port} \
  --listen-peer-urls https://127.0.0.1:{peer_port} --initial-advertise-peer-urls https://127.0.0.1:{peer_port} \
  --initial-cluster t=https://127.0.0.1:{peer_port} \
  --cert-file "$D/server.crt" --key-file "$D/server.key" \
  --client-cert-auth --trusted-ca-file "$D/ca.crt" \
  --peer-cert-file "$D/peer.crt" --peer-key-file "$D/peer.key" \
  --peer-client-cert-auth --peer-trusted-ca-file "$D/peer-ca.crt" \
  >>"$D/etcd.log" 2>&1 </dev/null &
echo $! > "$D/etcd.pid"
echo "etcd started as $!"
"#
        ),
    )
    .expect("write");
    let started = Command::new("/bin/sh").arg(&script).status().expect("sh");
    assert!(started.success());
    let _etcd = Etcd(d);
    wait_for_port(client_port);

    let audit = p("audit.jsonl");
    let config = format!(
        r#"
[agent]
admin = "127.0.0.1:0"
pair_timeout = "10s"
[audit]
path = "{audit}"
[[bundle]]
name = "etcd-server"
kind = "server"
cert = "{d_str}/server.crt"
key = "{d_str}/server.key"
ca = "{d_str}/server-ca.crt"
[[bundle]]
name = "etcd-healthcheck-client"
kind = "client"
cert = "{d_str}/client.crt"
key = "{d_str}/client.key"
ca = "{d_str}/ca.crt"
[[bundle]]
name = "etcd-ca"
kind = "ca"
cert = "{d_str}/ca.crt"
[[probe]]
name = "etcd-client-port"
endpoint = "127.0.0.1:{client_port}"
server_name = "localhost"
bundle = "etcd-server"
client_bundle = "etcd-healthcheck-client"
deadline = "10s"
interval = "1s"
[[probe]]
name = "etcd-client-trust"
endpoint = "127.0.0.1:{client_port}"
server_name = "localhost"
bundle = "etcd-ca"
client_bundle = "etcd-healthcheck-client"
deadline = "3s"
interval = "1s"
[[action]]
bundle = "etcd-ca"
on = "stale"
exec = ["/bin/sh", "{script}"]
timeout = "30s"
min_interval = "1s"
"#,
        audit = audit.display(),
        script = script.display(),
    );
    fs::write(p("certreload.toml"), config).expect("write");
    let agent = Agent::start(&p("certreload.toml"), &audit, &[]);

    // Start-up: both probes see etcd reflect generation 1.
    for probe in ["etcd-client-port", "etcd-client-trust"] {
        agent.expect_record(&format!("{probe} converged at start-up"), |r| {
            r["event"] == "endpoint_converged" && r["probe"] == probe && r["generation"] == 1
        });
    }

    // 1. Server certificate rotation: etcd picks it up per handshake; no action runs.
    let (s2, s2_key) = leaf(&ca1, "etcd-server-2");
    replace(&p("server.key"), &s2_key);
    replace(&p("server.crt"), &s2);
    let accepted = agent.expect_record("etcd-server generation 2", |r| {
        r["event"] == "material_accepted"
            && r["bundle"] == "etcd-server"
            && r["new_generation"] == 2
    });
    let converged = agent.expect_record("etcd-client-port converged on generation 2", |r| {
        r["event"] == "endpoint_converged"
            && r["probe"] == "etcd-client-port"
            && r["generation"] == 2
            && r["trigger"] == "rotation"
    });
    assert_eq!(
        converged["served_fingerprint"], accepted["new_fingerprint"],
        "etcd serves the new leaf"
    );
    assert!(
        !agent.records().iter().any(|r| r["event"] == "action_run"),
        "no action for a component that reloads by itself"
    );

    // 2. Client-CA rotation: CA2 only, and a healthcheck client certificate from CA2.
    let (c2, c2_key) = leaf(&ca2, "healthcheck-client-2");
    replace(&p("client.key"), &c2_key);
    replace(&p("client.crt"), &c2);
    replace(&p("ca.crt"), &ca2_pem);
    let stale = agent.expect_record("etcd-client-trust stale on CA generation 2", |r| {
        r["event"] == "endpoint_stale" && r["probe"] == "etcd-client-trust" && r["generation"] == 2
    });
    assert!(
        stale["observed"]
            .as_str()
            .is_some_and(|o| o.contains("refused the client certificate")),
        "etcd still trusts only CA1: {stale}"
    );
    let action = agent.expect_record("restart action", |r| r["event"] == "action_run");
    assert_eq!(action["success"], true, "{action}");
    assert_eq!(action["generation"], 2, "{action}");
    assert!(
        action["output"]
            .as_str()
            .is_some_and(|o| o.contains("etcd started as")),
        "{action}"
    );
    agent.expect_record("etcd-client-trust converged after the restart", |r| {
        r["event"] == "endpoint_converged"
            && r["probe"] == "etcd-client-trust"
            && r["generation"] == 2
    });

    // Every step in the audit log, in order.
    let records = agent.stop();
    let order = [
        seq_of(&records, "server accepted", |r| {
            r["event"] == "material_accepted"
                && r["bundle"] == "etcd-server"
                && r["new_generation"] == 2
        }),
        seq_of(&records, "server converged", |r| {
            r["event"] == "endpoint_converged"
                && r["probe"] == "etcd-client-port"
                && r["generation"] == 2
        }),
        seq_of(&records, "CA accepted", |r| {
            r["event"] == "material_accepted"
                && r["bundle"] == "etcd-ca"
                && r["new_generation"] == 2
        }),
        seq_of(&records, "CA stale", |r| {
            r["event"] == "endpoint_stale"
                && r["probe"] == "etcd-client-trust"
                && r["generation"] == 2
        }),
        seq_of(&records, "action", |r| r["event"] == "action_run"),
        seq_of(&records, "CA converged", |r| {
            r["event"] == "endpoint_converged"
                && r["probe"] == "etcd-client-trust"
                && r["generation"] == 2
        }),
    ];
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "records out of order: {order:?}"
    );
    assert_eq!(
        records
            .iter()
            .filter(|r| r["event"] == "action_run")
            .count(),
        1,
        "one restart"
    );
}
