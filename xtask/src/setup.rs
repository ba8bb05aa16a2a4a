//! Installing what building and testing need: the nightly's rust-src, a bpf-linker built against the
//! nightly's own LLVM (cached outside the repository), and Debian packages for tests and benchmarks.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::cmd;

/// The toolchain that builds the eBPF object (needs `-Z build-std`): the one nightly the kernel
/// programs and bpf-linker are known to work with (rustc 1.97.0-nightly e50aa6fba, LLVM 22.1.4).
/// The only place its date is written; `cargo xtask setup` installs it when missing.
pub(crate) const NIGHTLY: &str = "nightly-2026-05-20";

/// bpf-linker release known to build against LLVM 22 with these toolchains.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages the end-to-end tests and benchmarks use, with what proves each present: a
/// binary on PATH, or an absolute path.
const PACKAGES: &[(&str, &str)] = &[
    ("util-linux", "unshare"),
    ("coreutils", "truncate"),
    ("linux-perf", "perf"),
    ("openssl", "openssl"),
    ("curl", "curl"),
    ("etcd-server", "/usr/bin/etcd"),
    // The test node's container runtime (tests/src/kube/node.rs): containerd's CRI and its
    // runc shim, runc itself.
    ("containerd", "/usr/bin/containerd"),
    ("runc", "/usr/sbin/runc"),
    // The Prometheus client's own OpenMetrics parser, which tests/tests/metrics.rs parses a
    // scrape with (for /usr/bin/python3).
    (
        "python3-prometheus-client",
        "/usr/lib/python3/dist-packages/prometheus_client/openmetrics/parser.py",
    ),
    // promtool: `promtool check rules` and `promtool test rules` on deploy/alerts/.
    ("prometheus", "/usr/bin/promtool"),
    // The agent's image (xtask/src/image.rs, tests/tests/image.rs): buildah builds
    // deploy/Containerfile without a daemon, skopeo and umoci read the OCI archive back.
    ("buildah", "/usr/bin/buildah"),
    ("skopeo", "/usr/bin/skopeo"),
    ("umoci", "/usr/bin/umoci"),
    // `certreload man` rendered by tests/tests/cli_install.rs.
    ("man-db", "/usr/bin/man"),
    ("groff-base", "/usr/bin/groff"),
];

/// Extra peers for `cargo xtask bench tls`: nginx terminating TLS in its stream module, HAProxy
/// in TCP mode.
pub(crate) const TLS_BENCH_PACKAGES: [(&str, &str); 3] = [
    ("nginx", "/usr/sbin/nginx"),
    (
        "libnginx-mod-stream",
        "/usr/lib/nginx/modules/ngx_stream_module.so",
    ),
    ("haproxy", crate::haproxy::HAPROXY),
];

/// Cache for tools built by xtask, outside the repository (survives `cargo clean`).
pub(crate) fn cache_dir() -> PathBuf {
    std::env::var_os("CERTRELOAD_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("certreload")))
        .or_else(|| std::env::var_os("HOME").map(|d| PathBuf::from(d).join(".cache/certreload")))
        .unwrap_or_else(|| PathBuf::from("/var/cache/certreload"))
}

/// The nightly's components: rust-src for `-Z build-std=core` (the eBPF object, the fuzz
/// targets), clippy for linting the kernel crate, which only the nightly can compile.
const NIGHTLY_COMPONENTS: [&str; 2] = ["rust-src", "clippy"];

/// Installs [`NIGHTLY`] with rust-src when rustup does not have it (RUSTUP_AUTO_INSTALL=0 machines
/// never install a toolchain on first use). The fuzz targets build with it too.
pub(crate) fn install_nightly() -> Result<()> {
    let present = Command::new("rustc")
        .args([&format!("+{NIGHTLY}"), "-V"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .output()
        .is_ok_and(|o| o.status.success());
    if present {
        return Ok(());
    }
    cmd::run(
        Command::new("rustup")
            .args(["toolchain", "install", NIGHTLY])
            .args(["--profile", "minimal"])
            .args(NIGHTLY_COMPONENTS.iter().flat_map(|c| ["--component", c])),
    )
    .with_context(|| format!("installing the {NIGHTLY} toolchain (it builds the eBPF object)"))
}

/// The nightly's LLVM major version, from `rustc +nightly -vV`.
fn nightly_llvm_major() -> Result<u32> {
    let out = cmd::output(Command::new("rustc").args([&format!("+{NIGHTLY}"), "-vV"]))
        .with_context(|| {
            format!("the {NIGHTLY} toolchain is missing (`cargo xtask setup` installs it)")
        })?;
    let version = out
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("`rustc +nightly -vV` printed no LLVM version")?;
    version
        .split('.')
        .next()
        .and_then(|m| m.trim().parse().ok())
        .with_context(|| format!("unparsable LLVM version {version:?}"))
}

/// Directory holding the bpf-linker built for `llvm_major`.
fn bpf_linker_root(llvm_major: u32) -> PathBuf {
    cache_dir().join(format!("bpf-linker-llvm{llvm_major}"))
}

/// The `bin` directory with bpf-linker, to put first on PATH when building the eBPF object.
pub(crate) fn bpf_linker_bin() -> Result<PathBuf> {
    Ok(bpf_linker_root(nightly_llvm_major()?).join("bin"))
}

/// The pinned nightly with rust-src, and bpf-linker. Errors name the missing piece.
pub(crate) fn toolchain() -> Result<()> {
    install_nightly()?;
    let major = nightly_llvm_major()?;
    let installed = cmd::output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        NIGHTLY,
    ]))
    .context("rustup is needed to manage the nightly toolchain")?;
    for component in NIGHTLY_COMPONENTS {
        if installed.lines().any(|l| l.starts_with(component)) {
            eprintln!("xtask: nightly {component} present");
            continue;
        }
        cmd::run(Command::new("rustup").args([
            "component",
            "add",
            component,
            "--toolchain",
            NIGHTLY,
        ]))
        .with_context(|| format!("cannot add {component} to the {NIGHTLY} toolchain"))?;
    }

    let root = bpf_linker_root(major);
    let linker = root.join("bin/bpf-linker");
    let sysroot =
        cmd::output(Command::new("rustc").args([&format!("+{NIGHTLY}"), "--print", "sysroot"]))?;
    let sysroot_lib = Path::new(sysroot.trim()).join("lib");
    // bpf-linker loads the nightly's libLLVM at run time (rustc puts its lib dir on the loader path
    // when it runs the linker); check that it starts the same way.
    let runs = Command::new(&linker)
        .arg("--version")
        .env("LD_LIBRARY_PATH", &sysroot_lib)
        .output();
    if linker.is_file() && runs.is_ok_and(|o| o.status.success()) {
        eprintln!("xtask: reusing {}", linker.display());
        return Ok(());
    }
    let libllvm = find_libllvm(&sysroot_lib, major)?;
    // bpf-linker's build looks for $LLVM_PREFIX/lib/libLLVM.so; point it at the nightly's own copy so
    // the linker and rustc agree on the LLVM bitcode format.
    let prefix = cache_dir().join(format!("llvm{major}"));
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    // Absent on the first run; any other failure is reported by symlink below.
    std::fs::remove_file(&link).ok();
    std::os::unix::fs::symlink(&libllvm, &link)
        .with_context(|| format!("symlinking {}", link.display()))?;
    cmd::run(
        Command::new("cargo")
            .args([
                &format!("+{NIGHTLY}"),
                "install",
                "bpf-linker",
                "--locked",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
                "--root",
            ])
            .arg(&root)
            .env("LLVM_PREFIX", &prefix)
            .env_remove("RUSTUP_TOOLCHAIN"),
    )
    .with_context(|| format!("building bpf-linker against {}", libllvm.display()))?;
    Ok(())
}

fn find_libllvm(lib: &Path, major: u32) -> Result<PathBuf> {
    let prefix = format!("libLLVM.so.{major}.");
    for entry in std::fs::read_dir(lib).with_context(|| format!("reading {}", lib.display()))? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            return Ok(entry.path());
        }
    }
    bail!(
        "the nightly ships no {prefix}* in {}: cannot build bpf-linker for LLVM {major}",
        lib.display()
    )
}

/// Installs the Debian packages tests and benchmarks use, when missing (root and apt-get needed).
pub(crate) fn packages() -> Result<()> {
    install(PACKAGES)
}

/// Installs those of `wanted` (package, binary or absolute path proving it) that are missing.
pub(crate) fn install(wanted: &[(&str, &str)]) -> Result<()> {
    let present = |probe: &str| {
        if probe.starts_with('/') {
            Path::new(probe).exists()
        } else {
            cmd::on_path(probe)
        }
    };
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(_, probe)| !present(probe))
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        eprintln!("xtask: test packages present");
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !cmd::on_path("apt-get") {
        eprintln!("xtask: missing packages {missing:?} and no root apt-get to install them; tests needing them will say so");
        return Ok(());
    }
    cmd::run(Command::new("apt-get").args(["update", "-qq"]))?;
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}
