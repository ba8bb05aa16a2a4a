//! Writer attribution that is never wrong (issue 15), eBPF mode: a change names a writer only
//! when the kernel's events prove that writer touched the path's resolution chain; otherwise
//! `writer` is null and `attribution` says `unseen` or `ambiguous` (with `writers` named).
//!
//! Every case watches a basename of its own: the kernel filter matches basenames host-wide and
//! the tests of this binary run in parallel.

use std::{
    collections::HashSet,
    fs,
    io::{BufRead, BufReader, Write},
    os::unix::fs::symlink,
    path::Path,
    process::{Command, Stdio},
};

use certreload_e2e::{run_writer, sha256_hex, Mode, Watch};
use serde_json::Value;

fn unique(stem: &str) -> String {
    format!("{stem}-{}.crt", std::process::id())
}

fn tgid(writer: &Value) -> Option<u32> {
    writer["tgid"].as_u64().and_then(|t| u32::try_from(t).ok())
}

/// The tgids `writers` names (an ambiguous change).
fn named(change: &Value) -> HashSet<u32> {
    change["writers"]
        .as_array()
        .map(|ws| ws.iter().filter_map(tgid).collect())
        .unwrap_or_default()
}

/// A change through `mmap` (no syscall on the file) while a decoy renames and writes a file of
/// the same basename in another directory in a tight loop: the decoy's operations make the agent
/// look, and it finds the change, but no record names the decoy: `writer: null`, `unseen`.
#[test]
fn ebpf_mmap_write_beside_a_same_named_decoy_is_unseen_not_the_decoy() {
    let (watched, elsewhere) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let name = unique("decoy");
    let cert = watched.path().join(&name);
    fs::write(&cert, "OLD CERT\n").expect("write");
    // Mapped before the agent starts: the write through the mapping below is the only trace,
    // and no syscall of this process on the file is seen (its open would rightly make this
    // process a writer: it is the one writing through the mapping).
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
    let Some(mut watch) = Watch::start(Mode::Ebpf, &[&cert], &["--resync", "1"]) else {
        // SAFETY: unmaps the mapping created above, not used afterwards.
        unsafe { libc::munmap(map, len) };
        return;
    };
    let decoy_dir = elsewhere.path().display().to_string();
    let mut decoy = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd '{decoy_dir}' && while :; do printf x > '{name}.tmp'; mv '{name}.tmp' '{name}'; printf y >> '{name}'; done"
        ))
        .spawn()
        .expect("decoy starts");
    // The decoy is at work before the change: its file exists.
    let decoy_file = elsewhere.path().join(&name);
    certreload_e2e::poll(
        certreload_e2e::EVENT_DEADLINE,
        std::time::Duration::from_millis(5),
        || decoy_file.exists().then_some(()),
    )
    .expect("the decoy writes its file");
    // SAFETY: the mapping is `len` bytes, writable, and still mapped.
    unsafe {
        std::ptr::copy_nonoverlapping(b"MMAP".as_ptr(), map.cast::<u8>(), 4);
        libc::msync(map, len, libc::MS_SYNC);
    }
    let change = watch.expect(&cert, "the mmap write", |c| {
        c["sha256"] == sha256_hex(b"MMAPCERT\n")
    });
    certreload_e2e::kill_and_reap(&mut decoy);
    // SAFETY: unmaps the mapping created above, not used afterwards.
    unsafe { libc::munmap(map, len) };
    let (rest, stats) = watch.stop();
    for c in std::iter::once(&change).chain(&rest) {
        assert!(c["writer"].is_null(), "no writer may be named: {c:#}");
        assert_eq!(c["attribution"], "unseen", "{c:#}");
        assert!(c.get("writers").is_none(), "{c:#}");
    }
    assert!(
        stats["hints"].as_u64().unwrap_or(0) > 0,
        "the decoy's operations reached the agent: {stats:#}"
    );
}

/// The AtomicWriter race of the CI flake, on purpose, 200 times: a process writes and closes the
/// file in the new timestamped directory while `mv` swaps `..data`. A `replaced` record names `mv`
/// or is ambiguous with `mv` among the writers; never the other process alone.
#[test]
fn ebpf_atomic_writer_race_names_mv_or_both_never_the_other_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vol = dir.path();
    let name = unique("race");
    let ts0 = vol.join("..ts_0");
    fs::create_dir(&ts0).expect("mkdir");
    fs::write(ts0.join(&name), "V0\n").expect("write");
    symlink("..ts_0", vol.join("..data")).expect("symlink");
    symlink(format!("..data/{name}"), vol.join(&name)).expect("symlink");
    let cert = vol.join(&name);
    let Some(mut watch) = Watch::start(Mode::Ebpf, &[&cert], &[]) else {
        return;
    };
    let (mut mvs, mut others) = (HashSet::new(), HashSet::new());
    let rounds = 200;
    for i in 1..=rounds {
        let ts = format!("..ts_{i}");
        fs::create_dir(vol.join(&ts)).expect("mkdir");
        symlink(&ts, vol.join("..data_tmp")).expect("symlink");
        let mut writer = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "printf 'V{i}\\n' > '{}'",
                vol.join(&ts).join(&name).display()
            ))
            .spawn()
            .expect("writer starts");
        let mut mv = Command::new("mv")
            .arg("-T")
            .arg(vol.join("..data_tmp"))
            .arg(vol.join("..data"))
            .spawn()
            .expect("mv starts");
        others.insert(writer.id());
        mvs.insert(mv.id());
        assert!(writer.wait().expect("writer").success());
        assert!(mv.wait().expect("mv").success());
    }
    let last = format!("V{rounds}\n");
    watch.expect(&cert, "the last round's content", |c| {
        c["sha256"] == sha256_hex(last.as_bytes())
    });
    let (rest, _) = watch.stop();
    let replaced: Vec<&Value> = rest.iter().filter(|c| c["kind"] == "replaced").collect();
    assert!(!replaced.is_empty(), "no replacement recorded: {rest:#?}");
    for c in &rest {
        if let Some(w) = tgid(&c["writer"]) {
            assert!(
                !others.contains(&w) || c["kind"] != "replaced",
                "a replacement blamed on the other process alone: {c:#}\nevery change: {rest:#?}"
            );
            assert!(
                mvs.contains(&w) || others.contains(&w),
                "a writer outside the race: {c:#}"
            );
        }
    }
    for c in replaced {
        let by_mv = tgid(&c["writer"]).is_some_and(|w| mvs.contains(&w));
        let with_mv = c["attribution"] == "ambiguous" && !named(c).is_disjoint(&mvs);
        assert!(by_mv || with_mv, "neither mv nor ambiguous with mv: {c:#}");
        if by_mv {
            assert_eq!(c["attribution"], "proven", "{c:#}");
            assert_eq!(c["writer"]["comm"], "mv", "{c:#}");
        }
    }
}

/// Two writers finish on the same file before the agent reads it (the first holds it open, so
/// the agent waits for its close, or reads while it is open): one change, `ambiguous`, both named.
#[test]
fn ebpf_two_writers_before_the_read_are_ambiguous_and_both_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let name = unique("two");
    let cert = dir.path().join(&name);
    fs::write(&cert, "").expect("write");
    let Some(mut watch) = Watch::start(Mode::Ebpf, &[&cert], &[]) else {
        return;
    };
    let path = cert.display().to_string();
    let mut holder = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "exec 3>>'{path}' && printf A >&3 && echo written && read _ && exec 3>&-"
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("holder starts");
    let mut line = String::new();
    BufReader::new(holder.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("holder says it wrote");
    assert_eq!(line.trim(), "written");
    let second = run_writer(
        Command::new("sh")
            .arg("-c")
            .arg(format!("printf B >> '{path}'")),
    );
    let first = holder.id();
    holder
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"\n")
        .expect("release the holder");
    assert!(holder.wait().expect("holder exits").success());
    let change = watch.expect(&cert, "written by both", |c| {
        c["sha256"] == sha256_hex(b"AB")
    });
    assert!(change["writer"].is_null(), "{change:#}");
    assert_eq!(change["attribution"], "ambiguous", "{change:#}");
    assert_eq!(named(&change), HashSet::from([first, second]), "{change:#}");
    let (rest, _) = watch.stop();
    assert!(rest.is_empty(), "one change only: {rest:#?}");
}

/// A single writer is still named, with `attribution: "proven"` (every case of `watch.rs` checks
/// the same through `assert_writer`).
#[test]
fn ebpf_one_writer_is_proven() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = dir.path().join(unique("one"));
    fs::write(&cert, "OLD\n").expect("write");
    let Some(mut watch) = Watch::start(Mode::Ebpf, &[&cert], &[]) else {
        return;
    };
    let staged = dir.path().join("staged.pem");
    fs::write(&staged, "NEW\n").expect("write");
    let pid = run_writer(Command::new("cp").arg(&staged).arg(&cert));
    let change = watch.expect(&cert, "modified by cp", |c| {
        c["sha256"] == sha256_hex(b"NEW\n")
    });
    assert_eq!(change["attribution"], "proven", "{change:#}");
    assert_eq!(tgid(&change["writer"]), Some(pid), "{change:#}");
    assert!(Path::new(&cert).exists());
    let (rest, _) = watch.stop();
    assert!(rest.is_empty(), "{rest:#?}");
}
