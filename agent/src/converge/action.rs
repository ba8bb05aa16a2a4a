//! Reload actions: for components that cannot pick up new material by themselves, run a command
//! or send a signal, only for validated generations, with a timeout, a rate limit and never two
//! at once for one bundle; every run audited. An action with a `lock` also never runs at the same
//! time as the same lock's action on another node (a Lease, [`super::lease`]), and keeps the lock
//! until its bundle's probes converged after it ([`super::settle`]).

use std::{path::Path, process::Stdio, sync::Arc, time::Instant};

use tokio::sync::{mpsc, Mutex};

use super::{
    lease::{Acquired, HeldLease, Leases},
    settle::ConvergenceFeed,
};
use crate::{
    audit::{append_shared, AuditEvent, SharedAudit},
    config::{ActionCommand, ActionConfig, ActionLock, ActionTrigger, SignalTarget},
    telemetry::{ActionLabel, Metrics},
};

/// Most bytes of a command's output kept in the record.
pub(crate) const OUTPUT_LIMIT: usize = 4096;

/// What actions need from the agent.
#[derive(Clone)]
pub(crate) struct ActionContext {
    /// Audit trail.
    pub audit: SharedAudit,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Probe verdicts, to hold a lock until the bundle's endpoints converged.
    pub feed: ConvergenceFeed,
    /// The Leases behind `lock`s.
    pub leases: Arc<Leases>,
}

/// What one run did.
struct Outcome {
    command: String,
    exit_status: Option<i32>,
    timed_out: bool,
    success: bool,
    output: String,
}

/// Runs `config` for each generation received on `triggers` until `shutdown`. Triggers that
/// arrive while waiting out `min_interval` are coalesced into one run for the newest generation.
/// `bundle_lock` is shared by every action of the bundle.
pub(crate) async fn run(
    config: ActionConfig,
    ctx: ActionContext,
    mut triggers: mpsc::Receiver<u64>,
    bundle_lock: Arc<Mutex<()>>,
    mut shutdown: crate::shutdown::Shutdown,
) {
    let mut last_run: Option<Instant> = None;
    loop {
        let mut generation = tokio::select! {
            _ = shutdown.recv() => return,
            g = triggers.recv() => match g { Some(g) => g, None => return },
        };
        if !wait_out_min_interval(&config, last_run, generation, &mut shutdown).await {
            return;
        }
        coalesce(&mut triggers, &mut generation);
        let _guard = bundle_lock.lock().await;
        let held = match &config.lock {
            None => None,
            Some(lock) => {
                match lock_for_run(
                    &config,
                    lock,
                    &ctx,
                    &mut generation,
                    &mut triggers,
                    &mut shutdown,
                )
                .await
                {
                    LockStep::Run(held) => Some(held),
                    LockStep::Skip => continue,
                    LockStep::Stop => return,
                }
            }
        };
        let started = Instant::now();
        last_run = Some(started);
        let ended = run_and_audit(&config, &ctx, generation, started).await;
        if let (Some(held), Some(lock)) = (held, &config.lock) {
            hold_until_settled(&config, lock, &ctx, generation, held, ended, &mut shutdown).await;
            if shutdown.is_shutdown() {
                return;
            }
        }
    }
}

/// Sleeps until `min_interval` has passed since the last run, so that a burst of generations
/// restarts a component once. `false` when shutdown came first.
async fn wait_out_min_interval(
    config: &ActionConfig,
    last_run: Option<Instant>,
    generation: u64,
    shutdown: &mut crate::shutdown::Shutdown,
) -> bool {
    let Some(last) = last_run else {
        return true;
    };
    let ready = crate::clock::later(last, config.min_interval).into_std();
    if Instant::now() < ready {
        tracing::info!(action = %config.id(), generation, wait_s = (ready - Instant::now()).as_secs_f64(), "action rate-limited: waiting for min_interval");
        tokio::select! {
            _ = shutdown.recv() => return false,
            _ = tokio::time::sleep_until(ready.into()) => {}
        }
    }
    true
}

/// Takes the triggers that queued up meanwhile: one run serves them all, for the newest generation.
fn coalesce(triggers: &mut mpsc::Receiver<u64>, generation: &mut u64) {
    while let Ok(newer) = triggers.try_recv() {
        *generation = (*generation).max(newer);
    }
}

/// What the action's lock allows.
enum LockStep {
    /// Held: run, then keep it until the bundle's probes settle.
    Run(HeldRun),
    /// Not acquired within `lock_wait`: this trigger does not run.
    Skip,
    /// Shutdown while waiting.
    Stop,
}

/// Waits for the action's Lease and audits the outcome (acquired, or given up). Triggers that came
/// while waiting are coalesced into `generation`, so the run is for the newest.
async fn lock_for_run(
    config: &ActionConfig,
    lock: &ActionLock,
    ctx: &ActionContext,
    generation: &mut u64,
    triggers: &mut mpsc::Receiver<u64>,
    shutdown: &mut crate::shutdown::Shutdown,
) -> LockStep {
    match take_lock(config, lock, ctx, *generation, shutdown).await {
        Acquired::Held(held) => {
            // Triggers that came while waiting: run once, for the newest.
            coalesce(triggers, generation);
            let event = AuditEvent::LockAcquired {
                action: config.id(),
                lock: lock.name.clone(),
                lease: ctx.leases.lease_ref(lock),
                holder: ctx.leases.settings().holder.clone(),
                generation: *generation,
                waited_s: held.waited.as_secs_f64(),
                acquired_at: held.acquired_at.clone(),
            };
            audit(ctx, config, &event);
            LockStep::Run(held)
        }
        Acquired::GaveUp(last) => {
            let generation = *generation;
            tracing::error!(action = %config.id(), lock = %lock.name, generation, reason = %last.describe(), "lock not acquired within lock_wait: the action does not run");
            let event = AuditEvent::LockNotAcquired {
                action: config.id(),
                lock: lock.name.clone(),
                lease: ctx.leases.lease_ref(lock),
                generation,
                waited_s: lock.wait.as_secs_f64(),
                reason: last.describe(),
            };
            audit(ctx, config, &event);
            LockStep::Skip
        }
        Acquired::Shutdown => LockStep::Stop,
    }
}

/// Runs the command or signal once, counts and audits the run. Returns when it ended, the instant
/// from which a probe verdict counts as being about the component after the run.
async fn run_and_audit(
    config: &ActionConfig,
    ctx: &ActionContext,
    generation: u64,
    started: Instant,
) -> tokio::time::Instant {
    let outcome = execute(config, generation).await;
    let ended = tokio::time::Instant::now();
    let duration_s = started.elapsed().as_secs_f64();
    let result = if outcome.timed_out {
        "timeout"
    } else if outcome.success {
        "success"
    } else {
        "failure"
    };
    ctx.metrics
        .actions
        .get_or_create(&ActionLabel {
            action: config.id(),
            result: result.into(),
        })
        .inc();
    tracing::info!(action = %config.id(), generation, command = %outcome.command, result, duration_s, "action ran");
    let event = AuditEvent::ActionRun {
        action: config.id(),
        trigger: match config.on {
            ActionTrigger::Stale => "stale",
            ActionTrigger::Accepted => "accepted",
        }
        .into(),
        generation,
        command: outcome.command,
        exit_status: outcome.exit_status,
        timed_out: outcome.timed_out,
        success: outcome.success,
        duration_s,
        output: outcome.output,
    };
    audit(ctx, config, &event);
    ended
}

/// Keeps the lock until the component is back and serving what it should (or shutdown), so the
/// next node restarts its own only then; then releases it.
async fn hold_until_settled(
    config: &ActionConfig,
    lock: &ActionLock,
    ctx: &ActionContext,
    generation: u64,
    held: HeldRun,
    ended: tokio::time::Instant,
    shutdown: &mut crate::shutdown::Shutdown,
) {
    ctx.feed.request_recheck(&config.bundle);
    let probes = tokio::select! {
        _ = shutdown.recv() => Vec::new(),
        p = ctx.feed.settled(&config.bundle, generation, ended) => p,
    };
    release_lock(config, lock, ctx, generation, held, probes).await;
}

/// A lock taken for one run.
struct HeldRun {
    lease: HeldLease,
    waited: std::time::Duration,
    acquired_at: String,
}

/// Waits for the action's Lease, auditing each new reason to wait.
async fn take_lock(
    config: &ActionConfig,
    lock: &ActionLock,
    ctx: &ActionContext,
    generation: u64,
    shutdown: &mut crate::shutdown::Shutdown,
) -> Acquired<HeldRun> {
    let began = Instant::now();
    let outcome = ctx
        .leases
        .acquire(lock, shutdown, |waiting| {
            let event = AuditEvent::LockWait {
                action: config.id(),
                lock: lock.name.clone(),
                lease: ctx.leases.lease_ref(lock),
                generation,
                holder: waiting.holder().map(str::to_string),
                reason: waiting.describe(),
            };
            audit(ctx, config, &event);
        })
        .await;
    match outcome {
        Acquired::Held(lease) => {
            // Taken after the API server confirmed the hold: the hold began before this.
            let acquired_at = crate::clock::now_rfc3339();
            tracing::info!(action = %config.id(), lock = %lock.name, generation, "lock acquired");
            Acquired::Held(HeldRun {
                lease,
                waited: began.elapsed(),
                acquired_at,
            })
        }
        Acquired::GaveUp(w) => Acquired::GaveUp(w),
        Acquired::Shutdown => Acquired::Shutdown,
    }
}

/// Gives the Lease back and audits the hold.
async fn release_lock(
    config: &ActionConfig,
    lock: &ActionLock,
    ctx: &ActionContext,
    generation: u64,
    held: HeldRun,
    probes: Vec<crate::audit::event::ProbeSettled>,
) {
    // Taken before the release is sent: the hold lasted at least until this.
    let held_until = crate::clock::now_rfc3339();
    let held_s = held.lease.acquired.elapsed().as_secs_f64();
    let lost = held.lease.lost();
    let result = held.lease.release().await;
    let released = result.is_ok() && lost.is_none();
    let error = match (&result, lost) {
        (_, Some(lost)) => Some(lost),
        (Err(e), None) => Some(format!("{e}; the Lease expires by itself")),
        (Ok(()), None) => None,
    };
    tracing::info!(action = %config.id(), lock = %lock.name, generation, held_s, released, "lock released");
    let event = AuditEvent::LockReleased {
        action: config.id(),
        lock: lock.name.clone(),
        lease: ctx.leases.lease_ref(lock),
        generation,
        held_until,
        held_s,
        probes,
        released,
        error,
    };
    audit(ctx, config, &event);
}

fn audit(ctx: &ActionContext, config: &ActionConfig, event: &AuditEvent) {
    if let Err(e) = append_shared(&ctx.audit, Some(&config.bundle), event) {
        tracing::error!(error = %e, event = event.name(), "cannot audit an action");
    }
}

async fn execute(config: &ActionConfig, generation: u64) -> Outcome {
    match &config.command {
        ActionCommand::Exec(argv) => exec(argv, config, generation).await,
        ActionCommand::Signal {
            name,
            number,
            target,
        } => signal(name, *number, target),
    }
}

async fn exec(argv: &[String], config: &ActionConfig, generation: u64) -> Outcome {
    let command = argv.join(" ");
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env("CERTRELOAD_BUNDLE", &config.bundle)
        .env("CERTRELOAD_GENERATION", generation.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    crate::accept::restore_inherited_nofile(&mut cmd);
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Outcome {
                command,
                exit_status: None,
                timed_out: false,
                success: false,
                output: format!("cannot start {:?}: {e}", argv[0]),
            }
        }
    };
    match tokio::time::timeout(config.timeout, child.wait_with_output()).await {
        Err(_) => Outcome {
            command,
            exit_status: None,
            timed_out: true,
            success: false,
            output: format!("killed after {:?}", config.timeout),
        },
        Ok(Err(e)) => Outcome {
            command,
            exit_status: None,
            timed_out: false,
            success: false,
            output: format!("waiting for it: {e}"),
        },
        Ok(Ok(out)) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            Outcome {
                command,
                exit_status: out.status.code(),
                timed_out: false,
                success: out.status.success(),
                output: truncate(text),
            }
        }
    }
}

fn truncate(mut text: String) -> String {
    if text.len() > OUTPUT_LIMIT {
        let mut cut = OUTPUT_LIMIT;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("…[truncated]");
    }
    text
}

fn signal(name: &str, number: i32, target: &SignalTarget) -> Outcome {
    let pids: Result<Vec<i32>, String> = match target {
        SignalTarget::Pidfile(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("pidfile {}: {e}", path.display()))
            .and_then(|s| {
                s.trim()
                    .parse::<i32>()
                    .ok()
                    .filter(|p| *p > 1)
                    .map(|p| vec![p])
                    .ok_or_else(|| format!("pidfile {}: no pid in it", path.display()))
            }),
        SignalTarget::Process(exe) => {
            let pids = processes_named(exe);
            if pids.is_empty() {
                Err(format!("no process runs an executable named {exe:?}"))
            } else {
                Ok(pids)
            }
        }
    };
    let pids = match pids {
        Ok(p) => p,
        Err(output) => {
            return Outcome {
                command: format!("kill -{name}"),
                exit_status: None,
                timed_out: false,
                success: false,
                output,
            }
        }
    };
    let mut output = Vec::new();
    let mut success = true;
    for pid in &pids {
        match crate::sys::process::kill(*pid, number) {
            Ok(()) => output.push(format!("sent SIG{name} to {pid}")),
            Err(e) => {
                success = false;
                output.push(format!("SIG{name} to {pid}: {e}"));
            }
        }
    }
    Outcome {
        command: format!(
            "kill -{name} {}",
            pids.iter()
                .map(i32::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        ),
        exit_status: None,
        timed_out: false,
        success,
        output: output.join("; "),
    }
}

/// Pids whose `/proc/PID/exe` has exactly this file name.
fn processes_named(exe: &str) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/exe"))
                .ok()
                .and_then(|p| {
                    Path::new(&p)
                        .file_name()
                        .map(|f| f.to_string_lossy().into_owned())
                })
                .is_some_and(|f| f == exe)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::audit::AuditLog;

    fn action(command: ActionCommand, timeout_ms: u64, min_interval_ms: u64) -> ActionConfig {
        ActionConfig {
            name: None,
            bundle: "b".into(),
            on: ActionTrigger::Accepted,
            probe: None,
            command,
            timeout: Duration::from_millis(timeout_ms),
            min_interval: Duration::from_millis(min_interval_ms),
            line: 1,
            lock: None,
        }
    }

    /// A context whose Leases are never asked (the actions of these tests have no lock).
    fn context(audit: SharedAudit) -> ActionContext {
        ActionContext {
            audit,
            metrics: Arc::default(),
            feed: ConvergenceFeed::default(),
            leases: Arc::new(Leases::new(super::super::lease::LockSettings {
                namespace: "certreload".into(),
                lease_duration: Duration::from_secs(30),
                holder: "test-node".into(),
            })),
        }
    }

    fn sh(script: &str) -> ActionCommand {
        ActionCommand::Exec(vec!["/bin/sh".into(), "-c".into(), script.into()])
    }

    #[tokio::test]
    async fn exec_captures_status_and_output_and_passes_the_generation() {
        let out = execute(
            &action(
                sh("echo gen=$CERTRELOAD_GENERATION; echo err >&2; exit 3"),
                5000,
                0,
            ),
            7,
        )
        .await;
        assert_eq!(out.exit_status, Some(3));
        assert!(!out.success && !out.timed_out);
        assert!(
            out.output.contains("gen=7") && out.output.contains("err"),
            "{}",
            out.output
        );
    }

    #[tokio::test]
    async fn exec_is_killed_at_its_timeout() {
        let started = Instant::now();
        let out = execute(&action(sh("sleep 30"), 200, 0), 1).await;
        assert!(out.timed_out && !out.success);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "not waited for"
        );
    }

    #[tokio::test]
    async fn a_missing_program_is_a_failed_run_not_a_crash() {
        let cmd = ActionCommand::Exec(vec!["/nonexistent/reload".into()]);
        let out = execute(&action(cmd, 1000, 0), 1).await;
        assert!(!out.success);
        assert!(out.output.contains("/nonexistent/reload"), "{}", out.output);
    }

    #[test]
    fn output_is_truncated_on_a_char_boundary() {
        let long = "é".repeat(OUTPUT_LIMIT);
        let cut = truncate(long);
        assert!(cut.len() <= OUTPUT_LIMIT + "…[truncated]".len());
        assert!(cut.ends_with("…[truncated]"));
    }

    #[tokio::test]
    async fn signal_reaches_the_pid_in_the_pidfile() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let pidfile = dir.path().join("x.pid");
        std::fs::write(&pidfile, child.id().to_string()).expect("write");
        let cmd = ActionCommand::Signal {
            name: "TERM".into(),
            number: libc::SIGTERM,
            target: SignalTarget::Pidfile(pidfile),
        };
        let out = execute(&action(cmd, 1000, 0), 1).await;
        assert!(out.success, "{}", out.output);
        let status = child.wait().expect("wait");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGTERM)
        );
    }

    #[tokio::test]
    async fn triggers_inside_min_interval_coalesce_into_one_later_run() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let audit = Arc::new(std::sync::Mutex::new(
            AuditLog::open(&path, 1 << 20).expect("audit"),
        ));
        let ctx = context(audit);
        let (tx, rx) = mpsc::channel(16);
        let (stop, stopped) = crate::shutdown::channel();
        let task = tokio::spawn(run(
            action(sh("true"), 5000, 400),
            ctx,
            rx,
            Arc::default(),
            stopped,
        ));
        for g in 1..=4 {
            tx.send(g).await.expect("send");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(900)).await;
        stop.stop();
        task.await.expect("the action task ends at the stop");
        let runs: Vec<serde_json::Value> = std::fs::read_to_string(&path)
            .expect("read")
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .filter(|r: &serde_json::Value| r["event"] == "action_run")
            .collect();
        let generations: Vec<_> = runs.iter().map(|r| r["generation"].clone()).collect();
        assert_eq!(
            generations,
            vec![1, 4],
            "first at once, the rest coalesced: {runs:?}"
        );
    }
}
