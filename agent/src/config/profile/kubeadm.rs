//! The kubeadm profile as data: every kubeadm PKI file and control-plane kubeconfig as a bundle,
//! a probe for every control-plane endpoint with the check that can tell, and the restart actions
//! (off by default) for what a component cannot reload. What depends on the node (the kubelet's
//! serving certificate, etcd's peer address, the JWKS probe's identity) is decided in code around
//! the tables.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use super::{
    kubelet::{self, KubeletServing},
    writer::{Bundle, Check, Probe, Trigger, Writer},
    Generated, KubeadmSettings, KUBEADM_AUDIT,
};

/// kubeadm's admin kubeconfig (client certificate of the `kubeadm:cluster-admins` group).
pub(super) const ADMIN_CONF: &str = "etc/kubernetes/admin.conf";

/// The bundle the profile makes of `admin.conf` when the JWKS probe reads with it.
pub(super) const ADMIN_KUBECONFIG: &str = "admin-kubeconfig";

/// The cluster CA's certificate: also kube-controller-manager's `--cluster-signing-cert-file`.
const CLUSTER_CA: &str = "etc/kubernetes/pki/ca.crt";

/// etcd's peer certificate, whose SANs name the node address etcd's peer port listens on.
const ETCD_PEER_CERT: &str = "etc/kubernetes/pki/etcd/peer.crt";

/// The control plane's bundles, in the order they are written. ca.crt is also
/// kube-controller-manager's --cluster-signing-cert-file (with ca.key), hence `signing` and the
/// key check; a CA's key is written only where the node has it.
const CONTROL_PLANE_BUNDLES: [Bundle<'static>; 13] = [
    // Cluster CA and the API server's material.
    Bundle {
        name: "kubernetes-ca",
        kind: "ca",
        fields: &[("cert", CLUSTER_CA)],
        optional: &[("key", "etc/kubernetes/pki/ca.key")],
        settings: &["signing = true"],
    },
    Bundle::of(
        "apiserver",
        "server",
        &[
            ("cert", "etc/kubernetes/pki/apiserver.crt"),
            ("key", "etc/kubernetes/pki/apiserver.key"),
            ("ca", CLUSTER_CA),
        ],
    ),
    Bundle::of(
        "apiserver-kubelet-client",
        "client",
        &[
            ("cert", "etc/kubernetes/pki/apiserver-kubelet-client.crt"),
            ("key", "etc/kubernetes/pki/apiserver-kubelet-client.key"),
            ("ca", CLUSTER_CA),
        ],
    ),
    Bundle::of(
        "apiserver-etcd-client",
        "client",
        &[
            ("cert", "etc/kubernetes/pki/apiserver-etcd-client.crt"),
            ("key", "etc/kubernetes/pki/apiserver-etcd-client.key"),
            ("ca", "etc/kubernetes/pki/etcd/ca.crt"),
        ],
    ),
    Bundle {
        name: "front-proxy-ca",
        kind: "ca",
        fields: &[("cert", "etc/kubernetes/pki/front-proxy-ca.crt")],
        optional: &[("key", "etc/kubernetes/pki/front-proxy-ca.key")],
        settings: &[],
    },
    Bundle::of(
        "front-proxy-client",
        "client",
        &[
            ("cert", "etc/kubernetes/pki/front-proxy-client.crt"),
            ("key", "etc/kubernetes/pki/front-proxy-client.key"),
            ("ca", "etc/kubernetes/pki/front-proxy-ca.crt"),
        ],
    ),
    Bundle::of(
        "sa",
        "sa-keys",
        &[
            ("private_key", "etc/kubernetes/pki/sa.key"),
            ("public_keys", "etc/kubernetes/pki/sa.pub"),
        ],
    ),
    // etcd.
    Bundle {
        name: "etcd-ca",
        kind: "ca",
        fields: &[("cert", "etc/kubernetes/pki/etcd/ca.crt")],
        optional: &[("key", "etc/kubernetes/pki/etcd/ca.key")],
        settings: &[],
    },
    Bundle::of(
        "etcd-server",
        "server",
        &[
            ("cert", "etc/kubernetes/pki/etcd/server.crt"),
            ("key", "etc/kubernetes/pki/etcd/server.key"),
            ("ca", "etc/kubernetes/pki/etcd/ca.crt"),
        ],
    ),
    Bundle::of(
        "etcd-peer",
        "server",
        &[
            ("cert", ETCD_PEER_CERT),
            ("key", "etc/kubernetes/pki/etcd/peer.key"),
            ("ca", "etc/kubernetes/pki/etcd/ca.crt"),
        ],
    ),
    Bundle::of(
        "etcd-healthcheck-client",
        "client",
        &[
            ("cert", "etc/kubernetes/pki/etcd/healthcheck-client.crt"),
            ("key", "etc/kubernetes/pki/etcd/healthcheck-client.key"),
            ("ca", "etc/kubernetes/pki/etcd/ca.crt"),
        ],
    ),
    // The control-plane components' kubeconfigs: client certificates embedded, read once.
    Bundle::of(
        "controller-manager-kubeconfig",
        "kubeconfig",
        &[("file", "etc/kubernetes/controller-manager.conf")],
    ),
    Bundle::of(
        "scheduler-kubeconfig",
        "kubeconfig",
        &[("file", "etc/kubernetes/scheduler.conf")],
    ),
];

/// The bundle of `admin.conf`, written when the JWKS probe reads with it.
const ADMIN_BUNDLE: Bundle<'static> =
    Bundle::of(ADMIN_KUBECONFIG, "kubeconfig", &[("file", ADMIN_CONF)]);

/// The kubelet's client certificate (cert and key in one rotating file).
const KUBELET_CLIENT_BUNDLE: Bundle<'static> = Bundle::of(
    "kubelet-client",
    "client",
    &[
        ("cert", "var/lib/kubelet/pki/kubelet-client-current.pem"),
        ("key", "var/lib/kubelet/pki/kubelet-client-current.pem"),
        ("ca", CLUSTER_CA),
    ],
);

/// The kubelet's serving bundle for each way it can serve (in the kubelet's `--cert-dir`).
const KUBELET_BOOTSTRAP_BUNDLE: Bundle<'static> = Bundle {
    name: "kubelet-serving",
    kind: "server",
    fields: &[
        ("cert", "var/lib/kubelet/pki/kubelet-server-current.pem"),
        ("key", "var/lib/kubelet/pki/kubelet-server-current.pem"),
    ],
    // Signed by the cluster signer (kube-controller-manager's ca.crt/ca.key).
    optional: &[("ca", CLUSTER_CA)],
    settings: &[],
};
const KUBELET_DEFAULT_BUNDLE: Bundle<'static> = Bundle::of(
    "kubelet-serving",
    "server",
    &[
        ("cert", "var/lib/kubelet/pki/kubelet.crt"),
        ("key", "var/lib/kubelet/pki/kubelet.key"),
    ],
);

/// Where a probe connects.
#[derive(Debug, Clone, Copy)]
enum Endpoint {
    /// A fixed address (the control plane listens on loopback).
    Fixed(&'static str),
    /// The node's address from etcd's peer certificate, at this port (etcd's peer port listens on
    /// the node address, not on loopback).
    EtcdPeerIp(u16),
}

/// One probe of the table: a [`Probe`] whose endpoint may depend on the node.
struct ProbeRow {
    endpoint: Endpoint,
    probe: Probe<'static>,
}

/// A table row (the `endpoint` of `probe` is filled in from `endpoint`).
const fn row(
    name: &'static str,
    endpoint: Endpoint,
    server_name: &'static str,
    bundle: &'static str,
    client: Option<&'static str>,
    check: Check<'static>,
    deadline_s: u64,
) -> ProbeRow {
    ProbeRow {
        endpoint,
        probe: Probe {
            name,
            endpoint: "",
            server_name,
            bundle,
            client,
            check,
            deadline: Duration::from_secs(deadline_s),
            bearer: None,
        },
    }
}

// Probe deadlines: the Kubernetes servers reload files on fsnotify and re-check every minute
// (DynamicFileCAContent, DynamicCertKeyPairContent), so 90 s; the scheduler gets its client CA
// from the extension-apiserver-authentication ConfigMap (apiserver reload, then the ConfigMap
// controller's 1-minute poll), so 150 s. etcd re-reads its certificate per handshake.
/// The probes, in order: every control-plane endpoint serves its current certificate (the
/// first four), and trusts the current client CAs (the rest). The Kubernetes servers accept any
/// client certificate in the handshake and refuse an untrusted one per request with 401, so one
/// HTTP request tells; etcd refuses it in the handshake. controller-manager and scheduler serve
/// in-memory self-signed certificates under kubeadm, so their client-CA trust is what can be
/// checked.
const PROBES: [ProbeRow; 8] = {
    use Endpoint::{EtcdPeerIp, Fixed};
    const ETCD_CLIENT: Option<&str> = Some("etcd-healthcheck-client");
    const KUBELET_CLIENT: Option<&str> = Some("apiserver-kubelet-client");
    [
        row(
            "kube-apiserver",
            Fixed("127.0.0.1:6443"),
            "kubernetes",
            "apiserver",
            None,
            Check::Tls,
            90,
        ),
        row(
            "etcd-client",
            Fixed("127.0.0.1:2379"),
            "localhost",
            "etcd-server",
            ETCD_CLIENT,
            Check::Tls,
            60,
        ),
        row(
            "etcd-peer",
            EtcdPeerIp(2380),
            "localhost",
            "etcd-peer",
            ETCD_CLIENT,
            Check::Tls,
            60,
        ),
        row(
            "kubelet",
            Fixed("127.0.0.1:10250"),
            "localhost",
            "kubelet-serving",
            None,
            Check::Tls,
            90,
        ),
        row(
            "kube-apiserver-client-ca",
            Fixed("127.0.0.1:6443"),
            "kubernetes",
            "kubernetes-ca",
            KUBELET_CLIENT,
            Check::Http("POST /apis/authentication.k8s.io/v1/selfsubjectreviews"),
            90,
        ),
        row(
            "kube-controller-manager-client-ca",
            Fixed("127.0.0.1:10257"),
            "localhost",
            "kubernetes-ca",
            KUBELET_CLIENT,
            Check::Http("GET /healthz"),
            90,
        ),
        row(
            "kube-scheduler-client-ca",
            Fixed("127.0.0.1:10259"),
            "localhost",
            "kubernetes-ca",
            KUBELET_CLIENT,
            Check::Http("GET /healthz"),
            150,
        ),
        row(
            "etcd-client-ca",
            Fixed("127.0.0.1:2379"),
            "localhost",
            "etcd-ca",
            ETCD_CLIENT,
            Check::Tls,
            60,
        ),
    ]
};

/// The ServiceAccount keys the API server accepts (it reads them once): its JWKS must list every
/// key id of the `sa` bundle. `client` and `bearer` are the identity it reads with.
const JWKS_PROBE: Probe<'static> = Probe {
    name: "kube-apiserver-sa-keys",
    endpoint: "127.0.0.1:6443",
    server_name: "kubernetes",
    bundle: "sa",
    client: None,
    check: Check::Jwks,
    deadline: Duration::from_secs(120),
    bearer: None,
};

/// Every namespace's `kube-root-ca.crt` carries the cluster CA bundle: kube-controller-manager
/// publishes it from the `--root-ca-file` (pki/ca.crt) it read at start. Written where the
/// controller-manager runs (its kubeconfig is on the node), beside the restart action that
/// repairs it. The controller-manager never picks up a new root CA by itself, so the deadline
/// (the wait before its stale verdict runs the restart) is short: 60 s covers a CA bundle being
/// rewritten file by file and the publisher's rewrite of every namespace after a restart (its
/// leader election, its initial list, one write per namespace; ~18 s for 9 namespaces measured).
/// `cargo xtask bench propagation` measured the profile's former 180 s at 284.5 s from the CA
/// change to the last pod's `ca.crt`, against the seed's 300 s.
const ROOT_CA_PROBE: Probe<'static> = Probe {
    name: "kube-root-ca-configmaps",
    endpoint: "",
    server_name: "",
    bundle: "kubernetes-ca",
    client: None,
    check: Check::RootCaConfigMaps,
    deadline: Duration::from_secs(60),
    bearer: None,
};

/// The bundle whose presence says kube-controller-manager runs on this node.
const CONTROLLER_MANAGER_KUBECONFIG: &str = "controller-manager-kubeconfig";

/// kube-controller-manager's static-pod manifest: its `--cluster-signing-cert-file` is what the
/// restart guard counts certificates in.
const CONTROLLER_MANAGER_MANIFEST: &str = "etc/kubernetes/manifests/kube-controller-manager.yaml";

/// A control-plane component restarted by stopping its static pod's container.
#[derive(Debug, Clone, Copy)]
enum Component {
    Etcd,
    ApiServer,
    ControllerManager,
    Scheduler,
}

/// One restart action, off by default, only where the component cannot reload the material.
struct Action {
    name: &'static str,
    bundle: &'static str,
    on: Trigger<'static>,
    /// The comment above the action: what the component does not reload.
    why: &'static str,
    restart: Component,
}

/// The control plane's restart actions, in order.
const ACTIONS: [Action; 7] = [
    Action {
        name: "etcd-restart-on-stale-ca",
        bundle: "etcd-ca",
        on: Trigger::Stale,
        why: "etcd: --trusted-ca-file / --peer-trusted-ca-file are not reloaded",
        restart: Component::Etcd,
    },
    Action {
        name: "kube-apiserver-restart-on-etcd-ca",
        bundle: "etcd-ca",
        on: Trigger::Accepted,
        why: "kube-apiserver: --etcd-cafile is not reloaded",
        restart: Component::ApiServer,
    },
    Action {
        name: "kube-apiserver-restart-on-sa-keys",
        bundle: "sa",
        on: Trigger::Accepted,
        why: "kube-apiserver: --service-account-key-file / --service-account-signing-key-file are not reloaded",
        restart: Component::ApiServer,
    },
    Action {
        name: "kube-controller-manager-restart-on-sa-keys",
        bundle: "sa",
        on: Trigger::Accepted,
        why: "kube-controller-manager: --service-account-private-key-file is not reloaded",
        restart: Component::ControllerManager,
    },
    Action {
        name: "kube-controller-manager-restart-on-root-ca",
        bundle: "kubernetes-ca",
        on: Trigger::StaleProbe(ROOT_CA_PROBE.name),
        why: "kube-controller-manager: --root-ca-file is read once; the kube-root-ca.crt ConfigMaps take a new CA only after a restart (on the kube-root-ca-configmaps probe's stale verdict; writing them directly is reverted by its root-CA publisher)",
        restart: Component::ControllerManager,
    },
    Action {
        name: "kube-controller-manager-restart-on-kubeconfig",
        bundle: "controller-manager-kubeconfig",
        on: Trigger::Accepted,
        why: "kube-controller-manager: the client certificate embedded in controller-manager.conf is read once",
        restart: Component::ControllerManager,
    },
    Action {
        name: "kube-scheduler-restart-on-kubeconfig",
        bundle: "scheduler-kubeconfig",
        on: Trigger::Accepted,
        why: "kube-scheduler: the client certificate embedded in scheduler.conf is read once",
        restart: Component::Scheduler,
    },
];

/// Generates the kubeadm profile for the host whose filesystem is at `root` (`/` normally).
#[cfg(test)]
pub(crate) fn kubeadm(root: &Path, settings: &KubeadmSettings) -> Generated {
    kubeadm_with(root, settings, Path::new(super::SERVICE_ACCOUNT_TOKEN))
}

/// [`kubeadm`], with the agent's own ServiceAccount token looked for at `own_token`.
pub(super) fn kubeadm_with(root: &Path, settings: &KubeadmSettings, own_token: &Path) -> Generated {
    let mut w = Writer::new(root, KUBEADM_AUDIT);
    for bundle in &CONTROL_PLANE_BUNDLES {
        w.bundle(bundle);
    }
    // The identity that reads the API server's JWKS (the sa-keys probe below).
    let (jwks_identity, why) = jwks_credential(root, own_token);
    w.skipped.push(why);
    if jwks_identity == JwksCredential::AdminConf {
        w.bundle(&ADMIN_BUNDLE);
    }
    // kubelet: the serving certificate it really serves (from its config.yaml), and its client
    // certificate.
    let kubelet = kubelet::kubelet_serving(root);
    w.skipped.push(kubelet.why.clone());
    kubelet_serving_bundle(&mut w, kubelet.serving.as_ref());
    w.bundle(&KUBELET_CLIENT_BUNDLE);

    probes(&mut w, &jwks_identity);
    root_ca_probe(&mut w, own_token);
    control_plane_actions(&mut w);
    match kubelet::restart_needed(&kubelet, settings) {
        Some(Ok(why)) => w.action(
            "kubelet-restart-on-stale-serving",
            "kubelet-serving",
            Trigger::Stale,
            why,
            &["systemctl".into(), "restart".into(), "kubelet".into()],
        ),
        Some(Err(line)) => w.skipped.push(line.into()),
        None => {}
    }
    super::sa_keys::sa_keys(&mut w);
    super::pod_tokens::pod_tokens(&mut w);
    Generated {
        toml: w.out,
        skipped: w.skipped,
    }
}

/// Writes `kubelet-serving` as the kubelet serves it (nothing when that is unknown).
fn kubelet_serving_bundle(w: &mut Writer<'_>, serving: Option<&KubeletServing>) {
    match serving {
        Some(KubeletServing::Bootstrap) => w.bundle(&KUBELET_BOOTSTRAP_BUNDLE),
        Some(KubeletServing::Files { cert, key }) => {
            // The paths config.yaml names.
            w.bundle(&Bundle::of(
                "kubelet-serving",
                "server",
                &[("cert", cert), ("key", key)],
            ));
        }
        Some(KubeletServing::Default) => w.bundle(&KUBELET_DEFAULT_BUNDLE),
        None => {}
    }
}

/// Writes the probe table, then the JWKS probe read as `identity`.
fn probes(w: &mut Writer<'_>, identity: &JwksCredential) {
    let peer_ip = etcd_peer_ip(&w.path(ETCD_PEER_CERT));
    for ProbeRow { endpoint, probe } in &PROBES {
        let endpoint = match (*endpoint, peer_ip) {
            (Endpoint::Fixed(addr), _) => addr.to_string(),
            (Endpoint::EtcdPeerIp(port), Some(ip)) => SocketAddr::new(ip, port).to_string(),
            (Endpoint::EtcdPeerIp(_), None) => {
                w.skipped.push(format!(
                    "probe {}: no node IP in etcd/peer.crt, skipped",
                    probe.name
                ));
                continue;
            }
        };
        w.probe(&Probe {
            endpoint: &endpoint,
            ..*probe
        });
    }
    match identity {
        JwksCredential::OwnToken(token) => w.probe(&Probe {
            bearer: Some(token),
            ..JWKS_PROBE
        }),
        JwksCredential::AdminConf => w.probe(&Probe {
            client: Some(ADMIN_KUBECONFIG),
            ..JWKS_PROBE
        }),
        JwksCredential::None => {}
    }
}

/// Writes the root-CA probe where kube-controller-manager runs and the agent has Kubernetes API
/// credentials (what its client reads: `KUBECONFIG`, `~/.kube/config`, or its ServiceAccount
/// token in a pod). Without them every check would be unknown and, at the deadline, a stale
/// verdict that restarts the controller-manager for nothing.
fn root_ca_probe(w: &mut Writer<'_>, own_token: &Path) {
    let name = ROOT_CA_PROBE.name;
    if !w.has(CONTROLLER_MANAGER_KUBECONFIG) {
        w.skipped.push(format!(
            "probe {name}: kube-controller-manager does not run on this node (no {CONTROLLER_MANAGER_KUBECONFIG}), skipped"
        ));
        return;
    }
    let kubeconfig = std::env::var_os("KUBECONFIG")
        .filter(|k| !k.is_empty())
        .map(|k| format!("KUBECONFIG={}", Path::new(&k).display()))
        .or_else(|| {
            let home = PathBuf::from(std::env::var_os("HOME")?).join(".kube/config");
            home.is_file().then(|| home.display().to_string())
        });
    let credentials = kubeconfig.or_else(|| {
        own_token
            .is_file()
            .then(|| format!("the ServiceAccount token {}", own_token.display()))
    });
    match credentials {
        Some(c) => {
            w.skipped.push(format!(
                "probe {name}: reads the namespaces' kube-root-ca.crt through the Kubernetes API with {c}"
            ));
            w.probe(&ROOT_CA_PROBE);
        }
        None => w.skipped.push(format!(
            "probe {name}: no Kubernetes credentials (no KUBECONFIG, no ~/.kube/config, no ServiceAccount token at {}): nothing can read the namespaces, skipped",
            own_token.display()
        )),
    }
}

/// Writes the control plane's restart actions (each only where its bundle was written).
fn control_plane_actions(w: &mut Writer<'_>) {
    let stop_kcm = if w.has("kubernetes-ca") {
        kcm_stop_guarded(w.root, &w.path(CLUSTER_CA))
    } else {
        crictl_stop("kube-controller-manager")
    };
    for action in &ACTIONS {
        let argv = match action.restart {
            Component::Etcd => crictl_stop("etcd"),
            Component::ApiServer => crictl_stop("kube-apiserver"),
            Component::ControllerManager => stop_kcm.clone(),
            Component::Scheduler => crictl_stop("kube-scheduler"),
        };
        w.action(action.name, action.bundle, action.on, action.why, &argv);
    }
}

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
/// so the restart would turn a warning into a crash loop. The file is the one the manifest names
/// when the restart runs (`default_cert` when it names none): an operator who rotates the cluster
/// CA as upstream documents it points `--cluster-signing-cert-file` at the one signing CA and
/// leaves `--root-ca-file` (ca.crt) with old and new, and then the restart is allowed.
fn kcm_stop_guarded(root: &Path, default_cert: &Path) -> Vec<String> {
    let manifest = shell_quote(&root.join(CONTROLLER_MANAGER_MANIFEST));
    let default = shell_quote(default_cert);
    // Paths in the manifest are the node's; the agent sees the node under `root`.
    let prefix = shell_quote(Path::new(
        root.to_str().unwrap_or_default().trim_end_matches('/'),
    ));
    let mut argv = crictl_stop("kube-controller-manager");
    argv[2] = format!(
        "f=$(sed -n 's/^[[:space:]]*-[[:space:]]*--cluster-signing-cert-file=\\([^[:space:]]*\\)[[:space:]]*$/\\1/p' {manifest} 2>/dev/null | head -n 1); if [ -n \"$f\" ]; then f={prefix}\"$f\"; else f={default}; fi; n=$(grep -c -- '-----BEGIN CERTIFICATE-----' \"$f\"); if [ \"$n\" != 1 ]; then echo \"not restarting kube-controller-manager: $f holds $n certificates and its CSR signer would not start\" >&2; exit 1; fi; {}",
        argv[2]
    );
    argv
}

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
