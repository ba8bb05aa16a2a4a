//! `[[bundle]]`: the files a bundle is made of, shaped by its kind, and the policy it is
//! validated with.

use std::{collections::BTreeSet, path::PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::{bounds, BundleConfig, BundleFiles, BundleKind, ConfigError, Source};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBundle {
    name: String,
    kind: BundleKind,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
    #[serde(default)]
    expect_sans: Vec<String>,
    min_validity: Option<Spanned<String>>,
    #[serde(default)]
    allow_san_removal: bool,
    #[serde(default)]
    allow_ca_removal: bool,
    #[serde(default)]
    signing: bool,
    file: Option<PathBuf>,
    private_key: Option<PathBuf>,
    #[serde(default)]
    public_keys: Vec<PathBuf>,
}

/// Every `[[bundle]]`, names unique.
pub(crate) fn parse(
    src: &Source<'_>,
    raw: &[Spanned<RawBundle>],
) -> Result<Vec<BundleConfig>, ConfigError> {
    let mut names = BTreeSet::new();
    let mut bundles = Vec::new();
    for spanned in raw {
        let offset = spanned.span().start;
        let b = spanned.get_ref();
        if b.name.trim().is_empty() {
            return Err(src.invalid(offset, "bundle.name", "must not be empty"));
        }
        if !names.insert(b.name.clone()) {
            return Err(src.invalid(
                offset,
                format!("bundle[{}].name", b.name),
                "duplicate bundle name",
            ));
        }
        bundles.push(parse_bundle(src, offset, b)?);
    }
    Ok(bundles)
}

/// One `[[bundle]]` at `offset`: its files as its kind needs them, and its policy.
fn parse_bundle(
    src: &Source<'_>,
    offset: usize,
    b: &RawBundle,
) -> Result<BundleConfig, ConfigError> {
    let field = |f: &str| format!("bundle[{}].{f}", b.name);
    let files = bundle_files(b).map_err(|(name, problem)| {
        src.invalid(offset, field(name), format!("{problem} kind {:?}", b.kind))
    })?;
    if b.signing && b.kind != BundleKind::Ca {
        return Err(src.invalid(
            offset,
            field("signing"),
            format!("not used by kind {:?}", b.kind),
        ));
    }
    let min_validity = match &b.min_validity {
        Some(v) => Some(src.duration_in(v, &field("min_validity"), &bounds::MIN_VALIDITY)?),
        None => None,
    };
    Ok(BundleConfig {
        name: b.name.clone(),
        kind: b.kind,
        line: src.line(offset),
        files,
        expect_sans: b.expect_sans.clone(),
        min_validity,
        allow_san_removal: b.allow_san_removal,
        allow_ca_removal: b.allow_ca_removal,
        signing: b.signing,
    })
}

/// A bundle's files as its kind needs them; else the field at fault and whether it is
/// `"required for"` or `"not used by"` the kind.
fn bundle_files(b: &RawBundle) -> Result<BundleFiles, (&'static str, &'static str)> {
    let required = |name: &'static str| (name, "required for");
    let unused_of = |fields: &[(&'static str, bool)]| -> Result<(), (&'static str, &'static str)> {
        match fields.iter().find(|(_, present)| *present) {
            Some((name, _)) => Err((name, "not used by")),
            None => Ok(()),
        }
    };
    match b.kind {
        BundleKind::Server | BundleKind::Client => {
            unused_of(&[
                ("private_key", b.private_key.is_some()),
                ("public_keys", !b.public_keys.is_empty()),
                ("file", b.file.is_some()),
            ])?;
            Ok(BundleFiles::Pair {
                cert: b.cert.clone().ok_or_else(|| required("cert"))?,
                key: b.key.clone().ok_or_else(|| required("key"))?,
                ca: b.ca.clone(),
            })
        }
        BundleKind::Ca => {
            unused_of(&[
                ("ca", b.ca.is_some()),
                ("private_key", b.private_key.is_some()),
                ("public_keys", !b.public_keys.is_empty()),
                ("file", b.file.is_some()),
            ])?;
            Ok(BundleFiles::Ca {
                bundle: b.cert.clone().ok_or_else(|| required("cert"))?,
                key: b.key.clone(),
            })
        }
        BundleKind::Kubeconfig => {
            unused_of(&[
                ("cert", b.cert.is_some()),
                ("key", b.key.is_some()),
                ("ca", b.ca.is_some()),
                ("private_key", b.private_key.is_some()),
                ("public_keys", !b.public_keys.is_empty()),
            ])?;
            Ok(BundleFiles::Kubeconfig {
                file: b.file.clone().ok_or_else(|| required("file"))?,
            })
        }
        BundleKind::SaKeys => {
            unused_of(&[
                ("cert", b.cert.is_some()),
                ("key", b.key.is_some()),
                ("ca", b.ca.is_some()),
                ("file", b.file.is_some()),
            ])?;
            if b.public_keys.is_empty() {
                return Err(required("public_keys"));
            }
            Ok(BundleFiles::SaKeys {
                private_key: b
                    .private_key
                    .clone()
                    .ok_or_else(|| required("private_key"))?,
                public_keys: b.public_keys.clone(),
            })
        }
    }
}
