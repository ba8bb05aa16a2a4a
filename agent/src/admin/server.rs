//! The admin endpoint's accept loop and connections, bounded in number, time and memory, so no
//! client (or a few thousand of them) can exhaust the agent behind its probes:
//!
//! - **caps**: at most `max_connections` in all and `max_connections_per_client` per client
//!   address; one more is closed at once, never queued (queued connections would cost the same
//!   memory and descriptors the cap exists to bound); the process-wide descriptor budget
//!   (`crate::accept`) applies too, and the accept loop backs off on `EMFILE`/`ENOMEM`;
//! - **time**: the TLS handshake and each request's headers must arrive within
//!   `header_read_timeout` (slowloris clients, and idle keep-alive connections, are closed after
//!   it: hyper starts the timer whenever it waits for a request), and a connection on which no
//!   byte moved for `idle_timeout` is closed (a client that stopped reading its response);
//! - **memory**: hyper's per-connection read buffer is capped at [`MAX_BUF`], so the endpoint
//!   holds at most `max_connections` × a few tens of KiB whatever clients send.
//!
//! Bound to a loopback address, it speaks plain HTTP (nothing off the node can reach it). Bound
//! anywhere else it speaks HTTPS, and also plain HTTP to loopback clients only (`certreload
//! status`, a curl on the node): the first byte of a connection tells a TLS ClientHello (0x16)
//! from an HTTP method.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
};

use axum::Router;
use hyper::{body::Incoming, server::conn::http1, service::Service as _, Request};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tokio_rustls::TlsAcceptor;

use crate::{
    accept::{self, AcceptBackoff, DescriptorBudget, DescriptorPermit, RateLimitedLog},
    config::admin::AdminSettings,
    proxy::idle::{Activity, Tracked},
    shutdown::Shutdown,
    sync::LockExt,
};

/// hyper's read buffer limit per connection (its default is ~400 KiB; the minimum it allows is
/// 8 KiB). A request line and headers beyond it are refused with 431.
pub(crate) const MAX_BUF: usize = 16 * 1024;

/// Headers per request, at most (hyper's default is 100).
pub(crate) const MAX_HEADERS: usize = 32;

/// The client a request came from, put in every request's extensions so handlers can tell
/// loopback (unauthenticated) from the network (bearer token required).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer(pub SocketAddr);

impl Peer {
    /// Whether the client is on this host's loopback (IPv4-mapped IPv6 included).
    pub(crate) fn is_loopback(&self) -> bool {
        self.0.ip().to_canonical().is_loopback()
    }
}

/// What a connection needs from the endpoint, shared by all of them.
pub(super) struct Shared {
    pub(super) settings: AdminSettings,
    pub(super) tls: Option<TlsAcceptor>,
    pub(super) router: Router,
}

/// Counts connections per client address; a slot is given back on drop.
#[derive(Default)]
struct PerClient {
    limit: usize,
    held: Mutex<HashMap<IpAddr, usize>>,
}

struct ClientSlot {
    owner: Arc<PerClient>,
    ip: IpAddr,
}

impl PerClient {
    fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<ClientSlot> {
        let mut held = self.held.lock_or_recover();
        let n = held.entry(ip).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            owner: self.clone(),
            ip,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut held = self.owner.held.lock_or_recover();
        if let Some(n) = held.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.ip);
            }
        }
    }
}

/// What one connection holds while it lives: its share of every cap.
struct Slots {
    _total: OwnedSemaphorePermit,
    _client: ClientSlot,
    _descriptor: DescriptorPermit,
}

/// Accepts until `shutdown`, refusing (closing at once) what the caps do not allow.
pub(super) async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: Shutdown,
) {
    let total = Arc::new(Semaphore::new(shared.settings.max_connections));
    let per_client = Arc::new(PerClient {
        limit: shared.settings.max_connections_per_client,
        held: Mutex::default(),
    });
    let budget = DescriptorBudget::global();
    let mut backoff = AcceptBackoff::new("admin endpoint");
    let mut refusals = RateLimitedLog::default();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = accept::accept(&listener, &mut backoff) => accepted,
            _ = shutdown.recv() => return,
        };
        let ip = peer.ip().to_canonical();
        let refused = |why: &str, refusals: &mut RateLimitedLog| {
            if let Some(suppressed) = refusals.allow() {
                tracing::warn!(client = %peer, limit = why, suppressed, "admin endpoint: connection refused (closed at once); one line per 10s, suppressed counts the others");
            }
        };
        let Some(descriptor) = budget.try_acquire(accept::ADMIN_CONNECTION_FDS) else {
            refused("descriptor budget", &mut refusals);
            continue;
        };
        let Ok(total) = total.clone().try_acquire_owned() else {
            refused("admin.max_connections", &mut refusals);
            continue;
        };
        let Some(client) = per_client.acquire(ip) else {
            refused("admin.max_connections_per_client", &mut refusals);
            continue;
        };
        let slots = Slots {
            _total: total,
            _client: client,
            _descriptor: descriptor,
        };
        tokio::spawn(connection(shared.clone(), stream, peer, slots));
    }
}

/// Serves one accepted connection. Its `slots` are given back before the client can see the
/// connection end: the [`Tracked`] stream holds them once it serves and drops them before its
/// shutdown sends the FIN; on an early return, parameters drop in reverse order, `slots` first.
/// So a client that has seen its connection end (a probe with `Connection: close`) never meets
/// its own slot when it connects again.
async fn connection(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr, slots: Slots) {
    // Latency only: a socket without it still serves.
    stream.set_nodelay(true).ok();
    let settings = &shared.settings;
    let activity = Activity::new();
    let loopback = Peer(peer).is_loopback();
    let Some(tls) = &shared.tls else {
        serve_http(
            &shared,
            Tracked::holding(stream, activity.clone(), slots),
            activity,
            peer,
        )
        .await;
        return;
    };
    // The first byte decides the protocol; it must come within the header-read timeout.
    let mut first = [0u8; 1];
    match tokio::time::timeout(settings.header_read_timeout, stream.peek(&mut first)).await {
        Ok(Ok(1)) => {}
        Ok(_) => return,
        Err(_) => {
            tracing::debug!(client = %peer, "admin endpoint: nothing sent within header_read_timeout; closed");
            return;
        }
    }
    let io = Tracked::holding(stream, activity.clone(), slots);
    if first[0] == 0x16 {
        match tokio::time::timeout(settings.header_read_timeout, tls.accept(io)).await {
            Ok(Ok(tls_stream)) => serve_http(&shared, tls_stream, activity, peer).await,
            Ok(Err(e)) => {
                tracing::debug!(client = %peer, error = %e, "admin endpoint: TLS handshake failed")
            }
            Err(_) => {
                tracing::debug!(client = %peer, "admin endpoint: TLS handshake not done within header_read_timeout; closed")
            }
        }
    } else if loopback {
        serve_http(&shared, io, activity, peer).await;
    } else {
        // Plain HTTP from the network: say why, then close (tokens must not cross in clear).
        let mut io = io;
        let body = "this endpoint speaks HTTPS beyond loopback\n";
        let answer = format!(
            "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        // Best effort, within the header timeout: the connection closes whether or not the
        // client reads the answer.
        tokio::time::timeout(settings.header_read_timeout, async {
            io.write_all(answer.as_bytes()).await.ok();
            io.shutdown().await.ok();
        })
        .await
        .ok();
    }
}

async fn serve_http<I>(shared: &Shared, io: I, activity: Activity, peer: SocketAddr)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let settings = &shared.settings;
    let router = TowerToHyperService::new(shared.router.clone());
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(Peer(peer));
        router.call(request)
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .max_buf_size(MAX_BUF)
        .max_headers(MAX_HEADERS)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        done = conn.as_mut() => {
            if let Err(e) = done {
                tracing::debug!(client = %peer, error = %e, "admin endpoint: connection closed");
            }
        }
        _ = activity.idle(settings.idle_timeout) => {
            tracing::debug!(client = %peer, "admin endpoint: no byte moved within idle_timeout; closed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_client_slots_are_capped_and_given_back() {
        let p = Arc::new(PerClient {
            limit: 2,
            held: Mutex::default(),
        });
        let ip: IpAddr = "10.0.0.1".parse().expect("ip");
        let other: IpAddr = "10.0.0.2".parse().expect("ip");
        let a = p.acquire(ip).expect("1 of 2");
        let _b = p.acquire(ip).expect("2 of 2");
        assert!(p.acquire(ip).is_none(), "3 of 2");
        assert!(
            p.acquire(other).is_some(),
            "another client has its own slots"
        );
        drop(a);
        assert!(p.acquire(ip).is_some(), "a slot came back");
    }

    #[test]
    fn mapped_ipv6_loopback_is_loopback() {
        for (addr, loopback) in [
            ("127.0.0.1:1", true),
            ("127.0.0.2:1", true),
            ("[::1]:1", true),
            ("[::ffff:127.0.0.1]:1", true),
            ("10.251.0.1:1", false),
            ("[::ffff:10.0.0.1]:1", false),
        ] {
            let peer = Peer(addr.parse().expect("addr"));
            assert_eq!(peer.is_loopback(), loopback, "{addr}");
        }
    }
}
