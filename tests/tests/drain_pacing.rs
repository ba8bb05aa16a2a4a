//! A listener's drain of stale connections is paced (`stale_drain_rate`): after `stale_grace`
//! the agent closes them a few at a time, not all in one go, so new handshakes do not queue behind
//! thousands of closes. Real `openssl s_client` sessions through a real listener.

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    net::TcpListener,
    path::Path,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
};

use certreload_e2e::openssl::available as have_openssl;
use certreload_e2e::{
    kill_and_reap,
    pki::{Leaf, TestCa},
    skip_unless, Agent,
};

/// Connections made before the rotation, all stale after it.
const SESSIONS: usize = 4;

/// A line-echo upstream.
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

/// A long-lived `openssl s_client` session through the listener.
struct Session {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Drop for Session {
    fn drop(&mut self) {
        kill_and_reap(&mut self.child);
    }
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

    /// Sends a line and reads the echo; an empty reply when the server has closed.
    fn round_trip(&mut self, line: &str) -> String {
        if writeln!(self.stdin, "{line}")
            .and_then(|()| self.stdin.flush())
            .is_err()
        {
            return String::new();
        }
        let mut reply = String::new();
        self.stdout.read_line(&mut reply).ok();
        reply.trim().to_string()
    }
}

fn mv(from: &Path, to: &Path) {
    let status = Command::new("mv").arg(from).arg(to).status().expect("mv");
    assert!(status.success(), "mv {} {}", from.display(), to.display());
}

fn drained(agent: &Agent) -> usize {
    agent
        .records()
        .iter()
        .filter(|r| r["event"] == "connection_drained")
        .count()
}

#[test]
fn stale_connections_are_closed_at_the_configured_rate_not_all_at_once() {
    skip_unless!(
        have_openssl(),
        "openssl is needed (cargo xtask setup installs it)"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let p = |n: &str| dir.path().join(n);
    let ca = TestCa::new("listener CA");
    let (cert, key) = ca.issue(&Leaf::server("localhost"));
    fs::write(p("tls.crt"), cert).expect("write");
    fs::write(p("tls.key"), key).expect("write");
    let audit = p("audit.jsonl");
    // 2 a second: one stale connection closed every 500 ms.
    let config = format!(
        "[agent]\nadmin = \"127.0.0.1:0\"\npair_timeout = \"5s\"\n[audit]\npath = \"{audit}\"\n\
         [[bundle]]\nname = \"web\"\nkind = \"server\"\ncert = \"{cert}\"\nkey = \"{key}\"\n\
         [[listener]]\nname = \"paced\"\nlisten = \"127.0.0.1:0\"\nbundle = \"web\"\n\
         upstream = \"tcp://{upstream}\"\nstale_grace = \"1s\"\nstale_drain_rate = 2\n",
        audit = audit.display(),
        cert = p("tls.crt").display(),
        key = p("tls.key").display(),
        upstream = echo_upstream(),
    );
    fs::write(p("certreload.toml"), config).expect("write");
    let agent = Agent::start(&p("certreload.toml"), &audit, &[]);
    let addr = agent.log_field("listener=paced", "address");
    let mut sessions: Vec<Session> = (0..SESSIONS).map(|_| Session::open(&addr)).collect();
    for (i, s) in sessions.iter_mut().enumerate() {
        assert_eq!(
            s.round_trip(&format!("hello {i}")),
            format!("echo: hello {i}")
        );
    }

    let (cert, key) = ca.issue(&Leaf::server("localhost"));
    fs::write(p("new.crt"), cert).expect("write");
    fs::write(p("new.key"), key).expect("write");
    mv(&p("new.crt"), &p("tls.crt"));
    mv(&p("new.key"), &p("tls.key"));
    agent.expect_record("generation 2", |r| {
        r["event"] == "material_accepted" && r["new_generation"] == 2
    });

    // The first close: the others wait for their turn (500 ms each), so right now most of them
    // still carry traffic. Unpaced, all four were told to close in the same tick.
    agent.expect_record("the first drained connection", |r| {
        r["event"] == "connection_drained"
    });
    let mut open = 0;
    for (i, s) in sessions.iter_mut().enumerate() {
        if s.round_trip(&format!("still {i}")) == format!("echo: still {i}") {
            open += 1;
        }
    }
    assert!(
        open >= SESSIONS - 2,
        "{open} of {SESSIONS} sessions still open when the first was drained"
    );

    // All of them go in the end, each audited once.
    let deadline = std::time::Instant::now() + certreload_e2e::EVENT_DEADLINE;
    while drained(&agent) < SESSIONS {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of {SESSIONS} stale connections drained",
            drained(&agent)
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    for (i, s) in sessions.iter_mut().enumerate() {
        assert_eq!(
            s.round_trip("after the drain"),
            "",
            "session {i} still open"
        );
    }
    let records = agent.stop();
    let count = records
        .iter()
        .filter(|r| r["event"] == "connection_drained")
        .count();
    assert_eq!(count, SESSIONS, "each stale connection drained once");
}
