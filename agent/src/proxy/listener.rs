//! One TLS listener: accept, hand the current epoch's configuration to the handshake, forward to
//! the upstream, and close on purpose when the connection is drained.

use std::{net::SocketAddr, sync::Arc};

use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use tokio::{
    io::{AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tokio_rustls::{server::TlsStream, TlsAcceptor};

use super::{
    idle::{Activity, Tracked},
    registry::{ConnectionInfo, Registration, Registry},
    upstream::{self, UpstreamStream},
};
use crate::{
    accept::{self, AcceptBackoff, DescriptorBudget, RateLimitedLog},
    audit::{append_shared, AuditEvent, SharedAudit},
    config::ListenerConfig,
    reload::generation::GenerationStore,
    sync::or_pending,
    telemetry::Metrics,
    tls::{
        client_config::ClientSlot,
        slot::{ActiveTls, TlsSlot},
    },
};

/// Client → upstream copy buffer: one TLS record's plaintext at most arrives per read.
const TO_UPSTREAM_BUFFER: usize = 16 * 1024;

/// Upstream → client copy buffer. Large reads become full 16 KiB TLS records (an 8 KiB buffer
/// halves the record size and cost 0.79x nginx on a single bulk stream; 64 KiB: 1.36x, `cargo
/// xtask bench tls`). Both buffers are borrowed only while bytes are in flight
/// ([`super::copy`]): an idle connection holds neither.
const TO_CLIENT_BUFFER: usize = 64 * 1024;

/// Everything a listener shares with the rest of the agent.
#[derive(Clone)]
pub(crate) struct ListenerContext {
    /// Generations of every bundle.
    pub store: Arc<GenerationStore>,
    /// Live connections.
    pub registry: Arc<Registry>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Audit trail (drained connections).
    pub audit: SharedAudit,
}

/// A listener and the slot its connections take their TLS configuration from.
pub(crate) struct Listener {
    /// Its configuration.
    pub config: ListenerConfig,
    /// The TLS configuration of the current epoch.
    pub slot: Arc<TlsSlot>,
    /// The upstream client configuration (`upstream_tls`).
    pub client_slot: Arc<ClientSlot>,
    socket: TcpListener,
}

impl Listener {
    /// Binds the socket (so a port conflict is a start-up error) and builds the first epoch.
    pub(crate) async fn bind(
        config: ListenerConfig,
        store: &GenerationStore,
    ) -> std::io::Result<Listener> {
        let socket = TcpListener::bind(config.listen).await?;
        let slot = Arc::new(TlsSlot::default());
        slot.refresh(store, &config.bundle, config.client_ca.as_deref());
        Ok(Listener {
            config,
            slot,
            client_slot: Arc::default(),
            socket,
        })
    }

    /// The bound address (tests bind port 0).
    pub(crate) fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Accepts until `shutdown`; also follows generation changes and drains stale connections.
    pub(crate) async fn serve(self, ctx: ListenerContext, mut shutdown: crate::shutdown::Shutdown) {
        let limit = Arc::new(Semaphore::new(self.config.max_connections));
        let descriptors = DescriptorBudget::global();
        let mut backoff = AcceptBackoff::new(format!("listener {}", self.config.name));
        let mut refusals = RateLimitedLog::default();
        let config = Arc::new(self.config);
        tokio::spawn(follow_generations(
            config.clone(),
            self.slot.clone(),
            ctx.clone(),
            shutdown.clone(),
        ));
        loop {
            tokio::select! {
                _ = shutdown.recv() => return,
                (stream, peer) = accept::accept(&self.socket, &mut backoff) => {
                    let Ok(permit) = limit.clone().try_acquire_owned() else {
                        ctx.metrics.handshake_failure(&config.name, HandshakeFailure::ConnectionLimit.as_str());
                        continue; // dropping the stream closes it
                    };
                    // Past the process's descriptor budget, the connection would take a
                    // descriptor that reading new material needs: close it at once.
                    let Some(fds) = descriptors.try_acquire(accept::PROXIED_CONNECTION_FDS) else {
                        ctx.metrics.handshake_failure(&config.name, HandshakeFailure::DescriptorReserve.as_str());
                        if let Some(suppressed) = refusals.allow() {
                            tracing::warn!(
                                listener = %config.name,
                                %peer,
                                connection_descriptors = descriptors.capacity(),
                                suppressed,
                                "connection closed: the descriptor budget for connections is spent (the rest of RLIMIT_NOFILE is kept for reading material); one line per {}s",
                                accept::LOG_EVERY.as_secs()
                            );
                        }
                        continue;
                    };
                    let (config, slot, client_slot, ctx) = (config.clone(), self.slot.clone(), self.client_slot.clone(), ctx.clone());
                    tokio::spawn(async move {
                        handle(stream, peer, &config, (&slot, &client_slot), &ctx).await;
                        drop((permit, fds));
                    });
                }
            }
        }
    }
}

/// Why a connection ended before it reached the upstream, as
/// `certreload_handshake_failures_total{reason}` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HandshakeFailure {
    /// `max_connections` connections are already open.
    ConnectionLimit,
    /// The descriptors left are kept for reading material.
    DescriptorReserve,
    /// The server bundle has no valid generation yet: nothing to serve.
    NoCertificate,
    /// The client did not finish the handshake within `handshake_timeout`.
    Timeout,
    /// mTLS: the client's certificate was refused, or it sent none.
    ClientCertificate,
    /// Any other failure: a client that refused our certificate, no protocol or cipher in common,
    /// not TLS at all, a reset.
    Handshake,
}

impl HandshakeFailure {
    /// The metric label.
    fn as_str(self) -> &'static str {
        match self {
            HandshakeFailure::ConnectionLimit => "connection_limit",
            HandshakeFailure::DescriptorReserve => "descriptor_reserve",
            HandshakeFailure::NoCertificate => "no_certificate",
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::ClientCertificate => "client_certificate",
            HandshakeFailure::Handshake => "handshake",
        }
    }

    /// Sorts a failed TLS accept by the `rustls::Error` inside it (tokio-rustls wraps it in an
    /// `io::Error` of kind `InvalidData`); an I/O error without one (a reset, an EOF) is a
    /// `Handshake` failure. rustls already maps every webpki verdict on the client's chain to
    /// `InvalidCertificate` (`rustls/src/webpki/mod.rs` `pki_error`), so no message text is read.
    fn of_tls_accept(error: &std::io::Error) -> Self {
        let Some(tls) = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        else {
            return HandshakeFailure::Handshake;
        };
        match tls {
            // Our client verifier refused the chain (unknown issuer, expired, wrong EKU,
            // revoked…), the client sent an empty Certificate message although one is required,
            // or the revocation list its chain was checked against is unusable.
            rustls::Error::InvalidCertificate(_)
            | rustls::Error::NoCertificatesPresented
            | rustls::Error::InvalidCertRevocationList(_) => HandshakeFailure::ClientCertificate,
            // The client refused *our* certificate (bad_certificate, unknown_ca, …): a problem
            // of the served chain or the client's trust, not of a client certificate.
            rustls::Error::AlertReceived(_) => HandshakeFailure::Handshake,
            _ => HandshakeFailure::Handshake,
        }
    }
}

/// Why no upstream connection could be made for a client (logged, counted in
/// `certreload_upstream_failures_total`, and the client is closed).
#[derive(Debug, thiserror::Error)]
enum UpstreamError {
    /// The TCP or Unix socket connection failed.
    #[error(transparent)]
    Connect(std::io::Error),
    /// `upstream_tls`: the client bundle or its CA has no valid generation.
    #[error("no valid client certificate for the upstream")]
    NoClientCertificate,
    /// `upstream_tls.server_name` is not a DNS name or IP address.
    #[error(transparent)]
    ServerName(#[from] rustls_pki_types::InvalidDnsNameError),
    /// The TLS handshake with the upstream failed.
    #[error("upstream TLS handshake: {0}")]
    Handshake(#[source] std::io::Error),
}

/// Rebuilds the slot when the server bundle or client CA gets a new generation, and drains stale
/// connections once `stale_grace` has passed.
async fn follow_generations(
    config: Arc<ListenerConfig>,
    slot: Arc<TlsSlot>,
    ctx: ListenerContext,
    mut shutdown: crate::shutdown::Shutdown,
) {
    let mut server = ctx.store.subscribe(&config.bundle);
    let mut client_ca = config
        .client_ca
        .as_deref()
        .and_then(|ca| ctx.store.subscribe(ca));
    let mut tick = tokio::time::interval(DRAIN_TICK);
    let mut pace = DrainPace::default();
    // The client-CA generation live connections were last re-verified against.
    let mut checked_ca = slot.current().and_then(|a| a.client_ca_generation);
    loop {
        tokio::select! {
            _ = shutdown.recv() => return,
            _ = or_pending(server.as_mut().map(|rx| rx.changed())) => {
                slot.refresh(&ctx.store, &config.bundle, config.client_ca.as_deref());
            }
            _ = or_pending(client_ca.as_mut().map(|rx| rx.changed())) => {
                slot.refresh(&ctx.store, &config.bundle, config.client_ca.as_deref());
                revoke_untrusted(&config, &slot, &ctx, &mut checked_ca);
            }
            _ = tick.tick() => drain_stale(&config, &slot, &ctx, &mut pace),
        }
    }
}

/// With `close_untrusted`, once per client-CA generation: closes the live connections whose client
/// chain no longer verifies against the CA now served, and audits each.
fn revoke_untrusted(
    config: &ListenerConfig,
    slot: &TlsSlot,
    ctx: &ListenerContext,
    checked_ca: &mut Option<u64>,
) {
    // The accept path may already have switched to the new CA: act on what is current.
    let Some(active) = slot.current() else { return };
    if !config.close_untrusted || active.client_ca_generation == *checked_ca {
        return;
    }
    *checked_ca = active.client_ca_generation;
    let Some(ca) = active.client_ca.clone() else {
        return;
    };
    let verifier = match crate::tls::server_config::client_verifier(&ca) {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(listener = %config.name, error = %e, "cannot re-verify clients against the new CA");
            return;
        }
    };
    let now = rustls_pki_types::UnixTime::now();
    let untrusted = |info: &ConnectionInfo| {
        let Some((leaf, rest)) = info.client_chain.split_first() else {
            return false;
        };
        verifier.verify_client_cert(leaf, rest, now).is_err()
    };
    for info in ctx.registry.revoke(&config.name, untrusted) {
        ctx.metrics.connections_revoked.inc();
        let event = AuditEvent::ConnectionRevoked {
            listener: config.name.clone(),
            peer: info.peer.to_string(),
            client_fingerprint: info.client_fingerprint.clone(),
            client_ca_generation: ca.number,
        };
        if let Err(e) = append_shared(&ctx.audit, config.client_ca.as_deref(), &event) {
            tracing::error!(error = %e, "cannot audit a revoked connection");
        }
    }
}

/// How often a listener looks for stale connections to close: short, so a paced drain closes
/// few connections at a time (each tick's closes are woken together, and new handshakes queue
/// behind them on the runtime's workers).
const DRAIN_TICK: std::time::Duration = std::time::Duration::from_millis(100);

/// The pace of a listener's drain: `stale_drain_rate` connections a second, spent tick by tick.
/// A rate below one per tick accrues over several ticks; unspent credit is capped at one tick's
/// worth, so a drain after a quiet hour starts paced too.
#[derive(Debug, Default)]
struct DrainPace {
    /// Connections (fractions included) the drain may still close.
    credit: f64,
}

impl DrainPace {
    /// How many stale connections this tick may close at `rate` per second.
    fn allowance(&mut self, rate: u64) -> usize {
        let per_tick = rate as f64 * DRAIN_TICK.as_secs_f64();
        self.credit = (self.credit + per_tick).min(per_tick.max(1.0));
        let whole = self.credit.floor();
        self.credit -= whole;
        whole as usize
    }
}

/// With `stale_grace`: closes the connections stale for longer than the grace, and audits each,
/// at most `stale_drain_rate` a second: closing 9,000 at once took new handshakes' p99 to
/// 119 ms while the runtime woke them all (`cargo xtask bench scale --only connections`).
///
/// The records are written on the blocking pool: each is fsync'd on its own, and a drain of tens
/// of thousands of connections written from here held a runtime worker for seconds, which new
/// handshakes waited behind (`cargo xtask bench scale`: handshake p99 11.9x the idle one while
/// 5,000 connections drained).
fn drain_stale(
    config: &ListenerConfig,
    slot: &TlsSlot,
    ctx: &ListenerContext,
    pace: &mut DrainPace,
) {
    let (Some(grace), Some(active)) = (config.stale_grace, slot.current()) else {
        return;
    };
    let limit = pace.allowance(config.stale_drain_rate);
    if limit == 0 {
        return;
    }
    let stale = ctx
        .registry
        .drain(&config.name, active.epoch, grace, limit, |e| {
            slot.epoch_started(e)
        });
    if stale.is_empty() {
        return;
    }
    ctx.metrics.connections_drained.inc_by(stale.len() as u64);
    let (audit, listener, bundle) = (
        ctx.audit.clone(),
        config.name.clone(),
        config.bundle.clone(),
    );
    tokio::task::spawn_blocking(move || {
        for (info, stale_for_s) in stale {
            let event = AuditEvent::ConnectionDrained {
                listener: listener.clone(),
                peer: info.peer.to_string(),
                generation: info.server_generation,
                stale_for_s,
            };
            if let Err(e) = append_shared(&audit, Some(&bundle), &event) {
                tracing::error!(error = %e, "cannot audit a drained connection");
            }
        }
    });
}

/// One connection: handshake with the current epoch, connect the upstream, register, forward.
async fn handle(
    stream: TcpStream,
    peer: SocketAddr,
    config: &ListenerConfig,
    (slot, client_slot): (&TlsSlot, &ClientSlot),
    ctx: &ListenerContext,
) {
    // Latency only: a socket without it still serves.
    stream.set_nodelay(true).ok();
    // The configuration is taken once, before the handshake: the whole handshake uses one epoch.
    let Some(active) =
        slot.for_new_connection(&ctx.store, &config.bundle, config.client_ca.as_deref())
    else {
        ctx.metrics
            .handshake_failure(&config.name, HandshakeFailure::NoCertificate.as_str());
        return;
    };
    let mut tls = match accept_tls(stream, &active, config).await {
        Ok(tls) => tls,
        Err((failure, error)) => {
            ctx.metrics
                .handshake_failure(&config.name, failure.as_str());
            if let Some(e) = error {
                tracing::debug!(listener = %config.name, %peer, error = %e, "handshake failed");
            }
            return;
        }
    };
    let (client_chain, client_fingerprint) = client_identity(&tls);
    let (upstream, upstream_generation) = match connect_upstream(config, client_slot, &ctx.store)
        .await
    {
        Ok(connected) => connected,
        Err(e) => {
            ctx.metrics
                .upstream_failures
                .get_or_create(&crate::telemetry::ListenerLabel {
                    listener: config.name.clone(),
                })
                .inc();
            tracing::warn!(listener = %config.name, reason = %e, "upstream unreachable; closing the client");
            close(&mut tls).await;
            return;
        }
    };
    let registration = ctx.registry.register(ConnectionInfo {
        listener: config.name.clone(),
        peer,
        epoch: active.epoch,
        server_generation: active.server_generation,
        client_fingerprint,
        client_chain,
        upstream_generation,
    });
    drop(active);
    forward(tls, upstream, registration, config, peer).await;
}

/// The TLS handshake with the client, under `handshake_timeout`. On failure, the metric reason and
/// the error to log (none for a timeout).
async fn accept_tls(
    stream: TcpStream,
    active: &ActiveTls,
    config: &ListenerConfig,
) -> Result<TlsStream<TcpStream>, (HandshakeFailure, Option<std::io::Error>)> {
    let acceptor = TlsAcceptor::from(active.config.clone());
    match tokio::time::timeout(config.handshake_timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => Ok(tls),
        Ok(Err(e)) => Err((HandshakeFailure::of_tls_accept(&e), Some(e))),
        Err(_) => Err((HandshakeFailure::Timeout, None)),
    }
}

/// The client's certificate chain (kept to re-verify it on a client-CA rotation) and the SHA-256
/// of its leaf; empty and `None` without mTLS.
fn client_identity(tls: &TlsStream<TcpStream>) -> (Vec<CertificateDer<'static>>, Option<String>) {
    let chain = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(<[_]>::to_vec)
        .unwrap_or_default();
    let fingerprint = chain.first().map(|leaf| hex::encode(Sha256::digest(leaf)));
    (chain, fingerprint)
}

/// Opens the upstream connection, re-encrypted with the current client certificate when
/// `upstream_tls` is set (taken now, like the server side). Returns it with the client-bundle
/// generation it presents, or why it could not be opened.
async fn connect_upstream(
    config: &ListenerConfig,
    client_slot: &ClientSlot,
    store: &GenerationStore,
) -> Result<(Box<dyn UpstreamStream>, Option<u64>), UpstreamError> {
    let upstream = upstream::connect(&config.upstream)
        .await
        .map_err(UpstreamError::Connect)?;
    let Some(spec) = &config.upstream_tls else {
        return Ok((upstream, None));
    };
    let active = client_slot
        .for_new_connection(store, spec)
        .ok_or(UpstreamError::NoClientCertificate)?;
    let name = rustls_pki_types::ServerName::try_from(spec.server_name.clone())?;
    let secured = tokio_rustls::TlsConnector::from(active.config.clone())
        .connect(name, upstream)
        .await
        .map_err(UpstreamError::Handshake)?;
    Ok((Box::new(secured), Some(active.client_generation)))
}

/// Copies both ways until either side closes, the connection has been idle for `idle_timeout`, or
/// it is drained or revoked (then close_notify first, and the TCP close when the streams drop).
async fn forward(
    tls: TlsStream<TcpStream>,
    mut upstream: Box<dyn UpstreamStream>,
    mut registration: Registration,
    config: &ListenerConfig,
    peer: SocketAddr,
) {
    let activity = Activity::new();
    let mut tls = Tracked::new(tls, activity.clone());
    tokio::select! {
        result = super::copy::copy_bidirectional(&mut tls, &mut upstream, TO_UPSTREAM_BUFFER, TO_CLIENT_BUFFER) => {
            if let Err(e) = result {
                tracing::debug!(listener = %config.name, %peer, error = %e, "connection ended with an error");
            }
        }
        _ = activity.idle(config.idle_timeout) => {
            tracing::debug!(listener = %config.name, %peer, "idle timeout");
            close(&mut tls).await;
        }
        _ = registration.close.changed() => {
            close(&mut tls).await;
            close(&mut upstream).await;
        }
    }
}

/// Ends a connection the listener is done with. The close_notify (or FIN) is a courtesy: a peer
/// that has hung up already makes it fail, and the streams close when they drop either way.
async fn close(stream: &mut (impl AsyncWrite + Unpin + ?Sized)) {
    stream.shutdown().await.ok();
}

#[cfg(test)]
mod tests {
    //! Each handshake-failure class, produced by a real rustls handshake over an in-memory pipe
    //! (the same `io::Error` the accept path sees), next to what the former text match
    //! (`to_string().contains("certificate")`) made of it.

    use rcgen::ExtendedKeyUsagePurpose;
    use rustls::{
        server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
        sign::CertifiedKey,
        ClientConfig, RootCertStore, ServerConfig,
    };
    use tokio::io::AsyncReadExt;

    #[test]
    fn the_drain_pace_spends_the_rate_tick_by_tick_and_keeps_no_burst() {
        let mut pace = DrainPace::default();
        // 2,000 a second: 200 per 100 ms tick.
        assert_eq!(pace.allowance(2_000), 200);
        // 2 a second: one close every fifth tick.
        let mut pace = DrainPace::default();
        let closes: Vec<usize> = (0..10).map(|_| pace.allowance(2)).collect();
        assert_eq!(closes.iter().sum::<usize>(), 2, "{closes:?}");
        assert!(closes.iter().all(|&n| n <= 1), "{closes:?}");
    }

    use super::*;
    use crate::test_pki::{ca, leaf, Ca};

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn roots(ca: &Ca) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(ca.der.clone()).expect("root");
        Arc::new(roots)
    }

    /// A server like the listener's: `serving` signs its leaf; with `client_ca`, client
    /// certificates are required and verified against it.
    fn server(serving: &Ca, client_ca: Option<&Ca>) -> ServerConfig {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions");
        let builder = match client_ca {
            Some(ca) => builder.with_client_cert_verifier(
                WebPkiClientVerifier::builder_with_provider(roots(ca), provider())
                    .build()
                    .expect("verifier"),
            ),
            None => builder.with_no_client_auth(),
        };
        let (cert, key) = leaf(serving, "localhost", ExtendedKeyUsagePurpose::ServerAuth);
        builder
            .with_single_cert(vec![cert], key)
            .expect("server config")
    }

    /// A client trusting `trusted`, presenting a certificate signed by `identity` when given.
    fn client(trusted: &Ca, identity: Option<&Ca>) -> ClientConfig {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots(trusted));
        match identity {
            Some(ca) => {
                let (cert, key) = leaf(ca, "client", ExtendedKeyUsagePurpose::ClientAuth);
                builder
                    .with_client_auth_cert(vec![cert], key)
                    .expect("client config")
            }
            None => builder.with_no_client_auth(),
        }
    }

    /// Runs both sides of one handshake in memory and returns the server side's error.
    async fn server_error(server: ServerConfig, client: ClientConfig) -> std::io::Error {
        let (server_io, client_io) = tokio::io::duplex(64 * 1024);
        let accept = TlsAcceptor::from(Arc::new(server)).accept(server_io);
        let connect = async {
            let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
            // TLS 1.3 clients learn of a refused certificate only on their first read.
            if let Ok(mut tls) = tokio_rustls::TlsConnector::from(Arc::new(client))
                .connect(name, client_io)
                .await
            {
                // Until the server hangs up: how it does is the server side's error, which the
                // test checks; what this read returns is only the hang-up seen from here.
                tls.read_exact(&mut [0u8; 1]).await.ok();
            }
        };
        let (accepted, ()) = tokio::join!(accept, connect);
        accepted.expect_err("the handshake fails on the server side")
    }

    /// What the listener counted before the errors were matched by type.
    fn by_text(error: &std::io::Error) -> HandshakeFailure {
        if error.to_string().contains("certificate") {
            HandshakeFailure::ClientCertificate
        } else {
            HandshakeFailure::Handshake
        }
    }

    fn rustls_error(error: &std::io::Error) -> &rustls::Error {
        error
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
            .expect("a rustls error inside")
    }

    #[tokio::test]
    async fn untrusted_client_certificate_is_a_client_certificate_failure() {
        let (serving, client_ca, other) = (ca("serving"), ca("client CA"), ca("other CA"));
        let e = server_error(
            server(&serving, Some(&client_ca)),
            client(&serving, Some(&other)),
        )
        .await;
        assert!(
            matches!(rustls_error(&e), rustls::Error::InvalidCertificate(_)),
            "{e:?}"
        );
        assert_eq!(
            HandshakeFailure::of_tls_accept(&e),
            HandshakeFailure::ClientCertificate
        );
        assert_eq!(
            by_text(&e),
            HandshakeFailure::ClientCertificate,
            "same as before"
        );
    }

    #[tokio::test]
    async fn missing_client_certificate_is_a_client_certificate_failure() {
        let (serving, client_ca) = (ca("serving"), ca("client CA"));
        let e = server_error(server(&serving, Some(&client_ca)), client(&serving, None)).await;
        assert!(
            matches!(rustls_error(&e), rustls::Error::NoCertificatesPresented),
            "{e:?}"
        );
        assert_eq!(
            HandshakeFailure::of_tls_accept(&e),
            HandshakeFailure::ClientCertificate
        );
        assert_eq!(
            by_text(&e),
            HandshakeFailure::ClientCertificate,
            "same as before"
        );
    }

    #[tokio::test]
    async fn client_refusing_our_certificate_is_a_handshake_failure() {
        let (serving, other) = (ca("serving"), ca("the client trusts this one"));
        let e = server_error(server(&serving, None), client(&other, None)).await;
        assert!(
            matches!(rustls_error(&e), rustls::Error::AlertReceived(_)),
            "{e:?}"
        );
        assert_eq!(
            HandshakeFailure::of_tls_accept(&e),
            HandshakeFailure::Handshake
        );
        // rustls prints the alert as `UnknownCA`/`BadCertificate`: the case-sensitive text match
        // never saw "certificate" in it either.
        assert_eq!(by_text(&e), HandshakeFailure::Handshake, "same as before");
    }

    /// A server that has no certificate to offer (here a resolver that finds none): rustls fails
    /// with `General("no server certificate chain resolved")`, which the text match counted as a
    /// client-certificate failure although no client certificate was involved.
    #[tokio::test]
    async fn no_server_certificate_resolved_is_a_handshake_failure_not_a_client_one() {
        #[derive(Debug)]
        struct Nothing;
        impl ResolvesServerCert for Nothing {
            fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
                None
            }
        }
        let serving = ca("serving");
        let server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Nothing));
        let e = server_error(server, client(&serving, None)).await;
        assert!(
            matches!(rustls_error(&e), rustls::Error::General(_)),
            "{e:?}"
        );
        assert_eq!(
            HandshakeFailure::of_tls_accept(&e),
            HandshakeFailure::Handshake
        );
        assert_eq!(
            by_text(&e),
            HandshakeFailure::ClientCertificate,
            "the text match got this one wrong"
        );
    }

    #[tokio::test]
    async fn a_client_that_does_not_speak_tls_is_a_handshake_failure() {
        let serving = ca("serving");
        let (server_io, mut client_io) = tokio::io::duplex(64 * 1024);
        let accept = TlsAcceptor::from(Arc::new(server(&serving, None))).accept(server_io);
        let garbage = async {
            // The server refuses the handshake and may hang up first.
            client_io.write_all(b"GET / HTTP/1.1\r\n\r\n").await.ok();
        };
        let (accepted, ()) = tokio::join!(accept, garbage);
        let e = accepted.expect_err("not TLS");
        assert!(
            matches!(rustls_error(&e), rustls::Error::InvalidMessage(_)),
            "{e:?}"
        );
        assert_eq!(
            HandshakeFailure::of_tls_accept(&e),
            HandshakeFailure::Handshake
        );
        assert_eq!(by_text(&e), HandshakeFailure::Handshake, "same as before");
    }

    #[tokio::test]
    async fn a_client_that_hangs_up_is_a_handshake_failure() {
        let serving = ca("serving");
        let (server_io, client_io) = tokio::io::duplex(64 * 1024);
        drop(client_io);
        let e = TlsAcceptor::from(Arc::new(server(&serving, None)))
            .accept(server_io)
            .await
            .expect_err("no client");
        assert!(
            e.get_ref()
                .and_then(|e| e.downcast_ref::<rustls::Error>())
                .is_none(),
            "a plain I/O error: {e:?}"
        );
        assert_eq!(
            HandshakeFailure::of_tls_accept(&e),
            HandshakeFailure::Handshake
        );
        assert_eq!(by_text(&e), HandshakeFailure::Handshake, "same as before");
    }
}
