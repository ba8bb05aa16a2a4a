//! The crypto ceiling of `bench tls`: full rustls handshakes with nothing but memory between the
//! client and the server (no sockets, no scheduler, no upstream), with the same ECDSA P-256
//! certificate and the same server settings as the agent's listener (safe default versions, no
//! client auth, a session cache and a ticketer per configuration: agent/src/tls/server_config.rs).
//! The listener's CPU per handshake, read from /proc during the socket run, is then a multiple of
//! what the handshake itself costs on this machine.
//!
//! Each side's CPU is its thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`) around its own calls, less
//! the cost of reading the clock, so the server's share is known apart from the client's.
//!
//! Compiled into xtask (ring, the agent's provider) and into the `tls-ceiling` binary built with
//! the `aws-lc` feature, which measures aws-lc-rs (rustls' default provider) too, interleaved
//! with ring in one process.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use rustls::{
    client::Resumption,
    crypto::CryptoProvider,
    server::{ProducesTickets, ServerSessionMemoryCache},
    ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection,
};
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName};

/// The agent's per-configuration session cache size (agent/src/tls/server_config.rs).
const SESSION_CACHE_SIZE: usize = 4096;

/// A rustls crypto provider under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Provider {
    /// *ring*: the agent's provider.
    Ring,
    /// aws-lc-rs: rustls' default provider (only with the `aws-lc` feature).
    #[cfg(feature = "aws-lc")]
    AwsLcRs,
}

impl Provider {
    /// The name printed in tables and passed between `bench tls` and `tls-ceiling`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Provider::Ring => "ring",
            #[cfg(feature = "aws-lc")]
            Provider::AwsLcRs => "aws-lc-rs",
        }
    }

    fn crypto(self) -> CryptoProvider {
        match self {
            Provider::Ring => rustls::crypto::ring::default_provider(),
            #[cfg(feature = "aws-lc")]
            Provider::AwsLcRs => rustls::crypto::aws_lc_rs::default_provider(),
        }
    }

    fn ticketer(self) -> Result<Arc<dyn ProducesTickets>> {
        Ok(match self {
            Provider::Ring => rustls::crypto::ring::Ticketer::new()?,
            #[cfg(feature = "aws-lc")]
            Provider::AwsLcRs => rustls::crypto::aws_lc_rs::Ticketer::new()?,
        })
    }
}

/// The PEM material both sides use: the server's certificate and key, the CA the client trusts.
pub(crate) struct Pem<'a> {
    /// The leaf certificate.
    pub cert: &'a str,
    /// Its private key.
    pub key: &'a str,
    /// The CA that signed it.
    pub ca: &'a str,
}

/// `handshakes` full handshakes with one provider and the CPU each side spent on them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    /// The provider both sides used.
    pub provider: &'static str,
    /// Completed handshakes.
    pub handshakes: u64,
    /// Server-side thread CPU, nanoseconds, all handshakes together.
    pub server_ns: u64,
    /// Client-side thread CPU, nanoseconds, all handshakes together.
    pub client_ns: u64,
}

impl Sample {
    /// Server CPU per handshake, microseconds.
    pub(crate) fn server_us(&self) -> f64 {
        self.server_ns as f64 / self.handshakes as f64 / 1000.0
    }

    /// Client CPU per handshake, microseconds.
    pub(crate) fn client_us(&self) -> f64 {
        self.client_ns as f64 / self.handshakes as f64 / 1000.0
    }
}

/// Measures `handshakes` full handshakes (TLS 1.3, no resumption, like `bench tls`'s client)
/// between a server configured like the agent's listener and a client trusting `pem.ca`.
pub(crate) fn measure(provider: Provider, pem: &Pem<'_>, handshakes: u64) -> Result<Sample> {
    let server = server_config(provider, pem)?;
    let client = client_config(provider, pem)?;
    let name = ServerName::try_from("localhost")?;
    let mut clock = SideClock::calibrated();
    // One untimed handshake first: lazy initialisation (CPU feature detection, tables) is not
    // part of a handshake's cost.
    one_handshake(&server, &client, &name, &mut SideClock::calibrated())?;
    for _ in 0..handshakes {
        one_handshake(&server, &client, &name, &mut clock)?;
    }
    Ok(Sample {
        provider: provider.name(),
        handshakes,
        server_ns: clock.server_ns,
        client_ns: clock.client_ns,
    })
}

/// The agent's listener configuration (agent/src/tls/server_config.rs, no client CA) on
/// `provider`.
fn server_config(provider: Provider, pem: &Pem<'_>) -> Result<Arc<ServerConfig>> {
    let chain = CertificateDer::pem_slice_iter(pem.cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("the ceiling's certificate PEM")?;
    let key = PrivateKeyDer::from_pem_slice(pem.key.as_bytes()).context("the ceiling's key PEM")?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider.crypto()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);
    config.ticketer = provider.ticketer()?;
    Ok(Arc::new(config))
}

/// `bench tls`'s client: trusts the CA, never resumes (every handshake is a full one).
fn client_config(provider: Provider, pem: &Pem<'_>) -> Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem.ca.as_bytes()) {
        roots.add(cert.context("the ceiling's CA PEM")?)?;
    }
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider.crypto()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// One handshake, each flight copied through a buffer until neither side has anything to send;
/// each side's calls (its connection's creation and drop included) timed on its own account.
fn one_handshake(
    server_config: &Arc<ServerConfig>,
    client_config: &Arc<ClientConfig>,
    name: &ServerName<'static>,
    clock: &mut SideClock,
) -> Result<()> {
    let mut client = clock.client(|| ClientConnection::new(client_config.clone(), name.clone()))?;
    let mut server = clock.server(|| ServerConnection::new(server_config.clone()))?;
    let mut wire = Vec::with_capacity(16 * 1024);
    // A TLS 1.3 full handshake is 1.5 round trips plus the tickets; a loop that runs longer
    // than this is a bug, not a slow handshake.
    for _ in 0..16 {
        clock.client(|| flush(&mut client, &mut wire))?;
        clock.server(|| deliver(&mut server, &wire))?;
        clock.server(|| flush(&mut server, &mut wire))?;
        clock.client(|| deliver(&mut client, &wire))?;
        let idle = !client.wants_write() && !server.wants_write();
        if idle && !client.is_handshaking() && !server.is_handshaking() {
            clock.server(|| drop(server));
            clock.client(|| drop(client));
            return Ok(());
        }
    }
    bail!("in-memory handshake did not complete in 16 exchanges")
}

/// Everything `conn` has to send, into `wire` (cleared first).
fn flush<D>(conn: &mut rustls::ConnectionCommon<D>, wire: &mut Vec<u8>) -> Result<()> {
    wire.clear();
    while conn.wants_write() {
        conn.write_tls(wire)?;
    }
    Ok(())
}

/// `wire` into `conn`, processed record by record.
fn deliver<D>(conn: &mut rustls::ConnectionCommon<D>, wire: &[u8]) -> Result<()> {
    let mut rest = wire;
    while !rest.is_empty() {
        conn.read_tls(&mut rest)?;
        conn.process_new_packets()?;
    }
    Ok(())
}

/// Thread CPU time charged to the server or the client, less the clock's own cost.
struct SideClock {
    server_ns: u64,
    client_ns: u64,
    /// What one reading of the clock adds to an interval, nanoseconds.
    overhead_ns: u64,
}

impl SideClock {
    /// A clock that knows what reading itself costs on this machine (a system call on most
    /// kernels: CLOCK_THREAD_CPUTIME_ID has no vDSO fast path).
    fn calibrated() -> SideClock {
        const READS: u64 = 10_000;
        let start = thread_cpu_ns();
        for _ in 0..READS {
            std::hint::black_box(thread_cpu_ns());
        }
        let overhead_ns = thread_cpu_ns().saturating_sub(start) / (READS + 1);
        SideClock {
            server_ns: 0,
            client_ns: 0,
            overhead_ns,
        }
    }

    fn server<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let (value, ns) = self.time(f);
        self.server_ns += ns;
        value
    }

    fn client<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let (value, ns) = self.time(f);
        self.client_ns += ns;
        value
    }

    fn time<T>(&self, f: impl FnOnce() -> T) -> (T, u64) {
        let start = thread_cpu_ns();
        let value = f();
        let spent = thread_cpu_ns().saturating_sub(start);
        (value, spent.saturating_sub(self.overhead_ns))
    }
}

/// This thread's CPU time, nanoseconds.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the local timespec it is given; CLOCK_THREAD_CPUTIME_ID is
    // always supported on Linux, so the return value carries no information.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
