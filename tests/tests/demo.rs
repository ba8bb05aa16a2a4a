//! The built-in default off a kubeadm node: `certreload demo` serves TLS in front of its upstream,
//! `certreload demo rotate` swaps a new certificate in (Secret-volume style), the probe proves the
//! listener converged, and garbage is rejected while the last good certificate keeps serving.

use std::{fs, net::TcpListener, path::Path, process::Command};

use certreload_e2e::{certreload_bin, skip_unless, Agent};

fn curl(port: u16, ca: &Path) -> Result<String, String> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(ca)
        .arg(format!("https://localhost:{port}/"))
        .output()
        .expect("curl runs");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn demo_serves_rotates_converges_and_rejects_garbage() {
    skip_unless!(
        Command::new("curl").arg("--version").output().is_ok(),
        "curl is needed (cargo xtask setup installs it)"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().join("demo");
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let listen = format!("127.0.0.1:{port}");
    let d_str = d.display().to_string();
    let agent = Agent::start_args(
        &[
            "demo",
            "--dir",
            &d_str,
            "--listen",
            &listen,
            "--admin",
            "127.0.0.1:0",
        ],
        &d.join("audit.jsonl"),
    );
    assert!(
        agent.log().contains("certreload demo rotate --dir"),
        "cheat-sheet printed"
    );
    let ca = d.join("ca.crt");
    assert_eq!(
        curl(port, &ca).as_deref(),
        Ok("hello from the certreload demo upstream\n")
    );
    let first = agent.expect_record("generation 1 converged", |r| {
        r["event"] == "endpoint_converged" && r["generation"] == 1
    });

    let rotate = Command::new(certreload_bin())
        .args(["demo", "rotate", "--dir", &d_str])
        .output()
        .expect("demo rotate");
    assert!(rotate.status.success(), "{rotate:?}");
    let converged = agent.expect_record("generation 2 converged", |r| {
        r["event"] == "endpoint_converged" && r["generation"] == 2 && r["trigger"] == "rotation"
    });
    assert_ne!(converged["served_fingerprint"], first["served_fingerprint"]);
    let admin = agent.log_field("agent ready", "admin");
    let status = Command::new(certreload_bin())
        .args(["status", "--admin", &admin])
        .output()
        .expect("status");
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("demo-listener") && text.contains("converged") && text.contains("LISTENER"),
        "{text}"
    );

    fs::write(d.join("tls/..data/tls.crt"), "garbage\n").expect("write");
    let rejected = agent.expect_record("garbage rejected", |r| r["event"] == "material_rejected");
    assert_eq!(rejected["check"], "parse");
    assert_eq!(rejected["current_generation"], 2);
    assert!(
        curl(port, &ca).is_ok(),
        "the last good certificate keeps serving"
    );
    agent.stop();
}
