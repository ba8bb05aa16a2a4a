//! `cargo xtask bench gate`: how long from a Kubernetes-style Secret rotation (`..data` renamed
//! over) to the new generation being accepted, audited and published, in eBPF and inotify mode.

use std::{
    fs,
    io::Read,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Result};

use crate::{
    bench_pki::BenchPki,
    report::{BenchOut, Chart, Samples, Series},
    secret_volume::SecretVolume,
};

/// Runs the benchmark and prints its table.
pub(crate) fn run(bin: &Path, rotations: usize) -> Result<()> {
    let BenchPki {
        ca_pem,
        leaves: pairs,
    } = BenchPki::generate("bench.example", rotations + 1)?;
    println!("certreload bench gate: {rotations} Secret-volume rotations (..data swap of cert + key), ECDSA P-256, chain checked");
    println!("time from rename(2) returning to the material_accepted record being durable in the audit log");
    println!(
        "{:<10} {:>9} {:>9} {:>9}",
        "mode", "p50 ms", "p99 ms", "max ms"
    );
    let out = BenchOut::new("gate")?;
    let mut rows = Vec::new();
    let mut samples = Vec::new();
    let mut series = Vec::new();
    for mode in ["ebpf", "inotify"] {
        let mut ms = measure(bin, mode, &ca_pem, &pairs)?;
        rows.extend(
            ms.iter()
                .enumerate()
                .map(|(i, v)| vec![mode.to_string(), (i + 1).to_string(), format!("{v:.4}")]),
        );
        series.push(Series {
            name: mode.to_string(),
            points: ms
                .iter()
                .enumerate()
                .map(|(i, v)| ((i + 1) as f64, *v))
                .collect(),
        });
        samples.push(Samples {
            name: mode.to_string(),
            values: ms.clone(),
        });
        ms.sort_by(f64::total_cmp);
        let pct = |p: f64| ms[((ms.len() as f64 - 1.0) * p).round() as usize];
        println!(
            "{mode:<10} {:>9.2} {:>9.2} {:>9.2}",
            pct(0.5),
            pct(0.99),
            ms[ms.len() - 1]
        );
    }
    let csv = out.csv("change-to-swap", &["mode", "rotation", "ms"], &rows)?;
    let chart = Chart {
        title: format!("change on disk -> generation accepted and durable ({rotations} rotations)"),
        x_label: "ms (log)".into(),
        y_label: "% of rotations at or below".into(),
        log_x: true,
        log_y: false,
    };
    let svg = out.distribution("change-to-swap", &chart, &samples)?;
    // In rotation order: a drift (a growing audit log, a leak) shows as a slope.
    let by_rotation = Chart {
        title: "change on disk -> generation accepted and durable, in rotation order".into(),
        x_label: "rotation".into(),
        y_label: "ms (log)".into(),
        log_x: false,
        log_y: true,
    };
    out.curves("change-to-swap-by-rotation", &by_rotation, &series)?;
    println!(
        "samples: {}; distribution: {}; charts and CSV in {}",
        csv.display(),
        svg.display(),
        out.dir().display()
    );
    Ok(())
}

fn measure(bin: &Path, mode: &str, ca_pem: &str, pairs: &[(String, String)]) -> Result<Vec<f64>> {
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!(
        "certreload-gate-bench-{}-{mode}",
        std::process::id()
    ));
    fs::create_dir_all(&dir)?;
    fs::write(dir.join("ca.crt"), ca_pem)?;
    let mut volume = SecretVolume::create(&dir.join("vol"), &pairs[0].0, &pairs[0].1)?;
    let audit = dir.join("audit.jsonl");
    let config = dir.join("certreload.toml");
    fs::write(
        &config,
        format!(
            "[agent]\nadmin = \"127.0.0.1:0\"\n[audit]\npath = \"{}\"\n[[bundle]]\nname = \"bench\"\nkind = \"server\"\ncert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\n",
            audit.display(),
            volume.cert().display(),
            volume.key().display(),
            dir.join("ca.crt").display()
        ),
    )?;
    let crate::agent_proc::Started {
        mut child,
        mut stderr,
        ..
    } = crate::agent_proc::start(bin, &["--mode", mode], &config, "warn,certreload::run=info")?;
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    let mut log = fs::File::open(&audit)?;
    let mut seen = String::new();
    let mut out = Vec::with_capacity(pairs.len() - 1);
    for (n, (cert, key)) in pairs.iter().enumerate().skip(1) {
        volume.rotate(cert, key)?;
        let t0 = Instant::now();
        let needle = format!("\"new_generation\":{}", n + 1);
        loop {
            let mut chunk = String::new();
            log.read_to_string(&mut chunk)?;
            seen.push_str(&chunk);
            if seen.contains(&needle) {
                break;
            }
            if t0.elapsed() > Duration::from_secs(10) {
                bail!("generation {} not accepted within 10 s ({mode})", n + 1);
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        out.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    // Reaps it (its exit status is not a measurement) and removes the scratch directory, both
    // best effort: the measurements are taken.
    child.wait().ok();
    fs::remove_dir_all(&dir).ok();
    Ok(out)
}
