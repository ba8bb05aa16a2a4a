//! A witness outside the node for the audit chain (`[audit] witness = true`).
//!
//! The hash chain alone cannot tell a log cut at a line boundary, or a chain re-sealed from
//! scratch, from an honest one: whoever can write the file can write a consistent chain. So every
//! `witness_interval` (and once more at shutdown) the agent publishes the chain head, the last
//! record's `seq` and the SHA-256 of its line, which commits to every record up to it, to a
//! ConfigMap `certreload-audit-<node>` in `[audit] witness_namespace`, and records each
//! publication in the log itself (`witness_published`). The API server keeps that object
//! forward-only (deploy/witness.yaml: a ValidatingAdmissionPolicy refuses a lower seq, a rewritten
//! or back-dated past head, more than one new head per update, and pruning below [`HISTORY`]
//! heads; RBAC gives the agent no delete), so the node cannot take a witnessed head back.
//!
//! `certreload audit verify --witness` then checks that the log holds every witnessed seq with
//! exactly the witnessed hash: a shorter log is **truncated**, another record at a witnessed seq
//! is **re-forged** (see [`WitnessMismatch`]).
//!
//! ConfigMap layout (`data`): `seq`, `hash` (the newest head), `instance`, `time`, `node`, and one
//! `seq-<n>` = `<hash>` entry per published head, the newest [`HISTORY`] of them.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use k8s_openapi::{api::core::v1::ConfigMap, apimachinery::pkg::apis::meta::v1::ObjectMeta};
use kube::{api::PostParams, Api, Client};
use serde::Serialize;
use serde_json::Value;
use thiserror::Error;
use tokio::time::Instant;

use super::{append_shared, chain::link, kube_events::describe_api_error, AuditEvent, SharedAudit};
use crate::{shutdown::Shutdown, sync::LockExt};

/// How many past heads the witness object keeps (the newest). deploy/witness.yaml's policy
/// refuses pruning below this many, so an attacker holding the node's credentials must make this
/// many forward updates (each audited by the API server) to push a real head out.
pub(crate) const HISTORY: usize = 256;
/// Longest wait for one API request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Prefix of a head's key in the object's `data`.
const HEAD_PREFIX: &str = "seq-";

/// The witness object's name for `node`.
pub(crate) fn object_name(node: &str) -> String {
    format!("certreload-audit-{node}")
}

/// The heads a witness holds: `seq` → SHA-256 (hex) of that record's line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Witnessed {
    /// Where they were read (`kube:ns/name` or a file), for messages.
    pub source: String,
    /// Every head, ascending.
    pub heads: BTreeMap<u64, String>,
}

/// Why a witness cannot be read or written.
#[derive(Debug, Clone, Error)]
pub(crate) enum WitnessError {
    /// A witness file cannot be read.
    #[error("witness {path}: {message}")]
    Read { path: PathBuf, message: String },
    /// The witness holds something that is not a head.
    #[error("witness {witness}: {message}")]
    Invalid {
        /// `kube:ns/name` or the file.
        witness: String,
        /// What is wrong, naming the key or field.
        message: String,
    },
    /// No in-cluster ServiceAccount and no usable KUBECONFIG.
    #[error("witness {witness}: no Kubernetes API credentials (in-cluster ServiceAccount or KUBECONFIG): {message}")]
    Credentials {
        /// `ns/name`.
        witness: String,
        /// kube-rs' reason.
        message: String,
    },
    /// The API server did not answer in time.
    #[error(
        "witness {witness}: {operation}: no answer from the API server within {REQUEST_TIMEOUT:?}"
    )]
    Timeout {
        /// `ns/name`.
        witness: String,
        /// `get`, `create`, `update`.
        operation: &'static str,
    },
    /// The API server refused the request or could not be reached (a refusal by the
    /// forward-only policy reads as `422 Invalid: ... ValidatingAdmissionPolicy ...`).
    #[error("witness {witness}: {operation}: {message}")]
    Api {
        /// `ns/name`.
        witness: String,
        /// `get`, `create`, `update`.
        operation: &'static str,
        /// The status (`403 Forbidden: ...`) or transport error.
        message: String,
        /// The HTTP status, when the API server answered.
        code: Option<u16>,
    },
    /// The log is behind its witness: it was truncated, re-forged or replaced by a fresh one, so
    /// its head cannot be published (the witness is forward-only). Needs an operator: archive
    /// the object, investigate, then delete it.
    #[error("witness {witness} saw seq {witnessed_seq} (hash {witnessed_hash}), but this log's last record is seq {log_seq} (hash {log_hash}): the log was truncated, re-forged or replaced; the head is not published")]
    Behind {
        /// `ns/name`.
        witness: String,
        /// The witness's newest seq.
        witnessed_seq: u64,
        /// Its hash.
        witnessed_hash: String,
        /// The log's last seq.
        log_seq: u64,
        /// Its hash.
        log_hash: String,
    },
    /// The log goes past the witness's newest head but does not contain it: its record at that
    /// seq is another one, or is in none of the log's files. The log was re-forged or replaced;
    /// publishing its head would fork the witness, so nothing is published (needs an operator,
    /// as for [`WitnessError::Behind`]).
    #[error("witness {witness} saw seq {witnessed_seq} (hash {witnessed_hash}), but this log's record seq {witnessed_seq} {}: the log was re-forged or replaced; the head is not published", found.as_ref().map_or_else(|| "is in none of its files".to_string(), |h| format!("hashes to {h}")))]
    Diverged {
        /// `ns/name`.
        witness: String,
        /// The witness's newest seq.
        witnessed_seq: u64,
        /// Its hash.
        witnessed_hash: String,
        /// The hash of the log's record at that seq, if the log has one.
        found: Option<String>,
    },
    /// The witness holds no head.
    #[error("witness {0}: holds no head")]
    Empty(String),
}

/// The hash of record `seq` of the log at `path` (the file, then its rotated files newest
/// first), if one of them holds it. Records start with their `seq` (the chain seals it first).
pub(crate) fn record_hash(path: &Path, seq: u64) -> Option<String> {
    let prefix = format!("{{\"seq\":{seq},");
    std::iter::once(path.to_path_buf())
        .chain((1..=super::log::ROTATED_KEPT).map(|n| super::log::rotated(path, n)))
        .filter_map(|file| std::fs::read_to_string(file).ok())
        .find_map(|text| text.lines().find(|l| l.starts_with(&prefix)).map(link))
}

/// Where the log disagrees with its witness.
#[derive(Debug, Error, PartialEq, Eq)]
pub(crate) enum WitnessMismatch {
    /// The witness saw a record the log no longer has.
    #[error("truncated: witness {witness} saw seq {seq} (hash {hash}), log ends at {log_last}")]
    Truncated {
        witness: String,
        /// The highest witnessed seq.
        seq: u64,
        /// Its witnessed hash.
        hash: String,
        /// The log's last seq.
        log_last: u64,
    },
    /// The log holds another record at a witnessed seq: every record up to it was rewritten
    /// (the chain itself is consistent, so it was re-sealed).
    #[error("re-forged: witness {witness} saw seq {seq} with hash {witnessed}, but record seq {seq} ({path}:{line}) hashes to {found}")]
    ReForged {
        witness: String,
        /// The lowest seq that differs.
        seq: u64,
        /// The witnessed hash.
        witnessed: String,
        /// The hash of the log's record.
        found: String,
        /// Its file.
        path: PathBuf,
        /// Its line (1-based).
        line: usize,
    },
}

/// What a log that matches its witness showed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct WitnessSummary {
    pub witness: String,
    /// Heads found in the files, each with the witnessed hash.
    pub heads: usize,
    /// Heads at seqs the files do not hold although the log goes past them: records before
    /// the first file or in a gap that `audit verify` reports as a discontinuity.
    pub not_in_files: usize,
    /// The highest witnessed seq.
    pub highest_seq: u64,
    /// Records after it: written since the last publication, not yet witnessed.
    pub unwitnessed: u64,
}

/// One record of the log, where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Located {
    hash: String,
    path: PathBuf,
    line: usize,
}

/// Compares the witness with the log's records at the witnessed seqs (`found`) and its last seq.
fn compare(
    witness: &Witnessed,
    found: &BTreeMap<u64, Located>,
    log_last: u64,
) -> Result<WitnessSummary, WitnessMismatch> {
    let Some((&highest_seq, _)) = witness.heads.last_key_value() else {
        // Readers refuse an empty witness; nothing to compare.
        return Ok(WitnessSummary {
            witness: witness.source.clone(),
            heads: 0,
            not_in_files: 0,
            highest_seq: 0,
            unwitnessed: log_last.saturating_add(1),
        });
    };
    // A differing record at a seq the log still has is the stronger finding: report it first.
    for (&seq, hash) in &witness.heads {
        if let Some(record) = found.get(&seq) {
            if &record.hash != hash {
                return Err(WitnessMismatch::ReForged {
                    witness: witness.source.clone(),
                    seq,
                    witnessed: hash.clone(),
                    found: record.hash.clone(),
                    path: record.path.clone(),
                    line: record.line,
                });
            }
        }
    }
    if highest_seq > log_last {
        return Err(WitnessMismatch::Truncated {
            witness: witness.source.clone(),
            seq: highest_seq,
            hash: witness.heads[&highest_seq].clone(),
            log_last,
        });
    }
    Ok(WitnessSummary {
        witness: witness.source.clone(),
        heads: witness
            .heads
            .keys()
            .filter(|s| found.contains_key(s))
            .count(),
        not_in_files: witness
            .heads
            .keys()
            .filter(|s| !found.contains_key(s))
            .count(),
        highest_seq,
        unwitnessed: log_last - highest_seq,
    })
}

/// Checks `files` (an intact chain, oldest first, ending at `log_last`) against `witness`.
pub(crate) fn check_files(
    files: &[PathBuf],
    log_last: u64,
    witness: &Witnessed,
) -> Result<WitnessSummary, WitnessCheckError> {
    let mut found = BTreeMap::new();
    for path in files {
        let text = std::fs::read_to_string(path).map_err(|e| WitnessError::Read {
            path: path.clone(),
            message: e.to_string(),
        })?;
        for (i, line) in text.lines().enumerate() {
            let seq = serde_json::from_str::<Value>(line)
                .ok()
                .and_then(|v| v.get("seq").and_then(Value::as_u64));
            if let Some(seq) = seq.filter(|s| witness.heads.contains_key(s)) {
                found.insert(
                    seq,
                    Located {
                        hash: link(line),
                        path: path.clone(),
                        line: i + 1,
                    },
                );
            }
        }
    }
    Ok(compare(witness, &found, log_last)?)
}

/// Either the witness could not be read, or the log disagrees with it.
#[derive(Debug, Error)]
pub(crate) enum WitnessCheckError {
    /// The witness (or a log file) cannot be read.
    #[error(transparent)]
    Witness(#[from] WitnessError),
    /// The log disagrees with the witness.
    #[error(transparent)]
    Mismatch(#[from] WitnessMismatch),
}

/// Reads the heads out of a witness object's `data`.
fn heads_from_data(
    witness: &str,
    data: &BTreeMap<String, String>,
) -> Result<BTreeMap<u64, String>, WitnessError> {
    let invalid = |message: String| WitnessError::Invalid {
        witness: witness.to_string(),
        message,
    };
    let mut heads = BTreeMap::new();
    for (key, hash) in data {
        let Some(seq) = key.strip_prefix(HEAD_PREFIX) else {
            continue;
        };
        let seq: u64 = seq
            .parse()
            .map_err(|_| invalid(format!("data.{key}: not seq-<number>")))?;
        if !is_hash(hash) {
            return Err(invalid(format!(
                "data.{key}: {hash:?} is not a SHA-256 (64 hex)"
            )));
        }
        heads.insert(seq, hash.clone());
    }
    if let (Some(seq), Some(hash)) = (data.get("seq"), data.get("hash")) {
        let seq: u64 = seq
            .parse()
            .map_err(|_| invalid(format!("data.seq: {seq:?} is not a number")))?;
        if !is_hash(hash) {
            return Err(invalid(format!(
                "data.hash: {hash:?} is not a SHA-256 (64 hex)"
            )));
        }
        if let Some(other) = heads.insert(seq, hash.clone()) {
            if &other != hash {
                return Err(invalid(format!(
                    "data.hash differs from data.{HEAD_PREFIX}{seq}"
                )));
            }
        }
    }
    if heads.is_empty() {
        return Err(WitnessError::Empty(witness.to_string()));
    }
    Ok(heads)
}

fn is_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Reads a witness file: a head (`{"seq": N, "hash": "…"}`), or a witness ConfigMap as
/// `kubectl get configmap -o json` prints it (an archived copy).
pub(crate) fn from_file(path: &Path) -> Result<Witnessed, WitnessError> {
    let source = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| WitnessError::Read {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let invalid = |message: String| WitnessError::Invalid {
        witness: source.clone(),
        message,
    };
    let v: Value = serde_json::from_str(&text).map_err(|e| invalid(format!("not JSON: {e}")))?;
    let data: BTreeMap<String, String> = match v.get("data") {
        Some(data) => serde_json::from_value(data.clone())
            .map_err(|e| invalid(format!("data: not a map of strings: {e}")))?,
        None => {
            let seq = v
                .get("seq")
                .and_then(Value::as_u64)
                .ok_or_else(|| invalid("no \"seq\" (a number) and no ConfigMap \"data\"".into()))?;
            let hash = v
                .get("hash")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("no \"hash\" (a string)".into()))?;
            [
                ("seq".into(), seq.to_string()),
                ("hash".into(), hash.into()),
            ]
            .into()
        }
    };
    Ok(Witnessed {
        heads: heads_from_data(&source, &data)?,
        source,
    })
}

/// Reads the witness ConfigMap `namespace/name` with the in-cluster or KUBECONFIG credentials.
pub(crate) async fn from_kube(namespace: &str, name: &str) -> Result<Witnessed, WitnessError> {
    let witness = format!("{namespace}/{name}");
    let client = client(&witness).await?;
    let api: Api<ConfigMap> = Api::namespaced(client, namespace);
    let object = call(&witness, "get", api.get_opt(name))
        .await?
        .ok_or_else(|| WitnessError::Api {
            witness: witness.clone(),
            operation: "get",
            message: "404 NotFound: no such ConfigMap".into(),
            code: Some(404),
        })?;
    let source = format!("kube:{witness}");
    Ok(Witnessed {
        heads: heads_from_data(&source, &object.data.unwrap_or_default())?,
        source,
    })
}

/// `--witness SPEC`: `kube:NAMESPACE/NAME` or a file.
pub(crate) async fn load(spec: &str) -> Result<Witnessed, WitnessError> {
    match spec.strip_prefix("kube:") {
        Some(object) => {
            let (namespace, name) =
                object
                    .split_once('/')
                    .ok_or_else(|| WitnessError::Invalid {
                        witness: spec.to_string(),
                        message: "expected kube:NAMESPACE/NAME".into(),
                    })?;
            from_kube(namespace, name).await
        }
        None => from_file(Path::new(spec)),
    }
}

async fn client(witness: &str) -> Result<Client, WitnessError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, Client::try_default()).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(WitnessError::Credentials {
            witness: witness.to_string(),
            message: e.to_string(),
        }),
        Err(_) => Err(WitnessError::Timeout {
            witness: witness.to_string(),
            operation: "connect",
        }),
    }
}

/// One API call with [`REQUEST_TIMEOUT`], the object named in the error.
async fn call<T>(
    witness: &str,
    operation: &'static str,
    request: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, WitnessError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(WitnessError::Api {
            witness: witness.to_string(),
            operation,
            code: match &e {
                kube::Error::Api(s) => Some(s.code),
                _ => None,
            },
            message: describe_api_error(&e),
        }),
        Err(_) => Err(WitnessError::Timeout {
            witness: witness.to_string(),
            operation,
        }),
    }
}

/// The head to publish, and who publishes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Head {
    /// The last record's seq.
    pub seq: u64,
    /// SHA-256 of its line.
    pub hash: String,
    /// The agent run (instance id) that publishes it.
    pub instance: String,
    /// When (RFC 3339).
    pub time: String,
    pub node: String,
}

/// The object's next `data`: `head` added (the newest [`HISTORY`] heads kept), or `None` when
/// the witness already holds it. Refuses, as the API server's policy would, a head behind the
/// witness or another hash at a witnessed seq.
fn next_data(
    witness: &str,
    old: Option<&BTreeMap<String, String>>,
    head: &Head,
) -> Result<Option<BTreeMap<String, String>>, WitnessError> {
    let mut data = BTreeMap::new();
    if let Some(old) = old {
        let heads = heads_from_data(witness, old).or_else(|e| match e {
            WitnessError::Empty(_) => Ok(BTreeMap::new()),
            e => Err(e),
        })?;
        if let Some((&seq, hash)) = heads.last_key_value() {
            let same = seq == head.seq && hash == &head.hash;
            if same {
                return Ok(None);
            }
            if seq >= head.seq {
                return Err(WitnessError::Behind {
                    witness: witness.to_string(),
                    witnessed_seq: seq,
                    witnessed_hash: hash.clone(),
                    log_seq: head.seq,
                    log_hash: head.hash.clone(),
                });
            }
        }
        data.extend(
            old.iter()
                .filter(|(k, _)| k.starts_with(HEAD_PREFIX))
                .map(|(k, v)| (k.clone(), v.clone())),
        );
    }
    data.insert(format!("{HEAD_PREFIX}{}", head.seq), head.hash.clone());
    // Keys sort as strings, not numbers: prune by the parsed seq.
    let mut seqs: Vec<u64> = data
        .keys()
        .filter_map(|k| k.strip_prefix(HEAD_PREFIX)?.parse().ok())
        .collect();
    seqs.sort_unstable();
    for seq in seqs.iter().take(seqs.len().saturating_sub(HISTORY)) {
        data.remove(&format!("{HEAD_PREFIX}{seq}"));
    }
    data.insert("seq".into(), head.seq.to_string());
    data.insert("hash".into(), head.hash.clone());
    data.insert("instance".into(), head.instance.clone());
    data.insert("time".into(), head.time.clone());
    data.insert("node".into(), head.node.clone());
    Ok(Some(data))
}

/// What one publication did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Published {
    /// Nothing new since the last publication (or the log is empty).
    Unchanged,
    /// The head is in the witness object.
    Head {
        /// Its seq.
        seq: u64,
        /// Its hash.
        hash: String,
        /// The object's resourceVersion after the write.
        resource_version: String,
    },
}

/// Publishes this node's audit head to its witness ConfigMap.
pub(crate) struct Publisher {
    api: Api<ConfigMap>,
    namespace: String,
    name: String,
    node: String,
    audit: SharedAudit,
    /// The last seq this publisher put in the witness.
    published: Option<u64>,
    /// The seq of its own last `witness_published` record (not worth a publication by itself).
    own_record: Option<u64>,
    /// The log file, to check once per run that the log continues what the witness holds.
    log_path: PathBuf,
    /// Set when the log does not continue its witness: nothing is published any more.
    halted: Option<WitnessError>,
}

impl Publisher {
    /// Publishes `audit`'s head for `node` into `namespace` through `client`.
    pub(crate) fn new(
        client: Client,
        namespace: &str,
        node: &str,
        audit: SharedAudit,
    ) -> Publisher {
        let log_path = audit.lock_or_recover().path().to_path_buf();
        Publisher {
            log_path,
            halted: None,
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            name: object_name(node),
            node: node.to_string(),
            audit,
            published: None,
            own_record: None,
        }
    }

    /// With the in-cluster (or KUBECONFIG) credentials.
    pub(crate) async fn from_environment(
        namespace: &str,
        node: &str,
        audit: SharedAudit,
    ) -> Result<Publisher, WitnessError> {
        let witness = format!("{namespace}/{}", object_name(node));
        Ok(Publisher::new(
            client(&witness).await?,
            namespace,
            node,
            audit,
        ))
    }

    /// `namespace/name` of the witness object.
    pub(crate) fn object(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Publishes the current head if it moved; with `record`, appends `witness_published` to the
    /// log after the API server took it.
    pub(crate) async fn publish(&mut self, record: bool) -> Result<Published, WitnessError> {
        if let Some(e) = &self.halted {
            return Err(e.clone());
        }
        let (seq, hash, instance) = {
            let log = self.audit.lock_or_recover();
            let Some((seq, hash)) = log.last_record() else {
                return Ok(Published::Unchanged);
            };
            (seq, hash, log.instance().to_string())
        };
        if Some(seq) == self.published || Some(seq) == self.own_record {
            return Ok(Published::Unchanged);
        }
        let head = Head {
            seq,
            hash: hash.clone(),
            instance,
            time: crate::clock::now_rfc3339(),
            node: self.node.clone(),
        };
        let resource_version = match self.write(&head).await {
            Ok(v) => v,
            Err(e @ (WitnessError::Behind { .. } | WitnessError::Diverged { .. })) => {
                self.halted = Some(e.clone());
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        self.published = Some(seq);
        if record {
            let event = AuditEvent::WitnessPublished {
                witnessed_seq: seq,
                witnessed_hash: hash.clone(),
                object: self.object(),
                resource_version: resource_version.clone(),
            };
            match append_shared(&self.audit, None, &event) {
                Ok(own) => self.own_record = Some(own),
                Err(e) => {
                    tracing::error!(error = %e, "cannot record the witness publication in the audit log")
                }
            }
        }
        Ok(Published::Head {
            seq,
            hash,
            resource_version,
        })
    }

    /// Reads the object and writes the head into it (create, or update with the
    /// resourceVersion read: a concurrent writer makes it read again).
    async fn write(&self, head: &Head) -> Result<String, WitnessError> {
        let witness = self.object();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let current = call(&witness, "get", self.api.get_opt(&self.name)).await?;
            if self.published.is_none() {
                self.continues(current.as_ref(), head).await?;
            }
            let Some(data) = next_data(
                &witness,
                current.as_ref().and_then(|c| c.data.as_ref()),
                head,
            )?
            else {
                return Ok(current
                    .and_then(|c| c.metadata.resource_version)
                    .unwrap_or_default());
            };
            let written = match current {
                Some(mut object) => {
                    object.data = Some(data);
                    call(
                        &witness,
                        "update",
                        self.api
                            .replace(&self.name, &PostParams::default(), &object),
                    )
                    .await
                }
                None => {
                    let object = ConfigMap {
                        metadata: ObjectMeta {
                            name: Some(self.name.clone()),
                            namespace: Some(self.namespace.clone()),
                            labels: Some(
                                [
                                    ("app.kubernetes.io/name".into(), "certreload".into()),
                                    ("app.kubernetes.io/component".into(), "audit-witness".into()),
                                ]
                                .into(),
                            ),
                            ..ObjectMeta::default()
                        },
                        data: Some(data),
                        ..ConfigMap::default()
                    };
                    call(
                        &witness,
                        "create",
                        self.api.create(&PostParams::default(), &object),
                    )
                    .await
                }
            };
            match written {
                Ok(object) => return Ok(object.metadata.resource_version.unwrap_or_default()),
                Err(WitnessError::Api {
                    code: Some(409), ..
                }) if attempts < 3 => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// On this run's first publication: a witness whose newest head is older than the log's
    /// must find it in the log, or the log is not the one it witnessed (a restart on a log cut
    /// and written on, or re-forged, would otherwise publish a fork of it).
    async fn continues(
        &self,
        current: Option<&ConfigMap>,
        head: &Head,
    ) -> Result<(), WitnessError> {
        let witness = self.object();
        let Some(data) = current.and_then(|c| c.data.as_ref()) else {
            return Ok(());
        };
        let heads = match heads_from_data(&witness, data) {
            Ok(h) => h,
            Err(WitnessError::Empty(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let Some((&seq, hash)) = heads.last_key_value() else {
            return Ok(());
        };
        if seq >= head.seq {
            // next_data judges it (same head, or behind).
            return Ok(());
        }
        let path = self.log_path.clone();
        let found = tokio::task::spawn_blocking(move || record_hash(&path, seq))
            .await
            .ok()
            .flatten();
        if found.as_deref() == Some(hash.as_str()) {
            return Ok(());
        }
        Err(WitnessError::Diverged {
            witness,
            witnessed_seq: seq,
            witnessed_hash: hash.clone(),
            found,
        })
    }

    /// One publication, its outcome logged (a failure never stops the agent: the log stays the
    /// record, unwitnessed until the next publication succeeds).
    pub(crate) async fn publish_logged(&mut self, record: bool) {
        match self.publish(record).await {
            Ok(Published::Head {
                seq,
                resource_version,
                ..
            }) => {
                tracing::info!(witness = %self.object(), seq, resource_version = %resource_version, "audit head published to the witness")
            }
            Ok(Published::Unchanged) => {}
            Err(e @ (WitnessError::Behind { .. } | WitnessError::Diverged { .. })) => {
                tracing::error!(error = %e, "the audit log does not continue its witness; nothing is published until an operator archives and deletes the witness")
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot publish the audit head to the witness; retrying at the next interval")
            }
        }
    }
}

/// Publishes at start, then every `interval`, until `shutdown`; returns the publisher for the
/// last publication after `agent_stopped`.
pub(crate) async fn run(
    mut publisher: Publisher,
    interval: Duration,
    mut shutdown: Shutdown,
) -> Publisher {
    let mut next = Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.recv() => return publisher,
            _ = tokio::time::sleep_until(next) => {}
        }
        // A hung API server must not hold up shutdown: the last publication redoes this one.
        let stopped = tokio::select! {
            _ = shutdown.recv() => true,
            _ = publisher.publish_logged(true) => false,
        };
        if stopped {
            return publisher;
        }
        next = Instant::now() + interval;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DEFAULT_WITNESS_INTERVAL, DEFAULT_WITNESS_NAMESPACE};

    fn h(c: char) -> String {
        std::iter::repeat_n(c, 64).collect()
    }

    fn witness(heads: &[(u64, char)]) -> Witnessed {
        Witnessed {
            source: "kube:certreload-witness/certreload-audit-n1".into(),
            heads: heads.iter().map(|&(s, c)| (s, h(c))).collect(),
        }
    }

    fn log(records: &[(u64, char)]) -> BTreeMap<u64, Located> {
        records
            .iter()
            .map(|&(s, c)| {
                (
                    s,
                    Located {
                        hash: h(c),
                        path: "audit.jsonl".into(),
                        line: s as usize + 1,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn a_log_holding_every_witnessed_head_matches_and_counts_what_came_after() {
        let w = witness(&[(3, 'a'), (7, 'b')]);
        let summary = compare(&w, &log(&[(3, 'a'), (7, 'b')]), 9).expect("match");
        assert_eq!(summary.highest_seq, 7);
        assert_eq!(summary.heads, 2);
        assert_eq!(summary.not_in_files, 0);
        assert_eq!(summary.unwitnessed, 2);
        // Files that start after a discontinuity: the earlier head is counted, not compared.
        let summary = compare(&w, &log(&[(7, 'b')]), 9).expect("match");
        assert_eq!((summary.heads, summary.not_in_files), (1, 1));
    }

    #[test]
    fn a_log_shorter_than_the_witness_is_truncated() {
        let w = witness(&[(3, 'a'), (7, 'b')]);
        let e = compare(&w, &log(&[(3, 'a')]), 5).expect_err("truncated");
        assert_eq!(
            e.to_string(),
            format!(
                "truncated: witness kube:certreload-witness/certreload-audit-n1 saw seq 7 (hash {}), log ends at 5",
                h('b')
            )
        );
    }

    #[test]
    fn another_record_at_a_witnessed_seq_is_re_forged_even_in_a_shorter_log() {
        let w = witness(&[(3, 'a'), (7, 'b')]);
        let e = compare(&w, &log(&[(3, 'c')]), 5).expect_err("re-forged");
        assert!(
            matches!(&e, WitnessMismatch::ReForged { seq: 3, found, line: 4, .. } if found == &h('c')),
            "{e:?}"
        );
        assert!(e.to_string().starts_with("re-forged: "), "{e}");
        // The newest head differs while an older one matches: re-forged at the newest.
        let e = compare(&w, &log(&[(3, 'a'), (7, 'c')]), 7).expect_err("re-forged");
        assert!(
            matches!(e, WitnessMismatch::ReForged { seq: 7, .. }),
            "{e:?}"
        );
    }

    #[test]
    fn witness_files_hold_a_head_or_an_archived_configmap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let head = dir.path().join("head.json");
        std::fs::write(&head, format!(r#"{{"seq": 12, "hash": "{}"}}"#, h('a'))).expect("write");
        assert_eq!(from_file(&head).expect("head").heads, [(12, h('a'))].into());
        let cm = dir.path().join("cm.json");
        std::fs::write(
            &cm,
            serde_json::json!({"kind": "ConfigMap", "data": {
                "seq": "12", "hash": h('a'), "seq-12": h('a'), "seq-4": h('b'), "node": "n1"}})
            .to_string(),
        )
        .expect("write");
        assert_eq!(
            from_file(&cm).expect("configmap").heads,
            [(4, h('b')), (12, h('a'))].into()
        );
        std::fs::write(&head, r#"{"seq": 12, "hash": "not-hex"}"#).expect("write");
        let e = from_file(&head).expect_err("bad hash").to_string();
        assert!(
            e.contains("data.hash") && e.contains("not a SHA-256"),
            "{e}"
        );
        std::fs::write(&head, r#"{"hash": "x"}"#).expect("write");
        let e = from_file(&head).expect_err("no seq").to_string();
        assert!(e.contains("no \"seq\""), "{e}");
    }

    #[test]
    fn the_witness_is_configured_under_audit_with_its_interval_and_namespace_checked() {
        use crate::config::Config;
        let parse = |extra: &str| {
            Config::parse(
                Path::new("c.toml"),
                &format!("[audit]\npath = \"/x\"\nwitness = true\n{extra}"),
            )
        };
        let c = parse("").expect("defaults");
        assert!(c.audit.witness);
        assert_eq!(c.audit.witness_interval, DEFAULT_WITNESS_INTERVAL);
        assert_eq!(c.audit.witness_namespace, DEFAULT_WITNESS_NAMESPACE);
        let c = parse("witness_interval = \"30s\"\nwitness_namespace = \"audit-w\"\n").expect("ok");
        assert_eq!(c.audit.witness_interval, Duration::from_secs(30));
        assert_eq!(c.audit.witness_namespace, "audit-w");
        for (line, field) in [
            ("witness_interval = \"1s\"", "audit.witness_interval"),
            ("witness_interval = \"2h\"", "audit.witness_interval"),
            (
                "witness_namespace = \"Not_A_Namespace\"",
                "audit.witness_namespace",
            ),
        ] {
            let e = parse(line).expect_err(line).to_string();
            assert!(e.contains("c.toml:4") && e.contains(field), "{line}: {e}");
        }
        assert!(
            !Config::parse(Path::new("c.toml"), "[audit]\npath = \"/x\"\n")
                .expect("ok")
                .audit
                .witness,
            "off unless asked for"
        );
    }

    #[test]
    fn a_records_hash_is_found_in_the_log_or_its_rotated_files() {
        use crate::audit::{chain::ChainHead, log::rotated};
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let mut head = ChainHead::anchored("i");
        let lines: Vec<String> = (0..4)
            .map(|n| head.seal("t", "i", None, &serde_json::json!({"event": "e", "n": n})))
            .collect();
        std::fs::write(rotated(&path, 1), format!("{}\n{}\n", lines[0], lines[1])).expect("write");
        std::fs::write(&path, format!("{}\n{}\n", lines[2], lines[3])).expect("write");
        assert_eq!(record_hash(&path, 1), Some(link(&lines[1])));
        assert_eq!(record_hash(&path, 3), Some(link(&lines[3])));
        assert_eq!(record_hash(&path, 4), None);
        let e = WitnessError::Diverged {
            witness: "w".into(),
            witnessed_seq: 4,
            witnessed_hash: h('a'),
            found: None,
        };
        assert!(
            e.to_string()
                .contains("record seq 4 is in none of its files"),
            "{e}"
        );
    }

    fn head(seq: u64, c: char) -> Head {
        Head {
            seq,
            hash: h(c),
            instance: "i".into(),
            time: "t".into(),
            node: "n1".into(),
        }
    }

    #[test]
    fn publishing_adds_the_head_and_keeps_the_newest_history() {
        let first = next_data("w", None, &head(0, 'a'))
            .expect("ok")
            .expect("new");
        assert_eq!(first["seq"], "0");
        assert_eq!(first["seq-0"], h('a'));
        assert_eq!(
            next_data("w", Some(&first), &head(0, 'a')).expect("ok"),
            None
        );
        let mut data = first;
        for seq in 1..=(HISTORY as u64 + 5) {
            data = next_data("w", Some(&data), &head(seq * 10, 'b'))
                .expect("forward")
                .expect("new");
        }
        let heads = heads_from_data("w", &data).expect("heads");
        assert_eq!(heads.len(), HISTORY, "the newest {HISTORY} kept");
        assert_eq!(heads.keys().next(), Some(&60), "the oldest went first");
        assert_eq!(
            data["seq"],
            (HISTORY as u64 + 5).saturating_mul(10).to_string()
        );
    }

    #[test]
    fn a_head_behind_or_beside_the_witness_is_not_published() {
        let data = next_data("w", None, &head(9, 'a'))
            .expect("ok")
            .expect("new");
        for behind in [head(4, 'a'), head(9, 'b')] {
            let e = next_data("w", Some(&data), &behind).expect_err("behind");
            assert!(
                matches!(
                    e,
                    WitnessError::Behind {
                        witnessed_seq: 9,
                        ..
                    }
                ),
                "{e:?}"
            );
        }
    }
}
