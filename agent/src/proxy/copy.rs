//! Both directions of a proxied connection, with copy buffers that exist only while bytes are in
//! flight.
//!
//! `tokio::io::copy_bidirectional_with_sizes` gives every connection its two buffers (16 KiB and
//! 64 KiB here) for its whole life, zero-filled at the start: once the allocator hands out memory
//! another connection used before, those 80 KiB are resident for a connection that never sends a
//! byte again. Here a direction borrows a buffer from a small per-thread spare list when its
//! reader has bytes to give, and hands it back as soon as the reader has nothing more (`Pending`
//! or end of stream) and everything read has been written out. An idle connection holds no copy
//! buffer; a busy one takes a spare without allocating or zeroing it (the bytes left in a spare
//! are never sent: only what the current read filled is written). Semantics are tokio's: an end of
//! stream on one side shuts the other side's write half down and the other direction goes on;
//! the future ends when both directions have.

use std::{
    cell::RefCell,
    future::poll_fn,
    io,
    pin::Pin,
    task::{ready, Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Spare buffers kept per thread for reuse, all sizes together: a few busy connections per
/// worker then never allocate, and what sits unused is bounded (at most this many buffers).
const SPARES_PER_THREAD: usize = 8;

thread_local! {
    /// Buffers handed back by directions that went quiet on this thread.
    static SPARES: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer of `size` bytes: a spare of that size if this thread has one, else a new one.
fn take_buffer(size: usize) -> Box<[u8]> {
    let spare = SPARES.with(|spares| {
        let mut spares = spares.borrow_mut();
        let at = spares.iter().position(|b| b.len() == size)?;
        Some(spares.swap_remove(at))
    });
    spare.unwrap_or_else(|| vec![0u8; size].into_boxed_slice())
}

/// Hands a buffer back: kept as a spare while this thread has room, else freed.
fn give_back(buffer: Box<[u8]>) {
    SPARES.with(|spares| {
        let mut spares = spares.borrow_mut();
        if spares.len() < SPARES_PER_THREAD {
            spares.push(buffer);
        }
    });
}

/// One direction: read into the borrowed buffer, write all of it out, repeat.
struct Direction {
    size: usize,
    buffer: Option<Box<[u8]>>,
    /// Written up to here of what the last read filled (`..end`).
    pos: usize,
    end: usize,
    read_done: bool,
    need_flush: bool,
    copied: u64,
    state: State,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Copying,
    ShuttingDown,
    Done,
}

impl Direction {
    fn new(size: usize) -> Self {
        Direction {
            size,
            buffer: None,
            pos: 0,
            end: 0,
            read_done: false,
            need_flush: false,
            copied: 0,
            state: State::Copying,
        }
    }

    /// Hands the buffer back (nothing of it is still to be written).
    fn release(&mut self) {
        if let Some(buffer) = self.buffer.take() {
            give_back(buffer);
        }
    }

    /// Drives this direction; ready with the bytes copied once the reader ended and the writer
    /// was shut down.
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        loop {
            match self.state {
                State::Copying => {
                    ready!(self.poll_copy(cx, Pin::new(&mut *reader), Pin::new(&mut *writer)))?;
                    self.state = State::ShuttingDown;
                }
                State::ShuttingDown => {
                    ready!(Pin::new(&mut *writer).poll_shutdown(cx))?;
                    self.state = State::Done;
                }
                State::Done => return Poll::Ready(Ok(self.copied)),
            }
        }
    }

    /// Copies until the reader ends (then flushes the writer).
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if self.pos == self.end && !self.read_done {
                let size = self.size;
                let buffer = self.buffer.get_or_insert_with(|| take_buffer(size));
                let mut read = ReadBuf::new(buffer);
                match reader.as_mut().poll_read(cx, &mut read) {
                    Poll::Ready(Ok(())) => {
                        let n = read.filled().len();
                        (self.pos, self.end) = (0, n);
                        if n == 0 {
                            self.read_done = true;
                            self.release();
                        }
                    }
                    Poll::Ready(Err(e)) => {
                        self.release();
                        return Poll::Ready(Err(e));
                    }
                    Poll::Pending => {
                        // Quiet for now: nothing of the buffer is in flight, so hand it back
                        // before waiting. Flush what the writer buffers, as tokio does, so a
                        // reader that waits on the other side's answer is not deadlocked.
                        self.release();
                        if self.need_flush {
                            ready!(writer.as_mut().poll_flush(cx))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                }
            }
            while self.pos < self.end {
                let buffer = self
                    .buffer
                    .as_deref()
                    .expect("bytes read and not yet written are in the buffer");
                let n = ready!(writer.as_mut().poll_write(cx, &buffer[self.pos..self.end]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "write zero bytes into the writer",
                    )));
                }
                self.pos += n;
                self.copied += n as u64;
                self.need_flush = true;
            }
            if self.read_done {
                ready!(writer.as_mut().poll_flush(cx))?;
                self.need_flush = false;
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl Drop for Direction {
    fn drop(&mut self) {
        self.release();
    }
}

/// Copies `a` → `b` and `b` → `a` until both have ended, as
/// `tokio::io::copy_bidirectional_with_sizes` does, holding buffers only while bytes are in
/// flight (see the module comment). Returns the bytes copied each way.
pub(crate) async fn copy_bidirectional<A, B>(
    a: &mut A,
    b: &mut B,
    a_to_b_size: usize,
    b_to_a_size: usize,
) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut a_to_b = Direction::new(a_to_b_size);
    let mut b_to_a = Direction::new(b_to_a_size);
    poll_fn(|cx| {
        let forward = a_to_b.poll(cx, a, b)?;
        let backward = b_to_a.poll(cx, b, a)?;
        let (Poll::Ready(forward), Poll::Ready(backward)) = (forward, backward) else {
            return Poll::Pending;
        };
        Poll::Ready(Ok((forward, backward)))
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn spares() -> usize {
        SPARES.with(|s| s.borrow().len())
    }

    /// Polls `future` once, from inside the test's task.
    async fn poll_once<F: Future + Unpin>(future: &mut F) -> Poll<F::Output> {
        poll_fn(|cx| Poll::Ready(Pin::new(&mut *future).poll(cx))).await
    }

    /// Bytes both ways, each end closing its side: every byte arrives, in order, each side sees
    /// the other's end, and the counts are what was sent.
    #[tokio::test]
    async fn copies_both_ways_until_both_sides_end() {
        let (mut client, mut proxy_a) = tokio::io::duplex(1024);
        let (mut proxy_b, mut upstream) = tokio::io::duplex(1024);
        let proxy =
            tokio::spawn(
                async move { copy_bidirectional(&mut proxy_a, &mut proxy_b, 16, 64).await },
            );
        let up: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let down: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
        let (up2, down2) = (up.clone(), down.clone());
        let client_side = tokio::spawn(async move {
            client.write_all(&up2).await.expect("write up");
            client.shutdown().await.expect("shutdown up");
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.expect("read down");
            got
        });
        let upstream_side = tokio::spawn(async move {
            let mut got = Vec::new();
            upstream.read_to_end(&mut got).await.expect("read up");
            upstream.write_all(&down2).await.expect("write down");
            upstream.shutdown().await.expect("shutdown down");
            got
        });
        assert_eq!(upstream_side.await.expect("upstream"), up);
        assert_eq!(client_side.await.expect("client"), down);
        let (a_to_b, b_to_a) = proxy.await.expect("proxy").expect("copy");
        assert_eq!((a_to_b, b_to_a), (up.len() as u64, down.len() as u64));
    }

    /// A connection that exchanged a request and a reply and then went quiet holds no buffer:
    /// both went back to this thread's spares (the test runs on one thread).
    #[tokio::test(flavor = "current_thread")]
    async fn a_quiet_connection_holds_no_buffer() {
        SPARES.with(|s| s.borrow_mut().clear());
        let (mut client, mut proxy_a) = tokio::io::duplex(1024);
        let (mut proxy_b, mut upstream) = tokio::io::duplex(1024);
        let mut copy = Box::pin(copy_bidirectional(
            &mut proxy_a,
            &mut proxy_b,
            16_384,
            65_536,
        ));
        client.write_all(b"hold\n").await.expect("request");
        assert!(poll_once(&mut copy).await.is_pending());
        let mut line = [0u8; 5];
        upstream
            .read_exact(&mut line)
            .await
            .expect("request through");
        upstream.write_all(b"held\n").await.expect("reply");
        assert!(poll_once(&mut copy).await.is_pending());
        client.read_exact(&mut line).await.expect("reply through");
        assert_eq!(&line, b"held\n");
        assert_eq!(
            spares(),
            2,
            "both buffers handed back while the connection waits"
        );
        // A second quiet connection borrows the same two: nothing new is allocated.
        drop(copy);
        let (mut client2, mut a2) = tokio::io::duplex(1024);
        let (mut b2, _upstream2) = tokio::io::duplex(1024);
        let mut copy2 = Box::pin(copy_bidirectional(&mut a2, &mut b2, 16_384, 65_536));
        client2.write_all(b"x").await.expect("write");
        assert!(poll_once(&mut copy2).await.is_pending());
        assert_eq!(spares(), 2);
    }

    /// Spares are bounded: handing back more than the limit frees the rest.
    #[test]
    fn spares_are_bounded() {
        SPARES.with(|s| s.borrow_mut().clear());
        for _ in 0..SPARES_PER_THREAD + 5 {
            give_back(vec![0u8; 8].into_boxed_slice());
        }
        assert_eq!(spares(), SPARES_PER_THREAD);
        let taken = take_buffer(8);
        assert_eq!(taken.len(), 8);
        assert_eq!(spares(), SPARES_PER_THREAD - 1);
        assert_eq!(take_buffer(9).len(), 9, "another size is allocated");
    }
}
