//! A minimal HTTP/1.1 client for one request over a probe's own mTLS connection.
//!
//! Kubernetes servers judge a client certificate per HTTP request (401 when untrusted), so a probe
//! must speak HTTP on the very connection whose handshake it just observed: a general HTTP client
//! would open its own connection (and pool, resume and retry). This one writes one request with
//! `Connection: close`, reads one response (status line, headers, a body framed by
//! `Content-Length`, chunked encoding or the end of the stream, up to [`MAX_BODY`]) and gives up
//! after a deadline for the whole exchange. Nothing here logs a body.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use thiserror::Error;
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt,
};

/// The most body bytes read (a JWKS or a SelfSubjectReview is a few KiB).
pub(crate) const MAX_BODY: usize = 256 * 1024;
/// The most bytes of status line and headers read.
pub(crate) const MAX_HEAD: usize = 64 * 1024;

/// One request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Request<'a> {
    /// Method token (`GET`).
    pub method: &'a str,
    /// Path and query (`/healthz`).
    pub path: &'a str,
    /// `Host` header value.
    pub host: &'a str,
    /// Content type and body, when there is one.
    pub body: Option<(&'a str, &'a [u8])>,
    /// Sent as `Authorization: Bearer …` when given.
    pub bearer: Option<&'a BearerToken>,
}

/// The most bytes read from a token file (a ServiceAccount token is one or two KiB).
pub(crate) const MAX_TOKEN: u64 = 64 * 1024;

/// A bearer token for the `Authorization` header (`bearer_token_file`). It is a credential: its
/// `Debug` shows only its length, it has no `Display`, and no error quotes it.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct BearerToken(String);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BearerToken(<{} bytes, redacted>)", self.0.len())
    }
}

/// A token file gave no token. Messages name the file, never what it holds.
#[derive(Debug, Error)]
pub(crate) enum TokenError {
    /// The file cannot be read (missing: e.g. no ServiceAccount token mounted).
    #[error("bearer_token_file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Nothing but white space in it.
    #[error("bearer_token_file {} is empty", path.display())]
    Empty { path: PathBuf },
    /// More than one line, control characters, spaces, or over [`MAX_TOKEN`] bytes: it cannot be
    /// sent in a header as it is.
    #[error(
        "bearer_token_file {} does not hold a token (one line of at most {MAX_TOKEN} visible ASCII characters)",
        path.display()
    )]
    Malformed { path: PathBuf },
}

impl BearerToken {
    /// The token in `bytes` (the content of `path`), surrounding white space (a trailing newline)
    /// removed.
    pub(crate) fn parse(path: &Path, bytes: &[u8]) -> Result<BearerToken, TokenError> {
        let malformed = || TokenError::Malformed {
            path: path.to_path_buf(),
        };
        if bytes.len() as u64 > MAX_TOKEN {
            return Err(malformed());
        }
        let text = std::str::from_utf8(bytes).map_err(|_| malformed())?.trim();
        if text.is_empty() {
            return Err(TokenError::Empty {
                path: path.to_path_buf(),
            });
        }
        // Visible ASCII only: nothing that could end the header line or start another.
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(malformed());
        }
        Ok(BearerToken(text.to_string()))
    }

    /// Reads the token from `path` now (a projected token is replaced in place, so every check
    /// reads it again). Non-blocking open on the blocking pool: a FIFO or device at the path is
    /// refused by type, never waited on.
    pub(crate) async fn read(path: &Path) -> Result<BearerToken, TokenError> {
        use crate::regular_file::{read_bounded, OpenError, ReadBoundedError};
        let read = |source| TokenError::Read {
            path: path.to_path_buf(),
            source,
        };
        let owned = path.to_path_buf();
        let bytes = match tokio::task::spawn_blocking(move || read_bounded(&owned, MAX_TOKEN))
            .await
            .map_err(|e| read(std::io::Error::other(e)))?
        {
            Ok(bytes) => bytes,
            Err(ReadBoundedError::TooLarge { .. }) => {
                return Err(TokenError::Malformed {
                    path: path.to_path_buf(),
                })
            }
            Err(ReadBoundedError::Open(OpenError::NotRegular(kind))) => {
                return Err(read(std::io::Error::other(format!(
                    "is a {kind}, expected a regular file"
                ))))
            }
            Err(ReadBoundedError::Open(OpenError::Io(e)) | ReadBoundedError::Read(e)) => {
                return Err(read(e))
            }
        };
        BearerToken::parse(path, &bytes)
    }
}

/// One response: the status and the complete body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Response {
    /// Status code.
    pub status: u16,
    /// Reason phrase (may be empty).
    pub reason: String,
    /// Header fields, names in lower case, in order.
    pub headers: Vec<(String, String)>,
    /// The whole body (at most [`MAX_BODY`] bytes).
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (lower case).
    #[cfg(test)]
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The exchange gave no complete response.
#[derive(Debug, Error)]
pub(crate) enum HttpError {
    /// Writing the request failed (the server closed or reset the connection).
    #[error("sending the request: {0}")]
    Send(#[source] std::io::Error),
    /// Reading failed (reset, TLS alert, a close without close_notify).
    #[error("reading the response: {0}")]
    Receive(#[source] std::io::Error),
    /// The stream ended before the response was complete.
    #[error("the connection closed {0}")]
    Truncated(&'static str),
    /// Not HTTP/1.x, or a malformed line.
    #[error("malformed response: {0}")]
    Malformed(String),
    /// Headers or body over the limits.
    #[error("the response {what} is larger than {limit} bytes")]
    TooLarge {
        /// `head` or `body`.
        what: &'static str,
        limit: usize,
    },
    /// The whole exchange took longer than the deadline.
    #[error("no complete response within {0:?}")]
    Timeout(Duration),
}

/// Sends `request` on `stream` and reads the response, all within `deadline`.
pub(crate) async fn exchange<S>(
    stream: &mut S,
    request: &Request<'_>,
    deadline: Duration,
) -> Result<Response, HttpError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let work = async {
        write_request(stream, request).await?;
        let no_body = request.method == "HEAD";
        read_response(&mut tokio::io::BufReader::new(stream), no_body).await
    };
    tokio::time::timeout(deadline, work)
        .await
        .map_err(|_| HttpError::Timeout(deadline))?
}

/// The request's bytes: request line, `Host`, `Connection: close`, `Content-Length`, body.
pub(crate) fn encode_request(request: &Request<'_>) -> Vec<u8> {
    let mut out = format!(
        "{} {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: certreload-probe\r\nAccept: application/json, */*\r\nConnection: close\r\n",
        request.method, request.path, request.host
    );
    if let Some(BearerToken(token)) = request.bearer {
        out.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    let body: &[u8] = match request.body {
        Some((content_type, body)) => {
            out.push_str(&format!("Content-Type: {content_type}\r\n"));
            body
        }
        None => &[],
    };
    out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

async fn write_request<S: AsyncWrite + Unpin>(
    stream: &mut S,
    request: &Request<'_>,
) -> Result<(), HttpError> {
    stream
        .write_all(&encode_request(request))
        .await
        .map_err(HttpError::Send)?;
    stream.flush().await.map_err(HttpError::Send)
}

/// Reads one response (skipping `1xx` interim responses). `no_body`: the request was `HEAD`.
pub(crate) async fn read_response<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    no_body: bool,
) -> Result<Response, HttpError> {
    let mut head_budget = MAX_HEAD;
    loop {
        let status_line = read_line(reader, &mut head_budget, "before the status line").await?;
        let (status, reason) = parse_status_line(&status_line)?;
        let mut headers = Vec::new();
        loop {
            let line = read_line(reader, &mut head_budget, "inside the headers").await?;
            if line.is_empty() {
                break;
            }
            headers.push(parse_header(&line)?);
        }
        if (100..200).contains(&status) {
            // 100 Continue and friends: the real response follows.
            continue;
        }
        let mut response = Response {
            status,
            reason,
            headers,
            body: Vec::new(),
        };
        if no_body || status == 204 || status == 304 {
            return Ok(response);
        }
        response.body = read_body(reader, &response).await?;
        return Ok(response);
    }
}

/// `HTTP/1.1 200 OK` → (200, "OK").
pub(crate) fn parse_status_line(line: &str) -> Result<(u16, String), HttpError> {
    let malformed = || HttpError::Malformed(format!("status line {:?}", truncate(line)));
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(malformed());
    }
    let code = parts.next().unwrap_or_default();
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed());
    }
    let status: u16 = code.parse().map_err(|_| malformed())?;
    if !(100..=599).contains(&status) {
        return Err(malformed());
    }
    Ok((status, parts.next().unwrap_or_default().trim().to_string()))
}

fn parse_header(line: &str) -> Result<(String, String), HttpError> {
    let (name, value) = line
        .split_once(':')
        .filter(|(n, _)| !n.is_empty() && !n.contains([' ', '\t']))
        .ok_or_else(|| HttpError::Malformed(format!("header line {:?}", truncate(line))))?;
    Ok((name.to_ascii_lowercase(), value.trim().to_string()))
}

/// How the body is framed, from the headers (RFC 9112 §6.3: chunked wins over Content-Length).
fn framing(response: &Response) -> Result<Framing, HttpError> {
    let chunked = response
        .headers
        .iter()
        .filter(|(n, _)| n == "transfer-encoding")
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .next_back()
        .is_some_and(|last| last.eq_ignore_ascii_case("chunked"));
    if chunked {
        return Ok(Framing::Chunked);
    }
    let mut length: Option<usize> = None;
    for (_, v) in response
        .headers
        .iter()
        .filter(|(n, _)| n == "content-length")
    {
        let n: usize = v
            .parse()
            .map_err(|_| HttpError::Malformed(format!("Content-Length {:?}", truncate(v))))?;
        if length.is_some_and(|l| l != n) {
            return Err(HttpError::Malformed("conflicting Content-Length".into()));
        }
        length = Some(n);
    }
    Ok(match length {
        Some(n) => Framing::Length(n),
        None => Framing::UntilClose,
    })
}

enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

async fn read_body<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    response: &Response,
) -> Result<Vec<u8>, HttpError> {
    let too_large = HttpError::TooLarge {
        what: "body",
        limit: MAX_BODY,
    };
    match framing(response)? {
        Framing::Length(n) if n > MAX_BODY => Err(too_large),
        Framing::Length(n) => {
            let mut body = vec![0u8; n];
            read_exact(reader, &mut body, "inside the body").await?;
            Ok(body)
        }
        Framing::UntilClose => {
            let mut body = Vec::new();
            (&mut *reader)
                .take(MAX_BODY as u64 + 1)
                .read_to_end(&mut body)
                .await
                .map_err(receive)?;
            if body.len() > MAX_BODY {
                return Err(too_large);
            }
            Ok(body)
        }
        Framing::Chunked => {
            let mut body = Vec::new();
            let mut budget = MAX_HEAD;
            loop {
                let line = read_line(reader, &mut budget, "inside a chunk size line").await?;
                let size = line.split(';').next().unwrap_or_default().trim();
                let size = usize::from_str_radix(size, 16).map_err(|_| {
                    HttpError::Malformed(format!("chunk size {:?}", truncate(&line)))
                })?;
                if size == 0 {
                    // Trailer fields, then the empty line that ends the message.
                    while !read_line(reader, &mut budget, "inside the trailers")
                        .await?
                        .is_empty()
                    {}
                    return Ok(body);
                }
                if size > MAX_BODY - body.len() {
                    return Err(too_large);
                }
                let start = body.len();
                body.resize(start + size, 0);
                read_exact(reader, &mut body[start..], "inside a chunk").await?;
                if !read_line(reader, &mut budget, "after a chunk")
                    .await?
                    .is_empty()
                {
                    return Err(HttpError::Malformed("chunk longer than its size".into()));
                }
            }
        }
    }
}

fn receive(e: std::io::Error) -> HttpError {
    HttpError::Receive(e)
}

async fn read_exact<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut [u8],
    place: &'static str,
) -> Result<(), HttpError> {
    match reader.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(HttpError::Truncated(place)),
        Err(e) => Err(receive(e)),
    }
}

/// One line without its CRLF (or bare LF), charged to `budget`.
async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    budget: &mut usize,
    place: &'static str,
) -> Result<String, HttpError> {
    let mut line = Vec::new();
    loop {
        let available = match reader.fill_buf().await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && line.is_empty() => {
                return Err(HttpError::Truncated(place))
            }
            Err(e) => return Err(receive(e)),
        };
        if available.is_empty() {
            return Err(HttpError::Truncated(place));
        }
        let (taken, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (available.len(), false),
        };
        if taken > *budget {
            return Err(HttpError::TooLarge {
                what: "head",
                limit: MAX_HEAD,
            });
        }
        *budget -= taken;
        line.extend_from_slice(&available[..taken]);
        reader.consume(taken);
        if done {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
    }
}

/// At most 80 characters of what the server sent, for an error message.
fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(bytes: &[u8]) -> Result<Response, HttpError> {
        read_response(&mut tokio::io::BufReader::new(bytes), false).await
    }

    #[test]
    fn status_lines_parse_with_and_without_reason() {
        assert_eq!(
            parse_status_line("HTTP/1.1 200 OK").ok(),
            Some((200, "OK".into()))
        );
        assert_eq!(
            parse_status_line("HTTP/1.0 401 Unauthorized").ok(),
            Some((401, "Unauthorized".into()))
        );
        assert_eq!(
            parse_status_line("HTTP/1.1 204").ok(),
            Some((204, String::new()))
        );
        assert_eq!(
            parse_status_line("HTTP/1.1 503 Service Unavailable").ok(),
            Some((503, "Service Unavailable".into()))
        );
        for bad in [
            "",
            "HTTP/2 200 OK",
            "HTTP/1.1 20 OK",
            "HTTP/1.1 2000 OK",
            "HTTP/1.1 abc OK",
            "HTTP/1.1 099 Low",
            "SSH-2.0-OpenSSH_9.6",
            "\u{15}\u{3}\u{3}",
        ] {
            assert!(
                matches!(parse_status_line(bad), Err(HttpError::Malformed(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_request_says_host_close_and_length() {
        let body = br#"{"kind":"SelfSubjectReview"}"#;
        let bytes = encode_request(&Request {
            method: "POST",
            path: "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            host: "127.0.0.1:6443",
            body: Some(("application/json", body)),
            bearer: None,
        });
        let text = String::from_utf8(bytes).expect("ascii");
        let (head, sent_body) = text.split_once("\r\n\r\n").expect("head and body");
        let mut lines = head.split("\r\n");
        assert_eq!(
            lines.next(),
            Some("POST /apis/authentication.k8s.io/v1/selfsubjectreviews HTTP/1.1")
        );
        let fields: Vec<&str> = lines.collect();
        for want in [
            "Host: 127.0.0.1:6443",
            "Connection: close",
            "Content-Type: application/json",
            &format!("Content-Length: {}", body.len()),
        ] {
            assert!(fields.contains(&want), "{want} in {fields:?}");
        }
        assert_eq!(sent_body.as_bytes(), body);
        let get = String::from_utf8(encode_request(&Request {
            method: "GET",
            path: "/healthz",
            host: "h:1",
            body: None,
            bearer: None,
        }))
        .expect("ascii");
        assert!(get.starts_with("GET /healthz HTTP/1.1\r\n"), "{get}");
        assert!(get.ends_with("Content-Length: 0\r\n\r\n"), "{get}");
        assert!(!get.contains("Content-Type"), "{get}");
    }

    /// A token-shaped secret (a JWT's three base64url parts) for the tests below.
    const SECRET: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ0ZXN0In0.c2lnbmF0dXJl";

    #[test]
    fn a_bearer_token_is_sent_in_the_authorization_header_and_never_shown() {
        let token =
            BearerToken::parse(Path::new("/t"), format!("{SECRET}\n").as_bytes()).expect("a token");
        let request = Request {
            method: "GET",
            path: "/openid/v1/jwks",
            host: "127.0.0.1:6443",
            body: None,
            bearer: Some(&token),
        };
        let text = String::from_utf8(encode_request(&request)).expect("ascii");
        let head = text.strip_suffix("\r\n\r\n").expect("no body");
        assert!(
            head.split("\r\n")
                .any(|l| l == format!("Authorization: Bearer {SECRET}")),
            "the header, the trailing newline trimmed: {text}"
        );
        for shown in [format!("{token:?}"), format!("{request:?}")] {
            assert!(!shown.contains(SECRET), "{shown}");
            assert!(!shown.contains("eyJ"), "{shown}");
        }
        assert!(format!("{token:?}").contains("redacted"));
        let none = String::from_utf8(encode_request(&Request {
            bearer: None,
            ..request
        }))
        .expect("ascii");
        assert!(!none.contains("Authorization"), "{none}");
    }

    #[test]
    fn token_files_that_cannot_be_sent_are_refused_by_path_without_their_content() {
        let path = Path::new("/run/secrets/token");
        let cases: [(&[u8], &str); 6] = [
            (b"", "is empty"),
            (b" \n\t\n", "is empty"),
            (b"abc\r\nX-Injected: 1", "does not hold a token"),
            (b"two words", "does not hold a token"),
            (b"caf\xc3\xa9", "does not hold a token"),
            (b"\xff\xfe", "does not hold a token"),
        ];
        for (bytes, message) in cases {
            let e = BearerToken::parse(path, bytes).expect_err("refused");
            let text = e.to_string();
            assert!(
                text.contains("/run/secrets/token") && text.contains(message),
                "{:?}: {text}",
                String::from_utf8_lossy(bytes)
            );
            assert!(!text.contains("abc") && !text.contains("words"), "{text}");
        }
        let huge = vec![b'a'; MAX_TOKEN as usize + 1];
        assert!(matches!(
            BearerToken::parse(path, &huge),
            Err(TokenError::Malformed { .. })
        ));
    }

    #[tokio::test]
    async fn a_fifo_as_token_file_is_refused_by_type_not_waited_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        crate::sys::test_support::mkfifo(&path).expect("mkfifo");
        let e = BearerToken::read(&path).await.expect_err("fifo");
        assert_eq!(
            e.to_string(),
            format!(
                "bearer_token_file {}: is a fifo, expected a regular file",
                path.display()
            )
        );
    }

    #[tokio::test]
    async fn a_token_file_is_read_at_each_call() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        let e = BearerToken::read(&path).await.expect_err("missing");
        assert!(
            matches!(&e, TokenError::Read { path: p, .. } if p == &path),
            "{e:?}"
        );
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        std::fs::write(&path, "first-token\n").expect("write");
        assert_eq!(
            BearerToken::read(&path).await.expect("token"),
            BearerToken("first-token".into())
        );
        // The kubelet replaces a projected token in place: the next read sees the new one.
        std::fs::write(&path, "second-token").expect("write");
        assert_eq!(
            BearerToken::read(&path).await.expect("token"),
            BearerToken("second-token".into())
        );
    }

    #[tokio::test]
    async fn content_length_bodies_are_read_exactly() {
        let r = read(b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}trailing garbage")
            .await
            .expect("response");
        assert_eq!(r.status, 201);
        assert_eq!(r.reason, "Created");
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.body, b"{}");
    }

    #[tokio::test]
    async fn chunked_bodies_are_reassembled_with_extensions_and_trailers() {
        let r = read(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 999\r\n\r\n\
              5;ext=1\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\n",
        )
        .await
        .expect("response");
        assert_eq!(
            r.body, b"hello 0123456789",
            "chunked wins over Content-Length"
        );
        let r = read(b"HTTP/1.1 200 OK\ntransfer-encoding: CHUNKED\n\n3\nabc\n0\n\n")
            .await
            .expect("bare LF lines");
        assert_eq!(r.body, b"abc");
    }

    #[tokio::test]
    async fn without_framing_the_body_runs_to_the_close() {
        let r = read(b"HTTP/1.0 200 OK\r\n\r\n{\"keys\":[]}")
            .await
            .expect("response");
        assert_eq!(r.body, b"{\"keys\":[]}");
    }

    #[tokio::test]
    async fn interim_responses_are_skipped_and_204_has_no_body() {
        let r = read(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\nX: y\r\n\r\n")
            .await
            .expect("response");
        assert_eq!(r.status, 204);
        assert!(r.body.is_empty());
        let r = read_response(
            &mut tokio::io::BufReader::new(&b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"[..]),
            true,
        )
        .await
        .expect("HEAD");
        assert!(r.body.is_empty());
    }

    #[tokio::test]
    async fn truncated_responses_are_errors_not_answers() {
        for (bytes, place) in [
            (&b""[..], "before the status line"),
            (b"HTTP/1.1 200", "before the status line"),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n",
                "inside the headers",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc",
                "inside the body",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
                "inside a chunk",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n",
                "inside a chunk size line",
            ),
        ] {
            let r = read(bytes).await;
            assert!(
                matches!(r, Err(HttpError::Truncated(p)) if p == place),
                "{:?}: {r:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[tokio::test]
    async fn malformed_and_oversized_responses_are_refused() {
        assert!(matches!(
            read(b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n").await,
            Err(HttpError::Malformed(_))
        ));
        assert!(matches!(
            read(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab").await,
            Err(HttpError::Malformed(_))
        ));
        assert!(matches!(
            read(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").await,
            Err(HttpError::Malformed(_))
        ));
        assert!(matches!(
            read(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nabc\r\n0\r\n\r\n")
                .await,
            Err(HttpError::Malformed(_))
        ));
        let huge = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        assert!(matches!(
            read(huge.as_bytes()).await,
            Err(HttpError::TooLarge {
                what: "body",
                limit: MAX_BODY
            })
        ));
        let mut until_close = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        until_close.resize(until_close.len() + MAX_BODY + 1, b'x');
        assert!(matches!(
            read(&until_close).await,
            Err(HttpError::TooLarge { what: "body", .. })
        ));
        let mut chunks = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        let chunk = vec![b'y'; 64 * 1024];
        for _ in 0..5 {
            chunks.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            chunks.extend_from_slice(&chunk);
            chunks.extend_from_slice(b"\r\n");
        }
        assert!(matches!(
            read(&chunks).await,
            Err(HttpError::TooLarge { what: "body", .. })
        ));
        let mut long_head = b"HTTP/1.1 200 OK\r\nX-Big: ".to_vec();
        long_head.resize(long_head.len() + MAX_HEAD, b'z');
        assert!(matches!(
            read(&long_head).await,
            Err(HttpError::TooLarge { what: "head", .. })
        ));
    }

    #[tokio::test]
    async fn an_exchange_over_a_stream_sends_and_reads_and_times_out_on_silence() {
        let (mut client, server) = tokio::io::duplex(4096);
        let serve = tokio::spawn(async move {
            let (read_half, mut write_half) = tokio::io::split(server);
            let mut reader = tokio::io::BufReader::new(read_half);
            let mut request = String::new();
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).await.expect("request line");
                if line == "\r\n" {
                    break;
                }
                request.push_str(&line);
            }
            write_half
                .write_all(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")
                .await
                .expect("answer");
            request
        });
        let r = exchange(
            &mut client,
            &Request {
                method: "GET",
                path: "/healthz",
                host: "localhost:10257",
                body: None,
                bearer: None,
            },
            Duration::from_secs(30),
        )
        .await
        .expect("response");
        assert_eq!(r.status, 401);
        let request = serve.await.expect("server task");
        assert!(
            request.starts_with("GET /healthz HTTP/1.1\r\n"),
            "{request}"
        );

        // A server that never answers: the deadline ends the exchange (paused clock, no waiting).
        let (mut client, _silent) = tokio::io::duplex(4096);
        tokio::time::pause();
        let e = exchange(
            &mut client,
            &Request {
                method: "GET",
                path: "/healthz",
                host: "h:1",
                body: None,
                bearer: None,
            },
            Duration::from_secs(5),
        )
        .await;
        assert!(
            matches!(e, Err(HttpError::Timeout(d)) if d == Duration::from_secs(5)),
            "{e:?}"
        );
    }
}
