//! `cargo xtask bench scale`: how the agent's costs grow with its work, each curve measured on a
//! fresh release agent per input size, with the agent's RSS and CPU:
//!
//! - watched paths (10 → 10,000): kernel map sizes, start-up time, CPU per resync, detection p99
//!   ([`crate::scale_files`]);
//! - bundles (1 → 1,000): start-up validation time, RSS, rotation latency p99 of one bundle while
//!   the others are idle ([`crate::scale_files`]);
//! - live idle TLS connections through one listener (1,000 → 50,000): RSS per connection, time and
//!   CPU to publish a rotation, drain time after `stale_grace`, handshake p99 during the drain
//!   ([`crate::scale_conns`]);
//! - fds held by a writer (10 → 10,000): detection of its in-place write, of a rename right after
//!   it, agent CPU per write ([`crate::scale_writers`]).
//!
//! "Linear or better" is read off the growth exponent between two sizes: log(cost ratio) /
//! log(input ratio), 1.0 linear, 0 constant. Every sample goes to `target/bench/scale/*.csv`, the
//! curves to `*.svg` (through [`crate::report`]).

use std::{
    fs,
    io::BufRead,
    path::{Path, PathBuf},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use crate::{
    report::{BenchOut, Chart, Series},
    secret_volume::SecretVolume,
};

/// What to measure and how large.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Params {
    /// Small sizes (paths 10..1,000, bundles 1..100, connections 500..5,000) and fewer samples:
    /// the whole run in about a minute, for development.
    #[arg(long)]
    pub quick: bool,
    /// Only these curves (paths, bundles, connections, writer-fds); all of them when omitted.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Rotations timed per size (the p99 of rotation latency, the median of publish time).
    #[arg(long, default_value_t = 30)]
    pub rotations: usize,
    /// Measure this agent binary instead of the release build (a before/after comparison: keep
    /// a copy of the binary before the change); its files go to target/bench/scale-<file name>.
    #[arg(long)]
    pub agent: Option<PathBuf>,
}

impl Params {
    fn wants(&self, curve: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|c| c == curve)
    }

    /// Rotations per size: fewer with `--quick`.
    pub(crate) fn rotations(&self) -> usize {
        if self.quick {
            self.rotations.min(10)
        } else {
            self.rotations
        }
    }
}

/// Runs the selected curves, prints their tables and writes the CSV and SVG files.
pub(crate) fn run(built: &Path, params: &Params) -> Result<()> {
    crate::scale_conns::raise_nofile_limit();
    let bin = params.agent.as_deref().unwrap_or(built);
    // Another binary's figures go beside the release build's, not over them.
    let name = match (&params.agent, bin.file_name()) {
        (Some(_), Some(file)) => format!("scale-{}", file.to_string_lossy()),
        _ => "scale".to_string(),
    };
    let out = BenchOut::new(&name)?;
    println!(
        "certreload bench scale: {}, agent {}",
        machine(),
        bin.display()
    );
    if params.wants("paths") {
        let sizes: &[usize] = if params.quick {
            &[10, 100, 1000]
        } else {
            &[10, 100, 1000, 10_000]
        };
        crate::scale_files::paths(bin, sizes, params, &out)?;
    }
    if params.wants("bundles") {
        let sizes: &[usize] = if params.quick {
            &[1, 10, 100]
        } else {
            &[1, 100, 1000]
        };
        crate::scale_files::bundles(bin, sizes, params, &out)?;
    }
    if params.wants("connections") {
        let sizes: &[usize] = if params.quick {
            &[500, 2000, 5000]
        } else {
            &[1000, 10_000, 50_000]
        };
        crate::scale_conns::run(bin, sizes, params, &out)?;
    }
    if params.wants("writer-fds") {
        let sizes: &[usize] = if params.quick {
            &[10, 1000]
        } else {
            &[10, 100, 1000, 10_000]
        };
        crate::scale_writers::run(bin, sizes, params, &out)?;
    }
    println!("raw samples and curves: {}", out.dir().display());
    Ok(())
}

/// Date, kernel, CPU count and model: the line every table of this bench starts under.
pub(crate) fn machine() -> String {
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    format!(
        "{date}, kernel {}, {cpus} CPUs ({model}), release agent",
        kernel.trim()
    )
}

/// A process's CPU time (every thread, user + system) from `/proc/PID/task/*/schedstat`, which
/// counts nanoseconds (`/proc/PID/stat` counts 10 ms ticks: too coarse for one rotation).
pub(crate) fn cpu_time(pid: u32) -> Duration {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Duration::ZERO;
    };
    let ns: u64 = tasks
        .flatten()
        .filter_map(|t| fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(ns)
}

/// Resident set size of `pid`, KiB.
pub(crate) fn rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The `p` quantile (0..=1) of `values` (sorted here), nearest rank; NaN when empty.
pub(crate) fn quantile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let idx = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[idx.min(v.len() - 1)]
}

/// How a cost grows between two input sizes: 1.0 is linear, 0 constant, above 1 worse than
/// linear. NaN where either cost is not positive.
pub(crate) fn growth(n: (usize, usize), cost: (f64, f64)) -> f64 {
    if cost.0 <= 0.0 || cost.1 <= 0.0 {
        return f64::NAN;
    }
    (cost.1 / cost.0).ln() / (n.1 as f64 / n.0 as f64).ln()
}

/// The growth exponents of one cost over consecutive sizes, as "0.98, 1.01".
pub(crate) fn growths(sizes: &[usize], costs: &[f64]) -> String {
    sizes
        .windows(2)
        .zip(costs.windows(2))
        .map(|(n, c)| format!("{:.2}", growth((n[0], n[1]), (c[0], c[1]))))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One curve per cost (x: input size, log-log) into `<name>.svg`.
pub(crate) fn draw(
    out: &BenchOut,
    name: &str,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: Vec<Series>,
) -> Result<PathBuf> {
    let chart = Chart {
        title: title.to_string(),
        x_label: x_label.to_string(),
        y_label: y_label.to_string(),
        log_x: true,
        log_y: true,
    };
    out.curves(name, &chart, &series)
}

/// Drains a child's log on a thread and sends the time each line holding every one of `needles`
/// arrived (the agent never blocks on a full pipe, even after the receiver is gone).
pub(crate) fn lines_with(
    log: impl BufRead + Send + 'static,
    needles: &[&str],
) -> mpsc::Receiver<Instant> {
    let needles: Vec<String> = needles.iter().map(|n| (*n).to_string()).collect();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in log.lines().map_while(Result::ok) {
            if needles.iter().all(|n| line.contains(n.as_str())) {
                tx.send(Instant::now()).ok();
            }
        }
    });
    rx
}

/// A Secret-style volume (as [`SecretVolume`] lays it out) rotated by a child shell with the
/// kubelet's steps (a new `..tsN` directory, `..data_tmp` symlink, `mv -T` over `..data`), not by
/// this process. The agent's monitor looks at the writing process's open descriptors, and in the
/// connections curve this process holds two sockets per connection: rotating from here would
/// measure the writer's descriptor table, not the agent's connections.
pub(crate) struct ShellRotatedVolume {
    volume: SecretVolume,
    dir: PathBuf,
    leaves: PathBuf,
    version: usize,
}

impl ShellRotatedVolume {
    /// The volume in `dir` holding `leaves[0]`; every leaf also written beside it (under names no
    /// watched path has) for the shell to copy in.
    pub(crate) fn create(dir: &Path, leaves: &[(String, String)]) -> Result<Self> {
        let (cert, key) = leaves.first().context("at least one leaf")?;
        let volume = SecretVolume::create(dir, cert, key)?;
        let store = dir.with_extension("leaves");
        fs::create_dir_all(&store)?;
        for (i, (cert, key)) in leaves.iter().enumerate() {
            fs::write(store.join(format!("leaf-{i}.crt")), cert)?;
            fs::write(store.join(format!("leaf-{i}.pem")), key)?;
        }
        Ok(ShellRotatedVolume {
            volume,
            dir: dir.to_path_buf(),
            leaves: store,
            // SecretVolume::create wrote `..ts1`.
            version: 1,
        })
    }

    /// The certificate path the agent watches.
    pub(crate) fn cert(&self) -> PathBuf {
        self.volume.cert()
    }

    /// The key path the agent watches.
    pub(crate) fn key(&self) -> PathBuf {
        self.volume.key()
    }

    /// Rotates to leaf `i` (modulo the number written). Returns when the shell was about to run
    /// `mv -T` (it says so on its stdout just before): the instant rotation latencies count from,
    /// so the shell's own start (which grows with this process's descriptor table) is not in them.
    pub(crate) fn rotate_to(&mut self, i: usize, count: usize) -> Result<Instant> {
        let (old, new) = (self.version, self.version + 1);
        let leaf = i % count;
        let script = format!(
            "set -e; cd '{dir}'; mkdir ..ts{new}; cp '{leaves}/leaf-{leaf}.crt' ..ts{new}/tls.crt; \
             cp '{leaves}/leaf-{leaf}.pem' ..ts{new}/tls.key; ln -s ..ts{new} ..data_tmp; \
             echo swap; mv -T ..data_tmp ..data; rm -rf ..ts{old}",
            dir = self.dir.display(),
            leaves = self.leaves.display(),
        );
        let mut child = std::process::Command::new("sh")
            .args(["-c", &script])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("running the rotating shell")?;
        let mut said = String::new();
        std::io::BufReader::new(child.stdout.take().context("the shell's stdout")?)
            .read_line(&mut said)?;
        let swap = Instant::now();
        let status = child.wait()?;
        anyhow::ensure!(
            status.success() && said.trim() == "swap",
            "the rotating shell failed: {status}"
        );
        self.version = new;
        Ok(swap)
    }
}

/// Where a curve's files go: /dev/shm where there is one, so disk latency stays out of the
/// figures (as in `bench tls`).
pub(crate) fn scratch_dir(what: &str) -> PathBuf {
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    base.join(format!("certreload-scale-{what}-{}", std::process::id()))
}

/// Stops an agent this bench started when it goes out of scope, also when a curve fails half-way
/// (SIGTERM, then reaped; nothing is signalled once it has been reaped).
pub(crate) fn stop_agent(child: &mut std::process::Child) {
    if matches!(child.try_wait(), Ok(None)) {
        // SAFETY: kill(2) on our own child, which has not been reaped (its pid is still ours).
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        // Reaps it; its exit status is not part of the measurement.
        child.wait().ok();
    }
}

/// Removes a scratch directory when the curve ends (also on an error).
pub(crate) struct RemoveOnDrop(pub(crate) PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        // Best effort from a Drop: a scratch directory left behind changes no result.
        fs::remove_dir_all(&self.0).ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_reads_linear_as_one_and_constant_as_zero() {
        assert!((growth((10, 1000), (5.0, 500.0)) - 1.0).abs() < 1e-9);
        assert!(growth((10, 1000), (5.0, 5.0)).abs() < 1e-9);
        assert!((growth((10, 100), (1.0, 100.0)) - 2.0).abs() < 1e-9);
        assert!(growth((10, 100), (0.0, 1.0)).is_nan());
        assert_eq!(growths(&[1, 10, 100], &[1.0, 10.0, 10.0]), "1.00, 0.00");
    }

    #[test]
    fn quantile_is_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 51.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert!(quantile(&[], 0.5).is_nan());
    }
}
