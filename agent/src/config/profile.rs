//! Built-in profiles: a whole configuration for a standard node layout, which a config file may
//! extend or override (tables key by key; bundles, probes, listeners and actions by name).
//!
//! `kubeadm` follows the seed document's component table row by row: every kubeadm PKI file as a
//! bundle, a probe for every control-plane TLS endpoint, and reload actions (off by default) only
//! where the table says the component cannot reload that material.

use std::{
    fmt::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
};

use toml::{Table, Value};

use super::{Config, ConfigError};

/// A built-in profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    /// The kubeadm layout under /etc/kubernetes/pki and /var/lib/kubelet/pki.
    Kubeadm,
}

/// The generated profile: TOML text, and one line per file skipped because it is missing.
#[derive(Debug, Clone)]
pub struct Generated {
    /// Configuration text.
    pub toml: String,
    /// Human lines: what was left out and why.
    pub skipped: Vec<String>,
}

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

impl Writer<'_> {
    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Adds a bundle if every one of `files` exists; otherwise records one skip line.
    fn bundle(&mut self, name: &'static str, kind: &str, fields: &[(&str, &str)]) {
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
        for (field, rel) in fields {
            if *field == "public_keys" {
                let _ = writeln!(self.out, "public_keys = [{:?}]", self.path(rel));
            } else {
                let _ = writeln!(self.out, "{field} = {:?}", self.path(rel));
            }
        }
        self.bundles.push(name);
    }

    fn has(&self, bundle: &str) -> bool {
        self.bundles.contains(&bundle)
    }

    /// Adds a probe when its bundles are present.
    fn probe(
        &mut self,
        name: &str,
        endpoint: &str,
        server_name: &str,
        bundle: &str,
        client: Option<&str>,
    ) {
        let missing = [Some(bundle), client]
            .into_iter()
            .flatten()
            .find(|b| !self.has(b));
        if let Some(b) = missing {
            self.skipped.push(format!(
                "probe {name}: bundle {b} is not on this node, skipped"
            ));
            return;
        }
        let _ = writeln!(
            self.out,
            "\n[[probe]]\nname = \"{name}\"\nendpoint = \"{endpoint}\"\nserver_name = \"{server_name}\"\nbundle = \"{bundle}\""
        );
        if let Some(c) = client {
            let _ = writeln!(self.out, "client_bundle = \"{c}\"");
        }
        let _ = writeln!(self.out, "deadline = \"60s\"\ninterval = \"30s\"");
    }

    /// Adds a disabled action (enable it by name from a config file).
    fn action(&mut self, name: &str, bundle: &str, on: &str, why: &str, argv: &[&str]) {
        if !self.has(bundle) {
            return;
        }
        let _ = writeln!(
            self.out,
            "\n# {why}\n[[action]]\nname = \"{name}\"\nenabled = false\nbundle = \"{bundle}\"\non = \"{on}\"\nexec = {argv:?}\ntimeout = \"120s\"\nmin_interval = \"10m\""
        );
    }
}

/// The node's first non-loopback IP in the etcd peer certificate (etcd's peer port listens on
/// the node address, not on loopback).
fn etcd_peer_ip(peer_cert: &Path) -> Option<IpAddr> {
    let bytes = std::fs::read(peer_cert).ok()?;
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

/// Generates the kubeadm profile for the host whose filesystem is at `root` (`/` normally).
pub fn kubeadm(root: &Path) -> Generated {
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
    // Cluster CA and the API server's material.
    w.bundle("kubernetes-ca", "ca", &[("cert", &p("ca.crt"))]);
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
    w.bundle(
        "front-proxy-ca",
        "ca",
        &[("cert", &p("front-proxy-ca.crt"))],
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
    w.bundle("etcd-ca", "ca", &[("cert", &p("etcd/ca.crt"))]);
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
    // kubelet: serving pair (self-signed unless serving-cert rotation is on) and its client
    // certificate (cert and key in one rotating file).
    w.bundle(
        "kubelet-serving",
        "server",
        &[
            ("cert", "var/lib/kubelet/pki/kubelet.crt"),
            ("key", "var/lib/kubelet/pki/kubelet.key"),
        ],
    );
    w.bundle(
        "kubelet-client",
        "client",
        &[
            ("cert", "var/lib/kubelet/pki/kubelet-client-current.pem"),
            ("key", "var/lib/kubelet/pki/kubelet-client-current.pem"),
            ("ca", &p("ca.crt")),
        ],
    );

    // Probes: every control-plane endpoint serves its current certificate...
    w.probe(
        "kube-apiserver",
        "127.0.0.1:6443",
        "kubernetes",
        "apiserver",
        None,
    );
    w.probe(
        "etcd-client",
        "127.0.0.1:2379",
        "localhost",
        "etcd-server",
        Some("etcd-healthcheck-client"),
    );
    match etcd_peer_ip(&w.path(&p("etcd/peer.crt"))) {
        Some(ip) => {
            let endpoint = match ip {
                IpAddr::V4(v4) => format!("{v4}:2380"),
                IpAddr::V6(v6) => format!("[{v6}]:2380"),
            };
            w.probe(
                "etcd-peer",
                &endpoint,
                "localhost",
                "etcd-peer",
                Some("etcd-healthcheck-client"),
            );
        }
        None => w
            .skipped
            .push("probe etcd-peer: no node IP in etcd/peer.crt, skipped".into()),
    }
    w.probe(
        "kubelet",
        "127.0.0.1:10250",
        "localhost",
        "kubelet-serving",
        None,
    );
    // ...and trusts the current client CAs (a client certificate from the current CA must be
    // accepted). controller-manager and scheduler serve in-memory self-signed certificates under
    // kubeadm, so their client-CA trust is what can be checked.
    w.probe(
        "kube-apiserver-client-ca",
        "127.0.0.1:6443",
        "kubernetes",
        "kubernetes-ca",
        Some("apiserver-kubelet-client"),
    );
    w.probe(
        "kube-controller-manager-client-ca",
        "127.0.0.1:10257",
        "localhost",
        "kubernetes-ca",
        Some("apiserver-kubelet-client"),
    );
    w.probe(
        "kube-scheduler-client-ca",
        "127.0.0.1:10259",
        "localhost",
        "kubernetes-ca",
        Some("apiserver-kubelet-client"),
    );
    w.probe(
        "etcd-client-ca",
        "127.0.0.1:2379",
        "localhost",
        "etcd-ca",
        Some("etcd-healthcheck-client"),
    );

    // Actions, off by default, only where the seed's table says "not supported".
    let stop_etcd = crictl_stop("etcd");
    let stop_apiserver = crictl_stop("kube-apiserver");
    let stop_kcm = crictl_stop("kube-controller-manager");
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
        "kubelet-restart-on-stale-serving",
        "kubelet-serving",
        "stale",
        "kubelet: --tls-cert-file / --tls-private-key-file are not reloaded",
        &["systemctl", "restart", "kubelet"],
    );
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

/// Overlays a config file on a profile: tables merge key by key; array entries with the name of a
/// profile entry replace it, others are added.
pub fn merge(base: &mut Table, overlay: Table) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(Value::Table(b)), Value::Table(o)) => merge(b, o),
            (Some(Value::Array(b)), Value::Array(o)) => {
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

/// The configuration for `profile` on the host at `root`, extended by `file` when given.
pub fn load(
    profile: Profile,
    root: &Path,
    file: Option<&Path>,
) -> Result<(Config, Vec<String>), ConfigError> {
    let Profile::Kubeadm = profile;
    let generated = kubeadm(root);
    let label = PathBuf::from("<kubeadm profile>");
    let syntax = |path: &Path, e: toml::de::Error| ConfigError::Syntax {
        path: path.to_path_buf(),
        message: e.to_string().trim_end().replace('\n', " "),
    };
    let mut base: Table = toml::from_str(&generated.toml).map_err(|e| syntax(&label, e))?;
    let path = match file {
        Some(f) => {
            let text = std::fs::read_to_string(f).map_err(|source| ConfigError::Io {
                path: f.to_path_buf(),
                source,
            })?;
            let overlay: Table = toml::from_str(&text).map_err(|e| syntax(f, e))?;
            merge(&mut base, overlay);
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
}
