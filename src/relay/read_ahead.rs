//! A read-ahead buffer for relay connections whose memory is released while idle.
//!
//! The framer reads each frame with three small reads (first length byte, second length byte,
//! body). Under load that is three system calls per envelope; [`ReadAhead`] turns them into one
//! read of up to [`READ_AHEAD`] bytes for many envelopes. Unlike `tokio::io::BufReader` it
//! allocates its buffer only while there is something in it, so an idle connection (the common
//! case at a relay: thousands of registered recipients waiting for pushes) keeps no buffer.
//!
//! Invariants: bytes come out in the order they were read, none twice, none dropped; a read
//! larger than the buffer bypasses it.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};

/// Most bytes read ahead in one call.
pub const READ_AHEAD: usize = 16 * 1024;

/// See the module docs.
#[derive(Debug)]
pub struct ReadAhead<R> {
    inner: R,
    /// Read-ahead bytes; empty (and unallocated) when nothing is buffered.
    buf: Vec<u8>,
    /// Next unread byte in `buf`.
    pos: usize,
}

impl<R> ReadAhead<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        ReadAhead {
            inner,
            buf: Vec::new(),
            pos: 0,
        }
    }

    /// Bytes buffered and not yet returned.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for ReadAhead<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos == this.buf.len() {
            if out.remaining() >= READ_AHEAD {
                return Pin::new(&mut this.inner).poll_read(cx, out);
            }
            // Refill. The buffer lives only while it holds bytes (see the module docs).
            let mut buf = std::mem::take(&mut this.buf);
            buf.resize(READ_AHEAD, 0);
            let mut rb = ReadBuf::new(&mut buf);
            let r = Pin::new(&mut this.inner).poll_read(cx, &mut rb);
            let n = rb.filled().len();
            match r {
                Poll::Ready(Ok(())) if n > 0 => {
                    buf.truncate(n);
                    this.buf = buf;
                    this.pos = 0;
                }
                // End of stream, an error, or nothing yet: keep no buffer.
                other => {
                    this.pos = 0;
                    ready!(other)?;
                    return Poll::Ready(Ok(()));
                }
            }
        }
        let avail = this.buf.get(this.pos..).unwrap_or_default();
        let n = avail.len().min(out.remaining());
        out.put_slice(avail.get(..n).unwrap_or_default());
        this.pos += n;
        if this.pos == this.buf.len() {
            this.buf = Vec::new();
            this.pos = 0;
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn passes_bytes_through_in_order_and_frees_when_drained() {
        let (mut a, b) = tokio::io::duplex(64 * 1024);
        let data: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
        let w = data.clone();
        let writer = tokio::spawn(async move {
            for c in w.chunks(777) {
                a.write_all(c).await.unwrap();
            }
        });
        let mut r = ReadAhead::new(b);
        let mut got = Vec::new();
        let mut one = [0u8; 1];
        let mut small = [0u8; 300];
        let mut big = vec![0u8; READ_AHEAD + 10];
        let mut turn = 0usize;
        while got.len() < data.len() {
            let n = match turn % 3 {
                0 => r.read(&mut one).await.unwrap(),
                1 => r.read(&mut small).await.unwrap(),
                _ => r.read(&mut big).await.unwrap(),
            };
            got.extend_from_slice(match turn % 3 {
                0 => &one[..n],
                1 => &small[..n],
                _ => &big[..n],
            });
            turn += 1;
        }
        assert_eq!(got, data);
        assert_eq!(r.buffered(), 0);
        assert_eq!(r.buf.capacity(), 0);
        writer.await.unwrap();
    }
}
