//! The `certreload` command line: [`run`] parses the arguments and `dispatch` calls the library
//! for the command, so the binary only sets up logging. Every command ends the same way: an
//! [`ExitCode`] (0, or the command's own verdict such as `check`'s 1 for an invalid bundle), or a
//! `CommandError` that [`run`] prints and turns into exit status 2 (usage) or 1 (failure).

mod args;
mod logging;
mod report;

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{CommandFactory, Parser};

pub(crate) use args::{AuditCommand, Cli, Command, DemoAction, MonitorArgs};

use crate::{
    audit,
    check::CheckTarget,
    config::{
        profile::{self, Profile},
        BundleKind, ConfigSource,
    },
    demo::{self, state::DemoState},
    monitor::{HookStrategy, ModeRequest, MonitorConfig},
    output::Output,
    run::{self, RunOptions},
    watch,
};

/// Why a command stopped without a result of its own.
#[derive(Debug)]
pub(crate) enum CommandError {
    /// Bad arguments or a configuration/input the command cannot use: exit 2, with
    /// `certreload COMMAND: message` on stderr.
    Usage {
        /// Who says it, e.g. `certreload check`.
        command: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The command failed while running: exit 1, with the error and its causes on stderr.
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for CommandError {
    fn from(e: anyhow::Error) -> Self {
        CommandError::Failed(e)
    }
}

impl CommandError {
    fn failed(e: impl Into<anyhow::Error>) -> Self {
        CommandError::Failed(e.into())
    }

    fn usage(command: &'static str, message: impl std::fmt::Display) -> Self {
        CommandError::Usage {
            command,
            message: message.to_string(),
        }
    }

    /// Prints it on stderr and returns the exit status it stands for.
    fn report(self) -> ExitCode {
        match self {
            CommandError::Usage { command, message } => {
                eprintln!("{command}: {message}");
                ExitCode::from(2)
            }
            CommandError::Failed(e) => {
                // As a `main` returning `Err` prints it: the message and its causes.
                eprintln!("Error: {e:?}");
                ExitCode::FAILURE
            }
        }
    }
}

/// Parses the command line (clap exits 2 on a usage error), sets up the log in the format asked
/// for, and runs the command.
pub async fn run() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    match dispatch(cli).await {
        Ok(code) => code,
        Err(e) => e.report(),
    }
}

/// Runs one parsed command line; without a command, the kubeadm profile on a kubeadm node, else
/// the demo.
pub(crate) async fn dispatch(cli: Cli) -> Result<ExitCode, CommandError> {
    match cli.command {
        Some(Command::Watch {
            paths,
            output,
            monitor,
        }) => {
            watch::run(monitor_config(paths, &monitor), output)
                .await
                .map_err(CommandError::failed)?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Demo {
            action: Some(DemoAction::Rotate),
            dir,
            ..
        }) => demo_rotate(dir),
        Some(Command::Demo {
            action: None,
            dir,
            listen,
            admin,
            mode,
        }) => {
            demo::run(dir, listen, admin, mode)
                .await
                .map_err(CommandError::failed)?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Run {
            config,
            profile,
            host_root,
            mode,
            hook,
        }) => {
            let source = ConfigSource::from_args(profile, config, host_root)
                .ok_or_else(|| anyhow::anyhow!("give --config FILE or --profile kubeadm"))?;
            run::run(&source, RunOptions { mode, hook })
                .await
                .map_err(CommandError::failed)?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Check {
            config,
            profile,
            host_root,
            cert,
            key,
            ca,
            san,
            client,
            output,
        }) => {
            let target = match ConfigSource::from_args(profile, config, host_root) {
                Some(source) => CheckTarget::Config(source),
                None => pair_target(cert, key, ca, san, client)?,
            };
            Ok(ExitCode::from(report::check(&target, output)))
        }
        Some(Command::Status { admin, output }) => status(admin, output),
        Some(Command::Audit {
            command:
                AuditCommand::Verify {
                    files,
                    output,
                    witness,
                },
        }) => audit_verify(&files, witness.as_deref(), output).await,
        Some(Command::Completions { shell }) => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "certreload",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Man { dir }) => man(dir),
        None => run_default().await,
    }
}

/// `certreload man [--dir DIR]`: the pages are rendered from the parser itself, so every option
/// the binary takes is in them.
fn man(dir: Option<PathBuf>) -> Result<ExitCode, CommandError> {
    let page = clap_mangen::Man::new(Cli::command());
    match dir {
        None => page
            .render(&mut std::io::stdout())
            .context("writing the manual page")?,
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .and_then(|()| clap_mangen::generate_to(Cli::command(), &dir))
                .with_context(|| format!("writing the manual pages into {}", dir.display()))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn monitor_config(paths: Vec<PathBuf>, args: &MonitorArgs) -> MonitorConfig {
    MonitorConfig {
        paths,
        mode: args.mode,
        hook: args.hook,
        resync: args.resync(),
        profile_hooks: args.profile_hooks,
    }
}

/// `certreload demo rotate`.
fn demo_rotate(dir: Option<PathBuf>) -> Result<ExitCode, CommandError> {
    let state = DemoState::open(&dir.unwrap_or_else(DemoState::default_dir))
        .context("certreload demo rotate")?;
    let serial = state.rotate().context("certreload demo rotate")?;
    println!(
        "swapped in a new certificate (serial {serial}) under {}",
        state.volume().display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `certreload check --cert C --key K`: both are required without `--config` or `--profile`.
fn pair_target(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
    sans: Vec<String>,
    client: bool,
) -> Result<CheckTarget, CommandError> {
    let (Some(cert), Some(key)) = (cert, key) else {
        return Err(CommandError::usage(
            "certreload check",
            "give --config FILE, --profile kubeadm, or --cert C --key K",
        ));
    };
    Ok(CheckTarget::Pair {
        cert,
        key,
        ca,
        sans,
        kind: if client {
            BundleKind::Client
        } else {
            BundleKind::Server
        },
    })
}

/// `certreload status`.
fn status(admin: std::net::SocketAddr, output: Output) -> Result<ExitCode, CommandError> {
    let doc =
        crate::status_cmd::fetch(admin).map_err(|e| CommandError::usage("certreload status", e))?;
    match output {
        Output::Json => println!("{doc}"),
        Output::Text => print!("{}", crate::status_cmd::render(&doc)),
    }
    Ok(ExitCode::SUCCESS)
}

/// `certreload audit verify`.
async fn audit_verify(
    files: &[PathBuf],
    witness: Option<&str>,
    output: Output,
) -> Result<ExitCode, CommandError> {
    let witness = match witness {
        Some(spec) => Some(
            audit::witness::load(spec)
                .await
                .map_err(|e| CommandError::usage("certreload audit verify", e))?,
        ),
        None => None,
    };
    Ok(ExitCode::from(report::audit_verify(
        files,
        witness.as_ref(),
        output,
    )))
}

/// `certreload` alone: the kubeadm profile on a kubeadm node, the demo anywhere else.
async fn run_default() -> Result<ExitCode, CommandError> {
    let root = PathBuf::from("/");
    if profile::is_kubeadm_node(&root) {
        eprintln!("certreload: /etc/kubernetes/pki exists: running the kubeadm profile (certreload run --profile kubeadm)");
        let source = ConfigSource::from_args(Some(Profile::Kubeadm), None, root)
            .expect("a profile is a source");
        let options = RunOptions {
            mode: ModeRequest::Auto,
            hook: HookStrategy::default_for_host(),
        };
        run::run(&source, options)
            .await
            .map_err(CommandError::failed)?;
    } else {
        demo::run(
            None,
            demo::state::DEFAULT_LISTEN
                .parse()
                .map_err(CommandError::failed)?,
            crate::config::DEFAULT_ADMIN
                .parse()
                .map_err(CommandError::failed)?,
            ModeRequest::Auto,
        )
        .await
        .map_err(CommandError::failed)?;
    }
    Ok(ExitCode::SUCCESS)
}
