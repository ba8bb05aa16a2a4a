//! `/metrics` parsed by a real Prometheus parser: the Prometheus Python client's OpenMetrics
//! parser (Debian's python3-prometheus-client, installed by `cargo xtask setup`), on a scrape of a
//! running agent whose certificate CN holds a double quote, a backslash and a newline and whose
//! certificate path holds a double quote.
//!
//! Before the fix, label values were written unescaped: that scrape was unparseable (every
//! expiry alert blind) and a CN could inject series of its own.

use std::{
    fs,
    io::Write,
    process::{Command, Stdio},
};

use certreload_e2e::{
    ensure_package,
    pki::{Leaf, TestCa},
    skip_unless, Agent,
};
use serde_json::Value;

/// The parser's module, from the Debian package.
const PARSER: &str = "/usr/lib/python3/dist-packages/prometheus_client/openmetrics/parser.py";

/// Reads an OpenMetrics exposition on stdin and prints every sample as JSON lines
/// `{"name": ..., "labels": {...}, "value": ...}`; a parse error exits non-zero with the error.
const PARSE: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        print(json.dumps({"name": s.name, "labels": s.labels, "value": s.value}))
"#;

/// Parses `body` with the Prometheus client's OpenMetrics parser: every sample, or the parser's
/// error.
fn parse_openmetrics(body: &str) -> Result<Vec<Value>, String> {
    let mut python = Command::new("/usr/bin/python3")
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    python
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("write the scrape");
    let out = python.wait_with_output().expect("python3 exits");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("the script prints JSON"))
        .collect())
}

fn scrape(admin: &str) -> String {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            &format!("http://{admin}/metrics"),
        ])
        .output()
        .expect("curl runs");
    assert!(
        out.status.success(),
        "curl /metrics: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("the scrape is UTF-8")
}

#[test]
fn a_cn_and_a_path_with_quotes_and_newlines_round_trip_through_a_prometheus_parser() {
    skip_unless!(
        ensure_package("python3-prometheus-client", PARSER),
        "the Prometheus client's parser is needed (cargo xtask setup installs python3-prometheus-client)"
    );
    skip_unless!(
        ensure_package("curl", "/usr/bin/curl"),
        "curl is needed (cargo xtask setup installs it)"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs \"quoted\"");
    fs::create_dir(&certs).expect("mkdir");
    let cn = "web \"front\" \\ end\n} 1\ninjected_series{a=\"b\"";
    let ca = TestCa::new("metrics CA");
    let (cert, key) = ca.issue(&Leaf::server(cn).sans(&["localhost"]));
    let cert_path = certs.join("tls.crt");
    fs::write(&cert_path, cert).expect("write");
    fs::write(certs.join("tls.key"), key).expect("write");
    let audit = dir.path().join("audit.jsonl");
    // `{:?}` writes a path as a TOML basic string would ("\"" and "\\" escaped).
    let config = format!(
        "[agent]\nadmin = \"127.0.0.1:0\"\n[audit]\npath = {:?}\n[[bundle]]\nname = \"web\"\nkind = \"server\"\ncert = {:?}\nkey = {:?}\n",
        audit.display().to_string(),
        cert_path.display().to_string(),
        certs.join("tls.key").display().to_string(),
    );
    fs::write(dir.path().join("certreload.toml"), config).expect("write");
    let agent = Agent::start(&dir.path().join("certreload.toml"), &audit, &[]);
    let admin = agent.log_field("agent ready", "admin");

    let body = scrape(&admin);
    let samples = parse_openmetrics(&body)
        .unwrap_or_else(|e| panic!("the scrape does not parse: {e}\nscrape:\n{body}"));
    let not_after: Vec<&Value> = samples
        .iter()
        .filter(|s| s["name"] == "x509_cert_not_after")
        .collect();
    assert_eq!(
        not_after.len(),
        1,
        "one certificate, one x509_cert_not_after: {not_after:#?}"
    );
    let labels = &not_after[0]["labels"];
    assert_eq!(labels["subject_CN"], cn, "the CN round-trips exactly");
    assert_eq!(
        labels["filepath"],
        cert_path.display().to_string(),
        "the path round-trips exactly"
    );
    assert_eq!(labels["bundle"], "web");
    assert!(
        !samples.iter().any(|s| s["name"] == "injected_series"),
        "a CN cannot inject a series"
    );
    assert!(body.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    agent.stop();
}
