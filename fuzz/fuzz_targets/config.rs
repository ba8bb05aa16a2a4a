//! The TOML configuration as an operator (or anyone who can write the ConfigMap) provides it:
//! `Config::parse` on any UTF-8 text (the loader reads the file as UTF-8 first), and the same text
//! as an overlay on the kubeadm profile of an empty node. A panic or an arithmetic overflow (the
//! targets build with overflow checks) is a crash; a bad value must be a `ConfigError`.
#![no_main]

use std::{path::Path, sync::OnceLock};

use certreload::config::{profile, Config};
use libfuzzer_sys::fuzz_target;

/// An empty host root and the overlay file, one per fuzzing process.
fn scratch() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("certreload-fuzz-config")
            .tempdir_in("/dev/shm")
            .or_else(|_| tempfile::tempdir())
            .expect("a scratch directory for the fuzz input");
        std::fs::create_dir(dir.path().join("root")).expect("the empty host root");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Only a panic (or a hang) is a finding: any input may be refused.
    Config::parse(Path::new("fuzz.toml"), text).ok();

    let dir = scratch();
    let overlay = dir.path().join("overlay.toml");
    std::fs::write(&overlay, text).expect("write the overlay");
    profile::load(
        profile::Profile::Kubeadm,
        &dir.path().join("root"),
        Some(&overlay),
    )
    .ok();
});
