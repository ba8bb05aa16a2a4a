//! One TLS handshake with an endpoint certreload does not front, to see what it serves and whether
//! it accepts a client certificate, optionally followed by one HTTP request on the same connection.
//! The probe records the server's certificate instead of trusting it (the point is to compare it
//! with the bundle), but still checks the handshake signature, so the endpoint proved it holds the
//! key of the leaf it showed.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc, Mutex,
};
use std::time::Duration;

use rustls::{
    client::{
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        ResolvesClientCert,
    },
    crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider},
    pki_types::{CertificateDer, ServerName, UnixTime},
    sign::CertifiedKey,
    ClientConfig, DigitallySignedStruct, SignatureScheme,
};
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio::{io::AsyncReadExt, net::TcpStream};

use super::http::{self, BearerToken, HttpError, Response};
use crate::{
    config::converge::ProbeRequest, material::inspect::inspect, reload::generation::Generation,
    sync::LockExt,
};

/// How long connecting and handshaking may take.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the HTTP request and its whole response may take after the handshake.
pub(crate) const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);

/// After a TLS 1.3 handshake the server judges the client certificate; a refusal arrives as an
/// alert shortly after. Silence this long counts as acceptance (`check = "tls"` only: that is
/// right for servers that verify in the handshake, such as etcd, and wrong for Kubernetes servers,
/// which need `check = "http"`).
const CLIENT_VERDICT_WAIT: Duration = Duration::from_millis(750);

/// What the endpoint did.
#[derive(Debug)]
pub(crate) struct Observation {
    /// SHA-256 of the leaf it served (hex, as in generations).
    pub leaf_fingerprint: String,
    /// Its notAfter (Unix seconds), when parsable.
    pub not_after: Option<i64>,
    /// Whether the server asked for a client certificate (a CertificateRequest). A server that
    /// does not ask has no client CA: it cannot be said to trust one.
    pub client_requested: bool,
    /// With a client certificate: `None` when not refused at the TLS level, else the alert or
    /// error it answered with (a failed TLS 1.2 handshake, or an alert after a TLS 1.3 one). The
    /// served leaf is still judged: the server showed it before judging ours.
    pub client_refused: Option<String>,
    /// The answer to the HTTP request, when one was sent and the TLS level did not refuse the
    /// client certificate first.
    pub answer: Option<Result<Response, HttpError>>,
}

/// The endpoint could not be observed.
#[derive(Debug, Error)]
pub(crate) enum ObserveError {
    /// TCP connect failed.
    #[error("connect {endpoint}: {source}")]
    Connect {
        /// `host:port`.
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
    /// The handshake failed before the server proved its certificate.
    #[error("handshake with {endpoint}: {message}")]
    Handshake {
        /// `host:port`.
        endpoint: String,
        /// rustls' description.
        message: String,
    },
    /// No answer within [`HANDSHAKE_TIMEOUT`].
    #[error("{endpoint}: no handshake within {HANDSHAKE_TIMEOUT:?}")]
    Timeout {
        /// `host:port`.
        endpoint: String,
    },
    /// The server name or the client material cannot be used.
    #[error("{0}")]
    Setup(String),
}

/// What the handshake showed of the server, recorded by the verifier as it happens: a TLS 1.2
/// server refusing our certificate fails the handshake after it proved its own, and that leaf is
/// still what it serves.
#[derive(Debug, Default)]
struct Seen {
    leaf: Mutex<Option<CertificateDer<'static>>>,
    /// The server's handshake signature verified against `leaf`.
    proved: AtomicBool,
}

impl Seen {
    fn proved_leaf(&self) -> Option<CertificateDer<'static>> {
        if !self.proved.load(Ordering::Acquire) {
            return None;
        }
        self.leaf.lock_or_recover().clone()
    }
}

/// Accepts any server certificate (it is recorded, not trusted) but verifies handshake signatures.
#[derive(Debug)]
struct RecordServerCert {
    provider: Arc<CryptoProvider>,
    seen: Arc<Seen>,
}

impl RecordServerCert {
    fn proved<T>(&self, r: Result<T, rustls::Error>) -> Result<T, rustls::Error> {
        if r.is_ok() {
            self.seen.proved.store(true, Ordering::Release);
        }
        r
    }
}

impl ServerCertVerifier for RecordServerCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.seen.leaf.lock_or_recover() = Some(end_entity.clone().into_owned());
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.proved(verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.proved(verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        ))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Presents the client certificate whenever asked, and remembers that it was asked.
#[derive(Debug)]
struct RecordClientRequest {
    key: Arc<CertifiedKey>,
    asked: AtomicBool,
}

impl ResolvesClientCert for RecordClientRequest {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        // Always the certificate, whatever CA names the server hints: a Kubernetes server
        // advertises subject names only, and an old and a renewed CA usually share them.
        self.asked.store(true, Ordering::Release);
        Some(self.key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn client_config(
    client: Option<&Generation>,
    seen: Arc<Seen>,
) -> Result<(ClientConfig, Option<Arc<RecordClientRequest>>), ObserveError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ObserveError::Setup(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(RecordServerCert {
            provider: provider.clone(),
            seen,
        }));
    let (mut config, resolver) = match client {
        None => (builder.with_no_client_auth(), None),
        Some(g) => {
            let key = g.material.key.as_ref().ok_or_else(|| {
                ObserveError::Setup(format!("client generation {} has no key", g.number))
            })?;
            let key = CertifiedKey::from_der(g.material.chain.clone(), key.clone_key(), &provider)
                .map_err(|e| ObserveError::Setup(format!("client certificate: {e}")))?;
            let resolver = Arc::new(RecordClientRequest {
                key: Arc::new(key),
                asked: AtomicBool::new(false),
            });
            (
                builder.with_client_cert_resolver(resolver.clone()),
                Some(resolver),
            )
        }
    };
    // Every probe is a full handshake: a resumed session would not show the current leaf.
    config.resumption = rustls::client::Resumption::disabled();
    Ok((config, resolver))
}

/// The TLS alert inside an I/O error from tokio-rustls, when the peer sent one.
fn alert_in(e: &std::io::Error) -> Option<String> {
    match e.get_ref()?.downcast_ref::<rustls::Error>()? {
        alert @ rustls::Error::AlertReceived(_) => Some(alert.to_string()),
        _ => None,
    }
}

fn fingerprint(leaf: &CertificateDer<'_>) -> (String, Option<i64>) {
    (
        hex::encode(Sha256::digest(leaf)),
        inspect(leaf).ok().map(|i| i.not_after),
    )
}

/// Handshakes with `endpoint` as `server_name`, presenting `client` when given; then, with a
/// `request`, sends it on the same connection (with `bearer` as its `Authorization`, when given)
/// and reads the answer (within [`EXCHANGE_TIMEOUT`]).
pub(crate) async fn observe(
    endpoint: &str,
    server_name: &str,
    client: Option<&Generation>,
    request: Option<&ProbeRequest>,
    bearer: Option<&BearerToken>,
) -> Result<Observation, ObserveError> {
    let name = ServerName::try_from(server_name.to_string())
        .map_err(|e| ObserveError::Setup(format!("server_name {server_name:?}: {e}")))?;
    let seen = Arc::new(Seen::default());
    let (config, resolver) = client_config(client, seen.clone())?;
    let tcp = connect(endpoint).await?;
    let mut tls = match handshake(endpoint, name, config, tcp, &seen, resolver.as_deref()).await? {
        Handshake::Done(tls) => *tls,
        Handshake::Refused(observation) => return Ok(observation),
    };
    let (leaf_fingerprint, not_after) = fingerprint(&served_leaf(endpoint, &tls)?);
    let mut observation = Observation {
        leaf_fingerprint,
        not_after,
        client_requested: asked(resolver.as_deref()),
        client_refused: None,
        answer: None,
    };
    match request {
        Some(request) => {
            exchange(
                &mut tls,
                endpoint,
                request,
                bearer,
                client.is_some(),
                &mut observation,
            )
            .await;
        }
        None if client.is_some() => {
            observation.client_refused = client_verdict(&mut tls).await;
        }
        None => {}
    }
    Ok(observation)
}

/// The connection after a handshake.
type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// How a handshake ended that did not fail outright.
enum Handshake {
    /// Done: the server showed its leaf and did not refuse ours at the TLS 1.2 level (boxed: a
    /// TLS stream is large beside an observation).
    Done(Box<Tls>),
    /// A TLS 1.2 server refused the client certificate after it proved its own leaf.
    Refused(Observation),
}

/// Whether the server asked for the client certificate (never, without one).
fn asked(resolver: Option<&RecordClientRequest>) -> bool {
    resolver.is_some_and(|r| r.asked.load(Ordering::Acquire))
}

/// Opens the TCP connection within [`HANDSHAKE_TIMEOUT`].
async fn connect(endpoint: &str) -> Result<TcpStream, ObserveError> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(endpoint))
        .await
        .map_err(|_| ObserveError::Timeout {
            endpoint: endpoint.to_string(),
        })?
        .map_err(|source| ObserveError::Connect {
            endpoint: endpoint.to_string(),
            source,
        })
}

/// Runs the TLS handshake within [`HANDSHAKE_TIMEOUT`]. A failed one is still an observation when
/// the server proved its leaf and then refused ours with an alert (how TLS 1.2 refuses).
async fn handshake(
    endpoint: &str,
    name: ServerName<'static>,
    config: ClientConfig,
    tcp: TcpStream,
    seen: &Seen,
    resolver: Option<&RecordClientRequest>,
) -> Result<Handshake, ObserveError> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, tcp))
        .await
        .map_err(|_| ObserveError::Timeout {
            endpoint: endpoint.to_string(),
        })? {
        Ok(tls) => Ok(Handshake::Done(Box::new(tls))),
        Err(e) => {
            // A TLS 1.2 server refuses a client certificate by failing the handshake, after it
            // proved its own leaf: judge that leaf, and report the refusal.
            if let (Some(alert), Some(leaf), true) =
                (alert_in(&e), seen.proved_leaf(), asked(resolver))
            {
                let (leaf_fingerprint, not_after) = fingerprint(&leaf);
                return Ok(Handshake::Refused(Observation {
                    leaf_fingerprint,
                    not_after,
                    client_requested: true,
                    client_refused: Some(alert),
                    answer: None,
                }));
            }
            Err(ObserveError::Handshake {
                endpoint: endpoint.to_string(),
                message: e.to_string(),
            })
        }
    }
}

/// The leaf the server showed in a completed handshake; a server that showed none cannot be judged.
fn served_leaf(endpoint: &str, tls: &Tls) -> Result<CertificateDer<'static>, ObserveError> {
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .cloned()
        .ok_or_else(|| ObserveError::Handshake {
            endpoint: endpoint.to_string(),
            message: "the server sent no certificate".into(),
        })
}

/// Sends `request` on the probe's connection and records the answer, or the refusal of the client
/// certificate that arrived in its place.
async fn exchange(
    tls: &mut Tls,
    endpoint: &str,
    request: &ProbeRequest,
    bearer: Option<&BearerToken>,
    with_client: bool,
    observation: &mut Observation,
) {
    let host = endpoint.to_string();
    let answer = http::exchange(
        tls,
        &http::Request {
            method: &request.method,
            path: &request.path,
            host: &host,
            body: request.body(),
            bearer,
        },
        EXCHANGE_TIMEOUT,
    )
    .await;
    // A server that verifies in the handshake (etcd) answers an untrusted TLS 1.3 client
    // with an alert, which arrives where the response would.
    match answer {
        Err(HttpError::Send(ref e) | HttpError::Receive(ref e))
            if with_client && alert_in(e).is_some() =>
        {
            observation.client_refused = alert_in(e);
        }
        answer => observation.answer = Some(answer),
    }
}

/// Without a request, waits [`CLIENT_VERDICT_WAIT`] for a TLS 1.3 server's refusal of the client
/// certificate; the error it read, if any.
async fn client_verdict(tls: &mut Tls) -> Option<String> {
    let mut byte = [0u8; 1];
    if let Ok(Err(e)) = tokio::time::timeout(CLIENT_VERDICT_WAIT, tls.read(&mut byte)).await {
        return Some(e.to_string());
    }
    // Data, a clean close or silence: the certificate passed the TLS level.
    None
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use rcgen::ExtendedKeyUsagePurpose;
    use rustls::{server::WebPkiClientVerifier, RootCertStore, ServerConfig};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    use super::*;
    use crate::material::validate::Material;
    use crate::test_pki::{ca, leaf, Ca};

    fn client_generation(ca: &Ca) -> Generation {
        let (cert, key) = leaf(ca, "probe-client", ExtendedKeyUsagePurpose::ClientAuth);
        Generation {
            number: 1,
            accepted_at: SystemTime::now(),
            material: Material {
                leaf: None,
                chain: vec![cert],
                key: Some(key),
                cas: vec![],
                ca_der: vec![],
                key_ids: vec![],
            },
        }
    }

    enum ClientAuth {
        /// etcd: `tls.RequireAndVerifyClientCert` with this CA.
        RequireAndVerify(CertificateDer<'static>),
        /// No CertificateRequest at all.
        None,
    }

    /// A one-connection TLS server; with `answer`, it reads one request head and writes `answer`.
    /// Returns its address and the served leaf's fingerprint.
    async fn server(
        versions: &[&'static rustls::SupportedProtocolVersion],
        auth: ClientAuth,
        answer: Option<&'static str>,
    ) -> (String, String) {
        let serving_ca = ca("serving CA");
        let (cert, key) = leaf(
            &serving_ca,
            "localhost",
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let fingerprint = hex::encode(Sha256::digest(&cert));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .expect("versions");
        let builder = match auth {
            ClientAuth::RequireAndVerify(ca) => {
                let mut roots = RootCertStore::empty();
                roots.add(ca).expect("root");
                builder.with_client_cert_verifier(
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .expect("verifier"),
                )
            }
            ClientAuth::None => builder.with_no_client_auth(),
        };
        let config = builder.with_single_cert(vec![cert], key).expect("config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let Ok(mut tls) = acceptor.accept(tcp).await else {
                return;
            };
            if let Some(answer) = answer {
                let mut reader = BufReader::new(&mut tls);
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).await.unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                }
                // The probe under test may hang up first; that is not this server's failure.
                tls.write_all(answer.as_bytes()).await.ok();
                tls.shutdown().await.ok();
            } else {
                // Hold the connection open: silence, as an accepting server keeps it, until the
                // probe hangs up (what the read returns is only that hang-up).
                let mut byte = [0u8; 1];
                AsyncReadExt::read_exact(&mut tls, &mut byte).await.ok();
            }
        });
        (addr, fingerprint)
    }

    const TLS12: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];
    const TLS13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

    #[tokio::test]
    async fn a_refused_client_certificate_still_shows_the_served_leaf_in_tls12_and_tls13() {
        let trusted = ca("trusted CA");
        let other = ca("other CA");
        let client = client_generation(&other);
        for versions in [TLS12, TLS13] {
            let (addr, served) = server(
                versions,
                ClientAuth::RequireAndVerify(trusted.der.clone()),
                None,
            )
            .await;
            let o = observe(&addr, "localhost", Some(&client), None, None)
                .await
                .expect("observed despite the refusal");
            assert_eq!(o.leaf_fingerprint, served, "{versions:?}");
            assert!(o.client_requested, "{versions:?}");
            assert!(
                o.client_refused
                    .as_deref()
                    .is_some_and(|r| r.contains("alert")),
                "{versions:?}: {o:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_trusted_client_certificate_is_not_refused() {
        let trusted = ca("trusted CA");
        let client = client_generation(&trusted);
        let (addr, served) = server(
            TLS13,
            ClientAuth::RequireAndVerify(trusted.der.clone()),
            None,
        )
        .await;
        let o = observe(&addr, "localhost", Some(&client), None, None)
            .await
            .expect("observed");
        assert_eq!(o.leaf_fingerprint, served);
        assert!(o.client_requested);
        assert_eq!(o.client_refused, None, "{o:?}");
        assert!(o.answer.is_none(), "no request was configured");
    }

    #[tokio::test]
    async fn a_server_that_never_asks_for_a_client_certificate_is_seen_as_such() {
        let client = client_generation(&ca("some CA"));
        let (addr, _) = server(TLS13, ClientAuth::None, None).await;
        let o = observe(&addr, "localhost", Some(&client), None, None)
            .await
            .expect("observed");
        assert!(!o.client_requested, "{o:?}");
        assert_eq!(o.client_refused, None);
    }

    #[tokio::test]
    async fn an_http_request_goes_over_the_probe_connection_and_its_answer_comes_back() {
        let client = client_generation(&ca("client CA"));
        let (addr, served) = server(
            TLS13,
            ClientAuth::None,
            Some("HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\n\r\n{}"),
        )
        .await;
        let request = ProbeRequest::parse("GET /healthz").expect("request");
        let o = observe(&addr, "localhost", Some(&client), Some(&request), None)
            .await
            .expect("observed");
        assert_eq!(o.leaf_fingerprint, served);
        let answer = o.answer.expect("an answer").expect("a response");
        assert_eq!((answer.status, answer.body.as_slice()), (401, &b"{}"[..]));
    }

    /// A one-connection TLS 1.3 server without client authentication that hands back the request
    /// head it read, then answers `answer`.
    async fn recording_server(
        answer: &'static str,
    ) -> (String, tokio::sync::oneshot::Receiver<String>) {
        let serving_ca = ca("serving CA");
        let (cert, key) = leaf(
            &serving_ca,
            "localhost",
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(TLS13)
                .expect("versions")
                .with_no_client_auth()
                .with_single_cert(vec![cert], key)
                .expect("config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let mut tls = acceptor.accept(tcp).await.expect("handshake");
            let mut head = String::new();
            let mut reader = BufReader::new(&mut tls);
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).await.unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            // The probe under test may hang up first, and the test may have stopped listening.
            tls.write_all(answer.as_bytes()).await.ok();
            tls.shutdown().await.ok();
            tx.send(head).ok();
        });
        (addr, rx)
    }

    #[tokio::test]
    async fn a_bearer_token_travels_in_the_request_and_not_in_the_observation() {
        const SECRET: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJwcm9iZSJ9.c2ln";
        let token =
            BearerToken::parse(std::path::Path::new("/t"), SECRET.as_bytes()).expect("token");
        let (addr, head) =
            recording_server("HTTP/1.1 403 Forbidden\r\nContent-Length: 9\r\n\r\nforbidden").await;
        let request = ProbeRequest::parse("GET /openid/v1/jwks").expect("request");
        let o = observe(&addr, "localhost", None, Some(&request), Some(&token))
            .await
            .expect("observed");
        let head = head.await.expect("the server read a request");
        assert!(
            head.starts_with("GET /openid/v1/jwks HTTP/1.1\r\n"),
            "{head}"
        );
        assert!(
            head.contains(&format!("\r\nAuthorization: Bearer {SECRET}\r\n")),
            "{head}"
        );
        assert!(!o.client_requested);
        assert!(!format!("{o:?}").contains(SECRET), "{o:?}");
        assert_eq!(
            o.answer.expect("an answer").expect("a response").status,
            403
        );

        // Without a token, no Authorization header at all.
        let (addr, head) =
            recording_server("HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n").await;
        observe(&addr, "localhost", None, Some(&request), None)
            .await
            .expect("observed");
        let head = head.await.expect("the server read a request");
        assert!(!head.contains("Authorization"), "{head}");
    }

    #[tokio::test]
    async fn an_http_request_to_a_server_that_refuses_in_the_handshake_reports_the_refusal() {
        let trusted = ca("trusted CA");
        let client = client_generation(&ca("other CA"));
        let (addr, served) = server(
            TLS13,
            ClientAuth::RequireAndVerify(trusted.der.clone()),
            Some("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
        )
        .await;
        let request = ProbeRequest::parse("GET /health").expect("request");
        let o = observe(&addr, "localhost", Some(&client), Some(&request), None)
            .await
            .expect("observed");
        assert_eq!(o.leaf_fingerprint, served);
        assert!(o.client_refused.is_some(), "{o:?}");
        assert!(o.answer.is_none(), "{o:?}");
    }
}
