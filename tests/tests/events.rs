//! Kubernetes Events on the Node, against a STUB API server (no real API server is obtainable in
//! this environment): a local HTTP server that records what the agent's kube-rs client posts and
//! answers like the API server. What this proves: the agent posts well-formed core/v1 Events
//! (Node reference, reason, type) for material_accepted and material_rejected, through kube-rs
//! with kubeconfig credentials. What it cannot prove: admission by a real API server and RBAC.

use std::{
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::TcpListener,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use certreload_e2e::{pki::Leaf, Agent};
use serde_json::Value;

type Posted = Arc<Mutex<Vec<(String, Value)>>>;

/// A stub API server: records every request (path, JSON body) and answers 201 with the body.
fn stub_api_server() -> (String, Posted) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let posted: Posted = Arc::default();
    let record = posted.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let record = record.clone();
            std::thread::spawn(move || {
                let mut writer = stream.try_clone().expect("clone");
                let mut reader = BufReader::new(stream);
                loop {
                    let mut request_line = String::new();
                    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut length = 0usize;
                    loop {
                        let mut header = String::new();
                        if reader.read_line(&mut header).unwrap_or(0) == 0 {
                            return;
                        }
                        let h = header.trim();
                        if h.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = h.split_once(':') {
                            if k.eq_ignore_ascii_case("content-length") {
                                length = v.trim().parse().unwrap_or(0);
                            }
                        }
                    }
                    let mut body = vec![0u8; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let path = request_line
                        .split_whitespace()
                        .nth(1)
                        .unwrap_or("")
                        .to_string();
                    let mut json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    record.lock().expect("lock").push((path, json.clone()));
                    json["metadata"]["name"] = "stub".into();
                    let reply = json.to_string();
                    let _ = write!(
                        writer,
                        "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{reply}",
                        reply.len()
                    );
                }
            });
        }
    });
    (addr, posted)
}

fn wait_for(posted: &Posted, reason: &str) -> (String, Value) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(found) = posted
            .lock()
            .expect("lock")
            .iter()
            .find(|(_, e)| e["reason"] == reason)
        {
            return found.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no {reason} Event posted; got {:?}",
            posted.lock().expect("lock")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn stub_api_server_receives_node_events_for_acceptance_and_rejection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (cert, key) = Leaf::server("localhost").self_signed();
    fs::write(d.join("tls.crt"), cert).expect("write");
    fs::write(d.join("tls.key"), key).expect("write");
    let (api, posted) = stub_api_server();
    let kubeconfig = d.join("kubeconfig");
    fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: stub\n  cluster:\n    server: http://{api}\ncontexts:\n- name: stub\n  context:\n    cluster: stub\n    user: stub\ncurrent-context: stub\nusers:\n- name: stub\n  user:\n    token: stub-token\n"
        ),
    )
    .expect("write");
    let audit = d.join("audit.jsonl");
    fs::write(
        d.join("certreload.toml"),
        format!(
            "[agent]\nadmin = \"127.0.0.1:0\"\n[audit]\npath = \"{}\"\n[events]\nenabled = true\nnode = \"test-node\"\nnamespace = \"kube-system\"\n[[bundle]]\nname = \"web\"\nkind = \"server\"\ncert = \"{}\"\nkey = \"{}\"\n",
            audit.display(),
            d.join("tls.crt").display(),
            d.join("tls.key").display()
        ),
    )
    .expect("write");
    let env = format!("KUBECONFIG={}", kubeconfig.display());
    let agent = Agent::start_wrapped(
        &["env", "-u", "KUBERNETES_SERVICE_HOST", &env],
        &d.join("certreload.toml"),
        &audit,
        &[],
    );
    let (path, accepted) = wait_for(&posted, "CertificateAccepted");
    assert_eq!(path, "/api/v1/namespaces/kube-system/events?");
    assert_eq!(accepted["type"], "Normal");
    assert_eq!(accepted["involvedObject"]["kind"], "Node");
    assert_eq!(accepted["involvedObject"]["name"], "test-node");
    assert!(
        accepted["message"]
            .as_str()
            .is_some_and(|m| m.contains("bundle web: generation 1 accepted")),
        "{accepted}"
    );

    fs::write(d.join("tls.crt"), "garbage\n").expect("write");
    let (_, rejected) = wait_for(&posted, "CertificateRejected");
    assert_eq!(rejected["type"], "Warning");
    assert!(
        rejected["message"].as_str().is_some_and(
            |m| m.contains("failed check parse") && m.contains("generation 1 stays live")
        ),
        "{rejected}"
    );
    let log = agent.log();
    assert!(
        !log.contains("BEGIN PRIVATE KEY"),
        "no key material in logs"
    );
    agent.stop();
}
