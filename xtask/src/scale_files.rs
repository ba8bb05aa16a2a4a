//! The watched-paths and bundles curves of `bench scale`.
//!
//! Paths: `certreload watch` on N files (distinct basenames, 1,000 per directory, on tmpfs): the
//! time from spawn to "monitor ready", the kernel maps it loaded (entries and locked memory, from
//! `/proc/PID/fdinfo` of each BPF map descriptor), RSS, detection latency (rename(2) over a watched
//! file → the change line read here) and, on a second agent with `--resync 1`, agent CPU per
//! resync pass.
//!
//! Bundles: `certreload run` with N server bundles (each its own certificate and key, one CA): the
//! time from spawn to "agent ready" (every bundle validated at start), the CPU it took, RSS, and
//! the rotation latency of one bundle (a shell's `..data` swap → its "generation published") while the
//! others are idle.

use std::{
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    bench_pki::BenchPki,
    report::{BenchOut, Series},
    scale_bench::{
        cpu_time, draw, growths, lines_with, quantile, rss_kib, scratch_dir, stop_agent, Params,
        RemoveOnDrop, ShellRotatedVolume,
    },
};

/// Files per directory of the paths curve.
const PER_DIR: usize = 1000;

/// Everything measured at one number of watched paths.
struct PathsLevel {
    paths: usize,
    mode: String,
    startup_ms: f64,
    startup_cpu_ms: f64,
    rss_kib: u64,
    maps: KernelMaps,
    detection_us: Vec<f64>,
    resync_cpu_ms: f64,
    resyncs: u64,
}

/// The BPF maps a process holds, from `/proc/PID/fdinfo`.
#[derive(Default)]
struct KernelMaps {
    count: usize,
    memlock_kib: u64,
    /// `max_entries` of the watched-basenames hash map (8-byte key, 1-byte value).
    names_capacity: u64,
}

/// Runs the watched-paths curve over `sizes`.
pub(crate) fn paths(bin: &Path, sizes: &[usize], params: &Params, out: &BenchOut) -> Result<()> {
    let mut levels = Vec::new();
    for &n in sizes {
        eprintln!("xtask: scale paths: {n} watched paths");
        levels.push(paths_level(bin, n, params)?);
    }
    print_paths(&levels);
    write_paths(&levels, out)
}

fn paths_level(bin: &Path, n: usize, params: &Params) -> Result<PathsLevel> {
    let dir = scratch_dir(&format!("paths-{n}"));
    let _cleanup = RemoveOnDrop(dir.clone());
    let files: Vec<PathBuf> = (0..n)
        .map(|i| {
            dir.join(format!("d{}", i / PER_DIR))
                .join(format!("cert-{i}.pem"))
        })
        .collect();
    for f in &files {
        fs::create_dir_all(f.parent().context("a parent")?)?;
        fs::write(f, b"-----BEGIN CERTIFICATE-----\n")?;
    }
    let t0 = Instant::now();
    let mut agent = WatchAgent::start(bin, &files, 3600)?;
    let startup_ms = t0.elapsed().as_secs_f64() * 1e3;
    let startup_cpu_ms = cpu_time(agent.pid()).as_secs_f64() * 1e3;
    let rss = rss_kib(agent.pid());
    let maps = kernel_maps(agent.pid());
    let renames = params.rotations() * 5;
    let mut detection_us = Vec::with_capacity(renames);
    for i in 0..renames {
        let target = &files[(i * 7919) % n];
        let tmp = target.with_extension(format!("tmp{i}"));
        fs::write(&tmp, format!("rotation {i}\n"))?;
        fs::rename(&tmp, target)?;
        let t = Instant::now();
        agent.next_change()?;
        detection_us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let mode = agent.mode.clone();
    agent.stop();

    let window = Duration::from_secs(if params.quick { 3 } else { 6 });
    let resyncing = WatchAgent::start(bin, &files, 1)?;
    let cpu0 = cpu_time(resyncing.pid());
    std::thread::sleep(window);
    let cpu = cpu_time(resyncing.pid()) - cpu0;
    let resyncs = resyncing.stop().unwrap_or(window.as_secs()).max(1);
    Ok(PathsLevel {
        paths: n,
        mode,
        startup_ms,
        startup_cpu_ms,
        rss_kib: rss,
        maps,
        detection_us,
        resync_cpu_ms: cpu.as_secs_f64() * 1e3 / resyncs as f64,
        resyncs,
    })
}

/// A running `certreload watch` on the files, ready (also the writer-fds curve's agent,
/// [`crate::scale_writers`]).
pub(crate) struct WatchAgent {
    child: Child,
    stdout: BufReader<ChildStdout>,
    stats: mpsc::Receiver<String>,
    /// The monitor's mode, from its "monitor ready" line (`ebpf`, `inotify`).
    pub(crate) mode: String,
}

impl Drop for WatchAgent {
    fn drop(&mut self) {
        stop_agent(&mut self.child);
    }
}

impl WatchAgent {
    /// Starts `certreload watch --output json` on `files` and waits for "monitor ready".
    pub(crate) fn start(bin: &Path, files: &[PathBuf], resync_s: u64) -> Result<WatchAgent> {
        let mut child = Command::new(bin)
            .args(["watch", "--mode", "auto", "--output", "json", "--resync"])
            .arg(resync_s.to_string())
            .args(files)
            .env("CERTRELOAD_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stderr = BufReader::new(child.stderr.take().context("stderr")?);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                // Keep draining after the reader is gone, so the agent never blocks on a pipe.
                tx.send(line).ok();
            }
        });
        let deadline = Instant::now() + Duration::from_secs(120);
        let ready = loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.contains("monitor ready") => break line,
                Ok(_) => {}
                Err(_) => {
                    // It may have exited already; the error below is what matters.
                    child.kill().ok();
                    bail!(
                        "certreload watch on {} paths did not become ready",
                        files.len()
                    );
                }
            }
        };
        let mode = ready
            .split_whitespace()
            .find_map(|w| w.strip_prefix("mode="))
            .unwrap_or("?")
            .to_string();
        let stdout = BufReader::new(child.stdout.take().context("stdout")?);
        Ok(WatchAgent {
            child,
            stdout,
            stats: rx,
            mode,
        })
    }

    /// The agent's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads the next change line (one JSON object).
    pub(crate) fn next_change(&mut self) -> Result<String> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("certreload watch ended");
        }
        Ok(line)
    }

    /// Stops the agent; the resync passes its final `monitor_stats` counted.
    fn stop(mut self) -> Option<u64> {
        stop_agent(&mut self.child);
        self.stats
            .try_iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
            .find_map(|v| v.get("monitor_stats")?.get("resyncs")?.as_u64())
    }
}

/// The BPF maps `pid` holds: every descriptor that is a map, its `memlock` and `max_entries`.
fn kernel_maps(pid: u32) -> KernelMaps {
    let mut maps = KernelMaps::default();
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return maps;
    };
    for fd in fds.flatten() {
        let is_map = fs::read_link(fd.path())
            .is_ok_and(|target| target.to_string_lossy().contains("bpf-map"));
        if !is_map {
            continue;
        }
        let info = fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        let field = |name: &str| -> u64 {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        maps.count += 1;
        maps.memlock_kib += field("memlock:") / 1024;
        if field("map_type:") == 1 && field("key_size:") == 8 && field("value_size:") == 1 {
            maps.names_capacity = field("max_entries:");
        }
    }
    maps
}

fn print_paths(levels: &[PathsLevel]) {
    println!("\nWatched paths (certreload watch, files on tmpfs, 1,000 per directory; detection: rename(2) -> change line read here)");
    println!(
        "{:>7} {:>9} {:>11} {:>11} {:>8} {:>5} {:>12} {:>11} {:>9} {:>9} {:>12}",
        "paths",
        "mode",
        "start ms",
        "start CPU ms",
        "RSS MiB",
        "maps",
        "map KiB",
        "names cap",
        "det p50 us",
        "det p99 us",
        "CPU/resync ms"
    );
    for l in levels {
        println!(
            "{:>7} {:>9} {:>11.1} {:>11.1} {:>8.1} {:>5} {:>12} {:>11} {:>9.0} {:>9.0} {:>12.2}",
            l.paths,
            l.mode,
            l.startup_ms,
            l.startup_cpu_ms,
            l.rss_kib as f64 / 1024.0,
            l.maps.count,
            l.maps.memlock_kib,
            l.maps.names_capacity,
            quantile(&l.detection_us, 0.5),
            quantile(&l.detection_us, 0.99),
            l.resync_cpu_ms,
        );
    }
    let sizes: Vec<usize> = levels.iter().map(|l| l.paths).collect();
    let col = |f: &dyn Fn(&PathsLevel) -> f64| levels.iter().map(f).collect::<Vec<f64>>();
    println!(
        "growth exponents (1 = linear, 0 = constant) over {sizes:?}: start-up {}; start-up CPU {}; RSS {}; map memory {}; detection p99 {}; CPU per resync {}",
        growths(&sizes, &col(&|l| l.startup_ms)),
        growths(&sizes, &col(&|l| l.startup_cpu_ms)),
        growths(&sizes, &col(&|l| l.rss_kib as f64)),
        growths(&sizes, &col(&|l| l.maps.memlock_kib as f64)),
        growths(&sizes, &col(&|l| quantile(&l.detection_us, 0.99))),
        growths(&sizes, &col(&|l| l.resync_cpu_ms)),
    );
}

fn write_paths(levels: &[PathsLevel], out: &BenchOut) -> Result<()> {
    let rows: Vec<Vec<String>> = levels
        .iter()
        .map(|l| {
            vec![
                l.paths.to_string(),
                l.mode.clone(),
                format!("{:.3}", l.startup_ms),
                format!("{:.3}", l.startup_cpu_ms),
                l.rss_kib.to_string(),
                l.maps.count.to_string(),
                l.maps.memlock_kib.to_string(),
                l.maps.names_capacity.to_string(),
                format!("{:.1}", quantile(&l.detection_us, 0.5)),
                format!("{:.1}", quantile(&l.detection_us, 0.99)),
                format!("{:.4}", l.resync_cpu_ms),
                l.resyncs.to_string(),
            ]
        })
        .collect();
    let path = out.csv(
        "paths",
        &[
            "paths",
            "mode",
            "startup_ms",
            "startup_cpu_ms",
            "rss_kib",
            "bpf_maps",
            "bpf_map_memlock_kib",
            "names_map_max_entries",
            "detection_p50_us",
            "detection_p99_us",
            "cpu_per_resync_ms",
            "resyncs",
        ],
        &rows,
    )?;
    println!("{}", path.display());
    let samples: Vec<Vec<String>> = levels
        .iter()
        .flat_map(|l| {
            l.detection_us
                .iter()
                .map(|v| vec![l.paths.to_string(), format!("{v:.1}")])
        })
        .collect();
    out.csv("paths_detection", &["paths", "detection_us"], &samples)?;
    let curve = |name: &str, f: &dyn Fn(&PathsLevel) -> f64| Series {
        name: name.to_string(),
        points: levels.iter().map(|l| (l.paths as f64, f(l))).collect(),
    };
    draw(
        out,
        "paths",
        "Cost against watched paths",
        "watched paths",
        "cost",
        vec![
            curve("start-up, ms", &|l| l.startup_ms),
            curve("RSS, MiB", &|l| l.rss_kib as f64 / 1024.0),
            curve("BPF map memory, KiB", &|l| l.maps.memlock_kib as f64),
            curve("detection p99, us", &|l| quantile(&l.detection_us, 0.99)),
            curve("CPU per resync, ms", &|l| l.resync_cpu_ms),
        ],
    )?;
    Ok(())
}

/// Everything measured at one number of bundles.
struct BundlesLevel {
    bundles: usize,
    startup_ms: f64,
    startup_cpu_ms: f64,
    rss_kib: u64,
    rotation_ms: Vec<f64>,
}

/// Runs the bundles curve over `sizes`.
pub(crate) fn bundles(bin: &Path, sizes: &[usize], params: &Params, out: &BenchOut) -> Result<()> {
    let mut levels = Vec::new();
    for &n in sizes {
        eprintln!("xtask: scale bundles: {n} bundles");
        levels.push(bundles_level(bin, n, params)?);
    }
    print_bundles(&levels);
    write_bundles(&levels, out)
}

fn bundle_name(i: usize) -> String {
    format!("bundle-{i:05}")
}

fn bundles_level(bin: &Path, n: usize, params: &Params) -> Result<BundlesLevel> {
    let dir = scratch_dir(&format!("bundles-{n}"));
    let _cleanup = RemoveOnDrop(dir.clone());
    fs::create_dir_all(&dir)?;
    let rotations = params.rotations();
    let pki = BenchPki::generate("localhost", n + rotations)?;
    let (config, mut volume) = bundles_config(&dir, &pki, n)?;
    let t0 = Instant::now();
    let started = crate::agent_proc::start(
        bin,
        &[],
        &config,
        "warn,certreload::run=info,certreload::reload=info",
    )?;
    let startup_ms = t0.elapsed().as_secs_f64() * 1e3;
    let pid = started.child.id();
    let startup_cpu_ms = cpu_time(pid).as_secs_f64() * 1e3;
    std::thread::sleep(Duration::from_millis(300));
    let rss = rss_kib(pid);
    let bundle0 = format!("bundle={}", bundle_name(0));
    let published = lines_with(started.stderr, &["generation published", &bundle0]);
    let mut child = started.child;
    let timed = (0..rotations)
        .map(|r| {
            while published.try_recv().is_ok() {}
            let t = volume.rotate_to(1 + r, 1 + rotations)?;
            let at = published
                .recv_timeout(Duration::from_secs(10))
                .context("bundle 0 published no generation within 10 s of a rotation")?;
            std::thread::sleep(Duration::from_millis(20));
            Ok(at.saturating_duration_since(t).as_secs_f64() * 1e3)
        })
        .collect::<Result<Vec<f64>>>();
    // Stopped whether or not every rotation was seen.
    stop_agent(&mut child);
    let rotation_ms = timed?;
    Ok(BundlesLevel {
        bundles: n,
        startup_ms,
        startup_cpu_ms,
        rss_kib: rss,
        rotation_ms,
    })
}

/// Writes every bundle's files (bundle 0 in a Secret-style volume, rotated; the others plain
/// files) and the configuration naming them; returns the configuration's path and the volume.
fn bundles_config(dir: &Path, pki: &BenchPki, n: usize) -> Result<(PathBuf, ShellRotatedVolume)> {
    // Bundle 0 starts on leaf 0 and rotates through the leaves after the n bundles' own.
    let rotating: Vec<(String, String)> = std::iter::once(pki.leaves[0].clone())
        .chain(pki.leaves[n..].iter().cloned())
        .collect();
    let volume = ShellRotatedVolume::create(&dir.join("b0"), &rotating)?;
    let ca = dir.join("ca.crt");
    fs::write(&ca, &pki.ca_pem)?;
    let mut config = format!(
        "[agent]\nadmin = \"127.0.0.1:0\"\n[audit]\npath = \"{}\"\n",
        dir.join("audit.jsonl").display()
    );
    for (i, (cert, key)) in pki.leaves[..n].iter().enumerate() {
        let (cert_path, key_path) = if i == 0 {
            (volume.cert(), volume.key())
        } else {
            let b = dir.join(format!("b{i}"));
            fs::create_dir_all(&b)?;
            fs::write(b.join("tls.crt"), cert)?;
            fs::write(b.join("tls.key"), key)?;
            (b.join("tls.crt"), b.join("tls.key"))
        };
        config.push_str(&format!(
            "[[bundle]]\nname = \"{}\"\nkind = \"server\"\ncert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\n",
            bundle_name(i),
            cert_path.display(),
            key_path.display(),
            ca.display()
        ));
    }
    let path = dir.join("certreload.toml");
    fs::write(&path, config)?;
    Ok((path, volume))
}

fn print_bundles(levels: &[BundlesLevel]) {
    println!("\nBundles (certreload run, server bundles sharing one CA, files on tmpfs; rotation: a shell's mv -T over one bundle's ..data -> its \"generation published\")");
    println!(
        "{:>8} {:>11} {:>13} {:>9} {:>11} {:>12} {:>12}",
        "bundles", "start ms", "start CPU ms", "RSS MiB", "KiB/bundle", "rot p50 ms", "rot p99 ms"
    );
    let base = levels.first().map_or(0, |l| l.rss_kib);
    for l in levels {
        let per = if l.bundles > levels[0].bundles {
            (l.rss_kib as f64 - base as f64) / (l.bundles - levels[0].bundles) as f64
        } else {
            f64::NAN
        };
        println!(
            "{:>8} {:>11.1} {:>13.1} {:>9.1} {:>11.1} {:>12.2} {:>12.2}",
            l.bundles,
            l.startup_ms,
            l.startup_cpu_ms,
            l.rss_kib as f64 / 1024.0,
            per,
            quantile(&l.rotation_ms, 0.5),
            quantile(&l.rotation_ms, 0.99),
        );
    }
    let sizes: Vec<usize> = levels.iter().map(|l| l.bundles).collect();
    let col = |f: &dyn Fn(&BundlesLevel) -> f64| levels.iter().map(f).collect::<Vec<f64>>();
    println!(
        "growth exponents (1 = linear, 0 = constant) over {sizes:?}: start-up {}; start-up CPU {}; RSS above the smallest {}; rotation p99 {}",
        growths(&sizes, &col(&|l| l.startup_ms)),
        growths(&sizes, &col(&|l| l.startup_cpu_ms)),
        growths(&sizes[1..], &col(&|l| l.rss_kib as f64 - base as f64)[1..]),
        growths(&sizes, &col(&|l| quantile(&l.rotation_ms, 0.99))),
    );
}

fn write_bundles(levels: &[BundlesLevel], out: &BenchOut) -> Result<()> {
    let rows: Vec<Vec<String>> = levels
        .iter()
        .map(|l| {
            vec![
                l.bundles.to_string(),
                format!("{:.3}", l.startup_ms),
                format!("{:.3}", l.startup_cpu_ms),
                l.rss_kib.to_string(),
                format!("{:.3}", quantile(&l.rotation_ms, 0.5)),
                format!("{:.3}", quantile(&l.rotation_ms, 0.99)),
            ]
        })
        .collect();
    let path = out.csv(
        "bundles",
        &[
            "bundles",
            "startup_ms",
            "startup_cpu_ms",
            "rss_kib",
            "rotation_p50_ms",
            "rotation_p99_ms",
        ],
        &rows,
    )?;
    println!("{}", path.display());
    let samples: Vec<Vec<String>> = levels
        .iter()
        .flat_map(|l| {
            l.rotation_ms
                .iter()
                .map(|v| vec![l.bundles.to_string(), format!("{v:.3}")])
        })
        .collect();
    out.csv("bundles_rotation", &["bundles", "rotation_ms"], &samples)?;
    let curve = |name: &str, f: &dyn Fn(&BundlesLevel) -> f64| Series {
        name: name.to_string(),
        points: levels.iter().map(|l| (l.bundles as f64, f(l))).collect(),
    };
    draw(
        out,
        "bundles",
        "Cost against bundles",
        "server bundles",
        "cost",
        vec![
            curve("start-up (validation), ms", &|l| l.startup_ms),
            curve("start-up CPU, ms", &|l| l.startup_cpu_ms),
            curve("RSS, MiB", &|l| l.rss_kib as f64 / 1024.0),
            curve("rotation p99 of one bundle, ms", &|l| {
                quantile(&l.rotation_ms, 0.99)
            }),
        ],
    )?;
    Ok(())
}
