//! `check = "http"` and `check = "jwks"` probes against a TLS server that behaves like
//! kube-apiserver where it matters to them:
//!
//! - it accepts *any* client certificate in the handshake (Go's `tls.RequestClientCert`, as
//!   k8s.io/apiserver's `secure_serving.go` sets it) and verifies it per request against the CA it
//!   currently trusts, answering 401 when it does not (the x509 authenticator; never anonymous);
//! - `POST /apis/authentication.k8s.io/v1/selfsubjectreviews` answers 201 with the user,
//!   `GET /healthz` 200, `GET /openid/v1/jwks` the key set it loaded at "start-up";
//! - it can be made to answer 503 (an apiserver that is not ready).
//!
//! The probe under `check = "tls"` is configured next to the `check = "http"` one: after a client
//! CA rotation the server does not trust, the TLS probe reports converged (today's false green)
//! while the HTTP probe reports stale with the 401 it saw.

use std::{
    fs,
    io::{Read, Write},
    net::TcpStream,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use certreload_e2e::{
    pki::{Leaf, TestCa},
    Agent, EVENT_DEADLINE,
};
use rustls::{
    client::danger::HandshakeSignatureValid,
    crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider},
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, UnixTime},
    server::{
        danger::{ClientCertVerified, ClientCertVerifier},
        WebPkiClientVerifier,
    },
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// The user the fake API server authenticates a trusted client certificate as (kubeadm's
/// apiserver-kubelet-client).
const USER: &str = "kube-apiserver-kubelet-client";
const SSR_PATH: &str = "/apis/authentication.k8s.io/v1/selfsubjectreviews";

/// What the fake API server trusts and serves; the test changes it as a restart would.
#[derive(Default)]
struct Behaviour {
    /// CA certificates it verifies client certificates with (`--client-ca-file`).
    client_cas: Vec<CertificateDer<'static>>,
    /// DER SubjectPublicKeyInfos of its ServiceAccount keys (`--service-account-key-file`).
    sa_keys: Vec<Vec<u8>>,
    /// Answer 503 to everything.
    unavailable: bool,
    /// Every request: (request line, content type, body).
    requests: Vec<(String, String, String)>,
}

/// `tls.RequestClientCert`: asks for a certificate, takes any (or none); the handshake signature
/// still proves the client holds the key.
#[derive(Debug)]
struct RequestClientCert(Arc<CryptoProvider>);

impl ClientCertVerifier for RequestClientCert {
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Kubernetes' key id (`keyIDFromPublicKey`), written independently of the agent's: base64url
/// without padding of the SHA-256 of the DER SubjectPublicKeyInfo.
fn kubernetes_kid(spki: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let digest = Sha256::digest(spki);
    let mut out = String::new();
    for chunk in digest.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// The DER inside a `PUBLIC KEY` PEM.
fn spki_of(public_pem: &str) -> Vec<u8> {
    rustls::pki_types::SubjectPublicKeyInfoDer::from_pem_slice(public_pem.as_bytes())
        .expect("public key PEM")
        .to_vec()
}

/// A TLS server on 127.0.0.1 with the behaviour above, on its own tokio runtime.
struct FakeApiServer {
    port: u16,
    behaviour: Arc<Mutex<Behaviour>>,
    _runtime: tokio::runtime::Runtime,
}

impl FakeApiServer {
    fn start(serving_cert: &str, serving_key: &str, behaviour: Behaviour) -> FakeApiServer {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(serving_cert.as_bytes())
                .collect::<Result<_, _>>()
                .expect("serving chain");
        let key = PrivateKeyDer::from_pem_slice(serving_key.as_bytes()).expect("serving key");
        let config = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_client_cert_verifier(Arc::new(RequestClientCert(provider.clone())))
            .with_single_cert(chain, key)
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let behaviour = Arc::new(Mutex::new(behaviour));
        let state = behaviour.clone();
        runtime.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, state, provider) =
                    (acceptor.clone(), state.clone(), provider.clone());
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        serve(tls, &state, &provider).await;
                    }
                });
            }
        });
        FakeApiServer {
            port,
            behaviour,
            _runtime: runtime,
        }
    }

    fn change(&self, f: impl FnOnce(&mut Behaviour)) {
        f(&mut self.behaviour.lock().expect("behaviour"));
    }

    fn requests(&self) -> Vec<(String, String, String)> {
        self.behaviour.lock().expect("behaviour").requests.clone()
    }
}

/// Who the request authenticated as: `Ok(Some(user))`, `Ok(None)` (no certificate: anonymous),
/// `Err(())` (a certificate the current client CAs do not verify: 401, never anonymous).
fn authenticate(
    peer: Option<&[CertificateDer<'static>]>,
    client_cas: &[CertificateDer<'static>],
    provider: &Arc<CryptoProvider>,
) -> Result<Option<&'static str>, ()> {
    let Some((leaf, intermediates)) = peer.and_then(|c| c.split_first()) else {
        return Ok(None);
    };
    let mut roots = RootCertStore::empty();
    for ca in client_cas {
        roots.add(ca.clone()).map_err(|_| ())?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|_| ())?;
    verifier
        .verify_client_cert(leaf, intermediates, UnixTime::now())
        .map(|_| Some(USER))
        .map_err(|_| ())
}

async fn serve(
    mut tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    state: &Mutex<Behaviour>,
    provider: &Arc<CryptoProvider>,
) {
    let peer = tls.get_ref().1.peer_certificates().map(<[_]>::to_vec);
    let mut reader = BufReader::new(&mut tls);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).await.is_err() {
        return;
    }
    let (mut length, mut content_type) = (0usize, String::new());
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap_or(0),
                "content-type" => content_type = value.trim().to_string(),
                _ => {}
            }
        }
    }
    let mut body = vec![0u8; length];
    if reader.read_exact(&mut body).await.is_err() {
        return;
    }
    let request_line = request_line.trim_end().to_string();
    let (status, reason, answer, chunked) = {
        let mut b = state.lock().expect("behaviour");
        b.requests.push((
            request_line.clone(),
            content_type,
            String::from_utf8_lossy(&body).into_owned(),
        ));
        respond(
            &request_line,
            &b,
            authenticate(peer.as_deref(), &b.client_cas, provider),
        )
    };
    let head = if chunked {
        format!("HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    } else {
        format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            answer.len()
        )
    };
    let mut out = head.into_bytes();
    if chunked {
        // Two chunks, as a Go server streams a body it did not measure first.
        let (a, b) = answer.split_at(answer.len() / 2);
        for part in [a, b, ""] {
            out.extend_from_slice(format!("{:x}\r\n{part}\r\n", part.len()).as_bytes());
        }
    } else {
        out.extend_from_slice(answer.as_bytes());
    }
    // The prober may hang up early (a timeout under test); its side reports the outcome.
    tls.write_all(&out).await.ok();
    tls.shutdown().await.ok();
}

/// (status, reason, body, chunked).
fn respond(
    request_line: &str,
    b: &Behaviour,
    user: Result<Option<&str>, ()>,
) -> (u16, &'static str, String, bool) {
    if b.unavailable {
        return (503, "Service Unavailable", "{}".into(), false);
    }
    let Ok(user) = user else {
        return (
            401,
            "Unauthorized",
            r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}"#.into(),
            false,
        );
    };
    match (request_line, user) {
        (l, Some(user)) if l == format!("POST {SSR_PATH} HTTP/1.1") => (
            201,
            "Created",
            format!(
                r#"{{"kind":"SelfSubjectReview","apiVersion":"authentication.k8s.io/v1","metadata":{{"creationTimestamp":null}},"status":{{"userInfo":{{"username":"{user}","groups":["kubeadm:cluster-admins","system:authenticated"]}}}}}}"#
            ),
            false,
        ),
        ("GET /healthz HTTP/1.1", _) => (200, "OK", "ok".into(), false),
        ("GET /openid/v1/jwks HTTP/1.1", Some(_)) => {
            let keys: Vec<String> = b
                .sa_keys
                .iter()
                .map(|spki| {
                    format!(
                        r#"{{"use":"sig","kty":"EC","kid":"{}","crv":"P-256","alg":"ES256","x":"AA","y":"AA"}}"#,
                        kubernetes_kid(spki)
                    )
                })
                .collect();
            (
                200,
                "OK",
                format!(r#"{{"keys":[{}]}}"#, keys.join(",")),
                true,
            )
        }
        (_, None) => (403, "Forbidden", "{}".into(), false),
        _ => (404, "Not Found", "{}".into(), false),
    }
}

/// Replaces `to` with `from`'s bytes the way an atomic writer does (temp file, rename).
fn install(dir: &Path, to: &str, contents: &str) {
    let tmp = dir.join(format!(".{to}.tmp"));
    fs::write(&tmp, contents).expect("write");
    fs::rename(&tmp, dir.join(to)).expect("rename");
}

fn seq(record: &Value) -> u64 {
    record["seq"].as_u64().expect("seq")
}

/// `/status` from the agent's admin endpoint.
fn status(agent: &Agent) -> Value {
    let admin = agent.log_field("agent ready", "admin");
    let mut s = TcpStream::connect(&admin).expect("admin");
    write!(
        s,
        "GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("read");
    let (_, body) = answer.split_once("\r\n\r\n").expect("head and body");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("/status is not JSON ({e}): {body}"))
}

/// Waits until `/status` shows `probe`'s observation matching `pred`.
fn wait_observed(agent: &Agent, probe: &str, pred: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + EVENT_DEADLINE;
    loop {
        let o = observed(agent, probe);
        if pred(&o) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{probe} never showed the expected observation; last: {o}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn observed(agent: &Agent, probe: &str) -> String {
    let s = status(agent);
    s["probes"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == probe))
        .and_then(|p| p["observed"].as_str())
        .unwrap_or_else(|| panic!("no probe {probe} in /status: {s}"))
        .to_string()
}

#[test]
fn http_probe_reports_the_401_where_the_tls_probe_reports_a_false_convergence() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let old_ca = TestCa::new("cluster CA old");
    let new_ca = TestCa::new("cluster CA new");
    let serving_ca = TestCa::new("apiserver serving CA");
    let (serving_cert, serving_key) = serving_ca.issue(&Leaf::server("localhost"));
    let (client_cert, client_key) = old_ca.issue(&Leaf::client(USER));
    install(d, "ca.crt", &old_ca.pem);
    install(d, "client.crt", &client_cert);
    install(d, "client.key", &client_key);
    install(d, "apiserver.crt", &serving_cert);
    install(d, "apiserver.key", &serving_key);
    let server = FakeApiServer::start(
        &serving_cert,
        &serving_key,
        Behaviour {
            client_cas: vec![CertificateDer::from_pem_slice(old_ca.pem.as_bytes()).expect("ca")],
            ..Behaviour::default()
        },
    );
    let audit = d.join("audit.jsonl");
    let probe = |name: &str, bundle: &str, check: &str, deadline: &str| {
        format!(
            "[[probe]]\nname = \"{name}\"\nendpoint = \"127.0.0.1:{port}\"\nserver_name = \"localhost\"\nbundle = \"{bundle}\"\nclient_bundle = \"apiserver-kubelet-client\"\n{check}\ndeadline = \"{deadline}\"\ninterval = \"500ms\"\n",
            port = server.port
        )
    };
    let review = format!("check = \"http\"\nrequest = \"POST {SSR_PATH}\"");
    fs::write(
        d.join("certreload.toml"),
        format!(
            r#"
[agent]
admin = "127.0.0.1:0"
[audit]
path = "{audit}"
[[bundle]]
name = "kubernetes-ca"
kind = "ca"
cert = "{d}/ca.crt"
[[bundle]]
name = "apiserver-kubelet-client"
kind = "client"
cert = "{d}/client.crt"
key = "{d}/client.key"
[[bundle]]
name = "apiserver"
kind = "server"
cert = "{d}/apiserver.crt"
key = "{d}/apiserver.key"
{http}{tls}{serving}{patient}"#,
            audit = audit.display(),
            d = d.display(),
            http = probe("client-ca-http", "kubernetes-ca", &review, "2s"),
            tls = probe("client-ca-tls", "kubernetes-ca", "", "2s"),
            serving = probe("serving-http", "apiserver", "check = \"http\"", "2s"),
            // The same check with a deadline no step of this test reaches: it shows what
            // happens before a deadline.
            patient = probe("patient-http", "kubernetes-ca", &review, "10m"),
        ),
    )
    .expect("write");

    let agent = Agent::start(&d.join("certreload.toml"), &audit, &[]);
    for p in [
        "client-ca-http",
        "client-ca-tls",
        "serving-http",
        "patient-http",
    ] {
        agent.expect_record(&format!("{p} converged at start-up"), |r| {
            r["event"] == "endpoint_converged" && r["probe"] == p && r["trigger"] == "startup"
        });
    }
    assert_eq!(
        observed(&agent, "client-ca-http"),
        format!("trusted: authenticated as {USER} (201)")
    );
    assert_eq!(
        observed(&agent, "serving-http"),
        "serves the current certificate; trusted: authenticated (200)"
    );
    let requests = server.requests();
    let review = requests
        .iter()
        .find(|(line, _, _)| line.starts_with("POST "))
        .expect("a SelfSubjectReview was sent");
    assert_eq!(review.0, format!("POST {SSR_PATH} HTTP/1.1"));
    assert_eq!(review.1, "application/json");
    assert_eq!(
        review.2,
        r#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#
    );

    // The cluster CA bundle gains the new CA (the old one stays: the client is still old-issued).
    install(d, "ca.crt", &format!("{}{}", old_ca.pem, new_ca.pem));
    agent.expect_record(
        "ca generation 2 trusted (the client is still old-issued)",
        |r| {
            r["event"] == "endpoint_converged"
                && r["probe"] == "client-ca-http"
                && r["generation"] == 2
        },
    );

    // The client certificate is re-issued by the new CA; the server still trusts only the old.
    let (client_cert, client_key) = new_ca.issue(&Leaf::client(USER));
    install(d, "client.key", &client_key);
    install(d, "client.crt", &client_cert);
    let rotated = agent.expect_record("new client certificate accepted", |r| {
        r["event"] == "material_accepted"
            && r["bundle"] == "apiserver-kubelet-client"
            && r["new_generation"] == 2
    });
    let stale = agent.expect_record("the http probe sees the 401", |r| {
        r["event"] == "endpoint_stale" && r["probe"] == "client-ca-http" && seq(r) > seq(&rotated)
    });
    assert_eq!(stale["generation"], 2, "{stale}");
    assert_eq!(
        stale["observed"], "not trusted: the client certificate was refused (401)",
        "{stale}"
    );
    let false_green = agent.expect_record("the tls probe hears silence and says converged", |r| {
        r["event"] == "endpoint_converged"
            && r["probe"] == "client-ca-tls"
            && seq(r) > seq(&rotated)
    });
    assert_eq!(false_green["generation"], 2, "{false_green}");
    let serving_stale = agent.expect_record("the serving probe needs no 401 too", |r| {
        r["event"] == "endpoint_stale" && r["probe"] == "serving-http" && seq(r) > seq(&rotated)
    });
    assert_eq!(
        serving_stale["observed"],
        "serves the current certificate; not trusted: the client certificate was refused (401)"
    );
    assert!(
        !agent
            .records()
            .iter()
            .any(|r| r["event"] == "endpoint_stale"
                && r["probe"] == "client-ca-tls"
                && seq(r) > seq(&rotated)),
        "check = \"tls\" cannot see a per-request refusal"
    );

    // The server reloads its client CA file: trusted again, over the same probes.
    server.change(|b| {
        b.client_cas
            .push(CertificateDer::from_pem_slice(new_ca.pem.as_bytes()).expect("ca"))
    });
    let converged = agent.expect_record("trusted after the server's reload", |r| {
        r["event"] == "endpoint_converged" && r["probe"] == "client-ca-http" && seq(r) > seq(&stale)
    });
    assert_eq!(converged["generation"], 2);
    agent.expect_record("serving probe back too", |r| {
        r["event"] == "endpoint_converged" && r["probe"] == "serving-http" && seq(r) > seq(&stale)
    });
    assert_eq!(
        observed(&agent, "client-ca-http"),
        format!("trusted: authenticated as {USER} (201)")
    );
    let patient = agent.expect_record("patient probe converged after the reload", |r| {
        r["event"] == "endpoint_converged" && r["probe"] == "patient-http" && seq(r) > seq(&rotated)
    });

    // Not ready (503): unknown, never converged; reported stale only once it outlasts the
    // deadline, with the reason; converged again when the server answers.
    server.change(|b| b.unavailable = true);
    wait_observed(&agent, "patient-http", |o| {
        o.starts_with("unknown: POST ") && o.ends_with(" answered 503 Service Unavailable")
    });
    let records_about = |probe: &str, after: u64| -> Vec<Value> {
        agent
            .records()
            .into_iter()
            .filter(|r| r["probe"] == probe && seq(r) > after)
            .collect()
    };
    assert_eq!(
        records_about("patient-http", seq(&patient)),
        Vec::<Value>::new(),
        "an inconclusive answer is not reported (nor acted on) before the deadline"
    );
    let unknown = agent.expect_record("503 outlasting the deadline", |r| {
        r["event"] == "endpoint_stale" && r["probe"] == "client-ca-http" && seq(r) > seq(&converged)
    });
    assert_eq!(unknown["trigger"], "interval", "{unknown}");
    assert_eq!(
        unknown["observed"],
        format!("unknown: POST {SSR_PATH} answered 503 Service Unavailable"),
        "{unknown}"
    );
    server.change(|b| b.unavailable = false);
    agent.expect_record("answers again", |r| {
        r["event"] == "endpoint_converged"
            && r["probe"] == "client-ca-http"
            && r["trigger"] == "interval"
            && seq(r) > seq(&unknown)
    });
    wait_observed(&agent, "patient-http", |o| o.starts_with("trusted: "));
    assert_eq!(
        records_about("patient-http", seq(&patient)),
        Vec::<Value>::new(),
        "a blip that ended before the deadline leaves no record"
    );
    agent.stop();
}

#[test]
fn jwks_probe_is_stale_until_the_api_server_serves_every_key_id_of_the_bundle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let client_ca = TestCa::new("cluster CA");
    let serving_ca = TestCa::new("apiserver serving CA");
    let (serving_cert, serving_key) = serving_ca.issue(&Leaf::server("localhost"));
    let (client_cert, client_key) = client_ca.issue(&Leaf::client(USER));
    install(d, "client.crt", &client_cert);
    install(d, "client.key", &client_key);
    let old = rcgen::KeyPair::generate().expect("sa key");
    let new = rcgen::KeyPair::generate().expect("sa key");
    install(d, "sa.key", &old.serialize_pem());
    install(d, "sa.pub", &old.public_key_pem());
    let server = FakeApiServer::start(
        &serving_cert,
        &serving_key,
        Behaviour {
            client_cas: vec![CertificateDer::from_pem_slice(client_ca.pem.as_bytes()).expect("ca")],
            sa_keys: vec![spki_of(&old.public_key_pem())],
            ..Behaviour::default()
        },
    );
    let audit = d.join("audit.jsonl");
    fs::write(
        d.join("certreload.toml"),
        format!(
            r#"
[agent]
admin = "127.0.0.1:0"
[audit]
path = "{audit}"
[[bundle]]
name = "apiserver-kubelet-client"
kind = "client"
cert = "{d}/client.crt"
key = "{d}/client.key"
[[bundle]]
name = "sa"
kind = "sa-keys"
private_key = "{d}/sa.key"
public_keys = ["{d}/sa.pub"]
[[probe]]
name = "sa-keys"
endpoint = "127.0.0.1:{port}"
server_name = "localhost"
bundle = "sa"
client_bundle = "apiserver-kubelet-client"
check = "jwks"
deadline = "2s"
interval = "500ms"
"#,
            audit = audit.display(),
            d = d.display(),
            port = server.port,
        ),
    )
    .expect("write");

    let agent = Agent::start(&d.join("certreload.toml"), &audit, &[]);
    agent.expect_record("the served key set holds the bundle's key id", |r| {
        r["event"] == "endpoint_converged" && r["probe"] == "sa-keys" && r["trigger"] == "startup"
    });
    assert_eq!(
        observed(&agent, "sa-keys"),
        "accepts all 1 key ids of the bundle"
    );
    assert!(
        server
            .requests()
            .iter()
            .any(|(line, _, _)| line == "GET /openid/v1/jwks HTTP/1.1"),
        "{:?}",
        server.requests()
    );

    // Rotation step one: publish the new public key beside the old, sign with the new key. The
    // API server has not restarted: it still serves only the old key id.
    install(
        d,
        "sa.pub",
        &format!("{}{}", old.public_key_pem(), new.public_key_pem()),
    );
    install(d, "sa.key", &new.serialize_pem());
    let new_kid = kubernetes_kid(&spki_of(&new.public_key_pem()));
    let stale = agent.expect_record("stale: the new key id is not served", |r| {
        r["event"] == "endpoint_stale" && r["probe"] == "sa-keys" && r["trigger"] == "rotation"
    });
    let generation = stale["generation"].as_u64().expect("generation");
    assert!(generation >= 2, "{stale}");
    assert_eq!(
        stale["observed"],
        format!("does not accept 1 of the bundle's 2 key ids: missing {new_kid}"),
        "{stale}"
    );

    // The API server restarts with both keys.
    server.change(|b| {
        b.sa_keys = vec![
            spki_of(&old.public_key_pem()),
            spki_of(&new.public_key_pem()),
        ]
    });
    let converged = agent.expect_record("converged once the key set has both", |r| {
        r["event"] == "endpoint_converged" && r["probe"] == "sa-keys" && seq(r) > seq(&stale)
    });
    assert!(converged["generation"].as_u64() >= Some(generation));
    assert_eq!(
        observed(&agent, "sa-keys"),
        "accepts all 2 key ids of the bundle"
    );
    agent.stop();
}
