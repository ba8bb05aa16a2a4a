//! `certreload check`: the validation gate as a command, for pipelines that want to know before
//! deploying a certificate. Exit status: 0 valid, 1 invalid, 2 usage or I/O error.
//!
//! Files are opened without blocking and must be regular files: a FIFO, socket or device at a
//! configured path fails the `read` check naming the file and its type, instead of hanging the
//! pipeline (see [`crate::regular_file`]).

use std::{path::PathBuf, time::SystemTime};

use serde::Serialize;

use crate::{
    config::{AgentSettings, BundleConfig, BundleFiles, BundleKind, ConfigError, ConfigSource},
    gate::{validate_bundle, Current},
    material::validate::{Report, Status},
};

/// What to check.
#[derive(Debug, Clone)]
pub(crate) enum CheckTarget {
    /// Every bundle of a configuration (file, or profile + overlay).
    Config(ConfigSource),
    /// One certificate/key pair given on the command line.
    Pair {
        /// Leaf + intermediates.
        cert: PathBuf,
        /// Private key.
        key: PathBuf,
        /// CA the chain must verify to.
        ca: Option<PathBuf>,
        /// Names the leaf must cover.
        sans: Vec<String>,
        /// Server or client.
        kind: BundleKind,
    },
}

/// One bundle's verdict, as printed.
#[derive(Debug, Serialize)]
pub(crate) struct BundleVerdict {
    /// Bundle name (`cli` for a pair given on the command line).
    pub name: String,
    /// Its kind.
    pub kind: BundleKind,
    /// True when every check passed.
    pub valid: bool,
    /// Every check.
    #[serde(flatten)]
    pub report: Report,
}

/// Runs the gate on `target`. `Err` only for usage/configuration errors (exit 2).
pub(crate) fn run(target: &CheckTarget) -> Result<Vec<BundleVerdict>, ConfigError> {
    let (agent, bundles) = match target {
        CheckTarget::Config(source) => {
            let config = source.load()?;
            (config.agent, config.bundles)
        }
        CheckTarget::Pair {
            cert,
            key,
            ca,
            sans,
            kind,
        } => {
            let bundle = BundleConfig {
                name: "cli".into(),
                kind: *kind,
                line: 0,
                files: BundleFiles::Pair {
                    cert: cert.clone(),
                    key: key.clone(),
                    ca: ca.clone(),
                },
                expect_sans: sans.clone(),
                min_validity: None,
                allow_san_removal: false,
                allow_ca_removal: false,
                signing: false,
            };
            (AgentSettings::default(), vec![bundle])
        }
    };
    let now = SystemTime::now();
    Ok(bundles
        .iter()
        .map(|b| {
            let report = validate_bundle(b, &agent, &Current::default(), now);
            BundleVerdict {
                name: b.name.clone(),
                kind: b.kind,
                valid: report.is_valid(),
                report,
            }
        })
        .collect())
}

/// The readable form: one block per bundle, one line per check.
pub(crate) fn render_text(verdicts: &[BundleVerdict]) -> String {
    let mut out = String::new();
    for v in verdicts {
        out.push_str(&format!(
            "bundle {} ({}): {}\n",
            v.name,
            v.kind.as_str(),
            if v.valid { "VALID" } else { "INVALID" }
        ));
        for r in &v.report.results {
            let status = match r.status {
                Status::Pass => "pass",
                Status::Fail => "FAIL",
                Status::Warn => "WARN",
                Status::Skip => "skip",
            };
            out.push_str(&format!(
                "  {status:<4}  {:<13}  {}\n",
                r.check.name(),
                r.detail
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_a_pair_from_the_command_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = crate::demo::prepare(dir.path()).expect("demo");
        let target = CheckTarget::Pair {
            cert: files.cert.clone(),
            key: files.key.clone(),
            ca: Some(files.ca.clone()),
            sans: vec!["localhost".into()],
            kind: BundleKind::Server,
        };
        let verdicts = run(&target).expect("runs");
        assert!(verdicts[0].valid, "{}", render_text(&verdicts));
        let text = render_text(&verdicts);
        assert!(text.contains("pass  chain"), "{text}");
        let wrong = CheckTarget::Pair {
            cert: files.cert.clone(),
            key: files.ca,
            ca: None,
            sans: Vec::new(),
            kind: BundleKind::Server,
        };
        let verdicts = run(&wrong).expect("runs");
        assert!(!verdicts[0].valid);
        assert!(render_text(&verdicts).contains("FAIL  parse"));
    }

    #[test]
    fn bundle_kind_name_is_its_serde_name() {
        for kind in [
            BundleKind::Server,
            BundleKind::Client,
            BundleKind::Ca,
            BundleKind::SaKeys,
            BundleKind::Kubeconfig,
        ] {
            let json = serde_json::to_string(&kind).expect("serialise");
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            assert_eq!(kind.to_string(), kind.as_str());
            let back: BundleKind = serde_json::from_str(&json).expect("deserialise");
            assert_eq!(back, kind);
        }
    }
}
