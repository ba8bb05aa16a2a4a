//! The admin endpoint under hostile clients (issue 10, item 2): idle connections beyond the caps
//! are closed at once and `/healthz` keeps answering, a client that sends its headers slowly is
//! closed after `header_read_timeout`, and thousands of connections cannot grow the agent past a
//! memory limit (run in a memory-limited cgroup where the machine allows). The real-API-server
//! authentication of `/metrics` and `/status` is in kube_admin.rs.
//!
//! Clients connect from different loopback addresses (127.0.0.0/8 is all on `lo`) so the
//! per-client cap and the total cap can be told apart.

use std::{
    fs,
    io::{ErrorKind, Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use certreload_e2e::{pki::Leaf, Agent, EVENT_DEADLINE};

/// An agent serving one bundle with the admin endpoint on 127.0.0.1 and `admin` as its `[admin]`
/// table; returns it with the admin address.
fn start_agent(dir: &Path, admin: &str, wrapper: &[&str]) -> (Agent, SocketAddr) {
    let (cert, key) = Leaf::server("localhost").self_signed();
    fs::write(dir.join("tls.crt"), cert).expect("write");
    fs::write(dir.join("tls.key"), key).expect("write");
    let audit = dir.join("audit.jsonl");
    let config = dir.join("certreload.toml");
    fs::write(
        &config,
        format!(
            "[agent]\nadmin = \"127.0.0.1:0\"\n[admin]\n{admin}\n[audit]\npath = \"{}\"\n[[bundle]]\nname = \"web\"\nkind = \"server\"\ncert = \"{}\"\nkey = \"{}\"\n",
            audit.display(),
            dir.join("tls.crt").display(),
            dir.join("tls.key").display()
        ),
    )
    .expect("write the config");
    let agent = Agent::start_wrapped(wrapper, &config, &audit, &["--mode", "inotify"]);
    let addr = agent
        .log_field("agent ready", "admin")
        .parse()
        .expect("admin address");
    (agent, addr)
}

/// A TCP connection to `to` from the loopback address `from` (std has no bind-before-connect).
fn try_connect_from(from: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    let rt = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime")
    });
    let from: IpAddr = from.parse().expect("source address");
    let stream = rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(from, 0))?;
        tokio::time::timeout(Duration::from_secs(10), socket.connect(to))
            .await
            .map_err(|_| std::io::Error::from(ErrorKind::TimedOut))?
    })?;
    let stream = stream.into_std()?;
    stream.set_nonblocking(false)?;
    Ok(stream)
}

fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    try_connect_from(from, to).unwrap_or_else(|e| panic!("connect from {from} to {to}: {e}"))
}

/// Whether the server closed `stream` (EOF or reset) within `within`; data the server sends
/// first (an error response) is read past.
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        stream.set_read_timeout(Some(left)).expect("read timeout");
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false
            }
            Err(_) => return true,
        }
    }
}

/// Whether `stream` is still open now: nothing to read and no EOF.
fn still_open(stream: &TcpStream) -> bool {
    stream.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 16];
    let mut reader = stream;
    let open = matches!(reader.read(&mut buf), Err(e) if e.kind() == ErrorKind::WouldBlock);
    stream.set_nonblocking(false).expect("blocking");
    open
}

/// `GET path` over a fresh connection from 127.0.0.1: the status code, or `None` when the
/// connection was closed without an answer.
fn get(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    // A timeout or a reset keeps what arrived: the status line below is the answer, or None.
    s.read_to_string(&mut response).ok();
    response.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// Polls `GET path` until it answers `want` or [`EVENT_DEADLINE`] passes.
fn await_status(addr: SocketAddr, path: &str, want: u16, what: &str) {
    let deadline = Instant::now() + EVENT_DEADLINE;
    let mut last;
    loop {
        last = get(addr, path);
        if last == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: GET {path} answered {last:?}, not {want}, within {EVENT_DEADLINE:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn idle_connections_beyond_the_caps_are_closed_at_once_and_healthz_still_answers() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Long timeouts: every closure seen here is the cap's, not a timer's.
    let (agent, addr) = start_agent(
        dir.path(),
        "max_connections = 12\nmax_connections_per_client = 4\nheader_read_timeout = \"120s\"\nidle_timeout = \"3600s\"",
        &[],
    );
    // One client, seven idle connections: four are held, three closed at once.
    let mut first: Vec<TcpStream> = (0..7).map(|_| connect_from("127.0.0.2", addr)).collect();
    for (i, s) in first.iter_mut().enumerate().skip(4) {
        assert!(
            closed_within(s, EVENT_DEADLINE),
            "connection {i} from 127.0.0.2 beyond max_connections_per_client = 4 is closed"
        );
    }
    for (i, s) in first.iter().enumerate().take(4) {
        assert!(still_open(s), "connection {i} from 127.0.0.2 is held");
    }
    assert_eq!(
        get(addr, "/healthz"),
        Some(200),
        "another client is served while one is at its cap"
    );

    // Four more clients, four connections each, want 16 slots where 8 are left: the total
    // holds, and the kubelet's probe is closed too until a slot frees. The probe is accepted after
    // every one of them, so once it is closed unanswered every refusal before it has happened.
    let others: Vec<TcpStream> = ["127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6"]
        .iter()
        .flat_map(|from| (0..4).map(|_| connect_from(from, addr)))
        .collect();
    assert_eq!(
        get(addr, "/healthz"),
        None,
        "the total cap holds for everyone"
    );
    let held = first
        .iter()
        .chain(&others)
        .filter(|s| still_open(s))
        .count();
    assert_eq!(
        held, 12,
        "exactly max_connections = 12 connections are held"
    );
    // The first client goes away: its slots come back and the probe answers again.
    drop(first);
    await_status(addr, "/healthz", 200, "after the idle client left");
    assert_eq!(get(addr, "/readyz"), Some(200));
    drop(others);
    let log = agent.log();
    assert!(
        log.contains("admin.max_connections_per_client") && log.contains("admin.max_connections"),
        "refusals are logged naming the cap:\n{log}"
    );
    agent.stop();
}

#[test]
fn headers_sent_slowly_or_never_are_closed_after_the_header_read_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (agent, addr) = start_agent(
        dir.path(),
        "header_read_timeout = \"1s\"\nidle_timeout = \"3600s\"",
        &[],
    );
    // Slowloris: a request line, then one header byte at a time, each soon enough to keep the
    // connection busy (so the idle timeout never applies), the headers never complete.
    let mut slow = connect_from("127.0.0.2", addr);
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .expect("request line");
    let trickle_until = Instant::now() + Duration::from_secs(20);
    let mut closed = false;
    while Instant::now() < trickle_until {
        if slow.write_all(b"a").is_err() || !still_open(&slow) {
            closed = true;
            break;
        }
        // The client's pace, not synchronisation: the server must act on its own.
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        closed,
        "a client trickling its headers for 20 s is closed (header_read_timeout = 1s)"
    );
    // A connection that never sends anything is closed too.
    let mut silent = connect_from("127.0.0.3", addr);
    assert!(
        closed_within(&mut silent, EVENT_DEADLINE),
        "a connection that sends nothing is closed after header_read_timeout"
    );
    // And a keep-alive connection after its response, waiting for a next request that never comes.
    let mut kept = connect_from("127.0.0.4", addr);
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("request");
    let mut answer = [0u8; 12];
    kept.read_exact(&mut answer).expect("response");
    assert_eq!(&answer, b"HTTP/1.1 200");
    assert!(
        closed_within(&mut kept, EVENT_DEADLINE),
        "an idle keep-alive connection is closed after header_read_timeout"
    );
    assert_eq!(get(addr, "/healthz"), Some(200));
    agent.stop();
}

#[test]
fn a_client_that_stops_reading_is_closed_after_the_idle_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A long header-read timeout: the closure seen here is the idle timer's.
    let (agent, addr) = start_agent(
        dir.path(),
        "header_read_timeout = \"120s\"\nidle_timeout = \"1s\"",
        &[],
    );
    // Pipelined requests, never a response read: the agent's writes back up until no byte moves.
    let mut s = connect_from("127.0.0.2", addr);
    s.set_nonblocking(true).expect("nonblocking");
    let request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut closed = false;
    while Instant::now() < deadline {
        match s.write(request) {
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                // Both directions are full; the client's pace, not synchronisation.
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    assert!(
        closed,
        "a connection whose client stopped reading is closed (reset) after idle_timeout = 1s"
    );
    assert_eq!(get(addr, "/healthz"), Some(200));
    agent.stop();
}

/// A memory cgroup for the agent with `limit` bytes: (directory, the file to write the pid to,
/// the file whose `oom_kill` counts kills). `None` (with the reason) where there is none.
fn memory_cgroup(limit: u64) -> Result<(PathBuf, PathBuf, PathBuf), String> {
    let name = format!("certreload-admin-{}", std::process::id());
    let v2 = Path::new("/sys/fs/cgroup");
    let v2_memory = fs::read_to_string(v2.join("cgroup.controllers"))
        .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"));
    let v1 = Path::new("/sys/fs/cgroup/memory");
    let (dir, limit_file, events) = if v2_memory {
        // Delegate the memory controller to children of the root (a no-op when already on). Not
        // checked here: without it the new cgroup has no memory.max, and writing the limit below
        // returns that error.
        fs::write(v2.join("cgroup.subtree_control"), "+memory").ok();
        let dir = v2.join(&name);
        (
            dir.clone(),
            dir.join("memory.max"),
            dir.join("memory.events"),
        )
    } else if v1.join("memory.limit_in_bytes").exists() {
        let dir = v1.join(&name);
        (
            dir.clone(),
            dir.join("memory.limit_in_bytes"),
            dir.join("memory.oom_control"),
        )
    } else {
        return Err("no cgroup v2 memory controller and no cgroup v1 memory hierarchy".into());
    };
    fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    fs::write(&limit_file, limit.to_string())
        .map_err(|e| format!("write {}: {e}", limit_file.display()))?;
    Ok((dir.clone(), dir.join("cgroup.procs"), events))
}

/// `oom_kill N` from memory.events (v2) or memory.oom_control (v1).
fn oom_kills(events: &Path) -> u64 {
    fs::read_to_string(events)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Raises this process's soft descriptor limit to the hard one (the agent inherits it), so the
/// flood below is limited by the agent's caps, not by descriptors.
fn raise_nofile() -> u64 {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a valid, exclusive rlimit.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
        l.rlim_cur = l.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &l);
    }
    l.rlim_cur
}

const CONNECTIONS: usize = 8000;
const MEMORY_LIMIT: u64 = 64 * 1024 * 1024;

#[test]
fn thousands_of_half_sent_requests_do_not_oom_the_agent_in_a_64mib_cgroup() {
    certreload_e2e::skip_unless!(
        certreload_e2e::is_root(),
        "a memory-limited cgroup needs root"
    );
    let (cgroup, procs, events) = match memory_cgroup(MEMORY_LIMIT) {
        Ok(c) => c,
        Err(why) if why.starts_with("no cgroup") => {
            // Not a fault of the machine's set-up the test can demand (a container without a
            // cgroup mount): skip even under CI, saying why.
            eprintln!("SKIP: {why}");
            return;
        }
        Err(why) => {
            assert!(
                !certreload_e2e::ci(),
                "CI=true: the memory cgroup should be writable as root: {why}"
            );
            eprintln!("SKIP: {why}");
            return;
        }
    };
    let nofile = raise_nofile();
    assert!(
        nofile as usize > CONNECTIONS + 256,
        "the hard descriptor limit ({nofile}) allows {CONNECTIONS} client connections"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let script = format!("echo $$ > {} && exec \"$@\"", procs.display());
    // The DaemonSet's settings (the defaults: 64 connections, 8 per client).
    let (agent, addr) = start_agent(dir.path(), "", &["sh", "-c", &script, "sh"]);
    // 8,000 connections from 250 client addresses, each holding 4 KiB of unfinished headers
    // (what a server must buffer): without caps this is ~100 MiB of buffers and tasks.
    let padding = format!(
        "GET /status HTTP/1.1\r\nHost: x\r\nX-Pad: {}",
        "a".repeat(4096)
    );
    let mut held = Vec::with_capacity(CONNECTIONS);
    for i in 0..CONNECTIONS {
        let from = format!("127.0.1.{}", 1 + i % 250);
        let Ok(mut s) = try_connect_from(&from, addr) else {
            break;
        };
        // A refused connection may be closed before the write: that is the cap working.
        s.write_all(padding.as_bytes()).ok();
        held.push(s);
    }
    let opened = held.len();
    // A connection refused by a killed agent ends the loop early: say so first.
    assert_eq!(
        oom_kills(&events),
        0,
        "the agent was OOM-killed after {opened} connections in a {MEMORY_LIMIT}-byte cgroup"
    );
    assert!(
        opened >= CONNECTIONS / 2,
        "the client opened {opened} of {CONNECTIONS} connections"
    );
    // The agent is alive and, once the header-read timeout has closed the flood's connections,
    // answers its probe.
    await_status(addr, "/healthz", 200, "after the flood");
    let closed = held.iter().filter(|s| !still_open(s)).count();
    drop(held);
    let kills = oom_kills(&events);
    let peak = fs::read_to_string(cgroup.join("memory.peak"))
        .or_else(|_| fs::read_to_string(cgroup.join("memory.max_usage_in_bytes")))
        .unwrap_or_default();
    println!(
        "{opened} connections ({closed} closed by the agent); cgroup peak {} bytes of {MEMORY_LIMIT}; oom_kill {kills}",
        peak.trim()
    );
    assert_eq!(kills, 0, "no process in the agent's cgroup was OOM-killed");
    assert!(
        closed >= opened - 64,
        "all but at most max_connections of the flood's connections were closed ({closed} of {opened})"
    );
    agent.stop();
    // Best effort: an empty cgroup left behind holds nothing, and the next run's name differs.
    fs::remove_dir(&cgroup).ok();
}
