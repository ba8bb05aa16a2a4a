//! `certreload watch`: run the monitor and print one confirmed change per line.

use std::io::Write;

use serde::Serialize;
use thiserror::Error;
use tokio::sync::mpsc;

use crate::{
    monitor::{ConfirmedChange, Monitor, MonitorConfig, MonitorError, MonitorStats},
    output::Output,
    shutdown::{self, ShutdownSignal},
};

/// `watch` failed before or while running.
#[derive(Debug, Error)]
pub(crate) enum WatchError {
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
pub(crate) async fn run(config: MonitorConfig, output: Output) -> Result<MonitorStats, WatchError> {
    let mut shutdown = ShutdownSignal::install();
    let monitor = Monitor::start(&config)?;
    let (tx, mut rx) = mpsc::channel::<ConfirmedChange>(256);
    let (stop, stopped) = shutdown::channel();
    let task = tokio::spawn(monitor.run(tx, stopped));
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
    stop.stop();
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
