//! A FIFO at a watched or configured path: refused by type with the file named, never waited on.
//!
//! A blocking `open(2)` of a FIFO with no writer never returns. Anyone who can write into a
//! watched directory can leave one there; before the fix that froze the agent's runtime (no
//! `/healthz`, no handshakes, SIGTERM ignored), kept it from ever becoming ready when the FIFO was
//! there at start-up, and hung `certreload check`. Every wait here has a deadline, so the test
//! fails (instead of hanging) against an agent that blocks.

use std::{
    ffi::CString,
    fs,
    net::TcpListener,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use certreload_e2e::openssl::{available as have_openssl, fingerprint_of, served_fingerprint};
use certreload_e2e::{
    certreload_bin, http, kill_and_reap,
    pki::{Leaf, TestCa},
    skip_unless, Agent,
};
use serde_json::Value;

/// How long SIGTERM may take to stop the agent ("within a few seconds in every state").
const STOP_DEADLINE: Duration = Duration::from_secs(5);

fn mkfifo(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).expect("no NUL");
    // SAFETY: a valid NUL-terminated path.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(rc, 0, "mkfifo {}", path.display());
}

/// SIGTERM, then waits (bounded) until the agent has exited; returns its records.
fn stop_within(agent: Agent, deadline: Duration) -> Vec<Value> {
    let pid = agent.pid() as i32;
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let until = Instant::now() + deadline;
    // Exited = a zombie waiting for us to reap it (Agent::stop reaps it).
    let exited = || {
        fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(true)
    };
    while !exited() {
        if Instant::now() > until {
            let log = agent.log();
            // SAFETY: kill(2) on our own child, so the test run does not leave it behind.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("the agent did not stop within {deadline:?} of SIGTERM:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    agent.stop()
}

/// Valid material for bundle `web` behind a listener, in a fresh directory.
struct Node {
    dir: tempfile::TempDir,
    ca: TestCa,
    /// The listener's upstream (accepts into its backlog; the handshake is what is tested).
    upstream: TcpListener,
}

impl Node {
    fn new() -> Node {
        let node = Node {
            dir: tempfile::tempdir().expect("tempdir"),
            ca: TestCa::new("fifo test CA"),
            upstream: TcpListener::bind("127.0.0.1:0").expect("bind"),
        };
        let upstream = node.upstream.local_addr().expect("addr");
        let (cert, key) = node.ca.issue(&Leaf::server("localhost"));
        fs::write(node.path("tls.crt"), cert).expect("write");
        fs::write(node.path("tls.key"), key).expect("write");
        fs::write(node.path("ca.crt"), &node.ca.pem).expect("write");
        fs::write(
            node.path("certreload.toml"),
            format!(
                r#"
[agent]
admin = "127.0.0.1:0"
pair_timeout = "2s"
[audit]
path = "{audit}"
[[bundle]]
name = "web"
kind = "server"
cert = "{dir}/tls.crt"
key = "{dir}/tls.key"
ca = "{dir}/ca.crt"
[[listener]]
name = "front"
listen = "127.0.0.1:0"
bundle = "web"
upstream = "tcp://{upstream}"
"#,
                audit = node.path("audit.jsonl").display(),
                dir = node.dir.path().display(),
            ),
        )
        .expect("write");
        node
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn start(&self) -> Agent {
        Agent::start(
            &self.path("certreload.toml"),
            &self.path("audit.jsonl"),
            &[],
        )
    }
}

fn mentions_fifo(r: &Value, file: &Path) -> bool {
    r["event"] == "material_rejected"
        && r["bundle"] == "web"
        && r["check"] == "read"
        && r["reason"]
            .as_str()
            .is_some_and(|s| s.contains("is a fifo") && s.contains(&file.display().to_string()))
}

#[test]
fn a_fifo_swapped_in_while_running_is_refused_and_the_agent_stays_responsive() {
    skip_unless!(
        have_openssl(),
        "openssl is needed (cargo xtask setup installs it)"
    );
    let node = Node::new();
    let agent = node.start();
    agent.expect_record("generation 1", |r| {
        r["event"] == "material_accepted" && r["new_generation"] == 1
    });
    let admin = agent.log_field("agent ready", "admin");
    let front = agent.log_field("listener=front", "address");
    let served = fingerprint_of(&fs::read(node.path("tls.crt")).expect("cert"));

    // A FIFO renamed over the watched key: nothing will ever write to it.
    let fifo = node.path(".tls.key.fifo");
    mkfifo(&fifo);
    fs::rename(&fifo, node.path("tls.key")).expect("rename");
    let key = node.path("tls.key");
    let rejected = agent.expect_record("the FIFO refused by the read check", |r| {
        mentions_fifo(r, &key)
    });
    assert_eq!(rejected["current_generation"], 1, "{rejected}");

    let health = http::get(&admin, "/healthz").expect("/healthz answers");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert_eq!(
        served_fingerprint(&front),
        served,
        "handshakes still complete, on generation 1"
    );
    // A resync pass over the FIFO (resync re-reads every path) must not wedge anything either.
    let records = stop_within(agent, STOP_DEADLINE);
    assert!(
        records.iter().any(|r| r["event"] == "agent_stopped"),
        "stopped cleanly"
    );
}

#[test]
fn a_fifo_present_at_start_up_leaves_the_bundle_not_ready_with_the_reason() {
    let node = Node::new();
    fs::remove_file(node.path("tls.crt")).expect("rm");
    mkfifo(&node.path("tls.crt"));
    // Agent::start fails the test unless the agent reports ready within the deadline.
    let agent = node.start();
    let crt = node.path("tls.crt");
    agent.expect_record("the FIFO refused at start-up", |r| mentions_fifo(r, &crt));
    let admin = agent.log_field("agent ready", "admin");
    let health = http::get(&admin, "/healthz").expect("/healthz answers");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let ready = http::get(&admin, "/readyz").expect("/readyz answers");
    assert!(
        ready.starts_with("HTTP/1.1 503") && ready.contains("web"),
        "not ready, naming the bundle: {ready}"
    );
    stop_within(agent, STOP_DEADLINE);
}

#[test]
fn check_names_the_fifo_instead_of_hanging() {
    let node = Node::new();
    fs::remove_file(node.path("tls.key")).expect("rm");
    mkfifo(&node.path("tls.key"));
    let mut child = Command::new(certreload_bin())
        .args(["check", "--output", "json", "--config"])
        .arg(node.path("certreload.toml"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("check runs");
    let until = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > until {
            kill_and_reap(&mut child);
            panic!("certreload check did not finish within 20 s (blocked on the FIFO)");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        status.code(),
        Some(1),
        "invalid, not an I/O error: {stdout}"
    );
    let key = node.path("tls.key").display().to_string();
    assert!(
        stdout.contains(&format!("{key}: is a fifo, expected a regular file")),
        "the read check names the file and its type: {stdout}"
    );
}
