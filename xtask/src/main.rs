//! `cargo xtask`: every way to build, run, test and measure certreload, installs included.
//!
//! Each subcommand is idempotent and prints what it does. Nothing here is needed at run time.

mod agent_proc;
mod alerts;
mod bench;
mod bench_pki;
mod build;
mod chart;
mod cmd;
mod dist;
mod fuzz;
mod gate_bench;
mod haproxy;
mod image;
mod images;
mod initramfs;
mod install;
mod manifests;
mod nginx;
mod peers;
mod propagation_bench;
mod report;
mod scale_bench;
mod scale_conns;
mod scale_files;
mod scale_writers;
mod secret_volume;
mod setup;
mod tls_bench;
mod tls_ceiling;
mod tls_fronts;
mod tls_load;
mod vm;
mod vm_bench;
mod vm_debian;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    about = "Build, run, test and benchmark certreload"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install the pinned nightly with rust-src, build (or reuse) bpf-linker against the nightly's
    /// own LLVM, install the Debian packages the tests and benchmarks use, and build (or reuse) the
    /// real Kubernetes components and etcd from the pinned Go modules in peers/.
    Setup,
    /// Build the eBPF object, then the agent with the object embedded.
    Build {
        /// Build the agent in release mode (the eBPF object is always optimised).
        #[arg(long)]
        release: bool,
    },
    /// Set up the eBPF toolchain (as `setup` does), build, then run `certreload ARGS` (no ARGS:
    /// the built-in default: the kubeadm profile on a kubeadm node, else the demo).
    Run {
        /// Build the agent in release mode.
        #[arg(long)]
        release: bool,
        /// Arguments for certreload.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Setup, build, then format/lint checks, the deploy/ manifests against the Kubernetes schema,
    /// and every test (unit and privileged end-to-end).
    Test,
    /// Writes deploy/*.yaml (the Helm chart's default rendering) and deploy/alerts/ (the chart's
    /// alert rules) from deploy/helm/certreload; `test` fails when they are not current.
    Manifests {
        /// Only check: the chart with the real Helm, deploy/ current, the schema, promtool.
        #[arg(long)]
        check: bool,
    },
    /// The agent's container image from deploy/Containerfile, built with buildah (no daemon, no
    /// registry) into target/image/certreload.tar (OCI archive), checked with skopeo.
    Image(image::Options),
    /// Release binary, Kubernetes manifests and Containerfile in one folder.
    Dist {
        /// Output folder (default target/dist).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// Build the cargo-fuzz targets in fuzz/ with the pinned nightly and run each for a time box;
    /// fails on the first crash, naming the input that caused it.
    Fuzz {
        /// One target (pem, config, audit_line, kernel_record); all of them when omitted.
        target: Option<String>,
        /// Seconds per target.
        #[arg(long, default_value_t = fuzz::DEFAULT_SECONDS)]
        seconds: u64,
    },
    /// The monitor's kernel cases on Debian's kernels (bookworm, bookworm-backports) under qemu,
    /// with an initramfs holding the agent and the test programs.
    Vm(vm::Options),
    /// Inside a `cargo xtask vm --bench monitor` guest only: `bench monitor` against the agent at
    /// /bin/certreload, every strategy the guest's kernel allows.
    #[command(hide = true)]
    VmGuestBench {
        /// File operations per overhead sample.
        #[arg(long)]
        ops: u64,
        /// getppid() calls per sample.
        #[arg(long)]
        syscalls: u64,
        /// Interleaved rounds.
        #[arg(long)]
        rounds: usize,
    },
    /// Benchmarks; prints tables with the peers measured in the same run.
    Bench {
        #[command(subcommand)]
        which: bench::Which,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Setup => {
            setup::toolchain()?;
            setup::packages()?;
            peers::build()?;
            images::pause()?;
        }
        Command::Build { release } => {
            build::all(release)?;
        }
        Command::Run { release, args } => {
            // The kernel path is the default: a fresh machine gets the nightly and bpf-linker here,
            // not only under `test`. A machine that cannot have them (no rustup, offline) still
            // runs, on the inotify fallback, and `build::all` says so.
            if let Err(e) = setup::toolchain() {
                eprintln!("xtask: WARNING: cannot set up the eBPF toolchain: {e:#}");
            }
            let built = build::all(release)?;
            cmd::exec(&built.agent, &args)?;
        }
        Command::Test => test()?,
        Command::Image(options) => {
            let built = build::all(!options.debug)?;
            if options.context_only {
                image::context(&built.agent)?;
            } else {
                image::build(&built.agent)?;
            }
        }
        Command::Manifests { check: false } => manifests::write(&cmd::workspace_root())?,
        Command::Manifests { check: true } => manifests::check(&cmd::workspace_root())?,
        Command::Dist { out } => {
            manifests::check(&cmd::workspace_root())?;
            dist::run(out)?;
        }
        Command::Fuzz { target, seconds } => {
            let targets: Vec<&str> = match &target {
                Some(t) => vec![t.as_str()],
                None => fuzz::TARGETS.to_vec(),
            };
            fuzz::run(&targets, seconds)?;
        }
        Command::Vm(options) => {
            let built = build::all(options.bench.is_some())?;
            vm::run(&options, &built)?;
        }
        Command::VmGuestBench {
            ops,
            syscalls,
            rounds,
        } => {
            let agent = std::path::Path::new("/bin/certreload");
            bench::guest_monitor(agent, ops, syscalls, rounds)?;
        }
        Command::Bench { which } => {
            setup::packages()?;
            let built = build::all(true)?;
            bench::run(which, &built)?;
        }
    }
    Ok(())
}

/// What a clean `cargo xtask test` writes at most, measured on a clean clone (target/ with the
/// test binaries, the release build for the benches' helpers, the fuzz build), with a margin.
const TEST_DISK_BYTES: u64 = 16 << 30;

/// Says up front when the disk cannot hold the suite's build, instead of a bare ENOSPC minutes in.
fn disk_preflight() -> Result<()> {
    let root = cmd::workspace_root();
    let free = cmd::free_bytes(&root)?;
    let gib = |b: u64| b as f64 / f64::from(1u32 << 30);
    eprintln!(
        "xtask: {:.1} GiB free under {} (a clean test build needs up to {:.0} GiB)",
        gib(free),
        root.display(),
        gib(TEST_DISK_BYTES)
    );
    if free < TEST_DISK_BYTES {
        eprintln!(
            "xtask: WARNING: {:.1} GiB free under {} is less than the {:.0} GiB a clean test build may write; \
             the build may fail with ENOSPC (No space left on device)",
            gib(free),
            root.display(),
            gib(TEST_DISK_BYTES)
        );
    }
    Ok(())
}

/// `cargo xtask vm` for both kernels, from `test`: needs the eBPF object (the nightly); outside
/// CI a failure is a warning (a developer machine may lack qemu or the network to Debian).
fn vm_cases(ci: bool, nightly: bool, built: &build::Built) -> Result<()> {
    let options = vm::Options {
        kernel: None,
        accel: vm::Accel::Auto,
        bench: None,
    };
    if !nightly {
        eprintln!("xtask: WARNING: no eBPF object (no nightly); the VM cases are skipped");
        return Ok(());
    }
    match vm::run(&options, built) {
        Ok(()) => Ok(()),
        Err(e) if ci => Err(e.context("CI=true: the VM cases must pass")),
        Err(e) => {
            eprintln!("xtask: WARNING: VM cases: {e:#}");
            Ok(())
        }
    }
}

/// What CI runs. Under `CI=true` a missing eBPF toolchain is an error, never a silent skip.
fn test() -> Result<()> {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    disk_preflight()?;
    let nightly = match setup::toolchain() {
        Ok(()) => true,
        Err(e) if ci => return Err(e.context("CI=true: the eBPF toolchain is required")),
        Err(e) => {
            eprintln!("xtask: eBPF toolchain unavailable ({e:#}); testing the fallback only");
            false
        }
    };
    setup::packages()?;
    // Real Kubernetes and etcd for the end-to-end tests; under CI=true they must build.
    let peers = match peers::build() {
        Ok(dir) => Some(dir),
        Err(e) if !ci => {
            eprintln!(
                "xtask: WARNING: {e:#}\nxtask: tests against real Kubernetes components will skip"
            );
            None
        }
        Err(e) => return Err(e.context("CI=true: the real Kubernetes components are required")),
    };
    // The test node's sandbox image; under CI=true it must build.
    let pause = match images::pause() {
        Ok(tarball) => Some(tarball),
        Err(e) if !ci => {
            eprintln!("xtask: WARNING: {e:#}\nxtask: tests on a real kubelet node will skip");
            None
        }
        Err(e) => return Err(e.context("CI=true: the test node's pause image is required")),
    };
    let built = build::all(false)?;
    let root = cmd::workspace_root();
    cmd::run(
        cmd::cargo()
            .args(["fmt", "--all", "--check"])
            .current_dir(&root),
    )?;
    cmd::run(
        cmd::cargo()
            .args(["fmt", "--check"])
            .current_dir(root.join("ebpf/programs")),
    )?;
    cmd::run(
        built
            .cargo_env(&mut cmd::cargo())
            .args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ])
            .current_dir(&root),
    )?;
    if nightly {
        build::ebpf_clippy()?;
    }
    manifests::check(&root)?;
    let mut tests = cmd::cargo();
    built
        .cargo_env(&mut tests)
        .args(["test", "--workspace"])
        .current_dir(&root);
    if let Some(dir) = peers {
        tests.env("CERTRELOAD_PEERS", dir);
    }
    if let Some(tarball) = pause {
        tests.env("CERTRELOAD_PAUSE_IMAGE", tarball);
    }
    // The agent's image (tests/tests/image.rs runs it from its root filesystem) and the agent as
    // `cargo install` installs it (tests/tests/cli_install.rs); under CI=true both must build.
    for (variable, made) in [
        ("CERTRELOAD_IMAGE", image::build(&built.agent)),
        ("CERTRELOAD_INSTALLED_BIN", install::check(&built)),
    ] {
        match made {
            Ok(path) => {
                tests.env(variable, path);
            }
            Err(e) if ci => return Err(e.context(format!("CI=true: {variable} is required"))),
            Err(e) => {
                eprintln!("xtask: WARNING: {e:#}\nxtask: the tests that need {variable} will skip")
            }
        }
    }
    cmd::run(&mut tests)?;
    // The monitor's kernel cases on Debian's kernels under qemu (fentry/fexit and BPF-LSM, which
    // this host refuses, and the tracepoint strategy on other kernels). Under CI=true a guest
    // that does not boot fails the run like a failed case.
    vm_cases(ci, nightly, &built)?;
    // Every parser of untrusted bytes replays its seeds and past finds, then mutates briefly.
    if nightly {
        fuzz::run(&fuzz::TARGETS, fuzz::SMOKE_SECONDS)?;
    } else {
        eprintln!("xtask: WARNING: no nightly toolchain; the fuzz smoke run is skipped");
    }
    Ok(())
}
