//! `certreload demo` runs as root in a temporary directory: its state directory must be one no
//! other user controls, and nothing planted in it may be followed or loaded. Each test plants
//! what a hostile local user would (a directory of their own, a writable one, a symlink, a link
//! to a root-owned file, a FIFO serving a configuration with an `[[action]]`) and checks that the
//! demo refuses, naming what it found, and that nothing outside was written or executed.

use std::{
    ffi::CString,
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::TcpListener,
    os::unix::{
        ffi::OsStrExt,
        fs::{symlink, OpenOptionsExt, PermissionsExt},
    },
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc, Mutex,
    },
    time::{Duration, Instant},
};

use certreload_e2e::{
    certreload_bin, is_root,
    pki::{Leaf, TestCa},
    skip_unless, EVENT_DEADLINE,
};

/// The uid of `nobody`: "another user" for ownership checks.
const OTHER_UID: u32 = 65534;

/// How a `certreload demo` run ended up.
enum Outcome {
    /// It exited (non-zero) before serving; its stderr.
    Refused(ExitStatus, String),
    /// It became ready (the unsafe directory was used); stopped again by [`demo`].
    Started(String),
}

impl Outcome {
    /// The refusal's message, or a failure naming what the demo did instead.
    fn refused(self, what: &str) -> String {
        match self {
            Outcome::Refused(status, log) => {
                assert!(!status.success(), "{what}: exit {status}\n{log}");
                log
            }
            Outcome::Started(log) => panic!("{what}: the demo started instead of refusing:\n{log}"),
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn stop(mut child: Child) {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    // Reaps it; how a demo stopped this way exits is not what these tests check.
    child.wait().ok();
}

/// Runs `certreload demo --dir DIR` until it exits or says `agent ready` (then stops it).
fn demo(dir: &Path) -> Outcome {
    demo_then(dir, || {})
}

/// [`demo`], calling `while_running` once the agent is ready, before stopping it.
fn demo_then(dir: &Path, while_running: impl FnOnce()) -> Outcome {
    let listen = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(certreload_bin())
        .arg("demo")
        .arg("--dir")
        .arg(dir)
        .args(["--listen", &listen, "--admin", "127.0.0.1:0"])
        .env("CERTRELOAD_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("certreload starts");
    let log = Arc::new(Mutex::new(String::new()));
    let (ready_tx, ready_rx) = mpsc::channel();
    {
        let (pipe, log) = (child.stderr.take().expect("stderr"), log.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let ready = line.contains("agent ready");
                log.lock().expect("log").push_str(&(line + "\n"));
                if ready {
                    // The waiter may have given up already; the line is in the log either way.
                    ready_tx.send(()).ok();
                }
            }
        });
    }
    let text = || log.lock().expect("log").clone();
    let deadline = Instant::now() + EVENT_DEADLINE;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            // The reader thread has the last lines once the pipe closed.
            std::thread::sleep(Duration::from_millis(100));
            return Outcome::Refused(status, text());
        }
        if ready_rx.recv_timeout(Duration::from_millis(50)).is_ok() {
            while_running();
            stop(child);
            return Outcome::Started(text());
        }
        if Instant::now() > deadline {
            stop(child);
            panic!(
                "certreload demo neither refused nor became ready within {EVENT_DEADLINE:?} (hung?):\n{}",
                text()
            );
        }
    }
}

fn chown(path: &Path, uid: u32) {
    let c = CString::new(path.as_os_str().as_bytes()).expect("no NUL");
    // SAFETY: a NUL-terminated path.
    let rc = unsafe { libc::lchown(c.as_ptr(), uid, uid) };
    assert_eq!(
        rc,
        0,
        "chown {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

fn private_dir(path: &Path) {
    fs::create_dir(path).expect("mkdir");
    fs::set_permissions(path, fs::Permissions::from_mode(0o700)).expect("chmod");
}

#[test]
fn demo_refuses_a_state_directory_owned_by_another_user() {
    skip_unless!(is_root(), "chown to another uid needs root");
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path().join("demo");
    private_dir(&d);
    chown(&d, OTHER_UID);
    let log = demo(&d).refused("a directory owned by uid 65534");
    assert!(
        log.contains(&d.display().to_string())
            && log.contains("owner check failed")
            && log.contains("owned by uid 65534"),
        "the error names the directory, the check and the owner:\n{log}"
    );
    assert_eq!(
        fs::read_dir(&d).expect("ls").count(),
        0,
        "nothing written into it"
    );
    // `demo rotate` applies the same checks.
    let rotate = Command::new(certreload_bin())
        .arg("demo")
        .arg("rotate")
        .arg("--dir")
        .arg(&d)
        .output()
        .expect("rotate runs");
    let err = String::from_utf8_lossy(&rotate.stderr);
    assert!(
        !rotate.status.success() && err.contains("owner check failed"),
        "{rotate:?}"
    );
}

#[test]
fn demo_refuses_a_directory_under_one_another_user_owns() {
    skip_unless!(is_root(), "chown to another uid needs root");
    let tmp = tempfile::tempdir().expect("tempdir");
    let parent = tmp.path().join("theirs");
    private_dir(&parent);
    let d = parent.join("demo");
    private_dir(&d);
    // Its owner could rename our directory away and put a link to one of theirs in its place.
    chown(&parent, OTHER_UID);
    let log = demo(&d).refused("a directory whose parent uid 65534 owns");
    assert!(
        log.contains("ancestor owner check failed") && log.contains("owned by uid 65534"),
        "{log}"
    );
}

#[test]
fn demo_refuses_a_group_or_world_writable_state_directory() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for mode in [0o777, 0o770, 0o1777] {
        let d = tmp.path().join(format!("demo-{mode:o}"));
        fs::create_dir(&d).expect("mkdir");
        fs::set_permissions(&d, fs::Permissions::from_mode(mode)).expect("chmod");
        let log = demo(&d).refused(&format!("a directory with mode {mode:o}"));
        assert!(
            log.contains(&d.display().to_string())
                && log.contains("permissions check failed")
                && log.contains(&format!("mode {mode:04o}")),
            "{log}"
        );
        assert_eq!(
            fs::read_dir(&d).expect("ls").count(),
            0,
            "nothing written into it"
        );
    }
}

#[test]
fn demo_refuses_a_symlink_at_the_state_directory_path() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let elsewhere = tmp.path().join("elsewhere");
    private_dir(&elsewhere);
    let d = tmp.path().join("demo");
    symlink(&elsewhere, &d).expect("symlink");
    let log = demo(&d).refused("a symlink at the directory path");
    assert!(
        log.contains("symlink check failed") && log.contains(&elsewhere.display().to_string()),
        "{log}"
    );
    assert_eq!(
        fs::read_dir(&elsewhere).expect("ls").count(),
        0,
        "nothing written through the link"
    );
}

/// A root-owned file outside the demo directory that a planted link points to.
fn victim(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, "root's precious content\n").expect("write");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
    path
}

#[test]
fn demo_never_writes_through_a_link_planted_in_its_directory() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let outside = tempfile::tempdir().expect("tempdir");
    // Every name the demo writes, appends to or reads at the top of its directory.
    for name in ["certreload.toml", "ca.crt", "ca.key", "audit.jsonl"] {
        let d = tmp.path().join(format!("demo-{name}"));
        private_dir(&d);
        let target = victim(outside.path(), name);
        symlink(&target, d.join(name)).expect("plant");
        let log = demo(&d).refused(&format!("a link at {name}"));
        assert!(
            log.contains(&d.join(name).display().to_string()) && log.contains("symbolic link"),
            "the error names the planted link:\n{log}"
        );
        assert_eq!(
            fs::read_to_string(&target).expect("victim"),
            "root's precious content\n",
            "{name}: the link's target was written"
        );
    }

    // A demo that ran once, then a link into its Secret-style volume.
    let d = tmp.path().join("demo-volume");
    match demo(&d) {
        Outcome::Started(_) => {}
        Outcome::Refused(status, log) => panic!("a fresh directory: exit {status}\n{log}"),
    }
    let mode = fs::metadata(&d).expect("meta").permissions().mode() & 0o7777;
    assert_eq!(mode, 0o700, "the state directory is created private");
    let key = outside.path().join("someone-else.key");
    fs::write(&key, "not the demo's key\n").expect("write");
    let link = d.join("tls/tls.key");
    fs::remove_file(&link).expect("rm");
    symlink(&key, &link).expect("plant");
    let log = demo(&d).refused("a link in the volume");
    assert!(
        log.contains(&link.display().to_string()) && log.contains("points to"),
        "{log}"
    );
}

/// Opens `path` (a FIFO), blocking until the other end is opened too.
fn open_blocking(path: &Path, write: bool) -> std::io::Result<fs::File> {
    fs::OpenOptions::new()
        .read(!write)
        .write(write)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
}

#[test]
fn demo_neither_hangs_on_nor_loads_a_fifo_planted_at_its_config() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let attacker = tempfile::tempdir().expect("tempdir");
    let d = tmp.path().join("demo");
    private_dir(&d);
    // The FIFO lives in the attacker's directory too (a hard link), so the test can release the
    // attacker's thread whatever the demo did with the name in its own directory.
    let fifo = attacker.path().join("fifo");
    let c = CString::new(fifo.as_os_str().as_bytes()).expect("no NUL");
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o666) }, 0);
    fs::hard_link(&fifo, d.join("certreload.toml")).expect("plant");

    // The configuration the attacker serves: a valid bundle of theirs, and an action run on every
    // accepted rotation of it, which leaves a marker.
    let ca = TestCa::new("attacker CA");
    let (cert, key) = ca.issue(&Leaf::server("localhost"));
    let a = attacker.path();
    fs::write(a.join("tls.crt"), cert).expect("write");
    fs::write(a.join("tls.key"), key).expect("write");
    let marker = a.join("ran-as-root");
    let evil = format!(
        "[agent]\nadmin = \"127.0.0.1:0\"\n[audit]\npath = \"{}\"\n[[bundle]]\nname = \"x\"\nkind = \"server\"\ncert = \"{}\"\nkey = \"{}\"\n[[action]]\nname = \"pwn\"\nbundle = \"x\"\non = \"accepted\"\nexec = [\"/usr/bin/touch\", \"{}\"]\n",
        a.join("audit.jsonl").display(),
        a.join("tls.crt").display(),
        a.join("tls.key").display(),
        marker.display()
    );
    // The attacker: drain what the demo writes into the FIFO, then serve it the configuration.
    let done = Arc::new(AtomicBool::new(false));
    let thread = {
        let (fifo, done) = (fifo.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let Ok(mut r) = open_blocking(&fifo, false) else {
                    return;
                };
                // The attacker only drains the pipe: what was read, or a failure, changes nothing.
                r.read_to_end(&mut Vec::new()).ok();
                drop(r);
                if done.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(mut w) = open_blocking(&fifo, true) else {
                    return;
                };
                // The reader may close first; the attacker just tries again.
                w.write_all(evil.as_bytes()).ok();
            }
        })
    };

    // Should the demo run that configuration, the attacker rotates their bundle: the action runs.
    let outcome = demo_then(&d, || {
        let (cert, key) = ca.issue(&Leaf::server("localhost"));
        fs::write(a.join("tls.key"), key).expect("write");
        fs::write(a.join("tls.crt"), cert).expect("write");
        let deadline = Instant::now() + EVENT_DEADLINE;
        while !marker.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    // Release the attacker wherever it waits: an O_RDWR open pairs with either end.
    done.store(true, Ordering::Relaxed);
    let deadline = Instant::now() + EVENT_DEADLINE;
    while !thread.is_finished() {
        assert!(Instant::now() < deadline, "attacker thread stuck");
        if let Ok(f) = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
        {
            drop(f);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        !marker.exists(),
        "the planted FIFO's configuration was loaded and its action ran"
    );
    let log = outcome.refused("a FIFO at certreload.toml");
    assert!(
        log.contains(&d.join("certreload.toml").display().to_string()) && log.contains("a FIFO"),
        "the error names the FIFO:\n{log}"
    );
}
