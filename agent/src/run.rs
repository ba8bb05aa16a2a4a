//! `certreload run --config FILE`: the agent. Monitor every file of every bundle, gate each change,
//! keep generations current, audit every step, until SIGTERM.

use std::{collections::BTreeSet, sync::Arc};

use thiserror::Error;
use tokio::sync::mpsc;

use crate::{
    admin::{self, status::AgentState},
    audit::{
        append_shared,
        kube_events::{self, NodeEvents},
        witness, AuditError, AuditEvent, AuditLog,
    },
    config::{ConfigError, ConfigSource},
    monitor::{HookStrategy, ModeRequest, Monitor, MonitorConfig, MonitorError},
    proxy::{
        listener::{Listener, ListenerContext},
        registry::Registry,
    },
    reload::{board::ChangeBoard, generation::GenerationStore, Reloader},
    shutdown::ShutdownSignal,
    telemetry::Metrics,
};

/// The agent could not start.
#[derive(Debug, Error)]
pub(crate) enum RunError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The audit log cannot be opened or written: the agent refuses to run unaudited.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// The monitor cannot start.
    #[error(transparent)]
    Monitor(#[from] MonitorError),
    /// A listener or the admin endpoint cannot bind its address.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The admin endpoint cannot be set up (its serving certificate).
    #[error(transparent)]
    Admin(#[from] admin::AdminError),
}

/// Longest wait at shutdown for the last publication of the audit head.
const WITNESS_AT_STOP: std::time::Duration = std::time::Duration::from_secs(5);

/// Monitor options the command line may override.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunOptions {
    /// Change source.
    pub mode: ModeRequest,
    /// eBPF attachment strategy.
    pub hook: HookStrategy,
}

/// Runs the agent until SIGINT/SIGTERM.
pub(crate) async fn run(source: &ConfigSource, options: RunOptions) -> Result<(), RunError> {
    // Caught from here on: a SIGTERM during start-up stops the agent once it is up, not by default
    // action half-way (which would leave no agent_stopped record).
    let mut shutdown = ShutdownSignal::install();
    match crate::accept::raise_nofile_limit() {
        Ok(l) if l.soft != l.was => tracing::info!(
            from = l.was,
            to = l.soft,
            "raised the soft RLIMIT_NOFILE to the hard limit"
        ),
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the soft RLIMIT_NOFILE; the connection budget is computed from the current one")
        }
    }
    let config = source.load()?;
    let mut audit = AuditLog::open(&config.audit.path, config.audit.max_size)?;
    let paths: BTreeSet<_> = config.bundles.iter().flat_map(|b| b.files()).collect();
    let monitor = Monitor::start(&MonitorConfig {
        paths: paths.into_iter().collect(),
        mode: options.mode,
        hook: options.hook,
        resync: config.agent.resync,
        profile_hooks: false,
    })?;
    audit.append(
        None,
        &AuditEvent::AgentStarted {
            version: env!("CARGO_PKG_VERSION").to_string(),
            bundles: config.bundles.iter().map(|b| b.name.clone()).collect(),
            monitor: monitor.mode().to_string(),
        },
    )?;
    let store = Arc::new(GenerationStore::new(
        config.bundles.iter().map(|b| b.name.as_str()),
    ));
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    if config.events.enabled {
        audit.observe(events_tx);
    }
    let audit = Arc::new(std::sync::Mutex::new(audit));
    let metrics = Arc::new(Metrics::default());
    let registry = Arc::new(Registry::default());
    let admin_socket = admin::bind(config.agent.admin)
        .await
        .map_err(|e| RunError::Bind {
            addr: config.agent.admin,
            source: e,
        })?;
    let admin_endpoint = admin::Endpoint::new(&config.admin, &admin_socket)?;

    // Validate every bundle first, so listeners start with generation 1.
    let mut reloader = Reloader::new(config.clone(), store.clone(), audit.clone());
    reloader.startup().await;
    let mut listeners = Vec::new();
    for l in &config.listeners {
        let bound = Listener::bind(l.clone(), &store)
            .await
            .map_err(|e| RunError::Bind {
                addr: l.listen,
                source: e,
            })?;
        listeners.push(bound);
    }
    let probes = crate::converge::ProbeBoard::default();
    let changes = ChangeBoard::default();
    let state = Arc::new(AgentState {
        config: config.clone(),
        store: store.clone(),
        registry: registry.clone(),
        slots: listeners.iter().map(|l| l.slot.clone()).collect(),
        client_slots: listeners.iter().map(|l| l.client_slot.clone()).collect(),
        monitor_mode: monitor.mode().clone(),
        monitor: monitor.counters(),
        last_change: changes.clone(),
        probes: probes.clone(),
    });
    let mut reloader = reloader.observed_by(metrics.clone(), changes);

    let (tx, rx) = mpsc::channel(1024);
    let (stop_tx, stop_rx) = crate::shutdown::channel();
    let ctx = ListenerContext {
        store: store.clone(),
        registry,
        metrics: metrics.clone(),
        audit: audit.clone(),
    };
    if config.events.enabled {
        let node = config
            .events
            .node
            .clone()
            .unwrap_or_else(kube_events::node_name);
        match NodeEvents::from_environment(&config.events.namespace, node.clone()).await {
            Ok(sink) => {
                tracing::info!(node = %node, namespace = %config.events.namespace, "posting Kubernetes Events");
                tokio::spawn(kube_events::run(sink, events_rx, stop_rx.clone()));
            }
            Err(e) => {
                tracing::error!(error = %e, "[events] enabled but no Kubernetes API credentials; Events are not posted (the audit log has every record)");
            }
        }
    }
    let witness = if config.audit.witness {
        let node = config
            .events
            .node
            .clone()
            .unwrap_or_else(kube_events::node_name);
        let namespace = &config.audit.witness_namespace;
        match witness::Publisher::from_environment(namespace, &node, audit.clone()).await {
            Ok(publisher) => {
                tracing::info!(witness = %publisher.object(), "publishing the audit head to the witness");
                let interval = config.audit.witness_interval;
                Some(tokio::spawn(witness::run(
                    publisher,
                    interval,
                    stop_rx.clone(),
                )))
            }
            Err(e) => {
                tracing::error!(error = %e, "[audit] witness = true but no Kubernetes API credentials; the audit log is not witnessed");
                None
            }
        }
    } else {
        None
    };
    crate::converge::start(
        &config,
        store.clone(),
        audit.clone(),
        metrics.clone(),
        probes,
        stop_rx.clone(),
    );
    // Everything start-up opens is open now: what is left of the limit, less the reserve, is
    // what connections may hold.
    crate::accept::DescriptorBudget::init();
    for l in listeners {
        tracing::info!(listener = %l.config.name, address = %l.local_addr().map(|a| a.to_string()).unwrap_or_default(), "listening");
        tokio::spawn(l.serve(ctx.clone(), stop_rx.clone()));
    }
    let admin_addr = admin_socket
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tokio::spawn(admin_endpoint.serve(admin_socket, state, metrics, stop_rx.clone()));
    let monitor_task = tokio::spawn(monitor.run(tx, stop_rx.clone()));
    tracing::info!(admin = %admin_addr, "agent ready");
    tokio::select! {
        _ = shutdown.recv() => {}
        _ = reloader.run(rx, stop_rx) => {}
    }
    stop_tx.stop();
    if let Err(e) = monitor_task.await {
        tracing::error!(error = %e, "the monitor task failed");
    }
    append_shared(
        &audit,
        None,
        &AuditEvent::AgentStopped {
            reason: "signal".into(),
        },
    )?;
    if let Some(Ok(mut publisher)) = match witness {
        Some(task) => Some(task.await),
        None => None,
    } {
        // The head now includes agent_stopped; bounded so that stopping stays quick.
        let object = publisher.object();
        let last = publisher.publish_logged(false);
        if tokio::time::timeout(WITNESS_AT_STOP, last).await.is_err() {
            tracing::warn!(witness = %object, "the last audit head was not published within {WITNESS_AT_STOP:?}");
        }
    }
    Ok(())
}
