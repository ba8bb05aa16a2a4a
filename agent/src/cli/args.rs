//! The command line as clap parses it: arguments and their defaults only; [`super::dispatch`]
//! calls the library for each command.

use std::{path::PathBuf, time::Duration};

use clap::{Parser, Subcommand};

use super::logging::LogFormat;
use crate::{
    config::profile::Profile,
    monitor::{HookStrategy, ModeRequest, DEFAULT_RESYNC},
    output::Output,
};

/// Kernel-assisted certificate hot reload for every TLS endpoint on a node.
#[derive(Debug, Parser)]
#[command(name = "certreload", version, about)]
pub(crate) struct Cli {
    /// What to do; without a command, the built-in demo runs.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// How the log on stderr is written: `text` for a person, `json` (one object per line) for a
    /// log collector. Audit records appear in it once each, as their JSON line.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::default())]
    pub log_format: LogFormat,
}

/// Options shared by every command that runs the monitor.
#[derive(Debug, clap::Args)]
pub(crate) struct MonitorArgs {
    /// Change source: eBPF (falling back to inotify), eBPF only, or inotify only.
    #[arg(long, value_enum, default_value = "auto")]
    pub mode: ModeRequest,
    /// How the kernel hooks are attached: `auto` (the cheapest the kernel allows: fentry, then
    /// syscall tracepoints), or one strategy (see the README's "Hook choice").
    #[arg(long, value_enum, default_value_t = HookStrategy::default_for_host())]
    pub hook: HookStrategy,
    /// Content resync period (seconds), the backstop for what hooks cannot see.
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_RESYNC.as_secs_f64(), value_parser = resync_seconds)]
    pub resync: f64,
    /// Enable kernel BPF run-time statistics and print each hook's cost on exit (benchmarks).
    #[arg(long)]
    pub profile_hooks: bool,
}

impl MonitorArgs {
    /// The resync period as a duration (10 ms to a day; never a panic, even for a NaN).
    pub(crate) fn resync(&self) -> Duration {
        Duration::try_from_secs_f64(self.resync.clamp(0.01, RESYNC_MAX_SECONDS))
            .unwrap_or(DEFAULT_RESYNC)
    }
}

/// The largest `--resync`: a day, as `[agent] resync`.
const RESYNC_MAX_SECONDS: f64 = 86_400.0;

/// `--resync`: seconds from 0.01 to a day. `inf` or `1e30` made `Duration::from_secs_f64` panic;
/// below 10 ms the resync re-reads every file in a loop.
fn resync_seconds(text: &str) -> Result<f64, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|e| format!("{text:?} is not a number of seconds: {e}"))?;
    if (0.01..=RESYNC_MAX_SECONDS).contains(&seconds) {
        Ok(seconds)
    } else {
        Err(format!(
            "{text} is outside the allowed range 0.01 to {RESYNC_MAX_SECONDS} seconds"
        ))
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Watch files and print one confirmed change per line, with the writer that made it.
    Watch {
        /// Files to watch (they need not exist yet).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value = "json")]
        output: Output,
        /// Change source, hook strategy, resync period and hook profiling.
        #[command(flatten)]
        monitor: MonitorArgs,
    },
    /// Run the agent: watch every bundle's files, validate each change, keep generations current,
    /// and audit every step.
    Run {
        /// Configuration file (TOML); with --profile, overlaid on the profile.
        #[arg(long, required_unless_present = "profile")]
        config: Option<PathBuf>,
        /// A built-in profile for a standard node layout.
        #[arg(long, value_enum)]
        profile: Option<Profile>,
        /// The host filesystem root the profile looks under (where a container mounts it).
        #[arg(long, default_value = "/")]
        host_root: PathBuf,
        /// Change source: eBPF (falling back to inotify), eBPF only, or inotify only.
        #[arg(long, value_enum, default_value = "auto")]
        mode: ModeRequest,
        /// How the kernel hooks are attached (`auto`: the cheapest the kernel allows).
        #[arg(long, value_enum, default_value_t = HookStrategy::default_for_host())]
        hook: HookStrategy,
    },
    /// Run the validation gate on a configuration's bundles or on one certificate/key pair.
    /// Exit status: 0 valid, 1 invalid, 2 usage or I/O error.
    Check {
        /// Check every bundle of this configuration file (with --profile: overlaid on it).
        #[arg(long, conflicts_with_all = ["cert", "key", "ca", "san"])]
        config: Option<PathBuf>,
        /// Check every bundle of a built-in profile (e.g. this node's kubeadm PKI).
        #[arg(long, value_enum, conflicts_with_all = ["cert", "key", "ca", "san"])]
        profile: Option<Profile>,
        /// The host filesystem root the profile looks under.
        #[arg(long, default_value = "/")]
        host_root: PathBuf,
        /// Certificate chain (leaf first) to check.
        #[arg(long, requires = "key")]
        cert: Option<PathBuf>,
        /// Its private key.
        #[arg(long, requires = "cert")]
        key: Option<PathBuf>,
        /// CA file the chain must verify to.
        #[arg(long)]
        ca: Option<PathBuf>,
        /// A name the certificate must cover (repeatable).
        #[arg(long = "san")]
        san: Vec<String>,
        /// Check for client use (clientAuth) instead of server use.
        #[arg(long)]
        client: bool,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Show a running agent's bundles (generation, expiry countdown, last writer) and listeners
    /// (live and stale connections).
    Status {
        /// The agent's admin endpoint.
        #[arg(long, default_value = crate::config::DEFAULT_ADMIN)]
        admin: std::net::SocketAddr,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Audit log tools.
    Audit {
        /// Which audit tool.
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// The built-in demo: a demo CA and certificate, a TLS listener in front of a built-in
    /// upstream, the admin endpoint, and commands to try; `demo rotate` swaps in a new certificate.
    Demo {
        /// `rotate`: issue a new certificate from the demo CA and swap it in like a Secret volume.
        #[command(subcommand)]
        action: Option<DemoAction>,
        /// The demo's state directory (default: $XDG_RUNTIME_DIR/certreload-demo, else
        /// certreload-demo-UID in the temp dir); it must be this user's, not writable by others.
        #[arg(long, global = true)]
        dir: Option<PathBuf>,
        /// Where the demo listener accepts TLS.
        #[arg(long, default_value = crate::demo::state::DEFAULT_LISTEN)]
        listen: std::net::SocketAddr,
        /// The admin endpoint.
        #[arg(long, default_value = crate::config::DEFAULT_ADMIN)]
        admin: std::net::SocketAddr,
        /// Change source.
        #[arg(long, value_enum, default_value = "auto")]
        mode: ModeRequest,
    },
    /// Print a shell completion script on stdout, generated from this binary's own arguments
    /// (e.g. `certreload completions bash > /etc/bash_completion.d/certreload`).
    Completions {
        /// The shell to complete in.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) on stdout (`certreload man | man -l -`), or with `--dir`
    /// write it and one page per command (`certreload-run.1`, ...) into a man1 directory.
    Man {
        /// Write `certreload.1` and a page per command here instead of printing.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// `certreload demo ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum DemoAction {
    /// Issue the next certificate from the demo CA and swap it in (AtomicWriter style).
    Rotate,
}

/// `certreload audit ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Verify the hash chain of audit log files (oldest first, rotated files included); exit 0
    /// intact, 1 broken (the first broken or missing record is named).
    Verify {
        /// The files, oldest first (e.g. audit.jsonl.2 audit.jsonl.1 audit.jsonl).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Also check the log against its witness outside the node: `kube:NAMESPACE/NAME` (the
        /// ConfigMap, read with KUBECONFIG or in-cluster credentials), or a file holding a head
        /// `{"seq":N,"hash":"…"}` or an archived copy of the ConfigMap (`kubectl get -o json`).
        /// Detects truncation and re-forging up to the last published head.
        #[arg(long, value_name = "kube:NS/NAME|FILE")]
        witness: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
}
