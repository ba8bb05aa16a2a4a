//! The admin endpoint: `/metrics` (Prometheus), `/healthz`, `/readyz`, `/status` (JSON).

pub mod metrics;
pub mod status;

use std::{net::SocketAddr, sync::Arc};

use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Json, Router};
use tokio::sync::watch;

use self::{metrics::Metrics, status::AgentState};

#[derive(Clone)]
struct Admin {
    state: Arc<AgentState>,
    metrics: Arc<Metrics>,
}

/// Serves the admin endpoint on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AgentState>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/metrics", get(metrics_text))
        .with_state(Admin { state, metrics });
    let stop = async move {
        let _ = shutdown.changed().await;
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::error!(error = %e, "admin endpoint stopped");
    }
}

/// Binds the admin address (a conflict is a start-up error).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
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

async fn status(State(admin): State<Admin>) -> impl IntoResponse {
    Json(admin.state.status())
}

async fn metrics_text(State(admin): State<Admin>) -> impl IntoResponse {
    let body = admin.metrics.render(&admin.state.status());
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
}
