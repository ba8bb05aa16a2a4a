//! The audit file under faults, with the real agent: a full disk (a tiny tmpfs) and an immutable
//! file make appends fail without leaving a gap or a partial line; a deleted file is noticed and
//! continued after a `log_replaced` record that `audit verify` reports; a second agent on the
//! same file is refused; a torn last line ending inside a UTF-8 character is cut at start.
//!
//! The tmpfs and `chattr +i` tests need root (mount, FS_IOC_SETFLAGS): they skip without it, and
//! fail under `CI=true`.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use certreload_e2e::{
    certreload_bin, is_root, kill_and_reap, pki::TestCa, skip_unless, Agent, EVENT_DEADLINE,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// A CA bundle (one file, so each rewrite is one change) and an agent writing `audit`.
struct Setup {
    dir: tempfile::TempDir,
    audit: PathBuf,
    config: PathBuf,
    rewrites: usize,
}

impl Setup {
    /// Material and config in a fresh directory; the audit log at `audit` (default: in it).
    fn new(audit: Option<PathBuf>) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let audit = audit.unwrap_or_else(|| dir.path().join("log/audit.jsonl"));
        fs::write(
            dir.path().join("ca.crt"),
            TestCa::new("audit test CA 0").pem,
        )
        .expect("write");
        let config = dir.path().join("certreload.toml");
        fs::write(
            &config,
            format!(
                "[agent]\nadmin = \"127.0.0.1:0\"\n[audit]\npath = \"{}\"\nmax_size = \"64KiB\"\n[[bundle]]\nname = \"ca\"\nkind = \"ca\"\ncert = \"{}\"\n",
                audit.display(),
                dir.path().join("ca.crt").display()
            ),
        )
        .expect("write config");
        Setup {
            dir,
            audit,
            config,
            rewrites: 0,
        }
    }

    fn start(&self) -> Agent {
        Agent::start(&self.config, &self.audit, &["--mode", "inotify"])
    }

    /// Replaces the CA bundle with a new CA (write to a temporary file, rename), so the agent
    /// has a change to record.
    fn rotate_ca(&mut self) {
        self.rewrites += 1;
        let tmp = self.dir.path().join(".ca.crt.tmp");
        fs::write(
            &tmp,
            TestCa::new(&format!("audit test CA {}", self.rewrites)).pem,
        )
        .expect("write");
        fs::rename(&tmp, self.dir.path().join("ca.crt")).expect("rename");
    }
}

/// The log's files, oldest first (rotated ones included).
fn log_files(audit: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = (1..=9)
        .rev()
        .map(|n| PathBuf::from(format!("{}.{n}", audit.display())))
        .filter(|p| p.exists())
        .collect();
    files.push(audit.to_path_buf());
    files
}

/// Every record of every file of the log, oldest first.
fn all_records(audit: &Path) -> Vec<Value> {
    log_files(audit)
        .iter()
        .flat_map(|f| {
            fs::read_to_string(f)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect::<Vec<Value>>()
        })
        .collect()
}

/// Waits until a record of a verdict on the CA bundle with seq above `after` is durable;
/// returns its seq.
fn expect_verdict_after(agent: &Agent, after: i64) -> i64 {
    let deadline = Instant::now() + EVENT_DEADLINE;
    loop {
        if let Some(seq) = all_records(&agent.audit)
            .iter()
            .filter(|r| r["event"] == "material_accepted" || r["event"] == "material_rejected")
            .filter_map(|r| r["seq"].as_i64())
            .find(|seq| *seq > after)
        {
            return seq;
        }
        assert!(
            Instant::now() < deadline,
            "no verdict record after seq {after} within {EVENT_DEADLINE:?}; agent log:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last seq in the log, or -1.
fn last_seq(audit: &Path) -> i64 {
    all_records(audit)
        .last()
        .and_then(|r| r["seq"].as_i64())
        .unwrap_or(-1)
}

/// How many times the agent reported a failed append so far: the audit log's own line, or the
/// reload pipeline's (which is all an agent before the audit log said it had shows).
fn failed_appends(agent: &Agent) -> usize {
    let log = agent.log();
    log.matches("audit record not written").count()
        + log.matches("cannot write the audit record").count()
}

/// The seq of the last verdict record, or -1.
fn last_verdict(audit: &Path) -> i64 {
    all_records(audit)
        .iter()
        .filter(|r| r["event"] == "material_accepted" || r["event"] == "material_rejected")
        .filter_map(|r| r["seq"].as_i64())
        .next_back()
        .unwrap_or(-1)
}

/// Rewrites the CA until the agent reports a failed append (the first records may still fit in
/// the file's last allocated page). Each rewrite waits for its verdict or a failure, so no two
/// rewrites fall into one change.
fn rotate_until_an_append_fails(setup: &mut Setup, agent: &Agent) {
    let before = failed_appends(agent);
    for _ in 0..40 {
        let verdict = last_verdict(&setup.audit);
        setup.rotate_ca();
        let deadline = Instant::now() + EVENT_DEADLINE;
        while failed_appends(agent) == before && last_verdict(&setup.audit) == verdict {
            assert!(
                Instant::now() < deadline,
                "the agent neither recorded a verdict nor failed to write a record:\n{}",
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        if failed_appends(agent) > before {
            return;
        }
    }
    panic!("no append failed on a full filesystem:\n{}", agent.log());
}

/// `certreload audit verify --output json FILES`: exit code, document, and the text output.
fn verify(files: &[PathBuf]) -> (i32, Value, String) {
    let run = |format: &str| {
        Command::new(certreload_bin())
            .args(["audit", "verify", "--output", format])
            .args(files)
            .output()
            .expect("certreload audit verify runs")
    };
    let json = run("json");
    let doc: Value = serde_json::from_slice(&json.stdout).unwrap_or_else(|e| {
        panic!(
            "verify output is not JSON ({e}): {}",
            String::from_utf8_lossy(&json.stdout)
        )
    });
    let text = String::from_utf8_lossy(&run("text").stdout).into_owned();
    (json.status.code().unwrap_or(-1), doc, text)
}

/// Asserts that `files` verify whole: exit 0, intact, every seq from 0 present once.
fn assert_whole(files: &[PathBuf]) {
    let (code, doc, text) = verify(files);
    assert_eq!(code, 0, "{doc:#}");
    assert_eq!(doc["intact"], true, "{doc:#}");
    assert!(text.starts_with("intact"), "{text}");
    let seqs: Vec<i64> = files
        .iter()
        .flat_map(|f| {
            fs::read_to_string(f)
                .expect("read")
                .lines()
                .map(|l| {
                    serde_json::from_str::<Value>(l).expect("every line is one record")["seq"]
                        .as_i64()
                        .expect("seq")
                })
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(seqs, (0..seqs.len() as i64).collect::<Vec<_>>());
}

/// A tmpfs of `size` mounted on a new directory, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        if !is_root() {
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .ok()?;
        status.success().then_some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: an agent left running by a failed test must not keep the mount. Best effort: a
        // Drop cannot fail the test, and umount prints why it could not.
        Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status()
            .ok();
    }
}

/// A history of `n` records of about 1 KiB each, hash-chained as the agent writes them, so
/// the log is near its rotation size before the agent starts.
fn seed_history(audit: &Path, n: u64) {
    let instance = "0123456789abcdef0123456789abcdef";
    let mut prev = hex::encode(Sha256::digest(format!(
        "certreload-audit-anchor:{instance}"
    )));
    let mut text = String::new();
    for seq in 0..n {
        let line = serde_json::json!({
            "seq": seq,
            "ts": "2026-11-30T00:00:00Z",
            "instance": instance,
            "bundle": null,
            "event": "agent_stopped",
            "reason": "x".repeat(1000),
            "prev": prev,
        })
        .to_string();
        prev = hex::encode(Sha256::digest(line.as_bytes()));
        text.push_str(&line);
        text.push('\n');
    }
    fs::create_dir_all(audit.parent().expect("a directory")).expect("mkdir");
    fs::write(audit, text).expect("seed");
}

#[test]
fn a_full_disk_costs_records_but_never_the_chain_root_tmpfs() {
    let Some(fs_) = Tmpfs::mount("256k") else {
        skip_unless!(false, "mounting a tmpfs needs root");
        return;
    };
    let audit = fs_.path().join("audit.jsonl");
    // 60 records of ~1 KiB: the first changes push the log over 64KiB and rotate it.
    seed_history(&audit, 60);
    let mut setup = Setup::new(Some(audit.clone()));
    let agent = setup.start();
    let mut seq = expect_verdict_after(&agent, -1);
    while !PathBuf::from(format!("{}.1", audit.display())).exists() {
        setup.rotate_ca();
        seq = expect_verdict_after(&agent, seq);
    }
    // Fill the filesystem.
    let filler = fs_.path().join("filler");
    {
        let mut f = fs::File::create(&filler).expect("filler");
        while f.write_all(&[0u8; 4096]).is_ok() {}
    }
    rotate_until_an_append_fails(&mut setup, &agent);
    // A second failure once the first has happened (the file is full now).
    rotate_until_an_append_fails(&mut setup, &agent);
    fs::remove_file(&filler).expect("free the space");
    for _ in 0..3 {
        setup.rotate_ca();
        seq = expect_verdict_after(&agent, seq);
    }
    agent.stop();
    assert_whole(&log_files(&audit));
}

#[test]
fn an_immutable_audit_file_costs_records_but_never_the_chain_root_chattr() {
    skip_unless!(is_root(), "chattr +i needs root");
    let mut setup = Setup::new(None);
    let agent = setup.start();
    let mut seq = expect_verdict_after(&agent, -1);
    let audit = setup.audit.clone();
    let chattr = |flag: &str| {
        let ok = Command::new("chattr")
            .arg(flag)
            .arg(&audit)
            .stderr(Stdio::inherit())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "chattr {flag} {}", audit.display());
    };
    chattr("+i");
    let before = failed_appends(&agent);
    setup.rotate_ca();
    let deadline = Instant::now() + EVENT_DEADLINE;
    while failed_appends(&agent) == before {
        assert!(
            Instant::now() < deadline,
            "no failed append:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    chattr("-i");
    for _ in 0..2 {
        setup.rotate_ca();
        seq = expect_verdict_after(&agent, seq);
    }
    agent.stop();
    assert_whole(&log_files(&setup.audit));
}

#[test]
fn a_deleted_audit_file_is_recreated_with_a_discontinuity_that_verify_reports() {
    let mut setup = Setup::new(None);
    let agent = setup.start();
    let seq = expect_verdict_after(&agent, -1);
    let last_before = last_seq(&setup.audit);
    fs::remove_file(&setup.audit).expect("rm the audit log");
    setup.rotate_ca();
    expect_verdict_after(&agent, seq);
    let records = agent.stop();
    assert_eq!(records[0]["event"], "log_replaced", "{records:#?}");
    assert_eq!(records[0]["reason"], "deleted");
    assert_eq!(records[0]["previous_seq"], last_before);
    assert_eq!(records[0]["seq"], last_before + 1);
    let (code, doc, text) = verify(&[setup.audit.clone()]);
    // Every record present links (a summary, no "error"), but the log is not whole: exit 1.
    assert!(doc.get("error").is_none(), "the new file verifies: {doc:#}");
    assert_eq!(doc["intact"], false, "but is not whole: {doc:#}");
    assert_eq!(code, 1, "{doc:#}");
    let d = &doc["summary"]["discontinuities"][0];
    assert_eq!(d["reason"], "deleted");
    assert_eq!(d["missing"]["last"], last_before);
    assert!(
        text.contains(&format!(
            "starts after a discontinuity at seq {last_before}"
        )),
        "{text}"
    );
    assert!(!text.starts_with("intact"), "{text}");
}

#[test]
fn a_second_agent_on_the_same_audit_file_is_refused_and_the_first_runs_on() {
    let mut setup = Setup::new(None);
    let first = setup.start();
    let seq = expect_verdict_after(&first, -1);
    let mut second = Command::new(certreload_bin())
        .args(["run", "--mode", "inotify", "--config"])
        .arg(&setup.config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("certreload starts");
    let deadline = Instant::now() + EVENT_DEADLINE;
    let status = loop {
        if let Some(status) = second.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            kill_and_reap(&mut second);
            panic!("a second agent on the same audit file kept running");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().expect("piped"), &mut stderr)
        .expect("read stderr");
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains(&setup.audit.display().to_string()),
        "names the file: {stderr}"
    );
    assert!(
        stderr.contains(&format!("pid {}", first.pid())),
        "names the holder: {stderr}"
    );
    // The first agent still records.
    setup.rotate_ca();
    expect_verdict_after(&first, seq);
    first.stop();
    assert_whole(&[setup.audit.clone()]);
}

#[test]
fn a_torn_tail_ending_inside_a_utf8_character_is_cut_at_start() {
    let mut setup = Setup::new(None);
    let agent = setup.start();
    expect_verdict_after(&agent, -1);
    agent.stop();
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(&setup.audit)
        .expect("open");
    // "é" is C3 A9: the crash came after its first byte.
    f.write_all(b"{\"seq\":99,\"reason\":\"caf\xC3")
        .expect("torn write");
    drop(f);
    let agent = setup.start();
    let seq = last_seq(&setup.audit);
    setup.rotate_ca();
    expect_verdict_after(&agent, seq);
    agent.stop();
    let text = fs::read(&setup.audit).expect("read");
    assert!(
        !text.windows(4).any(|w| w == b"caf\xC3"),
        "the torn tail was cut"
    );
    assert_whole(&[setup.audit.clone()]);
}
