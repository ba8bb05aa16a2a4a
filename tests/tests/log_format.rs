//! `--log-format text|json` with the real agent, and each audit record in its log exactly once
//! (issue 14: every record was printed twice, as the JSON line inside the message and again as
//! `event=`/`bundle=`/`seq=` fields). The audit FILE is untouched by the format: the records are
//! compared byte for byte with its lines.

use std::{fs, path::Path, time::Duration};

use certreload_e2e::{pki::TestCa, poll, Agent, EVENT_DEADLINE};
use serde_json::Value;

/// Runs an agent on a CA bundle with `--log-format format` (none: the default), rewrites the
/// bundle once, stops it, and returns (the audit file's lines, the agent's log).
fn run_agent(format: Option<&str>) -> (Vec<String>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, audit) = (dir.path().join("ca.crt"), dir.path().join("audit.jsonl"));
    fs::write(&ca, TestCa::new("log format CA 0").pem).expect("write");
    let config = dir.path().join("certreload.toml");
    fs::write(
        &config,
        format!(
            "[agent]\nadmin = \"127.0.0.1:0\"\n[audit]\npath = \"{}\"\n[[bundle]]\nname = \"ca\"\nkind = \"ca\"\ncert = \"{}\"\n",
            audit.display(),
            ca.display()
        ),
    )
    .expect("write config");
    let mut extra = vec!["--mode", "inotify"];
    if let Some(format) = format {
        extra.extend(["--log-format", format]);
    }
    let agent = Agent::start(&config, &audit, &extra);
    rewrite(&ca);
    agent.expect_record("the rewrite's verdict", |r| {
        (r["event"] == "material_accepted" && r["new_generation"] == 2)
            || r["event"] == "material_rejected"
    });
    // SIGTERM, then the log until the last record (agent_stopped) is in it.
    // SAFETY: kill(2) on the agent this test started.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGTERM) };
    let log = poll(EVENT_DEADLINE, Duration::from_millis(20), || {
        let log = agent.log();
        log.contains("agent_stopped").then_some(log)
    })
    .unwrap_or_else(|| panic!("no agent_stopped in the log:\n{}", agent.log()));
    let lines: Vec<String> = fs::read_to_string(&audit)
        .expect("audit file")
        .lines()
        .map(str::to_string)
        .collect();
    assert!(
        lines.iter().any(|l| l.contains("\"change_detected\"")),
        "{lines:?}\n{log}"
    );
    assert!(
        lines
            .last()
            .is_some_and(|l| l.contains("\"agent_stopped\"")),
        "{lines:?}"
    );
    (lines, log)
}

/// The CA file rewritten with a second CA appended (a bundle keeping the first: accepted).
fn rewrite(ca: &Path) {
    let mut pem = fs::read_to_string(ca).expect("read");
    pem.push_str(&TestCa::new("log format CA 1").pem);
    fs::write(ca, pem).expect("rewrite");
}

fn occurrences(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[test]
fn text_log_carries_each_audit_record_once() {
    let (lines, log) = run_agent(None);
    let logged: Vec<&str> = lines.iter().map(String::as_str).collect();
    for line in logged {
        let record: Value = serde_json::from_str(line).expect("audit line is JSON");
        let prev = record["prev"].as_str().expect("prev");
        assert_eq!(occurrences(&log, line), 1, "record {line} in:\n{log}");
        assert_eq!(occurrences(&log, prev), 1, "prev {prev} in:\n{log}");
        let log_line = log
            .lines()
            .find(|l| l.contains(line))
            .expect("its log line");
        assert!(
            log_line.ends_with(line),
            "nothing repeats the record after it: {log_line}"
        );
    }
}

#[test]
fn json_log_is_one_object_per_line_with_each_audit_record_once() {
    let (lines, log) = run_agent(Some("json"));
    let objects: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("log line not JSON ({e}): {l}")))
        .collect();
    assert!(
        objects
            .iter()
            .any(|o| o["message"] == "agent ready" && o["level"] == "INFO"),
        "{log}"
    );
    let audit: Vec<&Value> = objects
        .iter()
        .filter(|o| o["target"] == "certreload::audit")
        .collect();
    let logged: Vec<&str> = lines.iter().map(String::as_str).collect();
    assert_eq!(audit.len(), logged.len(), "{log}");
    for (object, line) in audit.iter().zip(&logged) {
        assert_eq!(object["message"], *line, "the record, byte for byte");
        let keys: Vec<&str> = object
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            ["timestamp", "level", "message", "target"],
            "{object}"
        );
        let record: Value = serde_json::from_str(line).expect("audit line is JSON");
        let prev = record["prev"].as_str().expect("prev");
        assert_eq!(occurrences(&log, prev), 1, "prev {prev} in:\n{log}");
    }
}
