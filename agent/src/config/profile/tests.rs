//! The profile against node layouts built in a temporary directory: what is generated, what is
//! skipped, and that the result validates.

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

use super::{
    kubeadm::{ADMIN_CONF, ADMIN_KUBECONFIG},
    kubelet::{KUBELET_CONFIG, KUBELET_PKI},
    *,
};

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
    let manifest = include_str!("../../../../deploy/configmap.yaml");
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
        let mut base: Table =
            toml::from_str(&kubeadm(root, &KubeadmSettings::default()).toml).expect("profile toml");
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
        why.contains("not in a pod") && why.contains(&root.join(ADMIN_CONF).display().to_string()),
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
    // Without credentials the root-CA probe is not written, nor the restart that runs on it.
    let (_, lines) = load(Profile::Kubeadm, root, None).expect("profile");
    assert!(
        lines.iter().any(|l| l.starts_with(&format!(
            "action {}: runs on probe kube-root-ca-configmaps",
            actions[0]
        ))),
        "{lines:#?}"
    );
    // With the agent's own ServiceAccount token (in its pod, outside the host root).
    let token = tmp.path().join("pod/serviceaccount/token");
    std::fs::create_dir_all(token.parent().expect("dir")).expect("mkdir");
    std::fs::write(&token, "pod-token").expect("write");
    let (config, _) = load_with(Profile::Kubeadm, root, Some(&file), &token).expect("profile");
    let got: Vec<_> = config
        .actions
        .iter()
        .map(|a| (a.id(), a.bundle.clone(), a.on))
        .collect();
    // Only the root-CA probe's stale verdicts run it, not another kubernetes-ca probe's.
    assert_eq!(
        config.actions[0].probe.as_deref(),
        Some("kube-root-ca-configmaps")
    );
    use crate::config::ActionTrigger::{Accepted, Stale};
    assert_eq!(
        got,
        [
            // On the kube-root-ca-configmaps probe's stale verdict.
            (actions[0].into(), "kubernetes-ca".into(), Stale),
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

    // The rotation as upstream documents it: the manifest points --cluster-signing-cert-file at
    // the one signing CA, ca.crt (--root-ca-file) holds old and new: the restart is allowed, and
    // refused again when the file the manifest names holds two.
    let manifests = root.join("etc/kubernetes/manifests");
    std::fs::create_dir_all(&manifests).expect("mkdir");
    std::fs::write(root.join("etc/kubernetes/pki/ca-signing.crt"), &one).expect("write");
    std::fs::write(
        manifests.join("kube-controller-manager.yaml"),
        "spec:\n  containers:\n  - command:\n    - kube-controller-manager\n    - --cluster-signing-cert-file=/etc/kubernetes/pki/ca-signing.crt\n    - --root-ca-file=/etc/kubernetes/pki/ca.crt\n",
    )
    .expect("write");
    let out = run(0);
    assert!(out.status.success(), "{out:?}");
    assert!(std::fs::read_to_string(&calls)
        .expect("crictl called")
        .contains("stop --timeout 30 c0ffee"));
    std::fs::remove_file(&calls).expect("rm");
    std::fs::write(
        root.join("etc/kubernetes/pki/ca-signing.crt"),
        format!("{one}{one}"),
    )
    .expect("write");
    let out = run(0);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ca-signing.crt holds 2 certificates"),
        "{out:?}"
    );
    assert!(!calls.exists(), "crictl must not be called");
}

#[test]
fn the_root_ca_probe_and_its_restart_action_are_written_where_the_controller_manager_runs() {
    const PROBE: &str = "kube-root-ca-configmaps";
    const ACTION: &str = "kube-controller-manager-restart-on-root-ca";
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = &tmp.path().join("host");
    control_plane(root);
    // In a pod: the agent's own ServiceAccount token is its Kubernetes credential.
    let token = tmp.path().join("pod/serviceaccount/token");
    std::fs::create_dir_all(token.parent().expect("dir")).expect("mkdir");
    std::fs::write(&token, "pod-token").expect("write");
    let (config, lines) = load_with(Profile::Kubeadm, root, None, &token).expect("profile");
    let p = config
        .probes
        .iter()
        .find(|p| p.name == PROBE)
        .expect("the root-CA probe on a control-plane node");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("probe {PROBE}:"))
                && l.contains(&token.display().to_string())),
        "{lines:?}"
    );
    assert_eq!(
        (p.bundle.as_str(), p.check.name(), p.deadline.as_secs()),
        ("kubernetes-ca", "root-ca-configmaps", 60)
    );
    assert_eq!(p.endpoint, "*/kube-root-ca.crt");
    assert_eq!(p.client_bundle, None);
    // Enabled by name, it restarts the controller-manager on that probe's stale verdict, one
    // control-plane node at a time.
    let file = overlay(
        root,
        &format!("[[action]]\nname = \"{ACTION}\"\nenabled = true\n"),
    );
    let (config, _) = load_with(Profile::Kubeadm, root, Some(&file), &token).expect("profile");
    let a = &config.actions[0];
    assert_eq!(
        (a.id(), a.bundle.as_str(), a.on),
        (
            ACTION.to_string(),
            "kubernetes-ca",
            crate::config::ActionTrigger::Stale
        )
    );
    assert_eq!(
        a.lock.as_ref().map(|l| l.name.as_str()),
        Some("kube-controller-manager")
    );

    // No Kubernetes credentials (outside a pod, no kubeconfig): every check would be unknown,
    // and stale at the deadline, restarting the controller-manager for nothing: left out.
    let home_config =
        std::env::var_os("HOME").is_some_and(|h| Path::new(&h).join(".kube/config").is_file());
    if std::env::var_os("KUBECONFIG").is_none() && !home_config {
        std::fs::remove_file(&token).expect("rm");
        let (config, lines) = load_with(Profile::Kubeadm, root, None, &token).expect("profile");
        assert!(!config.probes.iter().any(|p| p.name == PROBE));
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&format!("probe {PROBE}:"))
                    && l.contains("no Kubernetes credentials")),
            "{lines:?}"
        );
        std::fs::write(&token, "pod-token").expect("write");
    }

    // A worker: the cluster CA is there, the controller-manager's kubeconfig is not.
    std::fs::remove_file(root.join("etc/kubernetes/controller-manager.conf")).expect("rm");
    let (config, lines) = load_with(Profile::Kubeadm, root, None, &token).expect("profile");
    assert!(config.bundles.iter().any(|b| b.name == "kubernetes-ca"));
    assert!(!config.probes.iter().any(|p| p.name == PROBE));
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("probe {PROBE}:")) && l.contains("does not run")),
        "{lines:?}"
    );
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
