//! The demo's "component": a tiny HTTP responder the demo listener forwards decrypted traffic to.

use std::net::SocketAddr;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// What every request gets.
pub(crate) const BODY: &str = "hello from the certreload demo upstream\n";

/// Starts the responder on a free loopback port.
pub(crate) async fn spawn() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(answer(stream));
        }
    });
    Ok(addr)
}

/// Reads one request head (up to 8 KiB) and answers it.
async fn answer(mut stream: TcpStream) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    // The client may hang up before the answer; the demo upstream has nothing to report.
    stream.write_all(response.as_bytes()).await.ok();
    stream.shutdown().await.ok();
}
