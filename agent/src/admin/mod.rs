//! The admin endpoint: `/metrics` (Prometheus), `/healthz`, `/readyz`, `/status` (JSON).
//!
//! `/healthz` and `/readyz` are open to anyone who can connect (the kubelet's probes carry no
//! token) and cost nothing beyond a lookup. `/metrics` and `/status` name paths, serials, CNs and
//! the pid/uid of writers, so from beyond loopback they need a bearer token that the API server
//! authenticates and authorizes for `get` on that URL ([`auth`]); from loopback they stay open
//! (anything on the node's loopback already runs on the node and can read the files themselves;
//! `certreload status` relies on it). Connections are capped and timed ([`server`]); beyond
//! loopback the endpoint speaks HTTPS ([`tls`]) so tokens never cross the network in clear.

pub(crate) mod auth;
pub(crate) mod metrics;
pub(crate) mod server;
pub(crate) mod status;
pub(crate) mod tls;

use std::{net::SocketAddr, sync::Arc};

use axum::{
    extract::State,
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Extension, Json, Router,
};
use thiserror::Error;

use self::{
    auth::{Authorizer, Decision},
    metrics::Exposition,
    server::Peer,
    status::AgentState,
};
use crate::{config::admin::AdminSettings, shutdown::Shutdown, telemetry::Metrics};

#[derive(Clone)]
struct Admin {
    state: Arc<AgentState>,
    exposition: Arc<Exposition>,
    /// `None` when bound to loopback: nothing beyond it can connect, nothing to authorize.
    authorizer: Option<Arc<Authorizer>>,
}

/// The admin endpoint could not be set up (a start-up error).
#[derive(Debug, Error)]
pub(crate) enum AdminError {
    /// The serving certificate for a non-loopback address.
    #[error(transparent)]
    Tls(#[from] tls::AdminTlsError),
    /// The bound socket has no local address.
    #[error("admin endpoint: cannot read the bound address: {0}")]
    LocalAddr(#[source] std::io::Error),
}

/// The admin endpoint, set up for the address it was bound to: plain HTTP and no authorization
/// on a loopback address; HTTPS (configured or self-signed certificate) and TokenReview +
/// SubjectAccessReview for `/metrics` and `/status` from non-loopback clients anywhere else.
pub(crate) struct Endpoint {
    settings: AdminSettings,
    tls: Option<tls::AdminIdentity>,
}

impl Endpoint {
    /// Prepares the endpoint for `listener` (see [`bind`]).
    pub(crate) fn new(
        settings: &AdminSettings,
        listener: &tokio::net::TcpListener,
    ) -> Result<Endpoint, AdminError> {
        let local = listener.local_addr().map_err(AdminError::LocalAddr)?;
        let tls = if local.ip().to_canonical().is_loopback() {
            None
        } else {
            let identity = tls::identity(settings.tls.as_ref(), serving_names(local))?;
            tracing::info!(
                address = %local,
                certificate = identity.origin,
                sha256 = %identity.fingerprint,
                "admin endpoint: HTTPS beyond loopback; /metrics and /status need a bearer token allowed by the API server (TokenReview + SubjectAccessReview)"
            );
            Some(identity)
        };
        Ok(Endpoint {
            settings: settings.clone(),
            tls,
        })
    }

    /// Serves on `listener` until `shutdown`: `/status` from `state`, `/metrics` from `metrics` and
    /// `state`.
    pub(crate) async fn serve(
        self,
        listener: tokio::net::TcpListener,
        state: Arc<AgentState>,
        metrics: Arc<Metrics>,
        shutdown: Shutdown,
    ) {
        let authorizer = self.tls.as_ref().map(|_| Arc::new(Authorizer::default()));
        let router = Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .route("/status", get(status))
            .route("/metrics", get(metrics_text))
            .with_state(Admin {
                state,
                exposition: Arc::new(Exposition::new(&metrics)),
                authorizer,
            });
        let shared = Arc::new(server::Shared {
            settings: self.settings,
            tls: self
                .tls
                .map(|id| tokio_rustls::TlsAcceptor::from(id.config)),
            router,
        });
        server::accept_loop(listener, shared, shutdown).await;
    }
}

/// The names a self-signed certificate carries: localhost, the bound IP (when not a wildcard),
/// the node (`NODE_NAME`, set by the DaemonSet) and the host name.
fn serving_names(local: SocketAddr) -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    if !local.ip().is_unspecified() {
        names.push(local.ip().to_string());
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    for name in [std::env::var("NODE_NAME").unwrap_or_default(), host] {
        let name = name.trim().to_string();
        if !name.is_empty() && !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// Binds the admin address (a conflict is a start-up error).
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// `Ok` when the request may read `path`: always from loopback or on a loopback-bound endpoint,
/// else when the API server allows the bearer token's user `get` on it.
async fn authorize(
    admin: &Admin,
    peer: Peer,
    headers: &HeaderMap,
    path: &str,
) -> Result<(), Response> {
    let Some(authorizer) = &admin.authorizer else {
        return Ok(());
    };
    if peer.is_loopback() {
        return Ok(());
    }
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match authorizer.decide(authorization, path).await {
        Decision::Allowed { .. } => Ok(()),
        Decision::Unauthenticated { reason } => Err((
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer realm=\"certreload\"")],
            format!("unauthorized: {reason}\n"),
        )
            .into_response()),
        Decision::Forbidden { user, .. } => Err((
            StatusCode::FORBIDDEN,
            format!(
                "forbidden: {user} may not get {path} (a ClusterRole with nonResourceURLs [\"{path}\"], verbs [\"get\"])\n"
            ),
        )
            .into_response()),
        Decision::Unavailable { reason } => Err((
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot authorize the request: {reason}\n"),
        )
            .into_response()),
    }
}

async fn readyz(State(admin): State<Admin>) -> impl IntoResponse {
    // Nothing is applied without its record: an unwritable audit log holds every change back.
    if let Some(error) = crate::audit::health::health().unwritable() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: audit log {} is not writable (changes are held until it is): {error}\n",
                admin.state.config.audit.path.display()
            ),
        );
    }
    let not_ready = admin.state.store.not_ready();
    if not_ready.is_empty() {
        (StatusCode::OK, "ready\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: no valid material for bundle(s) {}\n",
                not_ready.join(", ")
            ),
        )
    }
}

async fn status(
    State(admin): State<Admin>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
) -> Response {
    if let Err(denied) = authorize(&admin, peer, &headers, "/status").await {
        return denied;
    }
    Json(admin.state.status()).into_response()
}

async fn metrics_text(
    State(admin): State<Admin>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
) -> Response {
    if let Err(denied) = authorize(&admin, peer, &headers, "/metrics").await {
        return denied;
    }
    let body = admin.exposition.render(&admin.state.status());
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}
