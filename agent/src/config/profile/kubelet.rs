//! The kubelet's side of the kubeadm profile: which serving certificate it really serves (read
//! from its `config.yaml` as the kubelet decides it) and whether a restart is the only way to make
//! it serve a new one.

use std::{collections::BTreeMap, path::Path};

use serde::Deserialize;

use super::KubeadmSettings;
use crate::material::read::{read_material, ReadError, DEFAULT_MAX_FILE_SIZE};

/// Where the kubelet's configuration file is under kubeadm.
pub(super) const KUBELET_CONFIG: &str = "var/lib/kubelet/config.yaml";
/// The kubelet's certificate directory (`--cert-dir` default, which kubeadm keeps).
pub(super) const KUBELET_PKI: &str = "var/lib/kubelet/pki";

/// The last kubelet minor release that cannot reload its serving certificate from disk
/// (`ReloadKubeletServerCertificateFile` is beta and on by default from 1.31).
const LAST_KUBELET_WITHOUT_SERVING_RELOAD: (u32, u32) = (1, 30);

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
pub(super) enum KubeletServing {
    /// `serverTLSBootstrap: true`: the kubelet's certificate manager requests the certificate
    /// from the cluster signer, rotates it and serves it from memory (`kubelet-server-current.pem`,
    /// cert and key in one file). A restart never helps: the kubelet reloads it itself.
    Bootstrap,
    /// `tlsCertFile`/`tlsPrivateKeyFile` (host paths, relative to the host root).
    Files { cert: String, key: String },
    /// Neither: `kubelet.crt`/`kubelet.key` in the certificate directory (self-signed, generated
    /// by the kubelet when missing).
    Default,
}

/// What `config.yaml` says: the serving certificate (None when it cannot tell), the explicit
/// `ReloadKubeletServerCertificateFile` gate, and the line saying which was chosen and why.
pub(super) struct ServingDecision {
    pub(super) serving: Option<KubeletServing>,
    pub(super) reload_gate: Option<bool>,
    pub(super) why: String,
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
pub(super) fn kubelet_serving(root: &Path) -> ServingDecision {
    let file = root.join(KUBELET_CONFIG);
    match read_config(&file) {
        Ok(config) => serving_of(&file, config),
        Err(decision) => decision,
    }
}

/// The parsed config file, or the decision when there is none to read.
fn read_config(file: &Path) -> Result<KubeletConfig, ServingDecision> {
    let unknown = |why: String| ServingDecision {
        serving: None,
        reload_gate: None,
        why,
    };
    // Non-blocking, regular files only: a FIFO at the path must not hang the profile's loading.
    match read_material(file, DEFAULT_MAX_FILE_SIZE) {
        Ok(bytes) => serde_saphyr::from_slice::<KubeletConfig>(&bytes).map_err(|e| {
            let at = e
                .location()
                .map(|l| format!(" at line {}, column {}", l.line(), l.column()))
                .unwrap_or_default();
            unknown(format!(
                "bundle kubelet-serving: {} is not a KubeletConfiguration (YAML error{at}), skipped: which certificate the kubelet serves is unknown",
                file.display()
            ))
        }),
        Err(ReadError::NotFound { .. }) => Err(ServingDecision {
            serving: Some(KubeletServing::Default),
            reload_gate: None,
            why: format!(
                "bundle kubelet-serving: no {}; the kubelet's default /{KUBELET_PKI}/kubelet.crt and kubelet.key",
                file.display()
            ),
        }),
        Err(e) => Err(unknown(format!(
            "bundle kubelet-serving: cannot read {e}; skipped"
        ))),
    }
}

/// What a parsed `config.yaml` makes the kubelet serve.
fn serving_of(file: &Path, config: KubeletConfig) -> ServingDecision {
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
    let decided = |serving, why| ServingDecision {
        serving: Some(serving),
        reload_gate,
        why,
    };
    if config.server_tls_bootstrap && rotation {
        return decided(
            KubeletServing::Bootstrap,
            format!(
                "bundle kubelet-serving: {} has serverTLSBootstrap: true, so the kubelet serves /{KUBELET_PKI}/kubelet-server-current.pem (rotated and reloaded by the kubelet; no restart action)",
                file.display()
            ),
        );
    }
    match (config.tls_cert_file, config.tls_private_key_file) {
        (Some(cert), Some(key)) if !cert.is_empty() && !key.is_empty() => {
            let why = format!(
                "bundle kubelet-serving: {} sets tlsCertFile {cert} and tlsPrivateKeyFile {key}",
                file.display()
            );
            decided(
                KubeletServing::Files {
                    cert: kubelet_path(&cert),
                    key: kubelet_path(&key),
                },
                why,
            )
        }
        (None, None) => decided(
            KubeletServing::Default,
            format!(
                "bundle kubelet-serving: {} sets neither tlsCertFile nor serverTLSBootstrap; the kubelet's default /{KUBELET_PKI}/kubelet.crt and kubelet.key",
                file.display()
            ),
        ),
        _ => ServingDecision {
            serving: None,
            reload_gate: None,
            why: format!(
                "bundle kubelet-serving: {} sets only one of tlsCertFile and tlsPrivateKeyFile (the kubelet needs both), skipped",
                file.display()
            ),
        },
    }
}

/// Whether the kubelet needs `kubelet-restart-on-stale-serving`: `Ok(why)` for the action's
/// comment, `Err(line)` for the line saying why it is not generated, `None` when there is no
/// serving bundle to act on. The kubelet reloads its serving certificate from 1.31
/// (ReloadKubeletServerCertificateFile, on by default) and never needs a restart with
/// serverTLSBootstrap (a restart there would loop: the stale kubelet.crt it would be compared
/// with is not what it serves).
pub(super) fn restart_needed(
    decision: &ServingDecision,
    settings: &KubeadmSettings,
) -> Option<Result<&'static str, &'static str>> {
    let old_kubelet = settings
        .kubelet_version
        .is_some_and(|v| v <= LAST_KUBELET_WITHOUT_SERVING_RELOAD);
    let gate_off = decision.reload_gate == Some(false);
    match (&decision.serving, old_kubelet || gate_off) {
        (Some(KubeletServing::Bootstrap), _) => Some(Err(
            "action kubelet-restart-on-stale-serving: not generated: with serverTLSBootstrap the kubelet rotates and reloads its serving certificate itself",
        )),
        (Some(_), true) => Some(Ok(if gate_off {
            "kubelet: ReloadKubeletServerCertificateFile is off in config.yaml, so tlsCertFile / kubelet.crt is not reloaded"
        } else {
            "kubelet <= 1.30 ([profile] kubelet_version): tlsCertFile / kubelet.crt is not reloaded"
        })),
        (Some(_), false) => Some(Err(
            "action kubelet-restart-on-stale-serving: not generated: a kubelet >= 1.31 reloads its serving certificate (for an older kubelet set [profile] kubelet_version = \"1.30\" in the config file)",
        )),
        (None, _) => None,
    }
}
