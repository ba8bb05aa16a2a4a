//! `cargo xtask bench monitor`: detection latency, hook overhead and idle memory, with "no agent"
//! and the inotify fallback measured in the same run, configurations interleaved round by round;
//! with `--baseline BIN`, an older agent's tracepoint strategy beside this one (before/after in one
//! run). Every sample goes to `target/bench/monitor/*.csv`, the latency distributions to SVG.

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    build::Built,
    report::{BenchOut, Chart, Samples},
};

/// Which benchmark to run.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Which {
    /// The change monitor: latency, per-syscall overhead, idle RSS.
    Monitor {
        /// File operations (open/write/close/rename) per overhead sample.
        #[arg(long, default_value_t = 200_000)]
        ops: u64,
        /// getppid() calls per `perf bench syscall basic` sample.
        #[arg(long, default_value_t = 2_000_000)]
        syscalls: u64,
        /// Interleaved rounds (the median is reported).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Renames for the latency measurement.
        #[arg(long, default_value_t = 1000)]
        renames: usize,
        /// Another certreload binary (e.g. built from the commit before a change) whose
        /// tracepoint strategy is measured beside this build's, interleaved: before/after in one run.
        #[arg(long, value_name = "BIN")]
        baseline: Option<PathBuf>,
    },
    /// The reload pipeline: Secret-volume rotation (`..data` swap) to accepted generation.
    Gate {
        /// Rotations measured.
        #[arg(long, default_value_t = 200)]
        rotations: usize,
    },
    /// The TLS front against nginx: handshake rate (also while rotating), proxied throughput, RSS.
    Tls(crate::tls_bench::Params),
    /// ServiceAccount key propagation on the real test node: key change on disk to the last pod's
    /// token with the new key id, certreload against stock Kubernetes.
    Propagation(crate::propagation_bench::Params),
    /// Cost curves as the work grows: watched paths, bundles, live TLS connections through one
    /// listener, with the agent's RSS and CPU.
    Scale(crate::scale_bench::Params),
}

/// Runs the selected benchmark and prints its tables.
pub(crate) fn run(which: Which, built: &Built) -> Result<()> {
    match which {
        Which::Monitor {
            ops,
            syscalls,
            rounds,
            renames,
            baseline,
        } => monitor(
            built,
            &MonitorParams {
                ops,
                syscalls,
                rounds,
                renames,
                baseline,
                getppid_in_process: false,
            },
        ),
        Which::Gate { rotations } => crate::gate_bench::run(&built.agent, rotations),
        Which::Tls(params) => {
            crate::setup::install(&crate::setup::TLS_BENCH_PACKAGES)?;
            crate::tls_bench::run(&built.agent, &params)
        }
        Which::Propagation(params) => crate::propagation_bench::run(built, &params),
        Which::Scale(params) => crate::scale_bench::run(&built.agent, &params),
    }
}

/// What `bench monitor` measures, as given on the command line.
struct MonitorParams {
    ops: u64,
    syscalls: u64,
    rounds: usize,
    renames: usize,
    baseline: Option<PathBuf>,
    /// Time getppid() in this process instead of with `perf bench syscall basic` (the VM guests
    /// have no perf).
    getppid_in_process: bool,
}

#[derive(Clone, Copy, PartialEq)]
enum Config {
    NoAgent,
    Floor,
    EbpfTracepoints,
    /// The `--baseline` binary's tracepoint strategy.
    Baseline,
    EbpfRaw,
    Inotify,
    /// fentry/fexit and BPF-LSM programs (only where the kernel allows them: the VM guests).
    EbpfFentry,
}

impl Config {
    /// The configurations of a run: the baseline only when one is given.
    fn all(baseline: bool) -> Vec<Config> {
        [
            Config::NoAgent,
            Config::Floor,
            Config::EbpfTracepoints,
            Config::Baseline,
            Config::EbpfRaw,
            Config::Inotify,
        ]
        .into_iter()
        .filter(|c| baseline || *c != Config::Baseline)
        .collect()
    }

    fn label(self) -> &'static str {
        match self {
            Config::NoAgent => "no agent",
            Config::Floor => "floor: 1 empty syscall tracepoint",
            Config::EbpfTracepoints => "eBPF, sys_enter_* tracepoints",
            Config::Baseline => "baseline binary, tracepoints",
            Config::EbpfRaw => "eBPF, raw sys_enter/sys_exit",
            Config::Inotify => "inotify fallback",
            Config::EbpfFentry => "eBPF, fentry/fexit + BPF-LSM",
        }
    }

    fn args(self) -> Option<[&'static str; 4]> {
        match self {
            Config::NoAgent => None,
            Config::Floor => Some(["--mode", "ebpf", "--hook", "noop"]),
            Config::EbpfTracepoints | Config::Baseline => {
                Some(["--mode", "ebpf", "--hook", "tracepoints"])
            }
            Config::EbpfRaw => Some(["--mode", "ebpf", "--hook", "raw-syscalls"]),
            Config::Inotify => Some(["--mode", "inotify", "--hook", "tracepoints"]),
            Config::EbpfFentry => Some(["--mode", "ebpf", "--hook", "fentry"]),
        }
    }

    /// The agent binary this configuration runs.
    fn bin<'a>(self, built: &'a Path, baseline: Option<&'a Path>) -> &'a Path {
        match (self, baseline) {
            (Config::Baseline, Some(b)) => b,
            _ => built,
        }
    }
}

/// A running `certreload watch` with its stdout, ready.
struct Agent {
    child: Child,
    stdout: BufReader<ChildStdout>,
    stderr: mpsc::Receiver<String>,
}

impl Agent {
    fn start(bin: &Path, args: &[&str], paths: &[PathBuf]) -> Result<Agent> {
        let mut child = Command::new(bin)
            .arg("watch")
            .args(args)
            .args(["--output", "json", "--resync", "3600"])
            .args(paths)
            .env("CERTRELOAD_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stderr = child.stderr.take().context("stderr")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // Keep draining after the reader is gone, so the agent never blocks on a full pipe.
                tx.send(line).ok();
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.contains("monitor ready") => break,
                Ok(_) => {}
                Err(_) => {
                    // It may have exited already; the error below is what matters.
                    child.kill().ok();
                    bail!("certreload {args:?} did not become ready (run as root with the eBPF object built)");
                }
            }
        }
        let stdout = BufReader::new(child.stdout.take().context("stdout")?);
        Ok(Agent {
            child,
            stdout,
            stderr: rx,
        })
    }

    fn rss_kib(&self) -> u64 {
        let status =
            fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// Stops the agent and returns its final `monitor_stats`.
    fn stop(mut self) -> Option<serde_json::Value> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        // Reaps it; the result is its monitor_stats below, not its exit status.
        self.child.wait().ok();
        self.stderr
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
            .find_map(|v| v.get("monitor_stats").cloned())
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Measures the monitor in each configuration: how fast a replacement is seen, what the hooks
/// cost unrelated file operations and syscalls, and what each program costs.
fn monitor(built: &Built, params: &MonitorParams) -> Result<()> {
    let scratch = Scratch::create()?;
    let out = BenchOut::new("monitor")?;
    let bin = &built.agent;
    let baseline = params.baseline.as_deref();
    println!(
        "certreload bench monitor: {}",
        crate::scale_bench::machine()
    );
    if let Some(b) = baseline {
        println!("baseline binary: {}", b.display());
    }
    detection_latency(bin, &scratch, params.renames, &out)?;
    let configs = Config::all(baseline.is_some());
    let overhead = Overhead::measure(bin, baseline, &configs, &scratch, params)?;
    overhead.write_csv(&out)?;
    overhead.print(params);
    let mut costs = Vec::new();
    for (name, b) in
        std::iter::once(("this build", bin.as_path())).chain(baseline.map(|b| ("baseline", b)))
    {
        costs.extend(hook_costs(
            name,
            b,
            "tracepoints",
            &scratch.paths,
            &scratch.noise_dir,
            params.ops,
        )?);
    }
    out.csv("hooks", &["binary", "program", "runs", "run_ns"], &costs)?;
    println!(
        "\nsamples (CSV) and distributions (SVG): {}",
        out.dir().display()
    );
    // Best effort: the results are printed; a scratch directory left behind changes none.
    fs::remove_dir_all(&scratch.dir).ok();
    Ok(())
}

/// The files the benchmark works on: 100 watched certificates, and a directory of unrelated
/// files whose operations the hooks must let through cheaply.
struct Scratch {
    dir: PathBuf,
    watched_dir: PathBuf,
    noise_dir: PathBuf,
    paths: Vec<PathBuf>,
}

impl Scratch {
    /// Creates them, on tmpfs when available: the figures then show CPU cost of the hooks, not
    /// disk latency.
    fn create() -> Result<Self> {
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("certreload-bench-{}", std::process::id()));
        let watched_dir = dir.join("pki");
        let noise_dir = dir.join("noise");
        fs::create_dir_all(&watched_dir)?;
        fs::create_dir_all(&noise_dir)?;
        let paths: Vec<PathBuf> = (0..100)
            .map(|i| watched_dir.join(format!("cert-{i}.pem")))
            .collect();
        for p in &paths {
            fs::write(p, b"-----BEGIN CERTIFICATE-----\n")?;
        }
        Ok(Scratch {
            dir,
            watched_dir,
            noise_dir,
            paths,
        })
    }
}

/// Detection latency per monitor mode: from the rename's return to the change line a client
/// reads, with what the agent itself reports beside it; every sample in `detection.csv`, their
/// distributions in `detection.svg`.
fn detection_latency(bin: &Path, scratch: &Scratch, renames: usize, out: &BenchOut) -> Result<()> {
    println!("\nDetection latency: {renames} replacements by rename(2); syscall return -> change line read by a client");
    println!(
        "{:<34} {:>9} {:>9} {:>9} {:>22}",
        "mode", "p50 us", "p99 us", "max us", "agent-reported p50 us"
    );
    let (mut rows, mut distributions) = (Vec::new(), Vec::new());
    for config in [Config::EbpfTracepoints, Config::EbpfRaw, Config::Inotify] {
        let (client, mut reported) = replacements(bin, config, scratch, renames)?;
        rows.extend(client.iter().enumerate().map(|(i, us)| {
            let agent = reported
                .get(i)
                .map(|r| format!("{r:.0}"))
                .unwrap_or_default();
            vec![
                config.label().to_string(),
                i.to_string(),
                format!("{us:.1}"),
                agent,
            ]
        }));
        distributions.push(Samples {
            name: config.label().to_string(),
            values: client.clone(),
        });
        let mut client = client;
        client.sort_by(f64::total_cmp);
        let agent_p50 = if reported.is_empty() {
            "n/a".to_string()
        } else {
            format!("{:.0}", median(&mut reported))
        };
        println!(
            "{:<34} {:>9.0} {:>9.0} {:>9.0} {:>22}",
            config.label(),
            percentile(&client, 0.5),
            percentile(&client, 0.99),
            client[client.len() - 1],
            agent_p50
        );
    }
    out.csv(
        "detection",
        &["mode", "sample", "client_us", "agent_reported_us"],
        &rows,
    )?;
    let chart = Chart {
        title: format!("Detection latency, {renames} replacements by rename(2)"),
        x_label: "syscall return -> change line read by a client, us (log)".into(),
        y_label: "% of replacements at or below".into(),
        log_x: true,
        log_y: false,
    };
    out.distribution("detection", &chart, &distributions)?;
    Ok(())
}

/// `renames` replacements of one watched file under `config`: the latencies the client saw
/// (in order, µs) and those the agent reported.
fn replacements(
    bin: &Path,
    config: Config,
    scratch: &Scratch,
    renames: usize,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let mut agent = Agent::start(
        bin,
        &config.args().expect("agent config"),
        &scratch.paths[..1],
    )?;
    let (mut client, mut reported) = (Vec::with_capacity(renames), Vec::new());
    for i in 0..renames {
        let tmp = scratch.watched_dir.join(format!(".tmp-{i}"));
        fs::write(&tmp, format!("rotation {i}\n"))?;
        fs::rename(&tmp, &scratch.paths[0])?;
        let t0 = Instant::now();
        let line = read_change(&mut agent.stdout)?;
        client.push(t0.elapsed().as_secs_f64() * 1e6);
        if let Some(l) = line.get("latency_us").and_then(|v| v.as_f64()) {
            reported.push(l);
        }
    }
    agent.stop();
    Ok((client, reported))
}

/// Samples per configuration (indexed as `configs`): ns per file operation, ns per getppid, and
/// the agent's idle RSS in KiB (none without an agent).
struct Overhead {
    configs: Vec<Config>,
    file_ns: Vec<Vec<f64>>,
    sys_ns: Vec<Vec<f64>>,
    rss: Vec<Vec<f64>>,
}

impl Overhead {
    /// Overhead, interleaved: every round runs every configuration, in a rotated order so none
    /// is always first; the VM this runs on is noisy, so both the median and the best sample are
    /// shown.
    fn measure(
        bin: &Path,
        baseline: Option<&Path>,
        configs: &[Config],
        scratch: &Scratch,
        params: &MonitorParams,
    ) -> Result<Self> {
        let n = configs.len();
        let mut samples = Overhead {
            configs: configs.to_vec(),
            file_ns: vec![Vec::new(); n],
            sys_ns: vec![Vec::new(); n],
            rss: vec![Vec::new(); n],
        };
        let rounds = params.rounds;
        for round in 0..rounds {
            eprintln!("xtask: overhead round {}/{rounds}", round + 1);
            for k in 0..n {
                let c = (k + round) % n;
                let config = configs[c];
                let agent = match config.args() {
                    Some(args) => Some(Agent::start(
                        config.bin(bin, baseline),
                        &args,
                        &scratch.paths,
                    )?),
                    None => None,
                };
                if let Some(a) = &agent {
                    std::thread::sleep(Duration::from_millis(300));
                    samples.rss[c].push(a.rss_kib() as f64);
                }
                samples.file_ns[c].push(file_ops(&scratch.noise_dir, params.ops)?);
                samples.sys_ns[c].push(if params.getppid_in_process {
                    getppid_ns(params.syscalls)
                } else {
                    perf_syscall(params.syscalls)?
                });
                if let Some(a) = agent {
                    a.stop();
                }
            }
        }
        Ok(samples)
    }

    /// `overhead.csv`: every sample, by round and configuration.
    fn write_csv(&self, out: &BenchOut) -> Result<()> {
        let mut rows = Vec::new();
        for (c, config) in self.configs.iter().enumerate() {
            for (round, (f, s)) in self.file_ns[c].iter().zip(&self.sys_ns[c]).enumerate() {
                let rss = self.rss[c].get(round).map(|r| format!("{r:.0}"));
                rows.push(vec![
                    round.to_string(),
                    config.label().to_string(),
                    format!("{f:.1}"),
                    format!("{s:.2}"),
                    rss.unwrap_or_default(),
                ]);
            }
        }
        let header = [
            "round",
            "configuration",
            "file_op_ns",
            "getppid_ns",
            "idle_rss_kib",
        ];
        out.csv("overhead", &header, &rows)?;
        Ok(())
    }

    /// The overhead table: each configuration's median (best), its ratio to the first
    /// configuration (the baseline without an agent), and for file operations its ratio to the
    /// floor (one empty syscall tracepoint: what any syscall tracepoint costs).
    fn print(mut self, params: &MonitorParams) {
        println!(
            "\nHook overhead: {} x (open O_CREAT|O_TRUNC, write 64 B, close, rename) on unrelated files, and \
             {} ({} getppid); {} interleaved rounds, median (best)",
            params.ops,
            if params.getppid_in_process {
                "getppid() timed in-process"
            } else {
                "`perf bench syscall basic`"
            },
            params.syscalls,
            params.rounds
        );
        println!(
            "{:<36} {:>18} {:>16} {:>9} {:>18} {:>16} {:>10}",
            "configuration", "file op ns", "ratio", "vs floor", "getppid ns", "ratio", "idle RSS"
        );
        let stats = |v: &mut Vec<f64>| (median(v), v.iter().copied().fold(f64::INFINITY, f64::min));
        let (base_file, base_file_min) = stats(&mut self.file_ns[0]);
        let (base_sys, base_sys_min) = stats(&mut self.sys_ns[0]);
        let floor = self.configs.iter().position(|c| *c == Config::Floor);
        let floor_file = floor.map(|i| median(&mut self.file_ns[i]));
        for (c, config) in self.configs.iter().enumerate() {
            let (f, f_min) = stats(&mut self.file_ns[c]);
            let (s, s_min) = stats(&mut self.sys_ns[c]);
            let r = if self.rss[c].is_empty() {
                "-".to_string()
            } else {
                format!("{:.1} MiB", median(&mut self.rss[c]) / 1024.0)
            };
            let vs_floor = floor_file.map_or("-".into(), |fl| format!("{:.3}x", f / fl));
            println!(
                "{:<36} {:>18} {:>16} {:>9} {:>18} {:>16} {:>10}",
                config.label(),
                format!("{f:.0} ({f_min:.0})"),
                format!("{:.3}x ({:.3}x)", f / base_file, f_min / base_file_min),
                vs_floor,
                format!("{s:.1} ({s_min:.1})"),
                format!("{:.3}x ({:.3}x)", s / base_sys, s_min / base_sys_min),
                r
            );
        }
    }
}

/// One profiled pass of the file workload under the `hook` strategy of `bin` (`name`: this build
/// or the baseline): what each program costs. Returns the CSV rows.
fn hook_costs(
    name: &str,
    bin: &Path,
    hook: &str,
    paths: &[PathBuf],
    noise_dir: &Path,
    ops: u64,
) -> Result<Vec<Vec<String>>> {
    let args = ["--mode", "ebpf", "--hook", hook, "--profile-hooks"];
    let agent = Agent::start(bin, &args, paths)?;
    file_ops(noise_dir, ops)?;
    let stats = agent
        .stop()
        .context("the profiled agent printed no monitor_stats")?;
    println!("\nPer-hook cost, {name} ({hook} strategy, kernel BPF run-time statistics on, {ops} file ops; statistics add their own clock reads)");
    println!(
        "{:<24} {:>12} {:>10} {:>14}",
        "program", "runs", "ns/run", "ns per file op"
    );
    let mut programs = stats["kernel"]["programs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    programs.sort_by_key(|p| std::cmp::Reverse(p["run_ns"].as_u64().unwrap_or(0)));
    let mut rows = Vec::new();
    let (mut total_runs, mut total_ns) = (0, 0);
    for p in programs {
        let program = p["name"].as_str().unwrap_or("?");
        let (runs, ns) = (
            p["runs"].as_u64().unwrap_or(0),
            p["run_ns"].as_u64().unwrap_or(0),
        );
        (total_runs, total_ns) = (total_runs + runs, total_ns + ns);
        println!(
            "{program:<24} {runs:>12} {:>10.1} {:>14.1}",
            ns as f64 / runs.max(1) as f64,
            ns as f64 / ops as f64
        );
        rows.push(vec![
            name.into(),
            program.into(),
            runs.to_string(),
            ns.to_string(),
        ]);
    }
    println!(
        "{:<24} {total_runs:>12} {:>10} {:>14.1}",
        "all programs",
        "",
        total_ns as f64 / ops as f64
    );
    Ok(rows)
}

/// Reads stdout lines until a change record arrives.
fn read_change(stdout: &mut BufReader<ChildStdout>) -> Result<serde_json::Value> {
    let mut line = String::new();
    loop {
        line.clear();
        if stdout.read_line(&mut line)? == 0 {
            bail!("the agent exited during the latency benchmark");
        }
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
            if v.get("path").is_some() {
                return Ok(v);
            }
        }
    }
}

/// ns per (open, write, close, rename) on files no agent watches.
fn file_ops(dir: &Path, ops: u64) -> Result<f64> {
    let payload = [b'x'; 64];
    let names: Vec<(PathBuf, PathBuf)> = (0..64)
        .map(|i| {
            (
                dir.join(format!("noise-{i}.tmp")),
                dir.join(format!("noise-{i}.dat")),
            )
        })
        .collect();
    let start = Instant::now();
    for i in 0..ops {
        let (tmp, dst) = &names[(i % 64) as usize];
        let mut f = fs::File::create(tmp)?;
        f.write_all(&payload)?;
        drop(f);
        fs::rename(tmp, dst)?;
    }
    Ok(start.elapsed().as_nanos() as f64 / ops as f64)
}

/// ns per getppid() timed in this process: what `perf bench syscall basic` measures, for where
/// perf is absent (the VM guests).
fn getppid_ns(loops: u64) -> f64 {
    let start = Instant::now();
    for _ in 0..loops {
        // SAFETY: getppid(2) takes nothing and cannot fail.
        std::hint::black_box(unsafe { libc::getppid() });
    }
    start.elapsed().as_nanos() as f64 / loops.max(1) as f64
}

/// `bench monitor` inside a `cargo xtask vm --bench monitor` guest: no agent, then each strategy
/// the kernel allows there (fentry, tracepoints, inotify), interleaved round by round, with the
/// per-hook cost of both eBPF strategies. Under software emulation the absolute figures are not
/// a machine's, so the table's ratios to "no agent" in the same guest are what counts. Writes the
/// CSVs under `target/bench/monitor-vm/` in the guest, which the host reads back.
pub(crate) fn guest_monitor(agent: &Path, ops: u64, syscalls: u64, rounds: usize) -> Result<()> {
    let params = MonitorParams {
        ops,
        syscalls,
        rounds,
        renames: 0,
        baseline: None,
        getppid_in_process: true,
    };
    let scratch = Scratch::create()?;
    let out = BenchOut::new("monitor-vm")?;
    println!(
        "certreload bench monitor (VM guest): {}",
        crate::scale_bench::machine()
    );
    let configs = [
        Config::NoAgent,
        Config::EbpfFentry,
        Config::EbpfTracepoints,
        Config::Inotify,
    ];
    let overhead = Overhead::measure(agent, None, &configs, &scratch, &params)?;
    overhead.write_csv(&out)?;
    overhead.print(&params);
    let mut costs = Vec::new();
    for hook in ["fentry", "tracepoints"] {
        costs.extend(hook_costs(
            hook,
            agent,
            hook,
            &scratch.paths,
            &scratch.noise_dir,
            params.ops,
        )?);
    }
    out.csv("hooks", &["binary", "program", "runs", "run_ns"], &costs)?;
    // Best effort, as in `monitor`.
    fs::remove_dir_all(&scratch.dir).ok();
    Ok(())
}

/// ns per getppid() from `perf bench syscall basic`.
fn perf_syscall(loops: u64) -> Result<f64> {
    let out = Command::new("perf")
        .args(["bench", "syscall", "basic", "-l", &loops.to_string()])
        .output()
        .context("perf (Debian linux-perf) is needed: `cargo xtask setup` installs it")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let usecs = text
        .lines()
        .find(|l| l.contains("usecs/op"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .with_context(|| format!("unexpected perf output: {text}"))?;
    Ok(usecs * 1000.0)
}
