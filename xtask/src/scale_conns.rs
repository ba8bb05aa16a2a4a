//! The connections curve of `bench scale`: one listener holding 1,000 → 50,000 idle TLS
//! connections. Per size, on a fresh agent: RSS per connection, the time and agent CPU to publish
//! a rotation with no connection and with all of them live (the ratio should stay near 1), the
//! time to drain every stale connection once `stale_grace` has passed, and the handshake p99
//! while the drain runs against the same p99 with the connections idle.
//!
//! The client and the upstream live in this process. The upstream is a Unix socket, so the
//! agent's upstream connections use no ports; the client spreads its connections over several
//! loopback source addresses (127.0.L.1, 127.0.L.2, …), 20,000 each, because one source address
//! has ~28,000 ephemeral ports towards one destination. Once a connection is through, the client
//! drops its TLS state and keeps only the socket, watching for the agent's close: 50,000 client
//! sessions would otherwise cost this process gigabytes.

use std::{
    fs,
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    process::Child,
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc, Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use rustls_pki_types::ServerName;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, UnixListener, UnixStream},
    task::JoinHandle,
};
use tokio_rustls::TlsConnector;

use crate::{
    bench_pki::BenchPki,
    report::{BenchOut, Series},
    scale_bench::{
        cpu_time, draw, growths, lines_with, quantile, rss_kib, scratch_dir, stop_agent, Params,
        RemoveOnDrop, ShellRotatedVolume,
    },
};

/// Connections per loopback source address (below the ~28,000 ephemeral ports of one).
const PER_SOURCE: usize = 20_000;
/// Connections being opened at once.
const OPENERS: usize = 64;
/// Pause between two latency probes, so the prober does not take a CPU of its own.
const PROBE_GAP: Duration = Duration::from_millis(10);

/// Runs the curve over `sizes` and prints its table.
pub(crate) fn run(bin: &Path, sizes: &[usize], params: &Params, out: &BenchOut) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let sizes = feasible(sizes);
    let mut levels = Vec::new();
    for (i, &n) in sizes.iter().enumerate() {
        eprintln!("xtask: scale connections: {n} idle TLS connections");
        levels.push(runtime.block_on(level(bin, n, i, params))?);
    }
    print(&levels, params);
    write(&levels, out)
}

/// Descriptors kept aside (in this process and in the agent) beside two per connection.
const SPARE_FDS: u64 = 2000;

/// The sizes this machine's `RLIMIT_NOFILE` allows: the agent and this process each hold two
/// descriptors per connection, so a size above (hard limit - spare) / 2 cannot be held. Without
/// `CAP_SYS_RESOURCE` the hard limit cannot be raised: such sizes are replaced by the largest
/// that fits, and the table says so.
fn feasible(sizes: &[usize]) -> Vec<usize> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit with a valid pointer to a local struct.
    let hard = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_max
    } else {
        0
    };
    let most = (hard.saturating_sub(SPARE_FDS) / 2) as usize;
    let mut fit: Vec<usize> = sizes.iter().copied().filter(|&n| n <= most).collect();
    if fit.len() < sizes.len() {
        fit.push(most);
        println!(
            "\nconnections: RLIMIT_NOFILE's hard limit here is {hard} (raising it needs CAP_SYS_RESOURCE): at most {most} connections fit; {fit:?} measured instead of {sizes:?}"
        );
    }
    fit
}

/// Everything measured at one size.
struct Level {
    connections: usize,
    rss_before_kib: u64,
    rss_after_kib: u64,
    open_s: f64,
    open_cpu_s: f64,
    publish_idle_ms: Vec<f64>,
    publish_loaded_ms: Vec<f64>,
    publish_cpu_idle_ms: Vec<f64>,
    publish_cpu_loaded_ms: Vec<f64>,
    grace_s: f64,
    drain_after_grace_s: f64,
    drain_cpu_s: f64,
    handshake_idle_ms: Vec<f64>,
    handshake_drain_ms: Vec<f64>,
}

impl Level {
    fn rss_per_connection_kib(&self) -> f64 {
        (self.rss_after_kib as f64 - self.rss_before_kib as f64) / self.connections as f64
    }
}

/// One size on a fresh agent: publish with no connection, open them, RSS, idle handshake
/// latency, publish with all live, then the drain.
async fn level(bin: &Path, n: usize, index: usize, params: &Params) -> Result<Level> {
    let dir = scratch_dir(&format!("connections-{n}"));
    let _cleanup = RemoveOnDrop(dir.clone());
    fs::create_dir_all(&dir)?;
    let rotations = params.rotations();
    let pki = BenchPki::generate("localhost", rotations * 2 + 2)?;
    let connector = crate::tls_load::connector(&pki.ca_pem)?;
    let upstream = dir.join("upstream.sock");
    spawn_upstream(&upstream)?;
    let grace = Duration::from_secs(if params.quick { 3 } else { 5 });
    let mut agent = ListenerAgent::start(bin, &dir, &pki, &upstream, grace)?;
    let net = 10 + index as u8;

    let (publish_idle_ms, publish_cpu_idle_ms, _) = agent.rotations(&pki, 1..=rotations)?;
    let rss_before_kib = rss_kib(agent.pid());
    let (cpu0, t0) = (cpu_time(agent.pid()), Instant::now());
    let held = Held::open(&connector, agent.addr, n, net).await?;
    let (open_s, open_cpu_s) = (
        t0.elapsed().as_secs_f64(),
        (cpu_time(agent.pid()) - cpu0).as_secs_f64(),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after_kib = rss_kib(agent.pid());
    let probe_for = Duration::from_secs(if params.quick { 1 } else { 3 });
    let handshake_idle_ms = probe_until(&connector, agent.addr, net, || false, probe_for).await?;

    // The first of these rotations makes every held connection stale: the drain is due
    // `grace` after its publication (the listener checks every 100 ms).
    let (publish_loaded_ms, publish_cpu_loaded_ms, first) =
        agent.rotations(&pki, rotations + 1..=2 * rotations)?;
    let drain_cpu0 = cpu_time(agent.pid());
    let due = first.context("no rotation")? + grace;
    tokio::time::sleep_until((due - Duration::from_millis(200)).into()).await;
    let closed = held.closed.clone();
    let handshake_drain_ms = probe_until(
        &connector,
        agent.addr,
        net,
        move || closed.load(Ordering::Relaxed) >= n,
        grace + Duration::from_secs(120),
    )
    .await?;
    let last = held.wait_all_closed(Duration::from_secs(120)).await?;
    let drain_cpu_s = (cpu_time(agent.pid()) - drain_cpu0).as_secs_f64();
    agent.stop();
    Ok(Level {
        connections: n,
        rss_before_kib,
        rss_after_kib,
        open_s,
        open_cpu_s,
        publish_idle_ms,
        publish_loaded_ms,
        publish_cpu_idle_ms,
        publish_cpu_loaded_ms,
        grace_s: grace.as_secs_f64(),
        drain_after_grace_s: last.saturating_duration_since(due).as_secs_f64(),
        drain_cpu_s,
        handshake_idle_ms,
        handshake_drain_ms,
    })
}

/// The held connections: each a task waiting for the agent to close its socket.
struct Held {
    tasks: Vec<JoinHandle<()>>,
    closed: Arc<AtomicUsize>,
    last_closed: Arc<Mutex<Option<Instant>>>,
}

impl Held {
    /// Opens `n` connections through `addr` that complete the handshake and reach the upstream.
    async fn open(connector: &TlsConnector, addr: SocketAddr, n: usize, net: u8) -> Result<Held> {
        let next = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let last_closed = Arc::new(Mutex::new(None));
        let openers: Vec<JoinHandle<Result<Vec<JoinHandle<()>>>>> = (0..OPENERS)
            .map(|_| {
                let (connector, next) = (connector.clone(), next.clone());
                let (closed, last_closed) = (closed.clone(), last_closed.clone());
                tokio::spawn(async move {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            return Ok(mine);
                        }
                        let source = Ipv4Addr::new(127, 0, net, 1 + (i / PER_SOURCE) as u8);
                        let tcp = hold_one(&connector, addr, source)
                            .await
                            .with_context(|| format!("connection {i} from {source}"))?;
                        let (closed, last_closed) = (closed.clone(), last_closed.clone());
                        mine.push(tokio::spawn(async move {
                            wait_closed(tcp).await;
                            *last_closed.lock().expect("not poisoned") = Some(Instant::now());
                            closed.fetch_add(1, Ordering::Relaxed);
                        }));
                    }
                })
            })
            .collect();
        let mut tasks = Vec::with_capacity(n);
        for opener in openers {
            tasks.extend(opener.await??);
        }
        Ok(Held {
            tasks,
            closed,
            last_closed,
        })
    }

    /// Waits until the agent has closed every held connection; when the last one closed.
    async fn wait_all_closed(&self, limit: Duration) -> Result<Instant> {
        let deadline = Instant::now() + limit;
        while self.closed.load(Ordering::Relaxed) < self.tasks.len() {
            if Instant::now() > deadline {
                bail!(
                    "{} of {} stale connections still open {limit:?} after the drain was due",
                    self.tasks.len() - self.closed.load(Ordering::Relaxed),
                    self.tasks.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let last = *self.last_closed.lock().expect("not poisoned");
        last.context("no close recorded")
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// One connection from `source` through the handshake and the upstream's reply; returns its
/// socket with the client's TLS state dropped (what is left to watch is the close).
async fn hold_one(
    connector: &TlsConnector,
    addr: SocketAddr,
    source: Ipv4Addr,
) -> Result<tokio::net::TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((source, 0)))?;
    let tcp = socket.connect(addr).await?;
    let mut tls = connector.connect(server_name(), tcp).await?;
    tls.write_all(b"hold\n").await?;
    let mut reply = [0u8; 5];
    tls.read_exact(&mut reply).await?;
    if &reply != b"held\n" {
        bail!("unexpected reply {reply:?}");
    }
    Ok(tls.into_inner().0)
}

/// Reads (and discards: the agent's close_notify among it) until the agent closes the socket.
async fn wait_closed(mut tcp: tokio::net::TcpStream) {
    let mut sink = [0u8; 256];
    while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
}

fn server_name() -> ServerName<'static> {
    ServerName::try_from("localhost").expect("valid DNS name")
}

/// Sequential full handshakes from 127.0.`net`.250, one every [`PROBE_GAP`], until `done` says
/// so or `limit` has passed; their latencies in ms. A failed handshake fails the bench.
async fn probe_until(
    connector: &TlsConnector,
    addr: SocketAddr,
    net: u8,
    done: impl Fn() -> bool,
    limit: Duration,
) -> Result<Vec<f64>> {
    let source = Ipv4Addr::new(127, 0, net, 250);
    let start = Instant::now();
    let mut samples = Vec::new();
    while !done() && start.elapsed() < limit {
        let t0 = Instant::now();
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::from((source, 0)))?;
        let tcp = socket.connect(addr).await?;
        let tls = connector
            .connect(server_name(), tcp)
            .await
            .context("a probe's handshake failed")?;
        samples.push(t0.elapsed().as_secs_f64() * 1e3);
        drop(tls);
        tokio::time::sleep(PROBE_GAP).await;
    }
    Ok(samples)
}

/// The upstream: one line in; `hold` → `held\n`, then wait for the agent to hang up; anything
/// else → `ok\n` and close. Each connection keeps 64 bytes, so 50,000 of them cost little here.
fn spawn_upstream(path: &Path) -> Result<()> {
    let listener = UnixListener::bind(path)?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                // The agent hanging up ends the connection; the client side counts failures.
                serve_upstream(stream).await.ok();
            });
        }
    });
    Ok(())
}

async fn serve_upstream(mut stream: UnixStream) -> std::io::Result<()> {
    let mut line = [0u8; 64];
    let mut len = 0;
    while !line[..len].contains(&b'\n') && len < line.len() {
        match stream.read(&mut line[len..]).await? {
            0 => return Ok(()),
            n => len += n,
        }
    }
    if line[..len].starts_with(b"hold") {
        stream.write_all(b"held\n").await?;
        while stream.read(&mut line).await? > 0 {}
        return Ok(());
    }
    stream.write_all(b"ok\n").await?;
    stream.shutdown().await
}

/// `certreload run` with one listener in front of the Unix upstream, its certificate in a
/// Secret-style volume, `stale_grace` set; its "generation published" lines timed as they come.
struct ListenerAgent {
    child: Child,
    addr: SocketAddr,
    volume: ShellRotatedVolume,
    published: mpsc::Receiver<Instant>,
}

impl ListenerAgent {
    fn start(
        bin: &Path,
        dir: &Path,
        pki: &BenchPki,
        upstream: &Path,
        grace: Duration,
    ) -> Result<ListenerAgent> {
        fs::write(dir.join("ca.crt"), &pki.ca_pem)?;
        let volume = ShellRotatedVolume::create(&dir.join("vol"), &pki.leaves)?;
        let config = dir.join("certreload.toml");
        fs::write(
            &config,
            listener_config(dir, &volume, upstream, grace.as_secs()),
        )?;
        let started = crate::agent_proc::start(
            bin,
            &[],
            &config,
            "warn,certreload::run=info,certreload::reload=info",
        )?;
        let addr = started
            .startup
            .iter()
            .filter(|l| l.contains("listening"))
            .find_map(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix("address="))
                    .and_then(|a| a.parse().ok())
            })
            .context("certreload printed no listening address")?;
        let published = lines_with(started.stderr, &["generation published"]);
        Ok(ListenerAgent {
            child: started.child,
            addr,
            volume,
            published,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Rotates to each of `leaves` in turn, timing each from the rotating shell's `mv -T` to the
    /// "generation published" line: wall ms and agent CPU ms, and when the first was published.
    fn rotations(
        &mut self,
        pki: &BenchPki,
        leaves: std::ops::RangeInclusive<usize>,
    ) -> Result<(Vec<f64>, Vec<f64>, Option<Instant>)> {
        let (mut wall, mut cpu, mut first) = (Vec::new(), Vec::new(), None);
        for i in leaves {
            while self.published.try_recv().is_ok() {}
            let cpu0 = cpu_time(self.pid());
            let t0 = self.volume.rotate_to(i, pki.leaves.len())?;
            let at = self
                .published
                .recv_timeout(Duration::from_secs(10))
                .context("no generation published within 10 s of a rotation")?;
            first.get_or_insert(at);
            wall.push(at.saturating_duration_since(t0).as_secs_f64() * 1e3);
            cpu.push((cpu_time(self.pid()) - cpu0).as_secs_f64() * 1e3);
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok((wall, cpu, first))
    }

    fn stop(mut self) {
        stop_agent(&mut self.child);
    }
}

impl Drop for ListenerAgent {
    fn drop(&mut self) {
        stop_agent(&mut self.child);
    }
}

fn listener_config(
    dir: &Path,
    volume: &ShellRotatedVolume,
    upstream: &Path,
    grace_s: u64,
) -> String {
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
upstream = "unix://{upstream}"
max_connections = 200000
idle_timeout = "1h"
stale_grace = "{grace_s}s"
"#,
        audit = dir.join("audit.jsonl").display(),
        cert = volume.cert().display(),
        key = volume.key().display(),
        ca = dir.join("ca.crt").display(),
        upstream = upstream.display(),
    )
}

/// Raises RLIMIT_NOFILE for this process and the agents it starts: to 1,048,576 (or the
/// kernel's `fs.nr_open`) as root, else the soft limit to the hard one. 50,000 connections take
/// 100,000 descriptors in the agent and as many here.
pub(crate) fn raise_nofile_limit() {
    let nr_open: u64 = fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1 << 20);
    let want = nr_open.min(1 << 20);
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        let raised = libc::rlimit {
            rlim_cur: want.max(lim.rlim_max),
            rlim_max: want.max(lim.rlim_max),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn median(v: &[f64]) -> f64 {
    quantile(v, 0.5)
}

/// The table: per size, then the growth exponents and the goals.
fn print(levels: &[Level], params: &Params) {
    println!(
        "\nLive idle TLS connections through one listener (ECDSA P-256, TLS 1.3, Unix-socket upstream; publish: median of {} rotations, a shell's mv -T over ..data -> \"generation published\"; publish CPU: the agent's, over that time)",
        params.rotations()
    );
    println!(
        "{:>11} {:>9} {:>9} {:>10} {:>10} {:>7} {:>9} {:>9} {:>11} {:>9} {:>9} {:>9} {:>7}",
        "connections",
        "RSS MiB",
        "KiB/conn",
        "open s",
        "CPU/hs ms",
        "",
        "pub ms 0",
        "pub ms N",
        "pub CPU ms N",
        "drain s",
        "hs p99 ms",
        "in drain",
        "ratio"
    );
    for l in levels {
        let (idle99, drain99) = (
            quantile(&l.handshake_idle_ms, 0.99),
            quantile(&l.handshake_drain_ms, 0.99),
        );
        println!(
            "{:>11} {:>9.1} {:>9.1} {:>10.1} {:>10.2} {:>7} {:>9.1} {:>9.1} {:>11.2} {:>9.2} {:>9.1} {:>9.1} {:>6.2}x",
            l.connections,
            l.rss_after_kib as f64 / 1024.0,
            l.rss_per_connection_kib(),
            l.open_s,
            l.open_cpu_s * 1e3 / l.connections as f64,
            "",
            median(&l.publish_idle_ms),
            median(&l.publish_loaded_ms),
            median(&l.publish_cpu_loaded_ms),
            l.drain_after_grace_s,
            idle99,
            drain99,
            drain99 / idle99
        );
    }
    let sizes: Vec<usize> = levels.iter().map(|l| l.connections).collect();
    let col = |f: &dyn Fn(&Level) -> f64| levels.iter().map(f).collect::<Vec<f64>>();
    println!(
        "growth exponents (1 = linear, 0 = constant) over {sizes:?}: RSS added {}; publish time {}; drain time {}; drain CPU {}",
        growths(&sizes, &col(&|l| (l.rss_after_kib - l.rss_before_kib.min(l.rss_after_kib)) as f64)),
        growths(&sizes, &col(&|l| median(&l.publish_loaded_ms))),
        growths(&sizes, &col(&|l| l.drain_after_grace_s)),
        growths(&sizes, &col(&|l| l.drain_cpu_s)),
    );
    for l in levels {
        println!(
            "{:>6} connections: publish with them live / with none: {:.2}x (CPU {:.2} / {:.2} ms); RSS per idle connection {:.1} KiB against the 20 KiB goal ({:.2}x); drain after a {} s grace took {:.2} s and {:.2} s of agent CPU",
            l.connections,
            median(&l.publish_loaded_ms) / median(&l.publish_idle_ms),
            median(&l.publish_cpu_loaded_ms),
            median(&l.publish_cpu_idle_ms),
            l.rss_per_connection_kib(),
            l.rss_per_connection_kib() / 20.0,
            l.grace_s,
            l.drain_after_grace_s,
            l.drain_cpu_s,
        );
    }
}

/// `connections.csv` (one row per size), `connections_samples.csv` (every publish and probe) and
/// the curves.
fn write(levels: &[Level], out: &BenchOut) -> Result<()> {
    let rows: Vec<Vec<String>> = levels
        .iter()
        .map(|l| {
            vec![
                l.connections.to_string(),
                l.rss_before_kib.to_string(),
                l.rss_after_kib.to_string(),
                format!("{:.3}", l.rss_per_connection_kib()),
                format!("{:.3}", l.open_s),
                format!("{:.3}", l.open_cpu_s),
                format!("{:.3}", median(&l.publish_idle_ms)),
                format!("{:.3}", median(&l.publish_loaded_ms)),
                format!("{:.3}", median(&l.publish_cpu_loaded_ms)),
                format!("{:.3}", l.grace_s),
                format!("{:.3}", l.drain_after_grace_s),
                format!("{:.3}", l.drain_cpu_s),
                format!("{:.3}", quantile(&l.handshake_idle_ms, 0.99)),
                format!("{:.3}", quantile(&l.handshake_drain_ms, 0.99)),
            ]
        })
        .collect();
    let path = out.csv(
        "connections",
        &[
            "connections",
            "rss_before_kib",
            "rss_after_kib",
            "rss_per_connection_kib",
            "open_s",
            "open_cpu_s",
            "publish_ms_no_connections",
            "publish_ms_live",
            "publish_cpu_ms_live",
            "stale_grace_s",
            "drain_after_grace_s",
            "drain_cpu_s",
            "handshake_p99_ms_idle",
            "handshake_p99_ms_drain",
        ],
        &rows,
    )?;
    println!("{}", path.display());
    let mut samples = Vec::new();
    for l in levels {
        let kinds: [(&str, &Vec<f64>); 6] = [
            ("publish_ms_no_connections", &l.publish_idle_ms),
            ("publish_ms_live", &l.publish_loaded_ms),
            ("publish_cpu_ms_no_connections", &l.publish_cpu_idle_ms),
            ("publish_cpu_ms_live", &l.publish_cpu_loaded_ms),
            ("handshake_ms_idle", &l.handshake_idle_ms),
            ("handshake_ms_drain", &l.handshake_drain_ms),
        ];
        for (kind, values) in kinds {
            samples.extend(values.iter().map(|v| {
                vec![
                    l.connections.to_string(),
                    kind.to_string(),
                    format!("{v:.4}"),
                ]
            }));
        }
    }
    out.csv(
        "connections_samples",
        &["connections", "measure", "value"],
        &samples,
    )?;
    let curve = |name: &str, f: &dyn Fn(&Level) -> f64| Series {
        name: name.to_string(),
        points: levels
            .iter()
            .map(|l| (l.connections as f64, f(l)))
            .collect(),
    };
    draw(
        out,
        "connections",
        "Cost against live idle TLS connections (one listener)",
        "live idle TLS connections",
        "cost",
        vec![
            curve("RSS added, MiB", &|l| {
                (l.rss_after_kib as f64 - l.rss_before_kib as f64) / 1024.0
            }),
            curve("RSS per connection, KiB", &|l| l.rss_per_connection_kib()),
            curve("publish a rotation, ms", &|l| median(&l.publish_loaded_ms)),
            curve("drain after grace, s", &|l| l.drain_after_grace_s),
            curve("handshake p99 in drain, ms", &|l| {
                quantile(&l.handshake_drain_ms, 0.99)
            }),
        ],
    )?;
    Ok(())
}
