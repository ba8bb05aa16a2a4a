//! The client side of `bench tls` and the upstream behind the fronts: tokio + rustls in this
//! process, session resumption off so every connection is a full handshake, the same load for
//! every front.

use std::{
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
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

/// A client that trusts `ca_pem` and never resumes: every connection is a full handshake.
pub(crate) fn connector(ca_pem: &str) -> Result<TlsConnector> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
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

/// The upstream both proxies forward to. One line in: `bytes N` → N bytes then close;
/// `hold` → `held\n`, then wait for the client to go; anything else → `ok\n` then close.
pub(crate) async fn spawn_upstream() -> Result<SocketAddr> {
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
pub(crate) async fn probe(connector: &TlsConnector, addr: SocketAddr) -> Result<String> {
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

/// One handshake-rate sample.
pub(crate) struct Sample {
    /// Completed connections per second.
    pub per_second: f64,
    /// Completed connections.
    pub connections: u64,
    /// Connections that failed.
    pub failures: u64,
}

/// `concurrency` clients doing full connections back to back for `seconds`.
pub(crate) async fn handshakes(
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
    let connections = done.load(Ordering::Relaxed);
    Sample {
        per_second: connections as f64 / start.elapsed().as_secs_f64(),
        connections,
        failures: failed.load(Ordering::Relaxed),
    }
}

/// Opens `n` connections that complete the handshake and reach the upstream, then sit idle.
pub(crate) async fn hold(
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
pub(crate) async fn bulk(
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
pub(crate) fn openssl_s_time(addr: SocketAddr, dir: &Path, seconds: u64) -> Result<f64> {
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
pub(crate) fn raise_nofile_limit() {
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

/// Waits until something accepts TCP connections on `addr` (a peer that has just started).
pub(crate) async fn wait_until_accepting(addr: SocketAddr) -> Result<()> {
    for _ in 0..200 {
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    bail!("nothing accepts on {addr}")
}
