//! The `certreload` binary: parse arguments, set up logging, call the library.

mod cli;

use anyhow::Context;
use certreload::{
    audit,
    check::{self, CheckTarget},
    config::{
        profile::{self, Profile},
        BundleKind, ConfigSource,
    },
    demo::{self, state::DemoState},
    monitor::{HookStrategy, ModeRequest, MonitorConfig},
    run::{self, RunOptions},
    watch::{self, Output},
};
use clap::Parser;
use cli::{AuditCommand, Cli, Command, DemoAction, MonitorArgs};

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
        Some(Command::Demo {
            action: Some(DemoAction::Rotate),
            dir,
            ..
        }) => {
            let state = DemoState::open(&dir.unwrap_or_else(DemoState::default_dir))
                .context("certreload demo rotate")?;
            let serial = state.rotate().context("certreload demo rotate")?;
            println!(
                "swapped in a new certificate (serial {serial}) under {}",
                state.volume().display()
            );
        }
        Some(Command::Demo {
            action: None,
            dir,
            listen,
            admin,
            mode,
        }) => run_demo(dir, listen, admin, mode).await?,
        Some(Command::Run {
            config,
            profile,
            host_root,
            mode,
            hook,
        }) => {
            let source = match (profile, config) {
                (Some(profile), file) => ConfigSource::Profile {
                    profile,
                    root: host_root,
                    file,
                },
                (None, Some(file)) => ConfigSource::File(file),
                (None, None) => anyhow::bail!("give --config FILE or --profile kubeadm"),
            };
            run::run(&source, RunOptions { mode, hook }).await?;
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
            let target = match (profile, config, cert, key) {
                (Some(profile), file, _, _) => CheckTarget::Config(ConfigSource::Profile {
                    profile,
                    root: host_root,
                    file,
                }),
                (None, Some(config), _, _) => CheckTarget::Config(ConfigSource::File(config)),
                (None, None, Some(cert), Some(key)) => CheckTarget::Pair {
                    cert,
                    key,
                    ca,
                    sans: san,
                    kind: if client {
                        BundleKind::Client
                    } else {
                        BundleKind::Server
                    },
                },
                _ => {
                    eprintln!("certreload check: give --config FILE, --profile kubeadm, or --cert C --key K");
                    std::process::exit(2);
                }
            };
            std::process::exit(run_check(&target, output));
        }
        Some(Command::Status { admin, output }) => match certreload::status_cmd::fetch(admin) {
            Ok(doc) => match output {
                Output::Json => println!("{doc}"),
                Output::Text => print!("{}", certreload::status_cmd::render(&doc)),
            },
            Err(e) => {
                eprintln!("certreload status: {e}");
                std::process::exit(2);
            }
        },
        Some(Command::Audit {
            command:
                AuditCommand::Verify {
                    files,
                    output,
                    witness,
                },
        }) => {
            let witness = match witness {
                Some(spec) => match audit::witness::load(&spec).await {
                    Ok(w) => Some(w),
                    Err(e) => {
                        eprintln!("certreload audit verify: {e}");
                        std::process::exit(2);
                    }
                },
                None => None,
            };
            std::process::exit(run_audit_verify(&files, witness.as_ref(), output));
        }
        None => {
            let root = std::path::PathBuf::from("/");
            if profile::is_kubeadm_node(&root) {
                eprintln!("certreload: /etc/kubernetes/pki exists: running the kubeadm profile (certreload run --profile kubeadm)");
                let source = ConfigSource::Profile {
                    profile: Profile::Kubeadm,
                    root,
                    file: None,
                };
                let options = RunOptions {
                    mode: ModeRequest::Auto,
                    hook: HookStrategy::default_for_host(),
                };
                run::run(&source, options).await?;
            } else {
                run_demo(
                    None,
                    demo::state::DEFAULT_LISTEN.parse()?,
                    certreload::config::DEFAULT_ADMIN.parse()?,
                    ModeRequest::Auto,
                )
                .await?;
            }
        }
    }
    Ok(())
}

fn run_check(target: &CheckTarget, output: Output) -> i32 {
    match check::run(target) {
        Ok(verdicts) => {
            match output {
                Output::Json => println!("{}", serde_json::json!({ "bundles": verdicts })),
                Output::Text => print!("{}", check::render_text(&verdicts)),
            }
            if verdicts.iter().all(|v| v.valid) {
                0
            } else {
                1
            }
        }
        Err(e) => {
            eprintln!("certreload check: {e}");
            2
        }
    }
}

fn run_audit_verify(
    files: &[std::path::PathBuf],
    witness: Option<&audit::witness::Witnessed>,
    output: Output,
) -> i32 {
    let chain = match audit::verify_files(files) {
        Ok(summary) => summary,
        Err(e) => {
            match output {
                Output::Json => println!(
                    "{}",
                    serde_json::json!({ "intact": false, "error": e.to_string() })
                ),
                Output::Text => println!("BROKEN: {e}"),
            }
            return match e {
                audit::VerifyError::Io { .. } => 2,
                _ => 1,
            };
        }
    };
    let witnessed = witness.map(|w| audit::witness::check_files(files, chain.last_seq, w));
    let (code, error) = match &witnessed {
        Some(Err(audit::witness::WitnessCheckError::Witness(e))) => (2, Some(e.to_string())),
        Some(Err(audit::witness::WitnessCheckError::Mismatch(e))) => (1, Some(e.to_string())),
        None | Some(Ok(_)) => (i32::from(!chain.intact()), None),
    };
    match output {
        Output::Json => {
            let mut doc = serde_json::json!({ "intact": code == 0, "summary": chain });
            if let Some(Ok(w)) = &witnessed {
                doc["witness"] = serde_json::json!(w);
            }
            if let Some(e) = &error {
                doc["error"] = e.clone().into();
            }
            println!("{doc}");
        }
        Output::Text => match (&witnessed, &error) {
            (_, Some(e)) => println!("BROKEN: {e}"),
            (Some(Ok(w)), None) => {
                let skipped = if w.not_in_files > 0 {
                    format!(", {} in records not in these files", w.not_in_files)
                } else {
                    String::new()
                };
                println!(
                    "{chain}; witness {}: {} head(s) match{skipped}, highest seq {} ({} record(s) after it not yet witnessed)",
                    w.witness, w.heads, w.highest_seq, w.unwitnessed
                )
            }
            _ => println!("{chain}"),
        },
    }
    code
}

async fn run_demo(
    dir: Option<std::path::PathBuf>,
    listen: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    mode: ModeRequest,
) -> anyhow::Result<()> {
    demo::run(dir, listen, admin, mode).await?;
    Ok(())
}
