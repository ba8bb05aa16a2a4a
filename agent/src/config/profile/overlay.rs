//! A config file over a profile: its `[profile]` table (what the profile is told about the node)
//! and the merge of the rest onto the generated configuration.

use std::path::Path;

use serde::Deserialize;
use toml::{Spanned, Table, Value};

use super::KubeadmSettings;
use crate::config::{ConfigError, Source};

/// Keys by which array entries of `base` are replaced by `overlay` entries.
fn entry_key(table: &str, entry: &Table) -> Option<String> {
    match table {
        "bundle" | "probe" | "listener" | "action" => entry
            .get("name")
            .and_then(Value::as_str)
            .map(str::to_string),
        _ => None,
    }
}

/// Overlays a config file on a profile: tables merge key by key; entries of the named arrays
/// (`[[bundle]]`, `[[probe]]`, `[[listener]]`, `[[action]]`) with the name of a profile entry
/// override its fields, others are added; any other value, a list such as an action's `exec`
/// included, replaces the profile's (an argv is never two commands glued together).
pub(crate) fn merge(base: &mut Table, overlay: Table) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(Value::Table(b)), Value::Table(o)) => merge(b, o),
            (Some(Value::Array(b)), Value::Array(o))
                if matches!(key.as_str(), "bundle" | "probe" | "listener" | "action") =>
            {
                for entry in o {
                    let replaced =
                        entry
                            .as_table()
                            .and_then(|t| entry_key(&key, t))
                            .and_then(|k| {
                                b.iter().position(|e| {
                                    e.as_table().and_then(|t| entry_key(&key, t)).as_deref()
                                        == Some(&k)
                                })
                            });
                    match replaced {
                        Some(i) => {
                            // A partial entry (e.g. `name` + `enabled = true`) overrides fields.
                            if let (Some(Value::Table(old)), Value::Table(new)) =
                                (b.get_mut(i), entry.clone())
                            {
                                merge(old, new);
                            }
                        }
                        None => b.push(entry),
                    }
                }
            }
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// The overlay's `[profile]` table, with positions for messages.
#[derive(Deserialize, Default)]
struct RawOverlay {
    #[serde(default)]
    profile: Option<Spanned<RawProfileSettings>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawProfileSettings {
    kubelet_version: Option<Spanned<String>>,
}

/// `"1.30"`, `"v1.30.4"`, `"1.30.0-rc.1"` → (1, 30).
fn major_minor(version: &str) -> Option<(u32, u32)> {
    let mut parts = version
        .trim()
        .trim_start_matches('v')
        .split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Reads the overlay's `[profile]` table (what the profile is told about the node).
pub(super) fn settings(path: &Path, text: &str) -> Result<KubeadmSettings, ConfigError> {
    let src = Source { path, text };
    let raw: RawOverlay = toml::from_str(text).map_err(|e| ConfigError::Syntax {
        path: path.to_path_buf(),
        message: e.to_string().trim_end().replace('\n', " "),
    })?;
    let mut settings = KubeadmSettings::default();
    if let Some(v) = raw
        .profile
        .as_ref()
        .and_then(|p| p.get_ref().kubelet_version.as_ref())
    {
        settings.kubelet_version = Some(major_minor(v.get_ref()).ok_or_else(|| {
            src.invalid(
                v.span().start,
                "profile.kubelet_version",
                format!(
                    "{:?} is not a version like \"1.30\" or \"v1.30.4\"",
                    v.get_ref()
                ),
            )
        })?);
    }
    Ok(settings)
}
