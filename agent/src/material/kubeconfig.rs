//! The client material embedded in a kubeconfig (`client-certificate-data`, `client-key-data`,
//! `certificate-authority-data`): what kubeadm writes into `controller-manager.conf`,
//! `scheduler.conf` and `admin.conf`. The components read it once at start, so a renewed file is
//! only picked up by a restart; the gate validates it like a client pair.
//!
//! A kubeconfig holds a private key in the clear: no error here ever quotes the input, only the
//! field that is wrong and, for YAML errors, the line and column.

use base64::Engine;
use serde::Deserialize;
use thiserror::Error;

/// Why a kubeconfig does not yield embedded client material. Messages never quote the input.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum KubeconfigError {
    /// Not YAML of the kubeconfig shape (only the position is given: the text may hold a key).
    #[error("not a kubeconfig: YAML error at line {line}, column {column}")]
    Syntax {
        /// 1-based line.
        line: u64,
        /// 1-based column.
        column: u64,
    },
    /// No context to follow: `current-context` is unset and there is not exactly one context.
    #[error("no current-context, and {0} contexts to choose from")]
    NoContext(usize),
    /// A name that the kubeconfig refers to is not defined in it.
    #[error("{kind} {name:?} (named by context {context:?}) is not defined")]
    Undefined {
        /// `context`, `user` or `cluster`.
        kind: &'static str,
        /// The missing name.
        name: String,
        /// The context that refers to it.
        context: String,
    },
    /// The user has no embedded material for this field (absent, or a file reference instead).
    #[error("user {user:?} has no {field}{}", .file.as_ref().map(|f| format!(" (it refers to the file {f}: watch that file as a client bundle instead)")).unwrap_or_default())]
    NotEmbedded {
        /// The user entry.
        user: String,
        /// `client-certificate-data` or `client-key-data`.
        field: &'static str,
        /// The file it names instead, when it does.
        file: Option<String>,
    },
    /// A `*-data` field that is not base64.
    #[error("{field} of {entry:?} is not valid base64")]
    Base64 {
        /// `client-certificate-data` or `client-key-data`, as the kubeconfig spells it.
        field: &'static str,
        /// The user or cluster entry.
        entry: String,
    },
}

/// The material of the kubeconfig's current context, decoded from base64 (PEM bytes inside).
pub struct EmbeddedClient {
    /// The context followed.
    pub context: String,
    /// Its user entry.
    pub user: String,
    /// Its cluster entry.
    pub cluster: String,
    /// `client-certificate-data`: the client certificate (and intermediates).
    pub cert: Vec<u8>,
    /// `client-key-data`: the private key. Never logged, never in `Debug`.
    pub key: Vec<u8>,
    /// `certificate-authority-data`, when embedded.
    pub ca: Option<Vec<u8>>,
    /// `certificate-authority`, when the CA is a file reference instead.
    pub ca_file: Option<String>,
}

impl std::fmt::Debug for EmbeddedClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedClient")
            .field("context", &self.context)
            .field("user", &self.user)
            .field("cluster", &self.cluster)
            .field("key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Raw {
    #[serde(rename = "current-context", default)]
    current_context: Option<String>,
    #[serde(default)]
    contexts: Vec<RawNamedContext>,
    #[serde(default)]
    clusters: Vec<RawNamedCluster>,
    #[serde(default)]
    users: Vec<RawNamedUser>,
}

#[derive(Deserialize)]
struct RawNamedContext {
    name: String,
    context: RawContext,
}

#[derive(Deserialize)]
struct RawContext {
    cluster: String,
    user: String,
}

#[derive(Deserialize)]
struct RawNamedCluster {
    name: String,
    cluster: RawCluster,
}

#[derive(Deserialize)]
struct RawCluster {
    #[serde(rename = "certificate-authority-data")]
    ca_data: Option<String>,
    #[serde(rename = "certificate-authority")]
    ca_file: Option<String>,
}

#[derive(Deserialize)]
struct RawNamedUser {
    name: String,
    user: RawUser,
}

#[derive(Deserialize)]
struct RawUser {
    #[serde(rename = "client-certificate-data")]
    cert_data: Option<String>,
    #[serde(rename = "client-certificate")]
    cert_file: Option<String>,
    #[serde(rename = "client-key-data")]
    key_data: Option<String>,
    #[serde(rename = "client-key")]
    key_file: Option<String>,
}

fn decode(value: &str, field: &'static str, entry: &str) -> Result<Vec<u8>, KubeconfigError> {
    // The base64 error names the offending byte: dropped, since that byte is part of the key.
    let compact: String = value.split_whitespace().collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact)
        .map_err(|_| KubeconfigError::Base64 {
            field,
            entry: entry.to_string(),
        })
}

/// The embedded client material of the current context (or of the only context).
pub fn embedded_client(bytes: &[u8]) -> Result<EmbeddedClient, KubeconfigError> {
    let raw: Raw = serde_saphyr::from_slice(bytes).map_err(|e| {
        let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
        KubeconfigError::Syntax { line, column }
    })?;
    let context = match &raw.current_context {
        Some(name) if !name.is_empty() => raw
            .contexts
            .iter()
            .find(|c| &c.name == name)
            .ok_or_else(|| KubeconfigError::Undefined {
                kind: "context",
                name: name.clone(),
                context: "current-context".into(),
            })?,
        _ => match raw.contexts.as_slice() {
            [only] => only,
            all => return Err(KubeconfigError::NoContext(all.len())),
        },
    };
    let undefined = |kind: &'static str, name: &str| KubeconfigError::Undefined {
        kind,
        name: name.to_string(),
        context: context.name.clone(),
    };
    let user = raw
        .users
        .iter()
        .find(|u| u.name == context.context.user)
        .ok_or_else(|| undefined("user", &context.context.user))?;
    let cluster = raw
        .clusters
        .iter()
        .find(|c| c.name == context.context.cluster)
        .ok_or_else(|| undefined("cluster", &context.context.cluster))?;
    let embedded = |data: &Option<String>, file: &Option<String>, field: &'static str| match data {
        Some(d) => decode(d, field, &user.name),
        None => Err(KubeconfigError::NotEmbedded {
            user: user.name.clone(),
            field,
            file: file.clone(),
        }),
    };
    let cert = embedded(
        &user.user.cert_data,
        &user.user.cert_file,
        "client-certificate-data",
    )?;
    let key = embedded(&user.user.key_data, &user.user.key_file, "client-key-data")?;
    let ca = cluster
        .cluster
        .ca_data
        .as_deref()
        .map(|d| decode(d, "certificate-authority-data", &cluster.name))
        .transpose()?;
    Ok(EmbeddedClient {
        context: context.name.clone(),
        user: user.name.clone(),
        cluster: cluster.name.clone(),
        cert,
        key,
        ca,
        ca_file: cluster.cluster.ca_file.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn kubeconfig(key_data: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    server: https://10.0.0.1:6443\n  name: kubernetes\ncontexts:\n- context:\n    cluster: kubernetes\n    user: system:kube-controller-manager\n  name: system:kube-controller-manager@kubernetes\ncurrent-context: system:kube-controller-manager@kubernetes\nusers:\n- name: system:kube-controller-manager\n  user:\n    client-certificate-data: {}\n    client-key-data: {key_data}\n",
            b64("CA"),
            b64("CERT"),
        )
    }

    #[test]
    fn follows_the_current_context_to_its_user_and_cluster() {
        let got = embedded_client(kubeconfig(&b64("KEY")).as_bytes()).expect("kubeconfig");
        assert_eq!(got.user, "system:kube-controller-manager");
        assert_eq!(got.cluster, "kubernetes");
        assert_eq!(got.cert, b"CERT");
        assert_eq!(got.key, b"KEY");
        assert_eq!(got.ca.as_deref(), Some(&b"CA"[..]));
        assert!(!format!("{got:?}").contains("KEY\""), "{got:?}");
    }

    #[test]
    fn errors_name_the_field_and_never_quote_the_key() {
        let secret = "c2VjcmV0!!c2VjcmV0";
        let err = embedded_client(kubeconfig(secret).as_bytes()).expect_err("bad base64");
        assert_eq!(
            err,
            KubeconfigError::Base64 {
                field: "client-key-data",
                entry: "system:kube-controller-manager".into()
            }
        );
        assert!(!err.to_string().contains("c2VjcmV0"), "{err}");

        // A YAML error on the key's line reports the position only.
        let broken = kubeconfig(&format!("[{secret}"));
        let err = embedded_client(broken.as_bytes()).expect_err("bad yaml");
        assert!(matches!(err, KubeconfigError::Syntax { .. }), "{err:?}");
        assert!(!err.to_string().contains("c2VjcmV0"), "{err}");

        // File references instead of data: say which file to watch instead.
        let files = "contexts:\n- name: c\n  context: {cluster: k, user: u}\nclusters:\n- name: k\n  cluster: {server: https://x}\nusers:\n- name: u\n  user:\n    client-certificate: /var/lib/kubelet/pki/kubelet-client-current.pem\n    client-key: /var/lib/kubelet/pki/kubelet-client-current.pem\n";
        let err = embedded_client(files.as_bytes()).expect_err("file references");
        assert!(
            err.to_string()
                .contains("client-certificate-data (it refers to the file /var/lib/kubelet/pki/kubelet-client-current.pem"),
            "{err}"
        );

        let dangling = kubeconfig(&b64("KEY")).replace(
            "current-context: system:kube-controller-manager@kubernetes",
            "current-context: other",
        );
        let err = embedded_client(dangling.as_bytes()).expect_err("undefined context");
        assert!(err.to_string().contains("context \"other\""), "{err}");
    }
}
