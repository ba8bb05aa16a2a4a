//! Every metric the shipped alerts (deploy/alerts/certreload.rules.yaml) and the Grafana dashboard
//! (deploy/helm/certreload/dashboards/certreload.json) query is one a running agent exports, with
//! samples: a real agent with a TLS listener (stale_grace), a probe on it, an action, a rotation
//! while a connection is held, a rejected key and a failed handshake, scraped over /metrics.
//!
//! The metric names are read from the PromQL expressions with a small tokenizer (names are the
//! identifiers that are not functions, keywords, label names, durations or Grafana variables),
//! so a renamed metric or a typo in a query fails here instead of leaving a panel or an alert
//! silently empty.

use std::{
    collections::BTreeSet,
    fs,
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
};

use certreload_e2e::{
    http, kill_and_reap,
    pki::{Leaf, TestCa},
    skip_unless, Agent,
};
use serde_json::Value;

/// PromQL words that are not metric names.
const KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "offset",
    "bool",
    "inf",
    "nan",
    // Aggregation operators: `sum by (x) (...)` puts the clause between the name and its `(`.
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The metric names a PromQL expression selects.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    // After `by`, `without`, `on`, `ignoring`, `group_left`, `group_right`: a label list follows.
    let mut labels_follow = false;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => i = skip_string(&chars, i),
            '{' => i = skip_to(&chars, i, '}'),
            '[' => i = skip_to(&chars, i, ']'),
            '(' if labels_follow => {
                i = skip_to(&chars, i, ')');
                labels_follow = false;
            }
            '$' => {
                // A Grafana variable ($__rate_interval, ${instance}).
                i += 1;
                while i < chars.len() && (chars[i].is_alphanumeric() || "_{}".contains(chars[i])) {
                    i += 1;
                }
            }
            c if c.is_ascii_digit() || c == '.' => {
                // A number or a duration (15m, 0.99, 1e3).
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let next = chars[i..].iter().find(|c| !c.is_whitespace());
                let lower = word.to_ascii_lowercase();
                if KEYWORDS.contains(&lower.as_str()) {
                    labels_follow = matches!(
                        lower.as_str(),
                        "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
                    );
                } else if next != Some(&'(') {
                    names.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

/// The index after the string literal opening at `i` (backslash escapes honoured).
fn skip_string(chars: &[char], i: usize) -> usize {
    let quote = chars[i];
    let mut j = i + 1;
    while j < chars.len() && chars[j] != quote {
        j += if chars[j] == '\\' { 2 } else { 1 };
    }
    j + 1
}

/// The index after the `close` matching the opener at `i` (strings inside skipped).
fn skip_to(chars: &[char], i: usize, close: char) -> usize {
    let mut j = i + 1;
    while j < chars.len() && chars[j] != close {
        j = if "\"'`".contains(chars[j]) {
            skip_string(chars, j)
        } else {
            j + 1
        };
    }
    j + 1
}

/// Every `expr` of the alert rules.
fn alert_exprs() -> Vec<String> {
    let text = fs::read_to_string(repo().join("deploy/alerts/certreload.rules.yaml"))
        .expect("deploy/alerts/certreload.rules.yaml");
    let rules: Value = serde_saphyr::from_str(&text).expect("the rules file is YAML");
    rules["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules").iter())
        .map(|r| {
            r["expr"]
                .as_str()
                .expect("every rule has an expr")
                .to_string()
        })
        .collect()
}

/// Every target `expr` of the dashboard's panels (rows included), and the metric of each
/// `label_values(METRIC, label)` variable query.
fn dashboard_exprs() -> Vec<String> {
    let text = fs::read_to_string(repo().join("deploy/helm/certreload/dashboards/certreload.json"))
        .expect("the dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    collect_exprs(&dashboard["panels"], &mut exprs);
    for var in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        if let Some(query) = var["definition"].as_str() {
            if let Some(args) = query.strip_prefix("label_values(") {
                let metric = args.split(',').next().expect("a metric argument");
                exprs.push(metric.trim().to_string());
            }
        }
    }
    exprs
}

fn collect_exprs(panels: &Value, out: &mut Vec<String>) {
    for p in panels.as_array().into_iter().flatten() {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push(
                t["expr"]
                    .as_str()
                    .expect("every target has an expr")
                    .to_string(),
            );
        }
        collect_exprs(&p["panels"], out);
    }
}

/// The sample names of an HTTP response's exposition (`name{labels} value` or `name value`).
fn sample_names(response: &str) -> BTreeSet<String> {
    let (_, exposition) = response
        .split_once("\r\n\r\n")
        .expect("an HTTP response with a body");
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

#[test]
fn tokenizer_finds_metric_names_only() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (le, bundle) (rate(a_seconds_bucket{x="y}(",instance=~"$instance"}[$__rate_interval])))
           / on (instance) group_left(strategy) b_total offset 15m > bool 1e3 or c:rule unless ignoring(z) (d == 1)"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["a_seconds_bucket", "b_total", "c:rule", "d"]
    );
    assert_eq!(
        metric_names(r#"((x509_cert_not_after{bundle!=""} - time()) / 86400) < 28"#)
            .into_iter()
            .collect::<Vec<_>>(),
        ["x509_cert_not_after"]
    );
}

/// An upstream that echoes each line back.
fn echo_upstream() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let mut writer = stream.try_clone().expect("clone");
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if writeln!(writer, "echo: {line}").is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A TLS connection through the listener (openssl s_client), held open.
struct Session {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Session {
    fn open(addr: &str) -> Session {
        let mut child = Command::new("openssl")
            .args(["s_client", "-quiet", "-connect", addr])
            .args(["-servername", "localhost"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("s_client runs");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Session {
            child,
            stdin,
            stdout,
        }
    }

    fn round_trip(&mut self, line: &str) -> String {
        writeln!(self.stdin, "{line}").expect("write");
        self.stdin.flush().expect("flush");
        let mut reply = String::new();
        self.stdout.read_line(&mut reply).expect("read");
        reply.trim().to_string()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        kill_and_reap(&mut self.child);
    }
}

/// Writes `text` to `path` through a rename (one event, never a half-written file).
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, text).expect("write");
    fs::rename(&tmp, path).expect("rename");
}

/// A running agent whose every metric family has samples: the listener `front` (stale_grace 1s)
/// with a probe on it and an action on each accepted generation.
fn agent_with_every_family(d: &Path, ca: &TestCa) -> (Agent, String, String) {
    let (cert, key) = ca.issue(&Leaf::server("localhost"));
    fs::write(d.join("tls.crt"), cert).expect("write");
    fs::write(d.join("tls.key"), key).expect("write");
    fs::write(d.join("ca.crt"), &ca.pem).expect("write");
    let port = free_port();
    let config = format!(
        r#"
[agent]
admin = "127.0.0.1:0"
pair_timeout = "1s"
[audit]
path = "{d}/audit.jsonl"
[[bundle]]
name = "web"
kind = "server"
cert = "{d}/tls.crt"
key = "{d}/tls.key"
ca = "{d}/ca.crt"
[[listener]]
name = "front"
listen = "127.0.0.1:{port}"
bundle = "web"
upstream = "tcp://{upstream}"
stale_grace = "1s"
[[probe]]
name = "front-probe"
endpoint = "127.0.0.1:{port}"
server_name = "localhost"
bundle = "web"
deadline = "5s"
interval = "500ms"
[[probe]]
name = "nowhere"
endpoint = "127.0.0.1:{closed}"
server_name = "localhost"
bundle = "web"
deadline = "1s"
interval = "500ms"
[[action]]
name = "on-accepted"
bundle = "web"
on = "accepted"
exec = ["/bin/true"]
"#,
        d = d.display(),
        upstream = echo_upstream(),
        // Nothing listens there: that probe goes stale at its deadline.
        closed = free_port(),
    );
    fs::write(d.join("certreload.toml"), config).expect("write");
    let agent = Agent::start(&d.join("certreload.toml"), &d.join("audit.jsonl"), &[]);
    let admin = agent.log_field("agent ready", "admin");
    (agent, admin, format!("127.0.0.1:{port}"))
}

/// Drives the agent through what creates every lazily labelled family: a failed handshake, a
/// rotation under a held connection (generation, rotation, change→swap, action, stale and drained
/// connection, probe converged again), then a key that does not match (rejection).
fn exercise(agent: &Agent, d: &Path, ca: &TestCa, front: &str) {
    agent.expect_record("the probe's first verdict", |r| {
        r["event"] == "endpoint_converged" && r["probe"] == "front-probe"
    });
    let mut garbage = TcpStream::connect(front).expect("connect");
    garbage
        .write_all(b"not a TLS ClientHello\r\n\r\n")
        .expect("write");
    drop(garbage);
    let mut held = Session::open(front);
    assert_eq!(held.round_trip("before"), "echo: before");
    let (cert, key) = ca.issue(&Leaf::server("localhost"));
    replace(&d.join("tls.key"), &key);
    replace(&d.join("tls.crt"), &cert);
    agent.expect_record("generation 2", |r| {
        r["event"] == "material_accepted" && r["new_generation"] == 2
    });
    agent.expect_record("the held connection drained", |r| {
        r["event"] == "connection_drained" && r["listener"] == "front"
    });
    agent.expect_record("the probe converged on generation 2", |r| {
        r["event"] == "endpoint_converged" && r["generation"] == 2
    });
    let (_, other_key) = ca.issue(&Leaf::server("localhost"));
    replace(&d.join("tls.key"), &other_key);
    agent.expect_record("the mismatched key rejected", |r| {
        r["event"] == "material_rejected"
    });
}

#[test]
fn every_metric_the_alerts_and_the_dashboard_query_is_exported_by_a_running_agent() {
    skip_unless!(
        certreload_e2e::openssl::available(),
        "openssl is needed (cargo xtask setup installs it)"
    );
    let queried: BTreeSet<String> = alert_exprs()
        .iter()
        .chain(&dashboard_exprs())
        .flat_map(|e| metric_names(e))
        .collect();
    // The tokenizer must have read the files (an empty set would pass vacuously).
    for name in [
        "x509_cert_not_after",
        "certreload_change_to_swap_seconds_bucket",
        "certreload_probe_stale",
        "certreload_listener_connections",
        "certreload_audit_writable",
    ] {
        assert!(queried.contains(name), "{name} is queried: {queried:?}");
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let ca = TestCa::new("observability CA");
    let (agent, admin, front) = agent_with_every_family(d, &ca);
    exercise(&agent, d, &ca, &front);
    // The action's counter is counted before its record is written.
    agent.expect_record("the action ran", |r| {
        r["event"] == "action_run" && r["success"] == true
    });
    agent.expect_record("the unreachable endpoint stale", |r| {
        r["event"] == "endpoint_stale" && r["probe"] == "nowhere"
    });
    let response = http::get_ok(&admin, "/metrics");
    // The values the alerts compare: the probes' verdicts, the listener's grace.
    for sample in [
        r#"certreload_probe_stale{probe="nowhere",bundle="web"} 1"#,
        r#"certreload_probe_stale{probe="front-probe",bundle="web"} 0"#,
        r#"certreload_listener_stale_grace_seconds{listener="front"} 1.0"#,
        r#"certreload_listener_oldest_stale_seconds{listener="front"} 0.0"#,
    ] {
        assert!(
            response.lines().any(|l| l == sample),
            "{sample} in:\n{response}"
        );
    }
    let exported = sample_names(&response);
    let missing: Vec<&String> = queried.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "queried by the alerts or the dashboard, but no sample in the agent's /metrics: \
         {missing:?}\nexported: {exported:?}"
    );
    agent.stop();
}
