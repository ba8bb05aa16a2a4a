//! The DaemonSet's identity on the real control plane, shared by the Events/RBAC and the Lease
//! tests: deploy/'s Namespace, ServiceAccount and RBAC applied with the admin kubeconfig, and a
//! kubeconfig holding a token minted for that ServiceAccount (what the pod's projected token is).
//! The token is written to a file the test owns and never printed.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::kube::{ControlPlane, ADVERTISE_ADDRESS};
use serde_json::Value;

/// The ServiceAccount the DaemonSet runs as.
pub const SERVICE_ACCOUNT: &str = "system:serviceaccount:certreload:certreload";

/// The repository's `deploy/` folder.
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// `kubectl apply` of deploy/namespace.yaml, serviceaccount.yaml and rbac.yaml (idempotent).
pub fn apply_identity(cp: &ControlPlane) {
    let d = deploy_dir();
    let files: Vec<String> = ["namespace.yaml", "serviceaccount.yaml", "rbac.yaml"]
        .iter()
        .map(|f| d.join(f).display().to_string())
        .collect();
    let mut args = vec!["apply"];
    for f in &files {
        args.extend(["-f", f.as_str()]);
    }
    cp.kubectl(&args)
        .unwrap_or_else(|e| panic!("kubectl apply of deploy/'s identity: {e:#}"));
}

/// The API server URL of the admin kubeconfig (kubeadm writes the advertise address, which the
/// serving certificate names).
pub fn server_url(cp: &ControlPlane) -> String {
    let text = std::fs::read_to_string(cp.admin_kubeconfig()).expect("admin.conf");
    text.lines()
        .find_map(|l| l.trim().strip_prefix("server:"))
        .map(|s| s.trim().to_string())
        .expect("admin.conf names a server")
}

/// Mints a token for the certreload ServiceAccount (`kubectl create token`) and writes a
/// kubeconfig with it into `dir`; returns its path.
pub fn token_kubeconfig(cp: &ControlPlane, dir: &Path) -> PathBuf {
    let token = cp
        .kubectl(&[
            "create",
            "token",
            "certreload",
            "-n",
            "certreload",
            "--duration=1h",
        ])
        .unwrap_or_else(|e| panic!("kubectl create token: {e:#}"));
    let token = token.trim();
    assert!(!token.is_empty(), "kubectl create token printed nothing");
    let path = dir.join("certreload-sa.kubeconfig");
    let config = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\ncontexts:\n- name: certreload\n  context:\n    cluster: e2e\n    user: certreload\n    namespace: certreload\ncurrent-context: certreload\nusers:\n- name: certreload\n  user:\n    token: {token}\n",
        server = server_url(cp),
        ca = cp.pki().join("ca.crt").display(),
    );
    std::fs::write(&path, config).expect("write the ServiceAccount kubeconfig");
    path
}

/// Writes `dir/token.kubeconfig`, which authenticates with the token in `token_file` through
/// `tokenFile` (kubectl reads the file itself, so the token is on no command line and in no
/// output); returns its path. For checking what the API server makes of a pod's projected token.
pub fn token_file_kubeconfig(
    cp: &ControlPlane,
    dir: &Path,
    token_file: &Path,
) -> anyhow::Result<PathBuf> {
    let path = dir.join("token.kubeconfig");
    let config = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: https://{ADVERTISE_ADDRESS}:6443
    certificate-authority: {ca}
users:
- name: token
  user:
    tokenFile: {token}
contexts:
- name: e2e
  context:
    cluster: e2e
    user: token
current-context: e2e
",
        ca = cp.pki().join("ca.crt").display(),
        token = token_file.display(),
    );
    std::fs::write(&path, config)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    Ok(path)
}

/// Creates namespace `name` unless it exists (the actions' Lease namespace, `certreload`, when a
/// test runs without deploy/'s identity, or after another test deleted it).
pub fn ensure_namespace(cp: &ControlPlane, name: &str) {
    let found = cp
        .kubectl(&["get", "namespace", name, "--ignore-not-found", "-o", "name"])
        .unwrap_or_else(|e| panic!("kubectl get namespace {name}: {e:#}"));
    if found.trim().is_empty() {
        cp.kubectl(&["create", "namespace", name])
            .unwrap_or_else(|e| panic!("kubectl create namespace {name}: {e:#}"));
    }
}

/// `kubectl get ARGS -o json`, polled until `found` picks something out of it or `within` passes.
pub fn poll_json<T>(
    cp: &ControlPlane,
    args: &[&str],
    what: &str,
    within: Duration,
    found: impl Fn(&Value) -> Option<T>,
) -> T {
    let deadline = Instant::now() + within;
    let mut last: String;
    loop {
        let mut full: Vec<&str> = args.to_vec();
        full.extend(["-o", "json"]);
        match cp.kubectl(&full) {
            Ok(out) => match serde_json::from_str::<Value>(&out) {
                Ok(v) => {
                    if let Some(t) = found(&v) {
                        return t;
                    }
                    last = out;
                }
                Err(e) => last = format!("not JSON ({e}): {out}"),
            },
            Err(e) => last = format!("{e:#}"),
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not seen within {within:?}; last answer of kubectl {}:\n{last}",
            args.join(" ")
        );
        // The API server is an external system: ask again shortly.
        std::thread::sleep(Duration::from_millis(250));
    }
}
