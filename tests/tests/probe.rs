//! Probes against `openssl s_server`, a server that never reloads its certificate: steady-state
//! drift (it starts serving something else, then the right thing again), a bundle rotation it does
//! not pick up (stale at the deadline), and a signal action aimed at it through a pidfile.

use std::{
    fs,
    net::{TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use certreload_e2e::openssl::available as have_openssl;
use certreload_e2e::{kill_and_reap, pki::Leaf, skip_unless, Agent};

fn self_signed(dir: &Path, stem: &str) {
    let (cert, key) = Leaf::server("localhost").self_signed();
    fs::write(dir.join(format!("{stem}.crt")), cert).expect("write");
    fs::write(dir.join(format!("{stem}.key")), key).expect("write");
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        kill_and_reap(&mut self.0);
    }
}

/// `openssl s_server` on `port` with `stem`.crt/.key (loaded once: it never reloads).
fn serve(dir: &Path, stem: &str, port: u16) -> Server {
    let child = Command::new("openssl")
        .args(["s_server", "-quiet", "-naccept", "1000000", "-accept"])
        .arg(port.to_string())
        .arg("-cert")
        .arg(dir.join(format!("{stem}.crt")))
        .arg("-key")
        .arg(dir.join(format!("{stem}.key")))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("s_server");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "s_server does not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    Server(child)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

#[test]
fn probe_reports_drift_stale_rotation_and_signals_the_server() {
    skip_unless!(
        have_openssl(),
        "openssl is needed (cargo xtask setup installs it)"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    for stem in ["a", "other", "c", "e"] {
        self_signed(d, stem);
    }
    let install = |from: &str, to: &str| {
        for ext in ["key", "crt"] {
            let tmp = d.join(format!("{to}.{ext}.tmp"));
            fs::copy(d.join(format!("{from}.{ext}")), &tmp).expect("copy");
            fs::rename(&tmp, d.join(format!("{to}.{ext}"))).expect("rename");
        }
    };
    install("a", "web");
    install("c", "web2");
    let (port1, port2) = (free_port(), free_port());
    // The rotation target: never reloads; its pid is where the action's signal goes.
    let server2 = serve(d, "c", port2);
    let pidfile = d.join("server2.pid");
    fs::write(&pidfile, server2.0.id().to_string()).expect("pidfile");
    let mut server1 = Some(serve(d, "a", port1));
    let audit = d.join("audit.jsonl");
    fs::write(
        d.join("certreload.toml"),
        format!(
            r#"
[agent]
admin = "127.0.0.1:0"
[audit]
path = "{audit}"
[[bundle]]
name = "web"
kind = "server"
cert = "{d}/web.crt"
key = "{d}/web.key"
[[bundle]]
name = "web2"
kind = "server"
cert = "{d}/web2.crt"
key = "{d}/web2.key"
[[probe]]
name = "drift"
endpoint = "127.0.0.1:{port1}"
server_name = "localhost"
bundle = "web"
deadline = "2s"
interval = "500ms"
[[probe]]
name = "rotation"
endpoint = "127.0.0.1:{port2}"
server_name = "localhost"
bundle = "web2"
deadline = "2s"
interval = "500ms"
[[action]]
name = "signal-server2"
bundle = "web2"
on = "stale"
signal = "TERM"
pidfile = "{pidfile}"
"#,
            audit = audit.display(),
            d = d.display(),
            pidfile = pidfile.display(),
        ),
    )
    .expect("write");

    let agent = Agent::start(&d.join("certreload.toml"), &audit, &[]);
    for probe in ["drift", "rotation"] {
        agent.expect_record(&format!("{probe} converged at start-up"), |r| {
            r["event"] == "endpoint_converged" && r["probe"] == probe && r["trigger"] == "startup"
        });
    }

    // Drift: the endpoint goes away and comes back serving another certificate, no change on
    // disk; then it serves the bundle's certificate again.
    drop(server1.take());
    let other = serve(d, "other", port1);
    agent.expect_record("steady-state drift", |r| {
        r["event"] == "endpoint_stale" && r["probe"] == "drift" && r["trigger"] == "interval"
    });
    drop(other);
    let _back = serve(d, "a", port1);
    agent.expect_record("back to the bundle's certificate", |r| {
        r["event"] == "endpoint_converged" && r["probe"] == "drift" && r["trigger"] == "interval"
    });
    assert!(
        !agent.records().iter().any(|r| r["event"] == "action_run"),
        "no action is configured for bundle web"
    );

    // A rotation the server never picks up: stale at the 2 s deadline; the action signals it.
    install("e", "web2");
    let stale = agent.expect_record("stale after the rotation", |r| {
        r["event"] == "endpoint_stale" && r["probe"] == "rotation" && r["generation"] == 2
    });
    assert_eq!(stale["trigger"], "rotation");
    assert!(
        stale["seconds"].as_f64().is_some_and(|s| s >= 2.0),
        "{stale}"
    );
    assert!(
        stale["observed"]
            .as_str()
            .is_some_and(|o| o.starts_with("serves another certificate")),
        "{stale}"
    );
    let action = agent.expect_record("signal action", |r| r["event"] == "action_run");
    assert_eq!(action["success"], true, "{action}");
    assert_eq!(action["generation"], 2, "{action}");
    assert_eq!(action["command"], format!("kill -TERM {}", server2.0.id()));
    let mut server2 = server2;
    let status = server2.0.wait().expect("wait");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGTERM),
        "the server got SIGTERM"
    );
    agent.stop();
}
