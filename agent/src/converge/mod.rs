//! The last step of the data path: after a generation is swapped in, prove that the node's other
//! TLS endpoints converged on it (probes), and make the ones that cannot reload do so (actions).

pub(crate) mod action;
pub(crate) mod http;
pub(crate) mod judge;
pub(crate) mod jwks;
pub(crate) mod lease;
pub(crate) mod observe;
pub(crate) mod probe;
pub(crate) mod root_ca;
pub(crate) mod settle;

use std::{collections::BTreeMap, sync::Arc};

use tokio::sync::{mpsc, watch, Mutex};

use crate::{
    audit::SharedAudit,
    config::{ActionTrigger, Config},
    reload::generation::{Generation, GenerationStore},
    telemetry::Metrics,
};

/// Each probe's latest verdict, by name (read by `/status`).
pub(crate) type ProbeBoard = Arc<std::sync::Mutex<BTreeMap<String, probe::ProbeStatus>>>;

/// A probe found an endpoint stale: `on = "stale"` actions of the bundle run.
#[derive(Debug, Clone)]
pub(crate) struct StaleNotice {
    /// The probed bundle.
    pub bundle: String,
    /// The probe that found it stale (actions with a `probe` filter run only for theirs).
    pub probe: String,
    /// The generation the endpoint should reflect.
    pub generation: u64,
}

/// What started convergence hands to the other sources of verdicts and stale notices (the token
/// tracker, `propagation::tracker`): they report like a probe and notify like one.
#[derive(Clone)]
pub(crate) struct Convergence {
    /// Verdicts in, fresh-check requests out.
    pub feed: settle::ConvergenceFeed,
    /// Stale notices, routed to the `on = "stale"` actions of their bundle.
    pub stale: mpsc::Sender<StaleNotice>,
}

/// Starts every probe and action of `config`; they stop with `shutdown`. Probes report stale
/// endpoints on one channel; actions run on their trigger (`on = "accepted"`: each newly accepted
/// generation; `on = "stale"`: each stale notice for their bundle). The feed knows the token
/// tracker's pseudo-probe `pod-tokens` when `[pod_tokens]` is configured; the returned
/// [`Convergence`] is how the tracker reports and notifies.
pub(crate) fn start(
    config: &Config,
    store: Arc<GenerationStore>,
    audit: SharedAudit,
    metrics: Arc<Metrics>,
    board: ProbeBoard,
    shutdown: crate::shutdown::Shutdown,
) -> Convergence {
    let (stale_tx, stale_rx) = mpsc::channel::<StaleNotice>(64);
    let pod_tokens = config.pod_tokens.as_ref().map(|t| t.deadline);
    let feed = settle::ConvergenceFeed::with_pod_tokens(&config.probes, pod_tokens);
    let probe_ctx = probe::ProbeContext {
        feed: feed.clone(),
        store: store.clone(),
        audit: audit.clone(),
        metrics: metrics.clone(),
        stale: stale_tx.clone(),
        board,
    };
    start_probes(config, &probe_ctx, &shutdown);
    let action_ctx = action::ActionContext {
        audit,
        metrics,
        feed: feed.clone(),
        leases: Arc::new(leases(config)),
    };
    let on_stale = start_actions(config, &store, &action_ctx, &shutdown);
    tokio::spawn(route_stale(stale_rx, on_stale, shutdown));
    Convergence {
        feed,
        stale: stale_tx,
    }
}

/// Spawns one task per probe whose bundle exists (the bundle's kind says how to probe).
fn start_probes(config: &Config, ctx: &probe::ProbeContext, shutdown: &crate::shutdown::Shutdown) {
    for p in &config.probes {
        let Some(kind) = config
            .bundles
            .iter()
            .find(|b| b.name == p.bundle)
            .map(|b| b.kind)
        else {
            continue;
        };
        tokio::spawn(probe::run(p.clone(), kind, ctx.clone(), shutdown.clone()));
    }
}

/// The cluster-wide locks (`[[action]] lock = "NAME"`) that make the actions of one lock take turns
/// across nodes; this node holds them under its name.
fn leases(config: &Config) -> lease::Leases {
    lease::Leases::new(lease::LockSettings {
        namespace: config.locks.namespace.clone(),
        lease_duration: config.locks.lease_duration,
        holder: config
            .events
            .node
            .clone()
            .unwrap_or_else(crate::audit::kube_events::node_name),
    })
}

/// Spawns one task per action, serialised per bundle by a shared lock, and connects its trigger:
/// `on = "accepted"` to the bundle's generations now; `on = "stale"` through the returned map
/// (bundle → the actions' senders), which [`route_stale`] serves.
fn start_actions(
    config: &Config,
    store: &GenerationStore,
    ctx: &action::ActionContext,
    shutdown: &crate::shutdown::Shutdown,
) -> StaleRoutes {
    let mut locks: BTreeMap<String, Arc<Mutex<()>>> = BTreeMap::new();
    let mut on_stale: StaleRoutes = BTreeMap::new();
    for a in &config.actions {
        let (tx, rx) = mpsc::channel(16);
        let lock = locks.entry(a.bundle.clone()).or_default().clone();
        tokio::spawn(action::run(
            a.clone(),
            ctx.clone(),
            rx,
            lock,
            shutdown.clone(),
        ));
        match a.on {
            ActionTrigger::Stale => on_stale
                .entry(a.bundle.clone())
                .or_default()
                .push((a.probe.clone(), tx)),
            ActionTrigger::Accepted => {
                let Some(mut generations) = store.subscribe(&a.bundle) else {
                    continue;
                };
                // Only generations accepted from now on: start-up material needs no reload.
                generations.mark_unchanged();
                tokio::spawn(forward_accepted(generations, tx, shutdown.clone()));
            }
        }
    }
    on_stale
}

/// Triggers an `on = "accepted"` action with each generation of its bundle accepted from now on,
/// until `stop`.
async fn forward_accepted(
    mut generations: watch::Receiver<Option<Arc<Generation>>>,
    tx: mpsc::Sender<u64>,
    mut stop: crate::shutdown::Shutdown,
) {
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
}

/// The `on = "stale"` actions by bundle: each one's `probe` filter (`None`: every probe of the
/// bundle) and its trigger.
type StaleRoutes = BTreeMap<String, Vec<(Option<String>, mpsc::Sender<u64>)>>;

/// Triggers the `on = "stale"` actions of a bundle with the generation each stale notice names,
/// until `stop`.
async fn route_stale(
    mut stale_rx: mpsc::Receiver<StaleNotice>,
    on_stale: StaleRoutes,
    mut stop: crate::shutdown::Shutdown,
) {
    loop {
        tokio::select! {
            _ = stop.recv() => return,
            notice = stale_rx.recv() => {
                let Some(notice) = notice else { return };
                let routes = on_stale.get(&notice.bundle).into_iter().flatten();
                for (_, tx) in routes.filter(|(only, _)| only.as_ref().is_none_or(|p| *p == notice.probe)) {
                    // Full: runs are queued, and the action coalesces them to the newest
                    // generation anyway. Closed: the action has stopped.
                    tx.try_send(notice.generation).ok();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stale_notice_runs_the_bundles_actions_filtered_on_its_probe() {
        let (any_tx, mut any_rx) = mpsc::channel(4);
        let (root_ca_tx, mut root_ca_rx) = mpsc::channel(4);
        let (other_tx, mut other_rx) = mpsc::channel(4);
        let routes: StaleRoutes = BTreeMap::from([
            (
                "kubernetes-ca".to_string(),
                vec![
                    (None, any_tx),
                    (Some("kube-root-ca-configmaps".to_string()), root_ca_tx),
                ],
            ),
            ("etcd-ca".to_string(), vec![(None, other_tx)]),
        ]);
        let (stale_tx, stale_rx) = mpsc::channel(4);
        let (stop, shutdown) = crate::shutdown::channel();
        let router = tokio::spawn(route_stale(stale_rx, routes, shutdown));
        let notice = |probe: &str, generation| StaleNotice {
            bundle: "kubernetes-ca".into(),
            probe: probe.into(),
            generation,
        };
        stale_tx
            .send(notice("kube-apiserver-client-ca", 2))
            .await
            .expect("router runs");
        stale_tx
            .send(notice("kube-root-ca-configmaps", 3))
            .await
            .expect("router runs");
        assert_eq!(any_rx.recv().await, Some(2));
        assert_eq!(any_rx.recv().await, Some(3));
        assert_eq!(
            root_ca_rx.recv().await,
            Some(3),
            "only its own probe's verdict runs the filtered action"
        );
        stop.stop();
        router.await.expect("router stops");
        assert!(root_ca_rx.try_recv().is_err());
        assert!(other_rx.try_recv().is_err(), "another bundle's action");
    }
}
