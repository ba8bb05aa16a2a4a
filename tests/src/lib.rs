//! Harness for certreload's end-to-end tests: start the real binary, drive real processes against
//! real files, read what it prints.
//!
//! Tests that need eBPF (root, the built object, a kernel that accepts the programs) skip with a
//! message on a developer machine, and fail under `CI=true`, where eBPF must work.

pub mod http;
pub mod kube;
pub mod openssl;
pub mod pki;

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{mpsc, Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;
use sha2::{Digest, Sha256};

/// How long to wait for an expected change before failing (generous: tests assert behaviour, not
/// speed; the benchmark measures latency).
pub const EVENT_DEADLINE: Duration = Duration::from_secs(20);

/// True when running under CI, where nothing may be skipped.
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// True when running as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Kills `child` and reaps it, where a test is done with a process or gives up on it (a timeout,
/// a `Drop`): it may have exited on its own already, so neither call's error says anything about
/// the test.
pub fn kill_and_reap(child: &mut Child) {
    // An error here means it is gone already: nothing left to stop.
    child.kill().ok();
    // Fails only for a child reaped already; the status of a killed process is not a result.
    child.wait().ok();
}

/// Skips (returns from) the test with a message, or fails under CI.
#[macro_export]
macro_rules! skip_unless {
    ($cond:expr, $why:expr) => {
        if !$cond {
            if $crate::ci() {
                panic!("CI=true: cannot skip: {}", $why);
            }
            eprintln!("SKIP: {}", $why);
            return;
        }
    };
}

/// Installs a Debian package when `probe` (an absolute path) is missing and this test runs as
/// root with apt-get; returns whether `probe` exists afterwards. (`cargo xtask setup` installs
/// the same packages; this covers a test run on its own.)
pub fn ensure_package(package: &str, probe: &str) -> bool {
    if Path::new(probe).exists() {
        return true;
    }
    if is_root() && Path::new("/usr/bin/apt-get").exists() {
        eprintln!("installing {package} for this test");
        // The answer is whether `probe` exists below, whatever apt-get's exit (it prints why).
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends", package])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .ok();
    }
    Path::new(probe).exists()
}

/// The certreload binary under test: `CERTRELOAD_BIN` (set by `cargo xtask test`), else the
/// workspace's debug build, built on demand.
pub fn certreload_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("CERTRELOAD_BIN") {
        return PathBuf::from(bin);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_path_buf();
    let bin = root.join("target/debug/certreload");
    static BUILD: std::sync::Once = std::sync::Once::new();
    BUILD.call_once(|| {
        let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args([
                "build",
                "--quiet",
                "--package",
                "certreload",
                "--bin",
                "certreload",
            ])
            .current_dir(&root)
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building certreload failed");
    });
    bin
}

/// Polls `check` every `every` until it returns `Some`, for at most `within`; `None` then. For
/// waiting on an external component (API server, controller-manager, etcd) to reach a state it
/// only reports on request.
pub fn poll<T>(
    within: Duration,
    every: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(t) = check() {
            return Some(t);
        }
        if Instant::now() > deadline {
            return None;
        }
        // Waiting for an external component to reach a state it reports on request.
        std::thread::sleep(every);
    }
}

/// SHA-256 hex of `bytes`, as certreload prints it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Buffers `child`'s stderr line by line; the receiver fires once a line containing `ready` is in
/// the buffer.
fn collect_stderr(
    child: &mut Child,
    ready: &'static str,
) -> (Arc<Mutex<String>>, mpsc::Receiver<()>) {
    let stderr = Arc::new(Mutex::new(String::new()));
    let (ready_tx, ready_rx) = mpsc::channel();
    let pipe = child.stderr.take().expect("stderr piped");
    let buffer = stderr.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            {
                let mut s = buffer
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                s.push_str(&line);
                s.push('\n');
            }
            // Signal only once the line is in the buffer, so readers see it.
            if line.contains(ready) {
                // The waiter may have timed out and gone; the line is in the buffer either way.
                ready_tx.send(()).ok();
            }
        }
    });
    (stderr, ready_rx)
}

/// Which change source the agent runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `--mode ebpf`: must load, attributes writers.
    Ebpf,
    /// `--mode inotify`: the fallback, never attributes.
    Inotify,
}

impl Mode {
    fn arg(self) -> &'static str {
        match self {
            Mode::Ebpf => "ebpf",
            Mode::Inotify => "inotify",
        }
    }
}

/// Set (e.g. `fentry`) where the kernel is known to allow a hook strategy (`cargo xtask vm`'s
/// guests): every eBPF-mode [`Watch`] must then have run with it.
pub const EXPECT_HOOK: &str = "CERTRELOAD_EXPECT_HOOK";

/// A running `certreload watch --output json`.
pub struct Watch {
    child: Child,
    changes: mpsc::Receiver<Value>,
    seen: Vec<Value>,
    stderr: Arc<Mutex<String>>,
    /// The mode it runs in.
    pub mode: Mode,
}

impl Watch {
    /// Starts watching `paths`; `None` when the test must be skipped (eBPF unavailable outside CI).
    pub fn start(mode: Mode, paths: &[&Path], extra: &[&str]) -> Option<Watch> {
        if mode == Mode::Ebpf && !is_root() {
            assert!(!ci(), "CI=true: eBPF tests must run as root");
            eprintln!("SKIP: eBPF tests need root");
            return None;
        }
        let mut child = Command::new(certreload_bin())
            .args(["watch", "--output", "json", "--mode", mode.arg()])
            .args(extra)
            .args(paths)
            .env("CERTRELOAD_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("certreload starts");
        let (stderr, ready_rx) = collect_stderr(&mut child, "monitor ready");
        let (tx, changes) = mpsc::channel();
        {
            let pipe = child.stdout.take().expect("stdout piped");
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let value: Value = serde_json::from_str(&line)
                        .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line}"));
                    if tx.send(value).is_err() {
                        break;
                    }
                }
            });
        }
        if ready_rx.recv_timeout(EVENT_DEADLINE).is_err() {
            kill_and_reap(&mut child);
            std::thread::sleep(Duration::from_millis(100));
            let log = stderr
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            if mode == Mode::Ebpf && !ci() && log.contains("eBPF monitor unavailable") {
                eprintln!("SKIP: eBPF unavailable here:\n{log}");
                return None;
            }
            panic!(
                "certreload watch --mode {} did not become ready:\n{log}",
                mode.arg()
            );
        }
        Some(Watch {
            child,
            changes,
            seen: Vec::new(),
            stderr,
            mode,
        })
    }

    /// Waits for a change of `path` satisfying `pred`; earlier non-matching changes are kept and
    /// returned by [`Watch::stop`].
    pub fn expect(&mut self, path: &Path, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + EVENT_DEADLINE;
        let path_str = path.to_string_lossy().into_owned();
        if let Some(i) = self
            .seen
            .iter()
            .position(|c| c["path"] == path_str.as_str() && pred(c))
        {
            return self.seen.remove(i);
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.changes.recv_timeout(left) {
                Ok(change) if change["path"] == path_str.as_str() && pred(&change) => return change,
                Ok(other) => self.seen.push(other),
                Err(_) => panic!(
                    "no change of {path_str} ({what}) within {EVENT_DEADLINE:?}; other changes: {:#?}\nagent log:\n{}",
                    self.seen,
                    self.log()
                ),
            }
        }
    }

    /// What the agent logged so far.
    pub fn log(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Stops the agent (SIGTERM) and returns the changes not consumed by [`Watch::expect`] and its
    /// final `monitor_stats`.
    pub fn stop(mut self) -> (Vec<Value>, Value) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().expect("agent exits");
        while let Ok(c) = self.changes.recv_timeout(Duration::from_millis(200)) {
            self.seen.push(c);
        }
        std::thread::sleep(Duration::from_millis(100));
        let log = self.log();
        assert!(status.success(), "agent exited with {status}:\n{log}");
        let stats = log
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find_map(|v| v.get("monitor_stats").cloned())
            .unwrap_or_else(|| panic!("no monitor_stats line in:\n{log}"));
        if let (Mode::Ebpf, Ok(want)) = (self.mode, std::env::var(EXPECT_HOOK)) {
            assert_eq!(
                stats["hook"], want,
                "{EXPECT_HOOK}: the hook strategy --hook auto chose: {stats:#}"
            );
        }
        (self.seen, stats)
    }
}

/// Runs `command` to completion and returns its pid (the writer the kernel must report).
pub fn run_writer(command: &mut Command) -> u32 {
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
    let pid = child.id();
    let status = child.wait().expect("writer exits");
    assert!(status.success(), "{command:?} failed: {status}");
    pid
}

/// Asserts the attribution a change must carry in `mode`: the writer's comm and pid under eBPF,
/// none under inotify (which cannot know).
pub fn assert_writer(mode: Mode, change: &Value, comm: &str, pid: Option<u32>) {
    match mode {
        Mode::Ebpf => {
            let w = &change["writer"];
            assert_eq!(w["comm"], comm, "writer comm in {change:#}");
            if let Some(pid) = pid {
                assert_eq!(w["tgid"], pid, "writer pid in {change:#}");
            }
            assert!(
                change["latency_us"].is_u64(),
                "eBPF changes carry a latency: {change:#}"
            );
            assert_eq!(change["source"], "ebpf");
            assert_eq!(change["attribution"], "proven", "{change:#}");
        }
        Mode::Inotify => {
            assert!(
                change["writer"].is_null(),
                "inotify cannot attribute: {change:#}"
            );
            assert_eq!(change["attribution"], "unseen", "{change:#}");
            assert_eq!(change["source"], "inotify");
        }
    }
}

/// A running `certreload run --config FILE`, with its audit log.
pub struct Agent {
    child: Child,
    stderr: Arc<Mutex<String>>,
    /// The audit log the configuration names.
    pub audit: PathBuf,
}

impl Agent {
    /// Starts the agent on `config` (auto mode: eBPF where it loads, inotify elsewhere) and waits
    /// until it has validated every bundle.
    pub fn start(config: &Path, audit: &Path, extra: &[&str]) -> Agent {
        Agent::start_wrapped(&[], config, audit, extra)
    }

    /// Starts an agent with `[events]` on for Node `node`, serving bundle `web` from `dir`'s
    /// tls.crt/tls.key, with `kubeconfig` as its only API credentials (in-cluster variables
    /// removed); its audit log is `dir/audit.jsonl`.
    pub fn start_with_events(dir: &Path, node: &str, kubeconfig: &Path) -> Agent {
        Agent::start_against_api(dir, node, kubeconfig, "", "enabled = true\n")
    }

    /// Starts an agent for Node `node` that talks to the API server of `kubeconfig` (its only API
    /// credentials: in-cluster variables removed), serving bundle `web` from `dir`'s
    /// tls.crt/tls.key, audit log `dir/audit.jsonl`; `audit` and `events` are extra lines of the
    /// `[audit]` and `[events]` tables (e.g. the witness settings, or `enabled = true`).
    pub fn start_against_api(
        dir: &Path,
        node: &str,
        kubeconfig: &Path,
        audit: &str,
        events: &str,
    ) -> Agent {
        let audit_path = dir.join("audit.jsonl");
        let config = dir.join("certreload.toml");
        std::fs::write(
            &config,
            format!(
                "[agent]\nadmin = \"127.0.0.1:0\"\n[audit]\npath = \"{}\"\n{audit}[events]\n{events}node = \"{node}\"\n[[bundle]]\nname = \"web\"\nkind = \"server\"\ncert = \"{}\"\nkey = \"{}\"\n",
                audit_path.display(),
                dir.join("tls.crt").display(),
                dir.join("tls.key").display()
            ),
        )
        .expect("write the agent's config");
        let env = format!("KUBECONFIG={}", kubeconfig.display());
        Agent::start_wrapped(
            &["env", "-u", "KUBERNETES_SERVICE_HOST", &env],
            &config,
            &audit_path,
            &[],
        )
    }

    /// Like [`Agent::start`], run through `wrapper` (e.g. `setpriv ... --`) when not empty.
    pub fn start_wrapped(wrapper: &[&str], config: &Path, audit: &Path, extra: &[&str]) -> Agent {
        let config = config.display().to_string();
        let args: Vec<&str> = ["run", "--config", config.as_str()]
            .into_iter()
            .chain(extra.iter().copied())
            .collect();
        Agent::spawn(wrapper, &args, audit)
    }

    /// `certreload ARGS` (any command that runs the agent, e.g. `demo`), writing to `audit`.
    pub fn start_args(args: &[&str], audit: &Path) -> Agent {
        Agent::spawn(&[], args, audit)
    }

    fn spawn(wrapper: &[&str], args: &[&str], audit: &Path) -> Agent {
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(certreload_bin());
                c
            }
            None => Command::new(certreload_bin()),
        };
        let mut child = command
            .args(args)
            .env("CERTRELOAD_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("certreload starts");
        let (stderr, ready_rx) = collect_stderr(&mut child, "agent ready");
        if ready_rx.recv_timeout(EVENT_DEADLINE).is_err() {
            kill_and_reap(&mut child);
            panic!(
                "certreload run did not become ready:\n{}",
                stderr
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone()
            );
        }
        Agent {
            child,
            stderr,
            audit: audit.to_path_buf(),
        }
    }

    /// The agent's process id (its /proc entries, its limits). Behind a wrapper that execs it
    /// (`prlimit`, `setpriv`, `env`) this is the agent itself.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the agent logged so far (stderr).
    pub fn log(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Where the first `needle` at or after byte `from` of the log ends, if it is there yet: long
    /// runs (the 1,000-rotation soak) poll with the returned offset instead of copying the whole,
    /// growing log with [`Agent::log`] each time.
    pub fn log_find(&self, from: usize, needle: &str) -> Option<usize> {
        let log = self
            .stderr
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let at = log.get(from..)?.find(needle)?;
        Some(from + at + needle.len())
    }

    /// The value of `key=` on the first log line containing `marker` (addresses the agent bound).
    pub fn log_field(&self, marker: &str, key: &str) -> String {
        let log = self.log();
        let line = log
            .lines()
            .find(|l| l.contains(marker))
            .unwrap_or_else(|| panic!("no log line with {marker:?}:\n{log}"));
        let needle = format!("{key}=");
        let start = line
            .find(&needle)
            .unwrap_or_else(|| panic!("no {key}= in {line}"))
            + needle.len();
        line[start..]
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .trim_matches('"')
            .to_string()
    }

    /// Every complete audit record so far. A line without its newline is one the agent is still
    /// writing (a read may see part of a `write()` on a regular file), so it is left for the next call.
    pub fn records(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.audit).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete
            .lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("audit line is not JSON ({e}): {l}"))
            })
            .collect()
    }

    /// Waits for an audit record matching `pred`.
    pub fn expect_record(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + EVENT_DEADLINE;
        loop {
            if let Some(r) = self.records().into_iter().find(|r| pred(r)) {
                return r;
            }
            if Instant::now() > deadline {
                panic!(
                    "no audit record {what} within {EVENT_DEADLINE:?}; records:\n{}\nagent log:\n{}",
                    self.records().iter().map(Value::to_string).collect::<Vec<_>>().join("\n"),
                    self.stderr.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the agent (SIGTERM) and returns every record.
    pub fn stop(mut self) -> Vec<Value> {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().expect("agent exits");
        assert!(
            status.success(),
            "agent exited with {status}:\n{}",
            self.stderr
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
        );
        self.records()
    }
}
