//! The change monitor: kernel (or inotify) hints in, confirmed changes out.
//!
//! ```text
//! ebpf::KernelSource ─┐
//! inotify::InotifySource ─┼─> Hint ─> confirm::Confirmer (re-read, hash, compare) ─> ConfirmedChange
//! periodic resync ────┘
//! ```
//! The monitor knows nothing about certificates: it reports that bytes changed, and who changed them.
//!
//! Reading the files (hashing, canonicalising) runs on tokio's blocking pool, never on a runtime
//! thread: whatever is on disk (a FIFO, a slow mount) cannot stall handshakes, `/healthz` or
//! shutdown, and the monitor stops on shutdown even while a read is still in progress.

pub(crate) mod attribution;
pub(crate) mod change;
pub(crate) mod confirm;
pub mod ebpf;
pub(crate) mod hint;
pub(crate) mod inotify;
pub(crate) mod watchset;

use std::{
    collections::{BTreeMap, HashSet},
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use serde::Serialize;
use thiserror::Error;
use tokio::sync::mpsc;

pub(crate) use self::{
    change::{ChangeKind, ConfirmedChange},
    ebpf::loader::{HookStrategy, KernelStats},
    hint::{Hint, Scope, Source, Writer},
};
use self::{
    confirm::Confirmer,
    ebpf::{loader::EbpfUnavailable, KernelSource},
    inotify::{InotifyError, InotifySource},
    watchset::WatchSet,
};

use crate::sync::{or_pending, LockExt};

/// Default content resync period: the backstop for everything the hooks cannot see.
pub(crate) const DEFAULT_RESYNC: Duration = Duration::from_secs(30);

/// Which source the caller wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ModeRequest {
    /// eBPF, falling back to inotify (with one warning saying why) when it cannot load.
    Auto,
    /// eBPF or fail: for tests and for nodes where attribution is mandatory.
    Ebpf,
    /// inotify only.
    Inotify,
}

/// What the monitor needs to run.
#[derive(Debug, Clone)]
pub(crate) struct MonitorConfig {
    /// Paths to watch, as given.
    pub paths: Vec<PathBuf>,
    /// Source selection.
    pub mode: ModeRequest,
    /// eBPF attachment strategy.
    pub hook: HookStrategy,
    /// Content resync period.
    pub resync: Duration,
    /// Enable kernel BPF run-time statistics and report each hook's cost when stopping.
    pub profile_hooks: bool,
}

/// The source actually in use.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub(crate) enum ActiveMode {
    /// Kernel hooks.
    Ebpf {
        /// Attachment strategy (the one chosen, never `auto`).
        hook: HookStrategy,
        /// Why this strategy: the refusal of each cheaper one (`--hook auto`), or "requested".
        strategy_reason: String,
    },
    /// inotify fallback.
    Inotify {
        /// Why eBPF is not used (`null` when inotify was requested).
        reason: Option<String>,
    },
}

/// The mode in words, as the `agent_started` record and `/status` show it: `ebpf`, `inotify`, or
/// `inotify (eBPF unavailable: REASON)`.
impl std::fmt::Display for ActiveMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ActiveMode::Ebpf { .. } => f.write_str("ebpf"),
            ActiveMode::Inotify { reason: Some(r) } => write!(f, "inotify (eBPF unavailable: {r})"),
            ActiveMode::Inotify { reason: None } => f.write_str("inotify"),
        }
    }
}

impl ActiveMode {
    /// The strategy in use in one word, as `/status` (`monitor.strategy`) and the
    /// `certreload_monitor_info` metric show it: `fentry`, `tracepoints`, `raw-syscalls` or
    /// `inotify`.
    pub(crate) fn strategy(&self) -> &'static str {
        match self {
            ActiveMode::Ebpf { hook, .. } => hook.name(),
            ActiveMode::Inotify { .. } => "inotify",
        }
    }

    /// Why that strategy (`monitor.strategy_reason`): the refusal of each cheaper one, word for
    /// word, or that it was requested.
    pub(crate) fn strategy_reason(&self) -> String {
        match self {
            ActiveMode::Ebpf {
                strategy_reason, ..
            } => strategy_reason.clone(),
            ActiveMode::Inotify { reason: Some(r) } => format!("eBPF unavailable: {r}"),
            ActiveMode::Inotify { reason: None } => "requested (--mode inotify)".to_string(),
        }
    }
}

/// The monitor could not start.
#[derive(Debug, Error)]
pub(crate) enum MonitorError {
    /// eBPF was required and cannot be used.
    #[error("eBPF monitor unavailable: {0}")]
    Ebpf(#[from] EbpfUnavailable),
    /// The kernel filter could not be loaded.
    #[error("loading watched names into the kernel filter: {0}")]
    Filter(#[from] aya::maps::MapError),
    /// The fallback could not start either.
    #[error(transparent)]
    Inotify(#[from] InotifyError),
    /// Nothing to watch.
    #[error("no paths to watch")]
    NoPaths,
}

/// Counters reported when the monitor stops (and used by the end-to-end tests).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct MonitorStats {
    /// The source that ran.
    #[serde(flatten)]
    pub mode: ActiveMode,
    /// Kernel counters (eBPF mode).
    pub kernel: Option<KernelStats>,
    /// Ring-buffer records the agent could not decode (eBPF mode): the eBPF object and the agent
    /// were built from different sources.
    pub decode_errors: Option<u64>,
    /// Raw inotify events received (inotify mode).
    pub inotify_events: Option<u64>,
    /// Hints processed.
    pub hints: u64,
    /// Confirmed changes emitted.
    pub confirmed: u64,
    /// Resync passes run.
    pub resyncs: u64,
}

/// The monitor's running counts, kept current while it runs so `/status` and `/metrics` can show
/// them live. The monitor writes them; whoever holds a clone (the admin endpoint) only reads, so
/// the data flows one way and the monitor imports nothing above it (as `converge::ProbeBoard`).
#[derive(Debug, Clone, Default)]
pub(crate) struct MonitorCounters(Arc<Counts>);

#[derive(Debug, Default)]
struct Counts {
    ringbuf_drops: AtomicU64,
    decode_errors: AtomicU64,
}

impl MonitorCounters {
    /// Events the kernel lost to a full ring buffer, as last read (at every resync).
    pub(crate) fn ringbuf_drops(&self) -> u64 {
        self.0.ringbuf_drops.load(Ordering::Relaxed)
    }

    /// Ring-buffer records the agent could not decode (an eBPF object and agent mismatch), counted
    /// as each is dropped.
    pub(crate) fn decode_errors(&self) -> u64 {
        self.0.decode_errors.load(Ordering::Relaxed)
    }

    fn set_ringbuf_drops(&self, drops: u64) {
        self.0.ringbuf_drops.store(drops, Ordering::Relaxed);
    }

    fn count_decode_error(&self) {
        self.0.decode_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts as a monitor would have left them, for the readers' tests.
    #[cfg(test)]
    pub(crate) fn with_counts(ringbuf_drops: u64, decode_errors: u64) -> Self {
        let counters = Self::default();
        counters.set_ringbuf_drops(ringbuf_drops);
        counters
            .0
            .decode_errors
            .store(decode_errors, Ordering::Relaxed);
        counters
    }
}

/// What a confirmation pass reads and updates, moved to the blocking pool for each pass.
struct Files {
    watch: WatchSet,
    confirmer: Confirmer,
}

enum Active {
    Kernel(Box<KernelSource>),
    Inotify(InotifySource),
}

/// A started monitor: sources attached, baseline taken.
pub(crate) struct Monitor {
    /// The paths and the confirmer, shared with the blocking-pool task that reads the files.
    files: Arc<Mutex<Files>>,
    active: Active,
    mode: ActiveMode,
    resync: Duration,
    stats: MonitorStats,
    counters: MonitorCounters,
}

impl Monitor {
    /// Attaches the source and snapshots every path. Must run inside a tokio runtime.
    pub(crate) fn start(config: &MonitorConfig) -> Result<Self, MonitorError> {
        if config.paths.is_empty() {
            return Err(MonitorError::NoPaths);
        }
        let watch = WatchSet::new(&config.paths);
        let counters = MonitorCounters::default();
        let (active, mode) = match config.mode {
            ModeRequest::Inotify => (
                Active::Inotify(InotifySource::start(&watch.directories())?),
                ActiveMode::Inotify { reason: None },
            ),
            ModeRequest::Ebpf => {
                let (k, mode) = start_kernel(config, &watch, &counters)?;
                (Active::Kernel(Box::new(k)), mode)
            }
            ModeRequest::Auto => match start_kernel(config, &watch, &counters) {
                Ok((k, mode)) => (Active::Kernel(Box::new(k)), mode),
                Err(e) => {
                    tracing::warn!(
                        reason = %e,
                        "eBPF monitor unavailable; falling back to inotify: changes are still seen, but not attributed to a writer"
                    );
                    let reason = Some(e.to_string());
                    (
                        Active::Inotify(InotifySource::start(&watch.directories())?),
                        ActiveMode::Inotify { reason },
                    )
                }
            },
        };
        let confirmer = Confirmer::new(&watch);
        let stats = MonitorStats {
            mode: mode.clone(),
            kernel: None,
            decode_errors: None,
            inotify_events: None,
            hints: 0,
            confirmed: 0,
            resyncs: 0,
        };
        if let ActiveMode::Ebpf {
            hook,
            strategy_reason,
        } = &mode
        {
            tracing::info!(strategy = %hook, reason = %strategy_reason, "hook strategy chosen");
        }
        tracing::info!(mode = ?mode, paths = watch.paths().len(), names = watch.all_names().len(), "monitor ready");
        Ok(Monitor {
            files: Arc::new(Mutex::new(Files { watch, confirmer })),
            active,
            mode,
            resync: config.resync,
            stats,
            counters,
        })
    }

    /// The running counts (ring-buffer drops, decode errors), for status and metrics while running.
    pub(crate) fn counters(&self) -> MonitorCounters {
        self.counters.clone()
    }

    /// The source in use.
    pub(crate) fn mode(&self) -> &ActiveMode {
        &self.mode
    }

    /// Runs until `shutdown` turns true (or its sender is dropped), sending every confirmed change.
    pub(crate) async fn run(
        mut self,
        changes: mpsc::Sender<ConfirmedChange>,
        mut shutdown: crate::shutdown::Shutdown,
    ) -> MonitorStats {
        let mut resync = tokio::time::interval(self.resync);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        resync.tick().await; // the first tick is immediate; the baseline was just taken
                             // Operations drained right after a read: the next pass's hints.
        let mut after_read: Vec<Hint> = Vec::new();
        loop {
            let overdue_at = self.lock_files().confirmer.next_deferred();
            let overdue = or_pending(overdue_at.map(|at| tokio::time::sleep_until(at.into())));
            let carried = std::mem::take(&mut after_read);
            let mut pass: Pass = if !carried.is_empty() {
                Pass::Hints(carried)
            } else {
                tokio::select! {
                    _ = shutdown.recv() => break,
                    _ = resync.tick() => {
                        self.stats.resyncs += 1;
                        if let Active::Kernel(k) = &self.active {
                            self.counters.set_ringbuf_drops(k.stats().dropped);
                        }
                        Pass::Hints(vec![Hint { scope: Scope::All, source: Source::Resync, writer: None, kernel_ts_ns: None, operation: "resync", touched: Vec::new() }])
                    }
                    _ = overdue => Pass::Overdue,
                    hints = next_hints(&mut self.active) => match hints {
                        Some(h) => Pass::Hints(h),
                        None => break,
                    },
                }
            };
            // Every operation already finished in the kernel is judged with this read.
            if let Active::Kernel(k) = &mut self.active {
                let (queued, _) = k.settle().await;
                match &mut pass {
                    Pass::Hints(h) => h.extend(queued),
                    Pass::Overdue => after_read.extend(queued),
                }
            }
            if shutdown.is_shutdown() {
                break;
            }
            if let Pass::Hints(h) = &pass {
                self.stats.hints += h.len() as u64;
                // Hints for names no watched path resolves to need no pass on the blocking pool
                // (inotify reports every name in a watched directory).
                let files = self.lock_files();
                if h.iter()
                    .all(|hint| files.watch.resolve(&hint.scope).is_empty())
                {
                    continue;
                }
            }
            let busy = match &self.active {
                Active::Kernel(k) => k.busy_files(),
                Active::Inotify(_) => Default::default(),
            };
            let files = self.files.clone();
            let read = tokio::task::spawn_blocking(move || {
                let mut files = files.lock_or_recover();
                files.confirm(&pass, &busy)
            });
            // Shutdown does not wait for a read in progress (the pass is abandoned with the task).
            let (confirmed, names_changed) = tokio::select! {
                _ = shutdown.recv() => break,
                read = read => match read {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(error = %e, "confirmation pass failed; the resync retries");
                        continue;
                    }
                },
            };
            if names_changed {
                self.reload_names();
            }
            let mut confirmed = confirmed;
            if let Active::Kernel(k) = &mut self.active {
                let (during, settled) = k.settle().await;
                if !confirmed.is_empty() {
                    attribution::judge_after_read(&mut confirmed, &during, settled);
                }
                after_read.extend(during);
            }
            for change in confirmed {
                self.stats.confirmed += 1;
                if changes.send(change).await.is_err() {
                    return self.finish();
                }
            }
        }
        self.finish()
    }

    fn lock_files(&self) -> std::sync::MutexGuard<'_, Files> {
        self.files.lock_or_recover()
    }

    fn reload_names(&mut self) {
        let (names, directories) = {
            let files = self.lock_files();
            (files.watch.all_names(), files.watch.directories())
        };
        match &mut self.active {
            Active::Kernel(k) => {
                if let Err(e) = k.hooks_mut().set_names(&names) {
                    let capacity = k.hooks_mut().names_capacity();
                    tracing::error!(error = %e, names = names.len(), capacity, "updating the kernel filter failed (it holds `capacity` basenames, twice the count at start); the resync still covers every path");
                }
            }
            Active::Inotify(i) => i.watch(&directories),
        }
    }

    fn finish(mut self) -> MonitorStats {
        match &self.active {
            Active::Kernel(k) => {
                self.stats.kernel = Some(k.stats());
                self.stats.decode_errors = Some(self.counters.decode_errors());
            }
            Active::Inotify(i) => self.stats.inotify_events = Some(i.raw_events()),
        }
        self.stats
    }
}

/// What one confirmation pass is for.
enum Pass {
    /// A batch of hints (or the resync's hint for every path).
    Hints(Vec<Hint>),
    /// Deferred paths whose writer-hold bound has passed.
    Overdue,
}

impl Files {
    /// Runs one pass (blocking file reads); returns the confirmed changes and whether the watched
    /// names changed (a symlink now points elsewhere), so the source is told about the new ones.
    fn confirm(&mut self, pass: &Pass, busy: &HashSet<(u64, u64)>) -> (Vec<ConfirmedChange>, bool) {
        let out = match pass {
            Pass::Overdue => self.confirmer.check_overdue(&self.watch),
            Pass::Hints(hints) => self.confirm_hints(hints, busy),
        };
        if out.is_empty() {
            return (out, false);
        }
        let names_changed = match pass {
            Pass::Hints(hints) if !hints.iter().any(|h| matches!(h.scope, Scope::All)) => {
                let mut touched: Vec<usize> = hints
                    .iter()
                    .flat_map(|h| self.watch.resolve(&h.scope))
                    .collect();
                touched.sort_unstable();
                touched.dedup();
                self.watch.refresh_paths(&touched)
            }
            // The resync and the writer-hold bound look at every path anyway.
            _ => self.watch.refresh(),
        };
        (out, names_changed)
    }

    /// Confirms a batch of hints. Each path is read once, on behalf of every hint that concerns
    /// it: the last one asked (its source is the change's), and all of them are the operations
    /// judged for its writer (`attribution`). A write still in progress (inotify's `IN_MODIFY`)
    /// only defers its paths.
    fn confirm_hints(
        &mut self,
        hints: &[Hint],
        busy: &HashSet<(u64, u64)>,
    ) -> Vec<ConfirmedChange> {
        let mut per_path: BTreeMap<usize, Vec<&Hint>> = BTreeMap::new();
        for hint in hints {
            for i in self.watch.resolve(&hint.scope) {
                per_path.entry(i).or_default().push(hint);
            }
        }
        let mut out = Vec::new();
        for (i, mine) in per_path {
            let Some(last) = mine.last() else { continue };
            if last.operation == inotify::STILL_WRITING {
                self.confirmer.defer(&[i], last);
                continue;
            }
            if mine.iter().all(|h| h.is_open()) {
                self.confirmer.carry(i, &mine);
                continue;
            }
            out.extend(
                self.confirmer
                    .check_path(&self.watch, i, &mine, |p| ebpf::is_busy(busy, p)),
            );
        }
        out
    }
}

/// Starts the kernel source with the strategy `config.hook` asks for (`auto`: the cheapest the
/// kernel allows) and loads the filter; the mode says which strategy and why.
fn start_kernel(
    config: &MonitorConfig,
    watch: &WatchSet,
    counters: &MonitorCounters,
) -> Result<(KernelSource, ActiveMode), MonitorError> {
    let names = watch.all_names();
    let (mut kernel, choice) = KernelSource::choose(
        config.hook,
        config.profile_hooks,
        names.len(),
        counters.clone(),
    )?;
    kernel.hooks_mut().set_names(&names)?;
    let mode = ActiveMode::Ebpf {
        hook: choice.strategy,
        strategy_reason: choice.reason,
    };
    Ok((kernel, mode))
}

async fn next_hints(active: &mut Active) -> Option<Vec<Hint>> {
    match active {
        Active::Kernel(k) => match k.next_batch().await {
            Ok(batch) => Some(k.hints(&batch)),
            Err(e) => {
                tracing::error!(error = %e, "reading the eBPF ring buffer failed; stopping the monitor");
                None
            }
        },
        Active::Inotify(i) => i.next_hint().await.map(|h| vec![h]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_shared_with_every_clone() {
        let counters = MonitorCounters::default();
        let reader = counters.clone();
        counters.count_decode_error();
        counters.count_decode_error();
        counters.set_ringbuf_drops(5);
        assert_eq!((reader.decode_errors(), reader.ringbuf_drops()), (2, 5));
    }
}
