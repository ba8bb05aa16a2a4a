//! The TLS front with real clients: `openssl s_client` through a certreload listener in front of a
//! local upstream, across a certificate rotation.

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream},
    path::Path,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
};

use certreload_e2e::openssl::{available as have_openssl, file_fingerprint, served_fingerprint};
use certreload_e2e::{
    http, kill_and_reap,
    pki::{Leaf, TestCa},
    skip_unless, Agent,
};

/// Body the upstream answers an HTTP GET with (what curl must print through the listener).
const HTTP_BODY: &str = "hello from the upstream";

/// A line-echo server, the "component" behind the listener; a connection that starts with an
/// HTTP GET gets one HTTP/1.1 response instead, so curl can be the client.
fn echo_upstream() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let mut writer = stream.try_clone().expect("clone");
                let mut lines = BufReader::new(stream).lines().map_while(Result::ok);
                while let Some(line) = lines.next() {
                    if line.starts_with("GET ") {
                        // Skip the headers, answer, close.
                        for header in lines.by_ref() {
                            if header.trim().is_empty() {
                                break;
                            }
                        }
                        // The client may close before reading the answer.
                        write!(
                            writer,
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{HTTP_BODY}",
                            HTTP_BODY.len()
                        )
                        .ok();
                        break;
                    }
                    if writeln!(writer, "echo: {line}").is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// `curl https://localhost:PORT/` through the listener at `addr`, trusting `ca`, presenting
/// `client` (certificate, key) when given. Ok(body) on success, Err(curl's exit code and error).
fn curl(addr: &str, ca: &Path, client: Option<(&str, &str)>) -> Result<String, String> {
    let port = addr.rsplit_once(':').expect("host:port").1;
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "--cacert"])
        .arg(ca)
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .arg(format!("https://localhost:{port}/"));
    if let Some((cert, key)) = client {
        cmd.args(["--cert", cert, "--key", key]);
    }
    let out = cmd.output().expect("curl runs");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "curl exit {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Replaces `to` with `from` using mv(1), the way operators rotate files by hand.
fn mv(from: &Path, to: &Path) {
    let status = Command::new("mv")
        .arg(from)
        .arg(to)
        .status()
        .expect("mv runs");
    assert!(status.success(), "mv {} {}", from.display(), to.display());
}

/// A long-lived `openssl s_client` session, to send lines through after the swap.
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
        Session::open_with(addr, &[])
    }

    fn round_trip(&mut self, line: &str) -> String {
        writeln!(self.stdin, "{line}").expect("write");
        self.stdin.flush().expect("flush");
        let mut reply = String::new();
        self.stdout.read_line(&mut reply).expect("read");
        reply.trim().to_string()
    }

    /// True when the server closes the connection within 10 s (s_client -quiet exits on the
    /// server's close; stdin stays open, so nothing else ends it).
    fn closed_by_server(&mut self) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        false
    }
}

/// The listener's server certificate (localhost) from `ca`.
fn issue(ca: &TestCa) -> (String, String) {
    ca.issue(&Leaf::server("localhost"))
}

#[test]
fn rotation_reaches_new_handshakes_while_old_connections_keep_working_then_drain() {
    skip_unless!(
        have_openssl(),
        "openssl is needed (cargo xtask setup installs it)"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let p = |n: &str| dir.path().join(n);
    let issuer = TestCa::new("listener CA");
    fs::write(p("ca.crt"), &issuer.pem).expect("write");
    let (cert_a, key_a) = issue(&issuer);
    fs::write(p("tls.crt"), &cert_a).expect("write");
    fs::write(p("tls.key"), &key_a).expect("write");
    let upstream = echo_upstream();
    let audit = p("audit.jsonl");
    let config = format!(
        r#"
[agent]
admin = "127.0.0.1:0"
pair_timeout = "5s"
[audit]
path = "{audit}"
[[bundle]]
name = "web"
kind = "server"
cert = "{cert}"
key = "{key}"
ca = "{ca}"
[[listener]]
name = "front"
listen = "127.0.0.1:0"
bundle = "web"
upstream = "tcp://{upstream}"
[[listener]]
name = "draining"
listen = "127.0.0.1:0"
bundle = "web"
upstream = "tcp://{upstream}"
stale_grace = "1s"
"#,
        audit = audit.display(),
        cert = p("tls.crt").display(),
        key = p("tls.key").display(),
        ca = p("ca.crt").display(),
    );
    fs::write(p("certreload.toml"), config).expect("write");
    let agent = Agent::start(&p("certreload.toml"), &audit, &[]);
    let front = agent.log_field("listener=front", "address");
    let draining = agent.log_field("listener=draining", "address");
    let admin = agent.log_field("agent ready", "admin");

    let fingerprint_a = file_fingerprint(&p("tls.crt"));
    assert_eq!(
        served_fingerprint(&front),
        fingerprint_a,
        "serves certificate A"
    );
    let mut old = Session::open(&front);
    assert_eq!(old.round_trip("before"), "echo: before");
    let mut old_draining = Session::open(&draining);
    assert_eq!(old_draining.round_trip("hello"), "echo: hello");

    // Rotate with mv, cert then key, as many tools do.
    let (cert_b, key_b) = issue(&issuer);
    fs::write(p("new.crt"), &cert_b).expect("write");
    fs::write(p("new.key"), &key_b).expect("write");
    let fingerprint_b = file_fingerprint(&p("new.crt"));
    mv(&p("new.crt"), &p("tls.crt"));
    mv(&p("new.key"), &p("tls.key"));
    agent.expect_record("generation 2", |r| {
        r["event"] == "material_accepted" && r["new_generation"] == 2
    });
    // The listener follows the new generation (asynchronously, right after the publish).
    let deadline = std::time::Instant::now() + certreload_e2e::EVENT_DEADLINE;
    while served_fingerprint(&front) != fingerprint_b {
        assert!(
            std::time::Instant::now() < deadline,
            "new handshakes never saw certificate B"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    // The connection made before the swap still carries a request and its response.
    assert_eq!(old.round_trip("after"), "echo: after");
    let metrics = http::get_ok(&admin, "/metrics");
    assert!(
        metrics.contains(r#"certreload_listener_connections{listener="front",state="stale"} 1"#),
        "the pre-swap connection counts as stale:\n{metrics}"
    );
    assert!(
        metrics.contains("x509_cert_not_after{"),
        "x509 exporter families are exported:\n{metrics}"
    );
    let status = http::get_ok(&admin, "/status");
    assert!(status.contains("\"server_generation\":2"), "{status}");
    assert!(http::get_ok(&admin, "/readyz").starts_with("HTTP/1.1 200"));
    let table = Command::new(certreload_e2e::certreload_bin())
        .args(["status", "--admin", &admin])
        .output()
        .expect("status");
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("front")
            && table.contains("web")
            && (table.contains("mv[") || table.contains("unknown writer")),
        "certreload status shows listeners, bundles and the last writer:\n{table}"
    );

    // On the listener with stale_grace = 1s, the stale connection is closed and audited.
    let drained = agent.expect_record("connection_drained", |r| {
        r["event"] == "connection_drained" && r["listener"] == "draining"
    });
    assert_eq!(drained["generation"], 1, "{drained}");
    assert!(old_draining.closed_by_server());
    let records = agent.stop();
    assert!(
        !records
            .iter()
            .any(|r| r["event"] == "connection_drained" && r["listener"] == "front"),
        "no grace: never drained"
    );
    drop(old);
}

/// A client certificate (clientAuth) from `ca`, written as `<name>.crt` / `<name>.key`.
fn client_cert(dir: &Path, ca: &TestCa, name: &str) -> (String, String) {
    let (cert, key) = ca.issue(&Leaf::client(&format!("{name}.client")));
    let (c, k) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    fs::write(&c, cert).expect("write");
    fs::write(&k, key).expect("write");
    (c.display().to_string(), k.display().to_string())
}

impl Session {
    fn open_with(addr: &str, extra: &[&str]) -> Session {
        let mut child = Command::new("openssl")
            .args([
                "s_client",
                "-quiet",
                "-connect",
                addr,
                "-servername",
                "localhost",
            ])
            .args(extra)
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

    /// Like `round_trip`, but a refused or closed connection gives an empty reply.
    fn try_round_trip(&mut self, line: &str) -> String {
        writeln!(self.stdin, "{line}").ok();
        self.stdin.flush().ok();
        let mut reply = String::new();
        self.stdout.read_line(&mut reply).ok();
        reply.trim().to_string()
    }
}

#[test]
fn client_ca_rotation_refuses_and_closes_old_clients_and_resumption() {
    skip_unless!(
        have_openssl(),
        "openssl is needed (cargo xtask setup installs it)"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let p = |n: &str| d.join(n);
    let server_ca = TestCa::new("server CA");
    fs::write(p("server-ca.crt"), &server_ca.pem).expect("write");
    let (cert, key) = issue(&server_ca);
    fs::write(p("tls.crt"), cert).expect("write");
    fs::write(p("tls.key"), key).expect("write");
    let (ca1, ca2) = (TestCa::new("client CA 1"), TestCa::new("client CA 2"));
    let (ca1_pem, ca2_pem) = (ca1.pem.clone(), ca2.pem.clone());
    fs::write(p("clients.crt"), &ca1_pem).expect("write");
    let (c1_cert, c1_key) = client_cert(d, &ca1, "c1");
    let (c2_cert, c2_key) = client_cert(d, &ca2, "c2");
    let upstream = echo_upstream();
    let audit = p("audit.jsonl");
    let config = format!(
        r#"
[agent]
admin = "127.0.0.1:0"
[audit]
path = "{audit}"
[[bundle]]
name = "web"
kind = "server"
cert = "{d}/tls.crt"
key = "{d}/tls.key"
[[bundle]]
name = "clients"
kind = "ca"
cert = "{d}/clients.crt"
[[listener]]
name = "mtls"
listen = "127.0.0.1:0"
bundle = "web"
client_ca = "clients"
upstream = "tcp://{upstream}"
close_untrusted = true
"#,
        audit = audit.display(),
        d = d.display(),
    );
    fs::write(p("certreload.toml"), config).expect("write");
    let agent = Agent::start(&p("certreload.toml"), &audit, &[]);
    let addr = agent.log_field("listener=mtls", "address");
    let c1 = ["-cert", c1_cert.as_str(), "-key", c1_key.as_str()];

    // No client certificate: refused. A CA1 client: served, and it keeps a session to resume.
    assert_ne!(
        Session::open_with(&addr, &[]).try_round_trip("anon"),
        "echo: anon"
    );
    let server_ca = p("server-ca.crt");
    let err = curl(&addr, &server_ca, None).expect_err("curl without a client certificate");
    assert!(err.contains("curl exit"), "{err}");
    assert_eq!(
        curl(&addr, &server_ca, Some((&c1_cert, &c1_key))).as_deref(),
        Ok(HTTP_BODY),
        "curl with a CA1 client certificate"
    );
    let mut existing = Session::open_with(&addr, &c1);
    assert_eq!(existing.round_trip("ca1"), "echo: ca1");
    let sess = p("c1.session");
    let mut saver = Session::open_with(
        &addr,
        &[&c1[..], &["-sess_out", &sess.display().to_string()]].concat(),
    );
    assert_eq!(saver.round_trip("save"), "echo: save");
    // s_client -quiet ignores EOF on stdin; the session was written when its ticket arrived.
    kill_and_reap(&mut saver.child);
    assert!(sess.exists(), "openssl saved the session");

    // Rotate the client CA to CA2 only.
    fs::write(p("clients.new"), &ca2_pem).expect("write");
    mv(&p("clients.new"), &p("clients.crt"));
    agent.expect_record("client CA generation 2", |r| {
        r["event"] == "material_accepted" && r["bundle"] == "clients" && r["new_generation"] == 2
    });
    let revoked = agent.expect_record("connection_revoked", |r| {
        r["event"] == "connection_revoked" && r["listener"] == "mtls"
    });
    assert!(revoked["client_fingerprint"].is_string(), "{revoked}");
    assert!(
        existing.closed_by_server(),
        "the existing CA1 connection is closed"
    );

    // New CA1 clients are refused; a CA2 client works.
    assert_ne!(
        Session::open_with(&addr, &c1).try_round_trip("again"),
        "echo: again"
    );
    let mut ca2_client = Session::open_with(&addr, &["-cert", &c2_cert, "-key", &c2_key]);
    assert_eq!(ca2_client.round_trip("ca2"), "echo: ca2");
    let refused = curl(&addr, &server_ca, Some((&c1_cert, &c1_key)));
    assert!(
        refused.is_err(),
        "curl with CA1 after the rotation: {refused:?}"
    );
    assert_eq!(
        curl(&addr, &server_ca, Some((&c2_cert, &c2_key))).as_deref(),
        Ok(HTTP_BODY),
        "curl with a CA2 client certificate"
    );

    // The session from before the rotation is not resumed (new ticket keys, new cache).
    let resumed = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr,
            "-servername",
            "localhost",
            "-sess_in",
        ])
        .arg(&sess)
        .args(c1)
        .stdin(Stdio::null())
        .output()
        .expect("s_client");
    let text = String::from_utf8_lossy(&resumed.stdout);
    assert!(
        !text.contains("Reused,"),
        "a pre-rotation session must not resume:\n{text}"
    );
    agent.stop();
}

fn signed(
    ca: &TestCa,
    cn: &str,
    san: &str,
    eku: rcgen::ExtendedKeyUsagePurpose,
) -> (String, String) {
    ca.issue(&Leaf::server(cn).sans(&[san]).eku(&[eku]))
}

#[test]
fn upstream_re_encryption_presents_the_rotated_client_certificate() {
    skip_unless!(
        have_openssl(),
        "openssl is needed (cargo xtask setup installs it)"
    );
    use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let p = |n: &str| d.join(n);
    let server_ca = TestCa::new("server CA");
    let up_ca = TestCa::new("upstream CA");
    let client_ca = TestCa::new("client CA");
    fs::write(p("server-ca.crt"), &server_ca.pem).expect("write");
    fs::write(p("up-ca.crt"), &up_ca.pem).expect("write");
    fs::write(p("client-ca.crt"), &client_ca.pem).expect("write");
    let (c, k) = issue(&server_ca);
    fs::write(p("tls.crt"), c).expect("write");
    fs::write(p("tls.key"), k).expect("write");
    let (c, k) = signed(&up_ca, "upstream", "upstream.local", ServerAuth);
    fs::write(p("up.crt"), c).expect("write");
    fs::write(p("up.key"), k).expect("write");
    let (c, k) = signed(&client_ca, "client-a", "to-upstream.client", ClientAuth);
    fs::write(p("client.crt"), c).expect("write");
    fs::write(p("client.key"), k).expect("write");

    // A real upstream that demands a client certificate: openssl s_server -Verify, reversing lines.
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let server_log = fs::File::create(p("s_server.log")).expect("log");
    let mut s_server = Command::new("openssl")
        .args([
            "s_server",
            "-accept",
            &format!("127.0.0.1:{port}"),
            "-rev",
            "-Verify",
            "1",
            "-verify_return_error",
        ])
        .args([
            "-cert",
            &p("up.crt").display().to_string(),
            "-key",
            &p("up.key").display().to_string(),
        ])
        .args(["-CAfile", &p("client-ca.crt").display().to_string()])
        .stdin(Stdio::piped())
        .stdout(server_log.try_clone().expect("log"))
        .stderr(server_log)
        .spawn()
        .expect("s_server runs");
    let deadline = std::time::Instant::now() + certreload_e2e::EVENT_DEADLINE;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "s_server did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    let audit = p("audit.jsonl");
    let config = format!(
        r#"
[agent]
admin = "127.0.0.1:0"
[audit]
path = "{audit}"
[[bundle]]
name = "web"
kind = "server"
cert = "{d}/tls.crt"
key = "{d}/tls.key"
[[bundle]]
name = "upstream-ca"
kind = "ca"
cert = "{d}/up-ca.crt"
[[bundle]]
name = "to-upstream"
kind = "client"
cert = "{d}/client.crt"
key = "{d}/client.key"
[[listener]]
name = "reencrypt"
listen = "127.0.0.1:0"
bundle = "web"
upstream = "tcp://127.0.0.1:{port}"
upstream_tls = {{ client_bundle = "to-upstream", ca = "upstream-ca", server_name = "upstream.local" }}
"#,
        audit = audit.display(),
        d = d.display(),
    );
    fs::write(p("certreload.toml"), config).expect("write");
    let agent = Agent::start(&p("certreload.toml"), &audit, &[]);
    let addr = agent.log_field("listener=reencrypt", "address");
    let seen = || fs::read_to_string(p("s_server.log")).unwrap_or_default();

    let mut first = Session::open(&addr);
    assert_eq!(
        first.round_trip("abc"),
        "cba",
        "through certreload, re-encrypted, to s_server"
    );
    assert!(
        seen().contains("client-a"),
        "s_server saw client-a:\n{}",
        seen()
    );
    drop(first);

    let (c, k) = signed(&client_ca, "client-b", "to-upstream.client", ClientAuth);
    fs::write(p("client.new"), c).expect("write");
    fs::write(p("client.newkey"), k).expect("write");
    mv(&p("client.new"), &p("client.crt"));
    mv(&p("client.newkey"), &p("client.key"));
    agent.expect_record("client generation 2", |r| {
        r["event"] == "material_accepted"
            && r["bundle"] == "to-upstream"
            && r["new_generation"] == 2
    });

    let mut second = Session::open(&addr);
    assert_eq!(second.round_trip("xyz"), "zyx");
    assert!(
        seen().contains("client-b"),
        "new upstream connections present the rotated certificate:\n{}",
        seen()
    );
    drop(second);
    agent.stop();
    kill_and_reap(&mut s_server);
}
