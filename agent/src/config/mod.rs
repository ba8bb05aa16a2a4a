//! The agent's configuration file (TOML), parsed into typed values with errors that name the field
//! and the line.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use toml::Spanned;

use crate::material::read::DEFAULT_MAX_FILE_SIZE;

pub(crate) mod admin;
pub(crate) mod bounds;
mod bundle;
pub(crate) mod converge;
pub(crate) mod listener;
pub(crate) mod pod_tokens;
pub mod profile;
pub(crate) mod sa_keys;
pub(crate) mod source;

pub(crate) use self::{
    converge::{
        ActionCommand, ActionConfig, ActionLock, ActionTrigger, LocksSettings, ProbeConfig,
        SignalTarget,
    },
    listener::{ListenerConfig, Upstream, UpstreamTls},
    source::ConfigSource,
};

/// The configuration cannot be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("{path}: {source}")]
    Io {
        /// The configuration file (or profile overlay) as it was given.
        path: PathBuf,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// Not valid TOML for this schema (toml's message names the line, column and field).
    #[error("{path}: {message}")]
    Syntax {
        /// The file whose text does not parse.
        path: PathBuf,
        /// toml's message.
        message: String,
    },
    /// A value that parses but makes no sense.
    #[error("{path}:{line}: {field}: {message}")]
    Invalid {
        /// The file holding the value.
        path: PathBuf,
        /// 1-based line of the value (or of its table).
        line: usize,
        /// Dotted field name, e.g. `bundle[apiserver].key`.
        field: String,
        /// What is wrong.
        message: String,
    },
}

/// What kind of material a bundle holds, which decides its files and checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum BundleKind {
    /// TLS server certificate + key (checked for serverAuth).
    Server,
    /// TLS client certificate + key (checked for clientAuth).
    Client,
    /// A CA bundle (`cert` is the bundle file).
    Ca,
    /// ServiceAccount signing key and verification keys.
    SaKeys,
    /// A kubeconfig with an embedded client certificate and key (`file`), checked like a client
    /// pair chained to its embedded CA: kubeadm's `controller-manager.conf`, `scheduler.conf`.
    Kubeconfig,
}

impl BundleKind {
    /// The name used in the config file, `check` output and `/status` (the serde name).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            BundleKind::Server => "server",
            BundleKind::Client => "client",
            BundleKind::Ca => "ca",
            BundleKind::SaKeys => "sa-keys",
            BundleKind::Kubeconfig => "kubeconfig",
        }
    }
}

impl std::fmt::Display for BundleKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[agent]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AgentSettings {
    /// Content resync period.
    pub resync: Duration,
    /// Extra wait before reading after a confirmed change (writers that close and reopen).
    pub settle: Duration,
    /// How long cert and key may disagree before that is a rejection.
    pub pair_timeout: Duration,
    /// Largest material file accepted.
    pub max_file_size: u64,
    /// Admin endpoint (`/metrics`, `/healthz`, `/readyz`, `/status`).
    pub admin: std::net::SocketAddr,
}

/// Default admin endpoint: loopback only.
pub(crate) const DEFAULT_ADMIN: &str = "127.0.0.1:9808";

impl Default for AgentSettings {
    fn default() -> Self {
        AgentSettings {
            // The monitor's own default (config sits above monitor: monitor imports nothing of
            // config, so this is no loop).
            resync: crate::monitor::DEFAULT_RESYNC,
            settle: Duration::ZERO,
            pair_timeout: Duration::from_secs(10),
            max_file_size: DEFAULT_MAX_FILE_SIZE,
            admin: DEFAULT_ADMIN
                .parse()
                .expect("DEFAULT_ADMIN is a socket address"),
        }
    }
}

/// `[audit]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AuditSettings {
    /// The JSON-lines audit log.
    pub path: PathBuf,
    /// Rotate when the file exceeds this size.
    pub max_size: u64,
    /// Publish the chain head to a witness ConfigMap outside the node (`witness = true`).
    pub witness: bool,
    /// Namespace of the witness ConfigMaps (`certreload-audit-<node>`).
    pub witness_namespace: String,
    /// How often the head is published (and once more at shutdown).
    pub witness_interval: Duration,
}

/// Default audit log location.
pub(crate) const DEFAULT_AUDIT_PATH: &str = "/var/log/certreload/audit.jsonl";
/// Default namespace of the audit witness objects: one of their own, so that the RBAC that lets
/// agents update them reaches no other ConfigMap (the agent's own configuration lives in
/// `certreload`).
pub(crate) const DEFAULT_WITNESS_NAMESPACE: &str = "certreload-witness";
/// Default `[audit] witness_interval`.
pub(crate) const DEFAULT_WITNESS_INTERVAL: Duration = Duration::from_secs(60);

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings {
            path: PathBuf::from(DEFAULT_AUDIT_PATH),
            max_size: 64 * 1024 * 1024,
            witness: false,
            witness_namespace: DEFAULT_WITNESS_NAMESPACE.into(),
            witness_interval: DEFAULT_WITNESS_INTERVAL,
        }
    }
}

/// One `[[bundle]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BundleConfig {
    /// Unique name (in records, metrics and references from listeners).
    pub name: String,
    /// What it holds.
    pub kind: BundleKind,
    /// Line of its `[[bundle]]` table, for messages.
    pub line: usize,
    /// The files, shaped by the kind (so a server bundle always has a cert and a key).
    pub files: BundleFiles,
    /// Names the leaf must cover.
    pub expect_sans: Vec<String>,
    /// Minimum remaining validity.
    pub min_validity: Option<Duration>,
    /// Allow a rotation to drop a SAN of the current generation.
    pub allow_san_removal: bool,
    /// Allow a CA bundle to drop a CA that issued certificates in use.
    pub allow_ca_removal: bool,
    /// A ca bundle that is a signer's certificate file (kube-controller-manager's
    /// `--cluster-signing-cert-file`): warn when it holds more than one certificate.
    pub signing: bool,
}

/// The files of a bundle, by kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BundleFiles {
    /// Server or client: leaf + intermediates, private key, and the CA the chain must verify to.
    Pair {
        /// Leaf + intermediates.
        cert: PathBuf,
        /// Private key.
        key: PathBuf,
        /// CA file (optional).
        ca: Option<PathBuf>,
    },
    /// A CA bundle (the `cert` field), and the CA's private key (`key`) where the node signs with
    /// it: checked to belong to the bundle, never kept.
    Ca {
        /// The bundle file.
        bundle: PathBuf,
        /// The CA's private key.
        key: Option<PathBuf>,
    },
    /// A kubeconfig with embedded client material.
    Kubeconfig {
        /// The kubeconfig file.
        file: PathBuf,
    },
    /// ServiceAccount signing key and verification keys.
    SaKeys {
        /// The signing key.
        private_key: PathBuf,
        /// The verification keys.
        public_keys: Vec<PathBuf>,
    },
}

impl BundleConfig {
    /// Every file of the bundle: what the monitor watches for it.
    pub(crate) fn files(&self) -> Vec<PathBuf> {
        match &self.files {
            BundleFiles::Pair { cert, key, ca } => [Some(cert), Some(key), ca.as_ref()]
                .into_iter()
                .flatten()
                .cloned()
                .collect(),
            BundleFiles::Ca { bundle, key } => {
                std::iter::once(bundle).chain(key).cloned().collect()
            }
            BundleFiles::Kubeconfig { file } => vec![file.clone()],
            BundleFiles::SaKeys {
                private_key,
                public_keys,
            } => std::iter::once(private_key)
                .chain(public_keys)
                .cloned()
                .collect(),
        }
    }
}

/// `[events]`: Kubernetes Events on the Node for rejections, stale endpoints and acceptances.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct EventsSettings {
    /// Off unless asked for: it needs API credentials (the DaemonSet's ServiceAccount).
    pub enabled: bool,
    /// Namespace the Events are created in.
    pub namespace: String,
    /// Node name (default: `NODE_NAME`, else the hostname).
    pub node: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawEvents {
    #[serde(default)]
    enabled: bool,
    namespace: Option<String>,
    node: Option<String>,
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Config {
    /// `[agent]`.
    pub(crate) agent: AgentSettings,
    /// `[audit]`.
    pub(crate) audit: AuditSettings,
    /// `[[bundle]]`s, in file order.
    pub(crate) bundles: Vec<BundleConfig>,
    /// `[[listener]]`s: TLS termination in front of components.
    pub(crate) listeners: Vec<ListenerConfig>,
    /// `[[probe]]`s: endpoints that must converge on new generations.
    pub(crate) probes: Vec<ProbeConfig>,
    /// `[[action]]`s: reloads for components that cannot reload.
    pub(crate) actions: Vec<ActionConfig>,
    /// `[events]`.
    pub(crate) events: EventsSettings,
    /// `[locks]`: where `[[action]] lock`s live.
    pub(crate) locks: LocksSettings,
    /// `[admin]`: the admin endpoint's connection limits, timeouts and serving certificate.
    pub(crate) admin: admin::AdminSettings,
    /// `[sa_keys]`: the ServiceAccount key identity published and followed (`None`: neither).
    pub(crate) sa_keys: Option<sa_keys::SaKeysSettings>,
    /// `[pod_tokens]`: the node's token tracker (`None`: off).
    pub(crate) pod_tokens: Option<pod_tokens::PodTokensSettings>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    agent: RawAgent,
    #[serde(default)]
    audit: Option<RawAudit>,
    #[serde(default, rename = "bundle")]
    bundles: Vec<Spanned<bundle::RawBundle>>,
    #[serde(default, rename = "listener")]
    listeners: Vec<Spanned<listener::RawListener>>,
    #[serde(default, rename = "probe")]
    probes: Vec<Spanned<converge::RawProbe>>,
    #[serde(default, rename = "action")]
    actions: Vec<Spanned<converge::RawAction>>,
    #[serde(default)]
    events: RawEvents,
    #[serde(default)]
    locks: converge::RawLocks,
    #[serde(default)]
    admin: admin::RawAdmin,
    #[serde(default)]
    sa_keys: Option<Spanned<sa_keys::RawSaKeys>>,
    #[serde(default)]
    pod_tokens: Option<Spanned<pod_tokens::RawPodTokens>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    resync: Option<Spanned<String>>,
    settle: Option<Spanned<String>>,
    pair_timeout: Option<Spanned<String>>,
    max_file_size: Option<Spanned<String>>,
    admin: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    path: PathBuf,
    max_size: Option<Spanned<String>>,
    #[serde(default)]
    witness: bool,
    witness_namespace: Option<Spanned<String>>,
    witness_interval: Option<Spanned<String>>,
}

/// Turns byte offsets into line numbers and builds errors for one file.
pub(crate) struct Source<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Source<'_> {
    pub(crate) fn line(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }

    pub(crate) fn invalid(
        &self,
        offset: usize,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line: self.line(offset),
            field: field.into(),
            message: message.into(),
        }
    }

    /// A duration without bounds: only [`Source::duration_in`] calls it, so every configured
    /// duration is range-checked (`config::bounds`).
    fn duration(&self, value: &Spanned<String>, field: &str) -> Result<Duration, ConfigError> {
        humantime::parse_duration(value.get_ref().trim()).map_err(|e| {
            self.invalid(
                value.span().start,
                field,
                format!(
                    "{:?} is not a duration like \"30s\" or \"10m\": {e}",
                    value.get_ref()
                ),
            )
        })
    }

    /// A size without bounds: only [`Source::size_in`] calls it.
    fn size(&self, value: &Spanned<String>, field: &str) -> Result<u64, ConfigError> {
        value
            .get_ref()
            .trim()
            .parse::<bytesize::ByteSize>()
            .map(|b| b.as_u64())
            .map_err(|e| {
                self.invalid(
                    value.span().start,
                    field,
                    format!("{:?} is not a size like \"1MiB\": {e}", value.get_ref()),
                )
            })
    }
}

impl Config {
    /// Reads and validates `path`.
    pub(crate) fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(path, &text)
    }

    /// Parses `text` (read from `path`, used in messages).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let src = Source { path, text };
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        let agent = parse_agent(&src, &raw.agent)?;
        let audit = match &raw.audit {
            Some(a) => parse_audit(&src, a)?,
            None => AuditSettings::default(),
        };
        let bundles = bundle::parse(&src, &raw.bundles)?;
        pod_tokens::check_bundle_names(&src, &bundles)?;
        let pod_tokens = match &raw.pod_tokens {
            Some(t) => Some(pod_tokens::parse(&src, t, &bundles)?),
            None => None,
        };
        let sa_keys = match &raw.sa_keys {
            Some(t) => Some(sa_keys::parse(&src, t, &bundles)?),
            None => None,
        };
        let listeners = listener::parse(&src, &raw.listeners, &bundles)?;
        let probes = converge::parse_probes(&src, &raw.probes, &bundles)?;
        let actions =
            converge::parse_actions(&src, &raw.actions, &bundles, &probes, pod_tokens.is_some())?;
        let events = EventsSettings {
            enabled: raw.events.enabled,
            namespace: raw
                .events
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            node: raw.events.node.clone(),
        };
        let locks = converge::parse_locks(&src, &raw.locks)?;
        let admin = admin::parse(&src, &raw.admin)?;
        Ok(Config {
            agent,
            audit,
            bundles,
            listeners,
            probes,
            actions,
            events,
            locks,
            admin,
            sa_keys,
            pod_tokens,
        })
    }
}

/// `[agent]`: each value given within its bounds, the defaults otherwise.
fn parse_agent(src: &Source<'_>, raw: &RawAgent) -> Result<AgentSettings, ConfigError> {
    let mut agent = AgentSettings::default();
    if let Some(v) = &raw.resync {
        agent.resync = src.duration_in(v, "agent.resync", &bounds::RESYNC)?;
    }
    if let Some(v) = &raw.settle {
        agent.settle = src.duration_in(v, "agent.settle", &bounds::SETTLE)?;
    }
    if let Some(v) = &raw.pair_timeout {
        agent.pair_timeout = src.duration_in(v, "agent.pair_timeout", &bounds::PAIR_TIMEOUT)?;
    }
    if let Some(v) = &raw.admin {
        agent.admin = v.get_ref().parse().map_err(|e| {
            src.invalid(
                v.span().start,
                "agent.admin",
                format!(
                    "{:?} is not an address like \"127.0.0.1:9808\": {e}",
                    v.get_ref()
                ),
            )
        })?;
    }
    if let Some(v) = &raw.max_file_size {
        agent.max_file_size = src.size_in(v, "agent.max_file_size", &bounds::MAX_FILE_SIZE)?;
    }
    Ok(agent)
}

/// `[audit]`: the log's path and size, and the witness.
fn parse_audit(src: &Source<'_>, raw: &RawAudit) -> Result<AuditSettings, ConfigError> {
    let mut audit = AuditSettings {
        path: raw.path.clone(),
        witness: raw.witness,
        ..AuditSettings::default()
    };
    if let Some(v) = &raw.max_size {
        audit.max_size = src.size_in(v, "audit.max_size", &bounds::AUDIT_MAX_SIZE)?;
    }
    if let Some(v) = &raw.witness_interval {
        audit.witness_interval =
            src.duration_in(v, "audit.witness_interval", &bounds::WITNESS_INTERVAL)?;
    }
    if let Some(v) = &raw.witness_namespace {
        audit.witness_namespace = namespace(src, v)?;
    }
    Ok(audit)
}

/// `audit.witness_namespace`: a Kubernetes namespace name (a DNS label).
fn namespace(src: &Source<'_>, v: &Spanned<String>) -> Result<String, ConfigError> {
    let ns = v.get_ref();
    let label = !ns.is_empty()
        && ns.len() <= 63
        && ns
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !ns.starts_with('-')
        && !ns.ends_with('-');
    if !label {
        return Err(src.invalid(
            v.span().start,
            "audit.witness_namespace",
            format!(
                "{ns:?} is not a namespace name (lowercase letters, digits and '-', at most 63)"
            ),
        ));
    }
    Ok(ns.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
[agent]
resync = "30s"
settle = "0s"
pair_timeout = "10s"
max_file_size = "1MiB"

[audit]
path = "/var/log/certreload/audit.jsonl"

[[bundle]]
name = "apiserver"
kind = "server"
cert = "/etc/kubernetes/pki/apiserver.crt"
key = "/etc/kubernetes/pki/apiserver.key"
ca = "/etc/kubernetes/pki/ca.crt"
expect_sans = ["kubernetes.default.svc"]
min_validity = "24h"

[[bundle]]
name = "sa"
kind = "sa-keys"
private_key = "/etc/kubernetes/pki/sa.key"
public_keys = ["/etc/kubernetes/pki/sa.pub"]
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("certreload.toml"), text)
    }

    #[test]
    fn parses_the_documented_example() {
        let c = parse(EXAMPLE).expect("valid");
        assert_eq!(c.agent.pair_timeout, Duration::from_secs(10));
        assert_eq!(c.agent.max_file_size, 1024 * 1024);
        assert_eq!(c.bundles.len(), 2);
        assert_eq!(c.bundles[0].min_validity, Some(Duration::from_secs(86400)));
        assert_eq!(c.bundles[0].line, 11);
        assert_eq!(c.bundles[0].files().len(), 3);
        assert_eq!(c.bundles[1].kind, BundleKind::SaKeys);
        assert_eq!(c.bundles[1].files().len(), 2);
    }

    #[test]
    fn errors_name_the_field_and_line() {
        let err = parse(&EXAMPLE.replace("pair_timeout = \"10s\"", "pair_timeout = \"ten\""))
            .expect_err("bad duration");
        let msg = err.to_string();
        assert!(
            msg.starts_with("certreload.toml:5: agent.pair_timeout:"),
            "{msg}"
        );

        let err = parse(&EXAMPLE.replace("key = \"/etc/kubernetes/pki/apiserver.key\"\n", ""))
            .expect_err("missing key");
        assert!(
            err.to_string().contains("bundle[apiserver].key: required"),
            "{err}"
        );
        assert!(err.to_string().starts_with("certreload.toml:11:"), "{err}");

        let err =
            parse(&EXAMPLE.replace("min_validity", "min_valdity")).expect_err("unknown field");
        assert!(err.to_string().contains("min_valdity"), "{err}");
        assert!(
            err.to_string().contains("line"),
            "toml names the line: {err}"
        );

        let err = parse(&format!(
            "{EXAMPLE}\n[[bundle]]\nname = \"sa\"\nkind = \"ca\"\ncert = \"/x\"\n"
        ))
        .expect_err("duplicate");
        assert!(err.to_string().contains("duplicate bundle name"), "{err}");

        let err = parse(&EXAMPLE.replace("max_file_size = \"1MiB\"", "max_file_size = \"lots\""))
            .expect_err("size");
        assert!(err.to_string().contains("agent.max_file_size"), "{err}");
    }

    #[test]
    fn ca_key_signing_and_kubeconfig_bundles_parse_and_stray_fields_are_named() {
        let c = parse(
            "[[bundle]]\nname = \"ca\"\nkind = \"ca\"\ncert = \"/p/ca.crt\"\nkey = \"/p/ca.key\"\nsigning = true\n\n[[bundle]]\nname = \"kcm\"\nkind = \"kubeconfig\"\nfile = \"/etc/kubernetes/controller-manager.conf\"\n",
        )
        .expect("valid");
        assert_eq!(
            c.bundles[0].files,
            BundleFiles::Ca {
                bundle: "/p/ca.crt".into(),
                key: Some("/p/ca.key".into())
            }
        );
        assert!(c.bundles[0].signing);
        assert_eq!(
            c.bundles[0].files(),
            [PathBuf::from("/p/ca.crt"), PathBuf::from("/p/ca.key")],
            "the CA key is watched too"
        );
        assert_eq!(c.bundles[1].kind, BundleKind::Kubeconfig);
        assert_eq!(
            c.bundles[1].files(),
            [PathBuf::from("/etc/kubernetes/controller-manager.conf")]
        );

        for (text, field) in [
            (
                "kind = \"server\"\ncert = \"/c\"\nkey = \"/k\"\nsigning = true",
                "signing",
            ),
            ("kind = \"kubeconfig\"", "file"),
            (
                "kind = \"kubeconfig\"\nfile = \"/f\"\ncert = \"/c\"",
                "cert",
            ),
            (
                "kind = \"client\"\ncert = \"/c\"\nkey = \"/k\"\nfile = \"/f\"",
                "file",
            ),
        ] {
            let err = parse(&format!("[[bundle]]\nname = \"b\"\n{text}\n")).expect_err(text);
            assert!(
                err.to_string().contains(&format!("bundle[b].{field}")),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn defaults_apply_when_sections_are_absent() {
        let c = parse("").expect("empty config");
        assert_eq!(c.agent, AgentSettings::default());
        assert_eq!(c.audit.path, PathBuf::from(DEFAULT_AUDIT_PATH));
    }
}
