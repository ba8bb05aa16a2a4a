//! `cargo xtask vm --bench monitor`: `bench monitor` inside the Debian guests, where the kernel
//! allows the fentry/BPF-LSM strategy (these hosts refuse it): no agent, fentry, syscall
//! tracepoints and inotify, in the same guest, interleaved. The guest runs this xtask binary
//! (`xtask vm-guest-bench`, hidden) against the agent at `/bin/certreload`, prints its tables on
//! the serial console and then its CSVs between marks, which the host writes under
//! `target/bench/monitor-vm/<kernel>/`. Under software emulation (TCG) a syscall costs what qemu
//! makes it cost, so only the ratios to "no agent" in the same guest mean something.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::{cmd, vm::GuestCase};

/// What `--bench` runs in the guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum VmBench {
    /// `bench monitor`: per-file-operation and per-getppid overhead of each hook strategy against
    /// no agent, and each program's run time from the kernel's BPF statistics.
    Monitor,
}

/// File operations per overhead sample: ~100 µs each under TCG, so a round of four
/// configurations takes under a minute.
const OPS: u64 = 20_000;
/// getppid() calls per sample.
const SYSCALLS: u64 = 1_000_000;
/// Interleaved rounds (the median is reported).
const ROUNDS: usize = 3;

/// The name of the guest's case, in the console marks.
const CASE: &str = "bench-monitor";
/// Console marks around each CSV the guest prints.
const CSV_BEGIN: &str = "certreload-csv-begin ";
const CSV_END: &str = "certreload-csv-end";

/// The guest's one case: the bench, then every CSV it wrote, between marks; the case's status
/// is the bench's.
pub(crate) fn cases() -> Vec<GuestCase> {
    let csv_dir = guest_out_dir();
    vec![GuestCase {
        name: CASE,
        what: "bench monitor: no agent, fentry, tracepoints and inotify in the same guest (ratios; TCG distorts absolute figures)",
        command: format!(
            "/bin/xtask vm-guest-bench --ops {OPS} --syscalls {SYSCALLS} --rounds {ROUNDS}; rc=$?\n\
             for f in {dir}/*.csv; do echo \"{CSV_BEGIN}$(basename $f)\"; cat $f; echo '{CSV_END}'; done\n\
             (exit $rc)",
            dir = csv_dir.display()
        ),
    }]
}

/// Where the guest's `bench monitor` writes its CSVs (the same path as on the host: the xtask
/// binary finds the workspace where it was built).
fn guest_out_dir() -> PathBuf {
    cmd::workspace_root().join("target/bench/monitor-vm")
}

/// The xtask binary itself, for the guest to run: (guest path, host path). Copied from
/// `/proc/self/exe` into `target/vm/`: another cargo run may replace target/debug/xtask meanwhile
/// (its path then reads "(deleted)"), while the running image stays readable there.
pub(crate) fn guest_program() -> Result<(&'static str, PathBuf)> {
    let copy = cmd::workspace_root().join("target/vm/xtask-guest");
    std::fs::copy("/proc/self/exe", &copy)
        .with_context(|| format!("copying the running xtask binary to {}", copy.display()))?;
    Ok(("/bin/xtask", copy))
}

/// From one guest's console: prints the bench's tables and writes its CSVs under
/// `target/bench/monitor-vm/<label>/`.
pub(crate) fn collect(label: &str, console: &Path) -> Result<()> {
    let log = std::fs::read_to_string(console)
        .with_context(|| format!("reading the console {}", console.display()))?;
    let out = guest_out_dir().join(label);
    std::fs::create_dir_all(&out).with_context(|| format!("create {}", out.display()))?;
    println!(
        "\n{label}: bench monitor inside the guest (ratios to no agent are what count under TCG)"
    );
    let mut csv: Option<(String, String)> = None;
    let mut in_case = false;
    for line in log.lines().map(|l| l.trim_end_matches('\r')) {
        if let Some((name, text)) = csv.as_mut() {
            if line == CSV_END {
                let path = out.join(&*name);
                std::fs::write(&path, &*text)
                    .with_context(|| format!("write {}", path.display()))?;
                println!("  {}", path.display());
                csv = None;
            } else {
                text.push_str(line);
                text.push('\n');
            }
        } else if let Some(name) = line.strip_prefix(CSV_BEGIN) {
            in_case = false;
            csv = Some((name.to_owned(), String::new()));
        } else if line == format!("certreload-vm: start {CASE}") {
            in_case = true;
        } else if in_case && !line.starts_with("xtask: ") {
            println!("{line}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collect_prints_the_tables_and_writes_each_csv() {
        let label = format!("unit-test-{}", std::process::id());
        let console = std::env::temp_dir().join(format!("certreload-{label}.log"));
        std::fs::write(
            &console,
            "certreload-vm: start bench-monitor\r\nconfiguration  file op ns\r\n\
             certreload-csv-begin overhead.csv\r\nround,configuration\r\n0,no agent\r\n\
             certreload-csv-end\r\ncertreload-vm: case bench-monitor rc=0\r\n",
        )
        .expect("write");
        collect(&label, &console).expect("collect");
        std::fs::remove_file(&console).ok();
        let written = guest_out_dir().join(&label).join("overhead.csv");
        let text = std::fs::read_to_string(&written).expect("the CSV was written");
        std::fs::remove_dir_all(guest_out_dir().join(&label)).ok();
        assert_eq!(text, "round,configuration\n0,no agent\n");
    }
}
