//! Embeds the eBPF object built by `cargo xtask build` into the agent.
//!
//! The object is produced with the nightly toolchain for the BPF target, which a plain stable
//! `cargo build` cannot do. When it is absent the agent still builds, embeds an empty object and
//! reports at run time that eBPF is unavailable (and why), using the inotify fallback.
use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=CERTRELOAD_BPF_OBJECT");
    let manifest =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let object = env::var_os("CERTRELOAD_BPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../target/bpf/bpfel-unknown-none/release/certreload"));
    println!("cargo:rerun-if-changed={}", object.display());
    let out =
        PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("certreload.bpf.o");
    let bytes = fs::read(&object).unwrap_or_default();
    if bytes.is_empty() {
        println!(
            "cargo:warning=eBPF object not found at {}; the agent will use the inotify fallback (run `cargo xtask build`)",
            object.display()
        );
    }
    fs::write(&out, bytes).expect("OUT_DIR is writable");
}
