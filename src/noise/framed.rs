//! The async half of the one frame codec: reads and writes `u16be(len) || body` frames on a
//! socket (TCP for Noise, TLS for rendezvous). The format, its limit and its errors are
//! [`crate::wire::frame`]; this file only moves bytes. The reader checks the declared length
//! against the caller's limit before reading the body, and reuses one growable buffer per
//! connection.

use crate::wire::frame::{self, FrameError};
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
}
