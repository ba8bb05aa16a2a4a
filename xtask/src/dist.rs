//! `cargo xtask dist`: what a release ships, in one folder: the release binary (eBPF object
//! embedded), the Kubernetes manifests, the Helm chart, the alert rules, the Containerfile and its
//! build context.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::{build, cmd, image, manifests};

/// Builds and assembles the folder; returns it.
pub(crate) fn run(out: Option<PathBuf>) -> Result<PathBuf> {
    let root = cmd::workspace_root();
    let out = out.unwrap_or_else(|| root.join("target/dist"));
    let built = build::all(true)?;
    std::fs::create_dir_all(out.join("deploy"))
        .with_context(|| format!("creating {}", out.display()))?;
    copy(&built.agent, &out.join("certreload"))?;
    for file in manifests::files(&root)? {
        let name = file.file_name().context("manifest name")?;
        copy(&file, &out.join("deploy").join(name))?;
    }
    // The chart (`helm install certreload deploy/helm/certreload`) and the plain rules file.
    for tree in ["deploy/helm", "deploy/alerts"] {
        copy_tree(&root.join(tree), &out.join(tree))?;
    }
    copy(
        &root.join("deploy/Containerfile"),
        &out.join("deploy/Containerfile"),
    )?;
    // What deploy/Containerfile builds from: `docker build -f deploy/Containerfile image-context`.
    image::context_at(&built.agent, &out.join("image-context"))?;
    eprintln!("xtask: dist in {}", out.display());
    Ok(out)
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to)
        .map(|_| ())
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))
}

/// Copies a directory of plain files and directories (the chart, the rules) as it is.
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    let entries = std::fs::read_dir(from).with_context(|| format!("listing {}", from.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", from.display()))?;
        let kind = entry
            .file_type()
            .with_context(|| format!("reading {}", entry.path().display()))?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            copy(&entry.path(), &target)?;
        }
    }
    Ok(())
}
