//! Pods on the real node ([`super::node::Node`]), the projected ServiceAccount tokens the kubelet
//! mounts for them, and the ServiceAccount key rotation as a careful operator does it (issue 12).
//!
//! - [`Workload`]: a namespace with its own ServiceAccount and `n` hostNetwork pods of the local
//!   pause image, all Running on the node; deleted again (pods, namespace, and the kubelet's pod
//!   directories gone) by [`Workload::delete`].
//! - [`Token`]: what a token file says, decoded from the JWT's header and claims only (the
//!   signature is kept for scanning logs, never printed: `Token`'s `Debug` leaves it out).
//! - [`SaKey`], [`publish_alongside`], [`switch_signing`], [`retire_others`]: a new key pair;
//!   `sa.pub` = old + new (tokens of the old key stay valid) and the API server restarted; then
//!   `sa.key` = the new key (and the API server restarted by the caller, or by an agent's
//!   action); at the end `sa.pub` = the new key only.
//! - [`Tasks`]: the containers' tasks as containerd reports them (id and pid), to show that a
//!   kubelet restart leaves every sandbox and container running.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use base64::Engine;
use rustls::pki_types::{pem::PemObject, CertificateDer, SubjectPublicKeyInfoDer};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{
    agent::replace,
    node::{Node, PAUSE_IMAGE},
    ControlPlane, APISERVER, CONTROLLER_MANAGER, NODE_NAME,
};

/// How long pods get to be Running (20 pods on a busy 2-core machine).
pub const RUNNING_DEADLINE: Duration = Duration::from_secs(300);

/// Kubernetes' key id of every public key in a PEM file: unpadded base64url of the SHA-256 of
/// the DER SubjectPublicKeyInfo (`keyIDFromPublicKey`, pkg/serviceaccount/jwt.go), computed here
/// independently of the agent.
pub fn key_ids(pem: &Path) -> Result<Vec<String>> {
    SubjectPublicKeyInfoDer::pem_file_iter(pem)
        .with_context(|| format!("{}", pem.display()))?
        .map(|k| {
            let spki = k.with_context(|| format!("{}", pem.display()))?;
            Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(Sha256::digest(spki.as_ref())))
        })
        .collect()
}

/// A projected token as the kubelet wrote it: header and claims only.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    /// The file read (`<kubelet root>/pods/<uid>/volumes/kubernetes.io~projected/<vol>/token`).
    pub path: PathBuf,
    /// The header's `kid`: which key signed it.
    pub kid: String,
    /// `iat`: when the API server issued it.
    pub iat: i64,
    /// `sub`: `system:serviceaccount:<namespace>:<account>`.
    pub subject: String,
    /// The pod it is bound to (`kubernetes.io.pod.uid`).
    pub pod_uid: String,
    /// The signature part: a secret-free-looking but unique piece of the token, for scanning
    /// logs for leaks. Never print it.
    signature: String,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("path", &self.path)
            .field("kid", &self.kid)
            .field("iat", &self.iat)
            .field("subject", &self.subject)
            .field("pod_uid", &self.pod_uid)
            .finish_non_exhaustive()
    }
}

impl Token {
    /// Reads and decodes a token file (errors name the file and the part, never the token).
    pub fn read(path: &Path) -> Result<Token> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut parts = text.trim().split('.');
        let mut decode = |what: &str| -> Result<Value> {
            let part = parts
                .next()
                .with_context(|| format!("{}: no JWT {what}", path.display()))?;
            let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(part.trim_end_matches('='))
                .with_context(|| format!("{}: the JWT {what} is not base64url", path.display()))?;
            serde_json::from_slice(&bytes)
                .with_context(|| format!("{}: the JWT {what} is not JSON", path.display()))
        };
        let header = decode("header")?;
        let claims = decode("claims")?;
        let signature = text.trim().rsplit('.').next().unwrap_or_default();
        if signature.len() < 32 {
            bail!("{}: the JWT has no signature", path.display());
        }
        Ok(Token {
            path: path.to_path_buf(),
            kid: header["kid"].as_str().unwrap_or_default().to_string(),
            iat: claims["iat"].as_i64().unwrap_or_default(),
            subject: claims["sub"].as_str().unwrap_or_default().to_string(),
            pod_uid: claims["kubernetes.io"]["pod"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            signature: signature.to_string(),
        })
    }

    /// True when `text` contains this token's signature (a log that leaked the token).
    pub fn leaked_in(&self, text: &str) -> bool {
        text.contains(&self.signature)
    }
}

/// The projected token files of pod `uid` under the kubelet's root.
pub fn token_files(kubelet_root: &Path, uid: &str) -> Vec<PathBuf> {
    let dir = kubelet_root.join(format!("pods/{uid}/volumes/kubernetes.io~projected"));
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("token"))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// A pod of a [`Workload`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pod {
    /// Its name in the workload's namespace.
    pub name: String,
    /// Its uid (the directory under `<kubelet root>/pods`).
    pub uid: String,
}

/// A namespace with its own ServiceAccount and `n` pods Running on the node.
#[derive(Debug)]
pub struct Workload {
    /// The namespace (created, and deleted by [`Workload::delete`]).
    pub namespace: String,
    /// The pods' ServiceAccount.
    pub account: String,
    /// The pods, sorted by name.
    pub pods: Vec<Pod>,
    kubelet_root: PathBuf,
}

fn manifest(namespace: &str, account: &str, n: usize) -> String {
    let mut m = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n---\n\
         apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {account}\n  namespace: {namespace}\n"
    );
    for i in 0..n {
        m.push_str(&format!(
            r#"---
apiVersion: v1
kind: Pod
metadata:
  name: holder-{i:02}
  namespace: {namespace}
spec:
  nodeName: {NODE_NAME}
  serviceAccountName: {account}
  hostNetwork: true
  terminationGracePeriodSeconds: 1
  tolerations:
  - operator: Exists
  containers:
  - name: pause
    image: {PAUSE_IMAGE}
    imagePullPolicy: Never
"#
        ));
    }
    m
}

impl Workload {
    /// Creates the namespace, its ServiceAccount and `n` pods, and waits until every pod is
    /// Running and its token file is in place.
    pub fn start(node: &Node, namespace: &str, n: usize) -> Result<Workload> {
        let account = format!("{namespace}-sa");
        let file = tempfile::Builder::new()
            .suffix(".yaml")
            .tempfile()
            .context("manifest file")?;
        std::fs::write(file.path(), manifest(namespace, &account, n)).context("manifest")?;
        node.kubectl(&["apply", "-f", &file.path().to_string_lossy()])
            .context("kubectl apply the workload")?;
        let began = Instant::now();
        let pods = loop {
            let out = node.kubectl(&[
                "-n",
                namespace,
                "get",
                "pods",
                "-o",
                r#"jsonpath={range .items[*]}{.metadata.name} {.metadata.uid} {.status.phase}{"\n"}{end}"#,
            ])?;
            let rows: Vec<Vec<&str>> = out.lines().map(|l| l.split(' ').collect()).collect();
            let running: Vec<Pod> = rows
                .iter()
                .filter(|r| r.len() == 3 && r[2] == "Running")
                .map(|r| Pod {
                    name: r[0].to_string(),
                    uid: r[1].to_string(),
                })
                .filter(|p| !token_files(&node.kubelet_root(), &p.uid).is_empty())
                .collect();
            if running.len() == n {
                break running;
            }
            if began.elapsed() > RUNNING_DEADLINE {
                bail!(
                    "{} of {n} pods Running with a token within {RUNNING_DEADLINE:?}:\n{out}\n{}",
                    running.len(),
                    node.logs(40)
                );
            }
            // The kubelet reports pod phases through the API: look again shortly.
            std::thread::sleep(Duration::from_millis(500));
        };
        let mut pods = pods;
        pods.sort();
        eprintln!(
            "{n} pods Running on {NODE_NAME} in namespace {namespace} after {:.1} s",
            began.elapsed().as_secs_f64()
        );
        Ok(Workload {
            namespace: namespace.to_string(),
            account,
            pods,
            kubelet_root: node.kubelet_root(),
        })
    }

    /// Each pod's token (the first projected token file; `None` while it is missing or
    /// unreadable).
    pub fn tokens(&self) -> Vec<Option<Token>> {
        self.pods
            .iter()
            .map(|p| {
                token_files(&self.kubelet_root, &p.uid)
                    .first()
                    .and_then(|f| Token::read(f).ok())
            })
            .collect()
    }

    /// Each pod's `ca.crt` beside its token, as SHA-256 fingerprints of its certificates (`None`
    /// while it is missing or unreadable).
    pub fn ca_bundles(&self) -> Vec<Option<BTreeSet<String>>> {
        self.pods
            .iter()
            .map(|p| {
                let token = token_files(&self.kubelet_root, &p.uid).into_iter().next()?;
                let pem = std::fs::read_to_string(token.with_file_name("ca.crt")).ok()?;
                Some(cert_fingerprints(&pem))
            })
            .collect()
    }

    /// The set of pod uids, as the agent reports stale pods.
    pub fn uids(&self) -> Vec<String> {
        self.pods.iter().map(|p| p.uid.clone()).collect()
    }

    /// Polls every pod's token file every 100 ms, from `since`, until each carries `kid` or `cap`
    /// passed: per pod (in order), how long after `since` its file first carried `kid`.
    pub fn await_kid(&self, kid: &str, since: Instant, cap: Duration) -> Vec<Option<Duration>> {
        let mut seen: Vec<Option<Duration>> = vec![None; self.pods.len()];
        loop {
            let now = since.elapsed();
            for (slot, token) in seen.iter_mut().zip(self.tokens()) {
                if slot.is_none() && token.is_some_and(|t| t.kid == kid) {
                    *slot = Some(now);
                }
            }
            if seen.iter().all(Option::is_some) || now >= cap {
                return seen;
            }
            // The kubelet rewrites token files on its own schedule: look again shortly.
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Deletes the pods and the namespace and waits until the kubelet removed the pods'
    /// directories (volumes unmounted), so the next run starts from a clean node.
    pub fn delete(&self, node: &Node) -> Result<()> {
        node.kubectl(&[
            "-n",
            &self.namespace,
            "delete",
            "pods",
            "--all",
            "--grace-period=1",
            "--wait=true",
            "--timeout=180s",
        ])
        .context("deleting the workload's pods")?;
        node.kubectl(&["delete", "namespace", &self.namespace, "--wait=false"])
            .context("deleting the workload's namespace")?;
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let left: Vec<&Pod> = self
                .pods
                .iter()
                .filter(|p| self.kubelet_root.join("pods").join(&p.uid).exists())
                .collect();
            if left.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the kubelet left {} pod directories after 180 s: {left:?}",
                    left.len()
                );
            }
            // The kubelet's housekeeping removes orphaned pod directories every few seconds.
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// SHA-256 (hex) of every certificate in a PEM text.
pub fn cert_fingerprints(pem: &str) -> BTreeSet<String> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .filter_map(Result::ok)
        .map(|c| crate::sha256_hex(c.as_ref()))
        .collect()
}

/// The containers' tasks on the node (sandboxes and containers): id → pid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tasks(pub BTreeMap<String, String>);

impl Tasks {
    /// `ctr -n k8s.io tasks ls` on the node's containerd.
    pub fn list(node: &Node) -> Result<Tasks> {
        let out = node.ctr(&["tasks", "ls"], &[])?;
        Ok(Tasks(
            out.lines()
                .skip(1)
                .filter_map(|l| {
                    let mut w = l.split_whitespace();
                    let id = w.next()?;
                    let pid = w.next()?;
                    (w.next() == Some("RUNNING")).then(|| (id.to_string(), pid.to_string()))
                })
                .collect(),
        ))
    }
}

/// A new ServiceAccount key pair made with openssl (RSA 2048, as kubeadm makes `sa.key`).
pub struct SaKey {
    /// The private key (PEM), for `sa.key`.
    pub key_pem: Vec<u8>,
    /// The public key (PEM), for `sa.pub`.
    pub pub_pem: String,
    /// Its Kubernetes key id.
    pub kid: String,
}

impl SaKey {
    /// Generates a key pair in `dir` (files mode 0600 by openssl's umask-independent writes).
    pub fn generate(dir: &Path) -> Result<SaKey> {
        let key = dir.join("sa-new.key");
        let public = dir.join("sa-new.pub");
        crate::openssl::new_rsa_key_pair(&key, &public).context("openssl: the new key pair")?;
        let kid = key_ids(&public)?
            .pop()
            .context("the new public key has no key id")?;
        let sa = SaKey {
            key_pem: std::fs::read(&key).context("the new key")?,
            pub_pem: std::fs::read_to_string(&public).context("the new public key")?,
            kid,
        };
        // The private key is not needed on disk any more.
        std::fs::remove_file(&key).ok();
        Ok(sa)
    }
}

/// Step 1 of the careful rotation: `sa.pub` = its keys + the new one (replaced by rename), and
/// the API server restarted (it reads its keys once), so tokens of either key are accepted.
pub fn publish_alongside(cp: &ControlPlane, key: &SaKey) -> Result<()> {
    let path = cp.pki().join("sa.pub");
    let old = std::fs::read_to_string(&path).context("sa.pub")?;
    replace(&path, format!("{old}{}", key.pub_pem).as_bytes());
    cp.restart(APISERVER)
        .context("restarting the API server with both public keys")
}

/// Step 2: `sa.key` = the new key (replaced by rename). Returns the instant of the change on disk
/// (where the propagation figures start). The API server signs with it after its next restart.
pub fn switch_signing(cp: &ControlPlane, key: &SaKey) -> Instant {
    replace(&cp.pki().join("sa.key"), &key.key_pem);
    Instant::now()
}

/// The last step, once every token carries the new key id: `sa.pub` = the new key only, and the
/// API server restarted.
pub fn retire_others(cp: &ControlPlane, key: &SaKey) -> Result<()> {
    replace(&cp.pki().join("sa.pub"), key.pub_pem.as_bytes());
    cp.restart(APISERVER)
        .context("restarting the API server with the new public key only")
}

/// The controller-manager's CSR signer certificate during a root-CA rotation: a file of its own,
/// since `ca.crt` then holds a bundle the signer refuses ("expected 1 certificate").
pub const SIGNER_CRT: &str = "/etc/kubernetes/pki/ca-signer.crt";

/// Step 0 of a root-CA rotation, as the upstream manual CA rotation does before a bundle goes
/// into `ca.crt`: the controller-manager's CSR signer gets [`SIGNER_CRT`] holding the old CA
/// alone, and the controller-manager is restarted onto it (and leads again).
pub fn give_the_signer_its_own_certificate(cp: &ControlPlane) {
    replace(
        &cp.path(SIGNER_CRT),
        &std::fs::read(cp.pki().join("ca.crt")).expect("ca.crt"),
    );
    cp.set_flag(CONTROLLER_MANAGER, "cluster-signing-cert-file", SIGNER_CRT)
        .expect("edit the manifest");
    let before = cp.leader(CONTROLLER_MANAGER).ok().flatten();
    cp.restart(CONTROLLER_MANAGER)
        .expect("the controller-manager restarts");
    cp.wait_leading(
        CONTROLLER_MANAGER,
        before.as_ref().map(|l| l.holder.as_str()),
    )
    .expect("the controller-manager leads on its own signer file");
}

/// The key id of a token the API server mints now for `account` in `namespace` (the token is
/// decoded in memory, never written or printed).
pub fn minted_kid(cp: &ControlPlane, namespace: &str, account: &str) -> Result<String> {
    let token = cp.kubectl(&[
        "-n",
        namespace,
        "create",
        "token",
        account,
        "--duration=10m",
    ])?;
    let header = token
        .trim()
        .split('.')
        .next()
        .context("the minted token has no header")?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .context("the minted token's header is not base64url")?;
    let header: Value =
        serde_json::from_slice(&json).context("the minted token's header is not JSON")?;
    header["kid"]
        .as_str()
        .map(str::to_string)
        .context("the minted token's header has no kid")
}

/// Who the API server says the bearer of the token in `token_file` is (`kubectl auth whoami`
/// through a kubeconfig whose `tokenFile` is that file: kubectl reads it, so the token is on no
/// command line and in no output).
pub fn whoami(cp: &ControlPlane, token_file: &Path) -> Result<String> {
    let dir = tempfile::tempdir().context("tempdir")?;
    let kubeconfig = super::identity::token_file_kubeconfig(cp, dir.path(), token_file)
        .context("writing the token kubeconfig")?;
    let peers = PathBuf::from(std::env::var_os(super::PEERS_ENV).context(super::PEERS_ENV)?);
    super::host::run(
        Command::new(peers.join("kubectl"))
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args([
                "--request-timeout=30s",
                "auth",
                "whoami",
                "-o",
                "jsonpath={.status.userInfo.username}",
            ]),
    )
    .map(|s| s.trim().to_string())
}

/// p50 and max of durations in seconds (`None` entries, not reached within a cap, count as
/// larger than any reached one and make the max `None`).
pub fn p50_max(samples: &[Option<Duration>]) -> (Option<f64>, Option<f64>) {
    let mut v: Vec<Option<f64>> = samples.iter().map(|d| d.map(|d| d.as_secs_f64())).collect();
    v.sort_by(|a, b| match (a, b) {
        (Some(a), Some(b)) => a.total_cmp(b),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    });
    if v.is_empty() {
        return (None, None);
    }
    (v[(v.len() - 1) / 2], *v.last().unwrap_or(&None))
}
