//! Built-in profiles: a whole configuration for a standard node layout, which a config file may
//! extend or override (tables key by key; bundles, probes, listeners and actions by name).
//!
//! `kubeadm` follows the components' real behaviour (docs/kubernetes.md, with the sources read):
//! every kubeadm PKI file and control-plane kubeconfig as a bundle, a probe for every
//! control-plane endpoint with the check that can tell (HTTP for the servers that only refuse an
//! untrusted client certificate per request, the TLS handshake for etcd, the JWKS for the
//! ServiceAccount keys), and reload actions (off by default) only where a component cannot reload.
//!
//! Here: the profile, its settings and loading; `kubeadm` holds the profile's table, `kubelet`
//! reads the kubelet's config.yaml, `writer` renders TOML, `overlay` merges a config file on top.

mod kubeadm;
mod kubelet;
mod overlay;
mod pod_tokens;
mod sa_keys;
mod writer;

use std::path::{Path, PathBuf};

use toml::Table;

#[cfg(test)]
pub(crate) use self::kubeadm::kubeadm;
pub(crate) use self::overlay::merge;
use super::{Config, ConfigError};

/// A built-in profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    /// The kubeadm layout under /etc/kubernetes/pki and /var/lib/kubelet/pki.
    Kubeadm,
}

/// The generated profile: TOML text, and one line per choice made from the node's files.
#[derive(Debug, Clone)]
pub(crate) struct Generated {
    /// Configuration text.
    pub toml: String,
    /// Human lines: what was left out or chosen from the node's files, and why.
    pub skipped: Vec<String>,
}

/// What the profile cannot read from the node's files: the overlay's `[profile]` table (removed
/// from the overlay before it is merged, so `Config` never sees it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct KubeadmSettings {
    /// The kubelet's `major.minor`, when the operator states it. No file under a host root tells
    /// the kubelet's version (`kubelet --version` would mean running a host binary), and a
    /// kubelet ≥ 1.31 reloads its serving certificate by itself, so only a stated ≤ 1.30 gets the
    /// kubelet restart action.
    pub kubelet_version: Option<(u32, u32)>,
}

/// Whether this host looks like a kubeadm node (the built-in default picks the profile then).
pub(crate) fn is_kubeadm_node(root: &Path) -> bool {
    root.join("etc/kubernetes/pki").is_dir()
}

/// Where the profile puts the audit log.
pub(crate) const KUBEADM_AUDIT: &str = "/var/lib/certreload/audit.jsonl";

/// Where the kubelet mounts a pod's own ServiceAccount token: in the DaemonSet, the agent's. It is
/// looked for in the agent's own filesystem, never under the host root (it is the pod's, not the
/// node's).
pub(crate) const SERVICE_ACCOUNT_TOKEN: &str =
    "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// The configuration for `profile` on the host at `root`, extended by `file` when given (whose
/// `[profile]` table tells the profile what the node's files cannot).
pub fn load(
    profile: Profile,
    root: &Path,
    file: Option<&Path>,
) -> Result<(Config, Vec<String>), ConfigError> {
    load_with(profile, root, file, Path::new(SERVICE_ACCOUNT_TOKEN))
}

/// [`load`], with the agent's own ServiceAccount token looked for at `own_token`.
fn load_with(
    profile: Profile,
    root: &Path,
    file: Option<&Path>,
    own_token: &Path,
) -> Result<(Config, Vec<String>), ConfigError> {
    let Profile::Kubeadm = profile;
    let syntax = |path: &Path, e: toml::de::Error| ConfigError::Syntax {
        path: path.to_path_buf(),
        message: e.to_string().trim_end().replace('\n', " "),
    };
    let overlay = match file {
        Some(f) => {
            let text = std::fs::read_to_string(f).map_err(|source| ConfigError::Io {
                path: f.to_path_buf(),
                source,
            })?;
            let mut table: Table = toml::from_str(&text).map_err(|e| syntax(f, e))?;
            let settings = overlay::settings(f, &text)?;
            table.remove("profile");
            Some((f, table, settings))
        }
        None => None,
    };
    let settings = overlay
        .as_ref()
        .map(|(_, _, s)| s.clone())
        .unwrap_or_default();
    let generated = kubeadm::kubeadm_with(root, &settings, own_token);
    let label = PathBuf::from("<kubeadm profile>");
    let mut base: Table = toml::from_str(&generated.toml).map_err(|e| syntax(&label, e))?;
    let path = match overlay {
        Some((f, table, _)) => {
            merge(&mut base, table);
            PathBuf::from(format!("<kubeadm profile + {}>", f.display()))
        }
        None => label,
    };
    let text = toml::to_string(&base).map_err(|e| ConfigError::Syntax {
        path: path.clone(),
        message: e.to_string(),
    })?;
    Ok((Config::parse(&path, &text)?, generated.skipped))
}
#[cfg(test)]
mod tests;
