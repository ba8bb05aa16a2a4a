//! The `certreload` binary: parse arguments, set up logging, call the library.

mod cli;

use anyhow::Context;
use certreload::{
    demo,
    monitor::MonitorConfig,
    watch::{self, Output},
};
use clap::Parser;
use cli::{Cli, Command, MonitorArgs};

fn monitor_config(paths: Vec<std::path::PathBuf>, args: &MonitorArgs) -> MonitorConfig {
    MonitorConfig {
        paths,
        mode: args.mode,
        hook: args.hook,
        resync: args.resync(),
        profile_hooks: args.profile_hooks,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CERTRELOAD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Watch {
            paths,
            output,
            monitor,
        }) => {
            watch::run(monitor_config(paths, &monitor), output).await?;
        }
        Some(Command::Demo { dir, monitor }) => run_demo(dir, &monitor).await?,
        None => run_demo(None, &MonitorArgs::default_for_demo()).await?,
    }
    Ok(())
}

async fn run_demo(dir: Option<std::path::PathBuf>, args: &MonitorArgs) -> anyhow::Result<()> {
    let dir = dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("certreload-demo-{}", std::process::id()))
    });
    let files =
        demo::prepare(&dir).with_context(|| format!("preparing the demo in {}", dir.display()))?;
    eprintln!("{}", files.cheat_sheet());
    watch::run(monitor_config(files.watched(), args), Output::Text).await?;
    Ok(())
}
