//! The agent's own log on stderr (what `kubectl logs` shows): `text` for a person at a terminal,
//! `json` (one object per line) for a log collector. Set up once, after the command line is
//! parsed, so `--log-format` applies to every command.

use tracing_subscriber::EnvFilter;

/// How log lines are written on stderr (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// `TIMESTAMP LEVEL target: message field=value`, coloured when stderr is a terminal.
    // The default on a terminal and off one: what the agent has always written, so what reads it
    // keeps working; collectors ask for `json`.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message` and the event's fields
    /// at the top level (for log collectors).
    Json,
}

/// The log filter: `CERTRELOAD_LOG` (`tracing` directives, e.g. `debug` or
/// `certreload::monitor=trace`), else `info`.
fn filter() -> EnvFilter {
    EnvFilter::try_from_env("CERTRELOAD_LOG").unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Installs the global subscriber writing `format` on stderr.
pub(crate) fn init(format: LogFormat) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}
