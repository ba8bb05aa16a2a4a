//! The alert rules: one source in the chart (deploy/helm/certreload/alerts/certreload.rules.yaml),
//! copied to deploy/alerts/ for Prometheus without the Operator and embedded in the chart's
//! PrometheusRule. Checked with Debian's promtool: `promtool check rules` on both forms, and
//! `promtool test rules` on deploy/alerts/tests/, where every alert must have a test.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::cmd;

/// The rules as the chart holds them (the one source).
pub(crate) const SOURCE: &str = "deploy/helm/certreload/alerts/certreload.rules.yaml";
/// The copy for a plain Prometheus (`rule_files:`).
pub(crate) const PLAIN: &str = "deploy/alerts/certreload.rules.yaml";
/// promtool unit tests, one file per alert.
const TESTS: &str = "deploy/alerts/tests";
/// From Debian's prometheus package (xtask/src/setup.rs PACKAGES).
const PROMTOOL: &str = "/usr/bin/promtool";

/// `cargo xtask manifests`: copies the rules to deploy/alerts/.
pub(crate) fn write(root: &Path) -> Result<()> {
    let plain = root.join(PLAIN);
    std::fs::create_dir_all(plain.parent().expect("PLAIN has a folder"))?;
    std::fs::copy(root.join(SOURCE), &plain)
        .with_context(|| format!("copying {SOURCE} to {PLAIN}"))?;
    eprintln!("xtask: wrote {}", plain.display());
    Ok(())
}

/// The copy is current; both forms pass `promtool check rules`; every alert has a unit test and
/// every test passes. `prometheus_rule` is the chart's rendered PrometheusRule.
pub(crate) fn check(root: &Path, prometheus_rule: &str) -> Result<()> {
    let source = std::fs::read_to_string(root.join(SOURCE)).context(SOURCE)?;
    let plain = std::fs::read_to_string(root.join(PLAIN)).context(PLAIN)?;
    if source != plain {
        bail!("{PLAIN} is not {SOURCE}: run `cargo xtask manifests` and commit the result");
    }
    let scratch = root.join("target/xtask-alerts");
    std::fs::create_dir_all(&scratch)?;
    let from_chart = scratch.join("prometheusrule-spec.yaml");
    std::fs::write(&from_chart, rule_spec(prometheus_rule)?)?;
    cmd::run(
        Command::new(PROMTOOL)
            .args(["check", "rules"])
            .arg(root.join(PLAIN))
            .arg(&from_chart),
    )
    .context("promtool check rules")?;
    let tests = test_files(root)?;
    let untested: Vec<String> = alert_names(&source)
        .difference(&tested_alerts(&tests)?)
        .cloned()
        .collect();
    if !untested.is_empty() {
        bail!(
            "alerts without a promtool test in {TESTS}: {}",
            untested.join(", ")
        );
    }
    cmd::run(Command::new(PROMTOOL).args(["test", "rules"]).args(&tests))
        .context("promtool test rules")
}

/// The PrometheusRule's `spec:` as a rules file (its groups, indented two spaces less).
fn rule_spec(prometheus_rule: &str) -> Result<String> {
    let Some((_, spec)) = prometheus_rule.split_once("\nspec:\n") else {
        bail!("the rendered PrometheusRule has no spec");
    };
    Ok(spec
        .lines()
        .map(|l| l.strip_prefix("  ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
        + "\n")
}

fn test_files(root: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join(TESTS))
        .with_context(|| format!("reading {TESTS}"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    Ok(files)
}

/// `- alert: NAME` of a rules file.
fn alert_names(rules: &str) -> BTreeSet<String> {
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(|n| n.trim().trim_matches(['"', '\'']).to_string())
        .collect()
}

/// `alertname: NAME` of the tests' `alert_rule_test` entries.
fn tested_alerts(tests: &[PathBuf]) -> Result<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    for t in tests {
        let text = std::fs::read_to_string(t).with_context(|| t.display().to_string())?;
        names.extend(
            text.lines()
                .filter_map(|l| l.trim().trim_start_matches("- ").strip_prefix("alertname:"))
                .map(|n| n.trim().trim_matches(['"', '\'']).to_string()),
        );
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_alert_names_and_the_rule_spec() {
        let rules = "groups:\n  - name: g\n    rules:\n      - alert: CertreloadA\n        expr: up\n      - alert: 'CertreloadB'\n";
        assert_eq!(
            alert_names(rules).into_iter().collect::<Vec<_>>(),
            ["CertreloadA", "CertreloadB"]
        );
        let rule = "apiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\nspec:\n  groups:\n    - name: g\n";
        assert_eq!(rule_spec(rule).expect("spec"), "groups:\n  - name: g\n");
    }
}
