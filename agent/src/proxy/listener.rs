//! One TLS listener: accept, hand the current epoch's configuration to the handshake, forward to
//! the upstream, and close on purpose when the connection is drained.

use std::{net::SocketAddr, sync::Arc, time::Instant};

use sha2::{Digest, Sha256};
use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream},
    sync::{watch, Semaphore},
};
use tokio_rustls::TlsAcceptor;

use super::{
    idle::{Activity, Tracked},
    registry::{ConnectionInfo, Registry},
    upstream,
};
use crate::{
    accept::{self, AcceptBackoff, DescriptorBudget, RateLimitedLog},
    audit::{append_shared, AuditEvent, SharedAudit},
    config::ListenerConfig,
    reload::generation::GenerationStore,
    telemetry::Metrics,
    tls::{client_config::ClientSlot, slot::TlsSlot},
};

/// Client → upstream copy buffer: one TLS record's plaintext at most arrives per read.
const TO_UPSTREAM_BUFFER: usize = 16 * 1024;

/// Upstream → client copy buffer. Large reads become full 16 KiB TLS records (an 8 KiB buffer
/// halves the record size and cost 0.79x nginx on a single bulk stream; 64 KiB: 1.36x, `cargo
/// xtask bench tls`). Idle connections never touch its pages, so they do not cost resident memory.
const TO_CLIENT_BUFFER: usize = 64 * 1024;

/// Everything a listener shares with the rest of the agent.
#[derive(Clone)]
pub struct ListenerContext {
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
pub struct Listener {
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
    pub async fn bind(
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
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Accepts until `shutdown`; also follows generation changes and drains stale connections.
    pub async fn serve(self, ctx: ListenerContext, mut shutdown: watch::Receiver<bool>) {
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
                _ = shutdown.changed() => return,
                (stream, peer) = accept::accept(&self.socket, &mut backoff) => {
                    let Ok(permit) = limit.clone().try_acquire_owned() else {
                        ctx.metrics.handshake_failure(&config.name, "connection_limit");
                        continue; // dropping the stream closes it
                    };
                    // Past the process's descriptor budget, the connection would take a
                    // descriptor that reading new material needs: close it at once.
                    let Some(fds) = descriptors.try_acquire(accept::PROXIED_CONNECTION_FDS) else {
                        ctx.metrics.handshake_failure(&config.name, "descriptor_reserve");
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

/// Rebuilds the slot when the server bundle or client CA gets a new generation, and drains stale
/// connections once `stale_grace` has passed.
async fn follow_generations(
    config: Arc<ListenerConfig>,
    slot: Arc<TlsSlot>,
    ctx: ListenerContext,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut server = ctx.store.subscribe(&config.bundle);
    let mut client_ca = config
        .client_ca
        .as_deref()
        .and_then(|ca| ctx.store.subscribe(ca));
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
    // The client-CA generation live connections were last re-verified against.
    let mut checked_ca = slot.current().and_then(|a| a.client_ca_generation);
    loop {
        let ca_changed = async {
            match client_ca.as_mut() {
                Some(rx) => rx.changed().await,
                None => std::future::pending().await,
            }
        };
        let server_changed = async {
            match server.as_mut() {
                Some(rx) => rx.changed().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = server_changed => { slot.refresh(&ctx.store, &config.bundle, config.client_ca.as_deref()); }
            _ = ca_changed => {
                // The accept path may already have switched to the new CA: act on what is current.
                slot.refresh(&ctx.store, &config.bundle, config.client_ca.as_deref());
                let Some(active) = slot.current() else { continue };
                if !config.close_untrusted || active.client_ca_generation == checked_ca {
                    continue;
                }
                checked_ca = active.client_ca_generation;
                let Some(ca) = active.client_ca.clone() else { continue };
                let verifier = match crate::tls::server_config::client_verifier(&ca) {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::error!(listener = %config.name, error = %e, "cannot re-verify clients against the new CA");
                        continue;
                    }
                };
                let now = rustls_pki_types::UnixTime::now();
                let untrusted = |info: &super::registry::ConnectionInfo| {
                    let Some((leaf, rest)) = info.client_chain.split_first() else { return false };
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
            _ = tick.tick() => {
                let (Some(grace), Some(active)) = (config.stale_grace, slot.current()) else { continue };
                for (info, stale_for_s) in ctx.registry.drain(&config.name, active.epoch, grace, |e| slot.epoch_started(e)) {
                    ctx.metrics.connections_drained.inc();
                    let event = AuditEvent::ConnectionDrained {
                        listener: config.name.clone(),
                        peer: info.peer.to_string(),
                        generation: info.server_generation,
                        stale_for_s,
                    };
                    if let Err(e) = append_shared(&ctx.audit, Some(&config.bundle), &event) {
                        tracing::error!(error = %e, "cannot audit a drained connection");
                    }
                }
            }
        }
    }
}

async fn handle(
    stream: TcpStream,
    peer: SocketAddr,
    config: &ListenerConfig,
    (slot, client_slot): (&TlsSlot, &ClientSlot),
    ctx: &ListenerContext,
) {
    let _ = stream.set_nodelay(true);
    // The configuration is taken once, before the handshake: the whole handshake uses one epoch.
    let Some(active) =
        slot.for_new_connection(&ctx.store, &config.bundle, config.client_ca.as_deref())
    else {
        ctx.metrics
            .handshake_failure(&config.name, "no_certificate");
        return;
    };
    let acceptor = TlsAcceptor::from(active.config.clone());
    let mut tls =
        match tokio::time::timeout(config.handshake_timeout, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                let reason = if e.to_string().contains("certificate") {
                    "client_certificate"
                } else {
                    "handshake"
                };
                ctx.metrics.handshake_failure(&config.name, reason);
                tracing::debug!(listener = %config.name, %peer, error = %e, "handshake failed");
                return;
            }
            Err(_) => {
                ctx.metrics.handshake_failure(&config.name, "timeout");
                return;
            }
        };
    let client_chain: Vec<rustls_pki_types::CertificateDer<'static>> = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(|c| c.iter().map(|d| d.clone().into_owned()).collect())
        .unwrap_or_default();
    let client_fingerprint = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| hex::encode(Sha256::digest(c)));
    let upstream_failed = |reason: &str| {
        ctx.metrics
            .upstream_failures
            .get_or_create(&crate::telemetry::ListenerLabel {
                listener: config.name.clone(),
            })
            .inc();
        tracing::warn!(listener = %config.name, %reason, "upstream unreachable; closing the client");
    };
    let mut upstream = match upstream::connect(&config.upstream).await {
        Ok(u) => u,
        Err(e) => {
            upstream_failed(&e.to_string());
            let _ = tls.shutdown().await;
            return;
        }
    };
    let mut upstream_generation = None;
    if let Some(spec) = &config.upstream_tls {
        // Re-encrypt with the current client certificate (taken now, like the server side).
        let Some(active) = client_slot.for_new_connection(&ctx.store, spec) else {
            upstream_failed("no valid client certificate for the upstream");
            let _ = tls.shutdown().await;
            return;
        };
        let name = match rustls_pki_types::ServerName::try_from(spec.server_name.clone()) {
            Ok(n) => n,
            Err(e) => {
                upstream_failed(&e.to_string());
                return;
            }
        };
        match tokio_rustls::TlsConnector::from(active.config.clone())
            .connect(name, upstream)
            .await
        {
            Ok(secured) => {
                upstream = Box::new(secured);
                upstream_generation = Some(active.client_generation);
            }
            Err(e) => {
                upstream_failed(&format!("upstream TLS handshake: {e}"));
                let _ = tls.shutdown().await;
                return;
            }
        }
    }
    let mut registration = ctx.registry.register(ConnectionInfo {
        listener: config.name.clone(),
        peer,
        started: Instant::now(),
        epoch: active.epoch,
        server_generation: active.server_generation,
        client_ca_generation: active.client_ca_generation,
        client_fingerprint,
        client_chain,
        upstream_generation,
    });
    drop(active);
    let activity = Activity::new();
    let mut tls = Tracked::new(tls, activity.clone());
    tokio::select! {
        result = tokio::io::copy_bidirectional_with_sizes(&mut tls, &mut upstream, TO_UPSTREAM_BUFFER, TO_CLIENT_BUFFER) => {
            if let Err(e) = result {
                tracing::debug!(listener = %config.name, %peer, error = %e, "connection ended with an error");
            }
        }
        _ = activity.idle(config.idle_timeout) => {
            tracing::debug!(listener = %config.name, %peer, "idle timeout");
            let _ = tls.shutdown().await;
        }
        _ = registration.close.changed() => {
            // Drained or revoked: close_notify first, then the TCP close when `tls` drops.
            let _ = tls.shutdown().await;
            let _ = upstream.shutdown().await;
        }
    }
}
