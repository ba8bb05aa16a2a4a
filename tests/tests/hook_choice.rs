//! The hook strategy choice (`--hook auto`, the default): the agent starts the cheapest strategy
//! the kernel allows (fentry, then the syscall tracepoints, then with `--mode auto` inotify) and
//! says which and why, with the refusal of each cheaper one word for word: in the log, in the
//! watch's final `monitor_stats`, in `/status` (`monitor.strategy`, `monitor.strategy_reason`)
//! and in the `certreload_monitor_strategy_info` metric. An explicit `--hook` is reported as
//! requested. eBPF needs root: under CI=true these tests fail instead of skipping.

use std::{fs, path::Path, process::Command};

use certreload_e2e::{
    ci, is_root, pki::Leaf, run_writer, sha256_hex, skip_unless, Agent, Mode, Watch,
};
use serde_json::Value;

/// The chosen strategy and its reason must agree with the kernel's answer: on a kernel that
/// refuses (or an agent that does not build) fentry, the tracepoints with fentry's refusal named.
fn assert_auto_choice(strategy: &str, reason: &str) {
    match strategy {
        "fentry" => assert!(
            reason.contains("fentry: the kernel allows it"),
            "fentry chosen, and said why: {reason}"
        ),
        "tracepoints" => {
            assert!(
                reason.starts_with("fentry: ") && !reason.starts_with("fentry: the kernel allows"),
                "the refusal of the cheaper fentry strategy comes first: {reason}"
            );
            assert!(
                reason.ends_with("tracepoints: the kernel allows it"),
                "then why the tracepoints: {reason}"
            );
        }
        other => panic!("--hook auto chose {other:?} ({reason})"),
    }
}

#[test]
fn ebpf_auto_hook_starts_the_cheapest_strategy_and_says_why_in_the_log_and_stats() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = dir.path().join("tls.crt");
    fs::write(&cert, "OLD\n").expect("write");
    // No --hook: the default is auto.
    let Some(mut watch) = Watch::start(Mode::Ebpf, &[&cert], &[]) else {
        return;
    };
    let log = watch.log();
    let chosen = log
        .lines()
        .find(|l| l.contains("hook strategy chosen"))
        .unwrap_or_else(|| panic!("the choice is logged:\n{log}"));
    // The strategy chosen works: a change is seen and attributed.
    fs::write(dir.path().join("new"), "NEW\n").expect("write");
    run_writer(Command::new("cp").arg(dir.path().join("new")).arg(&cert));
    let change = watch.expect(&cert, "modified by cp", |c| {
        c["sha256"] == sha256_hex(b"NEW\n")
    });
    assert_eq!(change["source"], "ebpf", "{change:#}");
    assert_eq!(change["writer"]["comm"], "cp", "{change:#}");
    let (_, stats) = watch.stop();
    let strategy = stats["hook"].as_str().expect("the hook in use");
    let reason = stats["strategy_reason"].as_str().expect("why");
    assert_auto_choice(strategy, reason);
    assert!(
        chosen.contains(&format!("strategy={strategy}")) && chosen.contains(reason),
        "the log line names the same choice and reason: {chosen}"
    );
}

#[test]
fn ebpf_an_explicit_hook_is_reported_as_requested() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = dir.path().join("tls.crt");
    fs::write(&cert, "OLD\n").expect("write");
    let Some(watch) = Watch::start(Mode::Ebpf, &[&cert], &["--hook", "tracepoints"]) else {
        return;
    };
    let (_, stats) = watch.stop();
    assert_eq!(stats["hook"], "tracepoints", "{stats:#}");
    assert_eq!(
        stats["strategy_reason"], "requested (--hook tracepoints)",
        "{stats:#}"
    );
}

/// `certreload run` with an admin endpoint on a free port, watching one server bundle.
fn start_agent(dir: &Path) -> (Agent, String) {
    let (cert, key) = Leaf::server("localhost").self_signed();
    fs::write(dir.join("tls.crt"), cert).expect("write");
    fs::write(dir.join("tls.key"), key).expect("write");
    let audit = dir.join("audit.jsonl");
    let config = dir.join("certreload.toml");
    fs::write(
        &config,
        format!(
            "[agent]\nadmin = \"127.0.0.1:0\"\n[audit]\npath = \"{}\"\n[[bundle]]\nname = \"web\"\nkind = \"server\"\ncert = \"{}\"\nkey = \"{}\"\n",
            audit.display(),
            dir.join("tls.crt").display(),
            dir.join("tls.key").display()
        ),
    )
    .expect("write the config");
    // --mode auto and the default --hook auto: the whole chain down to inotify.
    let agent = Agent::start(&config, &audit, &["--mode", "auto"]);
    let admin = agent.log_field("agent ready", "admin");
    (agent, admin)
}

fn get(admin: &str, path: &str) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", &format!("http://{admin}{path}")])
        .output()
        .expect("curl runs");
    assert!(
        out.status.success(),
        "curl {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

#[test]
fn status_and_metrics_show_the_strategy_and_why() {
    skip_unless!(is_root() || !ci(), "CI=true: eBPF tests must run as root");
    let dir = tempfile::tempdir().expect("tempdir");
    let (agent, admin) = start_agent(dir.path());
    let status: Value = serde_json::from_str(&get(&admin, "/status")).expect("JSON status");
    let monitor = &status["monitor"];
    let strategy = monitor["strategy"].as_str().expect("monitor.strategy");
    let reason = monitor["strategy_reason"]
        .as_str()
        .expect("monitor.strategy_reason");
    if is_root() {
        assert_auto_choice(strategy, reason);
        assert_eq!(monitor["mode"], "ebpf", "{monitor:#}");
    } else {
        // Not root: every eBPF strategy is refused, each refusal named, and inotify runs.
        assert_eq!(strategy, "inotify", "{monitor:#}");
        assert!(
            reason.contains("fentry: ") && reason.contains("tracepoints: "),
            "{monitor:#}"
        );
    }
    let metrics = get(&admin, "/metrics");
    let info = format!("certreload_monitor_strategy_info{{strategy=\"{strategy}\"}} 1");
    assert!(
        metrics.lines().any(|l| l == info),
        "{info} in /metrics:\n{metrics}"
    );
    agent.stop();
}
