//! More watched basenames than the kernel filter's compiled size (4,096): the agent sizes the map
//! at load time for its configuration, so eBPF mode still loads and attributes changes. Before,
//! the map's fixed size made loading the names fail: `--mode ebpf` refused to start and auto mode
//! fell back to inotify with a message that did not name the limit.
//!
//! Needs root and eBPF (skips outside CI, fails under `CI=true`), like tests/tests/watch.rs.

use std::{fs, path::PathBuf};

use certreload_e2e::{Mode, Watch};

/// Comfortably above the compiled 4,096.
const FILES: usize = 5_000;

#[test]
fn ebpf_mode_watches_more_names_than_the_compiled_map_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Basenames of their own (the kernel filter matches basenames host-wide).
    let paths: Vec<PathBuf> = (0..FILES)
        .map(|i| {
            dir.path()
                .join(format!("kn-{i}-{}.pem", std::process::id()))
        })
        .collect();
    for p in &paths {
        fs::write(p, b"x").expect("write");
    }
    let refs: Vec<&std::path::Path> = paths.iter().map(PathBuf::as_path).collect();
    let Some(mut watch) = Watch::start(Mode::Ebpf, &refs, &[]) else {
        return;
    };
    let log = watch.log();
    let ready = log
        .lines()
        .find(|l| l.contains("monitor ready"))
        .expect("the ready line");
    assert!(
        ready.contains("Ebpf") && ready.contains(&format!("names={FILES}")),
        "eBPF mode with {FILES} names: {ready}\n{log}"
    );

    // The last name loaded is watched in the kernel: its change is seen and attributed.
    let last = paths.last().expect("paths");
    fs::write(last, b"changed").expect("write");
    let change = watch.expect(last, "modified, from the kernel hook", |c| {
        c["source"] == "ebpf"
    });
    assert_eq!(change["writer"]["tgid"], std::process::id(), "{change:#}");
    let (_, stats) = watch.stop();
    assert_eq!(stats["mode"], "ebpf", "{stats:#}");
}
