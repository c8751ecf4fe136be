//! The async half of the one frame codec: reads and writes `u16be(len) || body` frames on a
//! socket (TCP for Noise, TLS for rendezvous). The format, its limit and its errors are
//! [`crate::wire::frame`]; this file only moves bytes. The reader checks the declared length
//! against the caller's limit before reading the body, and reuses one growable buffer per
//! connection. [`FrameReader::read_long`] reads the `u32be(len) || body` frames of a QUIC-bound
//! stream; their buffer grows only as body bytes arrive (a declared length costs nothing until
//! it is sent) and is released after a body over [`KEEP_BUFFER`].

use crate::wire::frame::{self, FrameError, LONG_HEADER};

/// A frame buffer larger than this is released before the next frame is read (an idle
/// connection that once received a large envelope keeps no large buffer).
pub const KEEP_BUFFER: usize = 256 * 1024;

/// Bytes a long frame's buffer grows by at a time while its body arrives.
const LONG_STEP: usize = 64 * 1024;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Reads frames from one half of a connection.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wraps a reader.
    pub fn new(inner: R) -> Self {
        FrameReader {
            inner,
            buf: Vec::new(),
        }
    }

    /// Reads the next frame body (at most `max` bytes). The slice lives until the next call.
    pub async fn read(&mut self, max: usize) -> Result<&mut [u8], FrameError> {
        let mut len = [0u8; 2];
        // Distinguish a clean close between frames from a close inside one.
        let n = self.inner.read(&mut len[..1]).await?;
        if n == 0 {
            return Err(FrameError::Closed);
        }
        self.inner.read_exact(&mut len[1..]).await?;
        let len = frame::body_len(len, max)?;
        self.buf.resize(len, 0);
        self.inner.read_exact(&mut self.buf[..len]).await?;
        Ok(&mut self.buf[..len])
    }

    /// Reads the next `u32be(len) || body` frame (QUIC-bound stream), `len` at most `max`.
    /// The slice lives until the next call.
    pub async fn read_long(&mut self, max: usize) -> Result<&mut [u8], FrameError> {
        if self.buf.len() > KEEP_BUFFER {
            self.buf = Vec::new();
        }
        let mut len = [0u8; LONG_HEADER];
        // Distinguish a clean close between frames from a close inside one.
        let n = self.inner.read(&mut len).await?;
        if n == 0 {
            return Err(FrameError::Closed);
        }
        self.inner
            .read_exact(len.get_mut(n..).unwrap_or_default())
            .await?;
        let len = frame::long_body_len(len, max)?;
        let mut filled = 0;
        while filled < len {
            let end = len.min(filled.saturating_add(LONG_STEP).max(self.buf.len()));
            if self.buf.len() < end {
                self.buf.resize(end, 0);
            }
            let part = self.buf.get_mut(filled..end).unwrap_or_default();
            self.inner.read_exact(part).await?;
            filled = end;
        }
        Ok(self.buf.get_mut(..len).unwrap_or_default())
    }

    /// The wrapped reader.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Unwraps.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

/// Writes one already-encoded frame (`len || body`) and nothing else.
pub async fn write_raw<W: AsyncWrite + Unpin>(w: &mut W, frame: &[u8]) -> Result<(), FrameError> {
    w.write_all(frame).await?;
    Ok(())
}

/// Writes `len || body` with one write call.
pub async fn write<W: AsyncWrite + Unpin>(
    w: &mut W,
    body: &[u8],
    scratch: &mut Vec<u8>,
) -> Result<(), FrameError> {
    frame::encode(body, scratch)?;
    write_raw(w, scratch).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn round_trip_and_limit() {
        let (mut a, b) = tokio::io::duplex(1 << 20);
        let mut scratch = Vec::new();
        write(&mut a, b"hello", &mut scratch).await.unwrap();
        write(&mut a, &[7u8; 1000], &mut scratch).await.unwrap();
        let mut r = FrameReader::new(b);
        assert_eq!(r.read(10).await.unwrap(), b"hello");
        assert!(matches!(
            r.read(999).await,
            Err(FrameError::TooLarge {
                len: 1000,
                max: 999
            })
        ));
        drop(a);
    }

    #[tokio::test]
    async fn clean_close_vs_truncation() {
        let (a, b) = tokio::io::duplex(64);
        drop(a);
        let mut r = FrameReader::new(b);
        assert!(matches!(r.read(10).await, Err(FrameError::Closed)));

        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(&[0, 5, 1, 2]).await.unwrap();
        drop(a);
        let mut r = FrameReader::new(b);
        assert!(matches!(r.read(10).await, Err(FrameError::Io(_))));
    }

    #[tokio::test]
    async fn long_frames_round_trip_grow_and_refuse() {
        let (mut a, b) = tokio::io::duplex(1 << 16);
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let big2 = big.clone();
        let writer = tokio::spawn(async move {
            for body in [&b"hi"[..], &big2[..], &[][..], &b"after"[..]] {
                a.write_all(&(body.len() as u32).to_be_bytes()).await.unwrap();
                a.write_all(body).await.unwrap();
            }
            a.write_all(&5_000_001u32.to_be_bytes()).await.unwrap();
            a
        });
        let mut r = FrameReader::new(b);
        assert_eq!(r.read_long(1 << 20).await.unwrap(), b"hi");
        assert_eq!(r.read_long(1 << 20).await.unwrap(), &big[..]);
        assert_eq!(r.read_long(1 << 20).await.unwrap(), b"");
        // The 300 000-byte buffer was released (over KEEP_BUFFER) before this frame.
        assert_eq!(r.read_long(1 << 20).await.unwrap(), b"after");
        assert!(r.buf.len() <= KEEP_BUFFER);
        assert!(matches!(
            r.read_long(5_000_000).await,
            Err(FrameError::TooLarge {
                len: 5_000_001,
                max: 5_000_000
            })
        ));
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn long_frame_clean_close_vs_truncation() {
        let (a, b) = tokio::io::duplex(64);
        drop(a);
        let mut r = FrameReader::new(b);
        assert!(matches!(r.read_long(10).await, Err(FrameError::Closed)));

        // Inside the length field, and inside the body.
        for bytes in [&[0u8, 0][..], &[0, 0, 0, 9, 1, 2, 3][..]] {
            let (mut a, b) = tokio::io::duplex(64);
            a.write_all(bytes).await.unwrap();
            drop(a);
            let mut r = FrameReader::new(b);
            assert!(matches!(r.read_long(10).await, Err(FrameError::Io(_))));
        }
    }
}
