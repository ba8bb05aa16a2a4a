//! The kubeadm profile's token tracker: `[pod_tokens]` where the kubelet keeps its pods on this
//! node, judged against the cluster CA (`kubernetes-ca`) when that bundle is here, and the kubelet
//! restart (off by default) that makes stale tokens current.

use super::writer::Writer;

/// The kubelet's pods directory under its default `--root-dir`.
const PODS_DIR: &str = "var/lib/kubelet/pods";

/// The cluster CA bundle of the kubeadm profile.
const CLUSTER_CA_BUNDLE: &str = "kubernetes-ca";

/// The action's comment: why a restart, and what it costs.
const WHY: &str = "kubelet: a projected ServiceAccount token is refreshed only by time (at 80 % of its lifetime); a restart drops the token manager's cache and re-requests every pod's token (and rewrites ca.crt) without restarting the pods";

/// Writes `[pod_tokens]` and the action `kubelet-restart-on-stale-tokens` when the kubelet's
/// pods directory is on this node; otherwise one skip line.
pub(super) fn pod_tokens(w: &mut Writer<'_>) {
    let pods = w.path(PODS_DIR);
    if !pods.is_dir() {
        w.skipped.push(format!(
            "pod_tokens: {} not on this node, skipped",
            pods.display()
        ));
        return;
    }
    w.out
        .push_str(&format!("\n[pod_tokens]\npods_dir = {pods:?}\n"));
    if w.has(CLUSTER_CA_BUNDLE) {
        w.out
            .push_str(&format!("cluster_ca = \"{CLUSTER_CA_BUNDLE}\"\n"));
    }
    // One node at a time (lock "kubelet"): every node sees the same key change at once, and a
    // kubelet restart everywhere together makes every node NotReady together.
    w.out.push_str(&format!(
        "\n# {WHY}\n[[action]]\nname = \"kubelet-restart-on-stale-tokens\"\nenabled = false\nbundle = \"pod-tokens\"\non = \"stale\"\nexec = [\"systemctl\", \"restart\", \"kubelet\"]\ntimeout = \"120s\"\nmin_interval = \"2m\"\nlock = \"kubelet\"\n"
    ));
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{
        profile::{self, Profile},
        ActionCommand, ActionTrigger,
    };

    fn load(root: &Path, overlay: Option<&str>) -> crate::config::Config {
        let file = overlay.map(|text| {
            let path = root.join("overlay.toml");
            std::fs::write(&path, text).expect("write overlay");
            path
        });
        let (config, _) = profile::load_with(
            Profile::Kubeadm,
            root,
            file.as_deref(),
            &root.join("no-token"),
        )
        .expect("profile loads");
        config
    }

    #[test]
    fn tracks_the_kubelets_pods_against_the_cluster_ca_with_the_restart_off() {
        let root = tempfile::tempdir().expect("tempdir");
        let config = load(root.path(), None);
        assert_eq!(
            config.pod_tokens, None,
            "no kubelet pods directory, no tracker"
        );

        std::fs::create_dir_all(root.path().join("var/lib/kubelet/pods")).expect("mkdir");
        std::fs::create_dir_all(root.path().join("etc/kubernetes/pki")).expect("mkdir");
        std::fs::write(
            root.path().join("etc/kubernetes/pki/ca.crt"),
            crate::test_pki::ca("kubernetes").pem,
        )
        .expect("ca.crt");
        let config = load(root.path(), None);
        let t = config.pod_tokens.clone().expect("[pod_tokens]");
        assert_eq!(t.pods_dir, root.path().join("var/lib/kubelet/pods"));
        assert_eq!(t.cluster_ca.as_deref(), Some("kubernetes-ca"));
        assert!(
            !config.actions.iter().any(|a| a.bundle == "pod-tokens"),
            "the kubelet restart is off by default"
        );

        let config = load(
            root.path(),
            Some("[[action]]\nname = \"kubelet-restart-on-stale-tokens\"\nenabled = true\n"),
        );
        let action = config
            .actions
            .iter()
            .find(|a| a.bundle == "pod-tokens")
            .expect("enabled by name");
        assert_eq!(action.id(), "kubelet-restart-on-stale-tokens");
        assert_eq!(action.on, ActionTrigger::Stale);
        assert_eq!(
            action.command,
            ActionCommand::Exec(vec!["systemctl".into(), "restart".into(), "kubelet".into()])
        );
        assert_eq!(action.min_interval, std::time::Duration::from_secs(120));
        assert_eq!(
            action.lock.as_ref().map(|l| l.name.as_str()),
            Some("kubelet")
        );
    }
}
