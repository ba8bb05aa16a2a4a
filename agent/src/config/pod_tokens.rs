//! `[pod_tokens]`: the node's token tracker (`propagation::tracker`). Where the kubelet mounts the
//! pods' projected ServiceAccount tokens, which CA bundle every pod's `ca.crt` must hold, how often
//! they are read, and how long a stale token is tolerated before the `on = "stale"` actions of the
//! reserved pseudo-bundle `pod-tokens` run (and how long such an action may hold its lock).
//!
//! Absent: no tracker, and `[[action]] bundle = "pod-tokens"` is refused.

use std::{path::PathBuf, time::Duration};

use serde::Deserialize;
use toml::Spanned;

use super::{bounds::Bounds, BundleConfig, BundleKind, ConfigError, Source};

/// The pseudo-bundle the tracker reports as: its stale notices trigger `[[action]]`s of this
/// bundle, its scans are the verdicts their locks wait for. No real bundle may take the name.
pub(crate) const PSEUDO_BUNDLE: &str = "pod-tokens";

/// Default `pods_dir`: the kubelet's `--root-dir` is `/var/lib/kubelet`.
pub(crate) const DEFAULT_PODS_DIR: &str = "/var/lib/kubelet/pods";
/// Default `rescan`.
pub(crate) const DEFAULT_RESCAN: Duration = Duration::from_secs(10);
/// Default `grace`.
pub(crate) const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// Default `deadline`: the seed's promise (tokens current within 5 minutes of the key change).
pub(crate) const DEFAULT_DEADLINE: Duration = Duration::from_secs(300);

/// `[pod_tokens] rescan`.
pub(crate) const RESCAN: Bounds<Duration> = Bounds {
    min: Duration::from_secs(1),
    max: Duration::from_secs(3600),
    why: "each scan reads every pod's token and ca.crt on the node, so below 1s the agent only reads; above an hour a stale token goes unseen far past the 5 minutes promised",
};
/// `[pod_tokens] grace`.
pub(crate) const GRACE: Bounds<Duration> = Bounds {
    min: Duration::ZERO,
    max: Duration::from_secs(3600),
    why: "0 acts on the first scan that finds a stale token; more than an hour leaves pods on a key or CA that is going away",
};
/// `[pod_tokens] deadline`.
pub(crate) const DEADLINE: Bounds<Duration> = Bounds {
    min: Duration::from_secs(1),
    max: Duration::from_secs(86_400),
    why: "no kubelet re-requests its tokens in under a second; an action's lock is held up to this long, so beyond a day one node blocks the others",
};

/// `[pod_tokens]`, as the tracker uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PodTokensSettings {
    /// `<kubelet root>/pods`: one directory per pod uid.
    pub pods_dir: PathBuf,
    /// A `kind = "ca"` bundle whose every certificate each pod's `ca.crt` must hold.
    pub cluster_ca: Option<String>,
    /// How often every token is read again (also right after an action asks).
    pub rescan: Duration,
    /// A token stale this long triggers the `on = "stale"` actions of `pod-tokens`.
    pub grace: Duration,
    /// How long after an action every token must be current: the action's lock is held until
    /// then at most, and a still-stale node is notified again.
    pub deadline: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPodTokens {
    pods_dir: Option<Spanned<PathBuf>>,
    cluster_ca: Option<Spanned<String>>,
    rescan: Option<Spanned<String>>,
    grace: Option<Spanned<String>>,
    deadline: Option<Spanned<String>>,
}

/// `[pod_tokens]`, each duration range-checked, `cluster_ca` checked against the `bundles`.
pub(crate) fn parse(
    src: &Source<'_>,
    raw: &Spanned<RawPodTokens>,
    bundles: &[BundleConfig],
) -> Result<PodTokensSettings, ConfigError> {
    let r = raw.get_ref();
    let pods_dir = match &r.pods_dir {
        None => PathBuf::from(DEFAULT_PODS_DIR),
        Some(dir) if dir.get_ref().is_absolute() => dir.get_ref().clone(),
        Some(dir) => {
            return Err(src.invalid(
                dir.span().start,
                "pod_tokens.pods_dir",
                format!("{:?} is not an absolute path", dir.get_ref()),
            ))
        }
    };
    let cluster_ca = match &r.cluster_ca {
        None => None,
        Some(name) => Some(cluster_ca(src, name, bundles)?),
    };
    let duration = |v: &Option<Spanned<String>>, field: &str, default, range| {
        src.duration_or(v.as_ref(), &format!("pod_tokens.{field}"), default, range)
    };
    Ok(PodTokensSettings {
        pods_dir,
        cluster_ca,
        rescan: duration(&r.rescan, "rescan", DEFAULT_RESCAN, &RESCAN)?,
        grace: duration(&r.grace, "grace", DEFAULT_GRACE, &GRACE)?,
        deadline: duration(&r.deadline, "deadline", DEFAULT_DEADLINE, &DEADLINE)?,
    })
}

/// `cluster_ca`: the name of a configured `kind = "ca"` bundle.
fn cluster_ca(
    src: &Source<'_>,
    name: &Spanned<String>,
    bundles: &[BundleConfig],
) -> Result<String, ConfigError> {
    let field = "pod_tokens.cluster_ca";
    match bundles.iter().find(|b| &b.name == name.get_ref()) {
        None => Err(src.invalid(
            name.span().start,
            field,
            format!("no bundle named {:?}", name.get_ref()),
        )),
        Some(b) if b.kind != BundleKind::Ca => Err(src.invalid(
            name.span().start,
            field,
            format!(
                "bundle {:?} is kind {:?}; the cluster CA is a kind \"ca\" bundle",
                b.name,
                b.kind.as_str()
            ),
        )),
        Some(b) => Ok(b.name.clone()),
    }
}

/// No real bundle may be named [`PSEUDO_BUNDLE`]: its actions and verdicts would mix with the
/// tracker's.
pub(crate) fn check_bundle_names(
    src: &Source<'_>,
    bundles: &[BundleConfig],
) -> Result<(), ConfigError> {
    match bundles.iter().find(|b| b.name == PSEUDO_BUNDLE) {
        Some(b) => Err(ConfigError::Invalid {
            path: src.path.to_path_buf(),
            line: b.line,
            field: format!("bundle[{PSEUDO_BUNDLE}].name"),
            message: format!(
                "{PSEUDO_BUNDLE:?} is reserved for the token tracker's pseudo-bundle ([pod_tokens]); name the bundle otherwise"
            ),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    const CA: &str = "[[bundle]]\nname = \"kubernetes-ca\"\nkind = \"ca\"\ncert = \"/p/ca.crt\"\n\n[[bundle]]\nname = \"sa\"\nkind = \"sa-keys\"\nprivate_key = \"/p/sa.key\"\npublic_keys = [\"/p/sa.pub\"]\n";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("certreload.toml"), &format!("{CA}{text}"))
    }

    #[test]
    fn absent_is_off_and_an_empty_table_takes_the_defaults() {
        assert_eq!(parse("").expect("no [pod_tokens]").pod_tokens, None);
        let c = parse("[pod_tokens]\n").expect("defaults");
        assert_eq!(
            c.pod_tokens,
            Some(PodTokensSettings {
                pods_dir: DEFAULT_PODS_DIR.into(),
                cluster_ca: None,
                rescan: Duration::from_secs(10),
                grace: Duration::from_secs(30),
                deadline: Duration::from_secs(300),
            })
        );
    }

    #[test]
    fn every_field_is_read() {
        let c = parse("[pod_tokens]\npods_dir = \"/k/pods\"\ncluster_ca = \"kubernetes-ca\"\nrescan = \"2s\"\ngrace = \"0s\"\ndeadline = \"90s\"\n")
            .expect("valid");
        let t = c.pod_tokens.expect("configured");
        assert_eq!(t.pods_dir, PathBuf::from("/k/pods"));
        assert_eq!(t.cluster_ca.as_deref(), Some("kubernetes-ca"));
        assert_eq!(
            (t.rescan, t.grace, t.deadline),
            (
                Duration::from_secs(2),
                Duration::ZERO,
                Duration::from_secs(90)
            )
        );
    }

    #[test]
    fn out_of_range_values_name_file_line_and_field() {
        for (field, value) in [
            ("rescan", "\"100ms\""),
            ("rescan", "\"2h\""),
            ("grace", "\"2h\""),
            ("deadline", "\"0s\""),
            ("deadline", "\"2d\""),
            ("grace", "\"soon\""),
        ] {
            let e = parse(&format!("[pod_tokens]\n{field} = {value}\n"))
                .expect_err(field)
                .to_string();
            assert!(
                e.starts_with(&format!("certreload.toml:12: pod_tokens.{field}:")),
                "{field} = {value}: {e}"
            );
        }
        let e = parse("[pod_tokens]\npods_dir = \"pods\"\n")
            .expect_err("relative")
            .to_string();
        assert!(
            e.contains("pod_tokens.pods_dir") && e.contains("absolute"),
            "{e}"
        );
    }

    #[test]
    fn cluster_ca_must_be_a_ca_bundle() {
        let e = parse("[pod_tokens]\ncluster_ca = \"missing\"\n")
            .expect_err("no such bundle")
            .to_string();
        assert!(
            e.starts_with("certreload.toml:12: pod_tokens.cluster_ca: no bundle named \"missing\""),
            "{e}"
        );
        let e = parse("[pod_tokens]\ncluster_ca = \"sa\"\n")
            .expect_err("not a CA")
            .to_string();
        assert!(e.contains("kind \"sa-keys\""), "{e}");
    }

    #[test]
    fn a_real_bundle_may_not_take_the_pseudo_bundles_name() {
        let e = parse("[[bundle]]\nname = \"pod-tokens\"\nkind = \"ca\"\ncert = \"/p/x.crt\"\n")
            .expect_err("reserved")
            .to_string();
        assert!(
            e.starts_with("certreload.toml:11: bundle[pod-tokens].name:") && e.contains("reserved"),
            "{e}"
        );
    }

    #[test]
    fn pod_tokens_actions_need_the_tracker_and_a_stale_trigger() {
        let action = "[[action]]\nname = \"refresh\"\nbundle = \"pod-tokens\"\non = \"stale\"\nexec = [\"systemctl\", \"restart\", \"kubelet\"]\n";
        let e = parse(action).expect_err("no [pod_tokens]").to_string();
        assert!(
            e.starts_with("certreload.toml:11: action[refresh].bundle:")
                && e.contains("[pod_tokens]"),
            "{e}"
        );
        let c = parse(&format!("[pod_tokens]\n{action}")).expect("with [pod_tokens]");
        assert_eq!(c.actions[0].bundle, PSEUDO_BUNDLE);
        let e = parse(&format!(
            "[pod_tokens]\n{}",
            action.replace("\"stale\"", "\"accepted\"")
        ))
        .expect_err("accepted")
        .to_string();
        assert!(
            e.contains("action[refresh].on") && e.contains("stale"),
            "{e}"
        );
        // Checked even while disabled, like any action's bundle.
        let e = parse(&action.replace("on =", "enabled = false\non ="))
            .expect_err("disabled, still checked")
            .to_string();
        assert!(e.contains("[pod_tokens]"), "{e}");
    }
}
