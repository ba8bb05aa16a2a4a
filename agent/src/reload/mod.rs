//! The reload pipeline: confirmed changes in, validated generations out, every step audited.
//!
//! ```text
//! monitor ─ConfirmedChange─> Reloader ─gate─> accepted: audit (fsync) ─> GenerationStore::publish
//!                                          └> rejected / waiting for the other half: audit only
//! ```
//! A mismatch that may only mean "the other file is not written yet" (key vs cert, chain vs CA)
//! waits up to `pair_timeout`, re-checked on every further change, before it is a rejection.
//!
//! A change whose record cannot be written (disk full, immutable audit file) is not applied, and
//! not forgotten either: the bundle stays *held* and is re-evaluated from disk on every resync
//! period and on every further change until its verdict is recorded (applied or rejected). The
//! gate's file reads run on tokio's blocking pool, never on a runtime thread.

pub(crate) mod board;
pub(crate) mod generation;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::PathBuf,
    sync::Arc,
    time::{Instant, SystemTime},
};

use tokio::sync::mpsc;

use self::{
    board::ChangeBoard,
    generation::{Generation, GenerationStore},
};
use crate::{
    audit::{append_shared, AuditEvent, SharedAudit},
    config::{BundleConfig, BundleFiles, Config},
    gate::{validate_bundle, Current},
    material::{
        inspect::CertInfo,
        validate::{CheckResult, Material, Report},
    },
    monitor::{ConfirmedChange, Source},
    sync::or_pending,
    telemetry::{BundleLabel, BundleReason, Metrics, SourceLabel},
};

/// Drives the gate and the generation store from confirmed changes.
pub(crate) struct Reloader {
    config: Config,
    store: Arc<GenerationStore>,
    audit: SharedAudit,
    by_path: HashMap<PathBuf, Vec<usize>>,
    waiting: HashMap<usize, Instant>,
    /// Bundles whose last change is not settled because a record could not be written, with the
    /// change records still to write (in order) before the verdict.
    held: BTreeMap<usize, Vec<AuditEvent>>,
    observers: Option<(Arc<Metrics>, ChangeBoard)>,
}

/// Whether an evaluation's verdict is on record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Applied, unchanged, rejected or waiting for the other half: recorded (or nothing to record).
    Settled,
    /// Its record could not be written: nothing was applied; evaluate again later.
    Held,
}

impl Reloader {
    /// Wires the bundles of `config` to `store`, recording into `audit`.
    pub(crate) fn new(config: Config, store: Arc<GenerationStore>, audit: SharedAudit) -> Self {
        let mut by_path: HashMap<PathBuf, Vec<usize>> = HashMap::new();
        for (i, b) in config.bundles.iter().enumerate() {
            for f in b.files() {
                // A bundle whose cert and key are one file is touched once per change, not twice.
                let bundles = by_path.entry(f).or_default();
                if !bundles.contains(&i) {
                    bundles.push(i);
                }
            }
        }
        Reloader {
            config,
            store,
            audit,
            by_path,
            waiting: HashMap::new(),
            held: BTreeMap::new(),
            observers: None,
        }
    }

    /// Also counts into `metrics` and keeps each bundle's last change on `changes` (read by
    /// `/status`).
    pub(crate) fn observed_by(mut self, metrics: Arc<Metrics>, changes: ChangeBoard) -> Self {
        self.observers = Some((metrics, changes));
        self
    }

    /// Validates every bundle once: valid ones get generation 1; invalid ones are rejected and
    /// reported, and the agent runs the rest.
    pub(crate) async fn startup(&mut self) {
        for i in 0..self.config.bundles.len() {
            if self.evaluate(i, Instant::now(), false).await == Outcome::Held {
                self.held.entry(i).or_default();
            }
        }
        let not_ready = self.store.not_ready();
        if !not_ready.is_empty() {
            tracing::warn!(bundles = ?not_ready, "bundles without valid material at start-up; serving the others");
        }
    }

    /// Runs until `shutdown` turns true or the monitor stops.
    pub(crate) async fn run(
        &mut self,
        mut changes: mpsc::Receiver<ConfirmedChange>,
        mut shutdown: crate::shutdown::Shutdown,
    ) {
        // Held bundles are retried at the monitor's resync period (the resync finds nothing new:
        // the confirmer has already seen these bytes).
        let mut retry = tokio::time::interval(self.config.agent.resync);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        retry.tick().await;
        loop {
            let deadline = self.next_deadline();
            let sleep = or_pending(deadline.map(|d| tokio::time::sleep_until(d.into())));
            tokio::select! {
                _ = shutdown.recv() => return,
                _ = sleep => self.expire_waits().await,
                _ = retry.tick(), if !self.held.is_empty() => self.retry_held().await,
                first = changes.recv() => {
                    let Some(first) = first else { return };
                    let mut batch = vec![first];
                    if !self.config.agent.settle.is_zero() {
                        tokio::time::sleep(self.config.agent.settle).await;
                    }
                    while let Ok(more) = changes.try_recv() {
                        batch.push(more);
                    }
                    self.on_changes(batch).await;
                }
            }
            if shutdown.is_shutdown() {
                return;
            }
        }
    }

    /// Records the changes and re-evaluates every bundle they touch, once each (and every held
    /// bundle: a new change is also a new chance to write what is pending).
    pub(crate) async fn on_changes(&mut self, batch: Vec<ConfirmedChange>) {
        let mut touched = BTreeSet::new();
        for change in &batch {
            if let Some((metrics, _)) = &self.observers {
                metrics
                    .change_events
                    .get_or_create(&SourceLabel {
                        source: change.source.as_str().to_owned(),
                    })
                    .inc();
            }
            let bundles = self.by_path.get(&change.path).cloned().unwrap_or_default();
            for &i in &bundles {
                let name = self.config.bundles[i].name.clone();
                let event = if change.source == Source::Resync {
                    AuditEvent::ResyncFoundChange {
                        path: change.path.clone(),
                    }
                } else {
                    AuditEvent::ChangeDetected {
                        path: change.path.clone(),
                        source: change.source,
                        kind: change.kind,
                        writer: change.writer.clone(),
                        sha256: change.sha256.clone(),
                        attribution: change.attribution,
                        writers: change.writers.clone(),
                    }
                };
                // Once a record is missing, the later ones wait behind it (the trail stays in order).
                let unrecorded = match self.held.get(&i) {
                    Some(queue) if !queue.is_empty() => true,
                    _ => !self.record(Some(&name), &event),
                };
                if unrecorded {
                    self.held.entry(i).or_default().push(event);
                }
                if let Some((_, changes)) = &self.observers {
                    changes.record(&name, change);
                }
                touched.insert(i);
            }
        }
        touched.extend(self.held.keys().copied());
        let now = Instant::now();
        for i in touched {
            self.settle(i, now).await;
        }
    }

    /// Retries every held bundle (the resync period passed).
    async fn retry_held(&mut self) {
        let now = Instant::now();
        for i in self.held.keys().copied().collect::<Vec<_>>() {
            self.settle(i, now).await;
        }
    }

    /// Writes bundle `i`'s change records still pending, then evaluates it; it stays held until
    /// both are on record.
    async fn settle(&mut self, i: usize, now: Instant) {
        let name = self.config.bundles[i].name.clone();
        let queued = self.held.get(&i).cloned().unwrap_or_default();
        for (n, event) in queued.iter().enumerate() {
            if !self.record(Some(&name), event) {
                if let Some(q) = self.held.get_mut(&i) {
                    q.drain(..n);
                }
                return;
            }
        }
        match self.evaluate(i, now, true).await {
            Outcome::Settled => {
                if self.held.remove(&i).is_some() {
                    tracing::info!(bundle = %name, "held change settled: the audit log is writable again");
                }
            }
            Outcome::Held => {
                self.held.insert(i, Vec::new());
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.waiting
            .values()
            // checked: a deadline past what Instant can hold is no deadline, never a panic.
            .filter_map(|since| since.checked_add(self.config.agent.pair_timeout))
            .min()
    }

    async fn expire_waits(&mut self) {
        let now = Instant::now();
        let due: Vec<usize> = self
            .waiting
            .iter()
            .filter(|(_, since)| {
                now.saturating_duration_since(**since) >= self.config.agent.pair_timeout
            })
            .map(|(i, _)| *i)
            .collect();
        for i in due {
            self.settle(i, now).await;
        }
    }

    /// Appends a record; a failure is logged loudly (the caller then does not publish).
    fn record(&mut self, bundle: Option<&str>, event: &AuditEvent) -> bool {
        match append_shared(&self.audit, bundle, event) {
            Ok(_) => true,
            Err(e) => {
                tracing::error!(error = %e, event = event.name(), "cannot write the audit record; the change it reports is held and retried at every resync");
                false
            }
        }
    }

    /// Leaves in use that chain to the CA bundle file `ca_file`, and that bundle's current CAs.
    fn ca_context(&self, ca_file: &PathBuf, bundle: &str) -> (Vec<CertInfo>, Vec<CertInfo>) {
        let in_use = self
            .config
            .bundles
            .iter()
            .filter(|b| matches!(&b.files, BundleFiles::Pair { ca: Some(ca), .. } if ca == ca_file))
            .filter_map(|b| self.store.current(&b.name).and_then(|g| g.leaf().cloned()))
            .collect();
        let cas = self
            .store
            .current(bundle)
            .map(|g| g.material.cas.clone())
            .unwrap_or_default();
        (in_use, cas)
    }

    /// Runs the gate on bundle `i` and acts on the verdict. `may_wait`: a half-written pair may
    /// wait for its other half (not at start-up: there is no later change to wait for).
    async fn evaluate(&mut self, i: usize, now: Instant, may_wait: bool) -> Outcome {
        let bundle = self.config.bundles[i].clone();
        let current = self.store.current(&bundle.name);
        let Some(mut report) = self.gate(&bundle, current.as_deref()).await else {
            return Outcome::Held;
        };
        // The report carries material only when no check failed (`Checks::report`).
        if let Some(material) = report.material.take() {
            self.waiting.remove(&i);
            return self.accept(&bundle.name, current.as_deref(), material, &report, now);
        }
        match report.failure() {
            Some(failure) => {
                let current_number = current.as_ref().map(|g| g.number);
                self.wait_or_reject(i, &bundle.name, current_number, failure, now, may_wait)
            }
            None => Outcome::Settled,
        }
    }

    /// The gate's verdict on `bundle`'s files against its `current` generation; `None` when the
    /// validation did not complete (the bundle is retried at the next resync).
    async fn gate(&self, bundle: &BundleConfig, current: Option<&Generation>) -> Option<Report> {
        let (in_use, cas) = match &bundle.files {
            BundleFiles::Ca { bundle: file, .. } => self.ca_context(file, &bundle.name),
            _ => (Vec::new(), Vec::new()),
        };
        // The gate reads the files: on the blocking pool, so a slow disk stalls only this bundle.
        let leaf = current.and_then(|g| g.leaf().cloned());
        let (gated, agent) = (bundle.clone(), self.config.agent.clone());
        let validated = tokio::task::spawn_blocking(move || {
            let context = Current {
                leaf: leaf.as_ref(),
                cas: &cas,
                in_use: &in_use,
            };
            validate_bundle(&gated, &agent, &context, SystemTime::now())
        })
        .await;
        match validated {
            Ok(report) => Some(report),
            Err(e) => {
                tracing::error!(bundle = %bundle.name, error = %e, "validation did not complete; retried at the next resync");
                None
            }
        }
    }

    /// Valid material: unless it is the current generation's, recorded (durable before visible)
    /// and then published as the next generation.
    fn accept(
        &mut self,
        bundle: &str,
        current: Option<&Generation>,
        material: Material,
        report: &Report,
        now: Instant,
    ) -> Outcome {
        if current
            .is_some_and(|g| Generation::identity(&g.material) == Generation::identity(&material))
        {
            tracing::debug!(bundle = %bundle, "material unchanged; generation stays");
            return Outcome::Settled;
        }
        let current_number = current.map(|g| g.number);
        let number = current_number.map_or(1, |n| n + 1);
        let warnings: Vec<_> = report.warnings().cloned().collect();
        let leaf = material.leaf.as_ref();
        let old = current.and_then(|g| g.leaf());
        let event = AuditEvent::MaterialAccepted {
            old_generation: current_number,
            new_generation: number,
            old_fingerprint: old.map(|l| l.fingerprint.clone()),
            new_fingerprint: leaf.map(|l| l.fingerprint.clone()),
            old_serial: old.map(|l| l.serial.clone()),
            new_serial: leaf.map(|l| l.serial.clone()),
            not_after: leaf.map(|l| l.not_after),
            key_ids: material.key_ids.clone(),
            warnings: warnings.clone(),
        };
        for w in &warnings {
            tracing::warn!(bundle = %bundle, check = %w.check, "accepted with a warning: {}", w.detail);
        }
        // Durable before visible: the swap happens only once its record is on disk.
        if !self.record(Some(bundle), &event) {
            return Outcome::Held;
        }
        self.store.publish(
            bundle,
            Generation {
                number,
                accepted_at: SystemTime::now(),
                material,
            },
        );
        tracing::info!(bundle = %bundle, generation = number, "generation published");
        if let Some((metrics, _)) = &self.observers {
            metrics.change_to_swap.observe(now.elapsed().as_secs_f64());
            metrics
                .reloads
                .get_or_create(&BundleLabel {
                    bundle: bundle.to_string(),
                })
                .inc();
        }
        Outcome::Settled
    }

    /// A failed check: a mismatch that may only mean a half-written pair waits (recorded once)
    /// up to `pair_timeout`; anything else, or a wait that timed out, is a recorded rejection.
    fn wait_or_reject(
        &mut self,
        i: usize,
        bundle: &str,
        current_number: Option<u64>,
        failure: &CheckResult,
        now: Instant,
        may_wait: bool,
    ) -> Outcome {
        let timeout = self.config.agent.pair_timeout;
        if may_wait && failure.check.may_be_half_written() && !timeout.is_zero() {
            match self.waiting.get(&i) {
                None => {
                    let event = AuditEvent::PairWaiting {
                        check: failure.check,
                        reason: failure.detail.clone(),
                        deadline_s: timeout.as_secs_f64(),
                    };
                    if !self.record(Some(bundle), &event) {
                        return Outcome::Held;
                    }
                    self.waiting.insert(i, now);
                    return Outcome::Settled;
                }
                Some(since) if now.duration_since(*since) < timeout => return Outcome::Settled,
                Some(_) => {}
            }
        }
        let event = AuditEvent::MaterialRejected {
            check: failure.check,
            reason: failure.detail.clone(),
            file: failure.file.clone(),
            current_generation: current_number,
        };
        if !self.record(Some(bundle), &event) {
            return Outcome::Held;
        }
        self.waiting.remove(&i);
        if let Some((metrics, _)) = &self.observers {
            metrics
                .rejections
                .get_or_create(&BundleReason {
                    bundle: bundle.to_string(),
                    reason: failure.check.name().to_string(),
                })
                .inc();
        }
        Outcome::Settled
    }
}
