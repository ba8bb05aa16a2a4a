//! `cargo xtask vm`: the monitor's kernel cases on Debian's own kernels (bookworm's and the newest
//! of bookworm-backports), booted under qemu with an initramfs that holds the agent, the test
//! programs and busybox. These machines refuse fentry/fexit and BPF-LSM; Debian's kernels allow
//! them, so this is where the cheaper hooks are proven, and where the tracepoint strategy is proven
//! on a kernel other than the host's.
//!
//! The guest needs no disk and no module: `/init` (a busybox script written here) mounts proc,
//! sysfs, devtmpfs, tmpfs, securityfs and bpffs, runs each case with `CI=true` (nothing may skip),
//! prints `certreload-vm: case NAME rc=N` after each on the serial console (a file on the host),
//! and powers off. The host reads the verdicts back from that file.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    build::Built,
    cmd,
    initramfs::Initramfs,
    setup, vm_bench,
    vm_debian::{self, GuestKernel, Suite},
};

/// qemu itself (Debian's package), and objcopy to strip the guest's binaries.
const PACKAGES: [(&str, &str); 2] = [
    ("qemu-system-x86", "/usr/bin/qemu-system-x86_64"),
    ("binutils", "objcopy"),
];

/// The kernel command line: serial console, no reboot on panic (qemu exits), and the LSM list
/// with `bpf` (BPF-LSM programs attach only when `bpf` is among the active LSMs).
const CMDLINE: &str = "console=ttyS0 quiet loglevel=4 panic=-1 lsm=lockdown,capability,yama,bpf";

/// Guest memory: the initramfs is unpacked into RAM next to the tests' temporary files.
const GUEST_MEMORY_MIB: u32 = 2048;

/// The longest a whole guest run may take under software emulation before it counts as hung.
const RUN_DEADLINE: Duration = Duration::from_secs(20 * 60);

/// How long a KVM guest may take to reach `/init` before KVM counts as unusable here (a guest
/// that only prints and powers off: ~7 s under TCG here, ~1 s where KVM works; nested KVM on
/// these hosts either reports an internal error at once or hangs).
const KVM_PROBE_DEADLINE: Duration = Duration::from_secs(20);

/// The console line each case ends with; [`verdicts`] parses it.
const CASE_MARK: &str = "certreload-vm: case ";

/// The agent's unit test that loads and attaches the `fentry` strategy (fentry/fexit and BPF-LSM
/// programs) and decodes the records they write for each watched operation.
const VFS_HOOKS_TEST: &str = "monitor::ebpf::vfs_hooks::tests::fentry_strategy_reports_watched_operations_or_the_kernel_refusal_is_named";

/// The console line `/init` prints last.
const DONE_MARK: &str = "certreload-vm: done";

/// How qemu runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Accel {
    /// KVM when a test guest boots with it, else software emulation (TCG), saying why.
    Auto,
    /// Hardware virtualisation through /dev/kvm.
    Kvm,
    /// Software emulation (qemu's TCG): slow, but needs nothing from the host.
    Tcg,
}

/// `cargo xtask vm` options.
#[derive(Debug, clap::Args)]
pub(crate) struct Options {
    /// One kernel only (default: bookworm and bookworm-backports).
    #[arg(long, value_enum)]
    pub kernel: Option<Suite>,
    /// How qemu runs the guest.
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: Accel,
    /// Run a benchmark in each guest instead of the test cases (see `vm_bench`); the agent is
    /// built in release.
    #[arg(long, value_enum)]
    pub bench: Option<vm_bench::VmBench>,
}

/// One program the guest runs, with its arguments and extra environment.
pub(crate) struct GuestCase {
    /// Name in the console marks and the table.
    pub(crate) name: &'static str,
    /// What the case proves, for the table.
    pub(crate) what: &'static str,
    /// The guest command line (busybox sh).
    pub(crate) command: String,
}

/// A case's outcome in one guest.
#[derive(Debug)]
pub(crate) struct Verdict {
    /// The case.
    pub case: String,
    /// Its exit status in the guest.
    pub rc: i32,
    /// The libtest summary line ("test result: ok. 23 passed; …"), when it printed one.
    pub summary: Option<String>,
}

/// What one kernel's run produced.
pub(crate) struct KernelRun {
    kernel: GuestKernel,
    accel: &'static str,
    elapsed: Duration,
    console: PathBuf,
    verdicts: Vec<Verdict>,
    finished: bool,
}

/// Builds what the guest needs, boots each kernel, prints the table, fails when a case failed or a
/// guest did not finish.
pub(crate) fn run(options: &Options, built: &Built) -> Result<()> {
    let cases = match options.bench {
        Some(vm_bench::VmBench::Monitor) => vm_bench::cases(),
        None => cases(),
    };
    let runs = run_all(options, built, &cases)?;
    print_table(&runs, &cases);
    if options.bench.is_some() {
        for run in &runs {
            vm_bench::collect(run.kernel.suite.label(), &run.console)?;
        }
    }
    let failed: Vec<String> = runs
        .iter()
        .flat_map(|r| {
            let label = r.kernel.suite.label();
            let mut out: Vec<String> = r
                .verdicts
                .iter()
                .filter(|v| v.rc != 0)
                .map(|v| format!("{label}: {} (rc {})", v.case, v.rc))
                .collect();
            if !r.finished {
                out.push(format!(
                    "{label}: the guest did not finish (console: {})",
                    r.console.display()
                ));
            }
            out
        })
        .collect();
    if !failed.is_empty() {
        bail!("VM cases failed: {}", failed.join("; "));
    }
    Ok(())
}

fn run_all(options: &Options, built: &Built, cases: &[GuestCase]) -> Result<Vec<KernelRun>> {
    setup::install(&PACKAGES)?;
    let busybox = vm_debian::busybox()?;
    let suites: Vec<Suite> = options.kernel.map_or(Suite::ALL.to_vec(), |s| vec![s]);
    let kernels = suites
        .into_iter()
        .map(vm_debian::kernel)
        .collect::<Result<Vec<_>>>()?;
    let out = cmd::workspace_root().join("target/vm");
    std::fs::create_dir_all(&out)?;
    let programs = match options.bench {
        Some(_) => vec![vm_bench::guest_program()?],
        None => guest_programs(built)?,
    };
    let image = out.join("initramfs.cpio");
    write_initramfs(&image, &busybox, built, &programs, cases)?;
    let accel = choose_accel(options.accel, &kernels[0], &busybox, &out)?;
    kernels
        .into_iter()
        .map(|kernel| boot(kernel, accel, &image, &out))
        .collect()
}

/// The host test binaries copied into the guest: (guest path, host path).
fn guest_programs(built: &Built) -> Result<Vec<(&'static str, PathBuf)>> {
    let watch = test_executable(built, &["--package", "certreload-e2e", "--test", "watch"])?;
    let agent_units = test_executable(built, &["--package", "certreload", "--lib"])?;
    let hook_choice = test_executable(
        built,
        &["--package", "certreload-e2e", "--test", "hook_choice"],
    )?;
    Ok(vec![
        ("/tests/watch", watch),
        ("/tests/hook_choice", hook_choice),
        ("/tests/agent-units", agent_units),
    ])
}

/// Builds a test target without running it and returns its executable (cargo's JSON messages).
fn test_executable(built: &Built, target: &[&str]) -> Result<PathBuf> {
    let mut cargo = cmd::cargo();
    built
        .cargo_env(&mut cargo)
        .args(["test", "--no-run", "--message-format=json"])
        .args(target)
        .current_dir(cmd::workspace_root())
        .stderr(Stdio::inherit());
    let out = cargo.output().context("running cargo test --no-run")?;
    let messages: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    // With --message-format=json the compiler's diagnostics are on stdout: show the errors.
    for m in messages.iter().filter(|m| m["message"]["level"] == "error") {
        eprint!("{}", m["message"]["rendered"].as_str().unwrap_or_default());
    }
    if !out.status.success() {
        bail!("cargo test --no-run {target:?} failed ({})", out.status);
    }
    messages
        .iter()
        .rev()
        .filter(|m| m["reason"] == "compiler-artifact" && m["profile"]["test"] == true)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .with_context(|| format!("cargo test --no-run {target:?} named no test executable"))
}

/// The cases, in the order the guest runs them.
fn cases() -> Vec<GuestCase> {
    vec![
        GuestCase {
            name: "vfs-hooks",
            what: "the fentry strategy (fentry/fexit on vfs_rename, fexit on vfs_unlink, vfs_link, vfs_symlink, vfs_truncate, fd_install; BPF-LSM on file_free_security) attaches and reports each watched operation once, names read via BTF offsets",
            command: format!(
                "CERTRELOAD_EXPECT_VFS_HOOKS=1 /tests/agent-units --nocapture --exact {VFS_HOOKS_TEST}"
            ),
        },
        GuestCase {
            name: "btf-offsets",
            what: "the rename hook's struct offsets resolve from this kernel's BTF",
            command: "/tests/agent-units monitor::ebpf::btf_offsets".to_owned(),
        },
        GuestCase {
            name: "hook-choice",
            what: "tests/tests/hook_choice.rs: --hook auto chooses fentry, and the log line and monitor stats say so and why",
            // The other two: one asks for --hook tracepoints (not what this case expects), the
            // other reads /status with curl, which the guest lacks.
            command: "CERTRELOAD_EXPECT_HOOK=fentry /tests/hook_choice --exact \
                      ebpf_auto_hook_starts_the_cheapest_strategy_and_says_why_in_the_log_and_stats"
                .to_owned(),
        },
        GuestCase {
            name: "watch",
            what: "tests/tests/watch.rs, eBPF (--hook auto must choose fentry) and inotify modes",
            // Two left out. falls_back_to_inotify_…: its setpriv options are util-linux's, busybox's
            // setpriv has fewer. ebpf::resync_catches_mmap_writes: it writes through the mapping
            // 100 ms after closing the fd and expects the agent to have handled the close by
            // then; under emulation the close is handled later, the agent reads the mapped bytes
            // and reports them as the close's change (correct content, source ebpf), so the
            // resync finds nothing new.
            command: "CERTRELOAD_EXPECT_HOOK=fentry /tests/watch --test-threads=2 \
                      --skip falls_back_to_inotify_with_one_warning \
                      --skip ebpf::resync_catches_mmap_writes"
                .to_owned(),
        },
    ]
}

/// `/init`: mounts, runs each case with its verdict line, powers off.
fn init_script(cases: &[GuestCase]) -> String {
    let mut script = String::from(
        "#!/bin/busybox sh\n\
         /bin/busybox --install -s /bin\n\
         export PATH=/bin:/sbin HOME=/root TMPDIR=/tmp CI=true CERTRELOAD_BIN=/bin/certreload\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sysfs /sys\n\
         mount -t devtmpfs devtmpfs /dev\n\
         mount -t tmpfs tmpfs /tmp\n\
         mount -t securityfs securityfs /sys/kernel/security\n\
         mount -t bpf bpf /sys/fs/bpf\n\
         mkdir -p /root\n\
         echo \"certreload-vm: kernel $(uname -r) lsm $(cat /sys/kernel/security/lsm)\"\n",
    );
    for case in cases {
        script.push_str(&format!(
            "echo 'certreload-vm: start {name}'\n{command}\necho \"{CASE_MARK}{name} rc=$?\"\n",
            name = case.name,
            command = case.command
        ));
    }
    script.push_str(&format!("echo '{DONE_MARK}'\npoweroff -f\n"));
    script
}

fn write_initramfs(
    image: &Path,
    busybox: &Path,
    built: &Built,
    programs: &[(&'static str, PathBuf)],
    cases: &[GuestCase],
) -> Result<()> {
    let mut archive = Initramfs::default();
    for dir in ["proc", "sys", "dev", "tmp", "root", "sbin"] {
        archive.dir(dir);
    }
    archive.file("bin/busybox", 0o755, &std::fs::read(busybox)?);
    archive.file("init", 0o755, init_script(cases).as_bytes());
    archive.executable(&built.agent, "/bin/certreload")?;
    for (guest, host) in programs {
        archive.executable(host, guest)?;
    }
    eprintln!(
        "xtask: vm: initramfs {} ({} MiB)",
        image.display(),
        archive.len() >> 20
    );
    archive.write(image)
}

/// KVM when asked, or when a minimal guest (busybox only) reaches `/init` with it; else TCG.
fn choose_accel(wanted: Accel, kernel: &GuestKernel, busybox: &Path, out: &Path) -> Result<Accel> {
    match wanted {
        Accel::Kvm | Accel::Tcg => return Ok(wanted),
        Accel::Auto => {}
    }
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        eprintln!("xtask: vm: /dev/kvm cannot be opened: software emulation (TCG)");
        return Ok(Accel::Tcg);
    }
    let probe_image = out.join("kvm-probe.cpio");
    let mut archive = Initramfs::default();
    archive.file("bin/busybox", 0o755, &std::fs::read(busybox)?);
    archive.file(
        "init",
        0o755,
        format!("#!/bin/busybox sh\necho '{DONE_MARK}'\n/bin/busybox poweroff -f\n").as_bytes(),
    );
    archive.write(&probe_image)?;
    let console = out.join("kvm-probe.log");
    let started = Instant::now();
    let finished = qemu(
        Accel::Kvm,
        kernel,
        &probe_image,
        &console,
        KVM_PROBE_DEADLINE,
    )?;
    let log = std::fs::read_to_string(&console).unwrap_or_default();
    if finished && log.contains(DONE_MARK) {
        eprintln!(
            "xtask: vm: KVM works (a minimal guest ran in {:.1} s)",
            started.elapsed().as_secs_f64()
        );
        return Ok(Accel::Kvm);
    }
    let stderr = std::fs::read_to_string(console.with_extension("stderr")).unwrap_or_default();
    let first = stderr
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no message");
    eprintln!(
        "xtask: vm: /dev/kvm opens but a minimal guest did not reach /init within {KVM_PROBE_DEADLINE:?} \
         under KVM (qemu: {first}; nested virtualisation on this host): software emulation (TCG)"
    );
    Ok(Accel::Tcg)
}

/// Boots `kernel` with the cases' initramfs and collects the verdicts.
fn boot(kernel: GuestKernel, accel: Accel, image: &Path, out: &Path) -> Result<KernelRun> {
    let console = out.join(format!("{}.log", kernel.suite.label()));
    let started = Instant::now();
    eprintln!(
        "xtask: vm: booting {} {} ({}); console {}",
        kernel.package,
        kernel.version,
        accel_name(accel),
        console.display()
    );
    let finished = qemu(accel, &kernel, image, &console, RUN_DEADLINE)?;
    let log = std::fs::read_to_string(&console)
        .with_context(|| format!("reading the console {}", console.display()))?;
    Ok(KernelRun {
        elapsed: started.elapsed(),
        accel: accel_name(accel),
        finished: finished && log.contains(DONE_MARK),
        verdicts: verdicts(&log),
        console,
        kernel,
    })
}

fn accel_name(accel: Accel) -> &'static str {
    match accel {
        Accel::Kvm => "KVM",
        Accel::Tcg | Accel::Auto => "TCG",
    }
}

/// Runs qemu until the guest powers off (true) or `deadline` passes (false: killed). The serial
/// console goes to `console`, qemu's own messages to `console` with the extension `stderr`.
fn qemu(
    accel: Accel,
    kernel: &GuestKernel,
    image: &Path,
    console: &Path,
    deadline: Duration,
) -> Result<bool> {
    let stderr = std::fs::File::create(console.with_extension("stderr"))?;
    let mut command = Command::new("qemu-system-x86_64");
    match accel {
        Accel::Kvm => command.args(["-accel", "kvm", "-cpu", "host"]),
        Accel::Tcg | Accel::Auto => command.args(["-accel", "tcg", "-cpu", "max"]),
    };
    command
        .args(["-m", &GUEST_MEMORY_MIB.to_string(), "-smp", "2"])
        .args(["-display", "none", "-monitor", "none", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(image)
        .args(["-append", CMDLINE])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    let mut child = command.spawn().context("starting qemu-system-x86_64")?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status.success());
        }
        if started.elapsed() > deadline || kvm_failed(accel, console) {
            // A hung guest: stop it; an error means it exited meanwhile, which the caller sees
            // as not finished all the same.
            child.kill().ok();
            child.wait().ok();
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// True once qemu reported that KVM cannot run the guest (it then pauses the guest for good
/// instead of exiting): nested virtualisation on some hosts.
fn kvm_failed(accel: Accel, console: &Path) -> bool {
    accel == Accel::Kvm
        && std::fs::read_to_string(console.with_extension("stderr"))
            .is_ok_and(|e| e.contains("KVM internal error"))
}

/// The cases' verdict lines from a console log.
fn verdicts(log: &str) -> Vec<Verdict> {
    let mut summary: Option<String> = None;
    let mut out = Vec::new();
    for line in log.lines().map(|l| l.trim_end_matches('\r')) {
        if line.starts_with("test result: ") {
            summary = Some(line.to_owned());
        }
        let Some(rest) = line.strip_prefix(CASE_MARK) else {
            continue;
        };
        let Some((case, rc)) = rest.rsplit_once(" rc=") else {
            continue;
        };
        out.push(Verdict {
            case: case.to_owned(),
            rc: rc.trim().parse().unwrap_or(-1),
            summary: summary.take(),
        });
    }
    out
}

fn print_table(runs: &[KernelRun], cases: &[GuestCase]) {
    println!("\nVM cases ({})", chrono_free_date());
    println!("| kernel | package, version | accel | case | result | guest run |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for run in runs {
        let mut rows: Vec<(String, String)> = run
            .verdicts
            .iter()
            .map(|v| {
                let result = match (&v.summary, v.rc) {
                    (Some(s), _) => s.trim_start_matches("test result: ").to_owned(),
                    (None, 0) => "ok".to_owned(),
                    (None, rc) => format!("FAILED (rc {rc})"),
                };
                (v.case.clone(), result)
            })
            .collect();
        if !run.finished {
            rows.push((
                "(guest)".to_owned(),
                format!("did not finish: {}", run.console.display()),
            ));
        }
        for (case, result) in rows {
            let what = cases.iter().find(|c| c.name == case).map_or("", |c| c.what);
            println!(
                "| {} | {} {} | {} | {case}: {what} | {result} | {:.0} s |",
                run.kernel.suite.label(),
                run.kernel.package,
                run.kernel.version,
                run.accel,
                run.elapsed.as_secs_f64()
            );
        }
    }
}

/// Today's date (UTC) from `date`, for the table heading.
fn chrono_free_date() -> String {
    cmd::output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_pair_each_case_with_its_libtest_summary() {
        let log = "certreload-vm: start watch\r\n\
                   test ebpf::cp_over_the_file ... ok\r\n\
                   test result: ok. 23 passed; 0 failed; 0 ignored\r\n\
                   certreload-vm: case watch rc=0\r\n\
                   certreload-vm: case probe rc=101\r\n";
        let v = verdicts(log);
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].case, "watch");
        assert_eq!(v[0].rc, 0);
        assert_eq!(
            v[0].summary.as_deref(),
            Some("test result: ok. 23 passed; 0 failed; 0 ignored")
        );
        assert_eq!(v[1].rc, 101);
        assert!(v[1].summary.is_none());
    }

    #[test]
    fn init_script_ends_every_case_with_its_verdict_and_powers_off() {
        let script = init_script(&cases());
        assert!(script.starts_with("#!/bin/busybox sh\n"));
        assert!(script.contains("echo \"certreload-vm: case watch rc=$?\""));
        assert!(script.trim_end().ends_with("poweroff -f"));
    }
}
