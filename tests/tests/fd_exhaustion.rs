//! Descriptor exhaustion: the agent under a lowered `RLIMIT_NOFILE` (`prlimit`), flooded with
//! connections, and with its limit pulled below what it has open.
//!
//! Before the fix, `accept()` failing with `EMFILE` was retried at once: the loop spun (full
//! cores, a log line per attempt), a rotation made meanwhile was rejected with "Too many open
//! files", and a resync reported changes that had not happened. Now connections stop short of a
//! reserve of descriptors (closed at once, one log line per 10 s), `accept()` errors back off up to
//! 1 s with one log line per 10 s, and an `open()` that fails for lack of a descriptor is not a
//! change.
//!
//! CPU is read from `/proc/PID/stat` over a short window: a bound on behaviour (a spinning loop
//! takes a whole core), not a timing assertion.

use std::{
    fs,
    io::{ErrorKind, Read},
    net::TcpStream,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use certreload_e2e::openssl::{file_fingerprint, served_fingerprint};
use certreload_e2e::{
    pki::{Leaf, TestCa},
    skip_unless, Agent, EVENT_DEADLINE,
};

/// The agent's descriptor limit in these tests: low enough to exhaust with a few hundred
/// connections, high enough for start-up (eBPF maps and programs included).
const NOFILE: usize = 256;

/// The measurement window for CPU and log lines.
const WINDOW: Duration = Duration::from_secs(2);

fn have_tools() -> bool {
    ["openssl", "prlimit"].iter().all(|tool| {
        Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    })
}

/// utime + stime of `pid`, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("agent's /proc stat");
    // Fields after the command name (which may contain spaces) start at field 3 (state).
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / hz
}

/// Log lines the agent wrote about failed accepts or refused connections.
fn accept_lines(agent: &Agent) -> usize {
    agent
        .log()
        .lines()
        .filter(|l| {
            l.contains("accept failed") || l.contains("connection closed: the descriptor budget")
        })
        .count()
}

/// Over [`WINDOW`]: the agent's CPU share (of one core) and how many accept log lines it added.
fn measure(agent: &Agent) -> (f64, usize) {
    let (cpu0, lines0) = (cpu_seconds(agent.pid()), accept_lines(agent));
    let start = Instant::now();
    std::thread::sleep(WINDOW); // a measurement window, not a synchronisation
    let share = (cpu_seconds(agent.pid()) - cpu0) / start.elapsed().as_secs_f64();
    (share, accept_lines(agent).saturating_sub(lines0))
}

/// Waits until new handshakes at `addr` see `fingerprint`.
fn await_served(addr: &str, fingerprint: &str, agent: &Agent) {
    let deadline = Instant::now() + EVENT_DEADLINE;
    while served_fingerprint(addr) != fingerprint {
        assert!(
            Instant::now() < deadline,
            "new handshakes never saw the rotated certificate; agent log:\n{}",
            tail(&agent.log())
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The last lines of a log that may be huge (a spinning loop writes millions).
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    let from = lines.len().saturating_sub(40);
    format!(
        "({} lines; last {}):\n{}",
        lines.len(),
        lines.len() - from,
        lines[from..].join("\n")
    )
}

/// A directory with a CA, a server bundle (web) and a config with one listener in front of an
/// upstream nobody needs (the test's connections never finish a handshake).
struct Setup {
    dir: tempfile::TempDir,
    ca: TestCa,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = TestCa::new("fd exhaustion CA");
        let setup = Setup { dir, ca };
        let (cert, key) = setup.ca.issue(&Leaf::server("localhost"));
        fs::write(setup.path("tls.crt"), cert).expect("write");
        fs::write(setup.path("tls.key"), key).expect("write");
        let config = format!(
            r#"
[agent]
admin = "127.0.0.1:0"
resync = "2s"
pair_timeout = "5s"
[audit]
path = "{audit}"
[[bundle]]
name = "web"
kind = "server"
cert = "{cert}"
key = "{key}"
[[listener]]
name = "front"
listen = "127.0.0.1:0"
bundle = "web"
upstream = "tcp://127.0.0.1:9"
handshake_timeout = "60s"
"#,
            audit = setup.path("audit.jsonl").display(),
            cert = setup.path("tls.crt").display(),
            key = setup.path("tls.key").display(),
        );
        fs::write(setup.path("certreload.toml"), config).expect("write");
        setup
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    fn start(&self) -> Agent {
        Agent::start_wrapped(
            &["prlimit", &format!("--nofile={NOFILE}:{NOFILE}"), "--"],
            &self.path("certreload.toml"),
            &self.path("audit.jsonl"),
            &[],
        )
    }

    /// Rotates web with mv (cert, then key); returns the new certificate's fingerprint.
    fn rotate(&self) -> String {
        let (cert, key) = self.ca.issue(&Leaf::server("localhost"));
        fs::write(self.path("new.crt"), cert).expect("write");
        fs::write(self.path("new.key"), key).expect("write");
        let fingerprint = file_fingerprint(&self.path("new.crt"));
        fs::rename(self.path("new.crt"), self.path("tls.crt")).expect("mv cert");
        fs::rename(self.path("new.key"), self.path("tls.key")).expect("mv key");
        fingerprint
    }
}

fn try_connect(addr: &str) -> std::io::Result<TcpStream> {
    let addr = addr.parse().expect("listener address");
    TcpStream::connect_timeout(&addr, Duration::from_secs(5))
}

fn connect(addr: &str) -> TcpStream {
    try_connect(addr).expect("connect to the listener")
}

/// True when the agent closed `stream` (EOF without waiting).
fn closed_by_agent(mut stream: &TcpStream) -> bool {
    stream.set_nonblocking(true).expect("nonblocking");
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Err(e) if e.kind() == ErrorKind::ConnectionReset => true,
        _ => false,
    }
}

fn assert_no_record_blames_descriptors(agent: &Agent) {
    for record in agent.records() {
        assert!(
            !record.to_string().contains("Too many open files"),
            "a record blames the descriptor limit (the open failed, the file did not change): {record}"
        );
    }
}

#[test]
fn connection_flood_under_a_low_fd_limit_leaves_descriptors_for_a_rotation() {
    skip_unless!(
        have_tools(),
        "openssl and prlimit are needed (cargo xtask setup installs openssl)"
    );
    let setup = Setup::new();
    let agent = setup.start();
    let front = agent.log_field("listener=front", "address");

    // More connections than the limit has descriptors; none finishes a handshake.
    let flood = NOFILE + 150;
    let mut refused = None;
    let connections: Vec<TcpStream> = (0..flood)
        .map_while(|_| try_connect(&front).map_err(|e| refused = Some(e)).ok())
        .collect();
    let (cpu, lines) = measure(&agent);
    assert!(
        cpu < 0.5,
        "the agent used {:.0}% of a core while the connections were held; log {}",
        cpu * 100.0,
        tail(&agent.log())
    );
    assert!(
        lines <= 1,
        "{lines} accept/refusal log lines in {WINDOW:?} (one per 10 s allowed); log {}",
        tail(&agent.log())
    );

    assert!(
        refused.is_none(),
        "connection {} of {flood} failed: {refused:?}",
        connections.len() + 1
    );

    // The agent holds what its budget allows and closes the rest at once.
    let budget: usize = agent
        .log_field(
            "descriptor budget for connections",
            "connection_descriptors",
        )
        .parse()
        .expect("connection_descriptors is a number");
    assert!(
        budget > 0 && budget < NOFILE,
        "the budget leaves a reserve below the limit: {budget} of {NOFILE}"
    );
    let held = budget / 2; // two descriptors per proxied connection
    let deadline = Instant::now() + EVENT_DEADLINE;
    loop {
        let closed = connections.iter().filter(|c| closed_by_agent(c)).count();
        if closed == flood - held {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "expected {} of {flood} connections closed by the agent (it holds {held}), saw {closed}; agent log {}",
            flood - held,
            tail(&agent.log())
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = agent.log();
    let refusals: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("connection closed: the descriptor budget"))
        .collect();
    assert!(
        !refusals.is_empty() && refusals.len() <= 2,
        "the refusals are logged, rate-limited: {refusals:#?}"
    );
    assert!(
        !log.contains("accept failed"),
        "accept never met EMFILE: connections stop at the budget; log {}",
        tail(&log)
    );

    // A rotation made while every connection is held still reads its files.
    let rotated = setup.rotate();
    agent.expect_record("generation 2 while the connections are held", |r| {
        r["event"] == "material_accepted" && r["new_generation"] == 2
    });
    assert_no_record_blames_descriptors(&agent);

    drop(connections);
    await_served(&front, &rotated, &agent);
    agent.stop();
}

#[test]
fn accept_backs_off_on_emfile_and_an_unreadable_file_is_not_a_change() {
    skip_unless!(
        have_tools(),
        "openssl and prlimit are needed (cargo xtask setup installs openssl)"
    );
    let setup = Setup::new();
    let agent = setup.start();
    let front = agent.log_field("listener=front", "address");
    let pid = agent.pid().to_string();
    let prlimit = |soft: usize| {
        let status = Command::new("prlimit")
            .args(["--pid", &pid, &format!("--nofile={soft}:{NOFILE}")])
            .status()
            .expect("prlimit runs");
        assert!(
            status.success(),
            "prlimit --pid {pid} --nofile={soft}:{NOFILE}"
        );
    };

    // Descriptors run out for a reason the agent does not control (here: its limit drops below
    // stdin/stdout/stderr): every new descriptor fails with EMFILE.
    prlimit(3);
    let pending: Vec<TcpStream> = (0..5).map(|_| connect(&front)).collect();
    let deadline = Instant::now() + EVENT_DEADLINE;
    while !agent
        .log()
        .lines()
        .any(|l| l.contains("accept failed") && l.contains("Too many open files"))
    {
        assert!(
            Instant::now() < deadline,
            "accept never failed with EMFILE; log {}",
            tail(&agent.log())
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (cpu, lines) = measure(&agent);
    assert!(
        cpu < 0.5,
        "the agent used {:.0}% of a core while accept failed with EMFILE; log {}",
        cpu * 100.0,
        tail(&agent.log())
    );
    assert!(
        lines <= 1,
        "{lines} accept log lines in {WINDOW:?} (one per 10 s allowed); log {}",
        tail(&agent.log())
    );
    let log = agent.log();
    let emfile = log
        .lines()
        .find(|l| l.contains("accept failed"))
        .expect("an accept line");
    assert!(
        emfile.contains("EMFILE") && emfile.contains("one line per 10s"),
        "the EMFILE line says what failed and that it is rate-limited: {emfile}"
    );

    // A rotation now cannot even be opened; that is not a change of the file.
    let rotated = setup.rotate();
    let deadline = Instant::now() + EVENT_DEADLINE;
    while !agent
        .log()
        .lines()
        .any(|l| l.contains("cannot be read") && l.contains("Too many open files"))
    {
        assert!(
            Instant::now() < deadline,
            "the monitor never tried to read the rotated files; log {}",
            tail(&agent.log())
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_no_record_blames_descriptors(&agent);

    // Descriptors come back: the waiting connections are accepted and the rotation applied.
    prlimit(NOFILE);
    agent.expect_record("generation 2 once descriptors are back", |r| {
        r["event"] == "material_accepted" && r["new_generation"] == 2
    });
    assert_no_record_blames_descriptors(&agent);
    await_served(&front, &rotated, &agent);
    drop(pending);
    agent.stop();
}
