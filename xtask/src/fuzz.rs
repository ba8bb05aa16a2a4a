//! `cargo xtask fuzz`: the cargo-fuzz targets in `fuzz/`, built with the pinned nightly
//! (AddressSanitizer, overflow checks and debug assertions on) and run time-boxed, one after the
//! other, each on its seeds plus everything earlier runs found.
//!
//! The seeds of `pem` and `kernel_record` are generated here on every run (certificates from rcgen,
//! records from the shared `RawEvent`), so none is checked in with an expiry and none goes stale
//! when the kernel record changes; `config` and `audit_line` start from the text in
//! `fuzz/corpus/<target>/`. What a run finds (new inputs, crash artifacts) stays under
//! `target/fuzz/`, never in the repository: a crash is turned into a regression test by hand.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context, Result};
use certreload_common::{kind, RawEvent};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

use crate::{
    cmd,
    setup::{cache_dir, NIGHTLY},
};

/// cargo-fuzz release that builds with [`NIGHTLY`]; installed into the cache like bpf-linker.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Every target in `fuzz/fuzz_targets/`, in the order they run.
pub(crate) const TARGETS: [&str; 4] = ["pem", "config", "audit_line", "kernel_record"];

/// Seconds per target for `cargo xtask fuzz` without `--seconds`.
pub(crate) const DEFAULT_SECONDS: u64 = 60;

/// Seconds per target for the smoke run in `cargo xtask test`: enough to replay the seeds and
/// every input found before, and to mutate a little; the time boxes are in `cargo xtask fuzz`.
pub(crate) const SMOKE_SECONDS: u64 = 15;

/// What one time-boxed run did, from libFuzzer's final statistics.
#[derive(Debug)]
pub(crate) struct RunStats {
    /// The target.
    pub target: String,
    /// Inputs executed.
    pub executions: u64,
    /// Executions per second, as libFuzzer averages them.
    pub per_second: u64,
    /// Inputs that reached new coverage in this run.
    pub new_units: u64,
    /// Inputs in the working corpus after the run.
    pub corpus: usize,
}

/// The cargo-fuzz binary, installed with [`NIGHTLY`] into the cache when missing.
fn cargo_fuzz() -> Result<PathBuf> {
    let root = cache_dir().join(format!("cargo-fuzz-{CARGO_FUZZ_VERSION}"));
    let bin = root.join("bin/cargo-fuzz");
    let works = Command::new(&bin)
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if works {
        eprintln!("xtask: reusing {}", bin.display());
        return Ok(bin);
    }
    cmd::run(
        Command::new("cargo")
            .args([&format!("+{NIGHTLY}"), "install", "cargo-fuzz", "--locked"])
            .args(["--version", CARGO_FUZZ_VERSION, "--root"])
            .arg(&root)
            .env_remove("RUSTUP_TOOLCHAIN"),
    )
    .context("installing cargo-fuzz (it builds the fuzz targets)")?;
    Ok(bin)
}

/// `target/fuzz`: the fuzz build, working corpora, generated seeds and crash artifacts.
fn work_dir() -> PathBuf {
    cmd::workspace_root().join("target/fuzz")
}

/// Builds every target (one cargo build: they share the instrumented agent).
fn build() -> Result<PathBuf> {
    let root = cmd::workspace_root();
    let out = work_dir();
    cmd::run(
        Command::new(cargo_fuzz()?)
            .args(["fuzz", "build", "--target-dir"])
            .arg(&out)
            // 16 units: the instrumented agent and its dependencies build in about a third of the
            // time of cargo-fuzz's default of 1, for somewhat fewer executions per second.
            .args(["--codegen-units", "16"])
            .current_dir(root.join("fuzz"))
            .env("RUSTUP_TOOLCHAIN", NIGHTLY),
    )
    .context("building the fuzz targets (`cargo xtask setup` installs the nightly)")?;
    Ok(out.join("x86_64-unknown-linux-gnu/release"))
}

/// Builds, then runs `targets` for `seconds` each; fails on the first crash, naming the input.
pub(crate) fn run(targets: &[&str], seconds: u64) -> Result<Vec<RunStats>> {
    for t in targets {
        if !TARGETS.contains(t) {
            bail!(
                "no fuzz target {t:?}; the targets are {}",
                TARGETS.join(", ")
            );
        }
    }
    crate::setup::install_nightly()?;
    let started = Instant::now();
    let bin = build()?;
    eprintln!(
        "xtask: fuzz targets built in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let mut all = Vec::new();
    for target in targets {
        let stats = run_one(&bin, target, seconds)?;
        all.push(stats);
    }
    print_table(&all);
    eprintln!(
        "xtask: fuzzing (build and runs) took {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(all)
}

fn run_one(bin: &Path, target: &str, seconds: u64) -> Result<RunStats> {
    let work = work_dir();
    let corpus = work.join("corpus").join(target);
    let artifacts = work.join("artifacts").join(target);
    let generated = work.join("seeds").join(target);
    for dir in [&corpus, &artifacts] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut seeds = vec![cmd::workspace_root().join("fuzz/corpus").join(target)];
    if write_generated_seeds(target, &generated)? {
        seeds.push(generated);
    }
    let seeds: Vec<PathBuf> = seeds.into_iter().filter(|d| d.is_dir()).collect();
    let mut command = Command::new(bin.join(target));
    command
        .arg(format!("-max_total_time={seconds}"))
        .arg("-print_final_stats=1")
        // A single input that takes seconds is a hang worth reporting, as is one using GiBs.
        .arg("-timeout=10")
        .arg("-rss_limit_mb=2048")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        // The first directory receives what this run finds; the seeds are only read.
        .arg(&corpus)
        .args(&seeds)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    eprintln!("xtask: fuzzing {target} for {seconds} s");
    let out = command.output().with_context(|| {
        format!(
            "cannot start the fuzz target {}",
            bin.join(target).display()
        )
    })?;
    let log = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        eprintln!("{}", tail.join("\n"));
        let crash = log
            .lines()
            .find_map(|l| l.split_once("Test unit written to ").map(|(_, p)| p.trim()))
            .unwrap_or("(no artifact written)");
        bail!(
            "fuzz target {target} crashed ({}); input: {crash}\n  reproduce: {} {crash}\n  \
             keep it as a regression test that feeds these bytes to the parser",
            out.status,
            bin.join(target).display()
        );
    }
    let stat = |name: &str| -> u64 {
        log.lines()
            .find_map(|l| l.strip_prefix(&format!("stat::{name}:")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let corpus_len = std::fs::read_dir(&corpus).map(|d| d.count()).unwrap_or(0);
    Ok(RunStats {
        target: target.to_string(),
        executions: stat("number_of_executed_units"),
        per_second: stat("average_exec_per_sec"),
        new_units: stat("new_units_added"),
        corpus: corpus_len,
    })
}

fn print_table(all: &[RunStats]) {
    println!(
        "{:<14} {:>12} {:>10} {:>10} {:>8}",
        "target", "executions", "exec/s", "new units", "corpus"
    );
    for s in all {
        println!(
            "{:<14} {:>12} {:>10} {:>10} {:>8}",
            s.target, s.executions, s.per_second, s.new_units, s.corpus
        );
    }
}

/// Writes the seeds made at run time for `target` into `dir`; false when it has none.
fn write_generated_seeds(target: &str, dir: &Path) -> Result<bool> {
    let files = match target {
        "pem" => pem_seeds()?,
        "kernel_record" => kernel_seeds(),
        _ => return Ok(false),
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, bytes) in files {
        let path = dir.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(true)
}

/// Certificate material in every form the loaders accept: a CA and a leaf for `localhost` with its
/// key in one PEM file (so the fuzz target's pair, CA and SA checks all pass on it), the pieces
/// alone, DER, a kubeconfig with embedded credentials, and a public key file.
fn pem_seeds() -> Result<Vec<(&'static str, Vec<u8>)>> {
    use base64::Engine as _;
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "fuzz-ca");
    let ca = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate()?;
    let mut leaf_params = CertificateParams::new(vec!["localhost".to_string()])?;
    leaf_params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let leaf = leaf_params.signed_by(&key, &issuer)?;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: fuzz\nclusters:\n- name: fuzz\n  cluster:\n    \
         server: https://127.0.0.1:6443\n    certificate-authority-data: {}\ncontexts:\n- name: fuzz\n  \
         context:\n    cluster: fuzz\n    user: fuzz\nusers:\n- name: fuzz\n  user:\n    \
         client-certificate-data: {}\n    client-key-data: {}\n",
        b64(ca.pem().as_bytes()),
        b64(leaf.pem().as_bytes()),
        b64(key.serialize_pem().as_bytes()),
    );
    Ok(vec![
        (
            "bundle.pem",
            format!("{}{}{}", leaf.pem(), ca.pem(), key.serialize_pem()).into_bytes(),
        ),
        ("leaf.pem", leaf.pem().into_bytes()),
        ("key.pem", key.serialize_pem().into_bytes()),
        ("leaf.der", leaf.der().to_vec()),
        ("key.der", key.serialize_der()),
        ("public.pem", key.public_key_pem().into_bytes()),
        ("kubeconfig.yaml", kubeconfig.into_bytes()),
    ])
}

/// Valid ring-buffer records as the kernel programs emit them: an atomic replace (open for write,
/// close, rename) of one file by one process, a dup and close_range, an exit, and one short record.
fn kernel_seeds() -> Vec<(&'static str, Vec<u8>)> {
    fn record(kind: u32, fd: i32, fd2: i32, name: &[u8], name2: &[u8]) -> Vec<u8> {
        let mut raw = RawEvent::zeroed();
        raw.kind = kind;
        raw.pid = 4242;
        raw.tgid = 4242;
        raw.ts_ns = 1_000_000;
        raw.fd = fd;
        raw.fd2 = fd2;
        raw.comm[..7].copy_from_slice(b"kubeadm");
        raw.name[..name.len()].copy_from_slice(name);
        raw.name2[..name2.len()].copy_from_slice(name2);
        // SAFETY: RawEvent is repr(C), plain old data without padding (the agent decodes the
        // kernel's bytes the same way); viewing it as bytes is sound.
        unsafe {
            std::slice::from_raw_parts(
                (&raw as *const RawEvent).cast::<u8>(),
                size_of::<RawEvent>(),
            )
        }
        .to_vec()
    }
    let tmp = b"/etc/kubernetes/pki/apiserver.crt.tmp";
    let crt = b"/etc/kubernetes/pki/apiserver.crt";
    let replace = [
        record(kind::OPEN_WRITE, 3, -1, tmp, b""),
        record(kind::DUP, 3, 4, b"", b""),
        record(kind::CLOSE, 3, -1, b"", b""),
        record(kind::CLOSE_RANGE, 4, 10, b"", b""),
        record(kind::RENAME, -1, -1, tmp, crt),
        record(kind::EXIT, -1, -1, b"", b""),
    ]
    .concat();
    let mut short = record(kind::UNLINK, -1, -1, crt, b"");
    short.truncate(short.len() / 2);
    vec![
        ("atomic_replace.bin", replace),
        ("rename.bin", record(kind::RENAME, -1, -1, tmp, crt)),
        ("short_record.bin", short),
    ]
}
