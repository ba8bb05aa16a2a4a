//! One HTTP(S) request the way the kubelet probes a static pod: HTTPS without verifying the
//! server's certificate (the kubelet's probes skip verification too), no client certificate.
//! It also reports the leaf the server presented, so a test can compare it with a file.

use std::{
    io::{Read, Write},
    net::{TcpStream, ToSocketAddrs},
    sync::Arc,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{ring, verify_tls12_signature, verify_tls13_signature, CryptoProvider},
    pki_types::{CertificateDer, ServerName, UnixTime},
    ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned,
};

/// What one request got back.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status code.
    pub status: u16,
    /// The response (headers and body, lossy UTF-8), for failure messages.
    pub text: String,
    /// SHA-256 (hex) of the DER leaf the server presented; `None` over plain HTTP.
    pub leaf_sha256: Option<String>,
}

/// Accepts any server certificate but still checks the handshake signatures (so the leaf
/// reported is one the server holds the key of).
#[derive(Debug)]
struct AnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
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

fn client_config() -> Result<Arc<ClientConfig>> {
    let provider = Arc::new(ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// `GET path` on `host:port` (HTTPS when `https`), with `timeout` for connecting and for each
/// read and write. `server_name` is the SNI sent.
pub fn get(
    host: &str,
    port: u16,
    path: &str,
    https: bool,
    server_name: &str,
    timeout: Duration,
) -> Result<Reply> {
    let addr = (host, port)
        .to_socket_addrs()
        .with_context(|| format!("resolving {host}:{port}"))?
        .next()
        .with_context(|| format!("{host}:{port} resolves to nothing"))?;
    let tcp = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    tcp.set_read_timeout(Some(timeout))?;
    tcp.set_write_timeout(Some(timeout))?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n");
    let (raw, leaf_sha256) = if https {
        let name = ServerName::try_from(server_name.to_string())
            .with_context(|| format!("{server_name:?} is not a server name"))?;
        let conn = ClientConnection::new(client_config()?, name).context("TLS client")?;
        let mut tls = StreamOwned::new(conn, tcp);
        tls.write_all(request.as_bytes())
            .with_context(|| format!("TLS to {addr}"))?;
        let raw = read_to_close(&mut tls).with_context(|| format!("reading from {addr}"))?;
        let leaf = tls
            .conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| crate::sha256_hex(c.as_ref()));
        (raw, leaf)
    } else {
        let mut tcp = tcp;
        tcp.write_all(request.as_bytes())
            .with_context(|| format!("writing to {addr}"))?;
        (
            read_to_close(&mut tcp).with_context(|| format!("reading from {addr}"))?,
            None,
        )
    };
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no HTTP status line from {addr}: {text:?}"))?;
    Ok(Reply {
        status,
        text,
        leaf_sha256,
    })
}

/// Reads until the server closes; a TLS peer that closes without close_notify (Go does, after
/// `Connection: close`) still counts as the end once bytes arrived.
fn read_to_close(stream: &mut impl Read) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !out.is_empty() => {
                return Ok(out)
            }
            Err(e) => {
                if out.is_empty() {
                    return Err(e.into());
                }
                bail!(
                    "{e} after {} bytes: {:?}",
                    out.len(),
                    String::from_utf8_lossy(&out)
                );
            }
        }
    }
}
