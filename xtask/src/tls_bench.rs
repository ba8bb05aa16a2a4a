//! `cargo xtask bench tls`: certreload's TLS front against nginx terminating TLS in its stream
//! module, with the same ECDSA P-256 certificate, the same upstream and the same client, in the
//! same run, measurements interleaved round by round.
//!
//! The client and the upstream live in this process (tokio + rustls, session resumption off, so
//! every connection is a full handshake); both proxies see exactly the same load.

use std::{
    fs,
    io::BufRead,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use rustls::{client::Resumption, ClientConfig, RootCertStore};
use rustls_pki_types::{pem::PemObject, CertificateDer, ServerName};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader as AsyncBufReader},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::TlsConnector;

use crate::{bench_pki::BenchPki, secret_volume::SecretVolume};

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
}

/// Runs the benchmark and prints its tables.
pub(crate) fn run(bin: &Path, params: &Params) -> Result<()> {
    raise_nofile_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(bench(bin, params))
}

/// Material of one run: a CA and server certificates for `localhost`, all ECDSA P-256.
struct Material {
    ca_pem: String,
    leaves: Vec<(String, String)>,
}

impl Material {
    fn generate(leaves: usize) -> Result<Material> {
        let BenchPki { ca_pem, leaves } = BenchPki::generate("localhost", leaves)?;
        Ok(Material { ca_pem, leaves })
    }

    /// A client that trusts the CA and never resumes: every connection is a full handshake.
    fn connector(&self) -> Result<TlsConnector> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(cert?)?;
        }
        let mut config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth();
        config.resumption = Resumption::disabled();
        Ok(TlsConnector::from(Arc::new(config)))
    }
}

/// Runs the whole comparison: both proxies started on the same material and upstream, each
/// measure taken in turn, then the table. Fails if any handshake failed, so a broken run is not
/// mistaken for a slow one.
async fn bench(bin: &Path, params: &Params) -> Result<()> {
    let dir = scratch_dir();
    let _cleanup = RemoveOnDrop(dir.clone());
    fs::create_dir_all(&dir)?;
    let material = Material::generate(12)?;
    let connector = material.connector()?;
    let upstream = spawn_upstream().await?;

    let agent = Agent::start(bin, &dir, &material, upstream)?;
    let nginx = Nginx::start(&dir, &material, upstream)?;
    wait_until_accepting(agent.addr).await?;
    wait_until_accepting(nginx.addr).await?;
    let targets = [("certreload", agent.addr), ("nginx", nginx.addr)];
    for (name, addr) in targets {
        let suite = probe(&connector, addr).await?;
        println!("{name:<10} on {addr}: {suite}");
    }

    // Memory first, on fresh processes.
    let memory = measure_memory(&connector, &agent, &nginx, params).await?;
    let handshakes = measure_handshakes(&connector, &agent, &nginx, &material, params).await?;
    let published = agent.generations_published();
    let s_time = measure_s_time(&targets, &dir, params)?;
    let (single, parallel) = measure_bulk(&connector, &targets, params).await?;

    print_table(params, &handshakes, &s_time, &single, &parallel, &memory);
    print_rotation(params, &handshakes, published);
    agent.stop();
    drop(nginx);
    let failures = handshakes.failures;
    if failures.iter().any(|&f| f > 0) {
        bail!("handshakes failed during the benchmark: {failures:?}");
    }
    Ok(())
}

/// Where the proxies' files go: /dev/shm where there is one, so that disk I/O does not enter
/// the figures.
fn scratch_dir() -> PathBuf {
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    base.join(format!("certreload-tls-bench-{}", std::process::id()))
}

/// Resident memory of certreload (index 0) and nginx (index 1), in KiB when idle and per 1,000
/// idle TLS connections.
struct Memory {
    idle_rss: [u64; 2],
    per_1000: [f64; 2],
}

/// Memory idle and per connection, each proxy in turn holding `params.idle` connections: the
/// growth while they are held, so the baseline each process starts with cancels.
async fn measure_memory(
    connector: &TlsConnector,
    agent: &Agent,
    nginx: &Nginx,
    params: &Params,
) -> Result<Memory> {
    let idle_rss = [rss_kib(&agent.pids()), rss_kib(&nginx.pids())];
    let mut per_1000 = [0.0; 2];
    let targets = [("certreload", agent.addr), ("nginx", nginx.addr)];
    for (i, (name, addr)) in targets.iter().enumerate() {
        let pids = if i == 0 { agent.pids() } else { nginx.pids() };
        let before = rss_kib(&pids);
        let held = hold(connector, *addr, params.idle)
            .await
            .with_context(|| format!("holding {} idle connections on {name}", params.idle))?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let after = rss_kib(&pids);
        per_1000[i] = (after as f64 - before as f64) / params.idle as f64 * 1000.0;
        drop(held);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(Memory { idle_rss, per_1000 })
}

/// Handshake rates per round for the three slots (certreload, nginx, certreload while rotating),
/// the failures in each, and how many rotations the rotating slot made.
struct Handshakes {
    rates: [Vec<f64>; 3],
    failures: [u64; 3],
    rotations: usize,
}

/// Handshake rate: certreload, nginx, certreload while rotating; interleaved, the two certreload
/// slots swapping order every round so neither always follows nginx.
async fn measure_handshakes(
    connector: &TlsConnector,
    agent: &Agent,
    nginx: &Nginx,
    material: &Material,
    params: &Params,
) -> Result<Handshakes> {
    let mut rates: [Vec<f64>; 3] = Default::default();
    let mut failures = [0u64; 3];
    let mut rotations = 0usize;
    for round in 0..params.rounds {
        let order = if round % 2 == 0 { [0, 1, 2] } else { [2, 1, 0] };
        for slot in order {
            let addr = if slot == 1 { nginx.addr } else { agent.addr };
            let rotating = (slot == 2).then(|| agent.rotate_every(params.rotate_ms, material));
            let sample = handshakes(connector, addr, params.concurrency, params.seconds).await;
            if let Some(rotator) = rotating {
                rotations += rotator.stop()?;
            }
            rates[slot].push(sample.per_second);
            failures[slot] += sample.failures;
        }
        eprintln!(
            "xtask: round {}: handshakes/s certreload {:.0}, nginx {:.0}, certreload rotating {:.0}",
            round + 1,
            rates[0][round],
            rates[1][round],
            rates[2][round]
        );
    }
    Ok(Handshakes {
        rates,
        failures,
        rotations,
    })
}

/// openssl s_time: a second, independent client (one sequential connection at a time), so the
/// rate does not rest on our own client alone.
fn measure_s_time(
    targets: &[(&str, SocketAddr); 2],
    dir: &Path,
    params: &Params,
) -> Result<[Vec<f64>; 2]> {
    let mut s_time = [Vec::new(), Vec::new()];
    for _ in 0..params.rounds {
        for (i, (_, addr)) in targets.iter().enumerate() {
            s_time[i].push(openssl_s_time(*addr, dir, params.seconds)?);
        }
    }
    Ok(s_time)
}

/// Bulk MiB/s: one connection, then `parallel` connections, same total, per round: the data
/// path once the handshake is paid.
async fn measure_bulk(
    connector: &TlsConnector,
    targets: &[(&str, SocketAddr); 2],
    params: &Params,
) -> Result<([Vec<f64>; 2], [Vec<f64>; 2])> {
    let mut single = [Vec::new(), Vec::new()];
    let mut parallel = [Vec::new(), Vec::new()];
    for _ in 0..params.rounds {
        for (i, (_, addr)) in targets.iter().enumerate() {
            single[i].push(bulk(connector, *addr, 1, params.bulk_bytes).await?);
            parallel[i].push(bulk(connector, *addr, params.parallel, params.bulk_bytes).await?);
        }
    }
    Ok((single, parallel))
}

/// The median of the rounds: one slow round (a noisy neighbour) does not move it.
fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The side-by-side table: each measure for certreload and nginx and their ratio.
fn print_table(
    params: &Params,
    handshakes: &Handshakes,
    s_time: &[Vec<f64>; 2],
    single: &[Vec<f64>; 2],
    parallel: &[Vec<f64>; 2],
    memory: &Memory,
) {
    let rates = &handshakes.rates;
    println!();
    println!(
        "certreload bench tls: ECDSA P-256, TLS 1.3, no resumption, same upstream, {} rounds interleaved, median",
        params.rounds
    );
    println!(
        "{:<52} {:>12} {:>12} {:>8}",
        "measure", "certreload", "nginx", "ratio"
    );
    let row = |what: &str, a: &[f64], n: &[f64]| print_row(what, median(a), median(n));
    row(
        &format!(
            "handshakes/s ({} clients, {} s)",
            params.concurrency, params.seconds
        ),
        &rates[0],
        &rates[1],
    );
    row(
        "handshakes/s (openssl s_time -new, 1 client)",
        &s_time[0],
        &s_time[1],
    );
    let gib = params.bulk_bytes as f64 / (1u64 << 30) as f64;
    row(
        &format!("MiB/s, {gib:.2} GiB over 1 connection"),
        &single[0],
        &single[1],
    );
    row(
        &format!("MiB/s, {gib:.2} GiB over {} connections", params.parallel),
        &parallel[0],
        &parallel[1],
    );
    print_memory(params, memory);
    println!();
}

/// One row of the table: the two figures and certreload's as a multiple of nginx's.
fn print_row(what: &str, a: f64, n: f64) {
    println!(
        "{what:<52} {:>12} {:>12} {:>7.3}x",
        format!("{a:.0}"),
        format!("{n:.0}"),
        a / n
    );
}

/// The memory rows, in MiB (no ratio: a per-connection growth near zero makes one meaningless).
fn print_memory(params: &Params, memory: &Memory) {
    let Memory { idle_rss, per_1000 } = memory;
    println!(
        "{:<52} {:>12} {:>12}",
        "RSS idle",
        format!("{:.1} MiB", idle_rss[0] as f64 / 1024.0),
        format!("{:.1} MiB", idle_rss[1] as f64 / 1024.0)
    );
    println!(
        "{:<52} {:>12} {:>12}",
        format!("RSS per 1,000 idle TLS connections ({} held)", params.idle),
        format!("{:.1} MiB", per_1000[0] / 1024.0),
        format!("{:.1} MiB", per_1000[1] / 1024.0)
    );
}

/// What rotating costs: the median of the per-round ratios (adjacent samples, so drift cancels),
/// and the failures of every slot (a reload must not fail a handshake).
fn print_rotation(params: &Params, handshakes: &Handshakes, published: u64) {
    let Handshakes {
        rates,
        failures,
        rotations,
    } = handshakes;
    let paired: Vec<f64> = rates[2].iter().zip(&rates[0]).map(|(r, s)| r / s).collect();
    println!(
        "certreload handshakes/s while rotating every {} ms: {:.0} vs {:.0} without; per-round ratio median {:+.1} % (rounds: {}); {rotations} rotations, {published} generations published",
        params.rotate_ms,
        median(&rates[2]),
        median(&rates[0]),
        (median(&paired) - 1.0) * 100.0,
        paired.iter().map(|r| format!("{:+.1}", (r - 1.0) * 100.0)).collect::<Vec<_>>().join(" ")
    );
    println!(
        "failed handshakes: certreload {}, nginx {}, certreload while rotating {}",
        failures[0], failures[1], failures[2]
    );
}

/// The upstream both proxies forward to. One line in: `bytes N` → N bytes then close;
/// `hold` → `held\n`, then wait for the client to go; anything else → `ok\n` then close.
async fn spawn_upstream() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                // A proxy that hangs up ends the connection; the load side counts failures.
                serve_upstream(stream).await.ok();
            });
        }
    });
    Ok(addr)
}

async fn serve_upstream(stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut stream = AsyncBufReader::new(stream);
    let mut line = String::new();
    stream.read_line(&mut line).await?;
    let line = line.trim();
    if let Some(n) = line.strip_prefix("bytes ") {
        let mut left: u64 = n.parse().unwrap_or(0);
        let chunk = vec![0x5au8; 64 * 1024];
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            stream.write_all(&chunk[..n]).await?;
            left -= n as u64;
        }
    } else if line == "hold" {
        stream.write_all(b"held\n").await?;
        let mut sink = [0u8; 64];
        while stream.read(&mut sink).await? > 0 {}
        return Ok(());
    } else {
        stream.write_all(b"ok\n").await?;
    }
    stream.shutdown().await
}

fn server_name() -> ServerName<'static> {
    ServerName::try_from("localhost").expect("valid DNS name")
}

/// Negotiated protocol and suite, so the table says what was compared.
async fn probe(connector: &TlsConnector, addr: SocketAddr) -> Result<String> {
    let tcp = TcpStream::connect(addr).await?;
    let tls = connector.connect(server_name(), tcp).await?;
    let conn = tls.get_ref().1;
    Ok(format!(
        "{:?}, {:?}, key exchange {:?}",
        conn.protocol_version().context("no version")?,
        conn.negotiated_cipher_suite().context("no suite")?.suite(),
        conn.negotiated_key_exchange_group().map(|g| g.name())
    ))
}

/// One full connection: handshake, a request through the proxy, its response, close.
async fn one_connection(connector: &TlsConnector, addr: SocketAddr) -> Result<()> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let mut tls = connector.connect(server_name(), tcp).await?;
    tls.write_all(b"ping\n").await?;
    let mut got = Vec::with_capacity(4);
    let mut buf = [0u8; 16];
    loop {
        match tls.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            // A peer closing TCP right after the response without close_notify still answered.
            Err(e) if got == b"ok\n" && e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e.into()),
        }
        if got.len() >= 3 {
            break;
        }
    }
    if got != b"ok\n" {
        bail!("unexpected response {got:?}");
    }
    Ok(())
}

struct Sample {
    per_second: f64,
    failures: u64,
}

/// `concurrency` clients doing full connections back to back for `seconds`.
async fn handshakes(
    connector: &TlsConnector,
    addr: SocketAddr,
    concurrency: usize,
    seconds: u64,
) -> Sample {
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (connector, done, failed, stop) = (
                connector.clone(),
                done.clone(),
                failed.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match one_connection(&connector, addr).await {
                        Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            if failed.fetch_add(1, Ordering::Relaxed) < 3 {
                                eprintln!("xtask: connection to {addr} failed: {e:#}");
                            }
                            0
                        }
                    };
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        // A connection's failure is counted in `failed`; a panic is a bug that leaves the
        // counts incomplete, so no rate is printed from them.
        t.await.expect("a load task panicked");
    }
    Sample {
        per_second: done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64(),
        failures: failed.load(Ordering::Relaxed),
    }
}

/// Opens `n` connections that complete the handshake and reach the upstream, then sit idle.
async fn hold(
    connector: &TlsConnector,
    addr: SocketAddr,
    n: usize,
) -> Result<Vec<tokio_rustls::client::TlsStream<TcpStream>>> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let tcp = TcpStream::connect(addr).await?;
        let mut tls = connector.connect(server_name(), tcp).await?;
        tls.write_all(b"hold\n").await?;
        let mut buf = [0u8; 5];
        tls.read_exact(&mut buf).await?;
        if &buf != b"held\n" {
            bail!("unexpected reply {buf:?}");
        }
        held.push(tls);
    }
    Ok(held)
}

/// Downloads `total` bytes through `addr` over `connections` connections; MiB/s.
async fn bulk(
    connector: &TlsConnector,
    addr: SocketAddr,
    connections: usize,
    total: u64,
) -> Result<f64> {
    let each = total / connections as u64;
    let start = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let connector = connector.clone();
            tokio::spawn(async move {
                let tcp = TcpStream::connect(addr).await?;
                let mut tls = connector.connect(server_name(), tcp).await?;
                tls.write_all(format!("bytes {each}\n").as_bytes()).await?;
                let mut buf = vec![0u8; 256 * 1024];
                let mut got = 0u64;
                while got < each {
                    match tls.read(&mut buf).await? {
                        0 => break,
                        n => got += n as u64,
                    }
                }
                if got != each {
                    bail!("received {got} of {each} bytes");
                }
                Ok::<_, anyhow::Error>(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    Ok((each * connections as u64) as f64 / (1 << 20) as f64 / start.elapsed().as_secs_f64())
}

/// `openssl s_time -new`: sequential full handshakes for `seconds`; connections per second.
fn openssl_s_time(addr: SocketAddr, dir: &Path, seconds: u64) -> Result<f64> {
    let start = Instant::now();
    let out = Command::new("openssl")
        .args(["s_time", "-new", "-connect", &addr.to_string(), "-time"])
        .arg(seconds.to_string())
        .arg("-CAfile")
        .arg(dir.join("ca.crt"))
        .stderr(Stdio::null())
        .output()
        .context("running openssl s_time")?;
    let wall = start.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&out.stdout);
    let count: f64 = text
        .lines()
        .find_map(|l| {
            l.split_once(" connections in ")
                .map(|(n, _)| n.trim().to_string())
        })
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("openssl s_time printed no count: {text}"))?;
    Ok(count / wall)
}

/// Raises RLIMIT_NOFILE to its hard limit: this process and its children hold thousands of sockets.
fn raise_nofile_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Resident set size of `pids` together, KiB.
fn rss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .sum()
}

async fn wait_until_accepting(addr: SocketAddr) -> Result<()> {
    for _ in 0..200 {
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    bail!("nothing accepts on {addr}")
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        // Best effort from a Drop: a scratch directory left behind changes no result.
        fs::remove_dir_all(&self.0).ok();
    }
}

/// certreload fronting the upstream, its certificate in a Secret-style volume.
struct Agent {
    child: Child,
    addr: SocketAddr,
    volume: Arc<std::sync::Mutex<SecretVolume>>,
    published: Arc<AtomicU64>,
}

impl Agent {
    fn start(bin: &Path, dir: &Path, material: &Material, upstream: SocketAddr) -> Result<Agent> {
        fs::write(dir.join("ca.crt"), &material.ca_pem)?;
        let volume = SecretVolume::create(
            &dir.join("vol"),
            &material.leaves[0].0,
            &material.leaves[0].1,
        )?;
        let config = dir.join("certreload.toml");
        fs::write(
            &config,
            format!(
                r#"[agent]
admin = "127.0.0.1:0"
[audit]
path = "{audit}"
[[bundle]]
name = "bench"
kind = "server"
cert = "{cert}"
key = "{key}"
ca = "{ca}"
[[listener]]
name = "bench"
listen = "127.0.0.1:0"
bundle = "bench"
upstream = "tcp://{upstream}"
max_connections = 100000
idle_timeout = "1h"
"#,
                audit = dir.join("audit.jsonl").display(),
                cert = volume.cert().display(),
                key = volume.key().display(),
                ca = dir.join("ca.crt").display(),
            ),
        )?;
        let crate::agent_proc::Started {
            child,
            stderr,
            startup,
        } = crate::agent_proc::start(
            bin,
            &[],
            &config,
            "warn,certreload::run=info,certreload::reload=info",
        )?;
        let addr: Option<SocketAddr> =
            startup
                .iter()
                .filter(|l| l.contains("listening"))
                .find_map(|l| {
                    l.split_whitespace()
                        .find_map(|w| w.strip_prefix("address="))
                        .and_then(|a| a.parse().ok())
                });
        let addr = addr.context("certreload printed no listening address")?;
        let published = Arc::new(AtomicU64::new(0));
        let counter = published.clone();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if line.contains("generation published") {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Ok(Agent {
            child,
            addr,
            volume: Arc::new(std::sync::Mutex::new(volume)),
            published,
        })
    }

    fn pids(&self) -> Vec<u32> {
        vec![self.child.id()]
    }

    fn generations_published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    /// Rotates the certificate every `period_ms` on a thread until the rotator is stopped,
    /// cycling through the material's leaves (each differs from the one before).
    fn rotate_every(&self, period_ms: u64, material: &Material) -> Rotator {
        let stop = Arc::new(AtomicBool::new(false));
        let (volume, flag) = (self.volume.clone(), stop.clone());
        let leaves = material.leaves.clone();
        let thread = std::thread::spawn(move || -> Result<usize> {
            let mut n = 0;
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(period_ms));
                n += 1;
                let (cert, key) = &leaves[n % leaves.len()];
                volume
                    .lock()
                    .map_err(|_| anyhow::anyhow!("volume lock poisoned"))?
                    .rotate(cert, key)?;
            }
            Ok(n)
        });
        Rotator { stop, thread }
    }

    fn stop(mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        // Reaps it; its exit status is not part of the measurement.
        self.child.wait().ok();
    }
}

struct Rotator {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<usize>>,
}

impl Rotator {
    fn stop(self) -> Result<usize> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("rotation thread panicked"))?
    }
}

/// nginx terminating TLS in the stream module, configured like the agent: same certificate,
/// no session cache or tickets, one worker per CPU, forwarding to the same upstream.
struct Nginx {
    child: Child,
    addr: SocketAddr,
}

impl Nginx {
    fn start(dir: &Path, material: &Material, upstream: SocketAddr) -> Result<Nginx> {
        let nginx_dir = dir.join("nginx");
        fs::create_dir_all(nginx_dir.join("logs"))?;
        fs::write(nginx_dir.join("cert.pem"), &material.leaves[0].0)?;
        fs::write(nginx_dir.join("key.pem"), &material.leaves[0].1)?;
        let addr = free_port()?;
        fs::write(
            nginx_dir.join("nginx.conf"),
            format!(
                r#"load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes auto;
worker_rlimit_nofile 65536;
pid {dir}/nginx.pid;
error_log {dir}/logs/error.log warn;
events {{ worker_connections 16384; }}
stream {{
    server {{
        listen {addr} ssl;
        ssl_certificate {dir}/cert.pem;
        ssl_certificate_key {dir}/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache off;
        ssl_session_tickets off;
        proxy_pass {upstream};
    }}
}}
"#,
                dir = nginx_dir.display()
            ),
        )?;
        let child = Command::new("/usr/sbin/nginx")
            .arg("-p")
            .arg(&nginx_dir)
            .arg("-e")
            .arg(nginx_dir.join("logs/error.log"))
            .arg("-c")
            .arg(nginx_dir.join("nginx.conf"))
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .spawn()
            .context("starting nginx (installed by `cargo xtask setup`)")?;
        Ok(Nginx { child, addr })
    }

    /// The master and its workers.
    fn pids(&self) -> Vec<u32> {
        let master = self.child.id();
        let mut pids = vec![master];
        if let Ok(entries) = fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
                    continue;
                };
                // Fields after the parenthesised comm: state, ppid, ...
                let ppid = stat
                    .rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                    .and_then(|p| p.parse::<u32>().ok());
                if ppid == Some(master) {
                    pids.push(pid);
                }
            }
        }
        pids
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child; SIGQUIT is nginx's graceful stop.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGQUIT) };
        // Reaps it; its exit status is not part of the measurement.
        self.child.wait().ok();
    }
}

fn free_port() -> Result<SocketAddr> {
    let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(probe.local_addr()?)
}
