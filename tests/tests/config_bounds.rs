//! Absurd durations, sizes and counts in the configuration: refused at parse time with the file,
//! the line, the field and the allowed range, never a panic and never silently accepted.
//!
//! Before the fix `certreload check` accepted every one of these (exit 0), and `certreload run`
//! started with them: a `pair_timeout` past what `Instant` holds panicked the reload task on the
//! first half-written rotation (a half-dead agent), a huge probe `deadline` panicked the probe task
//! (the probe vanished), a huge `min_validity` wrapped negative and passed every certificate, and
//! `max_connections = 0` or `resync = "1ns"` made the agent refuse everyone or spin. The last test
//! runs the agent with every value at its largest allowed setting and drives a rotation through
//! it, so the bounds themselves cannot overflow anywhere.

use std::{
    fs,
    io::Read,
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use certreload_e2e::{
    certreload_bin, http, kill_and_reap,
    pki::{Leaf, TestCa},
    Agent, EVENT_DEADLINE,
};
use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};

/// A node directory with a CA, a server pair valid for 10 years and a month (so the largest
/// `min_validity` passes), and a configuration built from [`TEMPLATE`].
struct Node {
    dir: tempfile::TempDir,
    ca: TestCa,
}

/// Every section a bounded field lives in; `{agent}`, `{audit}`, `{bundle}`, `{listener}`,
/// `{probe}`, `{action}`, `{locks}` take the lines a test adds there.
const TEMPLATE: &str = r#"[agent]
admin = "127.0.0.1:0"
{agent}
[audit]
path = "{dir}/audit.jsonl"
{audit}
[[bundle]]
name = "web"
kind = "server"
cert = "{dir}/tls.crt"
key = "{dir}/tls.key"
ca = "{dir}/ca.crt"
{bundle}
[[listener]]
name = "web"
listen = "127.0.0.1:0"
bundle = "web"
upstream = "tcp://127.0.0.1:1"
{listener}
[[probe]]
name = "closed-port"
endpoint = "127.0.0.1:1"
server_name = "localhost"
bundle = "web"
{probe}
[[action]]
name = "noop"
bundle = "web"
on = "accepted"
exec = ["/bin/true"]
lock = "noop"
{action}
[locks]
{locks}
"#;

/// The sections of [`TEMPLATE`].
const SECTIONS: [&str; 7] = [
    "agent", "audit", "bundle", "listener", "probe", "action", "locks",
];

/// 10 years and a month: longer than the largest `min_validity` (3650 days).
const LONG_VALIDITY_DAYS: i64 = 3680;

impl Node {
    fn new() -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = TestCa::new("bounds CA");
        fs::write(dir.path().join("ca.crt"), &ca.pem).expect("write");
        let node = Node { dir, ca };
        let (cert, key) = node.pair();
        node.replace("tls.crt", cert);
        node.replace("tls.key", key);
        node
    }

    fn pair(&self) -> (String, String) {
        self.ca
            .issue(&Leaf::server("localhost").valid(-1, LONG_VALIDITY_DAYS))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Replaces `name` atomically (write elsewhere, rename over), as a careful rotation tool does.
    fn replace(&self, name: &str, bytes: impl AsRef<[u8]>) {
        let tmp = self.path(&format!(".{name}.tmp"));
        fs::write(&tmp, bytes).expect("write");
        fs::rename(&tmp, self.path(name)).expect("rename");
    }

    /// Writes the configuration with `lines` (section, `key = value`) added, returns its path and
    /// the 1-based line of each added line.
    fn config(&self, name: &str, lines: &[(&str, String)]) -> (PathBuf, Vec<usize>) {
        let mut text = TEMPLATE.replace("{dir}", &self.dir.path().display().to_string());
        for section in SECTIONS {
            let added: Vec<&str> = lines
                .iter()
                .filter(|(s, _)| *s == section)
                .map(|(_, l)| l.as_str())
                .collect();
            text = text.replace(&format!("{{{section}}}"), &added.join("\n"));
        }
        let numbers = lines
            .iter()
            .map(|(_, l)| {
                let at = text.find(&format!("\n{l}\n")).expect("line in the config") + 1;
                text[..at].matches('\n').count() + 1
            })
            .collect();
        let path = self.path(name);
        fs::write(&path, text).expect("write config");
        (path, numbers)
    }
}

fn check(config: &Path) -> Output {
    Command::new(certreload_bin())
        .args(["check", "--config"])
        .arg(config)
        .output()
        .expect("certreload check runs")
}

/// `certreload check` on every absurd value: exit 2, the file:line error naming the field, the
/// value and the allowed range on stderr, and no panic.
#[test]
fn check_refuses_absurd_values_at_their_line_with_the_allowed_range_and_never_panics() {
    let node = Node::new();
    let (valid, _) = node.config("valid.toml", &[]);
    let out = check(&valid);
    assert_eq!(
        out.status.code(),
        Some(0),
        "the configuration around the absurd values is valid: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // 300000000000y is 9.5e18 s: past i64::MAX seconds, so `as i64` wrapped and `Instant + d`
    // panicked; 1000000TiB saturates u64.
    let cases: [(&str, &str, &str, &str); 24] = [
        // huge
        (
            "agent",
            "pair_timeout",
            "\"300000000000y\"",
            "agent.pair_timeout",
        ),
        ("agent", "settle", "\"1y\"", "agent.settle"),
        ("agent", "resync", "\"100y\"", "agent.resync"),
        (
            "bundle",
            "min_validity",
            "\"300000000000y\"",
            "bundle[web].min_validity",
        ),
        (
            "probe",
            "deadline",
            "\"300000000000y\"",
            "probe[closed-port].deadline",
        ),
        (
            "action",
            "lock_wait",
            "\"300000000000y\"",
            "action[noop].lock_wait",
        ),
        (
            "action",
            "min_interval",
            "\"1000y\"",
            "action[noop].min_interval",
        ),
        (
            "listener",
            "stale_grace",
            "\"1000000d\"",
            "listener[web].stale_grace",
        ),
        (
            "locks",
            "lease_duration",
            "\"1000000000h\"",
            "locks.lease_duration",
        ),
        ("audit", "max_size", "\"1000000TiB\"", "audit.max_size"),
        ("agent", "max_file_size", "\"1TiB\"", "agent.max_file_size"),
        (
            "listener",
            "max_connections",
            "9223372036854775807",
            "listener[web].max_connections",
        ),
        // zero
        ("agent", "resync", "\"0s\"", "agent.resync"),
        ("agent", "max_file_size", "\"0\"", "agent.max_file_size"),
        (
            "listener",
            "max_connections",
            "0",
            "listener[web].max_connections",
        ),
        (
            "listener",
            "handshake_timeout",
            "\"0s\"",
            "listener[web].handshake_timeout",
        ),
        (
            "listener",
            "idle_timeout",
            "\"0s\"",
            "listener[web].idle_timeout",
        ),
        ("probe", "interval", "\"0s\"", "probe[closed-port].interval"),
        ("action", "timeout", "\"0s\"", "action[noop].timeout"),
        // tiny
        ("agent", "resync", "\"1ns\"", "agent.resync"),
        (
            "probe",
            "interval",
            "\"1ns\"",
            "probe[closed-port].interval",
        ),
        (
            "listener",
            "handshake_timeout",
            "\"1ms\"",
            "listener[web].handshake_timeout",
        ),
        ("audit", "max_size", "\"1B\"", "audit.max_size"),
        // negative
        (
            "listener",
            "max_connections",
            "-1",
            "listener[web].max_connections",
        ),
    ];
    for (section, key, value, field) in cases {
        let (config, lines) = node.config("absurd.toml", &[(section, format!("{key} = {value}"))]);
        let out = check(&config);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let expected = format!(
            "certreload check: {}:{}: {field}: {value} is outside the allowed range ",
            config.display(),
            lines[0]
        );
        assert!(
            out.status.code() == Some(2)
                && stderr.contains(&expected)
                && !stderr.contains("panicked"),
            "{field} = {value}: expected exit 2 and {expected:?}…, got exit {:?}:\n{stderr}",
            out.status.code()
        );
    }
}

/// `certreload run` with a value that used to panic a task later exits at once with the
/// file:line error, instead of starting half-dead.
#[test]
fn run_refuses_a_value_that_used_to_panic_a_task_and_exits_at_once() {
    let node = Node::new();
    for (section, line, field) in [
        (
            "agent",
            "pair_timeout = \"300000000000y\"",
            "agent.pair_timeout",
        ),
        (
            "probe",
            "deadline = \"300000000000y\"",
            "probe[closed-port].deadline",
        ),
    ] {
        let (config, lines) = node.config("absurd.toml", &[(section, line.to_string())]);
        let mut child = Command::new(certreload_bin())
            .args(["run", "--config"])
            .arg(&config)
            .env("CERTRELOAD_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("certreload run starts");
        let deadline = Instant::now() + EVENT_DEADLINE;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break Some(status);
            }
            if Instant::now() > deadline {
                kill_and_reap(&mut child);
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .expect("piped")
            .read_to_string(&mut stderr)
            .expect("stderr");
        let expected = format!("{}:{}: {field}: ", config.display(), lines[0]);
        assert!(
            status.is_some_and(|s| !s.success())
                && stderr.contains(&expected)
                && stderr.contains("is outside the allowed range")
                && !stderr.contains("panicked")
                && !stderr.contains("agent ready"),
            "{line}: expected a refusal naming {expected:?} before start-up, got {status:?}:\n{stderr}"
        );
    }
}

/// The largest value of every field, and one step beyond each.
const LARGEST: [(&str, &str, &str, &str); 15] = [
    ("agent", "resync", "\"1d\"", "\"86401s\""),
    ("agent", "pair_timeout", "\"1h\"", "\"3601s\""),
    ("agent", "max_file_size", "\"64MiB\"", "\"67108865\""),
    ("audit", "max_size", "\"16GiB\"", "\"17179869185\""),
    ("bundle", "min_validity", "\"3650d\"", "\"3650d 1ns\""),
    ("listener", "stale_grace", "\"7d\"", "\"7d 1ns\""),
    ("listener", "handshake_timeout", "\"5m\"", "\"5m 1ns\""),
    ("listener", "idle_timeout", "\"7d\"", "\"7d 1ns\""),
    ("listener", "max_connections", "1000000", "1000001"),
    ("probe", "deadline", "\"7d\"", "\"7d 1ns\""),
    ("probe", "interval", "\"1d\"", "\"1d 1ns\""),
    ("action", "timeout", "\"1h\"", "\"1h 1ns\""),
    ("action", "min_interval", "\"7d\"", "\"7d 1ns\""),
    ("action", "lock_wait", "\"1d\"", "\"1d 1ns\""),
    ("locks", "lease_duration", "\"1h\"", "\"3601s\""),
];

/// One TLS handshake with the listener; the served leaf.
fn served_leaf(addr: &str, ca_pem: &str) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).expect("CA PEM"))
        .expect("root");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut conn = rustls::ClientConnection::new(
        Arc::new(config),
        ServerName::try_from("localhost").expect("name"),
    )
    .expect("client");
    let mut tcp = TcpStream::connect(addr).expect("connect to the listener");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).expect("handshake");
    }
    conn.peer_certificates().expect("a served chain")[0].to_vec()
}

/// Every field at its largest allowed value: `check` accepts the file, the agent starts, answers
/// `/healthz`, serves TLS, waits on a half-written rotation (pair_timeout deadline) and accepts
/// the completed one (probe and action deadlines), and stops cleanly; one step beyond each
/// largest value is refused.
#[test]
fn the_largest_allowed_values_run_and_one_step_beyond_is_refused() {
    let node = Node::new();
    // `settle` waits before every read: at its largest (1m) the rotation below would take a
    // minute, so it is run at 0 and its largest value is checked (not run) below.
    let mut lines: Vec<(&str, String)> = LARGEST
        .iter()
        .map(|(s, k, v, _)| (*s, format!("{k} = {v}")))
        .collect();
    let (config, _) = node.config("largest.toml", &lines);
    let audit = node.path("audit.jsonl");
    let agent = Agent::start(&config, &audit, &[]);
    agent.expect_record("generation 1 of web", |r| {
        r["event"] == "material_accepted" && r["bundle"] == "web" && r["new_generation"] == 1
    });
    let admin = agent.log_field("agent ready", "admin");
    let health = http::get(&admin, "/healthz").expect("/healthz answers");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let listener = agent.log_field("listener=web", "address");
    let first = served_leaf(&listener, &node.ca.pem);

    // A key that matches nothing: the reloader computes the pair_timeout (1h) deadline.
    let (_, stray_key) = node.pair();
    node.replace("tls.key", stray_key);
    agent.expect_record("pair_waiting on the stray key", |r| {
        r["event"] == "pair_waiting" && r["check"] == "key_match"
    });
    // The completed rotation: accepted, then served; the probe starts a 7d episode and the
    // action waits for its lock (1d) after the 7d min_interval bookkeeping.
    let (cert, key) = node.pair();
    node.replace("tls.crt", cert);
    node.replace("tls.key", key);
    agent.expect_record("generation 2 of web", |r| {
        r["event"] == "material_accepted" && r["bundle"] == "web" && r["new_generation"] == 2
    });
    let deadline = Instant::now() + EVENT_DEADLINE;
    while served_leaf(&listener, &node.ca.pem) == first {
        assert!(Instant::now() < deadline, "generation 2 never served");
        std::thread::sleep(Duration::from_millis(20));
    }
    let health = http::get(&admin, "/healthz").expect("/healthz answers after the rotation");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let log = agent.log();
    assert!(!log.contains("panicked"), "no task panicked:\n{log}");
    agent.stop();

    // settle at its largest is accepted too.
    lines.push(("agent", "settle = \"1m\"".to_string()));
    let (config, _) = node.config("largest.toml", &lines);
    let out = check(&config);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // One step beyond any largest value is refused at its line.
    let mut beyond: Vec<(&str, &str, String)> = LARGEST
        .iter()
        .map(|(s, k, _, over)| (*s, *k, over.to_string()))
        .collect();
    beyond.push(("agent", "settle", "\"1m 1ns\"".to_string()));
    for (section, key, over) in beyond {
        let (config, numbers) = node.config("beyond.toml", &[(section, format!("{key} = {over}"))]);
        let out = check(&config);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let expected = format!("{}:{}: {section}", config.display(), numbers[0]);
        let refusal = format!(".{key}: {over} is outside the allowed range");
        assert!(
            out.status.code() == Some(2) && stderr.contains(&expected) && stderr.contains(&refusal),
            "{key} = {over}: expected exit 2 and {expected:?}, got {:?}:\n{stderr}",
            out.status.code()
        );
    }
}

/// `--resync` outside 0.01 s to a day is a usage error (exit 2) naming the range: `inf` and `1e30`
/// made `Duration::from_secs_f64` panic before the monitor started.
#[test]
fn watch_resync_out_of_range_is_a_usage_error_not_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let watched = dir.path().join("tls.crt");
    for value in ["inf", "1e30", "0.001", "-1", "NaN"] {
        let mut child = Command::new(certreload_bin())
            .args(["watch", "--mode", "inotify", &format!("--resync={value}")])
            .arg(&watched)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("certreload watch starts");
        let deadline = Instant::now() + EVENT_DEADLINE;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break Some(status);
            }
            if Instant::now() > deadline {
                kill_and_reap(&mut child);
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .expect("piped")
            .read_to_string(&mut stderr)
            .expect("stderr");
        assert!(
            status.is_some_and(|s| s.code() == Some(2))
                && stderr.contains("--resync")
                && !stderr.contains("panicked"),
            "--resync {value}: expected a usage error, got {status:?}:\n{stderr}"
        );
    }
}
