//! A REAL node (`certreload_e2e::kube::node`): the kubelet built from the same Kubernetes release
//! as the control plane, with Debian's containerd and runc, registered to the test control plane
//! with kubeadm's `kubelet.conf`. A Pod created through the API (hostNetwork, since no CNI plugin
//! is configured; the locally built pause image, `imagePullPolicy: Never`; its own
//! ServiceAccount) runs on that node, and the kubelet mounts its projected ServiceAccount token
//! where a node agent reads it: `<kubelet root>/pods/<uid>/volumes/kubernetes.io~projected/*/token`.
//! The token's JWT header `kid` is the API server's current key id (Kubernetes' key id: unpadded
//! base64url of the SHA-256 of the DER public key in `pki/sa.pub`). Only the header and claims are
//! decoded; the token itself is never printed. The `ca.crt` beside it carries the cluster CA.
//!
//! One control plane per test binary: run real-cluster binaries under
//! `flock /tmp/certreload-cp.lock` (the API server's port is fixed).

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use base64::Engine;
use certreload_e2e::kube::{
    node::{self, PAUSE_IMAGE},
    NODE_NAME,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

const NAMESPACE: &str = "default";
const ACCOUNT: &str = "node-e2e";
const POD: &str = "token-holder";

/// Kubernetes' key id for a PEM public key (SubjectPublicKeyInfo).
fn key_id(pem: &str) -> String {
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .expect("sa.pub is base64 PEM");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(der))
}

/// The JWT's header and claims (the signature is not looked at, the token never printed).
fn jwt_parts(token: &str) -> (Value, Value) {
    let mut parts = token.trim().split('.');
    let mut decode = |what: &str| -> Value {
        let part = parts
            .next()
            .unwrap_or_else(|| panic!("token has no {what}"));
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part.trim_end_matches('='))
            .unwrap_or_else(|e| panic!("token {what} is not base64url: {e}"));
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("token {what} is not JSON: {e}"))
    };
    let header = decode("header");
    let claims = decode("claims");
    (header, claims)
}

/// The projected token files of pod `uid` under the kubelet's root.
fn token_files(kubelet_root: &Path, uid: &str) -> Vec<PathBuf> {
    let dir = kubelet_root.join(format!("pods/{uid}/volumes/kubernetes.io~projected"));
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("token"))
        .filter(|p| p.is_file())
        .collect()
}

fn pod_manifest() -> String {
    format!(
        r#"apiVersion: v1
kind: ServiceAccount
metadata:
  name: {ACCOUNT}
  namespace: {NAMESPACE}
---
apiVersion: v1
kind: Pod
metadata:
  name: {POD}
  namespace: {NAMESPACE}
spec:
  nodeName: {NODE_NAME}
  serviceAccountName: {ACCOUNT}
  hostNetwork: true
  tolerations:
  - operator: Exists
  containers:
  - name: pause
    image: {PAUSE_IMAGE}
    imagePullPolicy: Never
"#
    )
}

#[test]
fn a_pod_on_the_real_kubelet_holds_a_token_with_the_current_key_id() {
    let Some((cp, node)) = node::shared_with_node() else {
        return;
    };

    let manifest = cp.root().join("token-holder.yaml");
    std::fs::write(&manifest, pod_manifest()).expect("write the pod manifest");
    let applied = node.kubectl(&["apply", "-f", &manifest.to_string_lossy()]);
    applied.unwrap_or_else(|e| panic!("kubectl apply: {e:#}"));

    // Running, as the kubelet reports it through the API.
    let deadline = Instant::now() + Duration::from_secs(180);
    let uid = loop {
        let out = node
            .kubectl(&[
                "-n",
                NAMESPACE,
                "get",
                "pod",
                POD,
                "-o",
                "jsonpath={.status.phase} {.metadata.uid}",
            ])
            .unwrap_or_default();
        let mut words = out.split_whitespace();
        if let (Some("Running"), Some(uid)) = (words.next(), words.next()) {
            break uid.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "pod {POD} not Running within 180 s (last: {out:?}):\n{}\n{}",
            node.kubectl(&["-n", NAMESPACE, "describe", "pod", POD])
                .unwrap_or_else(|e| format!("{e:#}")),
            node.logs(60)
        );
        std::thread::sleep(Duration::from_millis(500));
    };

    let files = token_files(&node.kubelet_root(), &uid);
    assert_eq!(
        files.len(),
        1,
        "one projected token under {}/pods/{uid}: {files:?}",
        node.kubelet_root().display()
    );
    let token = std::fs::read_to_string(&files[0]).expect("read the token file");
    let (header, claims) = jwt_parts(&token);
    let sa_pub = std::fs::read_to_string(cp.pki().join("sa.pub")).expect("sa.pub");
    let expected = key_id(&sa_pub);
    assert_eq!(
        header["kid"].as_str(),
        Some(expected.as_str()),
        "token header {header}"
    );
    assert_eq!(
        claims["sub"].as_str(),
        Some(format!("system:serviceaccount:{NAMESPACE}:{ACCOUNT}").as_str()),
        "token subject"
    );
    assert_eq!(
        claims["kubernetes.io"]["pod"]["uid"].as_str(),
        Some(uid.as_str()),
        "token bound to the pod"
    );
    assert_eq!(
        claims["kubernetes.io"]["node"]["name"].as_str(),
        Some(NODE_NAME),
        "token bound to the node"
    );
    // The CA bundle beside the token (from the namespace's kube-root-ca.crt) is the cluster CA.
    let ca = std::fs::read_to_string(files[0].with_file_name("ca.crt"))
        .expect("ca.crt beside the token");
    let cluster_ca = std::fs::read_to_string(cp.pki().join("ca.crt")).expect("pki/ca.crt");
    assert!(
        ca.contains(cluster_ca.trim()),
        "the pod's ca.crt does not carry pki/ca.crt"
    );
    eprintln!(
        "pod {POD} ({uid}) runs on the real kubelet; its token ({}) has kid {expected}, \
         exp-iat {} s, warnafter-iat {} s",
        files[0].display(),
        claims["exp"].as_i64().unwrap_or(0) - claims["iat"].as_i64().unwrap_or(0),
        claims["kubernetes.io"]["warnafter"].as_i64().unwrap_or(0)
            - claims["iat"].as_i64().unwrap_or(0)
    );
    node.kubectl(&["-n", NAMESPACE, "delete", "pod", POD, "--wait=false"])
        .ok();
    drop(node);
}
