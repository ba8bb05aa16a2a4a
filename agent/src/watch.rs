//! `certreload watch`: run the monitor and print one confirmed change per line.

use std::io::Write;

use serde::Serialize;
use thiserror::Error;
use tokio::sync::{mpsc, watch};

use crate::monitor::{ConfirmedChange, Monitor, MonitorConfig, MonitorError, MonitorStats};

/// Output format of `watch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// One JSON object per line (stable field names; see the README).
    Json,
    /// One human-readable line per change.
    Text,
}

/// `watch` failed before or while running.
#[derive(Debug, Error)]
pub enum WatchError {
    /// The monitor could not start.
    #[error(transparent)]
    Monitor(#[from] MonitorError),
    /// Writing to stdout failed (e.g. the reader went away).
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
}

/// The line printed on stderr when `watch` stops, for operators and tests.
#[derive(Debug, Serialize)]
struct StatsLine<'a> {
    monitor_stats: &'a MonitorStats,
}

/// Runs the monitor until SIGINT/SIGTERM, printing changes to stdout as they are confirmed.
pub async fn run(config: MonitorConfig, output: Output) -> Result<MonitorStats, WatchError> {
    let mut shutdown = ShutdownSignal::install();
    let monitor = Monitor::start(&config)?;
    let (tx, mut rx) = mpsc::channel::<ConfirmedChange>(256);
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(monitor.run(tx, stop_rx));
    let mut stdout = std::io::stdout().lock();
    loop {
        tokio::select! {
            _ = shutdown.recv() => break,
            change = rx.recv() => match change {
                Some(change) => {
                    let line = match output {
                        Output::Json => serde_json::to_string(&change).unwrap_or_default(),
                        Output::Text => change.to_text(),
                    };
                    writeln!(stdout, "{line}")?;
                    stdout.flush()?;
                }
                None => break,
            },
        }
    }
    let _ = stop_tx.send(true);
    drop(rx);
    let stats = task
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    eprintln!(
        "{}",
        serde_json::to_string(&StatsLine {
            monitor_stats: &stats
        })
        .unwrap_or_default()
    );
    Ok(stats)
}

/// SIGINT and SIGTERM (a DaemonSet pod is stopped with SIGTERM), caught from the moment this is
/// made. Install it first thing: a handler registered lazily, when a `select!` first polls it,
/// leaves a window after start-up in which SIGTERM still has its default action and kills the agent
/// without its `agent_stopped` record (seen as "agent exited with signal 15" right after "ready").
pub struct ShutdownSignal {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl ShutdownSignal {
    /// Registers both handlers now; a signal arriving before [`ShutdownSignal::recv`] is kept.
    pub fn install() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate())
            .map_err(|e| tracing::warn!(error = %e, "cannot catch SIGTERM"))
            .ok();
        let int = signal(SignalKind::interrupt())
            .map_err(|e| tracing::warn!(error = %e, "cannot catch SIGINT"))
            .ok();
        ShutdownSignal { term, int }
    }

    /// Resolves on the first SIGINT or SIGTERM (never, for one that could not be caught).
    pub async fn recv(&mut self) {
        async fn one(s: &mut Option<tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            _ = one(&mut self.term) => {}
            _ = one(&mut self.int) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ShutdownSignal;

    /// A SIGTERM that arrives after `install` but before anyone awaits `recv` is neither lost nor
    /// left to its default action (which would kill this test process).
    #[tokio::test]
    async fn a_signal_before_recv_is_kept() {
        let mut shutdown = ShutdownSignal::install();
        // SAFETY: raise(3) on our own process; the handler is registered above.
        assert_eq!(unsafe { libc::raise(libc::SIGTERM) }, 0);
        tokio::time::timeout(std::time::Duration::from_secs(10), shutdown.recv())
            .await
            .expect("the SIGTERM raised before recv is delivered");
    }
}
