//! Idle detection for connections (the TLS front's and the admin endpoint's): a stream wrapper
//! that stamps every successful read and write, so a watchdog can close a connection nobody has
//! used for `idle_timeout`.

use std::{
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

// tokio's clock, so tests can run with paused time.
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::Instant,
};

/// Milliseconds since a fixed start, shared by both directions of a connection.
#[derive(Clone)]
pub(crate) struct Activity {
    origin: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    /// Starts counting now.
    pub(crate) fn new() -> Self {
        Activity {
            origin: Instant::now(),
            last_ms: Arc::default(),
        }
    }

    fn touch(&self) {
        self.last_ms
            .store(self.origin.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// How long since the last byte moved either way.
    pub(crate) fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.origin.elapsed().saturating_sub(last)
    }

    /// Resolves once the connection has been idle for `timeout`.
    pub(crate) async fn idle(&self, timeout: Duration) {
        loop {
            let idle = self.idle_for();
            if idle >= timeout {
                return;
            }
            tokio::time::sleep(timeout - idle).await;
        }
    }
}

impl Default for Activity {
    fn default() -> Self {
        Activity::new()
    }
}

/// A stream that reports its activity, and holds `G` (what the connection occupies: cap slots, a
/// descriptor) until it shuts down or is dropped.
pub(crate) struct Tracked<S, G = ()> {
    // Given back before the socket says the connection ended (before the shutdown that sends the
    // FIN; fields drop in declaration order, so before `inner` closes), so a peer that has seen
    // its connection end (a probe with `Connection: close`) finds what it held free when it
    // connects again.
    held: Option<G>,
    inner: S,
    activity: Activity,
}

impl<S> Tracked<S> {
    /// Wraps `inner`.
    pub(crate) fn new(inner: S, activity: Activity) -> Self {
        Tracked::holding(inner, activity, ())
    }
}

impl<S, G> Tracked<S, G> {
    /// Wraps `inner`, holding `held` until the stream is dropped (released before it closes).
    pub(crate) fn holding(inner: S, activity: Activity, held: G) -> Self {
        Tracked {
            held: Some(held),
            inner,
            activity,
        }
    }
}

impl<S: AsyncRead + Unpin, G: Unpin> AsyncRead for Tracked<S, G> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin, G: Unpin> AsyncWrite for Tracked<S, G> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.held = None;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_resolves_only_after_a_quiet_period() {
        let (a, mut b) = tokio::io::duplex(64);
        let activity = Activity::new();
        let mut tracked = Tracked::new(a, activity.clone());
        tokio::time::advance(Duration::from_secs(5)).await;
        tracked.write_all(b"x").await.expect("write");
        let mut byte = [0u8; 1];
        b.read_exact(&mut byte).await.expect("read");
        assert!(
            activity.idle_for() < Duration::from_secs(1),
            "writing counts as activity"
        );
        let waited = Instant::now();
        activity.idle(Duration::from_secs(30)).await;
        assert!(waited.elapsed() >= Duration::from_secs(29));
    }

    /// Flags its drop: what a connection holds (a cap slot) in the test below.
    struct Slot(Arc<std::sync::atomic::AtomicBool>);

    impl Drop for Slot {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn what_a_stream_holds_is_given_back_before_the_peer_sees_the_end() {
        let (a, mut b) = tokio::io::duplex(64);
        let freed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tracked = Tracked::holding(a, Activity::new(), Slot(freed.clone()));
        tracked.write_all(b"x").await.expect("write");
        assert!(!freed.load(Ordering::SeqCst), "held while serving");
        tracked.shutdown().await.expect("shutdown");
        assert!(freed.load(Ordering::SeqCst), "given back by the shutdown");
        let mut rest = Vec::new();
        b.read_to_end(&mut rest)
            .await
            .expect("the peer reads to the end");
        assert_eq!(rest, b"x");

        let (a, _b) = tokio::io::duplex(64);
        let freed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        drop(Tracked::holding(a, Activity::new(), Slot(freed.clone())));
        assert!(freed.load(Ordering::SeqCst), "given back when dropped");
    }
}
