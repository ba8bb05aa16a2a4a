//! `certreload run --config FILE`: the agent. Monitor every file of every bundle, gate each change,
//! keep generations current, audit every step, until SIGTERM.

use std::{collections::BTreeSet, sync::Arc};

use thiserror::Error;
use tokio::{sync::mpsc, task::JoinHandle};

use crate::{
    admin::{self, status::AgentState},
    audit::{
        append_shared,
        kube_events::{self, NodeEvents},
        witness, AuditError, AuditEvent, AuditLog, Observed, SharedAudit,
    },
    config::{Config, ConfigError, ConfigSource},
    monitor::{
        ConfirmedChange, HookStrategy, ModeRequest, Monitor, MonitorConfig, MonitorError,
        MonitorStats,
    },
    propagation::{
        board::SaKeysBoard,
        follow::{self, FollowedKeys},
        publish,
        tracker::{self, PodTokenBoard},
    },
    proxy::{
        listener::{Listener, ListenerContext},
        registry::Registry,
    },
    reload::{board::ChangeBoard, generation::GenerationStore, Reloader},
    shutdown::{Shutdown, ShutdownSignal, Stop},
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

/// Runs the agent until SIGINT/SIGTERM: the steps below in order, each one's side effects (audit
/// records, log lines, bound sockets, spawned tasks) in the order they always had.
pub(crate) async fn run(source: &ConfigSource, options: RunOptions) -> Result<(), RunError> {
    // Caught from here on: a SIGTERM during start-up stops the agent once it is up, not by default
    // action half-way (which would leave no agent_stopped record).
    let mut shutdown = ShutdownSignal::install();
    raise_descriptor_limit();
    let config = source.load()?;
    let (audit, monitor) = start_audited(&config, options)?;
    let (shared, events_rx) = Shared::new(&config, audit);
    let admin = Admin::bind(&config).await?;
    let (reloader, listeners) = load_and_bind(&config, &shared).await?;
    let probes = crate::converge::ProbeBoard::default();
    let changes = ChangeBoard::default();
    let sa_keys = sa_keys_board(&config);
    let state = agent_state(
        &config, &shared, &monitor, &listeners, &probes, &changes, &sa_keys,
    );
    let mut reloader = reloader.observed_by(shared.metrics.clone(), changes);

    let (tx, rx) = mpsc::channel(1024);
    let (stop_tx, stop_rx) = crate::shutdown::channel();
    post_node_events(&config, events_rx, &stop_rx).await;
    let witness = start_witness(&config, &shared.audit, &stop_rx).await;
    // The token tracker (`[pod_tokens]`) reads the followed key identity from this receiver.
    let followed_keys = start_sa_keys(&config, &shared, sa_keys.as_ref(), &stop_rx).await;
    let convergence = crate::converge::start(
        &config,
        shared.store.clone(),
        shared.audit.clone(),
        shared.metrics.clone(),
        probes,
        stop_rx.clone(),
    );
    start_pod_tokens(&config, &shared, followed_keys, convergence, &stop_rx);
    // Everything start-up opens is open now: what is left of the limit, less the reserve, is
    // what connections may hold.
    crate::accept::DescriptorBudget::init();
    let tasks = Tasks {
        monitor: serve(&shared, listeners, admin, state, monitor, tx, &stop_rx),
        witness,
    };
    tokio::select! {
        _ = shutdown.recv() => {}
        _ = reloader.run(rx, stop_rx) => {}
    }
    stop(stop_tx, tasks, &shared.audit).await
}

/// Connections need descriptors: the soft limit goes up to the hard one before anything opens, so
/// that the connection budget computed at the end of start-up has the most room.
fn raise_descriptor_limit() {
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
}

/// The agent refuses to run unaudited: the audit log opens first, then the monitor starts (its
/// mode goes into the record), then `agent_started` is the log's first record of this run.
fn start_audited(config: &Config, options: RunOptions) -> Result<(AuditLog, Monitor), RunError> {
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
    Ok((audit, monitor))
}

/// What the reloader, the listeners, the admin endpoint and the convergence tasks share; each task
/// gets its own clones.
struct Shared {
    /// The current generation of every bundle.
    store: Arc<GenerationStore>,
    /// The audit log, now written by several tasks.
    audit: SharedAudit,
    /// Counters for `/metrics`.
    metrics: Arc<Metrics>,
    /// Live connections, by listener (for stale-connection handling and `/status`).
    registry: Arc<Registry>,
    /// The token tracker's last scan (`[pod_tokens]`), for `/status` and `/metrics`.
    pod_tokens: PodTokenBoard,
}

impl Shared {
    /// Shares `audit` once its observer is set: with `[events] enabled`, every record from here on
    /// (the start-up validation's included) also goes to the returned receiver, for Kubernetes
    /// Events.
    fn new(config: &Config, mut audit: AuditLog) -> (Shared, mpsc::UnboundedReceiver<Observed>) {
        let store = Arc::new(GenerationStore::new(
            config.bundles.iter().map(|b| b.name.as_str()),
        ));
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        if config.events.enabled {
            audit.observe(events_tx);
        }
        let shared = Shared {
            store,
            audit: Arc::new(std::sync::Mutex::new(audit)),
            metrics: Arc::new(Metrics::default()),
            registry: Arc::new(Registry::default()),
            pod_tokens: PodTokenBoard::default(),
        };
        (shared, events_rx)
    }
}

/// The admin endpoint, bound before the bundles are validated so that a taken address fails
/// start-up early; it serves once everything else runs.
struct Admin {
    /// The bound socket.
    socket: tokio::net::TcpListener,
    /// Its routes and serving identity.
    endpoint: admin::Endpoint,
}

impl Admin {
    /// Binds `[agent] admin` and prepares the endpoint (its serving certificate beyond loopback).
    async fn bind(config: &Config) -> Result<Admin, RunError> {
        let socket = admin::bind(config.agent.admin)
            .await
            .map_err(|e| RunError::Bind {
                addr: config.agent.admin,
                source: e,
            })?;
        let endpoint = admin::Endpoint::new(&config.admin, &socket)?;
        Ok(Admin { socket, endpoint })
    }
}

/// Validates every bundle first, so that listeners start with generation 1, then binds every
/// listener (a taken address fails start-up).
async fn load_and_bind(
    config: &Config,
    shared: &Shared,
) -> Result<(Reloader, Vec<Listener>), RunError> {
    let mut reloader = Reloader::new(config.clone(), shared.store.clone(), shared.audit.clone());
    reloader.startup().await;
    let mut listeners = Vec::new();
    for l in &config.listeners {
        let bound = Listener::bind(l.clone(), &shared.store)
            .await
            .map_err(|e| RunError::Bind {
                addr: l.listen,
                source: e,
            })?;
        listeners.push(bound);
    }
    Ok((reloader, listeners))
}

/// What `/status` and `/metrics` read: the live boards and counters of every part of the agent.
fn agent_state(
    config: &Config,
    shared: &Shared,
    monitor: &Monitor,
    listeners: &[Listener],
    probes: &crate::converge::ProbeBoard,
    changes: &ChangeBoard,
    sa_keys: &Option<SaKeysBoard>,
) -> Arc<AgentState> {
    Arc::new(AgentState {
        config: config.clone(),
        store: shared.store.clone(),
        registry: shared.registry.clone(),
        slots: listeners.iter().map(|l| l.slot.clone()).collect(),
        client_slots: listeners.iter().map(|l| l.client_slot.clone()).collect(),
        monitor_mode: monitor.mode().clone(),
        monitor: monitor.counters(),
        last_change: changes.clone(),
        probes: probes.clone(),
        sa_keys: sa_keys.clone(),
        pod_tokens: shared.pod_tokens.clone(),
    })
}

/// With `[pod_tokens]`, the token tracker: it judges the pods' tokens against `keys` (the
/// followed key identity) and the cluster CA, and reports and notifies through `convergence` as
/// the pseudo-bundle `pod-tokens`.
fn start_pod_tokens(
    config: &Config,
    shared: &Shared,
    keys: FollowedKeys,
    convergence: crate::converge::Convergence,
    stop_rx: &Shutdown,
) {
    let Some(settings) = &config.pod_tokens else {
        return;
    };
    if !config.sa_keys.as_ref().is_some_and(|s| s.follow) {
        tracing::warn!("[pod_tokens] without [sa_keys] follow: no key identity is followed, so every token stays unknown");
    }
    let ctx = tracker::TrackerContext {
        settings: settings.clone(),
        keys,
        store: shared.store.clone(),
        audit: shared.audit.clone(),
        feed: convergence.feed,
        stale: convergence.stale,
        board: shared.pod_tokens.clone(),
    };
    tokio::spawn(tracker::run(ctx, stop_rx.clone()));
}

/// With `[sa_keys]`, the board its publisher and follower write and `/status` reads.
fn sa_keys_board(config: &Config) -> Option<SaKeysBoard> {
    config
        .sa_keys
        .as_ref()
        .map(|s| SaKeysBoard::new(&s.configmap(), s.follow))
}

/// With `[sa_keys]`: the publisher of the `publish` bundle's key identity (control plane) and the
/// follower of the ConfigMap, whose receiver is returned (its value stays `None` without
/// `follow`). Without API credentials the agent runs on (logged).
async fn start_sa_keys(
    config: &Config,
    shared: &Shared,
    board: Option<&SaKeysBoard>,
    stop_rx: &Shutdown,
) -> FollowedKeys {
    let Some(board) = board else {
        return follow::start(config, &shared.audit, &SaKeysBoard::default(), stop_rx);
    };
    // The task runs until the agent stops; nothing waits for it at stop.
    drop(
        publish::start(
            config,
            &shared.store,
            &shared.audit,
            &shared.metrics,
            board,
            stop_rx,
        )
        .await,
    );
    follow::start(config, &shared.audit, board, stop_rx)
}

/// With `[events] enabled`, posts the observed audit records as Kubernetes Events on the node;
/// without API credentials the agent runs on (the audit log has every record).
async fn post_node_events(
    config: &Config,
    events_rx: mpsc::UnboundedReceiver<Observed>,
    stop_rx: &Shutdown,
) {
    if !config.events.enabled {
        return;
    }
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

/// With `[audit] witness = true`, publishes the audit head off the node; the task hands its
/// publisher back at stop for the last publication. Without API credentials the agent runs on,
/// unwitnessed.
async fn start_witness(
    config: &Config,
    audit: &SharedAudit,
    stop_rx: &Shutdown,
) -> Option<JoinHandle<witness::Publisher>> {
    if !config.audit.witness {
        return None;
    }
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
}

/// The spawned tasks that stopping waits for, in the order it waits.
struct Tasks {
    /// The monitor: joined before `agent_stopped`, so that no change is confirmed after it.
    monitor: JoinHandle<MonitorStats>,
    /// The witness publisher, if any: joined after `agent_stopped`, to publish a head that
    /// includes it.
    witness: Option<JoinHandle<witness::Publisher>>,
}

/// Starts serving: the listeners, the admin endpoint and the monitor, then says the agent is
/// ready. Returns the monitor's task, which stopping waits for.
fn serve(
    shared: &Shared,
    listeners: Vec<Listener>,
    admin: Admin,
    state: Arc<AgentState>,
    monitor: Monitor,
    changes: mpsc::Sender<ConfirmedChange>,
    stop_rx: &Shutdown,
) -> JoinHandle<MonitorStats> {
    let ctx = ListenerContext {
        store: shared.store.clone(),
        registry: shared.registry.clone(),
        metrics: shared.metrics.clone(),
        audit: shared.audit.clone(),
    };
    for l in listeners {
        tracing::info!(listener = %l.config.name, address = %l.local_addr().map(|a| a.to_string()).unwrap_or_default(), "listening");
        tokio::spawn(l.serve(ctx.clone(), stop_rx.clone()));
    }
    let admin_addr = admin
        .socket
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tokio::spawn(admin.endpoint.serve(
        admin.socket,
        state,
        shared.metrics.clone(),
        stop_rx.clone(),
    ));
    let monitor_task = tokio::spawn(monitor.run(changes, stop_rx.clone()));
    tracing::info!(admin = %admin_addr, "agent ready");
    monitor_task
}

/// Ordered shutdown: every task is told to stop, the monitor is joined, `agent_stopped` is the
/// run's last record, and the witness publishes the head that includes it (bounded, so that
/// stopping stays quick).
async fn stop(stop_tx: Stop, tasks: Tasks, audit: &SharedAudit) -> Result<(), RunError> {
    stop_tx.stop();
    if let Err(e) = tasks.monitor.await {
        tracing::error!(error = %e, "the monitor task failed");
    }
    append_shared(
        audit,
        None,
        &AuditEvent::AgentStopped {
            reason: "signal".into(),
        },
    )?;
    if let Some(Ok(mut publisher)) = match tasks.witness {
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
