//! `certreload run --config FILE`: the agent. Monitor every file of every bundle, gate each change,
//! keep generations current, audit every step, until SIGTERM.

use std::{collections::BTreeSet, path::Path, sync::Arc};

use thiserror::Error;
use tokio::sync::{mpsc, watch};

use crate::{
    audit::{AuditError, AuditEvent, AuditLog},
    config::{Config, ConfigError},
    monitor::{ActiveMode, HookStrategy, ModeRequest, Monitor, MonitorConfig, MonitorError},
    reload::{generation::GenerationStore, Reloader},
    watch::shutdown_signal,
};

/// The agent could not start.
#[derive(Debug, Error)]
pub enum RunError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The audit log cannot be opened or written: the agent refuses to run unaudited.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// The monitor cannot start.
    #[error(transparent)]
    Monitor(#[from] MonitorError),
}

/// Monitor options the command line may override.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    /// Change source.
    pub mode: ModeRequest,
    /// eBPF attachment strategy.
    pub hook: HookStrategy,
}

/// Runs the agent until SIGINT/SIGTERM.
pub async fn run(config_path: &Path, options: RunOptions) -> Result<(), RunError> {
    let config = Config::load(config_path)?;
    let mut audit = AuditLog::open(&config.audit.path, config.audit.max_size)?;
    let paths: BTreeSet<_> = config.bundles.iter().flat_map(|b| b.files()).collect();
    let monitor = Monitor::start(&MonitorConfig {
        paths: paths.into_iter().collect(),
        mode: options.mode,
        hook: options.hook,
        resync: config.agent.resync,
        profile_hooks: false,
    })?;
    let mode = match monitor.mode() {
        ActiveMode::Ebpf { .. } => "ebpf".to_string(),
        ActiveMode::Inotify { reason: Some(r) } => format!("inotify (eBPF unavailable: {r})"),
        ActiveMode::Inotify { reason: None } => "inotify".to_string(),
    };
    audit.append(
        None,
        &AuditEvent::AgentStarted {
            version: env!("CARGO_PKG_VERSION").to_string(),
            bundles: config.bundles.iter().map(|b| b.name.clone()).collect(),
            monitor: mode,
        },
    )?;
    let store = Arc::new(GenerationStore::new(
        config.bundles.iter().map(|b| b.name.as_str()),
    ));
    let mut reloader = Reloader::new(config, store, audit);
    reloader.startup();
    tracing::info!("agent ready");

    let (tx, rx) = mpsc::channel(1024);
    let (stop_tx, stop_rx) = watch::channel(false);
    let monitor_task = tokio::spawn(monitor.run(tx, stop_rx.clone()));
    tokio::select! {
        _ = shutdown_signal() => {}
        _ = reloader.run(rx, stop_rx) => {}
    }
    let _ = stop_tx.send(true);
    let _ = monitor_task.await;
    reloader.audit_mut().append(
        None,
        &AuditEvent::AgentStopped {
            reason: "signal".into(),
        },
    )?;
    Ok(())
}
