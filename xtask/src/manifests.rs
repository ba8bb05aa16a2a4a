//! Checking `deploy/` against the Kubernetes API schema: `kubernetes-validate` (PyPI; it bundles
//! the OpenAPI schemas of every Kubernetes release) in a virtualenv cached outside the repository,
//! in strict mode (unknown fields are errors). Where it cannot be installed, structural checks run
//! instead and say so. The same check runs on the Helm chart's rendering with every toggle on
//! ([`crate::chart`]: deploy/*.yaml are the chart's default rendering), and the alert rules go
//! through promtool ([`crate::alerts`]).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::{alerts, chart, cmd, setup};

/// The validator release used (pinned: its schemas decide what passes).
const VALIDATOR: &str = "kubernetes-validate==1.37.0";
/// The Kubernetes version the manifests are checked against (oldest supported by the DaemonSet).
const KUBERNETES_VERSION: &str = "1.32.0";

/// Every manifest in `deploy/`.
pub(crate) fn files(root: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("deploy"))
        .context("reading deploy/")?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("deploy/ holds no manifests");
    }
    Ok(files)
}

fn validator() -> Result<PathBuf> {
    let venv = setup::cache_dir().join("kubernetes-validate");
    let bin = venv.join("bin/kubernetes-validate");
    if bin.exists() {
        return Ok(bin);
    }
    cmd::run(Command::new("python3").args(["-m", "venv"]).arg(&venv)).context("python3 -m venv")?;
    cmd::run(Command::new(venv.join("bin/pip")).args(["install", "--quiet", VALIDATOR]))
        .with_context(|| format!("pip install {VALIDATOR}"))?;
    Ok(bin)
}

/// `cargo xtask manifests`: deploy/*.yaml and deploy/alerts/ from the chart.
pub(crate) fn write(root: &Path) -> Result<()> {
    chart::write(root)?;
    alerts::write(root)
}

/// The chart (lint, deploy/ current, its every-toggle rendering through the schema check), the
/// alerts (promtool), and deploy/*.yaml against the schema. Without Helm (not built) the chart and
/// alert checks are skipped with a warning, except under CI=true.
pub(crate) fn check(root: &Path) -> Result<()> {
    match chart::helm() {
        Ok(helm) => check_chart(root, &helm)?,
        Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            return Err(e.context("CI=true: the chart must be checked with the real Helm"))
        }
        Err(e) => eprintln!("xtask: WARNING: {e:#}; the chart and alert checks are skipped"),
    }
    validate(&files(root)?)
}

/// The chart's checks, then its every-toggle rendering (less the PrometheusRule, a CRD the schema
/// check does not know: promtool checks its rules) through the schema check.
fn check_chart(root: &Path, helm: &Path) -> Result<()> {
    let rendered = chart::check(root, helm)?;
    let (objects, rules) = chart::split_kind(&rendered, "PrometheusRule");
    let [rule] = rules.as_slice() else {
        bail!("the chart rendered {} PrometheusRules, not 1", rules.len());
    };
    alerts::check(root, rule)?;
    let scratch = root.join("target/xtask-chart");
    std::fs::create_dir_all(&scratch)?;
    let every_toggle = scratch.join("every-toggle.yaml");
    std::fs::write(&every_toggle, objects.join("\n---\n"))?;
    validate(&[every_toggle])
}

/// Validates the manifests (strict schema), or falls back to structural checks.
fn validate(files: &[PathBuf]) -> Result<()> {
    match validator() {
        Ok(bin) => {
            eprintln!("xtask: validating deploy/ with {VALIDATOR} (strict, Kubernetes {KUBERNETES_VERSION})");
            cmd::run(
                Command::new(bin)
                    .args(["--strict", "--quiet", "-k", KUBERNETES_VERSION])
                    .args(files),
            )
            .context("deploy/ does not validate against the Kubernetes schema")
        }
        Err(e) => {
            eprintln!("xtask: WARNING: no schema validator ({e:#}); structural checks only");
            structural(files)
        }
    }
}

/// Every YAML document names apiVersion, kind and metadata.name at top level.
fn structural(files: &[PathBuf]) -> Result<()> {
    for file in files {
        let text = std::fs::read_to_string(file)?;
        for (i, doc) in text.split("\n---").enumerate() {
            let top = |key: &str| doc.lines().any(|l| l.starts_with(key));
            let named = doc
                .lines()
                .skip_while(|l| !l.starts_with("metadata:"))
                .skip(1)
                .take_while(|l| l.starts_with(' '))
                .any(|l| l.trim_start().starts_with("name:"));
            if !(top("apiVersion:") && top("kind:") && named) {
                bail!(
                    "{} document {}: needs apiVersion, kind and metadata.name",
                    file.display(),
                    i + 1
                );
            }
        }
    }
    Ok(())
}
