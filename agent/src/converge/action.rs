//! Reload actions: for components that cannot pick up new material by themselves, run a command
//! or send a signal, only for validated generations, with a timeout, a rate limit and never two
//! at once for one bundle; every run audited.

use std::{
    path::Path,
    process::Stdio,
    sync::Arc,
    time::Instant,
};

use tokio::sync::{mpsc, watch, Mutex};

use crate::{
    admin::metrics::{ActionLabel, Metrics},
    audit::{append_shared, AuditEvent, SharedAudit},
    config::{ActionCommand, ActionConfig, ActionTrigger, SignalTarget},
};

/// Most bytes of a command's output kept in the record.
pub const OUTPUT_LIMIT: usize = 4096;

/// What actions need from the agent.
#[derive(Clone)]
pub struct ActionContext {
    /// Audit trail.
    pub audit: SharedAudit,
    /// Counters.
    pub metrics: Arc<Metrics>,
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
pub async fn run(
    config: ActionConfig,
    ctx: ActionContext,
    mut triggers: mpsc::Receiver<u64>,
    bundle_lock: Arc<Mutex<()>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut last_run: Option<Instant> = None;
    loop {
        let mut generation = tokio::select! {
            _ = shutdown.changed() => return,
            g = triggers.recv() => match g { Some(g) => g, None => return },
        };
        if let Some(last) = last_run {
            let ready = last + config.min_interval;
            if Instant::now() < ready {
                tracing::info!(action = %config.id(), generation, wait_s = (ready - Instant::now()).as_secs_f64(), "action rate-limited: waiting for min_interval");
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep_until(ready.into()) => {}
                }
            }
        }
        while let Ok(newer) = triggers.try_recv() {
            generation = generation.max(newer);
        }
        let _guard = bundle_lock.lock().await;
        let started = Instant::now();
        last_run = Some(started);
        let outcome = execute(&config, generation).await;
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
        if let Err(e) = append_shared(&ctx.audit, Some(&config.bundle), &event) {
            tracing::error!(error = %e, "cannot audit an action");
        }
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
        // SAFETY: kill(2) has no memory-safety preconditions.
        let rc = unsafe { libc::kill(*pid, number) };
        if rc == 0 {
            output.push(format!("sent SIG{name} to {pid}"));
        } else {
            success = false;
            output.push(format!(
                "SIG{name} to {pid}: {}",
                std::io::Error::last_os_error()
            ));
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
