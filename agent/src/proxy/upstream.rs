//! Connecting to the component behind a listener (TCP or Unix socket).

use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpStream, UnixStream},
};

use crate::config::Upstream;

/// A byte stream to the upstream.
pub(crate) trait UpstreamStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> UpstreamStream for T {}

/// Opens a new upstream connection.
pub(crate) async fn connect(upstream: &Upstream) -> std::io::Result<Box<dyn UpstreamStream>> {
    Ok(match upstream {
        Upstream::Tcp(addr) => {
            let s = TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            Box::new(s)
        }
        Upstream::Unix(path) => Box::new(UnixStream::connect(path).await?),
    })
}
