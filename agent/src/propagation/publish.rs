//! The publisher (`[sa_keys] publish = "BUNDLE"`, control-plane nodes): the key identity of every
//! accepted generation of the `sa-keys` bundle goes into the ConfigMap every node agent follows
//! (the seed's "hash of the key as a ConfigMap").
//!
//! - It reads generations from the [`GenerationStore`] only: a change the gate rejects never
//!   becomes a generation, so it is never published.
//! - At start the current generation is published too, so a missing or outdated object is
//!   repaired.
//! - One writer at a time across control-plane nodes: the object is read, then created, or
//!   updated with the resourceVersion it was read with; a 409 (another writer in between) reads
//!   it again and compares. An object that already holds the same key identity (the same kids
//!   and signing kid, e.g. written by another control-plane node with the same files) is left as
//!   it is, so its `published-at` stays the time of the key change.
//! - While the API server cannot be reached, it retries with a backoff; a newer generation
//!   arriving meanwhile replaces the one being retried (the newest wins). It runs in its own task:
//!   the data path never waits for it.
//! - Every write is audited (`sa_keys_published`, with the resourceVersion the API server gave).

use std::{sync::Arc, time::Duration};

use k8s_openapi::{api::core::v1::ConfigMap, apimachinery::pkg::apis::meta::v1::ObjectMeta};
use kube::{api::PostParams, Api};
use tokio::{sync::watch, task::JoinHandle};

use super::{
    api::{self, ApiError},
    board::SaKeysBoard,
    keys::PublishedKeys,
};
use crate::{
    audit::{append_shared, kube_events, AuditEvent, SharedAudit},
    config::{sa_keys::SaKeysSettings, Config},
    reload::generation::{Generation, GenerationStore},
    shutdown::Shutdown,
    telemetry::Metrics,
};

/// First pause before retrying a publication that failed; doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Longest pause between retries: after an API server outage the key identity is written at
/// most this long after the server answers again.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Conflicting writers in a row before the attempt counts as failed (and is retried later).
const MAX_CONFLICTS: u32 = 5;

/// Starts the publisher task when `[sa_keys] publish` names a bundle and API credentials are
/// found; without credentials the agent runs on, unpublished (logged).
pub(crate) async fn start(
    config: &Config,
    store: &Arc<GenerationStore>,
    audit: &SharedAudit,
    metrics: &Arc<Metrics>,
    board: &SaKeysBoard,
    stop: &Shutdown,
) -> Option<JoinHandle<()>> {
    let settings = config.sa_keys.as_ref()?;
    let bundle = settings.publish.clone()?;
    let generations = store
        .subscribe(&bundle)
        .expect("[sa_keys] publish names a configured bundle (checked by the config parser)");
    let node = config
        .events
        .node
        .clone()
        .unwrap_or_else(kube_events::node_name);
    let client = match api::client(&settings.configmap()).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "[sa_keys] publish is set but there are no Kubernetes API credentials; the key identity is not published");
            return None;
        }
    };
    tracing::info!(configmap = %settings.configmap(), bundle = %bundle, node = %node, "publishing the ServiceAccount key identity");
    if !settings.follow {
        // The follower says it otherwise.
        api::note_rbac(&settings.namespace, &settings.name);
    }
    let publisher = Publisher {
        api: Api::namespaced(client, &settings.namespace),
        settings: settings.clone(),
        bundle,
        node,
        audit: audit.clone(),
        metrics: metrics.clone(),
        board: board.clone(),
    };
    Some(tokio::spawn(publisher.run(generations, stop.clone())))
}

/// Writes one bundle's key identity into the ConfigMap.
struct Publisher {
    api: Api<ConfigMap>,
    settings: SaKeysSettings,
    /// The `sa-keys` bundle published.
    bundle: String,
    /// This node (the `publisher` field).
    node: String,
    audit: SharedAudit,
    metrics: Arc<Metrics>,
    board: SaKeysBoard,
}

/// How one attempt to publish a generation ended.
enum Attempt {
    /// Written, or already there.
    Done,
    /// A newer generation arrived first: publish that one instead.
    Superseded,
    /// The agent stops.
    Stopped,
}

/// What a successful write did.
#[derive(Debug, PartialEq, Eq)]
enum Written {
    /// The object was created or updated; the resourceVersion the API server gave.
    Changed(String),
    /// The object already held this key identity (at this resourceVersion, with the generation,
    /// time and publisher of that first write).
    Unchanged(String, Box<PublishedKeys>),
}

impl Publisher {
    /// Publishes the current generation, then every new one, until the agent stops.
    async fn run(
        self,
        mut generations: watch::Receiver<Option<Arc<Generation>>>,
        mut stop: Shutdown,
    ) {
        loop {
            let current = generations.borrow_and_update().clone();
            let attempt = match current {
                Some(generation) => self.publish(&generation, &mut generations, &mut stop).await,
                None => Attempt::Done,
            };
            match attempt {
                Attempt::Stopped => return,
                Attempt::Superseded => continue,
                Attempt::Done => {}
            }
            tokio::select! {
                _ = stop.recv() => return,
                changed = generations.changed() => if changed.is_err() { return },
            }
        }
    }

    /// Publishes `generation`, retrying with a backoff until it is written, a newer generation
    /// arrives or the agent stops.
    async fn publish(
        &self,
        generation: &Generation,
        generations: &mut watch::Receiver<Option<Arc<Generation>>>,
        stop: &mut Shutdown,
    ) -> Attempt {
        let Some(keys) = PublishedKeys::of(generation, &self.node) else {
            tracing::warn!(bundle = %self.bundle, generation = generation.number, "the bundle has no signing key: no key identity to publish");
            return Attempt::Done;
        };
        let mut backoff = FIRST_BACKOFF;
        loop {
            let written = tokio::select! {
                _ = stop.recv() => return Attempt::Stopped,
                written = self.write(&keys) => written,
            };
            match written {
                Ok(written) => {
                    self.record(&keys, written);
                    return Attempt::Done;
                }
                Err(e) => {
                    self.metrics.sa_keys_publish_failures.inc();
                    tracing::warn!(error = %e, generation = keys.generation, retry_in = ?backoff, "cannot publish the ServiceAccount key identity; retrying");
                }
            }
            tokio::select! {
                _ = stop.recv() => return Attempt::Stopped,
                changed = generations.changed() => {
                    return if changed.is_ok() { Attempt::Superseded } else { Attempt::Stopped };
                }
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Reads the object and writes `keys` into it: create, or update conditioned on the
    /// resourceVersion read; a conflict reads it again.
    async fn write(&self, keys: &PublishedKeys) -> Result<Written, ApiError> {
        let configmap = self.settings.configmap();
        let name = &self.settings.name;
        let mut conflicts = 0;
        loop {
            let current = api::call(&configmap, "get", self.api.get_opt(name)).await?;
            if let Some(written) = current.as_ref().and_then(|c| already_there(c, keys)) {
                return Ok(written);
            }
            let params = PostParams::default();
            let result = match current {
                Some(mut object) => {
                    // Keeps the resourceVersion read: the update is refused (409) if another
                    // writer came in between.
                    object.data = Some(keys.to_data());
                    let update = self.api.replace(name, &params, &object);
                    api::call(&configmap, "update", update).await
                }
                None => {
                    let object = self.object(keys);
                    let create = self.api.create(&params, &object);
                    api::call(&configmap, "create", create).await
                }
            };
            match result {
                Ok(object) => {
                    return Ok(Written::Changed(
                        object.metadata.resource_version.unwrap_or_default(),
                    ))
                }
                Err(e) if e.is_conflict() && conflicts < MAX_CONFLICTS => {
                    conflicts += 1;
                    tracing::info!(error = %e, "another writer changed the key identity ConfigMap since it was read; reading it again");
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A new object holding `keys`.
    fn object(&self, keys: &PublishedKeys) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(self.settings.name.clone()),
                namespace: Some(self.settings.namespace.clone()),
                labels: Some(
                    [(
                        "app.kubernetes.io/name".to_string(),
                        "certreload".to_string(),
                    )]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            data: Some(keys.to_data()),
            ..ConfigMap::default()
        }
    }

    /// Audits a write (an object left as it was is logged only) and shows it in `/status`.
    fn record(&self, keys: &PublishedKeys, written: Written) {
        let configmap = self.settings.configmap();
        match written {
            Written::Unchanged(resource_version, there) => {
                tracing::info!(configmap = %configmap, generation = keys.generation, published_generation = there.generation, publisher = %there.publisher, "the key identity ConfigMap already holds these keys; left as it is");
                self.board.published(&there, &resource_version);
            }
            Written::Changed(resource_version) => {
                tracing::info!(configmap = %configmap, generation = keys.generation, signing_kid = %keys.signing_kid, resource_version = %resource_version, "published the ServiceAccount key identity");
                self.board.published(keys, &resource_version);
                let event = AuditEvent::SaKeysPublished {
                    configmap,
                    kids: keys.kids.clone(),
                    signing_kid: keys.signing_kid.clone(),
                    signing_key_sha256: keys.signing_key_sha256(),
                    generation: keys.generation,
                    resource_version,
                };
                if let Err(e) = append_shared(&self.audit, Some(&self.bundle), &event) {
                    tracing::error!(error = %e, "cannot record the key identity publication in the audit log");
                }
            }
        }
    }
}

/// `Some` when `object` already holds the key identity of `keys` (the same kids and signing
/// kid, whoever wrote it and whichever generation it came from).
fn already_there(object: &ConfigMap, keys: &PublishedKeys) -> Option<Written> {
    let there = PublishedKeys::from_data(object.data.as_ref()?).ok()?;
    (there.kids == keys.kids && there.signing_kid == keys.signing_kid).then(|| {
        Written::Unchanged(
            object.metadata.resource_version.clone().unwrap_or_default(),
            Box::new(there),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(signing: u8, kids: &[u8], generation: u64) -> PublishedKeys {
        let kid = |n: u8| crate::material::validate::kubernetes_key_id(&[n]);
        let mut kids: Vec<String> = kids.iter().map(|&n| kid(n)).collect();
        kids.sort();
        PublishedKeys {
            kids,
            signing_kid: kid(signing),
            generation,
            published_at: "2026-11-30T09:00:00Z".into(),
            publisher: "cp-1".into(),
        }
    }

    fn configmap(data: Option<&PublishedKeys>) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                resource_version: Some("42".into()),
                ..ObjectMeta::default()
            },
            data: data.map(PublishedKeys::to_data),
            ..ConfigMap::default()
        }
    }

    /// One scripted answer of the stub API server: (method expected, status, JSON body).
    type Answer = (&'static str, u16, String);

    /// A stub API server on loopback answering `script` in order over keep-alive connections;
    /// returns its URL and the requests it received (method, path, body).
    async fn stub_api(
        script: Vec<Answer>,
    ) -> (String, Arc<std::sync::Mutex<Vec<(String, String, String)>>>) {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let script = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::from(
            script,
        )));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let (log, script) = (log.clone(), script.clone());
                tokio::spawn(async move {
                    let (r, mut w) = conn.into_split();
                    let mut r = BufReader::new(r);
                    loop {
                        let mut head = String::new();
                        if r.read_line(&mut head).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let mut length = 0;
                        loop {
                            let mut line = String::new();
                            r.read_line(&mut line).await.expect("header");
                            if line.trim().is_empty() {
                                break;
                            }
                            if let Some(v) =
                                line.to_ascii_lowercase().strip_prefix("content-length:")
                            {
                                length = v.trim().parse().expect("length");
                            }
                        }
                        let mut body = vec![0; length];
                        r.read_exact(&mut body).await.expect("body");
                        let mut words = head.split_whitespace();
                        let (method, path) = (
                            words.next().unwrap_or_default(),
                            words.next().unwrap_or_default(),
                        );
                        log.lock().expect("log").push((
                            method.to_string(),
                            path.to_string(),
                            String::from_utf8_lossy(&body).into_owned(),
                        ));
                        let (want, status, answer) = script
                            .lock()
                            .expect("script")
                            .pop_front()
                            .expect("a scripted answer");
                        assert_eq!(method, want, "request {head}");
                        let reply = format!(
                            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
                            answer.len()
                        );
                        w.write_all(reply.as_bytes()).await.expect("reply");
                    }
                });
            }
        });
        (url, seen)
    }

    fn object_json(keys: &PublishedKeys, rv: &str) -> String {
        serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "certreload-sa-keys", "namespace": "kube-system", "resourceVersion": rv},
            "data": keys.to_data(),
        })
        .to_string()
    }

    fn publisher(url: &str, dir: &std::path::Path) -> Publisher {
        let config = kube::Config::new(url.parse().expect("uri"));
        let client = kube::Client::try_from(config).expect("client");
        let audit = crate::audit::AuditLog::open(&dir.join("audit.jsonl"), 1 << 20).expect("audit");
        Publisher {
            api: Api::namespaced(client, "kube-system"),
            settings: SaKeysSettings {
                namespace: "kube-system".into(),
                name: "certreload-sa-keys".into(),
                publish: Some("sa".into()),
                follow: false,
            },
            bundle: "sa".into(),
            node: "cp-1".into(),
            audit: Arc::new(std::sync::Mutex::new(audit)),
            metrics: Arc::new(Metrics::default()),
            board: SaKeysBoard::new("kube-system/certreload-sa-keys", false),
        }
    }

    #[tokio::test]
    async fn a_conflicting_writer_makes_it_read_again_and_update_what_it_read() {
        let ours = keys(2, &[1, 2], 3);
        let conflict =
            serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": "the object has been modified", "reason": "Conflict", "code": 409})
            .to_string();
        let (url, seen) = stub_api(vec![
            ("GET", 200, object_json(&keys(1, &[1], 1), "1")),
            ("PUT", 409, conflict),
            ("GET", 200, object_json(&keys(1, &[1, 2], 2), "2")),
            ("PUT", 200, object_json(&ours, "3")),
        ])
        .await;
        let dir = tempfile::tempdir().expect("tempdir");
        let written = publisher(&url, dir.path())
            .write(&ours)
            .await
            .expect("written");
        assert_eq!(written, Written::Changed("3".into()));
        let seen = seen.lock().expect("seen").clone();
        let puts: Vec<serde_json::Value> = seen
            .iter()
            .filter(|(m, _, _)| m == "PUT")
            .map(|(_, path, body)| {
                assert!(
                    path.starts_with(
                        "/api/v1/namespaces/kube-system/configmaps/certreload-sa-keys"
                    ),
                    "{path}"
                );
                serde_json::from_str(body).expect("JSON")
            })
            .collect();
        assert_eq!(puts[0]["metadata"]["resourceVersion"], "1");
        assert_eq!(
            puts[1]["metadata"]["resourceVersion"], "2",
            "the update is conditioned on the object read again"
        );
        assert_eq!(puts[1]["data"]["signing-kid"], ours.signing_kid.as_str());
    }

    #[tokio::test]
    async fn an_absent_object_is_created_and_one_holding_the_keys_is_not_written() {
        let ours = keys(2, &[1, 2], 3);
        let absent = serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": "NotFound", "code": 404})
        .to_string();
        let (url, seen) = stub_api(vec![
            ("GET", 404, absent),
            ("POST", 201, object_json(&ours, "7")),
            ("GET", 200, object_json(&ours, "7")),
        ])
        .await;
        let dir = tempfile::tempdir().expect("tempdir");
        let p = publisher(&url, dir.path());
        assert_eq!(
            p.write(&ours).await.expect("created"),
            Written::Changed("7".into())
        );
        assert_eq!(
            p.write(&ours).await.expect("read"),
            Written::Unchanged("7".into(), Box::new(ours))
        );
        let methods: Vec<String> = seen
            .lock()
            .expect("seen")
            .iter()
            .map(|r| r.0.clone())
            .collect();
        assert_eq!(methods, ["GET", "POST", "GET"]);
    }

    /// An accepted sa-keys generation signing with a new key.
    fn sa_generation(number: u64) -> Generation {
        use crate::material::validate::{kubernetes_key_id, public_key_of, Material};
        let pair = rcgen::KeyPair::generate().expect("key");
        let key = rustls_pki_types::PrivateKeyDer::from(
            rustls_pki_types::PrivatePkcs8KeyDer::from(pair.serialize_der()),
        );
        let kid = kubernetes_key_id(public_key_of(&key).expect("public key").as_ref());
        Generation {
            number,
            accepted_at: std::time::SystemTime::now(),
            material: Material {
                leaf: None,
                chain: vec![],
                key: Some(key),
                cas: vec![],
                ca_der: vec![],
                key_ids: vec![kid],
            },
        }
    }

    #[tokio::test]
    async fn retries_while_the_api_server_fails_and_a_newer_generation_wins() {
        // 500: kube-client retries 429, 503 and 504 itself before the publisher sees them.
        let unavailable = serde_json::json!({"kind": "Status", "apiVersion": "v1",
            "status": "Failure", "reason": "InternalError", "code": 500})
        .to_string();
        let absent = serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": "NotFound", "code": 404})
        .to_string();
        let store = Arc::new(GenerationStore::new(["sa"]));
        let first = store.publish("sa", sa_generation(1));
        let newer = sa_generation(2);
        let newer_keys = PublishedKeys::of(&newer, "cp-1").expect("a signing key");
        let (url, seen) = stub_api(vec![
            ("GET", 500, unavailable),
            ("GET", 404, absent),
            ("POST", 201, object_json(&newer_keys, "5")),
        ])
        .await;
        let dir = tempfile::tempdir().expect("tempdir");
        let p = publisher(&url, dir.path());
        let (metrics, board) = (p.metrics.clone(), p.board.clone());
        let (stop, stop_rx) = crate::shutdown::channel();
        let task = tokio::spawn(p.run(store.subscribe("sa").expect("slot"), stop_rx));
        let requests = |n: usize| {
            let seen = seen.clone();
            async move {
                while seen.lock().expect("seen").len() < n {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), requests(1))
            .await
            .expect("the first attempt");
        // While generation 1 waits for its retry, generation 2 is accepted: it is published
        // instead, and generation 1 never is.
        store.publish("sa", newer);
        tokio::time::timeout(Duration::from_secs(10), requests(3))
            .await
            .expect("generation 2 written");
        let post = seen.lock().expect("seen")[2].clone();
        assert_eq!(post.0, "POST");
        let body: serde_json::Value = serde_json::from_str(&post.2).expect("JSON");
        assert_eq!(body["data"]["generation"], "2");
        assert_ne!(
            body["data"]["signing-kid"],
            PublishedKeys::of(&first, "cp-1")
                .expect("keys")
                .signing_kid
                .as_str()
        );
        assert_eq!(metrics.sa_keys_publish_failures.get(), 1);
        // The record and /status follow the write.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while board.status().published.is_none() {
            assert!(tokio::time::Instant::now() < deadline, "not on the board");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(board.status().published.map(|o| o.generation), Some(2));
        stop.stop();
        task.await.expect("the publisher stops");
        let log = std::fs::read_to_string(dir.path().join("audit.jsonl")).expect("audit");
        let published: Vec<serde_json::Value> = log
            .lines()
            .map(|l| serde_json::from_str(l).expect("record"))
            .filter(|r: &serde_json::Value| r["event"] == "sa_keys_published")
            .collect();
        assert_eq!(published.len(), 1, "{log}");
        assert_eq!(published[0]["generation"], 2);
        assert_eq!(published[0]["resource_version"], "5");
        assert_eq!(published[0]["bundle"], "sa");
    }

    #[test]
    fn the_configs_default_object_is_the_schemas() {
        assert_eq!(
            crate::config::sa_keys::DEFAULT_CONFIGMAP,
            format!(
                "{}/{}",
                super::super::keys::DEFAULT_NAMESPACE,
                super::super::keys::DEFAULT_NAME
            )
        );
    }

    #[test]
    fn the_same_key_identity_from_another_generation_or_node_is_left_as_it_is() {
        let mut there = keys(1, &[1, 2], 7);
        there.publisher = "cp-2".into();
        let ours = keys(1, &[1, 2], 1);
        assert_eq!(
            already_there(&configmap(Some(&there)), &ours),
            Some(Written::Unchanged("42".into(), Box::new(there)))
        );
    }

    #[test]
    fn another_signing_key_another_key_set_or_no_valid_data_is_written() {
        let ours = keys(2, &[1, 2], 3);
        for there in [
            configmap(Some(&keys(1, &[1, 2], 2))),
            configmap(Some(&keys(2, &[2], 2))),
            configmap(None),
        ] {
            assert_eq!(already_there(&there, &ours), None, "{there:?}");
        }
        let mut malformed = configmap(Some(&ours));
        if let Some(d) = malformed.data.as_mut() {
            d.remove("signing-kid");
        }
        assert_eq!(
            already_there(&malformed, &ours),
            None,
            "malformed: rewritten"
        );
    }
}
