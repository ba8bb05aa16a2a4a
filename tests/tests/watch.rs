//! `certreload watch` against real writers: every way a certificate file gets replaced on a node,
//! in eBPF mode (attributed) and in the inotify fallback (seen, not attributed).
//!
//! Each case watches `tls.crt` and `tls.key` in a fresh directory, performs one kind of change of
//! `tls.crt` from a child process, also touches an unrelated file in the same directory, and then
//! checks that exactly the expected change was reported, nothing else.

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicUsize, Ordering},
};

use certreload_e2e::{
    assert_writer, is_root, kill_and_reap, run_writer, sha256_hex, skip_unless, Mode, Watch,
};
use serde_json::Value;

struct Case {
    dir: tempfile::TempDir,
    /// Basename of the watched certificate: unique per test, because the kernel filter matches
    /// basenames host-wide and the tests run in parallel.
    name: String,
    cert: PathBuf,
    key: PathBuf,
}

impl Case {
    fn new() -> Case {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = tempfile::tempdir().expect("tempdir");
        let name = format!("tls-{}-{n}.crt", std::process::id());
        let cert = dir.path().join(&name);
        let key = dir
            .path()
            .join(format!("tls-{}-{n}.key", std::process::id()));
        fs::write(&cert, "OLD CERT\n").expect("write");
        fs::write(&key, "OLD KEY\n").expect("write");
        Case {
            dir,
            name,
            cert,
            key,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn watch(&self, mode: Mode) -> Option<Watch> {
        Watch::start(mode, &[&self.cert, &self.key], &[])
    }

    /// Noise in the same directory that must never be reported.
    fn touch_unrelated(&self) {
        fs::write(self.path("unrelated.crt"), "noise").expect("write");
        fs::rename(self.path("unrelated.crt"), self.path("unrelated2.crt")).expect("rename");
    }

    /// Stops the agent and checks it reported nothing beyond what the test consumed.
    fn finish(&self, watch: Watch) -> Value {
        let (rest, stats) = watch.stop();
        assert!(rest.is_empty(), "unexpected extra changes: {rest:#?}");
        stats
    }
}

fn is_kind(kinds: &'static [&'static str], sha: String) -> impl Fn(&Value) -> bool {
    move |c| kinds.iter().any(|k| c["kind"] == *k) && c["sha256"] == sha.as_str()
}

fn cp_over_the_file(mode: Mode) {
    let case = Case::new();
    let Some(mut watch) = case.watch(mode) else {
        return;
    };
    fs::write(case.path("new.pem"), "NEW CERT\n").expect("write");
    let pid = run_writer(Command::new("cp").arg(case.path("new.pem")).arg(&case.cert));
    case.touch_unrelated();
    let change = watch.expect(
        &case.cert,
        "modified by cp",
        is_kind(&["modified"], sha256_hex(b"NEW CERT\n")),
    );
    assert_writer(mode, &change, "cp", Some(pid));
    case.finish(watch);
}

fn shell_redirection(mode: Mode) {
    let case = Case::new();
    let Some(mut watch) = case.watch(mode) else {
        return;
    };
    let pid = run_writer(
        Command::new("sh")
            .arg("-c")
            .arg(format!("printf 'REDIRECTED\\n' > {}", case.name))
            .current_dir(case.dir.path()),
    );
    case.touch_unrelated();
    let change = watch.expect(
        &case.cert,
        "modified by sh",
        is_kind(&["modified"], sha256_hex(b"REDIRECTED\n")),
    );
    assert_writer(mode, &change, "sh", Some(pid));
    case.finish(watch);
}

fn truncate_then_write(mode: Mode) {
    let case = Case::new();
    let Some(mut watch) = case.watch(mode) else {
        return;
    };
    let pid = run_writer(Command::new("truncate").args(["-s", "0"]).arg(&case.cert));
    let change = watch.expect(
        &case.cert,
        "emptied by truncate",
        is_kind(&["modified"], sha256_hex(b"")),
    );
    assert_writer(mode, &change, "truncate", Some(pid));
    let pid = run_writer(
        Command::new("sh")
            .arg("-c")
            .arg(format!("printf 'APPENDED\\n' >> {}", case.name))
            .current_dir(case.dir.path()),
    );
    case.touch_unrelated();
    let change = watch.expect(
        &case.cert,
        "appended by sh",
        is_kind(&["modified"], sha256_hex(b"APPENDED\n")),
    );
    assert_writer(mode, &change, "sh", Some(pid));
    case.finish(watch);
}

fn mv_tmp_over_the_file(mode: Mode) {
    let case = Case::new();
    let Some(mut watch) = case.watch(mode) else {
        return;
    };
    let tmp = case.path(&format!("{}.tmp", case.name));
    fs::write(&tmp, "MOVED CERT\n").expect("write");
    let pid = run_writer(Command::new("mv").arg(&tmp).arg(&case.cert));
    case.touch_unrelated();
    let change = watch.expect(
        &case.cert,
        "replaced by mv",
        is_kind(&["replaced"], sha256_hex(b"MOVED CERT\n")),
    );
    assert_writer(mode, &change, "mv", Some(pid));
    assert_eq!(
        change["operation"],
        if mode == Mode::Ebpf {
            "rename"
        } else {
            "IN_MOVED_TO"
        }
    );
    case.finish(watch);
}

/// Kubernetes' AtomicWriter (Secret and ConfigMap volumes): files live in a timestamped directory,
/// `..data` points at it, visible names are symlinks through `..data`; an update writes a new
/// timestamped directory, creates `..data_tmp` and renames it over `..data`.
fn kubernetes_atomic_writer(mode: Mode) {
    let dir = tempfile::tempdir().expect("tempdir");
    let vol = dir.path();
    let ts1 = vol.join("..2026_11_28_10_00_00.000000001");
    fs::create_dir(&ts1).expect("mkdir");
    fs::write(ts1.join("tls.crt"), "SECRET V1\n").expect("write");
    fs::write(ts1.join("tls.key"), "KEY V1\n").expect("write");
    symlink(ts1.file_name().expect("name"), vol.join("..data")).expect("symlink");
    symlink("..data/tls.crt", vol.join("tls.crt")).expect("symlink");
    symlink("..data/tls.key", vol.join("tls.key")).expect("symlink");
    let (cert, key) = (vol.join("tls.crt"), vol.join("tls.key"));
    // The new timestamped directory is written before the agent starts: the change under test is
    // the ..data swap, and its attribution must not race with our own writes of the new files.
    let ts2 = vol.join("..2026_11_28_11_00_00.000000002");
    fs::create_dir(&ts2).expect("mkdir");
    fs::write(ts2.join("tls.crt"), "SECRET V2\n").expect("write");
    fs::write(ts2.join("tls.key"), "KEY V1\n").expect("write");
    let Some(mut watch) = Watch::start(mode, &[&cert, &key], &[]) else {
        return;
    };

    symlink(ts2.file_name().expect("name"), vol.join("..data_tmp")).expect("symlink");
    let pid = run_writer(
        Command::new("mv")
            .arg("-T")
            .arg(vol.join("..data_tmp"))
            .arg(vol.join("..data")),
    );
    let change = watch.expect(
        &cert,
        "swapped through ..data",
        is_kind(&["replaced"], sha256_hex(b"SECRET V2\n")),
    );
    assert_writer(mode, &change, "mv", Some(pid));
    assert_eq!(
        change["resolved"],
        ts2.join("tls.crt").to_string_lossy().as_ref()
    );
    // The key has identical bytes but a new target: a rotation happened to it too.
    let change = watch.expect(
        &key,
        "key swapped through ..data",
        is_kind(&["replaced"], sha256_hex(b"KEY V1\n")),
    );
    assert_writer(mode, &change, "mv", Some(pid));
    run_writer(Command::new("rm").arg("-rf").arg(&ts1));
    let (rest, _) = watch.stop();
    assert!(
        rest.is_empty(),
        "removing the old timestamped directory changes nothing visible: {rest:#?}"
    );
}

fn unlink_then_recreate(mode: Mode) {
    let case = Case::new();
    let Some(mut watch) = case.watch(mode) else {
        return;
    };
    let pid = run_writer(Command::new("rm").arg(&case.cert));
    let change = watch.expect(&case.cert, "removed by rm", |c| {
        c["kind"] == "removed" && c["sha256"].is_null()
    });
    assert_writer(mode, &change, "rm", Some(pid));
    fs::write(case.path("new.pem"), "RECREATED\n").expect("write");
    let pid = run_writer(Command::new("cp").arg(case.path("new.pem")).arg(&case.cert));
    case.touch_unrelated();
    let change = watch.expect(
        &case.cert,
        "created by cp",
        is_kind(&["created"], sha256_hex(b"RECREATED\n")),
    );
    assert_writer(mode, &change, "cp", Some(pid));
    case.finish(watch);
}

fn hard_link_into_place(mode: Mode) {
    let case = Case::new();
    let Some(mut watch) = case.watch(mode) else {
        return;
    };
    fs::write(case.path("staged.pem"), "LINKED\n").expect("write");
    let pid = run_writer(
        Command::new("ln")
            .arg("-f")
            .arg(case.path("staged.pem"))
            .arg(&case.cert),
    );
    case.touch_unrelated();
    let change = watch.expect(
        &case.cert,
        "linked by ln",
        is_kind(&["replaced", "created"], sha256_hex(b"LINKED\n")),
    );
    assert_writer(mode, &change, "ln", Some(pid));
    let (rest, _) = watch.stop();
    // `ln -f` may unlink first: a removal by ln before the link is the only acceptable extra.
    assert!(rest.iter().all(|c| c["kind"] == "removed"), "{rest:#?}");
}

fn relative_path_after_cd(mode: Mode) {
    let case = Case::new();
    let Some(mut watch) = case.watch(mode) else {
        return;
    };
    fs::write(case.path("new.pem"), "RELATIVE\n").expect("write");
    let pid = run_writer(
        Command::new("cp")
            .args(["new.pem", &case.name])
            .current_dir(case.dir.path()),
    );
    let change = watch.expect(
        &case.cert,
        "modified by cp via a relative path",
        is_kind(&["modified"], sha256_hex(b"RELATIVE\n")),
    );
    assert_writer(mode, &change, "cp", Some(pid));
    case.finish(watch);
}

fn writer_exits_without_closing(mode: Mode) {
    let case = Case::new();
    let Some(mut watch) = case.watch(mode) else {
        return;
    };
    // dash opens fd 3, writes through it, and exits without closing it.
    let pid = run_writer(
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "exec 3>{}; printf 'NO CLOSE\\n' >&3; exit 0",
                case.name
            ))
            .current_dir(case.dir.path()),
    );
    let change = watch.expect(
        &case.cert,
        "written by an exiting sh",
        is_kind(&["modified"], sha256_hex(b"NO CLOSE\n")),
    );
    assert_writer(mode, &change, "sh", Some(pid));
    if mode == Mode::Ebpf {
        assert_eq!(
            change["operation"], "exit",
            "the exit, not a close, finished the write: {change:#}"
        );
    }
    case.finish(watch);
}

fn writer_in_another_mount_namespace(mode: Mode) {
    skip_unless!(is_root(), "unshare -m and mount --bind need root");
    let case = Case::new();
    let mnt = tempfile::tempdir().expect("tempdir");
    let Some(mut watch) = case.watch(mode) else {
        return;
    };
    fs::write(case.path("new.pem"), "FROM ANOTHER NS\n").expect("write");
    let script = format!(
        "mount --bind '{}' '{}' && exec cp '{}' '{}/{}'",
        case.dir.path().display(),
        mnt.path().display(),
        case.path("new.pem").display(),
        mnt.path().display(),
        case.name
    );
    // unshare and sh exec in place: the pid we spawn is cp's pid.
    let pid = run_writer(Command::new("unshare").args([
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
    ]));
    let change = watch.expect(
        &case.cert,
        "written through a bind mount",
        is_kind(&["modified"], sha256_hex(b"FROM ANOTHER NS\n")),
    );
    assert_writer(mode, &change, "cp", Some(pid));
    case.finish(watch);
}

/// The resync backstop: a write through a shared mapping after the fd is closed produces no
/// syscall on the file and no inotify event while the mapping lives; the periodic content check
/// still reports it.
fn resync_catches_mmap_writes(mode: Mode) {
    let dir = tempfile::tempdir().expect("tempdir");
    // A basename of its own: an operation on any other `tls.crt` of the host would make the agent
    // look (and find this change) before the resync does.
    let cert = dir
        .path()
        .join(format!("mmap-{}-{mode:?}.crt", std::process::id()));
    fs::write(&cert, "OLD CERT\n").expect("write");
    let Some(mut watch) = Watch::start(mode, &[&cert], &["--resync", "0.5"]) else {
        return;
    };
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&cert)
        .expect("open");
    let len = fs::metadata(&cert).expect("stat").len() as usize;
    // SAFETY: maps `len` bytes of a file we hold open; the mapping is used and unmapped below.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(&file),
            0,
        )
    };
    assert_ne!(map, libc::MAP_FAILED);
    drop(file);
    std::thread::sleep(std::time::Duration::from_millis(100));
    // SAFETY: the mapping is `len` bytes, writable, and still mapped.
    unsafe {
        std::ptr::copy_nonoverlapping(b"MMAP".as_ptr(), map.cast::<u8>(), 4);
        libc::msync(map, len, libc::MS_SYNC);
    }
    let change = watch.expect(&cert, "found by resync", |c| c["source"] == "resync");
    assert_eq!(change["sha256"], sha256_hex(b"MMAPCERT\n"));
    assert!(change["writer"].is_null());
    // Unmapping drops the last reference to the write-opened file: inotify then reports
    // IN_CLOSE_WRITE, which finds nothing new.
    // SAFETY: unmaps the mapping created above, not used afterwards.
    unsafe { libc::munmap(map, len) };
    watch.stop();
}

/// 1,000 create/write/rename/unlink cycles on unrelated files next to a watched one.
fn unrelated_operations(mode: Mode) -> Option<Value> {
    let dir = tempfile::tempdir().expect("tempdir");
    let watched = dir
        .path()
        .join(format!("watched-{}-{:?}.pem", std::process::id(), mode));
    fs::write(&watched, "W").expect("write");
    let mut watch = Watch::start(mode, &[&watched], &[])?;
    for i in 0..1000 {
        let tmp = dir.path().join(format!("noise-{i}.tmp"));
        let dst = dir.path().join(format!("noise-{i}.pem"));
        fs::write(&tmp, "noise").expect("write");
        fs::rename(&tmp, &dst).expect("rename");
        fs::remove_file(&dst).expect("unlink");
    }
    if mode == Mode::Inotify {
        // inotify delivers a directory's events in order: once this change is reported, every
        // noise event before it has been read by the agent (and is in its counters).
        fs::write(&watched, "SENTINEL").expect("write");
        watch.expect(&watched, "sentinel", |c| {
            c["sha256"] == sha256_hex(b"SENTINEL")
        });
    }
    let (rest, stats) = watch.stop();
    assert!(rest.is_empty(), "unrelated files reported: {rest:#?}");
    Some(stats)
}

/// Generates one test per mode for each case.
macro_rules! both_modes {
    ($($case:ident),* $(,)?) => {
        mod ebpf {
            $( #[test] fn $case() { super::$case(certreload_e2e::Mode::Ebpf) } )*
        }
        mod inotify {
            $( #[test] fn $case() { super::$case(certreload_e2e::Mode::Inotify) } )*
        }
    };
}

both_modes!(
    cp_over_the_file,
    shell_redirection,
    truncate_then_write,
    mv_tmp_over_the_file,
    kubernetes_atomic_writer,
    unlink_then_recreate,
    hard_link_into_place,
    relative_path_after_cd,
    writer_exits_without_closing,
    writer_in_another_mount_namespace,
    resync_catches_mmap_writes,
);

#[test]
fn ebpf_unrelated_operations_never_reach_userspace() {
    let Some(stats) = unrelated_operations(Mode::Ebpf) else {
        return;
    };
    let kernel = &stats["kernel"];
    assert_eq!(
        kernel["emitted"], 0,
        "the kernel filter let unrelated events through: {stats:#}"
    );
    assert_eq!(kernel["dropped"], 0, "{stats:#}");
    assert!(
        kernel["filtered"].as_u64().unwrap_or(0) >= 3000,
        "each create, rename and unlink is filtered in the kernel: {stats:#}"
    );
    assert_eq!(stats["hints"], 0, "{stats:#}");
}

#[test]
fn inotify_unrelated_operations_reach_userspace_but_are_not_reported() {
    let Some(stats) = unrelated_operations(Mode::Inotify) else {
        return;
    };
    // The fallback's recorded limitation: inotify cannot filter by name in the kernel, so every
    // operation in a watched directory is delivered to the agent and filtered there.
    let delivered = stats["inotify_events"].as_u64().unwrap_or(0);
    assert!(delivered >= 3000, "{stats:#}");
    eprintln!(
        "inotify delivered {delivered} events for 1000 unrelated operations (eBPF delivers 0)"
    );
}

#[test]
fn falls_back_to_inotify_with_one_warning_when_ebpf_cannot_load() {
    skip_unless!(
        is_root(),
        "dropping privileges to make eBPF fail needs root"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .expect("chmod");
    let cert = dir.path().join("tls.crt");
    fs::write(&cert, "A").expect("write");
    let bin = certreload_e2e::certreload_bin();
    let mut child = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(&bin)
        .args(["watch", "--mode", "auto", "--output", "json"])
        .arg(&cert)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("setpriv runs");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            // The test stops reading once it has what it waits for.
            tx.send(line).ok();
        }
    });
    let mut log = Vec::new();
    while !log.iter().any(|l: &String| l.contains("monitor ready")) {
        log.push(
            rx.recv_timeout(certreload_e2e::EVENT_DEADLINE)
                .unwrap_or_else(|_| panic!("not ready: {log:#?}")),
        );
    }
    let warnings: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("falling back to inotify"))
        .collect();
    assert_eq!(warnings.len(), 1, "announced exactly once: {log:#?}");
    assert!(
        warnings[0].contains("reason="),
        "the warning says why: {}",
        warnings[0]
    );
    run_writer(
        Command::new("sh")
            .arg("-c")
            .arg("printf B > tls.crt")
            .current_dir(dir.path()),
    );
    let stdout = child.stdout.take().expect("stdout");
    let line = {
        use std::io::BufRead;
        let mut l = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut l)
            .expect("read");
        l
    };
    let change: Value = serde_json::from_str(&line).expect("json change");
    assert_eq!(change["source"], "inotify");
    assert_eq!(change["sha256"], sha256_hex(b"B"));
    kill_and_reap(&mut child);
}

#[test]
fn missing_watched_file_is_reported_when_created() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert: &Path = &dir.path().join("later.crt");
    let Some(mut watch) = Watch::start(Mode::Inotify, &[cert], &[]) else {
        return;
    };
    fs::write(dir.path().join("staged"), "LATER").expect("write");
    run_writer(Command::new("mv").arg(dir.path().join("staged")).arg(cert));
    let change = watch.expect(cert, "created", is_kind(&["created"], sha256_hex(b"LATER")));
    assert_eq!(change["source"], "inotify");
    watch.stop();
}
