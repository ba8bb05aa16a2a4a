//! `[sa_keys]`: the ServiceAccount key identity that control-plane agents publish and every node
//! agent follows (issue 12). Absent: neither.
//!
//! ```toml
//! [sa_keys]
//! configmap = "kube-system/certreload-sa-keys"   # default
//! publish = "sa"                                 # a kind = "sa-keys" bundle (control plane)
//! follow = true                                  # default: watch the ConfigMap
//! ```

use serde::Deserialize;
use toml::Spanned;

use super::{BundleConfig, BundleKind, ConfigError, Source};

/// Default `configmap`: `NAMESPACE/NAME` of the published identity (the same object as
/// `propagation::keys::DEFAULT_NAMESPACE`/`DEFAULT_NAME`; config sits below propagation, so the
/// value is repeated here and a unit test there checks that both agree).
pub(crate) const DEFAULT_CONFIGMAP: &str = "kube-system/certreload-sa-keys";

/// `[sa_keys]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SaKeysSettings {
    /// Namespace of the ConfigMap.
    pub namespace: String,
    /// Name of the ConfigMap.
    pub name: String,
    /// The `sa-keys` bundle whose accepted generations this node publishes (control plane).
    pub publish: Option<String>,
    /// Whether this node watches the ConfigMap (its pods' tokens are checked against it).
    pub follow: bool,
}

impl SaKeysSettings {
    /// `namespace/name`, for messages and audit records.
    pub(crate) fn configmap(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSaKeys {
    configmap: Option<Spanned<String>>,
    publish: Option<Spanned<String>>,
    #[serde(default = "follow_default")]
    follow: bool,
}

fn follow_default() -> bool {
    true
}

/// `[sa_keys]` checked against the bundles (`publish` must name a `sa-keys` bundle).
pub(crate) fn parse(
    src: &Source<'_>,
    raw: &Spanned<RawSaKeys>,
    bundles: &[BundleConfig],
) -> Result<SaKeysSettings, ConfigError> {
    let table = raw.get_ref();
    let (namespace, name) = match &table.configmap {
        Some(v) => configmap(src, v)?,
        None => {
            let (ns, name) = DEFAULT_CONFIGMAP
                .split_once('/')
                .expect("DEFAULT_CONFIGMAP is NAMESPACE/NAME");
            (ns.to_string(), name.to_string())
        }
    };
    let publish = match &table.publish {
        Some(v) => Some(publish(src, v, bundles)?),
        None => None,
    };
    if publish.is_none() && !table.follow {
        return Err(src.invalid(
            raw.span().start,
            "sa_keys",
            "neither publish nor follow: remove [sa_keys], or name the sa-keys bundle to publish, or follow = true",
        ));
    }
    Ok(SaKeysSettings {
        namespace,
        name,
        publish,
        follow: table.follow,
    })
}

/// `sa_keys.configmap`: `NAMESPACE/NAME`, a namespace (DNS label) and a ConfigMap name (DNS
/// subdomain), as the API server requires them.
fn configmap(src: &Source<'_>, v: &Spanned<String>) -> Result<(String, String), ConfigError> {
    let value = v.get_ref();
    let invalid = |why: &str| {
        src.invalid(
            v.span().start,
            "sa_keys.configmap",
            format!("{value:?} {why}"),
        )
    };
    let Some((namespace, name)) = value.split_once('/') else {
        return Err(invalid("is not NAMESPACE/NAME"));
    };
    if !is_dns_label(namespace) {
        return Err(invalid(
            "names no valid namespace (lowercase letters, digits and '-', at most 63, starting and ending with a letter or digit)",
        ));
    }
    if !is_dns_subdomain(name) {
        return Err(invalid(
            "names no valid ConfigMap (lowercase letters, digits, '-' and '.', at most 253, starting and ending with a letter or digit)",
        ));
    }
    Ok((namespace.to_string(), name.to_string()))
}

/// `sa_keys.publish`: an existing bundle of kind `sa-keys`.
fn publish(
    src: &Source<'_>,
    v: &Spanned<String>,
    bundles: &[BundleConfig],
) -> Result<String, ConfigError> {
    let name = v.get_ref();
    match bundles.iter().find(|b| &b.name == name) {
        Some(b) if b.kind == BundleKind::SaKeys => Ok(name.clone()),
        Some(b) => Err(src.invalid(
            v.span().start,
            "sa_keys.publish",
            format!(
                "bundle {name:?} (line {}) is of kind {}, not sa-keys: only ServiceAccount keys are published",
                b.line, b.kind
            ),
        )),
        None => {
            let sa_keys: Vec<&str> = bundles
                .iter()
                .filter(|b| b.kind == BundleKind::SaKeys)
                .map(|b| b.name.as_str())
                .collect();
            let known = if sa_keys.is_empty() {
                "no sa-keys bundle is configured".to_string()
            } else {
                format!("sa-keys bundles: {}", sa_keys.join(", "))
            };
            Err(src.invalid(
                v.span().start,
                "sa_keys.publish",
                format!("no bundle named {name:?} ({known})"),
            ))
        }
    }
}

/// A DNS-1123 label: what a namespace name is.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS-1123 subdomain: what a ConfigMap name is.
fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Config, ConfigError};

    const SA: &str = "[[bundle]]\nname = \"sa\"\nkind = \"sa-keys\"\nprivate_key = \"/p/sa.key\"\npublic_keys = [\"/p/sa.pub\"]\n\n[[bundle]]\nname = \"ca\"\nkind = \"ca\"\ncert = \"/p/ca.crt\"\n";

    fn parse(sa_keys: &str) -> Result<Config, ConfigError> {
        Config::parse(
            Path::new("certreload.toml"),
            &format!("{SA}\n[sa_keys]\n{sa_keys}\n"),
        )
    }

    #[test]
    fn defaults_follow_the_default_configmap() {
        let c = parse("").expect("empty [sa_keys]");
        let s = c.sa_keys.expect("[sa_keys] present");
        assert_eq!(s.configmap(), super::DEFAULT_CONFIGMAP);
        assert!(s.follow);
        assert_eq!(s.publish, None);
        let c = Config::parse(Path::new("certreload.toml"), SA).expect("no [sa_keys]");
        assert_eq!(c.sa_keys, None, "absent: neither publish nor follow");
    }

    #[test]
    fn publishes_an_sa_keys_bundle_to_another_configmap() {
        let c = parse("configmap = \"certreload/sa-keys.v1\"\npublish = \"sa\"\nfollow = false")
            .expect("valid");
        let s = c.sa_keys.expect("[sa_keys]");
        assert_eq!(
            (s.namespace.as_str(), s.name.as_str()),
            ("certreload", "sa-keys.v1")
        );
        assert_eq!(s.publish.as_deref(), Some("sa"));
        assert!(!s.follow);
    }

    #[test]
    fn errors_name_the_file_line_field_and_check() {
        for (text, line, field, says) in [
            (
                "configmap = \"certreload-sa-keys\"",
                13,
                "sa_keys.configmap",
                "is not NAMESPACE/NAME",
            ),
            (
                "configmap = \"Kube-System/x\"",
                13,
                "sa_keys.configmap",
                "no valid namespace",
            ),
            (
                "configmap = \"kube-system/\"",
                13,
                "sa_keys.configmap",
                "no valid ConfigMap",
            ),
            (
                "configmap = \"kube-system/a_b\"",
                13,
                "sa_keys.configmap",
                "no valid ConfigMap",
            ),
            (
                "publish = \"nope\"",
                13,
                "sa_keys.publish",
                "no bundle named \"nope\" (sa-keys bundles: sa)",
            ),
            (
                "publish = \"ca\"",
                13,
                "sa_keys.publish",
                "bundle \"ca\" (line 7) is of kind ca, not sa-keys",
            ),
            (
                "\nfollow = false",
                12,
                "sa_keys",
                "neither publish nor follow",
            ),
        ] {
            let e = parse(text).expect_err(text).to_string();
            assert!(
                e.starts_with(&format!("certreload.toml:{line}: {field}: ")) && e.contains(says),
                "{text}: {e}"
            );
        }
        let e = parse("publsh = \"sa\"")
            .expect_err("unknown field")
            .to_string();
        assert!(e.contains("publsh"), "{e}");
    }
}
