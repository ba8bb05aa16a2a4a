//! The built-in default off a kubeadm node (`certreload` with no command, `cargo xtask run`): a
//! state directory with a demo CA and a server certificate in a Secret-style volume, a TLS listener
//! in front of a small built-in upstream, the admin endpoint, and a cheat-sheet; `certreload demo
//! rotate` issues the next certificate and swaps it in the way the kubelet does.
//!
//! The demo runs as root on a node, so its state directory is one only this user controls and
//! nothing in it is followed or trusted blindly ([`dir`]), and the agent gets the configuration
//! the demo generated as text, never by re-reading a file ([`run`]).

pub(crate) mod cheat_sheet;
pub(crate) mod dir;
pub(crate) mod state;
pub(crate) mod upstream;

use std::path::PathBuf;
#[cfg(test)]
use std::{fs, io::Write, os::unix::fs::OpenOptionsExt, path::Path};

#[cfg(test)]
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use thiserror::Error;

use crate::config::ConfigSource;
use state::DemoState;

/// The demo could not prepare its files.
#[derive(Debug, Error)]
pub(crate) enum DemoError {
    /// Certificate generation failed.
    #[error("generating the demo certificates: {0}")]
    Generate(#[from] rcgen::Error),
    /// Reading the demo state failed (run `certreload demo` first).
    #[error("reading {path}: {source} (start the demo with `certreload demo` first)")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Writing a file failed.
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The state directory fails a check that keeps other users out of it (as ssh's
    /// `StrictModes` for `~/.ssh`): they could plant links or FIFOs in it that root then follows.
    #[error("refusing the demo state directory {path}: {check} check failed: {found}; another user could plant links or files in it (remove it, or choose another directory with --dir)")]
    UnsafeDir {
        path: PathBuf,
        /// Which check: `symlink`, `type`, `owner`, `permissions`, `ancestor owner`,
        /// `ancestor permissions`, `path`, `replaced`.
        check: &'static str,
        /// What was found (the owner uid, the mode, the link target, ...).
        found: String,
    },
    /// Something in the state directory is not what the demo writes there (a link, a FIFO, a
    /// file of another owner): never followed, read or written through.
    #[error("refusing {path}: {found}; certreload demo only uses files it wrote itself (remove it, or choose another directory with --dir)")]
    Foreign {
        path: PathBuf,
        /// What it is.
        found: String,
    },
    /// The built-in upstream could not start.
    #[error("starting the demo upstream: {0}")]
    Upstream(#[source] std::io::Error),
    /// The agent itself stopped with an error.
    #[error(transparent)]
    Agent(#[from] crate::run::RunError),
}

/// Runs the demo: prepares the state directory `dir` (default [`DemoState::default_dir`]),
/// starts the upstream, prints the cheat-sheet and runs the agent until it stops. The agent is
/// given the configuration text the demo generated (also written to `certreload.toml` for the
/// user to read) instead of a path: a FIFO or link at that name can never become the config.
pub(crate) async fn run(
    dir: Option<PathBuf>,
    listen: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    mode: crate::monitor::ModeRequest,
) -> Result<(), DemoError> {
    let dir = dir.unwrap_or_else(DemoState::default_dir);
    let state = DemoState::init(&dir)?;
    let upstream = upstream::spawn().await.map_err(DemoError::Upstream)?;
    let (path, text) = state.write_config(listen, admin, upstream)?;
    eprintln!("{}", state.cheat_sheet(listen, admin));
    let options = crate::run::RunOptions {
        mode,
        hook: crate::monitor::HookStrategy::default_for_host(),
    };
    crate::run::run(&ConfigSource::Text { path, text }, options).await?;
    Ok(())
}

/// A CA-signed server certificate in flat files (unit tests build generations from it).
#[cfg(test)]
#[derive(Debug, Clone)]
pub(crate) struct DemoFiles {
    /// Demo CA certificate.
    pub ca: PathBuf,
    /// Server certificate (signed by the demo CA).
    pub cert: PathBuf,
    /// Server private key (mode 0600).
    pub key: PathBuf,
}

/// Creates `dir` with a fresh CA, server certificate and key (unit tests' material, in a
/// directory they own; the demo itself uses [`state::DemoState`]).
#[cfg(test)]
pub(crate) fn prepare(dir: &Path) -> Result<DemoFiles, DemoError> {
    fs::create_dir_all(dir).map_err(|source| DemoError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "certreload demo CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate()?;
    let mut leaf_params = CertificateParams::new(vec!["localhost".to_string()])?;
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    // A realistic lifetime, so expiry countdowns and min_validity mean something in the demo.
    let now = time::OffsetDateTime::now_utc();
    leaf_params.not_before = now - time::Duration::hours(1);
    leaf_params.not_after = now + time::Duration::days(90);
    let leaf = leaf_params.signed_by(&leaf_key, &issuer)?;

    let files = DemoFiles {
        ca: dir.join("ca.crt"),
        cert: dir.join("tls.crt"),
        key: dir.join("tls.key"),
    };
    write(&files.ca, ca_cert.pem().as_bytes(), 0o644)?;
    write(&files.cert, leaf.pem().as_bytes(), 0o644)?;
    write(&files.key, leaf_key.serialize_pem().as_bytes(), 0o600)?;
    Ok(files)
}

#[cfg(test)]
fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), DemoError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(|source| DemoError::Write {
            path: path.to_path_buf(),
            source,
        })?;
    f.write_all(bytes).map_err(|source| DemoError::Write {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn prepares_a_ca_signed_certificate_and_a_private_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = prepare(dir.path()).expect("demo files");
        let cert = fs::read_to_string(&files.cert).expect("cert");
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
        let key_mode = fs::metadata(&files.key).expect("key").permissions().mode() & 0o777;
        assert_eq!(key_mode, 0o600, "private key must not be world-readable");
    }
}
