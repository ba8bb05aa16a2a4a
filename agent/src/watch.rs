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
    let monitor = Monitor::start(&config)?;
    let (tx, mut rx) = mpsc::channel::<ConfirmedChange>(256);
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(monitor.run(tx, stop_rx));
    let mut stop = Box::pin(shutdown_signal());
    let mut stdout = std::io::stdout().lock();
    loop {
        tokio::select! {
            _ = &mut stop => break,
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

/// Resolves on SIGINT or SIGTERM (a DaemonSet pod is stopped with SIGTERM).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
