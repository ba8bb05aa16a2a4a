//! STUB API server, for failure injection only: what the agent does when the API server answers
//! Events with 5xx or not at all, which a real API server does not do on demand. (Events as a real
//! API server stores them, with the DaemonSet's ServiceAccount and RBAC, are tested in
//! tests/tests/kube_rbac.rs against the kubeadm control plane.)
//!
//! The stub is a local HTTP server that records every request and answers as the test's current
//! [`Mode`] says. What this proves: a refused or unanswered Event is logged and dropped, never
//! retried forever nor allowed to hold back the Events after it, and the audit log has every
//! record regardless.

use std::{
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::TcpListener,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use certreload_e2e::{pki::Leaf, Agent};
use serde_json::Value;

/// How the STUB answers the next requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// 500 Internal Server Error with a Status body, as an API server with a failing etcd.
    ServerError,
    /// Reads the request and never answers (a hung API server).
    Hang,
    /// 201 Created with the Event, as the API server does.
    Accept,
}

#[derive(Default)]
struct Stub {
    /// Every request: (path, JSON body, the mode it met).
    seen: Vec<(String, Value, Mode)>,
}

type Shared = (Arc<Mutex<Stub>>, Arc<Mutex<Mode>>);

/// A STUB API server on a free port: `(address, requests seen, mode switch)`.
fn stub_api_server(mode: Mode) -> (String, Shared) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let stub: Arc<Mutex<Stub>> = Arc::default();
    let mode = Arc::new(Mutex::new(mode));
    let (record, switch) = (stub.clone(), mode.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let (record, switch) = (record.clone(), switch.clone());
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
                    let mode = *switch.lock().expect("lock");
                    record
                        .lock()
                        .expect("lock")
                        .seen
                        .push((path, json.clone(), mode));
                    let (status, reply) = match mode {
                        Mode::Hang => {
                            // Hold the connection open without a byte of answer.
                            reader.read_to_end(&mut Vec::new()).ok();
                            return;
                        }
                        Mode::ServerError => (
                            "500 Internal Server Error",
                            r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"etcdserver: request timed out","reason":"InternalError","code":500}"#.to_string(),
                        ),
                        Mode::Accept => {
                            json["metadata"]["name"] = "stub".into();
                            ("201 Created", json.to_string())
                        }
                    };
                    // The agent may have timed out and closed: the stub does not care.
                    write!(
                        writer,
                        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{reply}",
                        reply.len()
                    )
                    .ok();
                }
            });
        }
    });
    (addr, (stub, mode))
}

/// Waits until the STUB saw an Event of `reason` whose message contains `text`.
fn wait_for(shared: &Shared, reason: &str, text: &str) -> (Value, Mode) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((_, e, mode)) = shared
            .0
            .lock()
            .expect("lock")
            .seen
            .iter()
            .find(|(_, e, _)| {
                e["reason"] == reason && e["message"].as_str().is_some_and(|m| m.contains(text))
            })
        {
            return (e.clone(), *mode);
        }
        assert!(
            Instant::now() < deadline,
            "STUB: no {reason} Event with {text:?}; got {:?}",
            shared.0.lock().expect("lock").seen
        );
        // The STUB is fed by another process: look again shortly.
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the agent logged a line containing `needle`; returns that line.
fn wait_log(agent: &Agent, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(line) = agent.log().lines().find(|l| l.contains(needle)) {
            return line.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no log line with {needle:?}:\n{}",
            agent.log()
        );
        // The agent's stderr is collected by another thread: look again shortly.
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn stub_api_server_5xx_and_no_answer_drop_the_event_and_later_events_still_go_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let write_pair = |cn: &str| {
        let (cert, key) = Leaf::server(cn).sans(&["localhost"]).self_signed();
        fs::write(d.join("tls.key.new"), key).expect("write");
        fs::write(d.join("tls.crt.new"), cert).expect("write");
        fs::rename(d.join("tls.key.new"), d.join("tls.key")).expect("rename");
        fs::rename(d.join("tls.crt.new"), d.join("tls.crt")).expect("rename");
    };
    write_pair("stub-events-1");
    let (api, shared) = stub_api_server(Mode::ServerError);
    let kubeconfig = d.join("kubeconfig");
    fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: stub\n  cluster:\n    server: http://{api}\ncontexts:\n- name: stub\n  context:\n    cluster: stub\n    user: stub\ncurrent-context: stub\nusers:\n- name: stub\n  user:\n    token: stub-token\n"
        ),
    )
    .expect("write");
    let agent = Agent::start_with_events(d, "stub-node", &kubeconfig);

    // 1. 500: the start-up Event is refused, logged, dropped.
    let (_, mode) = wait_for(&shared, "CertificateAccepted", "generation 1 accepted");
    assert_eq!(mode, Mode::ServerError);
    let refused = wait_log(&agent, "cannot post a Kubernetes Event");
    assert!(refused.contains("500"), "{refused}");

    // 2. No answer: the next Event waits at most the post timeout, then is dropped.
    *shared.1.lock().expect("lock") = Mode::Hang;
    write_pair("stub-events-2");
    let (_, mode) = wait_for(&shared, "CertificateAccepted", "generation 2 accepted");
    assert_eq!(mode, Mode::Hang);

    // 3. The API server is back: the Event after the hung one is posted and taken.
    *shared.1.lock().expect("lock") = Mode::Accept;
    fs::write(d.join("tls.crt"), "garbage\n").expect("write");
    let (rejected, mode) = wait_for(&shared, "CertificateRejected", "generation 2 stays live");
    assert_eq!(mode, Mode::Accept, "{rejected}");
    wait_log(&agent, "no answer from the API server within");

    // Every step is in the audit log, whatever happened to its Event.
    let records = agent.stop();
    let events: Vec<&str> = records
        .iter()
        .filter_map(|r| r["event"].as_str())
        .filter(|e| *e == "material_accepted" || *e == "material_rejected")
        .collect();
    assert_eq!(
        events,
        [
            "material_accepted",
            "material_accepted",
            "material_rejected"
        ],
        "{records:#?}"
    );
    let seen = &shared.0.lock().expect("lock").seen;
    assert!(
        seen.iter()
            .all(|(path, _, _)| path.starts_with("/api/v1/namespaces/default/events")),
        "Node Events go to the default namespace: {seen:?}"
    );
}
