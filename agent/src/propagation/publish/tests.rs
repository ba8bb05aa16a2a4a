//! The publisher against stub API servers (what a real one does not produce on demand: a 409
//! from a writer in between, a failing server while a newer generation arrives) and its pure
//! decisions.

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
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
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
    let conflict = serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
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
                path.starts_with("/api/v1/namespaces/kube-system/configmaps/certreload-sa-keys"),
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
    let key = rustls_pki_types::PrivateKeyDer::from(rustls_pki_types::PrivatePkcs8KeyDer::from(
        pair.serialize_der(),
    ));
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
