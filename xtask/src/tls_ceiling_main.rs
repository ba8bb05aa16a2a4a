//! `tls-ceiling`: the in-memory handshakes of `cargo xtask bench tls` with both rustls providers,
//! ring and aws-lc-rs, in one process. A binary of its own because the aws-lc-rs provider needs
//! rustls' `aws_lc_rs` feature, which must stay out of the workspace's other builds (see
//! xtask/Cargo.toml); `bench tls` builds it with `--features aws-lc` and reads its lines.

#[path = "tls_ceiling.rs"]
mod tls_ceiling;

use std::{fs, path::PathBuf};

use anyhow::{Context, Result};
use clap::Parser;

use tls_ceiling::{Pem, Provider};

/// Full in-memory handshakes with each provider; one line per provider:
/// `ceiling PROVIDER HANDSHAKES SERVER_NS CLIENT_NS`.
#[derive(Debug, Parser)]
struct Args {
    /// The server's certificate (PEM).
    #[arg(long)]
    cert: PathBuf,
    /// The server's private key (PEM).
    #[arg(long)]
    key: PathBuf,
    /// The CA the client trusts (PEM).
    #[arg(long)]
    ca: PathBuf,
    /// Handshakes per provider.
    #[arg(long, default_value_t = 2000)]
    handshakes: u64,
    /// The bench's round: odd rounds measure aws-lc-rs first, so neither provider always runs
    /// on a warmer machine.
    #[arg(long, default_value_t = 0)]
    round: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let read = |p: &PathBuf| fs::read_to_string(p).with_context(|| format!("{}", p.display()));
    let (cert, key, ca) = (read(&args.cert)?, read(&args.key)?, read(&args.ca)?);
    let pem = Pem {
        cert: &cert,
        key: &key,
        ca: &ca,
    };
    let mut order = [Provider::Ring, Provider::AwsLcRs];
    if args.round % 2 == 1 {
        order.reverse();
    }
    for provider in order {
        let s = tls_ceiling::measure(provider, &pem, args.handshakes)?;
        eprintln!(
            "tls-ceiling: {}: server {:.1} us, client {:.1} us CPU per handshake",
            s.provider,
            s.server_us(),
            s.client_us()
        );
        println!(
            "ceiling {} {} {} {}",
            s.provider, s.handshakes, s.server_ns, s.client_ns
        );
    }
    Ok(())
}
