//! The agent's container image (`cargo xtask image`, built from deploy/Containerfile by buildah),
//! run from its own root filesystem: unpacked by umoci (an OCI implementation other than the one
//! that wrote it), its entrypoint read from the image config by skopeo, then executed in a
//! `chroot` of the root filesystem in a new mount namespace (`unshare --mount --root`): nothing of
//! the host's filesystem is visible, so a library missing from the image fails the test.
//!
//! Needs root (chroot, mounts) and `CERTRELOAD_IMAGE` (set by `cargo xtask test`): skips without
//! them, fails under `CI=true`.

use std::{
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    time::Instant,
};

use certreload_e2e::{
    certreload_bin, is_root, kill_and_reap,
    pki::{Leaf, TestCa},
    skip_unless, EVENT_DEADLINE,
};
use serde_json::Value;

/// Where the test puts its material inside the root filesystem.
const ETC: &str = "etc/certreload";
/// The audit log inside the root filesystem.
const AUDIT: &str = "var/log/certreload/audit.jsonl";

/// The image unpacked: its root filesystem and its entrypoint.
struct Unpacked {
    _dir: tempfile::TempDir,
    rootfs: PathBuf,
    entrypoint: Vec<String>,
}

fn run_ok(command: &mut Command) -> Output {
    let out = command.output().expect("the command starts");
    assert!(
        out.status.success(),
        "{command:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Unpacks the OCI archive with tar (the layout) and umoci (the root filesystem), and reads the
/// entrypoint with skopeo; `None` when the test must be skipped.
fn unpack() -> Option<Unpacked> {
    let archive = std::env::var_os("CERTRELOAD_IMAGE").map(PathBuf::from);
    let ready = is_root() && archive.as_ref().is_some_and(|a| a.is_file());
    if !ready {
        assert!(
            !certreload_e2e::ci(),
            "CI=true: the image test needs root and CERTRELOAD_IMAGE (cargo xtask test sets it)"
        );
        eprintln!("SKIP: needs root and CERTRELOAD_IMAGE (cargo xtask image)");
        return None;
    }
    let archive = archive.expect("checked above");
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = dir.path().join("layout");
    fs::create_dir(&layout).expect("mkdir");
    run_ok(
        Command::new("tar")
            .arg("-xf")
            .arg(&archive)
            .arg("-C")
            .arg(&layout),
    );
    let index: Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).expect("index.json"))
            .expect("index.json is JSON");
    let tag = index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"]
        .as_str()
        .expect("the image is named in index.json")
        .to_string();
    let config = run_ok(
        Command::new("skopeo")
            .args(["inspect", "--config"])
            .arg(format!("oci:{}:{tag}", layout.display())),
    );
    let config: Value = serde_json::from_slice(&config.stdout).expect("config is JSON");
    let entrypoint: Vec<String> = config["config"]["Entrypoint"]
        .as_array()
        .expect("an entrypoint")
        .iter()
        .map(|v| v.as_str().expect("a string").to_string())
        .collect();
    let bundle = dir.path().join("bundle");
    run_ok(
        Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:{tag}", layout.display()))
            .arg(&bundle),
    );
    Some(Unpacked {
        rootfs: bundle.join("rootfs"),
        _dir: dir,
        entrypoint,
    })
}

impl Unpacked {
    /// `unshare --mount --root ROOTFS ENTRYPOINT ARGS`: the image's own binary, seeing only the
    /// image's files (exec'd by unshare: the child is the agent itself).
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("unshare");
        c.arg("--mount")
            .arg("--root")
            .arg(&self.rootfs)
            .args(&self.entrypoint)
            .args(args)
            .env("CERTRELOAD_LOG", "info");
        c
    }

    /// A CA, a server certificate for localhost and a config naming them by their paths inside
    /// the image; returns the config's path inside.
    fn write_material(&self, ca: &TestCa) -> String {
        let etc = self.rootfs.join(ETC);
        fs::create_dir_all(&etc).expect("mkdir");
        write_leaf(&etc, ca);
        fs::write(etc.join("ca.crt"), &ca.pem).expect("ca");
        fs::write(
            etc.join("certreload.toml"),
            format!(
                "[agent]\nadmin = \"127.0.0.1:0\"\n[audit]\npath = \"/{AUDIT}\"\n[[bundle]]\nname = \"web\"\nkind = \"server\"\ncert = \"/{ETC}/tls.crt\"\nkey = \"/{ETC}/tls.key\"\nca = \"/{ETC}/ca.crt\"\nexpect_sans = [\"localhost\"]\n"
            ),
        )
        .expect("config");
        format!("/{ETC}/certreload.toml")
    }
}

fn write_leaf(etc: &Path, ca: &TestCa) {
    let (cert, key) = ca.issue(&Leaf::server("localhost").sans(&["localhost"]));
    fs::write(etc.join("tls.crt"), cert).expect("cert");
    fs::write(etc.join("tls.key"), key).expect("key");
}

#[test]
fn image_runs_the_agent_from_its_own_root_filesystem() {
    let Some(image) = unpack() else { return };
    assert_eq!(image.entrypoint, ["/usr/local/bin/certreload"]);
    // Nothing but the agent and what it links: no shell to fall back on.
    assert!(!image.rootfs.join("bin/sh").exists());
    let inside = run_ok(&mut image.command(&["--version"]));
    let outside = run_ok(Command::new(certreload_bin()).arg("--version"));
    assert_eq!(
        String::from_utf8_lossy(&inside.stdout),
        String::from_utf8_lossy(&outside.stdout)
    );

    let ca = TestCa::new("image test CA");
    let config = image.write_material(&ca);
    let check = run_ok(&mut image.command(&["check", "--config", &config, "--output", "json"]));
    let verdict: Value = serde_json::from_slice(&check.stdout).expect("check --output json");
    assert!(
        verdict.to_string().contains("\"web\""),
        "the bundle is named: {verdict}"
    );
}

/// The agent started in the image's root filesystem with its stderr read line by line.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    log: String,
}

impl Running {
    fn start(image: &Unpacked, args: &[&str]) -> Running {
        let mut child = image
            .command(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("unshare starts");
        let stderr = child.stderr.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            lines,
            log: String::new(),
        }
    }

    /// Reads the log until a line contains `needle`.
    fn wait_for(&mut self, needle: &str) {
        let deadline = Instant::now() + EVENT_DEADLINE;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.log.push_str(&line);
                    self.log.push('\n');
                    if line.contains(needle) {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        kill_and_reap(&mut self.child);
        panic!("no {needle:?} in the agent's log:\n{}", self.log);
    }
}

#[test]
fn agent_in_the_image_swaps_a_rotated_certificate_and_stops_cleanly() {
    let Some(image) = unpack() else { return };
    skip_unless!(
        Path::new("/usr/bin/unshare").exists(),
        "unshare (util-linux) is needed"
    );
    let ca = TestCa::new("image run CA");
    let config = image.write_material(&ca);
    let mut agent = Running::start(&image, &["run", "--config", &config, "--mode", "inotify"]);
    agent.wait_for("agent ready");
    write_leaf(&image.rootfs.join(ETC), &ca);
    agent.wait_for("material_accepted");
    // SAFETY: kill(2) on the child this test started (unshare exec'd the agent: same pid).
    unsafe { libc::kill(agent.child.id() as i32, libc::SIGTERM) };
    agent.wait_for("agent_stopped");
    let status = agent.child.wait().expect("the agent exits");
    assert!(status.success(), "{status}:\n{}", agent.log);
    let audit = fs::read_to_string(image.rootfs.join(AUDIT)).expect("the audit log in the image");
    let events: Vec<String> = audit
        .lines()
        .map(|l| {
            let r: Value = serde_json::from_str(l).expect("audit line");
            r["event"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    assert!(
        events.iter().any(|e| e == "material_accepted"),
        "{events:?}"
    );
    assert_eq!(events.last().map(String::as_str), Some("agent_stopped"));
    // The audit chain verifies with the image's own binary.
    run_ok(&mut image.command(&["audit", "verify", &format!("/{AUDIT}")]));
}
