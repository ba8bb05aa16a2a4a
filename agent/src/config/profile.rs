//! Built-in profiles: a whole configuration for a standard node layout, which a config file may
//! extend or override (tables key by key; bundles, probes, listeners and actions by name).
//!
//! `kubeadm` follows the components' real behaviour (docs/kubernetes.md, with the sources read):
//! every kubeadm PKI file and control-plane kubeconfig as a bundle, a probe for every
//! control-plane endpoint with the check that can tell (HTTP for the servers that only refuse an
//! untrusted client certificate per request, the TLS handshake for etcd, the JWKS for the
//! ServiceAccount keys), and reload actions (off by default) only where a component cannot reload.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use toml::{Spanned, Table, Value};

use super::{Config, ConfigError, Source};

/// A built-in profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    /// The kubeadm layout under /etc/kubernetes/pki and /var/lib/kubelet/pki.
    Kubeadm,
}

/// The generated profile: TOML text, and one line per choice made from the node's files.
#[derive(Debug, Clone)]
pub struct Generated {
    /// Configuration text.
    pub toml: String,
    /// Human lines: what was left out or chosen from the node's files, and why.
    pub skipped: Vec<String>,
}

/// What the profile cannot read from the node's files: the overlay's `[profile]` table (removed
/// from the overlay before it is merged, so `Config` never sees it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KubeadmSettings {
    /// The kubelet's `major.minor`, when the operator states it. No file under a host root tells
    /// the kubelet's version (`kubelet --version` would mean running a host binary), and a
    /// kubelet ≥ 1.31 reloads its serving certificate by itself, so only a stated ≤ 1.30 gets the
    /// kubelet restart action.
    pub kubelet_version: Option<(u32, u32)>,
}

/// The last kubelet minor release that cannot reload its serving certificate from disk
/// (`ReloadKubeletServerCertificateFile` is beta and on by default from 1.31).
const LAST_KUBELET_WITHOUT_SERVING_RELOAD: (u32, u32) = (1, 30);

/// Whether this host looks like a kubeadm node (the built-in default picks the profile then).
pub fn is_kubeadm_node(root: &Path) -> bool {
    root.join("etc/kubernetes/pki").is_dir()
}

/// Where the profile puts the audit log.
pub const KUBEADM_AUDIT: &str = "/var/lib/certreload/audit.jsonl";

struct Writer<'a> {
    root: &'a Path,
    out: String,
    skipped: Vec<String>,
    bundles: Vec<&'static str>,
}

/// What a probe checks after the handshake (the `check` and `request` keys of `[[probe]]`).
#[derive(Debug, Clone, Copy)]
enum Check<'a> {
    /// The served leaf, and a client certificate refused in the handshake (etcd).
    Tls,
    /// One HTTP request over the mTLS connection: 401 means the client CA is not trusted.
    Http(&'a str),
    /// The API server's JWKS against the sa-keys bundle's key ids.
    Jwks,
}

/// One `[[probe]]` of the profile.
struct Probe<'a> {
    name: &'a str,
    endpoint: &'a str,
    server_name: &'a str,
    bundle: &'a str,
    client: Option<&'a str>,
    check: Check<'a>,
    /// How long the component has to reflect a new generation (measured per component).
    deadline: Duration,
    /// A token file sent as `Authorization: Bearer` with the probe's request.
    bearer: Option<&'a Path>,
}

impl Writer<'_> {
    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Adds a bundle if every one of `fields` exists; otherwise records one skip line.
    fn bundle(&mut self, name: &'static str, kind: &str, fields: &[(&str, &str)]) {
        self.bundle_with(name, kind, fields, &[], &[]);
    }

    /// [`Writer::bundle`] with `optional` fields written only when their file exists, and extra
    /// `settings` lines (`signing = true`).
    fn bundle_with(
        &mut self,
        name: &'static str,
        kind: &str,
        fields: &[(&str, &str)],
        optional: &[(&str, &str)],
        settings: &[&str],
    ) {
        for (_, rel) in fields {
            let path = self.path(rel);
            if !path.exists() {
                self.skipped.push(format!(
                    "bundle {name}: {} not on this node, skipped",
                    path.display()
                ));
                return;
            }
        }
        let _ = writeln!(
            self.out,
            "\n[[bundle]]\nname = \"{name}\"\nkind = \"{kind}\""
        );
        let present: Vec<_> = optional
            .iter()
            .filter(|(_, rel)| self.path(rel).exists())
            .collect();
        for (field, rel) in fields.iter().chain(present) {
            if *field == "public_keys" {
                let _ = writeln!(self.out, "public_keys = [{:?}]", self.path(rel));
            } else {
                let _ = writeln!(self.out, "{field} = {:?}", self.path(rel));
            }
        }
        for line in settings {
            let _ = writeln!(self.out, "{line}");
        }
        self.bundles.push(name);
    }

    fn has(&self, bundle: &str) -> bool {
        self.bundles.contains(&bundle)
    }

    /// Adds a probe when its bundles are present.
    fn probe(&mut self, p: Probe<'_>) {
        let missing = [Some(p.bundle), p.client]
            .into_iter()
            .flatten()
            .find(|b| !self.has(b));
        if let Some(b) = missing {
            self.skipped.push(format!(
                "probe {}: bundle {b} is not on this node, skipped",
                p.name
            ));
            return;
        }
        let _ = writeln!(
            self.out,
            "\n[[probe]]\nname = \"{}\"\nendpoint = \"{}\"\nserver_name = \"{}\"\nbundle = \"{}\"",
            p.name, p.endpoint, p.server_name, p.bundle
        );
        if let Some(c) = p.client {
            let _ = writeln!(self.out, "client_bundle = \"{c}\"");
        }
        if let Some(token) = p.bearer {
            let _ = writeln!(self.out, "bearer_token_file = {token:?}");
        }
        match p.check {
            Check::Tls => {
                let _ = writeln!(self.out, "check = \"tls\"");
            }
            Check::Http(request) => {
                let _ = writeln!(self.out, "check = \"http\"\nrequest = \"{request}\"");
            }
            Check::Jwks => {
                let _ = writeln!(self.out, "check = \"jwks\"");
            }
        }
        let _ = writeln!(
            self.out,
            "deadline = \"{}s\"\ninterval = \"30s\"",
            p.deadline.as_secs()
        );
    }

    /// Adds a disabled action (enable it by name from a config file). A control-plane component
    /// restart names the component as its `lock`: every control-plane node's agent sees a
    /// cluster-wide rotation at once, and restarting etcd or kube-apiserver everywhere together
    /// loses quorum or the API, so enabled restarts take turns through a Lease.
    fn action(&mut self, name: &str, bundle: &str, on: &str, why: &str, argv: &[&str]) {
        if !self.has(bundle) {
            return;
        }
        let _ = writeln!(
            self.out,
            "\n# {why}\n[[action]]\nname = \"{name}\"\nenabled = false\nbundle = \"{bundle}\"\non = \"{on}\"\nexec = {argv:?}\ntimeout = \"120s\"\nmin_interval = \"10m\""
        );
        if let Some(lock) = CONTROL_PLANE_LOCKS
            .iter()
            .find(|l| name.starts_with(&format!("{l}-")))
        {
            let _ = writeln!(self.out, "lock = \"{lock}\"");
        }
    }
}

/// Components whose restarts take turns across control-plane nodes (an action named
/// `<component>-...` gets `lock = "<component>"`; the Lease names are in deploy/rbac.yaml). The
/// kubelet is not among them: its restart is node-local, and serialising it over every node of a
/// large cluster would take hours.
const CONTROL_PLANE_LOCKS: [&str; 4] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
];

/// The node's first non-loopback IP in the etcd peer certificate (etcd's peer port listens on
/// the node address, not on loopback).
fn etcd_peer_ip(peer_cert: &Path) -> Option<IpAddr> {
    // Non-blocking, regular files only: a FIFO at the path must not hang the profile's loading.
    let bytes = crate::material::read::read_material(
        peer_cert,
        crate::material::read::DEFAULT_MAX_FILE_SIZE,
    )
    .ok()?;
    let certs = crate::material::pem::certificates(&bytes).ok()?;
    let info = crate::material::inspect::inspect(certs.first()?).ok()?;
    info.sans
        .iter()
        .filter_map(|s| s.parse::<IpAddr>().ok())
        .find(|ip| !ip.is_loopback())
}

/// Stops a static pod's container (the kubelet starts it again, re-reading its files).
fn crictl_stop(container: &str) -> Vec<String> {
    vec![
        "/bin/sh".into(),
        "-c".into(),
        format!("crictl ps -q --name '^{container}$' | xargs -r crictl stop --timeout 30"),
    ]
}

/// A path as one shell word.
fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

/// [`crictl_stop`] for kube-controller-manager, refused (exit 1, the reason on stderr, both in the
/// `action_run` record) while its `--cluster-signing-cert-file` holds other than one certificate:
/// a controller-manager started then fails to start its controllers ("expected 1 certificate"),
/// so the restart would turn a warning into a crash loop.
fn kcm_stop_guarded(signing_cert: &Path) -> Vec<String> {
    let file = shell_quote(signing_cert);
    let mut argv = crictl_stop("kube-controller-manager");
    argv[2] = format!(
        "n=$(grep -c -- '-----BEGIN CERTIFICATE-----' {file}); if [ \"$n\" != 1 ]; then echo \"not restarting kube-controller-manager: {file} holds $n certificates and its CSR signer would not start\" >&2; exit 1; fi; {}",
        argv[2]
    );
    argv
}

/// Where the kubelet mounts a pod's own ServiceAccount token: in the DaemonSet, the agent's. It is
/// looked for in the agent's own filesystem, never under the host root (it is the pod's, not the
/// node's).
pub const SERVICE_ACCOUNT_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// kubeadm's admin kubeconfig (client certificate of the `kubeadm:cluster-admins` group).
const ADMIN_CONF: &str = "etc/kubernetes/admin.conf";

/// The bundle the profile makes of `admin.conf` when the JWKS probe reads with it.
const ADMIN_KUBECONFIG: &str = "admin-kubeconfig";

/// The identity the `kube-apiserver-sa-keys` probe reads `/openid/v1/jwks` with. The API server
/// serves it only to an identity RBAC allows (on v1.37 `apiserver-kubelet-client`, which has no
/// group, gets 403).
#[derive(Debug, Clone, PartialEq, Eq)]
enum JwksCredential {
    /// The agent's own ServiceAccount token (in its pod): every ServiceAccount may read the JWKS
    /// (bootstrap ClusterRoleBinding `system:service-account-issuer-discovery`, group
    /// `system:serviceaccounts`), and it may read nothing else by that binding: least privilege.
    OwnToken(PathBuf),
    /// Not in a pod: `admin.conf`'s client certificate (a `kind = "kubeconfig"` bundle), whose
    /// `kubeadm:cluster-admins` group kubeadm binds to cluster-admin.
    AdminConf,
    /// Neither: no identity may read the key set, so the probe is left out.
    None,
}

/// Picks the JWKS probe's identity: the agent's own token at `own_token` when that file exists,
/// else the node's `admin.conf` under `root`, else none; and the line that says which and why.
fn jwks_credential(root: &Path, own_token: &Path) -> (JwksCredential, String) {
    let admin = root.join(ADMIN_CONF);
    if own_token.is_file() {
        return (
            JwksCredential::OwnToken(own_token.to_path_buf()),
            format!(
                "probe kube-apiserver-sa-keys: reads /openid/v1/jwks with the agent's own ServiceAccount token {} (system:service-account-issuer-discovery lets every ServiceAccount read it)",
                own_token.display()
            ),
        );
    }
    if admin.is_file() {
        return (
            JwksCredential::AdminConf,
            format!(
                "probe kube-apiserver-sa-keys: no ServiceAccount token at {} (not in a pod), so it reads /openid/v1/jwks as {} (bundle {ADMIN_KUBECONFIG})",
                own_token.display(),
                admin.display()
            ),
        );
    }
    (
        JwksCredential::None,
        format!(
            "probe kube-apiserver-sa-keys: no ServiceAccount token at {} and no {}: nothing may read /openid/v1/jwks, skipped",
            own_token.display(),
            admin.display()
        ),
    )
}

/// Where the kubelet's configuration file is under kubeadm.
const KUBELET_CONFIG: &str = "var/lib/kubelet/config.yaml";
/// The kubelet's certificate directory (`--cert-dir` default, which kubeadm keeps).
const KUBELET_PKI: &str = "var/lib/kubelet/pki";

/// The fields of the kubelet's `KubeletConfiguration` that decide what it serves on :10250.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct KubeletConfig {
    tls_cert_file: Option<String>,
    tls_private_key_file: Option<String>,
    #[serde(rename = "serverTLSBootstrap", default)]
    server_tls_bootstrap: bool,
    #[serde(default)]
    feature_gates: BTreeMap<String, bool>,
}

/// Which serving certificate the kubelet uses, decided as the kubelet decides it.
#[derive(Debug, PartialEq, Eq)]
enum KubeletServing {
    /// `serverTLSBootstrap: true`: the kubelet's certificate manager requests the certificate
    /// from the cluster signer, rotates it and serves it from memory (`kubelet-server-current.pem`,
    /// cert and key in one file). A restart never helps: the kubelet reloads it itself.
    Bootstrap,
    /// `tlsCertFile`/`tlsPrivateKeyFile` (host paths, relative to the host root).
    Files {
        /// The certificate.
        cert: String,
        /// The key.
        key: String,
    },
    /// Neither: `kubelet.crt`/`kubelet.key` in the certificate directory (self-signed, generated
    /// by the kubelet when missing).
    Default,
}

/// A kubelet config path as a path under the host root: absolute paths are host paths, relative
/// ones are relative to the config file's directory (as the kubelet resolves them).
fn kubelet_path(path: &str) -> String {
    match path.strip_prefix('/') {
        Some(abs) => abs.to_string(),
        None => format!("var/lib/kubelet/{path}"),
    }
}

/// Reads `/var/lib/kubelet/config.yaml` under `root`: what the kubelet serves, whether it can
/// reload it, and a line saying which was chosen and why.
fn kubelet_serving(root: &Path) -> (Option<KubeletServing>, Option<bool>, String) {
    use crate::material::read::{read_material, ReadError, DEFAULT_MAX_FILE_SIZE};
    let file = root.join(KUBELET_CONFIG);
    // Non-blocking, regular files only: a FIFO at the path must not hang the profile's loading.
    let config = match read_material(&file, DEFAULT_MAX_FILE_SIZE) {
        Ok(bytes) => match serde_saphyr::from_slice::<KubeletConfig>(&bytes) {
            Ok(c) => c,
            Err(e) => {
                let at = e
                    .location()
                    .map(|l| format!(" at line {}, column {}", l.line(), l.column()))
                    .unwrap_or_default();
                return (
                    None,
                    None,
                    format!(
                        "bundle kubelet-serving: {} is not a KubeletConfiguration (YAML error{at}), skipped: which certificate the kubelet serves is unknown",
                        file.display()
                    ),
                );
            }
        },
        Err(ReadError::NotFound { .. }) => {
            return (
                Some(KubeletServing::Default),
                None,
                format!(
                    "bundle kubelet-serving: no {}; the kubelet's default /{KUBELET_PKI}/kubelet.crt and kubelet.key",
                    file.display()
                ),
            );
        }
        Err(e) => {
            return (
                None,
                None,
                format!("bundle kubelet-serving: cannot read {e}; skipped"),
            )
        }
    };
    // The feature gate that lets a kubelet ≥ 1.31 reload tlsCertFile / kubelet.crt, when the
    // config sets it explicitly.
    let reload_gate = config
        .feature_gates
        .get("ReloadKubeletServerCertificateFile")
        .copied();
    // pkg/kubelet/kubelet.go NewMainKubelet: with serverTLSBootstrap (and the
    // RotateKubeletServerCertificate gate, on by default) the certificate manager's certificate
    // is served whatever tlsCertFile says.
    let rotation = config
        .feature_gates
        .get("RotateKubeletServerCertificate")
        .copied()
        .unwrap_or(true);
    if config.server_tls_bootstrap && rotation {
        return (
            Some(KubeletServing::Bootstrap),
            reload_gate,
            format!(
                "bundle kubelet-serving: {} has serverTLSBootstrap: true, so the kubelet serves /{KUBELET_PKI}/kubelet-server-current.pem (rotated and reloaded by the kubelet; no restart action)",
                file.display()
            ),
        );
    }
    match (config.tls_cert_file, config.tls_private_key_file) {
        (Some(cert), Some(key)) if !cert.is_empty() && !key.is_empty() => {
            let line = format!(
                "bundle kubelet-serving: {} sets tlsCertFile {cert} and tlsPrivateKeyFile {key}",
                file.display()
            );
            (
                Some(KubeletServing::Files {
                    cert: kubelet_path(&cert),
                    key: kubelet_path(&key),
                }),
                reload_gate,
                line,
            )
        }
        (None, None) => (
            Some(KubeletServing::Default),
            reload_gate,
            format!(
                "bundle kubelet-serving: {} sets neither tlsCertFile nor serverTLSBootstrap; the kubelet's default /{KUBELET_PKI}/kubelet.crt and kubelet.key",
                file.display()
            ),
        ),
        _ => (
            None,
            None,
            format!(
                "bundle kubelet-serving: {} sets only one of tlsCertFile and tlsPrivateKeyFile (the kubelet needs both), skipped",
                file.display()
            ),
        ),
    }
}

/// Generates the kubeadm profile for the host whose filesystem is at `root` (`/` normally).
pub fn kubeadm(root: &Path, settings: &KubeadmSettings) -> Generated {
    kubeadm_with(root, settings, Path::new(SERVICE_ACCOUNT_TOKEN))
}

/// [`kubeadm`], with the agent's own ServiceAccount token looked for at `own_token`.
fn kubeadm_with(root: &Path, settings: &KubeadmSettings, own_token: &Path) -> Generated {
    let mut w = Writer {
        root,
        out: format!(
            "# certreload kubeadm profile (generated for {}).\n[audit]\npath = \"{KUBEADM_AUDIT}\"\n",
            root.display()
        ),
        skipped: Vec::new(),
        bundles: Vec::new(),
    };
    let pki = "etc/kubernetes/pki";
    let p = |f: &str| format!("{pki}/{f}");
    // Cluster CA and the API server's material. ca.crt is also kube-controller-manager's
    // --cluster-signing-cert-file (with ca.key), hence `signing` and the key check.
    w.bundle_with(
        "kubernetes-ca",
        "ca",
        &[("cert", &p("ca.crt"))],
        &[("key", &p("ca.key"))],
        &["signing = true"],
    );
    w.bundle(
        "apiserver",
        "server",
        &[
            ("cert", &p("apiserver.crt")),
            ("key", &p("apiserver.key")),
            ("ca", &p("ca.crt")),
        ],
    );
    w.bundle(
        "apiserver-kubelet-client",
        "client",
        &[
            ("cert", &p("apiserver-kubelet-client.crt")),
            ("key", &p("apiserver-kubelet-client.key")),
            ("ca", &p("ca.crt")),
        ],
    );
    w.bundle(
        "apiserver-etcd-client",
        "client",
        &[
            ("cert", &p("apiserver-etcd-client.crt")),
            ("key", &p("apiserver-etcd-client.key")),
            ("ca", &p("etcd/ca.crt")),
        ],
    );
    w.bundle_with(
        "front-proxy-ca",
        "ca",
        &[("cert", &p("front-proxy-ca.crt"))],
        &[("key", &p("front-proxy-ca.key"))],
        &[],
    );
    w.bundle(
        "front-proxy-client",
        "client",
        &[
            ("cert", &p("front-proxy-client.crt")),
            ("key", &p("front-proxy-client.key")),
            ("ca", &p("front-proxy-ca.crt")),
        ],
    );
    w.bundle(
        "sa",
        "sa-keys",
        &[("private_key", &p("sa.key")), ("public_keys", &p("sa.pub"))],
    );
    // etcd.
    w.bundle_with(
        "etcd-ca",
        "ca",
        &[("cert", &p("etcd/ca.crt"))],
        &[("key", &p("etcd/ca.key"))],
        &[],
    );
    for (name, file) in [("etcd-server", "server"), ("etcd-peer", "peer")] {
        w.bundle(
            name,
            "server",
            &[
                ("cert", &p(&format!("etcd/{file}.crt"))),
                ("key", &p(&format!("etcd/{file}.key"))),
                ("ca", &p("etcd/ca.crt")),
            ],
        );
    }
    w.bundle(
        "etcd-healthcheck-client",
        "client",
        &[
            ("cert", &p("etcd/healthcheck-client.crt")),
            ("key", &p("etcd/healthcheck-client.key")),
            ("ca", &p("etcd/ca.crt")),
        ],
    );
    // The control-plane components' kubeconfigs: client certificates embedded, read once.
    w.bundle(
        "controller-manager-kubeconfig",
        "kubeconfig",
        &[("file", "etc/kubernetes/controller-manager.conf")],
    );
    w.bundle(
        "scheduler-kubeconfig",
        "kubeconfig",
        &[("file", "etc/kubernetes/scheduler.conf")],
    );
    // The identity that reads the API server's JWKS (the sa-keys probe below).
    let (jwks_identity, why) = jwks_credential(root, own_token);
    w.skipped.push(why);
    if jwks_identity == JwksCredential::AdminConf {
        w.bundle(ADMIN_KUBECONFIG, "kubeconfig", &[("file", ADMIN_CONF)]);
    }
    // kubelet: the serving certificate it really serves (from its config.yaml), and its client
    // certificate (cert and key in one rotating file).
    let (serving, reload_gate, why) = kubelet_serving(root);
    w.skipped.push(why);
    let bootstrap_pem = format!("{KUBELET_PKI}/kubelet-server-current.pem");
    let (default_crt, default_key) = (
        format!("{KUBELET_PKI}/kubelet.crt"),
        format!("{KUBELET_PKI}/kubelet.key"),
    );
    match &serving {
        Some(KubeletServing::Bootstrap) => w.bundle_with(
            "kubelet-serving",
            "server",
            &[("cert", &bootstrap_pem), ("key", &bootstrap_pem)],
            // Signed by the cluster signer (kube-controller-manager's ca.crt/ca.key).
            &[("ca", &p("ca.crt"))],
            &[],
        ),
        Some(KubeletServing::Files { cert, key }) => {
            w.bundle("kubelet-serving", "server", &[("cert", cert), ("key", key)])
        }
        Some(KubeletServing::Default) => w.bundle(
            "kubelet-serving",
            "server",
            &[("cert", &default_crt), ("key", &default_key)],
        ),
        None => {}
    }
    w.bundle(
        "kubelet-client",
        "client",
        &[
            ("cert", "var/lib/kubelet/pki/kubelet-client-current.pem"),
            ("key", "var/lib/kubelet/pki/kubelet-client-current.pem"),
            ("ca", &p("ca.crt")),
        ],
    );

    // Probes. Deadlines: the Kubernetes servers reload files on fsnotify and re-check every
    // minute (DynamicFileCAContent, DynamicCertKeyPairContent), so 90 s; the scheduler gets its
    // client CA from the extension-apiserver-authentication ConfigMap (apiserver reload, then the
    // ConfigMap controller's 1-minute poll), so 150 s. etcd re-reads its certificate per handshake.
    let secs = Duration::from_secs;
    // Every control-plane endpoint serves its current certificate...
    w.probe(Probe {
        name: "kube-apiserver",
        endpoint: "127.0.0.1:6443",
        server_name: "kubernetes",
        bundle: "apiserver",
        client: None,
        check: Check::Tls,
        deadline: secs(90),
        bearer: None,
    });
    w.probe(Probe {
        name: "etcd-client",
        endpoint: "127.0.0.1:2379",
        server_name: "localhost",
        bundle: "etcd-server",
        client: Some("etcd-healthcheck-client"),
        check: Check::Tls,
        deadline: secs(60),
        bearer: None,
    });
    match etcd_peer_ip(&w.path(&p("etcd/peer.crt"))) {
        Some(ip) => {
            let endpoint = match ip {
                IpAddr::V4(v4) => format!("{v4}:2380"),
                IpAddr::V6(v6) => format!("[{v6}]:2380"),
            };
            w.probe(Probe {
                name: "etcd-peer",
                endpoint: &endpoint,
                server_name: "localhost",
                bundle: "etcd-peer",
                client: Some("etcd-healthcheck-client"),
                check: Check::Tls,
                deadline: secs(60),
                bearer: None,
            });
        }
        None => w
            .skipped
            .push("probe etcd-peer: no node IP in etcd/peer.crt, skipped".into()),
    }
    w.probe(Probe {
        name: "kubelet",
        endpoint: "127.0.0.1:10250",
        server_name: "localhost",
        bundle: "kubelet-serving",
        client: None,
        check: Check::Tls,
        deadline: secs(90),
        bearer: None,
    });
    // ...and trusts the current client CAs. The Kubernetes servers accept any client certificate
    // in the handshake and refuse an untrusted one per request with 401, so one HTTP request
    // tells; etcd refuses it in the handshake. controller-manager and scheduler serve in-memory
    // self-signed certificates under kubeadm, so their client-CA trust is what can be checked.
    w.probe(Probe {
        name: "kube-apiserver-client-ca",
        endpoint: "127.0.0.1:6443",
        server_name: "kubernetes",
        bundle: "kubernetes-ca",
        client: Some("apiserver-kubelet-client"),
        check: Check::Http("POST /apis/authentication.k8s.io/v1/selfsubjectreviews"),
        deadline: secs(90),
        bearer: None,
    });
    w.probe(Probe {
        name: "kube-controller-manager-client-ca",
        endpoint: "127.0.0.1:10257",
        server_name: "localhost",
        bundle: "kubernetes-ca",
        client: Some("apiserver-kubelet-client"),
        check: Check::Http("GET /healthz"),
        deadline: secs(90),
        bearer: None,
    });
    w.probe(Probe {
        name: "kube-scheduler-client-ca",
        endpoint: "127.0.0.1:10259",
        server_name: "localhost",
        bundle: "kubernetes-ca",
        client: Some("apiserver-kubelet-client"),
        check: Check::Http("GET /healthz"),
        deadline: secs(150),
        bearer: None,
    });
    w.probe(Probe {
        name: "etcd-client-ca",
        endpoint: "127.0.0.1:2379",
        server_name: "localhost",
        bundle: "etcd-ca",
        client: Some("etcd-healthcheck-client"),
        check: Check::Tls,
        deadline: secs(60),
        bearer: None,
    });
    // The ServiceAccount keys the API server accepts (it reads them once): its JWKS must list
    // every key id of the `sa` bundle. Read as the identity chosen above.
    let jwks = |client, bearer| Probe {
        name: "kube-apiserver-sa-keys",
        endpoint: "127.0.0.1:6443",
        server_name: "kubernetes",
        bundle: "sa",
        client,
        check: Check::Jwks,
        deadline: secs(120),
        bearer,
    };
    match &jwks_identity {
        JwksCredential::OwnToken(token) => w.probe(jwks(None, Some(token))),
        JwksCredential::AdminConf => w.probe(jwks(Some(ADMIN_KUBECONFIG), None)),
        JwksCredential::None => {}
    }

    // Actions, off by default, only where the component cannot reload the material.
    let stop_etcd = crictl_stop("etcd");
    let stop_apiserver = crictl_stop("kube-apiserver");
    let stop_kcm = if w.has("kubernetes-ca") {
        kcm_stop_guarded(&w.path(&p("ca.crt")))
    } else {
        crictl_stop("kube-controller-manager")
    };
    let stop_scheduler = crictl_stop("kube-scheduler");
    fn argv(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }
    w.action(
        "etcd-restart-on-stale-ca",
        "etcd-ca",
        "stale",
        "etcd: --trusted-ca-file / --peer-trusted-ca-file are not reloaded",
        &argv(&stop_etcd),
    );
    w.action(
        "kube-apiserver-restart-on-etcd-ca",
        "etcd-ca",
        "accepted",
        "kube-apiserver: --etcd-cafile is not reloaded",
        &argv(&stop_apiserver),
    );
    w.action(
        "kube-apiserver-restart-on-sa-keys",
        "sa",
        "accepted",
        "kube-apiserver: --service-account-key-file / --service-account-signing-key-file are not reloaded",
        &argv(&stop_apiserver),
    );
    w.action(
        "kube-controller-manager-restart-on-sa-keys",
        "sa",
        "accepted",
        "kube-controller-manager: --service-account-private-key-file is not reloaded",
        &argv(&stop_kcm),
    );
    w.action(
        "kube-controller-manager-restart-on-root-ca",
        "kubernetes-ca",
        "accepted",
        "kube-controller-manager: --root-ca-file is read once; the kube-root-ca.crt ConfigMaps take a new CA only after a restart",
        &argv(&stop_kcm),
    );
    w.action(
        "kube-controller-manager-restart-on-kubeconfig",
        "controller-manager-kubeconfig",
        "accepted",
        "kube-controller-manager: the client certificate embedded in controller-manager.conf is read once",
        &argv(&stop_kcm),
    );
    w.action(
        "kube-scheduler-restart-on-kubeconfig",
        "scheduler-kubeconfig",
        "accepted",
        "kube-scheduler: the client certificate embedded in scheduler.conf is read once",
        &argv(&stop_scheduler),
    );
    // The kubelet reloads its serving certificate from 1.31 (ReloadKubeletServerCertificateFile,
    // on by default) and never needs a restart with serverTLSBootstrap (a restart there would
    // loop: the stale kubelet.crt it would be compared with is not what it serves).
    let old_kubelet = settings
        .kubelet_version
        .is_some_and(|v| v <= LAST_KUBELET_WITHOUT_SERVING_RELOAD);
    let gate_off = reload_gate == Some(false);
    match (&serving, old_kubelet || gate_off) {
        (Some(KubeletServing::Bootstrap), _) => w.skipped.push(
            "action kubelet-restart-on-stale-serving: not generated: with serverTLSBootstrap the kubelet rotates and reloads its serving certificate itself".into(),
        ),
        (Some(_), true) => w.action(
            "kubelet-restart-on-stale-serving",
            "kubelet-serving",
            "stale",
            if gate_off {
                "kubelet: ReloadKubeletServerCertificateFile is off in config.yaml, so tlsCertFile / kubelet.crt is not reloaded"
            } else {
                "kubelet <= 1.30 ([profile] kubelet_version): tlsCertFile / kubelet.crt is not reloaded"
            },
            &["systemctl", "restart", "kubelet"],
        ),
        (Some(_), false) => w.skipped.push(
            "action kubelet-restart-on-stale-serving: not generated: a kubelet >= 1.31 reloads its serving certificate (for an older kubelet set [profile] kubelet_version = \"1.30\" in the config file)".into(),
        ),
        (None, _) => {}
    }
    Generated {
        toml: w.out,
        skipped: w.skipped,
    }
}

/// Keys by which array entries of `base` are replaced by `overlay` entries.
fn entry_key(table: &str, entry: &Table) -> Option<String> {
    match table {
        "bundle" | "probe" | "listener" | "action" => entry
            .get("name")
            .and_then(Value::as_str)
            .map(str::to_string),
        _ => None,
    }
}

/// Overlays a config file on a profile: tables merge key by key; entries of the named arrays
/// (`[[bundle]]`, `[[probe]]`, `[[listener]]`, `[[action]]`) with the name of a profile entry
/// override its fields, others are added; any other value, a list such as an action's `exec`
/// included, replaces the profile's (an argv is never two commands glued together).
pub fn merge(base: &mut Table, overlay: Table) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(Value::Table(b)), Value::Table(o)) => merge(b, o),
            (Some(Value::Array(b)), Value::Array(o))
                if matches!(key.as_str(), "bundle" | "probe" | "listener" | "action") =>
            {
                for entry in o {
                    let replaced =
                        entry
                            .as_table()
                            .and_then(|t| entry_key(&key, t))
                            .and_then(|k| {
                                b.iter().position(|e| {
                                    e.as_table().and_then(|t| entry_key(&key, t)).as_deref()
                                        == Some(&k)
                                })
                            });
                    match replaced {
                        Some(i) => {
                            // A partial entry (e.g. `name` + `enabled = true`) overrides fields.
                            if let (Some(Value::Table(old)), Value::Table(new)) =
                                (b.get_mut(i), entry.clone())
                            {
                                merge(old, new);
                            }
                        }
                        None => b.push(entry),
                    }
                }
            }
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// The overlay's `[profile]` table, with positions for messages.
#[derive(Deserialize, Default)]
struct RawOverlay {
    #[serde(default)]
    profile: Option<Spanned<RawProfileSettings>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawProfileSettings {
    kubelet_version: Option<Spanned<String>>,
}

/// `"1.30"`, `"v1.30.4"`, `"1.30.0-rc.1"` → (1, 30).
fn major_minor(version: &str) -> Option<(u32, u32)> {
    let mut parts = version
        .trim()
        .trim_start_matches('v')
        .split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Reads the overlay's `[profile]` table (what the profile is told about the node).
fn settings(path: &Path, text: &str) -> Result<KubeadmSettings, ConfigError> {
    let src = Source { path, text };
    let raw: RawOverlay = toml::from_str(text).map_err(|e| ConfigError::Syntax {
        path: path.to_path_buf(),
        message: e.to_string().trim_end().replace('\n', " "),
    })?;
    let mut settings = KubeadmSettings::default();
    if let Some(v) = raw
        .profile
        .as_ref()
        .and_then(|p| p.get_ref().kubelet_version.as_ref())
    {
        settings.kubelet_version = Some(major_minor(v.get_ref()).ok_or_else(|| {
            src.invalid(
                v.span().start,
                "profile.kubelet_version",
                format!(
                    "{:?} is not a version like \"1.30\" or \"v1.30.4\"",
                    v.get_ref()
                ),
            )
        })?);
    }
    Ok(settings)
}

/// The configuration for `profile` on the host at `root`, extended by `file` when given (whose
/// `[profile]` table tells the profile what the node's files cannot).
pub fn load(
    profile: Profile,
    root: &Path,
    file: Option<&Path>,
) -> Result<(Config, Vec<String>), ConfigError> {
    load_with(profile, root, file, Path::new(SERVICE_ACCOUNT_TOKEN))
}

/// [`load`], with the agent's own ServiceAccount token looked for at `own_token`.
fn load_with(
    profile: Profile,
    root: &Path,
    file: Option<&Path>,
    own_token: &Path,
) -> Result<(Config, Vec<String>), ConfigError> {
    let Profile::Kubeadm = profile;
    let syntax = |path: &Path, e: toml::de::Error| ConfigError::Syntax {
        path: path.to_path_buf(),
        message: e.to_string().trim_end().replace('\n', " "),
    };
    let overlay = match file {
        Some(f) => {
            let text = std::fs::read_to_string(f).map_err(|source| ConfigError::Io {
                path: f.to_path_buf(),
                source,
            })?;
            let mut table: Table = toml::from_str(&text).map_err(|e| syntax(f, e))?;
            let settings = settings(f, &text)?;
            table.remove("profile");
            Some((f, table, settings))
        }
        None => None,
    };
    let settings = overlay
        .as_ref()
        .map(|(_, _, s)| s.clone())
        .unwrap_or_default();
    let generated = kubeadm_with(root, &settings, own_token);
    let label = PathBuf::from("<kubeadm profile>");
    let mut base: Table = toml::from_str(&generated.toml).map_err(|e| syntax(&label, e))?;
    let path = match overlay {
        Some((f, table, _)) => {
            merge(&mut base, table);
            PathBuf::from(format!("<kubeadm profile + {}>", f.display()))
        }
        None => label,
    };
    let text = toml::to_string(&base).map_err(|e| ConfigError::Syntax {
        path: path.clone(),
        message: e.to_string(),
    })?;
    Ok((Config::parse(&path, &text)?, generated.skipped))
}

#[cfg(test)]
mod tests {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

    use super::*;

    fn ca(root: &Path, rel: &str) -> Issuer<'static, KeyPair> {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, rel.to_string());
        std::fs::write(root.join(rel), params.self_signed(&key).expect("ca").pem()).expect("write");
        Issuer::new(params, key)
    }

    fn leaf(root: &Path, stem: &str, issuer: &Issuer<'static, KeyPair>, sans: &[&str]) {
        let key = KeyPair::generate().expect("key");
        let params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("params");
        let cert = params.signed_by(&key, issuer).expect("leaf");
        std::fs::write(root.join(format!("{stem}.crt")), cert.pem()).expect("write");
        std::fs::write(root.join(format!("{stem}.key")), key.serialize_pem()).expect("write");
    }

    #[test]
    fn kubeadm_profile_covers_present_files_skips_missing_ones_and_keeps_actions_off() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path();
        let pki = root.join("etc/kubernetes/pki");
        std::fs::create_dir_all(pki.join("etcd")).expect("mkdir");
        std::fs::create_dir_all(pki.join("expired")).expect("mkdir");
        let kube_ca = ca(&pki, "ca.crt");
        leaf(&pki, "apiserver", &kube_ca, &["kubernetes", "localhost"]);
        leaf(&pki.join("expired"), "apiserver", &kube_ca, &["kubernetes"]);
        std::fs::copy(pki.join("apiserver.crt"), pki.join("apiserver.crt.bak")).expect("copy");
        let etcd_ca = ca(&pki.join("etcd"), "ca.crt");
        leaf(
            &pki.join("etcd"),
            "peer",
            &etcd_ca,
            &["localhost", "127.0.0.1", "10.1.2.3"],
        );
        leaf(
            &pki.join("etcd"),
            "healthcheck-client",
            &etcd_ca,
            &["client"],
        );
        assert!(is_kubeadm_node(root));

        let (config, skipped) = load(Profile::Kubeadm, root, None).expect("profile parses");
        let names: Vec<_> = config.bundles.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "kubernetes-ca",
                "apiserver",
                "etcd-ca",
                "etcd-peer",
                "etcd-healthcheck-client"
            ]
        );
        let files: Vec<_> = config.bundles.iter().flat_map(|b| b.files()).collect();
        assert!(
            files
                .iter()
                .all(|f| !f.to_string_lossy().contains("expired")
                    && !f.to_string_lossy().ends_with(".bak")),
            "{files:?}"
        );
        assert!(
            skipped.iter().any(|l| l.contains("kubelet-serving")),
            "{skipped:?}"
        );
        assert!(
            skipped.iter().any(|l| l.contains("probe kubelet")),
            "{skipped:?}"
        );
        let peer = config
            .probes
            .iter()
            .find(|p| p.name == "etcd-peer")
            .expect("etcd peer probe");
        assert_eq!(peer.endpoint, "10.1.2.3:2380");
        assert!(config.probes.iter().any(|p| p.name == "kube-apiserver"));
        assert!(config.actions.is_empty(), "actions are off by default");

        let overlay = root.join("certreload.toml");
        std::fs::write(
            &overlay,
            "[agent]\nadmin = \"127.0.0.1:0\"\n[[action]]\nname = \"etcd-restart-on-stale-ca\"\nenabled = true\n",
        )
        .expect("write");
        let (config, _) = load(Profile::Kubeadm, root, Some(&overlay)).expect("overlay parses");
        assert_eq!(config.actions.len(), 1);
        assert_eq!(config.actions[0].id(), "etcd-restart-on-stale-ca");
        assert_eq!(config.agent.admin.to_string(), "127.0.0.1:0");
    }

    #[test]
    fn the_daemonset_configmap_is_a_valid_overlay_of_the_profile() {
        let manifest = include_str!("../../../deploy/configmap.yaml");
        let toml: String = manifest
            .lines()
            .skip_while(|l| !l.trim_start().starts_with("certreload.toml: |"))
            .skip(1)
            .take_while(|l| l.is_empty() || l.starts_with("    "))
            .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
            .collect();
        assert!(toml.contains("[agent]"), "extracted: {toml}");
        let tmp = tempfile::tempdir().expect("tempdir");
        let file = tmp.path().join("certreload.toml");
        std::fs::write(&file, toml).expect("write");
        let (config, _) = load(Profile::Kubeadm, tmp.path(), Some(&file)).expect("valid overlay");
        assert!(config.events.enabled);
        assert_eq!(config.agent.admin.to_string(), "0.0.0.0:9808");
    }

    #[test]
    fn overlay_overrides_by_name_and_adds() {
        let mut base: Table = toml::from_str(
            "[agent]\nresync = \"30s\"\n[[action]]\nname = \"a\"\nenabled = false\nbundle = \"x\"\n",
        )
        .expect("toml");
        let overlay: Table = toml::from_str(
            "[agent]\nadmin = \"0.0.0.0:1\"\n[[action]]\nname = \"a\"\nenabled = true\n[[action]]\nname = \"b\"\nbundle = \"y\"\n",
        )
        .expect("toml");
        merge(&mut base, overlay);
        assert_eq!(base["agent"]["resync"].as_str(), Some("30s"));
        assert_eq!(base["agent"]["admin"].as_str(), Some("0.0.0.0:1"));
        let actions = base["action"].as_array().expect("array");
        assert_eq!(actions.len(), 2);
        assert_eq!(actions[0]["enabled"].as_bool(), Some(true));
        assert_eq!(actions[0]["bundle"].as_str(), Some("x"));
    }

    #[test]
    fn an_overlay_list_replaces_the_profile_list_it_names() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path();
        control_plane(root);
        // What an operator writes to run the profile's etcd restart their own way.
        let file = overlay(
            root,
            "[[action]]\nname = \"etcd-restart-on-stale-ca\"\nenabled = true\nexec = [\"/bin/sh\", \"-c\", \"kill $(cat /run/etcd.pid)\"]\n",
        );
        let (config, _) = load(Profile::Kubeadm, root, Some(&file)).expect("profile");
        let action = config
            .actions
            .iter()
            .find(|a| a.id() == "etcd-restart-on-stale-ca")
            .expect("the enabled action");
        assert_eq!(
            action.command,
            crate::config::ActionCommand::Exec(vec![
                "/bin/sh".into(),
                "-c".into(),
                "kill $(cat /run/etcd.pid)".into()
            ]),
            "the overlay's argv, not the profile's crictl command with it appended"
        );
        assert_eq!(
            action.bundle, "etcd-ca",
            "the fields not named stay the profile's"
        );
        // The same for a bundle's list of files.
        let file = overlay(
            root,
            "[[bundle]]\nname = \"sa\"\npublic_keys = [\"/a.pub\", \"/b.pub\"]\n",
        );
        let merged = {
            let mut base: Table = toml::from_str(&kubeadm(root, &KubeadmSettings::default()).toml)
                .expect("profile toml");
            merge(
                &mut base,
                toml::from_str(&std::fs::read_to_string(&file).expect("read")).expect("toml"),
            );
            base
        };
        let sa = merged["bundle"]
            .as_array()
            .expect("bundles")
            .iter()
            .find(|b| b["name"].as_str() == Some("sa"))
            .expect("sa");
        assert_eq!(sa["public_keys"].as_array().map(Vec::len), Some(2), "{sa}");
    }

    /// A CA whose key is written next to it (`ca.crt` → `ca.key`), as kubeadm does.
    fn ca_with_key(root: &Path, rel: &str) -> (Issuer<'static, KeyPair>, String) {
        let key = KeyPair::generate().expect("key");
        let key_pem = key.serialize_pem();
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, rel.to_string());
        let cert = params.self_signed(&key).expect("ca");
        std::fs::write(root.join(rel), cert.pem()).expect("write");
        std::fs::write(root.join(rel.replace(".crt", ".key")), &key_pem).expect("write");
        (Issuer::new(params, key), cert.pem())
    }

    fn pem_pair(issuer: &Issuer<'static, KeyPair>, sans: &[&str]) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("params");
        let cert = params.signed_by(&key, issuer).expect("leaf");
        (cert.pem(), key.serialize_pem())
    }

    /// kubeadm's kubeconfig for a control-plane component, material embedded.
    fn kubeconfig(user: &str, cert: &str, key: &str, ca: &str) -> String {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    server: https://10.1.2.3:6443\n  name: kubernetes\ncontexts:\n- context:\n    cluster: kubernetes\n    user: {user}\n  name: {user}@kubernetes\ncurrent-context: {user}@kubernetes\nusers:\n- name: {user}\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
            b64(ca),
            b64(cert),
            b64(key)
        )
    }

    /// A control-plane node as kubeadm lays it out: cluster CA with key, API server, its kubelet
    /// client, SA keys, etcd, the controller-manager and scheduler kubeconfigs.
    fn control_plane(root: &Path) -> Issuer<'static, KeyPair> {
        let pki = root.join("etc/kubernetes/pki");
        std::fs::create_dir_all(pki.join("etcd")).expect("mkdir");
        let (kube_ca, kube_ca_pem) = ca_with_key(&pki, "ca.crt");
        leaf(&pki, "apiserver", &kube_ca, &["kubernetes", "localhost"]);
        leaf(&pki, "apiserver-kubelet-client", &kube_ca, &["client"]);
        let sa = KeyPair::generate().expect("key");
        std::fs::write(pki.join("sa.key"), sa.serialize_pem()).expect("write");
        std::fs::write(pki.join("sa.pub"), sa.public_key_pem()).expect("write");
        let (etcd_ca, _) = ca_with_key(&pki.join("etcd"), "ca.crt");
        for stem in ["server", "peer", "healthcheck-client"] {
            leaf(
                &pki.join("etcd"),
                stem,
                &etcd_ca,
                &["localhost", "127.0.0.1", "10.1.2.3"],
            );
        }
        for (file, user) in [
            ("controller-manager.conf", "system:kube-controller-manager"),
            ("scheduler.conf", "system:kube-scheduler"),
        ] {
            let (cert, key) = pem_pair(&kube_ca, &[]);
            std::fs::write(
                root.join("etc/kubernetes").join(file),
                kubeconfig(user, &cert, &key, &kube_ca_pem),
            )
            .expect("write");
        }
        kube_ca
    }

    fn kubelet_dir(root: &Path) -> PathBuf {
        let dir = root.join(KUBELET_PKI);
        std::fs::create_dir_all(&dir).expect("mkdir");
        dir
    }

    fn serving_files(config: &Config) -> Option<(PathBuf, PathBuf, Option<PathBuf>)> {
        config
            .bundles
            .iter()
            .find(|b| b.name == "kubelet-serving")
            .map(|b| match &b.files {
                crate::config::BundleFiles::Pair { cert, key, ca } => {
                    (cert.clone(), key.clone(), ca.clone())
                }
                other => panic!("kubelet-serving is a pair, not {other:?}"),
            })
    }

    fn validate(config: &Config, name: &str) -> crate::material::validate::Report {
        let bundle = config
            .bundles
            .iter()
            .find(|b| b.name == name)
            .unwrap_or_else(|| panic!("no bundle {name}"));
        crate::gate::validate_bundle(
            bundle,
            &config.agent,
            &crate::gate::Current::default(),
            std::time::SystemTime::now(),
        )
    }

    fn overlay(root: &Path, text: &str) -> PathBuf {
        let file = root.join("certreload.toml");
        std::fs::write(&file, text).expect("write");
        file
    }

    #[test]
    fn kubelet_serving_bundle_is_what_config_yaml_says_the_kubelet_serves() {
        // serverTLSBootstrap: the certificate manager's kubelet-server-current.pem wins over a
        // stale kubelet.crt and even over tlsCertFile (as in the kubelet's NewMainKubelet).
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path();
        let kube_ca = control_plane(root);
        let dir = kubelet_dir(root);
        let cluster_ca = ca(&dir, "kubelet-ca.crt");
        leaf(&dir, "kubelet", &cluster_ca, &["node-1"]);
        let (cert, key) = pem_pair(&kube_ca, &["node-1", "10.1.2.3"]);
        std::fs::write(dir.join("kubelet-server-2026.pem"), format!("{cert}{key}")).expect("write");
        std::os::unix::fs::symlink(
            dir.join("kubelet-server-2026.pem"),
            dir.join("kubelet-server-current.pem"),
        )
        .expect("symlink");
        std::fs::write(
            root.join(KUBELET_CONFIG),
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nserverTLSBootstrap: true\ntlsCertFile: /var/lib/kubelet/pki/kubelet.crt\ntlsPrivateKeyFile: /var/lib/kubelet/pki/kubelet.key\nauthentication:\n  x509:\n    clientCAFile: /etc/kubernetes/pki/ca.crt\n",
        )
        .expect("write");
        let file = overlay(root, "[profile]\nkubelet_version = \"1.29\"\n");
        let (config, lines) = load(Profile::Kubeadm, root, Some(&file)).expect("profile");
        let current = dir.join("kubelet-server-current.pem");
        assert_eq!(
            serving_files(&config),
            Some((
                current.clone(),
                current,
                Some(root.join("etc/kubernetes/pki/ca.crt"))
            ))
        );
        assert!(
            validate(&config, "kubelet-serving").is_valid(),
            "cert and key in one file, chained to the cluster CA"
        );
        assert!(config.probes.iter().any(|p| p.name == "kubelet"));
        assert!(
            lines.iter().any(|l| l.contains("serverTLSBootstrap: true")),
            "{lines:?}"
        );
        assert!(
            lines.iter().any(|l| l
                .starts_with("action kubelet-restart-on-stale-serving: not generated")
                && l.contains("serverTLSBootstrap")),
            "{lines:?}"
        );
        let generated = kubeadm(
            root,
            &KubeadmSettings {
                kubelet_version: Some((1, 29)),
            },
        );
        assert!(
            !generated.toml.contains("kubelet-restart-on-stale-serving"),
            "never a restart loop on a bootstrap kubelet, whatever its version"
        );

        // tlsCertFile / tlsPrivateKeyFile: host paths, a relative one from the config's directory.
        std::fs::write(
            root.join(KUBELET_CONFIG),
            "kind: KubeletConfiguration\ntlsCertFile: /etc/kubelet-tls/serving.crt\ntlsPrivateKeyFile: pki/serving.key\n",
        )
        .expect("write");
        std::fs::create_dir_all(root.join("etc/kubelet-tls")).expect("mkdir");
        leaf(
            &root.join("etc/kubelet-tls"),
            "serving",
            &kube_ca,
            &["node-1"],
        );
        std::fs::rename(
            root.join("etc/kubelet-tls/serving.key"),
            dir.join("serving.key"),
        )
        .expect("mv");
        let (config, lines) = load(Profile::Kubeadm, root, None).expect("profile");
        assert_eq!(
            serving_files(&config),
            Some((
                root.join("etc/kubelet-tls/serving.crt"),
                dir.join("serving.key"),
                None
            ))
        );
        assert!(validate(&config, "kubelet-serving").is_valid());
        assert!(
            lines.iter().any(|l| l.contains("sets tlsCertFile")),
            "{lines:?}"
        );

        // Neither: the kubelet's own kubelet.crt / kubelet.key.
        std::fs::write(
            root.join(KUBELET_CONFIG),
            "kind: KubeletConfiguration\nserverTLSBootstrap: false\n",
        )
        .expect("write");
        let (config, _) = load(Profile::Kubeadm, root, None).expect("profile");
        assert_eq!(
            serving_files(&config),
            Some((dir.join("kubelet.crt"), dir.join("kubelet.key"), None))
        );
        std::fs::remove_file(root.join(KUBELET_CONFIG)).expect("rm");
        let (config, lines) = load(Profile::Kubeadm, root, None).expect("profile");
        assert_eq!(
            serving_files(&config),
            Some((dir.join("kubelet.crt"), dir.join("kubelet.key"), None))
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains("no ") && l.contains("config.yaml")),
            "{lines:?}"
        );

        // A config.yaml that does not parse: nothing is guessed.
        std::fs::write(root.join(KUBELET_CONFIG), "serverTLSBootstrap: [true\n").expect("write");
        let (config, lines) = load(Profile::Kubeadm, root, None).expect("profile");
        assert_eq!(serving_files(&config), None);
        assert!(
            lines
                .iter()
                .any(|l| l.contains("is not a KubeletConfiguration")),
            "{lines:?}"
        );
        assert!(
            lines.iter().any(|l| l.starts_with("probe kubelet:")),
            "{lines:?}"
        );
    }

    #[test]
    fn kubelet_restart_action_only_for_a_kubelet_that_cannot_reload_its_serving_certificate() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path();
        let kube_ca = control_plane(root);
        leaf(&kubelet_dir(root), "kubelet", &kube_ca, &["node-1"]);
        let action = "kubelet-restart-on-stale-serving";

        // Nothing said about the version: a current kubelet reloads by itself.
        let generated = kubeadm(root, &KubeadmSettings::default());
        assert!(!generated.toml.contains(action), "{}", generated.toml);
        assert!(
            generated
                .skipped
                .iter()
                .any(|l| l.contains(action) && l.contains(">= 1.31")),
            "{:?}",
            generated.skipped
        );
        let on_1_31 = KubeadmSettings {
            kubelet_version: Some((1, 31)),
        };
        assert!(!kubeadm(root, &on_1_31).toml.contains(action));

        // A kubelet <= 1.30, stated in the overlay: the action exists, off until enabled.
        let file = overlay(root, "[profile]\nkubelet_version = \"v1.30.4\"\n");
        let (config, _) = load(Profile::Kubeadm, root, Some(&file)).expect("profile");
        assert!(config.actions.is_empty(), "off by default");
        let file = overlay(
            root,
            &format!("[profile]\nkubelet_version = \"v1.30.4\"\n[[action]]\nname = \"{action}\"\nenabled = true\n"),
        );
        let (config, _) = load(Profile::Kubeadm, root, Some(&file)).expect("profile");
        assert_eq!(config.actions.len(), 1);
        assert_eq!(config.actions[0].id(), action);
        assert_eq!(config.actions[0].bundle, "kubelet-serving");

        // The reload gate turned off in config.yaml: same as an old kubelet.
        std::fs::write(
            root.join(KUBELET_CONFIG),
            "kind: KubeletConfiguration\nfeatureGates:\n  ReloadKubeletServerCertificateFile: false\n",
        )
        .expect("write");
        assert!(kubeadm(root, &on_1_31).toml.contains(action));

        // A version that is not one names the field and the line.
        let file = overlay(root, "[agent]\n[profile]\nkubelet_version = \"thirty\"\n");
        let err = load(Profile::Kubeadm, root, Some(&file)).expect_err("bad version");
        let msg = err.to_string();
        assert!(msg.contains(":3: profile.kubelet_version"), "{msg}");
        let file = overlay(root, "[profile]\nkubelet = \"1.30\"\n");
        let err = load(Profile::Kubeadm, root, Some(&file)).expect_err("unknown key");
        assert!(err.to_string().contains("kubelet"), "{err}");
    }

    #[test]
    fn control_plane_probes_use_the_check_that_can_tell_with_per_component_deadlines() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path();
        control_plane(root);
        let (config, _) = load(Profile::Kubeadm, root, None).expect("profile");
        let probe = |name: &str| {
            let p = config
                .probes
                .iter()
                .find(|p| p.name == name)
                .unwrap_or_else(|| panic!("no probe {name}"));
            (
                p.check.name(),
                p.check.request().map(|r| r.to_string()),
                p.deadline.as_secs(),
            )
        };
        let ssr = "POST /apis/authentication.k8s.io/v1/selfsubjectreviews".to_string();
        let healthz = Some("GET /healthz".to_string());
        assert_eq!(probe("kube-apiserver"), ("tls", None, 90));
        assert_eq!(probe("kube-apiserver-client-ca"), ("http", Some(ssr), 90));
        assert_eq!(
            probe("kube-controller-manager-client-ca"),
            ("http", healthz.clone(), 90)
        );
        assert_eq!(probe("kube-scheduler-client-ca"), ("http", healthz, 150));
        assert_eq!(probe("etcd-client"), ("tls", None, 60));
        assert_eq!(probe("etcd-client-ca"), ("tls", None, 60));
        assert_eq!(probe("etcd-peer"), ("tls", None, 60));
    }

    #[test]
    fn the_jwks_probe_reads_with_the_agents_own_token_else_admin_conf_else_is_left_out() {
        const PROBE: &str = "kube-apiserver-sa-keys";
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("host");
        let kube_ca = control_plane(&root);
        // The agent's own filesystem (its pod), apart from the host root.
        let token = tmp.path().join("pod/serviceaccount/token");
        // A token file under the host root is the node's, not the agent's: it never counts.
        let on_host = root.join(SERVICE_ACCOUNT_TOKEN.trim_start_matches('/'));
        std::fs::create_dir_all(on_host.parent().expect("dir")).expect("mkdir");
        std::fs::write(&on_host, "node-token").expect("write");
        let jwks = |config: &Config| {
            config.probes.iter().find(|p| p.name == PROBE).map(|p| {
                assert_eq!(p.check.name(), "jwks");
                assert_eq!(
                    (p.endpoint.as_str(), p.bundle.as_str()),
                    ("127.0.0.1:6443", "sa")
                );
                (p.client_bundle.clone(), p.bearer_token_file.clone())
            })
        };
        let has_admin_bundle =
            |config: &Config| config.bundles.iter().any(|b| b.name == ADMIN_KUBECONFIG);
        let line = |lines: &[String]| {
            lines
                .iter()
                .find(|l| l.starts_with(&format!("probe {PROBE}:")))
                .cloned()
                .unwrap_or_else(|| panic!("no line for {PROBE}: {lines:?}"))
        };

        // Neither a token nor admin.conf: left out, and the line says what was looked for.
        let (config, lines) = load_with(Profile::Kubeadm, &root, None, &token).expect("profile");
        assert_eq!(jwks(&config), None);
        assert!(!has_admin_bundle(&config));
        let why = line(&lines);
        assert!(
            why.contains("skipped")
                && why.contains(&token.display().to_string())
                && why.contains(&root.join(ADMIN_CONF).display().to_string()),
            "{why}"
        );

        // admin.conf on the node, no token (not in a pod): its client certificate, as a
        // kubeconfig bundle the gate validates.
        let ca_pem = std::fs::read_to_string(root.join("etc/kubernetes/pki/ca.crt")).expect("ca");
        let (cert, key) = pem_pair(&kube_ca, &[]);
        std::fs::write(
            root.join(ADMIN_CONF),
            kubeconfig("kubernetes-admin", &cert, &key, &ca_pem),
        )
        .expect("write");
        let (config, lines) = load_with(Profile::Kubeadm, &root, None, &token).expect("profile");
        assert_eq!(
            jwks(&config),
            Some((Some(ADMIN_KUBECONFIG.to_string()), None))
        );
        let bundle = config
            .bundles
            .iter()
            .find(|b| b.name == ADMIN_KUBECONFIG)
            .expect("admin.conf bundle");
        assert_eq!(bundle.kind, crate::config::BundleKind::Kubeconfig);
        assert_eq!(bundle.files(), [root.join(ADMIN_CONF)]);
        let report = validate(&config, ADMIN_KUBECONFIG);
        assert!(report.is_valid(), "{report:#?}");
        let why = line(&lines);
        assert!(
            why.contains("not in a pod")
                && why.contains(&root.join(ADMIN_CONF).display().to_string()),
            "{why}"
        );

        // The agent's own ServiceAccount token: it wins, and admin.conf is not watched for it.
        std::fs::create_dir_all(token.parent().expect("dir")).expect("mkdir");
        std::fs::write(&token, "pod-token").expect("write");
        let (config, lines) = load_with(Profile::Kubeadm, &root, None, &token).expect("profile");
        assert_eq!(jwks(&config), Some((None, Some(token.clone()))));
        assert!(!has_admin_bundle(&config));
        let why = line(&lines);
        assert!(
            why.contains("own ServiceAccount token") && why.contains(&token.display().to_string()),
            "{why}"
        );
        assert!(
            !why.contains("pod-token"),
            "the line names the file, not the token: {why}"
        );
    }

    #[test]
    fn restart_actions_for_material_read_once_exist_and_stay_off() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path();
        control_plane(root);
        let (config, _) = load(Profile::Kubeadm, root, None).expect("profile");
        assert!(config.actions.is_empty(), "every action is off by default");
        for (name, file) in [
            ("controller-manager-kubeconfig", "controller-manager.conf"),
            ("scheduler-kubeconfig", "scheduler.conf"),
        ] {
            let bundle = config
                .bundles
                .iter()
                .find(|b| b.name == name)
                .unwrap_or_else(|| panic!("no bundle {name}"));
            assert_eq!(bundle.kind, crate::config::BundleKind::Kubeconfig);
            assert_eq!(bundle.files(), [root.join("etc/kubernetes").join(file)]);
            let report = validate(&config, name);
            assert!(report.is_valid(), "{report:#?}");
        }
        let actions = [
            "kube-controller-manager-restart-on-root-ca",
            "kube-controller-manager-restart-on-kubeconfig",
            "kube-scheduler-restart-on-kubeconfig",
        ];
        let enable: String = actions
            .iter()
            .map(|a| format!("[[action]]\nname = \"{a}\"\nenabled = true\n"))
            .collect();
        let file = overlay(root, &enable);
        let (config, _) = load(Profile::Kubeadm, root, Some(&file)).expect("profile");
        let got: Vec<_> = config
            .actions
            .iter()
            .map(|a| (a.id(), a.bundle.clone(), a.on))
            .collect();
        use crate::config::ActionTrigger::Accepted;
        assert_eq!(
            got,
            [
                (actions[0].into(), "kubernetes-ca".into(), Accepted),
                (
                    actions[1].into(),
                    "controller-manager-kubeconfig".into(),
                    Accepted
                ),
                (actions[2].into(), "scheduler-kubeconfig".into(), Accepted),
            ]
        );
        let argv = |i: usize| match &config.actions[i].command {
            crate::config::ActionCommand::Exec(argv) => argv.join(" "),
            other => panic!("exec, not {other:?}"),
        };
        assert!(
            argv(0).contains("'^kube-controller-manager$'"),
            "{}",
            argv(0)
        );
        assert!(argv(2).contains("'^kube-scheduler$'"), "{}", argv(2));
        // Control-plane restarts take turns across nodes through the component's Lease.
        let locks: Vec<_> = config
            .actions
            .iter()
            .map(|a| a.lock.as_ref().map(|l| l.name.as_str()))
            .collect();
        assert_eq!(
            locks,
            [
                Some("kube-controller-manager"),
                Some("kube-controller-manager"),
                Some("kube-scheduler")
            ]
        );
        // Every kube-controller-manager restart is refused while ca.crt holds two certificates
        // (a restarted one would not start its CSR signer): run the command against a fake crictl.
        let bin = root.join("fake-bin");
        std::fs::create_dir_all(&bin).expect("mkdir");
        let calls = root.join("crictl.calls");
        let crictl = bin.join("crictl");
        std::fs::write(
            &crictl,
            format!(
                "#!/bin/sh\necho \"$*\" >> '{}'\n[ \"$1\" = ps ] && echo c0ffee\nexit 0\n",
                calls.display()
            ),
        )
        .expect("write");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&crictl, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let run = |i: usize| {
            let crate::config::ActionCommand::Exec(argv) = &config.actions[i].command else {
                panic!("exec");
            };
            let path = format!(
                "{}:{}",
                bin.display(),
                std::env::var("PATH").unwrap_or_default()
            );
            std::process::Command::new(&argv[0])
                .args(&argv[1..])
                .env("PATH", path)
                .output()
                .expect("runs")
        };
        let out = run(0);
        assert!(out.status.success(), "{out:?}");
        let log = std::fs::read_to_string(&calls).expect("crictl called");
        assert!(log.contains("stop --timeout 30 c0ffee"), "{log}");
        std::fs::remove_file(&calls).expect("rm");

        let ca_crt = root.join("etc/kubernetes/pki/ca.crt");
        let one = std::fs::read_to_string(&ca_crt).expect("read");
        std::fs::write(&ca_crt, format!("{one}{one}")).expect("write");
        for i in [0, 1] {
            let out = run(i);
            assert_eq!(out.status.code(), Some(1), "{out:?}");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains("holds 2 certificates"), "{stderr}");
        }
        assert!(!calls.exists(), "crictl must not be called");
        // The scheduler does not sign: its restart is not guarded.
        assert!(run(2).status.success());
    }

    #[test]
    fn ca_bundles_carry_their_key_and_the_signing_ca_warns_on_more_than_one_certificate() {
        use crate::material::validate::{Check, Status};
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path();
        control_plane(root);
        let pki = root.join("etc/kubernetes/pki");
        let (config, _) = load(Profile::Kubeadm, root, None).expect("profile");
        let ca_bundle = |name: &str| {
            config
                .bundles
                .iter()
                .find(|b| b.name == name)
                .map(|b| (b.files(), b.signing))
        };
        assert_eq!(
            ca_bundle("kubernetes-ca"),
            Some((vec![pki.join("ca.crt"), pki.join("ca.key")], true))
        );
        assert_eq!(
            ca_bundle("etcd-ca"),
            Some((
                vec![pki.join("etcd/ca.crt"), pki.join("etcd/ca.key")],
                false
            ))
        );
        let status = |report: &crate::material::validate::Report, check: Check| {
            report
                .results
                .iter()
                .find(|r| r.check == check)
                .map(|r| r.status)
        };
        let report = validate(&config, "kubernetes-ca");
        assert!(report.is_valid(), "{report:#?}");
        assert_eq!(status(&report, Check::KeyMatch), Some(Status::Pass));
        assert_eq!(status(&report, Check::SingleCert), Some(Status::Pass));

        // ca.key of another CA: rejected.
        let original_key = std::fs::read(pki.join("ca.key")).expect("read");
        std::fs::write(
            pki.join("ca.key"),
            KeyPair::generate().expect("key").serialize_pem(),
        )
        .expect("write");
        let report = validate(&config, "kubernetes-ca");
        assert_eq!(
            report.failure().map(|f| f.check),
            Some(Check::KeyMatch),
            "{report:#?}"
        );
        std::fs::write(pki.join("ca.key"), original_key).expect("write");

        // Old and new CA in ca.crt: accepted (the client-CA rotation needs it), with a warning.
        let other = ca(&pki, "next-ca.crt");
        drop(other);
        let both = format!(
            "{}{}",
            std::fs::read_to_string(pki.join("ca.crt")).expect("read"),
            std::fs::read_to_string(pki.join("next-ca.crt")).expect("read")
        );
        std::fs::write(pki.join("ca.crt"), both).expect("write");
        let report = validate(&config, "kubernetes-ca");
        assert!(report.is_valid(), "{report:#?}");
        assert_eq!(status(&report, Check::SingleCert), Some(Status::Warn));
        // etcd's CA is not a signer's file: several certificates are just a bundle there.
        let etcd = std::fs::read_to_string(pki.join("etcd/ca.crt")).expect("read");
        std::fs::write(pki.join("etcd/ca.crt"), format!("{etcd}{etcd}")).expect("write");
        let report = validate(&config, "etcd-ca");
        assert_eq!(report.warnings().count(), 0, "{report:#?}");
    }
}
