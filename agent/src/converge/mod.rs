//! The last step of the data path: after a generation is swapped in, prove that the node's other
//! TLS endpoints converged on it (probes), and make the ones that cannot reload do so (actions).

pub(crate) mod action;
pub(crate) mod http;
pub(crate) mod judge;
pub(crate) mod jwks;
pub(crate) mod lease;
pub(crate) mod observe;
pub(crate) mod probe;
pub(crate) mod settle;

use std::{collections::BTreeMap, sync::Arc};

use tokio::sync::{mpsc, Mutex};

use crate::{
    audit::SharedAudit,
    config::{ActionTrigger, Config},
    reload::generation::GenerationStore,
    telemetry::Metrics,
};

/// Each probe's latest verdict, by name (read by `/status`).
pub(crate) type ProbeBoard = Arc<std::sync::Mutex<BTreeMap<String, probe::ProbeStatus>>>;

/// A probe found an endpoint stale: `on = "stale"` actions of the bundle run.
#[derive(Debug, Clone)]
pub(crate) struct StaleNotice {
    /// The probed bundle.
    pub bundle: String,
    /// The generation the endpoint should reflect.
    pub generation: u64,
}

/// Starts every probe and action of `config`; they stop with `shutdown`.
pub(crate) fn start(
    config: &Config,
    store: Arc<GenerationStore>,
    audit: SharedAudit,
    metrics: Arc<Metrics>,
    board: ProbeBoard,
    shutdown: crate::shutdown::Shutdown,
) {
    let (stale_tx, mut stale_rx) = mpsc::channel::<StaleNotice>(64);
    let feed = settle::ConvergenceFeed::new(&config.probes);
    let probe_ctx = probe::ProbeContext {
        feed: feed.clone(),
        store: store.clone(),
        audit: audit.clone(),
        metrics: metrics.clone(),
        stale: stale_tx,
        board,
    };
    for p in &config.probes {
        let Some(kind) = config
            .bundles
            .iter()
            .find(|b| b.name == p.bundle)
            .map(|b| b.kind)
        else {
            continue;
        };
        tokio::spawn(probe::run(
            p.clone(),
            kind,
            probe_ctx.clone(),
            shutdown.clone(),
        ));
    }

    let leases = lease::Leases::new(lease::LockSettings {
        namespace: config.locks.namespace.clone(),
        lease_duration: config.locks.lease_duration,
        holder: config
            .events
            .node
            .clone()
            .unwrap_or_else(crate::audit::kube_events::node_name),
    });
    let action_ctx = action::ActionContext {
        audit,
        metrics,
        feed,
        leases: Arc::new(leases),
    };
    let mut locks: BTreeMap<String, Arc<Mutex<()>>> = BTreeMap::new();
    let mut on_stale: BTreeMap<String, Vec<mpsc::Sender<u64>>> = BTreeMap::new();
    for a in &config.actions {
        let (tx, rx) = mpsc::channel(16);
        let lock = locks.entry(a.bundle.clone()).or_default().clone();
        tokio::spawn(action::run(
            a.clone(),
            action_ctx.clone(),
            rx,
            lock,
            shutdown.clone(),
        ));
        match a.on {
            ActionTrigger::Stale => on_stale.entry(a.bundle.clone()).or_default().push(tx),
            ActionTrigger::Accepted => {
                let Some(mut generations) = store.subscribe(&a.bundle) else {
                    continue;
                };
                // Only generations accepted from now on: start-up material needs no reload.
                generations.mark_unchanged();
                let mut stop = shutdown.clone();
                tokio::spawn(async move {
                    loop {
                        tokio::select! {
                            _ = stop.recv() => return,
                            r = generations.changed() => {
                                if r.is_err() { return; }
                                let number = generations.borrow_and_update().as_ref().map(|g| g.number);
                                if let Some(n) = number {
                                    // Full: runs are queued, and the action coalesces them to the
                                    // newest generation anyway. Closed: the action has stopped.
                                    tx.try_send(n).ok();
                                }
                            }
                        }
                    }
                });
            }
        }
    }
    let mut stop = shutdown;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.recv() => return,
                notice = stale_rx.recv() => {
                    let Some(notice) = notice else { return };
                    for tx in on_stale.get(&notice.bundle).into_iter().flatten() {
                        // Full: runs are queued, and the action coalesces them to the newest
                        // generation anyway. Closed: the action has stopped.
                        tx.try_send(notice.generation).ok();
                    }
                }
            }
        }
    });
}
