//! The Helm chart (deploy/helm/certreload) against the REAL API server of the kubeadm control
//! plane, with the real Helm built from peers/helm (`CERTRELOAD_PEERS/helm`):
//! `helm install --dry-run=server` (the server's OpenAPI schema and its existing objects decide),
//! then a real install whose every object the API server admits, read back with kubectl, a
//! second release refused for the objects the first owns, and an uninstall.
//!
//! One control plane per test binary: real-cluster test binaries must not run at the same time
//! (the API server's port is fixed), so run them under `flock /tmp/certreload-cp.lock`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use certreload_e2e::kube::{self, ControlPlane, PEERS_ENV};

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/helm/certreload")
}

/// Helm from the peers directory, with its caches and configuration in `home` (nothing read from
/// or written to the user's own Helm setup).
struct Helm {
    bin: PathBuf,
    kubeconfig: PathBuf,
    home: tempfile::TempDir,
}

impl Helm {
    fn new(cp: &ControlPlane) -> Helm {
        let peers = std::env::var_os(PEERS_ENV).expect("kube::shared() checked it");
        let bin = Path::new(&peers).join("helm");
        assert!(
            bin.is_file(),
            "{} is missing: `cargo xtask setup` builds Helm from peers/helm",
            bin.display()
        );
        Helm {
            bin,
            kubeconfig: cp.admin_kubeconfig(),
            home: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// `helm ARGS`: stdout and stderr together, and whether it succeeded.
    fn run(&self, args: &[&str]) -> (bool, String) {
        let h = self.home.path();
        let out = Command::new(&self.bin)
            .args(args)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .env("HELM_CACHE_HOME", h.join("cache"))
            .env("HELM_CONFIG_HOME", h.join("config"))
            .env("HELM_DATA_HOME", h.join("data"))
            .output()
            .expect("helm runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, text) = self.run(args);
        assert!(ok, "helm {}:\n{text}", args.join(" "));
        text
    }

    /// `helm install RELEASE CHART -n certreload --create-namespace EXTRA`.
    fn install(&self, release: &str, extra: &[&str]) -> (bool, String) {
        let chart = chart().display().to_string();
        let mut args = vec![
            "install",
            release,
            chart.as_str(),
            "--namespace",
            "certreload",
            "--create-namespace",
        ];
        args.extend_from_slice(extra);
        self.run(&args)
    }
}

/// Values turning on what the chart can render besides the defaults and that a cluster without
/// the Prometheus Operator accepts (the PrometheusRule is a CRD: promtool checks its rules).
const TOGGLES: &[&str] = &[
    "--set",
    "dashboard.enabled=true",
    "--set",
    "admin.tlsSecret=certreload-admin-tls",
    "--set",
    "actions[0].name=etcd-restart-on-stale-ca",
    "--set",
    "actions[0].lock=etcd",
];

#[test]
fn chart_installs_on_a_real_api_server_dry_run_then_for_real() {
    let Some(cp) = kube::shared() else { return };
    let helm = Helm::new(&cp);
    assert!(helm.ok(&["version", "--short"]).starts_with("v3.22.0"));

    for extra in [&[][..], TOGGLES] {
        let mut args = vec!["--dry-run=server"];
        args.extend_from_slice(extra);
        let (ok, out) = helm.install("certreload", &args);
        assert!(ok, "helm install --dry-run=server {extra:?}:\n{out}");
        assert!(out.contains("STATUS: pending-install"), "{out}");
        assert!(out.contains("kind: DaemonSet"), "{out}");
    }
    assert!(
        cp.kubectl(&["get", "namespace", "certreload-witness"])
            .is_err(),
        "a dry run creates nothing"
    );

    let (ok, out) = helm.install("certreload", TOGGLES);
    assert!(ok, "helm install:\n{out}");
    let kubectl = |args: &[&str]| {
        cp.kubectl(args)
            .unwrap_or_else(|e| panic!("kubectl {}: {e:#}", args.join(" ")))
    };
    let names = kubectl(&[
        "get",
        "daemonset,serviceaccount,configmap,service,role,rolebinding",
        "-n",
        "certreload",
        "-l",
        "app.kubernetes.io/name=certreload",
        "-o",
        "name",
    ]);
    for object in [
        "daemonset.apps/certreload",
        "serviceaccount/certreload",
        "configmap/certreload",
        "configmap/certreload-dashboard",
        "configmap/certreload-prometheus-scrape",
        "service/certreload-metrics",
        "role.rbac.authorization.k8s.io/certreload-action-locks",
    ] {
        assert!(names.lines().any(|l| l == object), "{object} in:\n{names}");
    }
    let policy = kubectl(&[
        "get",
        "validatingadmissionpolicy",
        "certreload-audit-witness",
        "-o",
        "jsonpath={.metadata.annotations.meta\\.helm\\.sh/release-name}",
    ]);
    assert_eq!(
        policy, "certreload",
        "the witness policy belongs to the release"
    );
    let config = kubectl(&[
        "get",
        "configmap",
        "certreload",
        "-n",
        "certreload",
        "-o",
        "jsonpath={.data.certreload\\.toml}",
    ]);
    assert!(
        config.contains("name = \"etcd-restart-on-stale-ca\"\nenabled = true\nlock = \"etcd\"")
            && config.contains("tls_cert = \"/etc/certreload-tls/tls.crt\""),
        "the values reach the configuration:\n{config}"
    );

    // The installed configuration is one the agent takes on this kubeadm node: overlaid on the
    // kubeadm profile, the action enabled by name exists there, and every bundle validates.
    let toml = helm.home.path().join("certreload.toml");
    std::fs::write(&toml, &config).expect("write the configuration");
    let check = Command::new(certreload_e2e::certreload_bin())
        .args(["check", "--profile", "kubeadm", "--host-root"])
        .arg(cp.root())
        .arg("--config")
        .arg(&toml)
        .output()
        .expect("certreload check runs");
    assert!(
        check.status.success(),
        "certreload check of the chart's configuration:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    // Helm's dry run and install leave unknown fields to the server's default (a warning), so the
    // rendering also goes through a strict server-side dry run: accepted as installed, and a
    // field the DaemonSet does not have is refused by name.
    let strict = |extra: &[&str]| {
        let mut args = vec!["template", "certreload"];
        let chart = chart().display().to_string();
        args.extend([chart.as_str(), "--namespace", "certreload"]);
        args.extend_from_slice(TOGGLES);
        args.extend_from_slice(extra);
        let file = helm.home.path().join("rendered.yaml");
        std::fs::write(&file, helm.ok(&args)).expect("write the rendering");
        cp.kubectl(&[
            "apply",
            "--dry-run=server",
            "--validate=strict",
            "-f",
            &file.display().to_string(),
        ])
    };
    strict(&[]).unwrap_or_else(|e| panic!("strict server-side dry run of the rendering: {e:#}"));
    let refused =
        strict(&["--set", "resources.notAField=1"]).expect_err("an unknown field is refused");
    assert!(format!("{refused:#}").contains("notAField"), "{refused:#}");

    // The server-side dry run consults the cluster: another release may not take these objects.
    let (ok, out) = helm.install("certreload-again", &["--dry-run=server"]);
    assert!(
        !ok && out.contains("exists and cannot be imported into the current release"),
        "{out}"
    );

    helm.ok(&["uninstall", "certreload", "--namespace", "certreload"]);
    assert!(
        cp.kubectl(&["get", "daemonset", "certreload", "-n", "certreload"])
            .is_err(),
        "uninstall removes the DaemonSet"
    );
}
