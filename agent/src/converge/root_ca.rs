//! Root CA across namespaces (`check = "root-ca-configmaps"`): does every namespace's
//! `kube-root-ca.crt` carry the cluster CA bundle the node holds now?
//!
//! kube-controller-manager's root-CA publisher (`pkg/controller/certificates/rootcacertpublisher`)
//! writes `data["ca.crt"]` of `kube-root-ca.crt` in every namespace from the `--root-ca-file` it
//! read once at start, and puts it back whenever a ConfigMap differs from it. So a CA added to
//! that file on disk reaches the namespaces (and, through the kubelet, the `ca.crt` of every pod's
//! projected token volume) only after a controller-manager restart. This probe lists the
//! namespaces and reads that one ConfigMap in each (least privilege: `list namespaces`, `get
//! configmaps` limited to this name; no cluster-wide ConfigMap list), with a bounded number of
//! reads in flight and a timeout per request, and compares SHA-256 fingerprints of the DER
//! certificates with the ca bundle's generation.

use std::{
    collections::BTreeSet,
    sync::Arc,
    time::{Duration, SystemTime},
};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::{api::ListParams, Api, Client};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::{sync::OnceCell, task::JoinSet};

use super::judge::{Outcome, Verdict};
use crate::reload::generation::Generation;

/// The ConfigMap the root-CA publisher keeps in every namespace.
pub(crate) const CONFIGMAP: &str = "kube-root-ca.crt";
/// Its key holding the PEM bundle.
pub(crate) const CA_KEY: &str = "ca.crt";
/// Each API request's limit (list page or ConfigMap read).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Namespaces per list page.
const LIST_PAGE: u32 = 500;
/// Stale namespaces named in a verdict's `observed` (records, logs); the rest are counted.
const NAMED_IN_OBSERVATION: usize = 5;
/// Stale namespaces listed in `/status`; the rest are counted.
const LISTED_IN_STATUS: usize = 100;
/// A namespace younger than this without the ConfigMap is not yet stale: the publisher creates
/// it on the namespace's add event, a moment after the namespace itself.
const YOUNG_NAMESPACE: Duration = Duration::from_secs(60);

/// Why one namespace's `kube-root-ca.crt` does not carry the bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum StaleReason {
    /// No `kube-root-ca.crt` in the namespace.
    Missing,
    /// The ConfigMap has no `ca.crt`, or it holds no PEM certificate.
    Unreadable,
    /// `ca.crt` lacks at least one certificate of the bundle's generation.
    Outdated,
}

impl StaleReason {
    /// The word records and `/status` use.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            StaleReason::Missing => "missing",
            StaleReason::Unreadable => "unreadable",
            StaleReason::Outdated => "outdated",
        }
    }
}

/// One stale namespace, as `/status` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StaleNamespace {
    /// The namespace.
    pub namespace: String,
    /// Why its `kube-root-ca.crt` is stale.
    pub reason: StaleReason,
}

/// The namespaces of one check: how many, how many carry the bundle, and which do not (sorted by
/// name, the first [`LISTED_IN_STATUS`]). Shown per probe in `/status` and exported as
/// `certreload_root_ca_namespaces{state}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct NamespaceTally {
    /// Namespaces checked (terminating ones are left out: nothing is published into them).
    pub total: usize,
    /// Whose `ca.crt` holds every certificate of the generation.
    pub current: usize,
    /// Whose `kube-root-ca.crt` is missing, unreadable or outdated.
    pub stale: usize,
    /// Namespaces that could not be told (a failed read, or a new namespace the publisher has
    /// not reached yet).
    pub unknown: usize,
    /// The first stale namespaces by name, with the reason.
    pub stale_namespaces: Vec<StaleNamespace>,
}

/// What one namespace's read came to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Current,
    Stale(StaleReason),
    /// Could not be told, and why (for the observation).
    Unknown(String),
}

/// The SHA-256 fingerprints (hex) of the certificates a `ca.crt` PEM text holds; `None` when it
/// holds none.
fn fingerprints(pem: &str) -> Option<BTreeSet<String>> {
    let certs = crate::material::pem::certificates(pem.as_bytes()).ok()?;
    let set: BTreeSet<String> = certs
        .iter()
        .map(|c| hex::encode(Sha256::digest(c.as_ref())))
        .collect();
    (!set.is_empty()).then_some(set)
}

/// Judges one namespace's ConfigMap `data["ca.crt"]` (`None`: no ConfigMap, `Some(None)`: no
/// such key) against the generation's CA fingerprints.
fn judge_configmap(wanted: &BTreeSet<String>, ca_crt: Option<Option<&str>>) -> Seen {
    let Some(ca_crt) = ca_crt else {
        return Seen::Stale(StaleReason::Missing);
    };
    match ca_crt.and_then(fingerprints) {
        None => Seen::Stale(StaleReason::Unreadable),
        Some(held) if wanted.is_subset(&held) => Seen::Current,
        Some(_) => Seen::Stale(StaleReason::Outdated),
    }
}

/// One namespace as listed: its name, and whether it is young enough that a missing ConfigMap
/// is the publisher not having reached it yet.
#[derive(Debug, Clone)]
struct Listed {
    name: String,
    young: bool,
}

/// Every namespace's verdict, turned into the probe's.
#[derive(Debug, Default)]
struct Findings {
    seen: Vec<(String, Seen)>,
}

impl Findings {
    fn tally(&self) -> NamespaceTally {
        let mut t = NamespaceTally {
            total: self.seen.len(),
            ..NamespaceTally::default()
        };
        for (name, seen) in &self.seen {
            match seen {
                Seen::Current => t.current += 1,
                Seen::Stale(reason) => {
                    t.stale += 1;
                    if t.stale_namespaces.len() < LISTED_IN_STATUS {
                        t.stale_namespaces.push(StaleNamespace {
                            namespace: name.clone(),
                            reason: *reason,
                        });
                    }
                }
                Seen::Unknown(_) => t.unknown += 1,
            }
        }
        t
    }

    /// The verdict: stale when any namespace is stale (naming the first few), unknown when any
    /// could not be told, else converged.
    fn verdict(mut self, generation: &Generation) -> Verdict {
        self.seen.sort_by(|a, b| a.0.cmp(&b.0));
        let tally = self.tally();
        let certificates = generation.material.cas.len();
        let (outcome, observed) = if tally.stale > 0 {
            let named: Vec<String> = tally
                .stale_namespaces
                .iter()
                .take(NAMED_IN_OBSERVATION)
                .map(|s| format!("{} ({})", s.namespace, s.reason.as_str()))
                .collect();
            let more = tally.stale - named.len();
            let mut words = format!(
                "{} of {} namespaces stale: {}",
                tally.stale,
                tally.total,
                named.join(", ")
            );
            if more > 0 {
                words.push_str(&format!(" and {more} more"));
            }
            (Outcome::Stale, words)
        } else if tally.unknown > 0 {
            let why = self
                .seen
                .iter()
                .find_map(|(name, s)| match s {
                    Seen::Unknown(why) => Some(format!("{name}: {why}")),
                    _ => None,
                })
                .unwrap_or_default();
            (
                Outcome::Unknown,
                format!(
                    "unknown: {} of {} namespaces could not be told ({why})",
                    tally.unknown, tally.total
                ),
            )
        } else {
            (
                Outcome::Converged,
                format!(
                    "all {} namespaces carry the {certificates} certificate(s) of generation {}",
                    tally.total, generation.number
                ),
            )
        };
        let mut v = Verdict::without_observation(outcome, observed);
        v.namespaces = Some(tally);
        v
    }
}

/// Reads the namespaces' `kube-root-ca.crt` through one lazily made API client (in-cluster
/// credentials or `KUBECONFIG`), at most `concurrency` reads at a time.
pub(crate) struct RootCaReader {
    client: OnceCell<Client>,
    concurrency: usize,
}

impl RootCaReader {
    /// A reader whose client is made at the first check.
    pub(crate) fn new(concurrency: usize) -> RootCaReader {
        RootCaReader {
            client: OnceCell::new(),
            concurrency: concurrency.max(1),
        }
    }

    /// With an existing client (tests).
    #[cfg(test)]
    fn with_client(client: Client, concurrency: usize) -> RootCaReader {
        RootCaReader {
            client: OnceCell::new_with(Some(client)),
            concurrency,
        }
    }

    /// Checks every namespace against `target`, a ca bundle's generation. A failure to reach the
    /// API or to list the namespaces is unknown (retried; stale only if it lasts to the deadline).
    pub(crate) async fn check(&self, target: &Generation) -> Verdict {
        let unknown = |why: String| Verdict::without_observation(Outcome::Unknown, why);
        let wanted: BTreeSet<String> = target
            .material
            .cas
            .iter()
            .map(|c| c.fingerprint.clone())
            .collect();
        if wanted.is_empty() {
            return unknown(format!(
                "unknown: generation {} holds no CA certificate",
                target.number
            ));
        }
        let client = match self.client().await {
            Ok(c) => c,
            Err(why) => return unknown(format!("unknown: {why}")),
        };
        let namespaces = match list_namespaces(&client).await {
            Ok(n) => n,
            Err(why) => return unknown(format!("unknown: listing namespaces: {why}")),
        };
        let findings = self.read_all(client, namespaces, Arc::new(wanted)).await;
        findings.verdict(target)
    }

    async fn client(&self) -> Result<Client, String> {
        self.client
            .get_or_try_init(|| async {
                match tokio::time::timeout(REQUEST_TIMEOUT, Client::try_default()).await {
                    Ok(Ok(c)) => Ok(c),
                    Ok(Err(e)) => Err(format!("no Kubernetes credentials: {e}")),
                    Err(_) => Err(format!(
                        "making the Kubernetes client took more than {REQUEST_TIMEOUT:?}"
                    )),
                }
            })
            .await
            .cloned()
    }

    /// Reads every namespace's ConfigMap, at most `concurrency` at a time.
    async fn read_all(
        &self,
        client: Client,
        namespaces: Vec<Listed>,
        wanted: Arc<BTreeSet<String>>,
    ) -> Findings {
        let mut findings = Findings::default();
        let mut in_flight = JoinSet::new();
        let mut queue = namespaces.into_iter();
        loop {
            while in_flight.len() < self.concurrency {
                let Some(ns) = queue.next() else { break };
                let (client, wanted) = (client.clone(), wanted.clone());
                in_flight.spawn(async move {
                    let seen = read_one(client, &ns, &wanted).await;
                    (ns.name, seen)
                });
            }
            match in_flight.join_next().await {
                None => return findings,
                Some(Ok(found)) => findings.seen.push(found),
                // A read task panicked: a bug; the namespace is not counted, and the rest go on.
                Some(Err(e)) => tracing::error!(error = %e, "a kube-root-ca.crt read failed"),
            }
        }
    }
}

/// Every namespace not being deleted, page by page.
async fn list_namespaces(client: &Client) -> Result<Vec<Listed>, String> {
    let api: Api<Namespace> = Api::all(client.clone());
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut params = ListParams::default().limit(LIST_PAGE);
        if let Some(t) = &token {
            params = params.continue_token(t);
        }
        let page = timed(api.list_metadata(&params)).await?;
        for ns in page.items {
            let meta = ns.metadata;
            let Some(name) = meta.name else { continue };
            if meta.deletion_timestamp.is_some() {
                continue;
            }
            let created = meta.creation_timestamp.map(|t| t.0.as_second());
            let young = created.is_some_and(|c| now - c < YOUNG_NAMESPACE.as_secs() as i64);
            out.push(Listed { name, young });
        }
        token = page.metadata.continue_.filter(|t| !t.is_empty());
        if token.is_none() {
            return Ok(out);
        }
    }
}

/// One namespace's `kube-root-ca.crt`, judged.
async fn read_one(client: Client, ns: &Listed, wanted: &BTreeSet<String>) -> Seen {
    let api: Api<ConfigMap> = Api::namespaced(client, &ns.name);
    match timed(api.get_opt(CONFIGMAP)).await {
        Err(why) => Seen::Unknown(why),
        Ok(None) if ns.young => {
            Seen::Unknown("a new namespace the publisher has not reached yet".into())
        }
        Ok(cm) => {
            let data = cm.as_ref().map(|cm| {
                cm.data
                    .as_ref()
                    .and_then(|d| d.get(CA_KEY))
                    .map(String::as_str)
            });
            judge_configmap(wanted, data)
        }
    }
}

/// One API request with [`REQUEST_TIMEOUT`]; the error in words (HTTP code and reason).
async fn timed<T>(
    request: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(kube::Error::Api(s))) => Err(format!("{} {}: {}", s.code, s.reason, s.message)),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {REQUEST_TIMEOUT:?}")),
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    use super::*;
    use crate::{
        material::{inspect::inspect, validate::Material},
        test_pki,
    };

    /// A CA bundle generation of the given PEM certificates.
    fn generation(pem: &str) -> Generation {
        let ders = crate::material::pem::certificates(pem.as_bytes()).expect("pem");
        Generation {
            number: 4,
            accepted_at: SystemTime::now(),
            material: Material {
                leaf: None,
                chain: vec![],
                key: None,
                cas: ders.iter().map(|d| inspect(d).expect("cert")).collect(),
                ca_der: ders,
                key_ids: vec![],
            },
        }
    }

    fn wanted(pem: &str) -> BTreeSet<String> {
        fingerprints(pem).expect("certificates")
    }

    #[test]
    fn a_namespace_is_current_only_when_it_holds_every_certificate_of_the_bundle() {
        let (old, new) = (test_pki::ca("old root").pem, test_pki::ca("new root").pem);
        let both = format!("{old}{new}");
        assert_eq!(
            judge_configmap(&wanted(&both), Some(Some(&format!("{new}{old}")))),
            Seen::Current,
            "order does not matter"
        );
        assert_eq!(
            judge_configmap(&wanted(&old), Some(Some(&both))),
            Seen::Current,
            "extra certificates are fine"
        );
        assert_eq!(
            judge_configmap(&wanted(&both), Some(Some(&old))),
            Seen::Stale(StaleReason::Outdated)
        );
        assert_eq!(
            judge_configmap(&wanted(&old), None),
            Seen::Stale(StaleReason::Missing)
        );
        for broken in [None, Some(""), Some("not a certificate")] {
            assert_eq!(
                judge_configmap(&wanted(&old), Some(broken)),
                Seen::Stale(StaleReason::Unreadable),
                "{broken:?}"
            );
        }
    }

    #[test]
    fn the_verdict_names_the_first_stale_namespaces_and_counts_the_rest() {
        let g = generation(&test_pki::ca("root").pem);
        let mut f = Findings::default();
        for i in 0..9 {
            f.seen.push((format!("ns-{i}"), Seen::Current));
        }
        for i in (0..7).rev() {
            f.seen
                .push((format!("stale-{i}"), Seen::Stale(StaleReason::Outdated)));
        }
        f.seen
            .push(("a-missing".into(), Seen::Stale(StaleReason::Missing)));
        f.seen.push(("z".into(), Seen::Unknown("timeout".into())));
        let v = f.verdict(&g);
        assert_eq!(v.outcome, Outcome::Stale);
        assert_eq!(
            v.observed,
            "8 of 18 namespaces stale: a-missing (missing), stale-0 (outdated), stale-1 (outdated), stale-2 (outdated), stale-3 (outdated) and 3 more"
        );
        let t = v.namespaces.expect("a tally");
        assert_eq!((t.total, t.current, t.stale, t.unknown), (18, 9, 8, 1));
        assert_eq!(t.stale_namespaces.len(), 8);
        assert_eq!(t.stale_namespaces[0].namespace, "a-missing");

        let mut f = Findings::default();
        f.seen.push(("a".into(), Seen::Current));
        f.seen
            .push(("b".into(), Seen::Unknown("403 Forbidden: no".into())));
        let v = f.verdict(&g);
        assert_eq!(v.outcome, Outcome::Unknown);
        assert!(v.observed.contains("b: 403 Forbidden"), "{}", v.observed);

        let mut f = Findings::default();
        f.seen.push(("a".into(), Seen::Current));
        let v = f.verdict(&g);
        assert_eq!(v.outcome, Outcome::Converged);
        assert_eq!(
            v.observed,
            "all 1 namespaces carry the 1 certificate(s) of generation 4"
        );
    }

    /// An API server stand-in: the namespace list in two pages, and each namespace's
    /// `kube-root-ca.crt` from `configmaps` (absent: 404; "deny": 403), one request per
    /// connection. Returns its address and the paths it was asked for.
    async fn api_server(
        configmaps: Vec<(&'static str, Option<String>)>,
    ) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = asked.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut tcp, _)) = listener.accept().await else {
                    return;
                };
                let mut reader = BufReader::new(&mut tcp);
                let mut request = String::new();
                if reader.read_line(&mut request).await.unwrap_or(0) == 0 {
                    continue;
                }
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).await.unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                }
                let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
                log.lock().expect("log").push(path.clone());
                let (status, body) = answer(&path, &configmaps);
                let reply = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                // The client may hang up first; that is not this server's failure.
                tcp.write_all(reply.as_bytes()).await.ok();
                tcp.shutdown().await.ok();
            }
        });
        (addr, asked)
    }

    fn answer(path: &str, configmaps: &[(&str, Option<String>)]) -> (&'static str, String) {
        let meta = |name: &str| serde_json::json!({"metadata": {"name": name, "creationTimestamp": "2020-01-01T00:00:00Z"}});
        let list = |items: Vec<serde_json::Value>, next: &str| {
            serde_json::json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
                "metadata": {"continue": next}, "items": items})
            .to_string()
        };
        let names: Vec<&str> = configmaps.iter().map(|(n, _)| *n).collect();
        if path.starts_with("/api/v1/namespaces?") {
            let (first, rest) = names.split_at(names.len() / 2);
            return if path.contains("continue=page2") {
                ("200 OK", list(rest.iter().map(|n| meta(n)).collect(), ""))
            } else {
                let mut items: Vec<_> = first.iter().map(|n| meta(n)).collect();
                let mut gone = meta("being-deleted");
                gone["metadata"]["deletionTimestamp"] = "2020-01-02T00:00:00Z".into();
                items.push(gone);
                ("200 OK", list(items, "page2"))
            };
        }
        let not_found = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}"#;
        for (ns, pem) in configmaps {
            if path == format!("/api/v1/namespaces/{ns}/configmaps/{CONFIGMAP}") {
                return match pem.as_deref() {
                    None => ("404 Not Found", not_found.to_string()),
                    Some("deny") => ("403 Forbidden", r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"Forbidden","message":"no","code":403}"#.to_string()),
                    Some(pem) => ("200 OK", serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": CONFIGMAP, "namespace": ns}, "data": {CA_KEY: pem}}).to_string()),
                };
            }
        }
        ("404 Not Found", not_found.to_string())
    }

    fn reader(addr: &str) -> RootCaReader {
        let config = kube::Config::new(format!("http://{addr}").parse().expect("uri"));
        RootCaReader::with_client(Client::try_from(config).expect("client"), 2)
    }

    #[tokio::test]
    async fn every_listed_namespace_is_read_and_judged_through_the_api() {
        let (old, new) = (test_pki::ca("old root").pem, test_pki::ca("new root").pem);
        let both = format!("{old}{new}");
        let (addr, asked) = api_server(vec![
            ("default", Some(both.clone())),
            ("kube-public", Some(both.clone())),
            ("kube-system", Some(old.clone())),
            ("team-a", None),
            ("team-b", Some(both.clone())),
        ])
        .await;
        let v = reader(&addr).check(&generation(&both)).await;
        assert_eq!(v.outcome, Outcome::Stale, "{v:?}");
        assert_eq!(
            v.observed,
            "2 of 5 namespaces stale: kube-system (outdated), team-a (missing)"
        );
        let t = v.namespaces.expect("tally");
        assert_eq!((t.total, t.current, t.stale, t.unknown), (5, 3, 2, 0));
        let asked = asked.lock().expect("log").clone();
        assert!(
            !asked.iter().any(|p| p.contains("being-deleted")),
            "a terminating namespace is not read: {asked:?}"
        );
        assert!(
            asked.iter().all(|p| p.starts_with("/api/v1/namespaces?")
                || p.ends_with(&format!("/configmaps/{CONFIGMAP}"))),
            "only the namespace list and the one ConfigMap by name: {asked:?}"
        );

        let v = reader(&addr).check(&generation(&old)).await;
        assert_eq!(v.outcome, Outcome::Stale, "team-a still lacks it: {v:?}");

        let (addr, _) =
            api_server(vec![("a", Some(old.clone())), ("b", Some("deny".into()))]).await;
        let v = reader(&addr).check(&generation(&old)).await;
        assert_eq!(v.outcome, Outcome::Unknown, "{v:?}");
        assert!(v.observed.contains("403"), "{}", v.observed);

        let v = reader("127.0.0.1:1").check(&generation(&old)).await;
        assert_eq!(v.outcome, Outcome::Unknown, "{v:?}");
        assert!(
            v.observed.starts_with("unknown: listing namespaces"),
            "{}",
            v.observed
        );
    }
}
