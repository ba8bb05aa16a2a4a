//! A plain HTTP/1.1 GET against the agent's loopback admin endpoint (`/healthz`, `/readyz`,
//! `/metrics`, `/status`), shared by the tests that read it without TLS or a token.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

/// The whole response (status line, headers, body) of `GET path` on `addr`, read until the
/// agent closes (`Connection: close`); an error names the address or the path. A 5 s read
/// timeout turns an endpoint that stopped answering into an error instead of a hung test.
pub fn get(addr: &str, path: &str) -> Result<String, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| format!("read timeout on {addr}: {e}"))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("GET {path}: {e}"))?;
    let mut response = String::new();
    s.read_to_string(&mut response)
        .map_err(|e| format!("GET {path}: {e}"))?;
    Ok(response)
}

/// [`get`] for a test that cannot go on without the answer.
pub fn get_ok(addr: &str, path: &str) -> String {
    get(addr, path).unwrap_or_else(|e| panic!("the admin endpoint answers: {e}"))
}
