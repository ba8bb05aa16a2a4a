//! The kubeadm profile's `[sa_keys]`: every node follows the ServiceAccount key identity (the
//! token tracker judges the pods' tokens against it); a control-plane node, where kubeadm's
//! `sa.key` and `sa.pub` are (the `sa` bundle), also publishes it. The ConfigMap is the default
//! one, the object deploy/rbac.yaml grants.

use super::writer::Writer;

/// The kubeadm profile's ServiceAccount key bundle.
const SA_BUNDLE: &str = "sa";

/// Writes `[sa_keys]`: `publish = "sa"` where the `sa` bundle was written, follow everywhere.
pub(super) fn sa_keys(w: &mut Writer<'_>) {
    w.out.push_str("\n[sa_keys]\nfollow = true\n");
    if w.has(SA_BUNDLE) {
        w.out.push_str(&format!("publish = {SA_BUNDLE:?}\n"));
    } else {
        w.skipped.push(format!(
            "sa_keys: no {SA_BUNDLE} bundle on this node (not a control-plane node): the key identity is followed, not published"
        ));
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::profile::{load, Profile};

    #[test]
    fn a_control_plane_node_publishes_and_every_node_follows() {
        let worker = tempfile::tempdir().expect("tempdir");
        let (config, skipped) = load(Profile::Kubeadm, worker.path(), None).expect("profile");
        let s = config.sa_keys.expect("[sa_keys] on every node");
        assert!(s.follow);
        assert_eq!(s.publish, None);
        assert_eq!(s.configmap(), crate::config::sa_keys::DEFAULT_CONFIGMAP);
        assert!(
            skipped
                .iter()
                .any(|l| l.starts_with("sa_keys: no sa bundle")),
            "{skipped:?}"
        );

        let control_plane = tempfile::tempdir().expect("tempdir");
        let pki = control_plane.path().join("etc/kubernetes/pki");
        std::fs::create_dir_all(&pki).expect("mkdir");
        let sa = rcgen::KeyPair::generate().expect("key");
        std::fs::write(pki.join("sa.key"), sa.serialize_pem()).expect("write");
        std::fs::write(pki.join("sa.pub"), sa.public_key_pem()).expect("write");
        let (config, _) = load(Profile::Kubeadm, control_plane.path(), None).expect("profile");
        let s = config.sa_keys.expect("[sa_keys]");
        assert_eq!(s.publish.as_deref(), Some("sa"));
        assert!(s.follow);

        // An overlay turns following off, or names another object, like any other table.
        let overlay = control_plane.path().join("certreload.toml");
        std::fs::write(&overlay, "[sa_keys]\nfollow = false\n").expect("write");
        let (config, _) = load(
            Profile::Kubeadm,
            control_plane.path(),
            Some(Path::new(&overlay)),
        )
        .expect("overlay");
        let s = config.sa_keys.expect("[sa_keys]");
        assert_eq!((s.publish.as_deref(), s.follow), (Some("sa"), false));
    }
}
