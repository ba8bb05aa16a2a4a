//! The writer-fds curve of `bench scale`: what a writer's fd table costs the eBPF monitor.
//!
//! With the tracepoint strategy the kernel reports a write-open at its entry, without the new fd;
//! the agent then looks for the fd holding the file in `/proc/<tgid>/fd`, so the cost grows with
//! the writer's fd table. Here this bench process is the writer: it holds N extra fds
//! (`/dev/null`), writes one watched file in place (`open(O_TRUNC)`, write, close) and at once
//! renames a temporary file over a second watched file. Measured per N on a fresh
//! `certreload watch`: detection of the in-place write (its close → its change line read here),
//! detection of the rename that followed it (whether the rename waited behind the fd search), and
//! agent CPU per in-place write.

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    report::{BenchOut, Series},
    scale_bench::{cpu_time, draw, growths, quantile, scratch_dir, Params, RemoveOnDrop},
    scale_files::WatchAgent,
};

/// Everything measured at one size of the writer's fd table.
struct WritersLevel {
    fds: usize,
    mode: String,
    write_us: Vec<f64>,
    rename_us: Vec<f64>,
    cpu_per_write_ms: f64,
}

/// Runs the writer-fds curve over `sizes` (extra fds held by the writer).
pub(crate) fn run(bin: &Path, sizes: &[usize], params: &Params, out: &BenchOut) -> Result<()> {
    let mut levels = Vec::new();
    for &n in sizes {
        eprintln!("xtask: scale writer-fds: a writer holding {n} extra fds");
        levels.push(level(bin, n, params)?);
    }
    print(&levels);
    write(&levels, out)
}

fn level(bin: &Path, n: usize, params: &Params) -> Result<WritersLevel> {
    let dir = scratch_dir(&format!("writer-fds-{n}"));
    let _cleanup = RemoveOnDrop(dir.clone());
    fs::create_dir_all(&dir)?;
    let held = dir.join("written.crt");
    let renamed = dir.join("renamed.crt");
    fs::write(&held, "start\n")?;
    fs::write(&renamed, "start\n")?;
    let mut agent = WatchAgent::start(bin, &[held.clone(), renamed.clone()], 3600)?;
    let fds = (0..n)
        .map(|_| fs::File::open("/dev/null"))
        .collect::<std::io::Result<Vec<_>>>()
        .context("opening the writer's extra fds (bench scale raises RLIMIT_NOFILE)")?;
    let samples = params.rotations() * 2;
    let (mut write_us, mut rename_us) = (Vec::new(), Vec::new());
    let cpu0 = cpu_time(agent.pid());
    for i in 0..samples {
        let tmp = dir.join(format!("renamed.tmp{i}"));
        fs::write(&tmp, format!("renamed {i}\n"))?;
        fs::write(&held, format!("written {i}\n"))?;
        let written = Instant::now();
        fs::rename(&tmp, &renamed)?;
        let moved = Instant::now();
        for _ in 0..2 {
            let line = agent.next_change()?;
            let at = Instant::now();
            let path = change_path(&line)?;
            if path == held {
                write_us.push(at.duration_since(written).as_secs_f64() * 1e6);
            } else if path == renamed {
                rename_us.push(at.duration_since(moved).as_secs_f64() * 1e6);
            } else {
                bail!("a change of an unwatched path: {line}");
            }
        }
        // Let the agent settle, so each sample starts from an idle monitor.
        std::thread::sleep(Duration::from_millis(20));
    }
    let cpu = cpu_time(agent.pid()) - cpu0;
    drop(fds);
    Ok(WritersLevel {
        fds: n,
        mode: agent.mode.clone(),
        write_us,
        rename_us,
        cpu_per_write_ms: cpu.as_secs_f64() * 1e3 / samples as f64,
    })
}

/// The `path` of a `certreload watch --output json` change line.
fn change_path(line: &str) -> Result<PathBuf> {
    let v: serde_json::Value =
        serde_json::from_str(line).with_context(|| format!("a change line: {line}"))?;
    let path = v
        .get("path")
        .and_then(|p| p.as_str())
        .with_context(|| format!("no path in the change line {line}"))?;
    Ok(PathBuf::from(path))
}

fn print(levels: &[WritersLevel]) {
    println!("\nWriter fds (certreload watch on 2 files; this process holds N extra fds, writes one file in place then renames over the other; detection: close or rename -> change line read here)");
    println!(
        "{:>7} {:>9} {:>13} {:>13} {:>14} {:>14} {:>13}",
        "fds",
        "mode",
        "write p50 us",
        "write p99 us",
        "rename p50 us",
        "rename p99 us",
        "CPU/write ms"
    );
    for l in levels {
        println!(
            "{:>7} {:>9} {:>13.0} {:>13.0} {:>14.0} {:>14.0} {:>13.2}",
            l.fds,
            l.mode,
            quantile(&l.write_us, 0.5),
            quantile(&l.write_us, 0.99),
            quantile(&l.rename_us, 0.5),
            quantile(&l.rename_us, 0.99),
            l.cpu_per_write_ms,
        );
    }
    let sizes: Vec<usize> = levels.iter().map(|l| l.fds).collect();
    let col = |f: &dyn Fn(&WritersLevel) -> f64| levels.iter().map(f).collect::<Vec<f64>>();
    println!(
        "growth exponents (1 = linear, 0 = constant) over {sizes:?}: write detection p99 {}; rename detection p99 {}; CPU per write {}",
        growths(&sizes, &col(&|l| quantile(&l.write_us, 0.99))),
        growths(&sizes, &col(&|l| quantile(&l.rename_us, 0.99))),
        growths(&sizes, &col(&|l| l.cpu_per_write_ms)),
    );
}

fn write(levels: &[WritersLevel], out: &BenchOut) -> Result<()> {
    let rows: Vec<Vec<String>> = levels
        .iter()
        .map(|l| {
            vec![
                l.fds.to_string(),
                l.mode.clone(),
                format!("{:.1}", quantile(&l.write_us, 0.5)),
                format!("{:.1}", quantile(&l.write_us, 0.99)),
                format!("{:.1}", quantile(&l.rename_us, 0.5)),
                format!("{:.1}", quantile(&l.rename_us, 0.99)),
                format!("{:.4}", l.cpu_per_write_ms),
            ]
        })
        .collect();
    let path = out.csv(
        "writer_fds",
        &[
            "writer_fds",
            "mode",
            "write_detection_p50_us",
            "write_detection_p99_us",
            "rename_detection_p50_us",
            "rename_detection_p99_us",
            "cpu_per_write_ms",
        ],
        &rows,
    )?;
    println!("{}", path.display());
    let curve = |name: &str, f: &dyn Fn(&WritersLevel) -> f64| Series {
        name: name.to_string(),
        points: levels.iter().map(|l| (l.fds as f64, f(l))).collect(),
    };
    draw(
        out,
        "writer_fds",
        "Cost against the writer's open fds",
        "fds held by the writer",
        "cost",
        vec![
            curve("write detection p99, us", &|l| quantile(&l.write_us, 0.99)),
            curve("rename detection p99, us", &|l| {
                quantile(&l.rename_us, 0.99)
            }),
            curve("agent CPU per write, ms", &|l| l.cpu_per_write_ms),
        ],
    )?;
    Ok(())
}
