//! `cargo xtask bench tls`: certreload's TLS front against nginx (stream module) and HAProxy (TCP
//! mode), all terminating TLS with the same ECDSA P-256 certificate in front of the same upstream,
//! driven by the same client (xtask/src/tls_load.rs), in the same run, measurements interleaved
//! round by round; each front also rotated by its own hitless mechanism during a run.
//!
//! The same run measures the crypto ceiling (xtask/src/tls_ceiling.rs): rustls handshakes in
//! memory, ring against aws-lc-rs, and each front's server CPU per handshake (from /proc) as a
//! multiple of the in-memory server's.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use tokio_rustls::TlsConnector;

use crate::{
    bench_pki::BenchPki,
    haproxy::Haproxy,
    nginx::Nginx,
    tls_ceiling::{self, Pem, Provider},
    tls_fronts::{cpu_ticks, rotate_every, rss_kib, ticks_per_second, Agent, Front},
    tls_load,
};

/// What to measure and how long.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Params {
    /// Seconds per handshake-rate sample.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Concurrent handshaking clients.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Interleaved rounds (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Bytes proxied per bulk sample (one connection; split evenly over the parallel ones).
    #[arg(long, default_value_t = 1 << 30)]
    pub bulk_bytes: u64,
    /// Parallel connections of the second bulk measurement.
    #[arg(long, default_value_t = 64)]
    pub parallel: usize,
    /// Idle connections held open for the memory measurement.
    #[arg(long, default_value_t = 1000)]
    pub idle: usize,
    /// Rotation period of the "while rotating" handshake measurement, milliseconds.
    #[arg(long, default_value_t = 100)]
    pub rotate_ms: u64,
    /// In-memory handshakes per provider per round (the crypto ceiling).
    #[arg(long, default_value_t = 2000)]
    pub ceiling_handshakes: u64,
}

/// The fronts, in table order: certreload, nginx, HAProxy.
const FRONTS: usize = 3;

/// Runs the benchmark and prints its tables.
pub(crate) fn run(bin: &Path, params: &Params) -> Result<()> {
    tls_load::raise_nofile_limit();
    let ceiling = Ceiling::build();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(bench(bin, &ceiling, params))
}

/// Runs the whole comparison: the fronts started on the same material and upstream, each
/// measure taken in turn, then the tables. Fails if a certreload handshake failed, so a broken
/// run is not mistaken for a slow one (a peer's failures are a result, printed).
async fn bench(bin: &Path, ceiling: &Ceiling, params: &Params) -> Result<()> {
    let dir = scratch_dir();
    let _cleanup = RemoveOnDrop(dir.clone());
    fs::create_dir_all(&dir)?;
    let BenchPki { ca_pem, leaves } = BenchPki::generate("localhost", 12)?;
    let connector = tls_load::connector(&ca_pem)?;
    let upstream = tls_load::spawn_upstream().await?;
    ceiling.write_material(&dir, &ca_pem, &leaves[0])?;

    let agent = Agent::start(bin, &dir, &ca_pem, &leaves[0], upstream)?;
    let nginx = Nginx::start(&dir, &leaves[0], upstream)?;
    let haproxy = Haproxy::start(&dir, &leaves[0], upstream)?;
    let fronts: [&dyn Front; FRONTS] = [&agent, &nginx, &haproxy];
    for front in fronts {
        tls_load::wait_until_accepting(front.addr()).await?;
        let suite = tls_load::probe(&connector, front.addr()).await?;
        println!("{:<10} on {}: {suite}", front.name(), front.addr());
    }

    // Memory first, on fresh processes.
    let memory = measure_memory(&connector, &fronts, params).await?;
    let handshakes =
        measure_handshakes(&connector, &fronts, &leaves, ceiling, &dir, params).await?;
    let published = agent.generations_published();
    let s_time = measure_s_time(&fronts, &dir, params)?;
    let (single, parallel) = measure_bulk(&connector, &fronts, params).await?;

    print_table(params, &handshakes, &s_time, &single, &parallel, &memory);
    print_ceiling(&handshakes, ceiling);
    print_rotation(params, &handshakes, published);
    write_csv(&handshakes)?;
    agent.stop();
    drop((nginx, haproxy));
    let failures = handshakes.failures[0];
    if failures.iter().any(|&f| f > 0) {
        bail!("certreload handshakes failed during the benchmark: {failures:?} (static, rotating)");
    }
    Ok(())
}

/// Where the fronts' files go: /dev/shm where there is one, so that disk I/O does not enter
/// the figures.
fn scratch_dir() -> PathBuf {
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    base.join(format!("certreload-tls-bench-{}", std::process::id()))
}

/// Resident memory per front, in KiB when idle and per 1,000 idle TLS connections.
struct Memory {
    idle_rss: [u64; FRONTS],
    per_1000: [f64; FRONTS],
}

/// Memory idle and per connection, each front in turn holding `params.idle` connections: the
/// growth while they are held, so the baseline each process starts with cancels.
async fn measure_memory(
    connector: &TlsConnector,
    fronts: &[&dyn Front; FRONTS],
    params: &Params,
) -> Result<Memory> {
    let idle_rss = fronts.map(|f| rss_kib(&f.pids()));
    let mut per_1000 = [0.0; FRONTS];
    for (i, front) in fronts.iter().enumerate() {
        let before = rss_kib(&front.pids());
        let held = tls_load::hold(connector, front.addr(), params.idle)
            .await
            .with_context(|| {
                format!(
                    "holding {} idle connections on {}",
                    params.idle,
                    front.name()
                )
            })?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let after = rss_kib(&front.pids());
        per_1000[i] = (after as f64 - before as f64) / params.idle as f64 * 1000.0;
        drop(held);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(Memory { idle_rss, per_1000 })
}

/// Index of the static run and of the rotating run in [`Handshakes`]' per-front pairs.
const STATIC: usize = 0;
const ROTATING: usize = 1;

/// Per front, per run (static, rotating): the handshake rate and the front's CPU per handshake
/// of each round, the failures, the rotations made; and the in-memory ceiling of each round.
struct Handshakes {
    rates: [[Vec<f64>; 2]; FRONTS],
    cpu_us: [[Vec<f64>; 2]; FRONTS],
    failures: [[u64; 2]; FRONTS],
    rotations: [usize; FRONTS],
    names: [&'static str; FRONTS],
    ceiling: Vec<Vec<CeilingFigure>>,
}

/// Handshake rate of every front, static then rotating, interleaved: each round starts with the
/// in-memory ceiling, then the six runs, in reverse order every other round so no run always
/// follows the same one.
async fn measure_handshakes(
    connector: &TlsConnector,
    fronts: &[&dyn Front; FRONTS],
    leaves: &[(String, String)],
    ceiling: &Ceiling,
    dir: &Path,
    params: &Params,
) -> Result<Handshakes> {
    let mut h = Handshakes {
        rates: Default::default(),
        cpu_us: Default::default(),
        failures: [[0; 2]; FRONTS],
        rotations: [0; FRONTS],
        names: fronts.map(|f| f.name()),
        ceiling: Vec::new(),
    };
    let mut runs: Vec<(usize, usize)> = (0..FRONTS)
        .flat_map(|f| [(f, STATIC), (f, ROTATING)])
        .collect();
    for round in 0..params.rounds {
        h.ceiling
            .push(ceiling.measure(dir, round, params.ceiling_handshakes)?);
        for &(f, run) in &runs {
            let front = fronts[f];
            let rotator = (run == ROTATING).then(|| {
                let period = Duration::from_millis(params.rotate_ms);
                rotate_every(front.rotation(), period, leaves)
            });
            let ticks = cpu_ticks(&front.pids());
            let sample =
                tls_load::handshakes(connector, front.addr(), params.concurrency, params.seconds)
                    .await;
            let spent = cpu_ticks(&front.pids()).saturating_sub(ticks) as f64;
            if let Some(rotator) = rotator {
                h.rotations[f] += rotator
                    .stop()
                    .with_context(|| format!("rotating {}", front.name()))?;
            }
            let per_handshake = spent / ticks_per_second() * 1e6 / sample.connections.max(1) as f64;
            h.rates[f][run].push(sample.per_second);
            h.cpu_us[f][run].push(per_handshake);
            h.failures[f][run] += sample.failures;
        }
        runs.reverse();
        print_round(round, &h);
    }
    Ok(h)
}

/// One progress line per round, on stderr.
fn print_round(round: usize, h: &Handshakes) {
    let runs: Vec<String> = (0..FRONTS)
        .map(|f| {
            format!(
                "{} {:.0} (rotating {:.0})",
                h.names[f], h.rates[f][STATIC][round], h.rates[f][ROTATING][round]
            )
        })
        .collect();
    let ceiling: Vec<String> = h.ceiling[round]
        .iter()
        .map(|c| format!("{} {:.0} us", c.provider, c.server_us))
        .collect();
    eprintln!(
        "xtask: round {}: handshakes/s {}; in-memory server CPU {}",
        round + 1,
        runs.join(", "),
        ceiling.join(", ")
    );
}

/// openssl s_time: a second, independent client (one sequential connection at a time), so the
/// rate does not rest on our own client alone.
fn measure_s_time(
    fronts: &[&dyn Front; FRONTS],
    dir: &Path,
    params: &Params,
) -> Result<[Vec<f64>; FRONTS]> {
    let mut s_time: [Vec<f64>; FRONTS] = Default::default();
    for _ in 0..params.rounds {
        for (i, front) in fronts.iter().enumerate() {
            s_time[i].push(tls_load::openssl_s_time(front.addr(), dir, params.seconds)?);
        }
    }
    Ok(s_time)
}

/// Bulk MiB/s: one connection, then `parallel` connections, same total, per round: the data
/// path once the handshake is paid.
async fn measure_bulk(
    connector: &TlsConnector,
    fronts: &[&dyn Front; FRONTS],
    params: &Params,
) -> Result<([Vec<f64>; FRONTS], [Vec<f64>; FRONTS])> {
    let mut single: [Vec<f64>; FRONTS] = Default::default();
    let mut parallel: [Vec<f64>; FRONTS] = Default::default();
    for _ in 0..params.rounds {
        for (i, front) in fronts.iter().enumerate() {
            let addr = front.addr();
            single[i].push(tls_load::bulk(connector, addr, 1, params.bulk_bytes).await?);
            parallel[i]
                .push(tls_load::bulk(connector, addr, params.parallel, params.bulk_bytes).await?);
        }
    }
    Ok((single, parallel))
}

/// The median of the rounds: one slow round (a noisy neighbour) does not move it.
fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The side-by-side table: each measure for every front and certreload's as a multiple of each
/// peer's.
fn print_table(
    params: &Params,
    h: &Handshakes,
    s_time: &[Vec<f64>; FRONTS],
    single: &[Vec<f64>; FRONTS],
    parallel: &[Vec<f64>; FRONTS],
    memory: &Memory,
) {
    println!();
    println!(
        "certreload bench tls: ECDSA P-256, TLS 1.3, no resumption, same upstream, {} rounds interleaved, median",
        params.rounds
    );
    println!("{}", crate::scale_bench::machine());
    println!(
        "{:<52} {:>11} {:>11} {:>11} {:>9} {:>9}",
        "measure", h.names[0], h.names[1], h.names[2], "/nginx", "/haproxy"
    );
    let per_run =
        |run: usize| -> [f64; FRONTS] { std::array::from_fn(|f| median(&h.rates[f][run])) };
    let clients = format!("{} clients, {} s", params.concurrency, params.seconds);
    print_row(&format!("handshakes/s ({clients})"), per_run(STATIC), 0);
    print_row(
        &format!(
            "handshakes/s rotating every {} ms ({clients})",
            params.rotate_ms
        ),
        per_run(ROTATING),
        0,
    );
    let cpu = std::array::from_fn(|f| median(&h.cpu_us[f][STATIC]));
    print_row("server CPU per handshake, us (/proc, static run)", cpu, 1);
    let medians =
        |v: &[Vec<f64>; FRONTS]| -> [f64; FRONTS] { std::array::from_fn(|f| median(&v[f])) };
    print_row(
        "handshakes/s (openssl s_time -new, 1 client)",
        medians(s_time),
        0,
    );
    let gib = params.bulk_bytes as f64 / (1u64 << 30) as f64;
    print_row(
        &format!("MiB/s, {gib:.2} GiB over 1 connection"),
        medians(single),
        0,
    );
    print_row(
        &format!("MiB/s, {gib:.2} GiB over {} connections", params.parallel),
        medians(parallel),
        0,
    );
    print_memory(params, memory);
    println!();
}

/// One row: every front's figure (with `decimals`) and certreload's as a multiple of each peer's.
fn print_row(what: &str, v: [f64; FRONTS], decimals: usize) {
    println!(
        "{what:<52} {:>11} {:>11} {:>11} {:>8.3}x {:>8.3}x",
        format!("{:.decimals$}", v[0]),
        format!("{:.decimals$}", v[1]),
        format!("{:.decimals$}", v[2]),
        v[0] / v[1],
        v[0] / v[2]
    );
}

/// The memory rows, in MiB (no ratio: a per-connection growth near zero makes one meaningless).
fn print_memory(params: &Params, memory: &Memory) {
    let mib = |kib: f64| format!("{:.1} MiB", kib / 1024.0);
    let Memory { idle_rss, per_1000 } = memory;
    println!(
        "{:<52} {:>11} {:>11} {:>11}",
        "RSS idle",
        mib(idle_rss[0] as f64),
        mib(idle_rss[1] as f64),
        mib(idle_rss[2] as f64)
    );
    println!(
        "{:<52} {:>11} {:>11} {:>11}",
        format!("RSS per 1,000 idle TLS connections ({} held)", params.idle),
        mib(per_1000[0]),
        mib(per_1000[1]),
        mib(per_1000[2])
    );
}

/// The crypto ceiling: the in-memory handshake's CPU per provider, and each front's CPU per
/// handshake over the in-memory rustls server's (ring, the agent's provider; goal for certreload
/// <= 1.3x).
fn print_ceiling(h: &Handshakes, ceiling: &Ceiling) {
    let providers: Vec<String> = h
        .ceiling
        .first()
        .map(|r| r.iter().map(|c| c.provider.clone()).collect())
        .unwrap_or_default();
    let of = |provider: &str, pick: fn(&CeilingFigure) -> f64| -> Vec<f64> {
        h.ceiling
            .iter()
            .filter_map(|r| r.iter().find(|c| c.provider == provider).map(pick))
            .collect()
    };
    println!(
        "crypto ceiling: full rustls handshakes in memory (no sockets), same certificate and server settings, one thread, CPU per handshake, median of {} rounds{}",
        h.ceiling.len(),
        ceiling.note()
    );
    for provider in &providers {
        println!(
            "  {provider:<10} server {:>7.1} us   client {:>7.1} us",
            median(&of(provider, |c| c.server_us)),
            median(&of(provider, |c| c.client_us))
        );
    }
    if providers.iter().any(|p| p == "aws-lc-rs") {
        let paired: Vec<f64> = of("aws-lc-rs", |c| c.server_us)
            .iter()
            .zip(of("ring", |c| c.server_us))
            .map(|(a, r)| a / r)
            .collect();
        println!(
            "  aws-lc-rs / ring server CPU: {:.3}x (per-round ratio median; rounds: {})",
            median(&paired),
            list(&paired)
        );
    }
    let ring = of("ring", |c| c.server_us);
    for f in 0..FRONTS {
        let paired: Vec<f64> = h.cpu_us[f][STATIC]
            .iter()
            .zip(&ring)
            .map(|(cpu, r)| cpu / r)
            .collect();
        let goal = if f == 0 { " (goal <= 1.3x)" } else { "" };
        println!(
            "  {:<10} server CPU per handshake / in-memory rustls (ring) server: {:.2}x{goal} (rounds: {})",
            h.names[f],
            median(&paired),
            list(&paired)
        );
    }
}

/// Ratios of the rounds, for the reader to see the spread.
fn list(ratios: &[f64]) -> String {
    let items: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
    items.join(" ")
}

/// What rotating costs each front: the median of the per-round ratios (adjacent samples, so
/// drift cancels), and the failures of every run (a reload must not fail a handshake).
fn print_rotation(params: &Params, h: &Handshakes, published: u64) {
    println!(
        "handshakes/s while rotating every {} ms vs without (per-round ratio median):",
        params.rotate_ms
    );
    for f in 0..FRONTS {
        let paired: Vec<f64> = h.rates[f][ROTATING]
            .iter()
            .zip(&h.rates[f][STATIC])
            .map(|(r, s)| (r / s - 1.0) * 100.0)
            .collect();
        let rounds: Vec<String> = paired.iter().map(|p| format!("{p:+.1}")).collect();
        let how = match f {
            0 => format!("Secret-volume swap; {published} generations published"),
            1 => "files replaced + SIGHUP".to_string(),
            _ => "runtime API set/commit ssl cert".to_string(),
        };
        println!(
            "  {:<10} {:+.1} % (rounds: {}); {} rotations ({how}); failed handshakes: {} static, {} rotating",
            h.names[f],
            median(&paired),
            rounds.join(" "),
            h.rotations[f],
            h.failures[f][STATIC],
            h.failures[f][ROTATING]
        );
    }
}

/// Every sample as CSV under target/bench/tls/: the socket runs and the in-memory rounds.
fn write_csv(h: &Handshakes) -> Result<()> {
    let out = crate::report::BenchOut::new("tls")?;
    let mut rows = Vec::new();
    for f in 0..FRONTS {
        for (run, label) in [(STATIC, "static"), (ROTATING, "rotating")] {
            for (round, (rate, cpu)) in h.rates[f][run].iter().zip(&h.cpu_us[f][run]).enumerate() {
                rows.push(vec![
                    (round + 1).to_string(),
                    h.names[f].to_string(),
                    label.to_string(),
                    format!("{rate:.1}"),
                    format!("{cpu:.2}"),
                ]);
            }
        }
    }
    let header = [
        "round",
        "front",
        "run",
        "handshakes_per_s",
        "server_cpu_us_per_handshake",
    ];
    let runs = out.csv("handshakes", &header, &rows)?;
    let rows: Vec<Vec<String>> = h
        .ceiling
        .iter()
        .enumerate()
        .flat_map(|(round, figures)| {
            figures.iter().map(move |c| {
                vec![
                    (round + 1).to_string(),
                    c.provider.clone(),
                    format!("{:.2}", c.server_us),
                    format!("{:.2}", c.client_us),
                ]
            })
        })
        .collect();
    let header = ["round", "provider", "server_cpu_us", "client_cpu_us"];
    let ceiling = out.csv("ceiling", &header, &rows)?;
    println!("samples: {} {}", runs.display(), ceiling.display());
    Ok(())
}

/// One provider's in-memory figures of one round.
struct CeilingFigure {
    provider: String,
    server_us: f64,
    client_us: f64,
}

/// How the in-memory handshakes are run: the `tls-ceiling` binary (ring and aws-lc-rs), or, when
/// it could not be built, ring in this process (why is printed with the table).
enum Ceiling {
    Binary(PathBuf),
    InProcess { why: String },
}

impl Ceiling {
    /// Builds `tls-ceiling` in release mode with the aws-lc-rs provider (a C library: the
    /// first build takes minutes); falls back to ring in this process if that fails.
    fn build() -> Ceiling {
        let built = crate::cmd::run(
            crate::cmd::cargo()
                .args(["build", "--release", "-p", "xtask", "--bin", "tls-ceiling"])
                .args(["--features", "aws-lc"])
                .current_dir(crate::cmd::workspace_root()),
        );
        match built {
            Ok(()) => {
                Ceiling::Binary(crate::cmd::workspace_root().join("target/release/tls-ceiling"))
            }
            Err(e) => {
                eprintln!("xtask: WARNING: tls-ceiling (aws-lc-rs) did not build: {e:#}; ring only, in process");
                Ceiling::InProcess {
                    why: format!("{e:#}"),
                }
            }
        }
    }

    /// The PEM files the binary reads.
    fn write_material(&self, dir: &Path, ca_pem: &str, leaf: &(String, String)) -> Result<()> {
        let dir = dir.join("ceiling");
        fs::create_dir_all(&dir)?;
        fs::write(dir.join("ca.pem"), ca_pem)?;
        fs::write(dir.join("cert.pem"), &leaf.0)?;
        fs::write(dir.join("key.pem"), &leaf.1)?;
        Ok(())
    }

    /// One round: `handshakes` in-memory handshakes per provider.
    fn measure(&self, dir: &Path, round: usize, handshakes: u64) -> Result<Vec<CeilingFigure>> {
        let dir = dir.join("ceiling");
        match self {
            Ceiling::Binary(bin) => {
                let out = crate::cmd::output(
                    Command::new(bin)
                        .arg("--cert")
                        .arg(dir.join("cert.pem"))
                        .arg("--key")
                        .arg(dir.join("key.pem"))
                        .arg("--ca")
                        .arg(dir.join("ca.pem"))
                        .args(["--handshakes", &handshakes.to_string()])
                        .args(["--round", &round.to_string()]),
                )?;
                out.lines()
                    .filter(|l| l.starts_with("ceiling "))
                    .map(parse_line)
                    .collect()
            }
            Ceiling::InProcess { .. } => {
                let read = |name: &str| fs::read_to_string(dir.join(name));
                let (cert, key, ca) = (read("cert.pem")?, read("key.pem")?, read("ca.pem")?);
                let pem = Pem {
                    cert: &cert,
                    key: &key,
                    ca: &ca,
                };
                let s = tls_ceiling::measure(Provider::Ring, &pem, handshakes)?;
                Ok(vec![CeilingFigure {
                    provider: s.provider.to_string(),
                    server_us: s.server_us(),
                    client_us: s.client_us(),
                }])
            }
        }
    }

    /// What the ceiling's heading says about how it was measured.
    fn note(&self) -> String {
        match self {
            Ceiling::Binary(_) => String::new(),
            Ceiling::InProcess { why } => {
                format!(" (ring only, in xtask: aws-lc-rs not built: {why})")
            }
        }
    }
}

/// `ceiling PROVIDER HANDSHAKES SERVER_NS CLIENT_NS`, as `tls-ceiling` prints it.
fn parse_line(line: &str) -> Result<CeilingFigure> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [_, provider, handshakes, server_ns, client_ns] = fields[..] else {
        bail!("tls-ceiling printed {line:?}");
    };
    let n: f64 = handshakes
        .parse()
        .with_context(|| format!("tls-ceiling: {line:?}"))?;
    let us = |ns: &str| -> Result<f64> {
        Ok(ns
            .parse::<f64>()
            .with_context(|| format!("tls-ceiling: {line:?}"))?
            / n
            / 1000.0)
    };
    Ok(CeilingFigure {
        provider: provider.to_string(),
        server_us: us(server_ns)?,
        client_us: us(client_ns)?,
    })
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        // Best effort from a Drop: a scratch directory left behind changes no result.
        fs::remove_dir_all(&self.0).ok();
    }
}
