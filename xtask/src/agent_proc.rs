//! Starting `certreload run` for a benchmark: spawn it, read its log until "agent ready".

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, ChildStderr, Command, Stdio},
};

use anyhow::{bail, Context, Result};

/// A running agent and the rest of its log (the caller drains or reads it).
pub(crate) struct Started {
    /// The process.
    pub child: Child,
    /// Its stderr, positioned after the "agent ready" line.
    pub stderr: BufReader<ChildStderr>,
    /// The lines it printed up to and including "agent ready".
    pub startup: Vec<String>,
}

/// Runs `certreload run ARGS --config CONFIG` with `CERTRELOAD_LOG=log` and waits until ready.
pub(crate) fn start(bin: &Path, args: &[&str], config: &Path, log: &str) -> Result<Started> {
    let mut child = Command::new(bin)
        .arg("run")
        .args(args)
        .arg("--config")
        .arg(config)
        .env("CERTRELOAD_LOG", log)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .context("starting certreload run")?;
    let mut stderr = BufReader::new(child.stderr.take().context("stderr")?);
    let mut startup = Vec::new();
    loop {
        let mut line = String::new();
        if stderr.read_line(&mut line)? == 0 {
            bail!("certreload run {args:?} exited before it was ready");
        }
        let ready = line.contains("agent ready");
        startup.push(line);
        if ready {
            return Ok(Started {
                child,
                stderr,
                startup,
            });
        }
    }
}
